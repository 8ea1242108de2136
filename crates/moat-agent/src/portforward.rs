//! `portforward` on the agent endpoint (`/portForward/{namespace}/{pod}`), the kubelet's
//! protocol as kubectl speaks it:
//!
//! - SPDY/3.1 with `X-Stream-Protocol-Version: portforward.k8s.io` (kubectl 1.27–1.30);
//! - the same SPDY byte stream tunnelled in WebSocket binary messages, subprotocol
//!   `SPDY/3.1+portforward.k8s.io` (what newer kubectl tries first);
//! - plain WebSocket channels (`v4.channel.k8s.io`, client libraries), see
//!   [`ws`].
//!
//! For every local connection kubectl opens two SPDY streams with the same `requestID` and
//! `port` headers: `streamType: error` and `streamType: data`. Once both are there the port
//! is dialled (`127.0.0.1:port` inside the pod's network namespace as the kubelet does,
//! then the pod IP from the node, which is how a VM pod's guest answers); bytes are
//! copied both ways over the data stream, and the connection's end closes both streams (an
//! error message goes on the error stream first).
//!
//! [`Pairs`] (pairing streams into connections, header checks) is sans-IO; the loop around
//! it owns the client socket and exchanges messages with one thread per pod connection.

pub mod ws;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

use crate::errors::chain;
use crate::http::{Ctx, Reply, Request, Stream, UpgradeHeaders, spdy_headers, websocket_headers};
use crate::spdy::{Codec, Frame};

/// The SPDY stream protocol (kubelet's `portforward.k8s.io`, v1).
pub const PROTOCOL: &str = "portforward.k8s.io";
/// The WebSocket subprotocol carrying that SPDY stream.
pub const WS_TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// A connection to forward: both of its streams have arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conn {
    pub request: String,
    pub port: u16,
    pub error: u32,
    pub data: u32,
}

/// What a new stream means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added {
    /// Accepted; its partner has not arrived yet.
    Waiting,
    /// Accepted and completes a connection.
    Ready(Conn),
    /// Refused: reset the stream. If the pair's error stream is known, `message` goes
    /// there (and it is closed) so kubectl shows why.
    Refused { error: Option<u32>, message: String },
}

#[derive(Debug, Default)]
struct Half {
    error: Option<u32>,
    data: Option<u32>,
    port: u16,
}

/// Pairs error and data streams by request id (sans-IO).
#[derive(Debug, Default)]
pub struct Pairs {
    pending: HashMap<String, Half>,
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

impl Pairs {
    pub fn add(&mut self, id: u32, headers: &[(String, String)]) -> Added {
        let ty = header(headers, "streamType").unwrap_or("");
        // Clients from before request ids paired an error stream with the data stream
        // created right after it, as the kubelet still accepts.
        let request = match header(headers, "requestID") {
            Some(r) => r.to_string(),
            None if ty == "data" => id.saturating_sub(2).to_string(),
            None => id.to_string(),
        };
        let port = match header(headers, "port").map(str::parse::<u16>) {
            Some(Ok(p)) if p > 0 => p,
            Some(_) => {
                return self.refuse(&request, "invalid port header");
            }
            None => return self.refuse(&request, "port header is required"),
        };
        let half = self.pending.entry(request.clone()).or_default();
        let slot = match ty {
            "error" => &mut half.error,
            "data" => &mut half.data,
            other => {
                let message = format!("invalid stream type {other:?}");
                return self.refuse(&request, &message);
            }
        };
        if slot.is_some() {
            let message = format!("request {request} already has a {ty} stream");
            return self.refuse(&request, &message);
        }
        *slot = Some(id);
        if half.port != 0 && half.port != port {
            return self.refuse(&request, "the streams of one request name different ports");
        }
        half.port = port;
        match (half.error, half.data) {
            (Some(error), Some(data)) => {
                self.pending.remove(&request);
                Added::Ready(Conn {
                    request,
                    port,
                    error,
                    data,
                })
            }
            _ => Added::Waiting,
        }
    }

    fn refuse(&mut self, request: &str, message: &str) -> Added {
        let error = self.pending.remove(request).and_then(|h| h.error);
        Added::Refused {
            error,
            message: message.to_string(),
        }
    }
}

/// Where connections go: the pod's network namespace (None: the host's, for hostNetwork
/// pods) and its IP.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    netns: Option<PathBuf>,
    ip: Option<String>,
    pod: String,
}

/// One way of reaching a pod's port that failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Attempt {
    #[error("opening the pod's network namespace")]
    OpenNetns(#[source] std::io::Error),
    #[error("entering the pod's network namespace")]
    EnterNetns(#[source] nix::errno::Errno),
    #[error("127.0.0.1:{port} in the pod's network namespace")]
    Loopback {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("the dialling thread panicked")]
    Panicked,
    #[error("{addr}")]
    PodIp {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Every way of reaching the port failed; the message (kubelet's opening, then each
/// attempt with its cause) is what the client reads on the error stream.
#[derive(Debug, thiserror::Error)]
#[error(
    "error forwarding port {port} to pod {pod}: {}{}",
    chain(inside),
    via_ip.as_ref().map(|e| format!("; {}", chain(e))).unwrap_or_default()
)]
pub(crate) struct DialError {
    port: u16,
    pod: String,
    inside: Attempt,
    via_ip: Option<Attempt>,
}

/// Dials `port` for the target: 127.0.0.1 inside the pod's network namespace first (as the
/// kubelet does, so servers bound to loopback are reached), then the pod IP from the node's
/// own namespace, through the pod network. The second is how a VM pod is reached: its
/// guest answers on the pod IP behind the tap splice, and nothing listens in the netns
/// itself. Only a short-lived thread enters the namespace; a socket stays in the namespace
/// it was made in.
pub(crate) fn dial(t: &Target, port: u16) -> Result<TcpStream, DialError> {
    let timeout = Duration::from_secs(5);
    let inside = {
        let netns = t.netns.clone();
        std::thread::spawn(move || -> Result<TcpStream, Attempt> {
            if let Some(ns) = &netns {
                let f = std::fs::File::open(ns).map_err(Attempt::OpenNetns)?;
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(Attempt::EnterNetns)?;
            }
            let sa = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            TcpStream::connect_timeout(&sa, timeout)
                .map_err(|source| Attempt::Loopback { port, source })
        })
        .join()
        .unwrap_or(Err(Attempt::Panicked))
    };
    let first = match inside {
        Ok(s) => return Ok(s),
        Err(e) => e,
    };
    let via_ip = match t.ip.as_deref().map(str::parse::<std::net::IpAddr>) {
        Some(Ok(ip)) => {
            let addr = (ip, port).into();
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(s) => return Ok(s),
                Err(source) => Some(Attempt::PodIp { addr, source }),
            }
        }
        _ => None,
    };
    Err(DialError {
        port,
        pod: t.pod.clone(),
        inside: first,
        via_ip,
    })
}

/// The client connection after the upgrade: raw SPDY, or SPDY tunnelled in WebSocket.
enum Wire {
    Raw(Box<Stream>),
    Ws(Box<WebSocket<Stream>>),
}

enum Read_ {
    Bytes,
    Idle,
    Gone,
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

impl Wire {
    /// Appends what arrived (waiting at most the socket's read timeout) to `buf`.
    fn read(&mut self, buf: &mut Vec<u8>) -> Read_ {
        match self {
            Wire::Raw(s) => {
                let mut chunk = [0u8; 32 * 1024];
                match s.read(&mut chunk) {
                    Ok(0) => Read_::Gone,
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        Read_::Bytes
                    }
                    Err(e) if timed_out(&e) => Read_::Idle,
                    Err(_) => Read_::Gone,
                }
            }
            Wire::Ws(ws) => match ws.read() {
                Ok(Message::Binary(b)) => {
                    buf.extend_from_slice(&b);
                    Read_::Bytes
                }
                Ok(Message::Close(_)) => Read_::Gone,
                Ok(_) => Read_::Idle,
                Err(tungstenite::Error::Io(e)) if timed_out(&e) => Read_::Idle,
                Err(_) => Read_::Gone,
            },
        }
    }

    fn write(&mut self, b: &[u8]) -> bool {
        match self {
            Wire::Raw(s) => s.write_all(b).and_then(|()| s.flush()).is_ok(),
            Wire::Ws(ws) => ws.send(Message::Binary(b.to_vec().into())).is_ok(),
        }
    }
}

/// From the per-connection threads to the loop.
enum Ev {
    Dialed(u32, Result<TcpStream, DialError>),
    Out(u32, Vec<u8>),
    Closed(u32),
}

/// One forwarded connection, by its data stream id.
struct Live {
    error: u32,
    /// Bytes for the pod (None = the client finished sending); None until dialled.
    to_pod: Option<mpsc::Sender<Option<Vec<u8>>>>,
    /// What arrived before the dial completed.
    early: Vec<Option<Vec<u8>>>,
    socket: Option<TcpStream>,
}

/// How the session's SPDY travels, chosen by [`negotiate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Raw,
    Ws,
}

/// The upgrade answer (the 101's headers) for a SPDY port-forward request, or the refusal.
fn negotiate(req: &Request) -> Result<(UpgradeHeaders, Kind), Reply> {
    let upgrade = req.header("upgrade").unwrap_or("");
    if upgrade.eq_ignore_ascii_case("websocket") {
        let offered = req.header_values("sec-websocket-protocol");
        let (Some(key), true) = (
            req.header("sec-websocket-key"),
            offered.contains(&WS_TUNNEL_PROTOCOL),
        ) else {
            return Err(Reply::bad(format!(
                "port forwarding over WebSocket needs the {WS_TUNNEL_PROTOCOL} subprotocol\n"
            )));
        };
        return Ok((websocket_headers(key, Some(WS_TUNNEL_PROTOCOL)), Kind::Ws));
    }
    if upgrade.eq_ignore_ascii_case("SPDY/3.1") {
        if !req
            .header_values("x-stream-protocol-version")
            .contains(&PROTOCOL)
        {
            return Err(Reply::bad(format!(
                "port forwarding over SPDY needs X-Stream-Protocol-Version {PROTOCOL}\n"
            )));
        }
        return Ok((spdy_headers(PROTOCOL), Kind::Raw));
    }
    Err(Reply::bad(
        "port forwarding needs a SPDY/3.1 or WebSocket upgrade\n",
    ))
}

/// The answer to a port-forward request: a refusal, or the upgrade whose session forwards.
pub fn serve(ctx: &Ctx, req: &Request, ns: &str, pod: &str) -> Reply {
    let Some(rec) = crate::podstate::find_pod(&ctx.run_dir, ns, pod) else {
        return Reply::text(404, format!("pod {ns}/{pod} is not on this node\n"));
    };
    let target = Target {
        netns: (!rec.host_network).then(|| rec.netns.clone()),
        ip: rec.ip.clone(),
        pod: format!("{ns}/{pod}"),
    };
    if let Some(n) = &target.netns
        && !n.exists()
    {
        return Reply::bad(format!("pod {ns}/{pod} has no network namespace yet\n"));
    }
    // Plain WebSocket channels (one data and one error channel per `port` of the query)
    // for the clients that do not tunnel SPDY.
    if req
        .header("upgrade")
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
        && !req
            .header_values("sec-websocket-protocol")
            .contains(&WS_TUNNEL_PROTOCOL)
    {
        return ws::serve(req, target);
    }
    let (headers, kind) = match negotiate(req) {
        Ok(x) => x,
        Err(r) => return r,
    };
    Reply::Upgrade {
        headers,
        session: Box::new(move |s| {
            // One thread owns the socket; short read timeouts let it interleave reads and
            // writes.
            if let Err(e) = s.set_read_timeout(Some(Duration::from_millis(20))) {
                tracing::debug!(error = %e, "port-forward: the session socket");
                return;
            }
            let wire = match kind {
                Kind::Raw => Wire::Raw(Box::new(s)),
                Kind::Ws => Wire::Ws(Box::new(WebSocket::from_raw_socket(s, Role::Server, None))),
            };
            Session::new(wire, target).run();
        }),
    }
}

struct Session {
    wire: Wire,
    codec: Codec,
    buf: Vec<u8>,
    pairs: Pairs,
    live: HashMap<u32, Live>,
    tx: mpsc::Sender<Ev>,
    rx: mpsc::Receiver<Ev>,
    target: Target,
    gone: bool,
}

impl Session {
    fn new(wire: Wire, target: Target) -> Session {
        let (tx, rx) = mpsc::channel();
        Session {
            wire,
            codec: Codec::new(),
            buf: Vec::new(),
            pairs: Pairs::default(),
            live: HashMap::new(),
            tx,
            rx,
            target,
            gone: false,
        }
    }

    fn send(&mut self, f: &Frame) {
        match self.codec.encode(f) {
            Ok(b) => {
                if !self.wire.write(&b) {
                    self.gone = true;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "port-forward: encoding a frame");
                self.gone = true;
            }
        }
    }

    fn data(&mut self, id: u32, fin: bool, data: Vec<u8>) {
        self.send(&Frame::Data { id, fin, data });
    }

    fn run(mut self) {
        let mut last_ping = Instant::now();
        while !self.gone {
            match self.wire.read(&mut self.buf) {
                Read_::Gone => break,
                Read_::Bytes => self.frames(),
                Read_::Idle => {}
            }
            while let Ok(ev) = self.rx.try_recv() {
                self.event(ev);
            }
            // Keeps the WebSocket's queued control answers (pongs) moving while idle.
            if let Wire::Ws(ws) = &mut self.wire
                && last_ping.elapsed() > Duration::from_secs(1)
            {
                last_ping = Instant::now();
                let _ = ws.flush();
            }
        }
        for l in self.live.values() {
            if let Some(s) = &l.socket {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    fn frames(&mut self) {
        loop {
            let f = match self.codec.decode(&mut self.buf) {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "port-forward over SPDY");
                    self.gone = true;
                    return;
                }
            };
            match f {
                Frame::SynStream { id, headers, .. } => self.stream(id, &headers),
                Frame::Data { id, fin, data } => {
                    if let Some(l) = self.live.get_mut(&id) {
                        let mut items = Vec::new();
                        if !data.is_empty() {
                            items.push(Some(data));
                        }
                        if fin {
                            items.push(None);
                        }
                        for it in items {
                            match &l.to_pod {
                                Some(w) => {
                                    let _ = w.send(it);
                                }
                                None => l.early.push(it),
                            }
                        }
                    }
                    // Data on an error stream (kubectl sends none) is ignored.
                }
                Frame::RstStream { id, .. } => {
                    if let Some(l) = self.live.remove(&id)
                        && let Some(s) = l.socket
                    {
                        let _ = s.shutdown(Shutdown::Both);
                    }
                }
                Frame::Ping(id) => self.send(&Frame::Ping(id)),
                Frame::GoAway => self.gone = true,
                _ => {}
            }
        }
    }

    fn stream(&mut self, id: u32, headers: &[(String, String)]) {
        match self.pairs.add(id, headers) {
            Added::Waiting => self.send(&Frame::SynReply {
                id,
                headers: Vec::new(),
            }),
            Added::Ready(c) => {
                self.send(&Frame::SynReply {
                    id,
                    headers: Vec::new(),
                });
                self.live.insert(
                    c.data,
                    Live {
                        error: c.error,
                        to_pod: None,
                        early: Vec::new(),
                        socket: None,
                    },
                );
                let (tx, target, data, port) =
                    (self.tx.clone(), self.target.clone(), c.data, c.port);
                std::thread::spawn(move || {
                    let _ = tx.send(Ev::Dialed(data, dial(&target, port)));
                });
            }
            Added::Refused { error, message } => {
                tracing::debug!(%message, "port-forward stream refused");
                self.send(&Frame::RstStream { id, status: 1 });
                if let Some(e) = error {
                    self.data(e, true, message.into_bytes());
                }
            }
        }
    }

    fn event(&mut self, ev: Ev) {
        match ev {
            Ev::Dialed(data, Err(e)) => {
                if let Some(l) = self.live.remove(&data) {
                    self.data(l.error, true, e.to_string().into_bytes());
                    self.data(data, true, Vec::new());
                }
            }
            Ev::Dialed(data, Ok(sock)) => {
                let Some(l) = self.live.get_mut(&data) else {
                    // The client reset the stream meanwhile.
                    let _ = sock.shutdown(Shutdown::Both);
                    return;
                };
                let (Ok(mut reader), Ok(mut writer)) = (sock.try_clone(), sock.try_clone()) else {
                    let error = l.error;
                    self.live.remove(&data);
                    self.data(error, true, b"cloning the pod connection".to_vec());
                    self.data(data, true, Vec::new());
                    return;
                };
                let (wtx, wrx) = mpsc::channel::<Option<Vec<u8>>>();
                for it in l.early.drain(..) {
                    let _ = wtx.send(it);
                }
                l.to_pod = Some(wtx);
                l.socket = Some(sock);
                std::thread::spawn(move || {
                    while let Ok(it) = wrx.recv() {
                        match it {
                            Some(b) => {
                                if writer.write_all(&b).is_err() {
                                    break;
                                }
                            }
                            None => {
                                let _ = writer.shutdown(Shutdown::Write);
                                break;
                            }
                        }
                    }
                });
                let tx = self.tx.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 32 * 1024];
                    loop {
                        match reader.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if tx.send(Ev::Out(data, buf[..n].to_vec())).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = tx.send(Ev::Closed(data));
                });
            }
            Ev::Out(data, b) => {
                if self.live.contains_key(&data) {
                    self.data(data, false, b);
                }
            }
            Ev::Closed(data) => {
                if let Some(l) = self.live.remove(&data) {
                    self.data(data, true, Vec::new());
                    self.data(l.error, true, Vec::new());
                    if let Some(s) = l.socket {
                        let _ = s.shutdown(Shutdown::Both);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn error_and_data_streams_pair_by_request_id() {
        let mut p = Pairs::default();
        let e0 = h(&[
            ("streamtype", "error"),
            ("port", "8080"),
            ("requestid", "0"),
        ]);
        let e1 = h(&[
            ("streamtype", "error"),
            ("port", "9090"),
            ("requestid", "1"),
        ]);
        assert_eq!(p.add(1, &e0), Added::Waiting);
        assert_eq!(p.add(3, &e1), Added::Waiting);
        let d1 = h(&[("streamtype", "data"), ("port", "9090"), ("requestid", "1")]);
        assert_eq!(
            p.add(5, &d1),
            Added::Ready(Conn {
                request: "1".into(),
                port: 9090,
                error: 3,
                data: 5
            })
        );
        let d0 = h(&[("streamType", "data"), ("port", "8080"), ("requestID", "0")]);
        assert!(matches!(
            p.add(7, &d0),
            Added::Ready(Conn {
                port: 8080,
                error: 1,
                data: 7,
                ..
            })
        ));
        assert!(p.pending.is_empty());
    }

    #[test]
    fn streams_without_request_ids_pair_with_the_one_before() {
        let mut p = Pairs::default();
        assert_eq!(
            p.add(1, &h(&[("streamtype", "error"), ("port", "80")])),
            Added::Waiting
        );
        assert!(matches!(
            p.add(3, &h(&[("streamtype", "data"), ("port", "80")])),
            Added::Ready(Conn {
                error: 1,
                data: 3,
                ..
            })
        ));
    }

    #[test]
    fn bad_streams_are_refused_with_a_reason() {
        let mut p = Pairs::default();
        assert_eq!(
            p.add(
                1,
                &h(&[("streamtype", "error"), ("port", "80"), ("requestid", "0")])
            ),
            Added::Waiting
        );
        assert_eq!(
            p.add(
                3,
                &h(&[("streamtype", "data"), ("port", "0"), ("requestid", "0")])
            ),
            Added::Refused {
                error: Some(1),
                message: "invalid port header".into()
            }
        );
        assert!(matches!(
            p.add(5, &h(&[("streamtype", "data"), ("requestid", "9")])),
            Added::Refused { error: None, .. }
        ));
        assert!(matches!(
            p.add(
                7,
                &h(&[("streamtype", "bogus"), ("port", "1"), ("requestid", "2")])
            ),
            Added::Refused { .. }
        ));
        let e = h(&[("streamtype", "error"), ("port", "80"), ("requestid", "3")]);
        assert_eq!(p.add(9, &e), Added::Waiting);
        assert!(matches!(
            p.add(11, &e),
            Added::Refused { error: Some(9), .. }
        ));
        assert_eq!(
            p.add(
                13,
                &h(&[("streamtype", "error"), ("port", "80"), ("requestid", "4")])
            ),
            Added::Waiting
        );
        assert!(matches!(
            p.add(
                15,
                &h(&[("streamtype", "data"), ("port", "81"), ("requestid", "4")])
            ),
            Added::Refused {
                error: Some(13),
                ..
            }
        ));
    }
}

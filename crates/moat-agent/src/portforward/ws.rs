//! Port forwarding over plain WebSocket channels, the kubelet's `v4.channel.k8s.io`
//! form that client libraries use (the Python client's `portforward`): the ports are in
//! the query (`ports=` as clients send it, `port=` as kube-apiserver passes it on, each
//! repeated or comma-separated), and port *i* gets channel 2*i* for data and 2*i*+1 for
//! errors. Each channel's first message is the port, little-endian; then messages are
//! `[channel, bytes...]` both ways. One pod connection per port is dialled at once; the
//! session ends when all have ended or the client goes.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

use super::{Target, dial};
use crate::http::{Reply, Request, Stream, websocket_headers};

/// The channel subprotocols served (binary only; base64 is for browsers).
pub const PROTOCOLS: &[&str] = &["v4.channel.k8s.io", "channel.k8s.io"];

/// Why the request's ports are unusable (a 400 with this message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortsError {
    #[error("invalid port {0:?}")]
    Invalid(String),
    #[error("query parameter \"ports\" is required")]
    Missing,
}

/// The ports of the request, in order.
pub fn ports(req: &Request) -> Result<Vec<u16>, PortsError> {
    let mut out = Vec::new();
    for v in req.all("ports").into_iter().chain(req.all("port")) {
        for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => out.push(n),
                _ => return Err(PortsError::Invalid(p.to_string())),
            }
        }
    }
    if out.is_empty() {
        return Err(PortsError::Missing);
    }
    Ok(out)
}

/// The first message of a port's channel: the channel byte and the port, little-endian.
pub fn port_prefix(channel: u8, port: u16) -> Vec<u8> {
    let [lo, hi] = port.to_le_bytes();
    vec![channel, lo, hi]
}

enum Ev {
    Out(usize, Vec<u8>),
    Closed(usize),
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// The answer to a plain-WebSocket port-forward request: a refusal, or the upgrade whose
/// session forwards the query's ports.
pub(crate) fn serve(req: &Request, target: Target) -> Reply {
    let ports = match ports(req) {
        Ok(p) => p,
        Err(e) => return Reply::bad(format!("{e}\n")),
    };
    if ports.len() > 127 {
        return Reply::bad("too many ports\n");
    }
    let offered = req.header_values("sec-websocket-protocol");
    let proto = PROTOCOLS.iter().copied().find(|p| offered.contains(p));
    let Some(key) = req.header("sec-websocket-key") else {
        return Reply::bad("no Sec-WebSocket-Key\n");
    };
    if !offered.is_empty() && proto.is_none() {
        return Reply::bad(
            "port forwarding over WebSocket needs v4.channel.k8s.io or SPDY/3.1+portforward.k8s.io\n",
        );
    }
    Reply::Upgrade {
        headers: websocket_headers(key, proto),
        session: Box::new(move |s| {
            if let Err(e) = session(s, &ports, &target) {
                tracing::debug!(error = %e, "port-forward over WebSocket channels");
            }
        }),
    }
}

/// Forwards `ports` of `target` for the client on `s`, until all have ended or it goes.
fn session(s: Stream, ports: &[u16], target: &Target) -> std::io::Result<()> {
    // One thread owns the socket; short read timeouts let it interleave reads and writes.
    s.set_read_timeout(Some(Duration::from_millis(20)))?;
    let mut ws = WebSocket::from_raw_socket(s, Role::Server, None);
    let send = |ws: &mut WebSocket<Stream>, m: Vec<u8>| ws.send(Message::Binary(m.into())).is_ok();
    for (i, &p) in ports.iter().enumerate() {
        let ch = (2 * i) as u8;
        if !send(&mut ws, port_prefix(ch, p)) || !send(&mut ws, port_prefix(ch + 1, p)) {
            return Ok(());
        }
    }
    let (tx, rx) = mpsc::channel::<Ev>();
    // Per port: the socket (for writes and shutdown), or None once ended.
    let mut conns: HashMap<usize, TcpStream> = HashMap::new();
    for (i, &p) in ports.iter().enumerate() {
        match dial(target, p) {
            Ok(sock) => {
                let Ok(mut reader) = sock.try_clone() else {
                    continue;
                };
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 32 * 1024];
                    while let Ok(n) = reader.read(&mut buf) {
                        if n == 0 || tx.send(Ev::Out(i, buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                    let _ = tx.send(Ev::Closed(i));
                });
                conns.insert(i, sock);
            }
            Err(e) => {
                let mut m = vec![(2 * i + 1) as u8];
                m.extend_from_slice(e.to_string().as_bytes());
                if !send(&mut ws, m) {
                    return Ok(());
                }
            }
        }
    }
    while !conns.is_empty() {
        match ws.read() {
            Ok(Message::Binary(b)) => {
                if let Some((&ch, data)) = b.split_first()
                    && ch % 2 == 0
                    && let Some(sock) = conns.get_mut(&usize::from(ch / 2))
                    && sock.write_all(data).is_err()
                {
                    let _ = sock.shutdown(Shutdown::Both);
                }
            }
            Ok(Message::Close(_)) => break,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if timed_out(&e) => {}
            Err(_) => break,
        }
        while let Ok(ev) = rx.try_recv() {
            match ev {
                Ev::Out(i, data) => {
                    let mut m = Vec::with_capacity(data.len() + 1);
                    m.push((2 * i) as u8);
                    m.extend_from_slice(&data);
                    if !send(&mut ws, m) {
                        conns.clear();
                    }
                }
                Ev::Closed(i) => {
                    if let Some(sock) = conns.remove(&i) {
                        let _ = sock.shutdown(Shutdown::Both);
                    }
                }
            }
        }
    }
    for sock in conns.values() {
        let _ = sock.shutdown(Shutdown::Both);
    }
    let _ = ws.close(None);
    let _ = ws.flush();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(q: &str) -> Request {
        Request::get(&format!("/portForward/d/p?{q}"))
    }

    #[test]
    fn ports_come_from_either_query_name_repeated_or_listed() {
        assert_eq!(ports(&req("ports=8080,9090")), Ok(vec![8080, 9090]));
        assert_eq!(ports(&req("port=80&port=81")), Ok(vec![80, 81]));
        assert!(
            ports(&req(""))
                .unwrap_err()
                .to_string()
                .contains("required")
        );
        assert_eq!(ports(&req("ports=0")), Err(PortsError::Invalid("0".into())));
        assert!(ports(&req("ports=http")).is_err());
    }

    #[test]
    fn each_channel_opens_with_its_port_little_endian() {
        assert_eq!(port_prefix(0, 8080), vec![0, 0x90, 0x1f]);
        assert_eq!(port_prefix(3, 443), vec![3, 0xbb, 0x01]);
    }
}

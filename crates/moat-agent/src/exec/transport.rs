//! The client side of an exec or attach session, over either stream protocol kubectl
//! speaks (see [`crate::exec`]): the upgrade's negotiation ([`negotiate`]), then a
//! [`Transport`] on the upgraded connection, WebSocket channels or SPDY streams.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

use super::{PROTOCOLS, SPDY_PROTOCOL};
use crate::http::{Reply, Request, Stream, UpgradeHeaders, spdy_headers, websocket_headers};
use crate::spdy::{Codec, Frame};

/// Picks the first protocol we speak from the client's offer.
pub fn pick_protocol(offer: &str) -> Option<&'static str> {
    let offered: Vec<&str> = offer.split(',').map(str::trim).collect();
    PROTOCOLS.iter().copied().find(|p| offered.contains(p))
}

/// `{"Width":W,"Height":H}` of a resize message.
pub fn parse_resize(b: &[u8]) -> Option<(u16, u16)> {
    let v: Value = serde_json::from_slice(b).ok()?;
    Some((
        u16::try_from(v["Width"].as_u64()?).ok()?,
        u16::try_from(v["Height"].as_u64()?).ok()?,
    ))
}

/// What the process side of a session produced.
#[derive(Debug)]
pub(crate) enum Out {
    Data(u8, Vec<u8>),
    Exited(i32),
}

/// What the client sent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
    Stdin(Vec<u8>),
    StdinEof,
    Resize(u16, u16),
    Gone,
    /// Nothing within the poll interval.
    Idle,
}

/// The client side of an exec: WebSocket or SPDY.
pub(crate) trait Transport {
    /// The next event, waiting at most about 20 ms.
    fn poll(&mut self) -> Event;
    /// Sends output of channel 1 (stdout) or 2 (stderr); false once the client is gone.
    fn output(&mut self, chan: u8, data: &[u8]) -> bool;
    /// Sends the final status and ends the session.
    fn finish(&mut self, status: &Value);
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

struct Ws {
    ws: WebSocket<Stream>,
    v5: bool,
}

impl Transport for Ws {
    fn poll(&mut self) -> Event {
        match self.ws.read() {
            Ok(Message::Binary(b)) => match b.first() {
                Some(0) => Event::Stdin(b[1..].to_vec()),
                Some(4) => parse_resize(&b[1..]).map_or(Event::Idle, |(w, h)| Event::Resize(w, h)),
                Some(255) if self.v5 && b.get(1) == Some(&0) => Event::StdinEof,
                _ => Event::Idle,
            },
            Ok(Message::Close(_)) => Event::Gone,
            Ok(_) => Event::Idle,
            Err(tungstenite::Error::Io(e)) if timed_out(&e) => Event::Idle,
            Err(_) => Event::Gone,
        }
    }

    fn output(&mut self, chan: u8, data: &[u8]) -> bool {
        let mut m = Vec::with_capacity(data.len() + 1);
        m.push(chan);
        m.extend_from_slice(data);
        self.ws.send(Message::Binary(m.into())).is_ok()
    }

    fn finish(&mut self, status: &Value) {
        let mut m = vec![3u8];
        m.extend_from_slice(status.to_string().as_bytes());
        let _ = self.ws.send(Message::Binary(m.into()));
        // A normal close code: kubectl reads "no status" (1005) as an error.
        let _ = self.ws.close(Some(tungstenite::protocol::CloseFrame {
            code: tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "".into(),
        }));
        let _ = self.ws.flush();
        // Let the close handshake finish (bounded by the client answering).
        for _ in 0..50 {
            match self.ws.read() {
                Err(tungstenite::Error::Io(e)) if timed_out(&e) => {}
                Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

/// SPDY stream ids of one exec, by `streamtype`.
#[derive(Debug, Default)]
struct Streams {
    error: Option<u32>,
    stdin: Option<u32>,
    stdout: Option<u32>,
    stderr: Option<u32>,
    resize: Option<u32>,
}

struct Spdy {
    s: Stream,
    codec: Codec,
    buf: Vec<u8>,
    streams: Streams,
    resize_buf: Vec<u8>,
    events: VecDeque<Event>,
    gone: bool,
}

impl Spdy {
    fn send(&mut self, f: &Frame) -> bool {
        match self.codec.encode(f) {
            Ok(b) => {
                let ok = self.s.write_all(&b).and_then(|()| self.s.flush()).is_ok();
                if !ok {
                    self.gone = true;
                }
                ok
            }
            Err(_) => false,
        }
    }

    /// Reads what arrived and turns frames into events (and protocol answers).
    fn pump(&mut self) {
        let mut chunk = [0u8; 16 * 1024];
        match self.s.read(&mut chunk) {
            Ok(0) => self.gone = true,
            Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            Err(e) if timed_out(&e) => {}
            Err(_) => self.gone = true,
        }
        loop {
            let f = match self.codec.decode(&mut self.buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "exec over SPDY");
                    self.gone = true;
                    break;
                }
            };
            match f {
                Frame::SynStream { id, headers, .. } => {
                    let ty = headers
                        .iter()
                        .find(|(k, _)| k == "streamtype")
                        .map(|(_, v)| v.as_str());
                    let slot = match ty {
                        Some("error") => &mut self.streams.error,
                        Some("stdin") => &mut self.streams.stdin,
                        Some("stdout") => &mut self.streams.stdout,
                        Some("stderr") => &mut self.streams.stderr,
                        Some("resize") => &mut self.streams.resize,
                        _ => {
                            self.send(&Frame::RstStream { id, status: 3 });
                            continue;
                        }
                    };
                    *slot = Some(id);
                    self.send(&Frame::SynReply {
                        id,
                        headers: Vec::new(),
                    });
                }
                Frame::Data { id, fin, data } => {
                    if Some(id) == self.streams.stdin {
                        if !data.is_empty() {
                            self.events.push_back(Event::Stdin(data));
                        }
                        if fin {
                            self.events.push_back(Event::StdinEof);
                        }
                    } else if Some(id) == self.streams.resize {
                        self.resize_buf.extend_from_slice(&data);
                        // json.Encoder writes one object per line.
                        while let Some(nl) = self.resize_buf.iter().position(|&b| b == b'\n') {
                            let line: Vec<u8> = self.resize_buf.drain(..=nl).collect();
                            if let Some((w, h)) = parse_resize(&line) {
                                self.events.push_back(Event::Resize(w, h));
                            }
                        }
                    }
                }
                Frame::RstStream { id, .. } if Some(id) == self.streams.stdin => {
                    self.events.push_back(Event::StdinEof);
                }
                Frame::Ping(id) => {
                    self.send(&Frame::Ping(id));
                }
                Frame::GoAway => self.gone = true,
                _ => {}
            }
        }
    }

    /// After the 101: waits for the streams the request's flags call for.
    fn establish(&mut self, stdin: bool, stdout: bool, stderr: bool, tty: bool) -> bool {
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until && !self.gone {
            self.pump();
            let st = &self.streams;
            if st.error.is_some()
                && (!stdin || st.stdin.is_some())
                && (!stdout || st.stdout.is_some())
                && (!stderr || tty || st.stderr.is_some())
                && (!tty || st.resize.is_some())
            {
                return true;
            }
        }
        false
    }
}

impl Transport for Spdy {
    fn poll(&mut self) -> Event {
        if self.events.is_empty() && !self.gone {
            self.pump();
        }
        match self.events.pop_front() {
            Some(e) => e,
            None if self.gone => Event::Gone,
            None => Event::Idle,
        }
    }

    fn output(&mut self, chan: u8, data: &[u8]) -> bool {
        let id = match chan {
            2 => self.streams.stderr.or(self.streams.stdout),
            _ => self.streams.stdout,
        };
        match id {
            Some(id) => self.send(&Frame::Data {
                id,
                fin: false,
                data: data.to_vec(),
            }),
            None => !self.gone,
        }
    }

    fn finish(&mut self, status: &Value) {
        for id in [self.streams.stdout, self.streams.stderr]
            .into_iter()
            .flatten()
        {
            self.send(&Frame::Data {
                id,
                fin: true,
                data: Vec::new(),
            });
        }
        if let Some(id) = self.streams.error {
            self.send(&Frame::Data {
                id,
                fin: true,
                data: status.to_string().into_bytes(),
            });
        }
        // kubectl hangs up once it has read everything; give it a moment to.
        for _ in 0..50 {
            if self.gone {
                break;
            }
            self.pump();
        }
    }
}

/// The stream protocol a session runs on, chosen by [`negotiate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proto {
    Ws { v5: bool },
    Spdy,
}

/// The upgrade answer (the 101's headers) and protocol for an exec or attach request, or
/// the refusal to send instead.
pub(crate) fn negotiate(req: &Request) -> Result<(UpgradeHeaders, Proto), Reply> {
    let upgrade = req.header("upgrade").unwrap_or("");
    if upgrade.eq_ignore_ascii_case("websocket") {
        let proto = req.header("sec-websocket-protocol").and_then(pick_protocol);
        let (Some(key), Some(proto)) = (req.header("sec-websocket-key"), proto) else {
            return Err(Reply::bad(
                "exec over WebSocket needs v5.channel.k8s.io or v4.channel.k8s.io\n",
            ));
        };
        let v5 = proto.starts_with("v5");
        return Ok((websocket_headers(key, Some(proto)), Proto::Ws { v5 }));
    }
    if upgrade.eq_ignore_ascii_case("SPDY/3.1") {
        if !req
            .header_values("x-stream-protocol-version")
            .contains(&SPDY_PROTOCOL)
        {
            return Err(Reply::bad(
                "exec over SPDY needs X-Stream-Protocol-Version v4.channel.k8s.io\n",
            ));
        }
        return Ok((spdy_headers(SPDY_PROTOCOL), Proto::Spdy));
    }
    Err(Reply::bad(
        "exec needs a WebSocket (v5/v4.channel.k8s.io) or SPDY/3.1 upgrade\n",
    ))
}

/// The client side of a session on the upgraded connection `s`; None when it cannot be
/// used or (SPDY) the client never opened the streams the request's flags call for.
pub(crate) fn open(s: Stream, proto: Proto, req: &Request) -> Option<Box<dyn Transport>> {
    // One thread owns the socket; short read timeouts let it interleave reads and writes.
    s.set_read_timeout(Some(Duration::from_millis(20))).ok()?;
    match proto {
        Proto::Ws { v5 } => Some(Box::new(Ws {
            ws: WebSocket::from_raw_socket(s, Role::Server, None),
            v5,
        })),
        Proto::Spdy => {
            let mut t = Spdy {
                s,
                codec: Codec::new(),
                buf: Vec::new(),
                streams: Streams::default(),
                resize_buf: Vec::new(),
                events: VecDeque::new(),
                gone: false,
            };
            let tty = req.flag("tty");
            if !t.establish(
                req.flag("stdin"),
                req.flag("stdout"),
                req.flag("stderr"),
                tty,
            ) {
                return None;
            }
            Some(Box::new(t))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_choice_prefers_v5() {
        assert_eq!(
            pick_protocol("v4.channel.k8s.io, v5.channel.k8s.io"),
            Some("v5.channel.k8s.io")
        );
        assert_eq!(
            pick_protocol("v4.channel.k8s.io"),
            Some("v4.channel.k8s.io")
        );
        assert_eq!(pick_protocol("channel.k8s.io"), None);
    }

    #[test]
    fn resize_messages_parse() {
        assert_eq!(
            parse_resize(br#"{"Width":101,"Height":33}"#),
            Some((101, 33))
        );
        assert_eq!(
            parse_resize(b"{\"Width\":80,\"Height\":24}\n"),
            Some((80, 24))
        );
        assert_eq!(parse_resize(br#"{"Width":70000,"Height":33}"#), None);
        assert_eq!(parse_resize(b"junk"), None);
    }
}

//! `exec` on the agent endpoint: Kubernetes' WebSocket channel protocol
//! (`v5.channel.k8s.io`, `v4.channel.k8s.io`): binary messages whose first byte is the channel
//! (0 stdin, 1 stdout, 2 stderr, 3 status, 4 resize; v5 adds 255 = close, `[255, 0]` closing
//! stdin). The command runs through the pod's runtime handler (`<binary> exec <id> ...`); the
//! exit code goes back as a metav1.Status on channel 3, which kubectl turns into its own exit
//! code. Without a terminal: `tty=true` is served in line mode.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::json;
use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

use crate::endpoint::{Ctx, Request, Stream, locate, respond};

pub const PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// The status message kubectl reads on channel 3.
pub fn status_message(code: i32, argv: &[String]) -> serde_json::Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command {argv:?}, exit code {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// Picks the first protocol we speak from the client's offer.
pub fn pick_protocol(offer: &str) -> Option<&'static str> {
    let offered: Vec<&str> = offer.split(',').map(str::trim).collect();
    PROTOCOLS.iter().copied().find(|p| offered.contains(p))
}

enum Out {
    Data(u8, Vec<u8>),
    Exited(i32),
}

pub fn serve(
    mut s: Stream,
    ctx: &Ctx,
    req: &Request,
    ns: &str,
    pod: &str,
    c: &str,
) -> std::io::Result<()> {
    let (rec, _, id, _) = match locate(ctx, ns, pod, c) {
        Ok(x) => x,
        Err((code, reason, msg)) => return respond(&mut s, code, reason, &msg),
    };
    let Some(id) = id else {
        return respond(
            &mut s,
            400,
            "Bad Request",
            &format!("container {c} is not running\n"),
        );
    };
    let argv = req.all("command");
    if argv.is_empty() {
        return respond(&mut s, 400, "Bad Request", "no command\n");
    }
    let upgrade = req
        .header("upgrade")
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    let proto = req.header("sec-websocket-protocol").and_then(pick_protocol);
    let (Some(key), true, Some(proto)) = (req.header("sec-websocket-key"), upgrade, proto) else {
        // kubectl then falls back to SPDY, which this endpoint does not speak.
        return respond(
            &mut s,
            400,
            "Bad Request",
            "exec needs a WebSocket upgrade with v5.channel.k8s.io or v4.channel.k8s.io\n",
        );
    };
    let h = rec.handler();
    let mut cmd = Command::new(&h.binary);
    cmd.args(&h.options)
        .arg("--root")
        .arg(&h.root)
        .arg("exec")
        .arg(&id)
        .args(&argv)
        .stdin(if req.flag("stdin") {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return respond(
                &mut s,
                500,
                "Internal Server Error",
                &format!("starting {} exec: {e}\n", h.binary.display()),
            );
        }
    };
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    write!(
        s,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {proto}\r\n\r\n"
    )?;
    s.flush()?;
    // One thread owns the socket; short read timeouts let it interleave reads and writes.
    s.sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    let mut ws = WebSocket::from_raw_socket(s, Role::Server, None);
    let (tx, rx) = mpsc::channel::<Out>();
    let mut readers = Vec::new();
    for (chan, pipe) in [
        (
            1u8,
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
        (
            2u8,
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
    ] {
        let Some(mut p) = pipe else { continue };
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = p.read(&mut buf) {
                if n == 0 || tx.send(Out::Data(chan, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }));
    }
    let mut stdin = child.stdin.take();
    std::thread::spawn(move || {
        for r in readers {
            let _ = r.join();
        }
        let code = match child.wait() {
            Ok(st) => st.code().unwrap_or_else(|| {
                128 + std::os::unix::process::ExitStatusExt::signal(&st).unwrap_or(0)
            }),
            Err(_) => 255,
        };
        let _ = tx.send(Out::Exited(code));
    });
    let v5 = proto.starts_with("v5");
    loop {
        match ws.read() {
            Ok(Message::Binary(b)) => match b.first() {
                Some(0) => {
                    if let Some(si) = stdin.as_mut()
                        && si.write_all(&b[1..]).is_err()
                    {
                        stdin = None;
                    }
                }
                Some(255) if v5 && b.get(1) == Some(&0) => stdin = None,
                _ => {}
            },
            Ok(Message::Close(_)) => break,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
        let mut done = false;
        while let Ok(o) = rx.try_recv() {
            match o {
                Out::Data(chan, mut d) => {
                    d.insert(0, chan);
                    if ws.send(Message::Binary(d.into())).is_err() {
                        return Ok(());
                    }
                }
                Out::Exited(code) => {
                    let mut m = vec![3u8];
                    m.extend_from_slice(status_message(code, &argv).to_string().as_bytes());
                    let _ = ws.send(Message::Binary(m.into()));
                    // A normal close code: kubectl reads "no status" (1005) as an error.
                    let _ = ws.close(Some(tungstenite::protocol::CloseFrame {
                        code: tungstenite::protocol::frame::coding::CloseCode::Normal,
                        reason: "".into(),
                    }));
                    let _ = ws.flush();
                    done = true;
                }
            }
        }
        if done {
            // Let the close handshake finish (bounded by the client answering).
            for _ in 0..50 {
                match ws.read() {
                    Err(tungstenite::Error::Io(e))
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                    Ok(_) => {}
                }
            }
            break;
        }
    }
    Ok(())
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
    fn exit_codes_become_kubectl_status() {
        assert_eq!(status_message(0, &[])["status"], "Success");
        let f = status_message(3, &["false".into()]);
        assert_eq!(f["reason"], "NonZeroExitCode");
        assert_eq!(
            f["details"]["causes"][0],
            json!({"reason": "ExitCode", "message": "3"})
        );
    }
}

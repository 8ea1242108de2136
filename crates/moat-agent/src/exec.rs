//! `exec` on the agent endpoint: Kubernetes' WebSocket channel protocol
//! (`v5.channel.k8s.io`, `v4.channel.k8s.io`): binary messages whose first byte is the channel
//! (0 stdin, 1 stdout, 2 stderr, 3 status, 4 resize; v5 adds 255 = close, `[255, 0]` closing
//! stdin). The command runs through the pod's runtime handler (`<binary> exec <id> ...`); the
//! exit code goes back as a metav1.Status on channel 3, which kubectl turns into its own exit
//! code. With `tty=true` the command gets a pseudo-terminal: `<binary> exec -d -t
//! --console-socket` hands its master to the agent (as containerd's shim gets it), the
//! output goes out on channel 1, and channel 4 (`{"Width":..,"Height":..}`) resizes it; a
//! reaper (`moat agent shim --reap`) is the detached process's parent and reports its exit
//! code.

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
    if req.flag("tty") {
        return serve_tty(s, ctx, &h, &id, &argv, key, proto, req.flag("stdin"));
    }
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
    let ws = WebSocket::from_raw_socket(s, Role::Server, None);
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
    let stdin = child.stdin.take();
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
    relay(
        ws,
        &rx,
        stdin.map(|w| Box::new(w) as Box<dyn Write>),
        None,
        &argv,
        proto.starts_with("v5"),
    );
    Ok(())
}

/// `{"Width":W,"Height":H}` of a resize message (channel 4).
pub fn parse_resize(b: &[u8]) -> Option<(u16, u16)> {
    let v: serde_json::Value = serde_json::from_slice(b).ok()?;
    Some((
        u16::try_from(v["Width"].as_u64()?).ok()?,
        u16::try_from(v["Height"].as_u64()?).ok()?,
    ))
}

/// Moves data between the WebSocket and the process until it has exited (its status sent)
/// or the client is gone.
fn relay(
    mut ws: WebSocket<Stream>,
    rx: &mpsc::Receiver<Out>,
    mut stdin: Option<Box<dyn Write>>,
    resize: Option<&dyn Fn(u16, u16)>,
    argv: &[String],
    v5: bool,
) {
    loop {
        match ws.read() {
            Ok(Message::Binary(b)) => match b.first() {
                Some(0) => {
                    if let Some(si) = stdin.as_mut()
                        && (si.write_all(&b[1..]).is_err() || si.flush().is_err())
                    {
                        stdin = None;
                    }
                }
                Some(4) => {
                    if let (Some(f), Some((w, h))) = (resize, parse_resize(&b[1..])) {
                        f(w, h);
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
                        return;
                    }
                }
                Out::Exited(code) => {
                    let mut m = vec![3u8];
                    m.extend_from_slice(status_message(code, argv).to_string().as_bytes());
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
}

/// Receives the pty master runc sends on the console socket.
fn recv_master(conn: &std::os::unix::net::UnixStream) -> std::io::Result<std::fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd, RawFd};
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = nix::sys::socket::recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for c in msg.cmsgs()? {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c
            && let Some(&fd) = fds.first()
        {
            // SAFETY: the kernel just installed `fd` in this process for us (SCM_RIGHTS);
            // nothing else owns it, and any further fds in the message are not used.
            return Ok(unsafe { std::fs::File::from_raw_fd(fd) });
        }
    }
    Err(std::io::Error::other("no console fd from the runtime"))
}

fn set_winsize(master: &std::fs::File, cols: u16, rows: u16) {
    use std::os::fd::AsRawFd;
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which is valid for the call;
    // the fd is the pty master we own.
    let _ = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

/// Sends a failure status (channel 3) and closes: errors after the upgrade.
fn fail(mut ws: WebSocket<Stream>, msg: &str) {
    let mut m = vec![3u8];
    m.extend_from_slice(
        json!({"metadata": {}, "status": "Failure", "reason": "InternalError", "message": msg})
            .to_string()
            .as_bytes(),
    );
    let _ = ws.send(Message::Binary(m.into()));
    let _ = ws.close(None);
    let _ = ws.flush();
}

/// `exec` with a terminal (see the module docs). The upgrade comes first so that kubectl's
/// initial terminal size (it sends one at once) is known before the process starts.
#[allow(clippy::too_many_arguments)]
fn serve_tty(
    mut s: Stream,
    ctx: &Ctx,
    h: &crate::handlers::Handler,
    id: &str,
    argv: &[String],
    key: &str,
    proto: &'static str,
    want_stdin: bool,
) -> std::io::Result<()> {
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    write!(
        s,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {proto}\r\n\r\n"
    )?;
    s.flush()?;
    s.sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    let mut ws = WebSocket::from_raw_socket(s, Role::Server, None);
    let v5 = proto.starts_with("v5");
    // Up to a second for the first resize; stdin arriving meanwhile is kept for later.
    let mut size = None;
    let mut early_stdin = Vec::new();
    let mut stdin_closed = false;
    let until = std::time::Instant::now() + Duration::from_secs(1);
    while size.is_none() && std::time::Instant::now() < until {
        match ws.read() {
            Ok(Message::Binary(b)) => match b.first() {
                Some(4) => size = parse_resize(&b[1..]),
                Some(0) => early_stdin.extend_from_slice(&b[1..]),
                Some(255) if v5 && b.get(1) == Some(&0) => stdin_closed = true,
                _ => {}
            },
            Ok(Message::Close(_)) => return Ok(()),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Ok(()),
        }
    }

    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = ctx.run_dir.join("exec");
    std::fs::create_dir_all(&dir)?;
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tag = format!("{}-{n}", std::process::id());
    let sock = dir.join(format!("{tag}.sock"));
    let pid_file = dir.join(format!("{tag}.pid"));
    let _ = std::fs::remove_file(&sock);
    let listener = std::os::unix::net::UnixListener::bind(&sock)?;
    let cleanup = || {
        let _ = std::fs::remove_file(&sock);
        let _ = std::fs::remove_file(&pid_file);
    };
    let Some((shim, shim_args)) = ctx.shim.split_first() else {
        cleanup();
        fail(ws, "no shim configured on the node");
        return Ok(());
    };
    let mut cmd = Command::new(shim);
    cmd.args(shim_args)
        .arg("--reap")
        .arg(&pid_file)
        .arg("--")
        .arg(&h.binary)
        .args(&h.options)
        .arg("--root")
        .arg(&h.root)
        .args(["exec", "-d", "-t", "--console-socket"])
        .arg(&sock)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(id)
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let (fd_tx, fd_rx) = mpsc::channel();
    // The size goes on as soon as the terminal exists, before the command gets far.
    std::thread::spawn(move || {
        let r = listener.accept().and_then(|(conn, _)| recv_master(&conn));
        if let (Ok(m), Some((w, h))) = (&r, size) {
            set_winsize(m, w, h);
        }
        let _ = fd_tx.send(r);
    });
    let mut reaper = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = std::os::unix::net::UnixStream::connect(&sock);
            cleanup();
            fail(ws, &format!("starting the exec reaper: {e}"));
            return Ok(());
        }
    };
    let Some(stdout) = reaper.stdout.take() else {
        let _ = reaper.kill();
        let _ = reaper.wait();
        let _ = std::os::unix::net::UnixStream::connect(&sock);
        cleanup();
        fail(ws, "the exec reaper has no stdout");
        return Ok(());
    };
    let mut lines = std::io::BufReader::new(stdout);
    let mut first = String::new();
    use std::io::BufRead;
    let _ = lines.read_line(&mut first);
    let started = first
        .trim()
        .strip_prefix("ok ")
        .and_then(|p| p.parse::<i32>().ok());
    let master = match started {
        Some(_) => fd_rx.recv_timeout(Duration::from_secs(10)),
        None => Err(mpsc::RecvTimeoutError::Disconnected),
    };
    // Unblock the accept if the runtime never connected.
    let _ = std::os::unix::net::UnixStream::connect(&sock);
    cleanup();
    let master = match master {
        Ok(Ok(m)) => m,
        other => {
            let msg = match (started, other) {
                (None, _) => first
                    .trim()
                    .strip_prefix("error ")
                    .unwrap_or("the exec reaper exited without an answer")
                    .to_string(),
                (Some(_), Ok(Err(e))) => format!("receiving the terminal: {e}"),
                (Some(_), _) => "the runtime sent no terminal".to_string(),
            };
            let _ = reaper.kill();
            let _ = reaper.wait();
            fail(ws, &msg);
            return Ok(());
        }
    };
    let (tx, rx) = mpsc::channel::<Out>();
    let mut out = master.try_clone()?;
    let reader = std::thread::spawn({
        let tx = tx.clone();
        move || {
            let mut buf = vec![0u8; 16 * 1024];
            // EIO once the last holder of the terminal's other end is gone.
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 || tx.send(Out::Data(1, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    });
    std::thread::spawn(move || {
        let _ = reader.join();
        let mut line = String::new();
        let code = loop {
            line.clear();
            match lines.read_line(&mut line) {
                Ok(0) | Err(_) => break 255,
                Ok(_) => {
                    if let Some(c) = line
                        .trim()
                        .strip_prefix("exit ")
                        .and_then(|c| c.parse().ok())
                    {
                        break c;
                    }
                }
            }
        };
        let _ = reaper.wait();
        let _ = tx.send(Out::Exited(code));
    });
    let stdin = if want_stdin && !stdin_closed {
        let mut w = master.try_clone()?;
        w.write_all(&early_stdin)?;
        Some(Box::new(w) as Box<dyn Write>)
    } else {
        None
    };
    let resize = |w: u16, h: u16| set_winsize(&master, w, h);
    relay(ws, &rx, stdin, Some(&resize), argv, v5);
    // Dropping the master hangs up the terminal: a process still running gets SIGHUP.
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
    fn resize_messages_parse() {
        assert_eq!(
            parse_resize(br#"{"Width":101,"Height":33}"#),
            Some((101, 33))
        );
        assert_eq!(parse_resize(br#"{"Width":70000,"Height":33}"#), None);
        assert_eq!(parse_resize(b"junk"), None);
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

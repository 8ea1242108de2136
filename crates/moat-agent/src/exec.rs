//! `exec` on the agent endpoint, over either stream protocol kubectl speaks:
//!
//! - WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`; kubectl 1.30+): binary messages
//!   whose first byte is the channel (0 stdin, 1 stdout, 2 stderr, 3 status, 4 resize; v5
//!   adds 255 = close, `[255, 0]` closing stdin);
//! - SPDY/3.1 (`v4.channel.k8s.io`; kubectl 1.27–1.29): one SPDY stream per channel, made by
//!   the client with a `streamtype` header (`error`, `stdin`, `stdout`, `stderr`, `resize`),
//!   see [`crate::spdy`].
//!
//! The command runs through the pod's runtime handler (`<binary> exec <id> ...`); the exit
//! code goes back as a metav1.Status (channel 3 / the error stream), which kubectl turns into
//! its own exit code. With `tty=true` the command gets a pseudo-terminal: `<binary> exec -d
//! -t --console-socket` hands its master to the agent (as containerd's shim gets it), the
//! output goes out as stdout, resize messages (`{"Width":..,"Height":..}`) resize it, the
//! first one before the command starts; a reaper (`moat agent shim --reap`) is the detached
//! process's parent and reports its exit code.

mod transport;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::http::{Ctx, Reply, Request, locate};
pub(crate) use transport::{Event, Out, Transport, negotiate, open};
pub use transport::{parse_resize, pick_protocol};

pub const PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// What this endpoint speaks over SPDY (v4: status on the error stream, resize stream).
pub const SPDY_PROTOCOL: &str = "v4.channel.k8s.io";

/// The status message kubectl reads on channel 3.
pub fn status_message(code: i32, argv: &[String]) -> Value {
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

fn failure(msg: &str) -> Value {
    json!({"metadata": {}, "status": "Failure", "reason": "InternalError", "message": msg})
}

/// The answer to an exec request: a refusal, or the upgrade whose session runs the command.
pub fn serve(ctx: &Ctx, req: &Request, ns: &str, pod: &str, c: &str) -> Reply {
    let (rec, _, id, _) = match locate(ctx, ns, pod, c) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(id) = id else {
        return Reply::bad(format!("container {c} is not running\n"));
    };
    let argv = req.all("command");
    if argv.is_empty() {
        return Reply::bad("no command\n");
    }
    let (headers, proto) = match negotiate(req) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let (ctx, req) = (ctx.clone(), req.clone());
    Reply::Upgrade {
        headers,
        session: Box::new(move |s| {
            if let Some(mut t) = open(s, proto, &req) {
                session(t.as_mut(), &ctx, &req, &rec, &id, &argv);
            }
        }),
    }
}

/// Runs `argv` in container `id` for the client on `t`, until it exits or the client goes.
fn session(
    t: &mut dyn Transport,
    ctx: &Ctx,
    req: &Request,
    rec: &crate::podstate::PodRecord,
    id: &str,
    argv: &[String],
) {
    let h = rec.handler();
    if req.flag("tty") {
        serve_tty(t, ctx, &h, id, argv, req.flag("stdin"));
        return;
    }
    let mut cmd = Command::new(&h.binary);
    cmd.args(&h.options)
        .arg("--root")
        .arg(&h.root)
        .arg("exec")
        .arg(id)
        .args(argv)
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
            t.finish(&failure(&format!(
                "starting {} exec: {e}",
                h.binary.display()
            )));
            return;
        }
    };
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
        t,
        &rx,
        stdin.map(|w| Box::new(w) as Box<dyn Write>),
        None,
        argv,
    );
}

/// Moves data between the client and the process until it has exited (its status sent) or
/// the client is gone.
pub(crate) fn relay(
    t: &mut dyn Transport,
    rx: &mpsc::Receiver<Out>,
    mut stdin: Option<Box<dyn Write>>,
    resize: Option<&dyn Fn(u16, u16)>,
    argv: &[String],
) {
    loop {
        match t.poll() {
            Event::Stdin(d) => {
                if let Some(si) = stdin.as_mut()
                    && (si.write_all(&d).is_err() || si.flush().is_err())
                {
                    stdin = None;
                }
            }
            Event::StdinEof => stdin = None,
            Event::Resize(w, h) => {
                if let Some(f) = resize {
                    f(w, h);
                }
            }
            Event::Gone => return,
            Event::Idle => {}
        }
        while let Ok(o) = rx.try_recv() {
            match o {
                Out::Data(chan, d) => {
                    if !t.output(chan, &d) {
                        return;
                    }
                }
                Out::Exited(code) => {
                    t.finish(&status_message(code, argv));
                    return;
                }
            }
        }
    }
}

/// Receives the pty master runc sends on the console socket.
pub(crate) fn recv_master(conn: &std::os::unix::net::UnixStream) -> std::io::Result<std::fs::File> {
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

pub(crate) fn set_winsize(master: &std::fs::File, cols: u16, rows: u16) {
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

/// `exec` with a terminal (see the module docs): kubectl's initial terminal size (it sends
/// one at once) is awaited before the process starts.
fn serve_tty(
    t: &mut dyn Transport,
    ctx: &Ctx,
    h: &crate::handlers::Handler,
    id: &str,
    argv: &[String],
    want_stdin: bool,
) {
    // Up to a second for the first resize; stdin arriving meanwhile is kept for later.
    let mut size = None;
    let mut early_stdin = Vec::new();
    let mut stdin_closed = false;
    let until = Instant::now() + Duration::from_secs(1);
    while size.is_none() && Instant::now() < until {
        match t.poll() {
            Event::Resize(w, h) => size = Some((w, h)),
            Event::Stdin(d) => early_stdin.extend_from_slice(&d),
            Event::StdinEof => stdin_closed = true,
            Event::Gone => return,
            Event::Idle => {}
        }
    }
    match start_tty(ctx, h, id, argv, size) {
        Ok((master, rx)) => {
            let stdin = if want_stdin && !stdin_closed {
                master.try_clone().ok().map(|mut w| {
                    let _ = w.write_all(&early_stdin);
                    Box::new(w) as Box<dyn Write>
                })
            } else {
                None
            };
            let resize = |w: u16, h: u16| set_winsize(&master, w, h);
            relay(t, &rx, stdin, Some(&resize), argv);
            // Dropping the master hangs up the terminal: a process still running gets SIGHUP.
        }
        Err(e) => t.finish(&failure(&crate::errors::chain(&e))),
    }
}

/// Why a terminal exec did not start; its chain is the Status message the client reads.
#[derive(Debug, thiserror::Error)]
enum TtyError {
    #[error("{step}")]
    Io {
        step: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no shim configured on the node")]
    NoShim,
    #[error("the exec reaper has no stdout")]
    NoReaperStdout,
    /// The reaper's `error ...` answer (the runtime's own words), or its silence.
    #[error("{0}")]
    Reaper(String),
    #[error("the runtime sent no terminal")]
    NoTerminal,
}

fn io_step(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> TtyError {
    let step = step.into();
    move |source| TtyError::Io { step, source }
}

/// Starts `argv` in container `id` on a new terminal; its master and the output/exit events.
fn start_tty(
    ctx: &Ctx,
    h: &crate::handlers::Handler,
    id: &str,
    argv: &[String],
    size: Option<(u16, u16)>,
) -> Result<(std::fs::File, mpsc::Receiver<Out>), TtyError> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = ctx.run_dir.join("exec");
    std::fs::create_dir_all(&dir).map_err(io_step(format!("creating {}", dir.display())))?;
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tag = format!("{}-{n}", std::process::id());
    let sock = dir.join(format!("{tag}.sock"));
    let pid_file = dir.join(format!("{tag}.pid"));
    let _ = std::fs::remove_file(&sock);
    let listener = std::os::unix::net::UnixListener::bind(&sock)
        .map_err(io_step(format!("binding {}", sock.display())))?;
    let cleanup = || {
        // Unblocks the accept if the runtime never connected.
        let _ = std::os::unix::net::UnixStream::connect(&sock);
        let _ = std::fs::remove_file(&sock);
        let _ = std::fs::remove_file(&pid_file);
    };
    let Some((shim, shim_args)) = ctx.shim.split_first() else {
        cleanup();
        return Err(TtyError::NoShim);
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
            cleanup();
            return Err(io_step("starting the exec reaper")(e));
        }
    };
    let Some(stdout) = reaper.stdout.take() else {
        let _ = reaper.kill();
        let _ = reaper.wait();
        cleanup();
        return Err(TtyError::NoReaperStdout);
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
    cleanup();
    let master = match master {
        Ok(Ok(m)) => m,
        other => {
            let _ = reaper.kill();
            let _ = reaper.wait();
            return Err(match (started, other) {
                (None, _) => TtyError::Reaper(
                    first
                        .trim()
                        .strip_prefix("error ")
                        .unwrap_or("the exec reaper exited without an answer")
                        .to_string(),
                ),
                (Some(_), Ok(Err(e))) => io_step("receiving the terminal")(e),
                (Some(_), _) => TtyError::NoTerminal,
            });
        }
    };
    let (tx, rx) = mpsc::channel::<Out>();
    let mut out = master.try_clone().map_err(io_step("the terminal"))?;
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
    Ok((master, rx))
}

#[cfg(test)]
mod tests {
    use super::*;

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

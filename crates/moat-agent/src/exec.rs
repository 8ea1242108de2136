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

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

use crate::http::{Ctx, Request, Stream, locate, respond};
use crate::spdy::{Codec, Frame};

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

/// The exec request's stream protocol, after its upgrade answer.
pub(crate) fn upgrade(mut s: Stream, req: &Request) -> std::io::Result<Option<Box<dyn Transport>>> {
    let upgrade = req.header("upgrade").unwrap_or("");
    let tty = req.flag("tty");
    if upgrade.eq_ignore_ascii_case("websocket") {
        let proto = req.header("sec-websocket-protocol").and_then(pick_protocol);
        let (Some(key), Some(proto)) = (req.header("sec-websocket-key"), proto) else {
            respond(
                &mut s,
                400,
                "Bad Request",
                "exec over WebSocket needs v5.channel.k8s.io or v4.channel.k8s.io\n",
            )?;
            return Ok(None);
        };
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        write!(
            s,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {proto}\r\n\r\n"
        )?;
        s.flush()?;
        // One thread owns the socket; short read timeouts let it interleave reads and writes.
        s.sock.set_read_timeout(Some(Duration::from_millis(20)))?;
        return Ok(Some(Box::new(Ws {
            ws: WebSocket::from_raw_socket(s, Role::Server, None),
            v5: proto.starts_with("v5"),
        })));
    }
    if upgrade.eq_ignore_ascii_case("SPDY/3.1") {
        if !req
            .header_values("x-stream-protocol-version")
            .contains(&SPDY_PROTOCOL)
        {
            respond(
                &mut s,
                400,
                "Bad Request",
                "exec over SPDY needs X-Stream-Protocol-Version v4.channel.k8s.io\n",
            )?;
            return Ok(None);
        }
        write!(
            s,
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {SPDY_PROTOCOL}\r\n\r\n"
        )?;
        s.flush()?;
        s.sock.set_read_timeout(Some(Duration::from_millis(20)))?;
        let mut t = Spdy {
            s,
            codec: Codec::new(),
            buf: Vec::new(),
            streams: Streams::default(),
            resize_buf: Vec::new(),
            events: VecDeque::new(),
            gone: false,
        };
        if !t.establish(
            req.flag("stdin"),
            req.flag("stdout"),
            req.flag("stderr"),
            tty,
        ) {
            return Ok(None);
        }
        return Ok(Some(Box::new(t)));
    }
    respond(
        &mut s,
        400,
        "Bad Request",
        "exec needs a WebSocket (v5/v4.channel.k8s.io) or SPDY/3.1 upgrade\n",
    )?;
    Ok(None)
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
    let Some(mut t) = upgrade(s, req)? else {
        return Ok(());
    };
    let h = rec.handler();
    if req.flag("tty") {
        serve_tty(t.as_mut(), ctx, &h, &id, &argv, req.flag("stdin"));
        return Ok(());
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
            t.finish(&failure(&format!(
                "starting {} exec: {e}",
                h.binary.display()
            )));
            return Ok(());
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
        t.as_mut(),
        &rx,
        stdin.map(|w| Box::new(w) as Box<dyn Write>),
        None,
        &argv,
    );
    Ok(())
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

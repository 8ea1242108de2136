//! Host end of the guest agent channel: requests with ids, events, and stdio streams pumped
//! both ways under the protocol's credit windows. One reader thread per channel; one thread
//! per output sink and per input pump, so a slow consumer only stalls its own stream.

use moat_vm_proto::{
    self as proto, Decoder, Event, Frame, Hello, Kind, Op, Request, Response, Window,
};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// The byte pipe to the guest agent: virtio-serial through a QEMU chardev socket today; a
/// vsock connection fits the same two halves where the host has vhost-vsock.
pub trait Transport: Send {
    /// Splits into a reader (for the channel's reader thread) and a writer.
    fn split(self: Box<Self>) -> std::io::Result<(Box<dyn Read + Send>, Box<dyn Write + Send>)>;
}

impl Transport for UnixStream {
    fn split(self: Box<Self>) -> std::io::Result<(Box<dyn Read + Send>, Box<dyn Write + Send>)> {
        let r = self.try_clone()?;
        Ok((Box::new(r), self))
    }
}
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("the guest agent channel is closed: {0}")]
    Dead(String),
    #[error("the guest agent did not answer {what} within {secs} s")]
    Timeout { what: String, secs: u64 },
    #[error("the guest agent refused {what}: {why}")]
    Refused { what: String, why: String },
    #[error("the guest agent speaks protocol {0}, this runtime {ours}", ours = proto::PROTOCOL_VERSION)]
    Version(u32),
}

/// What the daemon learns from the channel.
pub trait Events: Send + Sync {
    fn exited(&self, container: &str, exec_id: Option<&str>, status: i32);
    /// The channel ended (QEMU died or the guest powered off).
    fn died(&self, why: &str);
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    next_stream: u32,
    pending: HashMap<u64, Option<Response>>,
    windows: HashMap<u32, Window>,
    sinks: HashMap<u32, mpsc::Sender<Option<Vec<u8>>>>,
    /// Input streams whose process is gone: their pumps stop.
    closed_inputs: std::collections::HashSet<u32>,
    dead: Option<String>,
    hello: Option<Hello>,
}

pub struct AgentConn {
    w: Mutex<Box<dyn Write + Send>>,
    inner: Mutex<Inner>,
    cv: Condvar,
}

impl AgentConn {
    /// Starts the reader thread on `sock` (the host end of QEMU's agent chardev).
    pub fn start(
        transport: Box<dyn Transport>,
        events: Arc<dyn Events>,
    ) -> std::io::Result<Arc<AgentConn>> {
        let (r, w) = transport.split()?;
        let c = Arc::new(AgentConn {
            w: Mutex::new(w),
            inner: Mutex::new(Inner {
                next_stream: 1,
                ..Default::default()
            }),
            cv: Condvar::new(),
        });
        let c2 = c.clone();
        std::thread::spawn(move || c2.read_loop(r, events));
        Ok(c)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, f: &Frame) -> Result<(), ChannelError> {
        let bytes = f.encode();
        let mut w = self.w.lock().unwrap_or_else(|p| p.into_inner());
        w.write_all(&bytes)
            .map_err(|e| ChannelError::Dead(format!("writing: {e}")))
    }

    fn read_loop(&self, mut r: Box<dyn Read + Send>, events: Arc<dyn Events>) {
        let mut dec = Decoder::new();
        let mut buf = vec![0u8; 64 * 1024];
        let why = loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break "the VM closed the channel".to_string(),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => break format!("reading: {e}"),
            };
            dec.feed(&buf[..n]);
            let mut bad = None;
            loop {
                match dec.next_frame() {
                    Ok(Some(f)) => self.dispatch(f, &*events),
                    Ok(None) => break,
                    Err(e) => {
                        bad = Some(format!("the guest sent a bad frame: {e}"));
                        break;
                    }
                }
            }
            if let Some(b) = bad {
                break b;
            }
        };
        {
            let mut g = self.lock();
            g.dead = Some(why.clone());
            // Dropping the senders ends every sink thread.
            g.sinks.clear();
        }
        self.cv.notify_all();
        events.died(&why);
    }

    fn dispatch(&self, f: Frame, events: &dyn Events) {
        match f.kind {
            Kind::Hello => {
                if let Ok(h) = proto::parse::<Hello>(&f, Kind::Hello) {
                    self.lock().hello = Some(h);
                    self.cv.notify_all();
                }
            }
            Kind::Response => {
                if let Ok(resp) = proto::parse::<Response>(&f, Kind::Response) {
                    let mut g = self.lock();
                    if let Some(slot) = g.pending.get_mut(&resp.id) {
                        *slot = Some(resp);
                    }
                    drop(g);
                    self.cv.notify_all();
                }
            }
            Kind::Event => {
                if let Ok(Event::Exited {
                    container,
                    exec_id,
                    status,
                }) = proto::parse::<Event>(&f, Kind::Event)
                {
                    events.exited(&container, exec_id.as_deref(), status);
                }
            }
            Kind::Data => {
                if let Some(tx) = self.lock().sinks.get(&f.stream) {
                    let _ = tx.send(Some(f.payload));
                }
            }
            Kind::Eof => {
                if let Some(tx) = self.lock().sinks.remove(&f.stream) {
                    let _ = tx.send(None);
                }
            }
            Kind::Credit => {
                let mut g = self.lock();
                if let (Some(n), Some(w)) = (f.credit_amount(), g.windows.get_mut(&f.stream)) {
                    w.grant(n);
                }
                drop(g);
                self.cv.notify_all();
            }
            Kind::Request => {}
        }
    }

    /// The host's greeting. A VM restored from a template said its hello to the template's
    /// builder, so the host greets first and goes straight to `Resume`.
    pub fn greet(&self) -> Result<(), ChannelError> {
        self.send(&proto::control(
            Kind::Hello,
            &Hello {
                version: proto::PROTOCOL_VERSION,
                agent: format!("moat-runtime {}", env!("CARGO_PKG_VERSION")),
                kernel_release: String::new(),
                init_ms: 0,
                ready_ms: 0,
            },
        ))
    }

    pub fn wait_hello(&self, timeout: Duration) -> Result<Hello, ChannelError> {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        loop {
            if let Some(h) = &g.hello {
                let h = h.clone();
                drop(g);
                if h.version != proto::PROTOCOL_VERSION {
                    return Err(ChannelError::Version(h.version));
                }
                self.greet()?;
                return Ok(h);
            }
            if let Some(d) = &g.dead {
                return Err(ChannelError::Dead(d.clone()));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ChannelError::Timeout {
                    what: "the boot greeting".into(),
                    secs: timeout.as_secs(),
                });
            }
            g = self
                .cv
                .wait_timeout(g, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    pub fn request(&self, op: Op, timeout: Duration) -> Result<Response, ChannelError> {
        let what = op_name(&op);
        let id = {
            let mut g = self.lock();
            if let Some(d) = &g.dead {
                return Err(ChannelError::Dead(d.clone()));
            }
            g.next_id += 1;
            let id = g.next_id;
            g.pending.insert(id, None);
            id
        };
        if let Err(e) = self.send(&proto::control(Kind::Request, &Request { id, op })) {
            self.lock().pending.remove(&id);
            return Err(e);
        }
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        loop {
            if let Some(Some(_)) = g.pending.get(&id) {
                let resp = g.pending.remove(&id).flatten().unwrap_or_default();
                return match resp.error {
                    Some(why) => Err(ChannelError::Refused { what, why }),
                    None => Ok(resp),
                };
            }
            if let Some(d) = g.dead.clone() {
                g.pending.remove(&id);
                return Err(ChannelError::Dead(d));
            }
            let now = Instant::now();
            if now >= deadline {
                g.pending.remove(&id);
                return Err(ChannelError::Timeout {
                    what,
                    secs: timeout.as_secs(),
                });
            }
            g = self
                .cv
                .wait_timeout(g, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    pub fn alloc_streams(&self, n: u32) -> Vec<u32> {
        let mut g = self.lock();
        let first = g.next_stream;
        g.next_stream += n;
        (first..first + n).collect()
    }

    /// Writes a guest output stream into `fd`; `done` runs once the stream ended and every
    /// byte was written (or the fd broke).
    pub fn attach_output(
        self: &Arc<Self>,
        stream: u32,
        fd: OwnedFd,
        done: Box<dyn FnOnce() + Send>,
    ) {
        let (tx, rx) = mpsc::channel::<Option<Vec<u8>>>();
        {
            let mut g = self.lock();
            if g.dead.is_none() {
                g.sinks.insert(stream, tx);
            }
        }
        let c = self.clone();
        std::thread::spawn(move || {
            let mut file = File::from(fd);
            let mut broken = false;
            while let Ok(Some(data)) = rx.recv() {
                // A reader that went away (EPIPE) loses the output; credit keeps flowing so
                // the guest process never blocks on it.
                if !broken && file.write_all(&data).is_err() {
                    broken = true;
                }
                let _ = c.send(&Frame::credit(stream, data.len() as u32));
            }
            drop(file);
            done();
        });
    }

    /// Pumps `fd` into a guest input stream until EOF, or until the stream is closed.
    ///
    /// With `tty = Some((container, exec))` the fd is the host end of a terminal whose size
    /// the manager (conmon, containerd) sets; every size change is forwarded to the guest pty.
    pub fn attach_input(
        self: &Arc<Self>,
        stream: u32,
        fd: OwnedFd,
        tty: Option<(String, Option<String>)>,
    ) {
        self.lock().windows.insert(stream, Window::default());
        let c = self.clone();
        std::thread::spawn(move || {
            let mut file = File::from(fd);
            let mut buf = vec![0u8; 32 * 1024];
            let mut size = (0u16, 0u16);
            loop {
                if let Some((container, exec_id)) = &tty {
                    // SAFETY: winsize is plain old data filled by TIOCGWINSZ on our fd.
                    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
                    // SAFETY: valid fd and out pointer.
                    let ok =
                        unsafe { libc::ioctl(file.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } == 0;
                    if ok && ws.ws_row > 0 && (ws.ws_row, ws.ws_col) != size {
                        size = (ws.ws_row, ws.ws_col);
                        let _ = c.request(
                            Op::Resize {
                                container: container.clone(),
                                exec_id: exec_id.clone(),
                                rows: ws.ws_row,
                                cols: ws.ws_col,
                            },
                            Duration::from_secs(10),
                        );
                    }
                }
                let n = {
                    let mut g = c.lock();
                    loop {
                        if g.dead.is_some() || g.closed_inputs.contains(&stream) {
                            g.windows.remove(&stream);
                            return;
                        }
                        let n = g.windows.entry(stream).or_default().take(buf.len());
                        if n > 0 {
                            break n;
                        }
                        g =
                            c.cv.wait_timeout(g, Duration::from_millis(500))
                                .map(|(g, _)| g)
                                .unwrap_or_else(|p| p.into_inner().0);
                    }
                };
                // Poll first so a process that exits without reading its stdin releases us.
                let mut pfd = libc::pollfd {
                    fd: file.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                let r = unsafe { libc::poll(&mut pfd, 1, 200) };
                if r == 0 {
                    if let Some(w) = c.lock().windows.get_mut(&stream) {
                        w.grant(n as u32);
                    }
                    continue;
                }
                let got = file.read(&mut buf[..n]).unwrap_or(0);
                if got < n
                    && let Some(w) = c.lock().windows.get_mut(&stream)
                {
                    w.grant((n - got) as u32);
                }
                if got == 0 {
                    let _ = c.send(&Frame::eof(stream));
                    c.lock().windows.remove(&stream);
                    return;
                }
                if c.send(&Frame::new(stream, Kind::Data, buf[..got].to_vec()))
                    .is_err()
                {
                    return;
                }
            }
        });
    }

    /// Ends an output sink whose process never came to be (a refused create or exec): its
    /// descriptor closes, so whoever reads it (conmon, a CLI caller) sees EOF.
    pub fn close_output(&self, stream: u32) {
        self.lock().sinks.remove(&stream);
    }

    /// Stops the input pump of a finished process.
    pub fn close_input(&self, stream: u32) {
        self.lock().closed_inputs.insert(stream);
        self.cv.notify_all();
    }

    pub fn is_dead(&self) -> bool {
        self.lock().dead.is_some()
    }
}

fn op_name(op: &Op) -> String {
    serde_json::to_value(op)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
        .unwrap_or_else(|| "request".into())
}

#[cfg(test)]
mod tests {
    //! The host end against a scripted guest on a socketpair: no QEMU, no root.
    use super::*;
    use moat_vm_proto::{Response, control};
    use std::os::fd::OwnedFd;

    #[derive(Default)]
    struct Rec(
        Mutex<Vec<(String, Option<String>, i32)>>,
        Mutex<Option<String>>,
    );
    impl Events for Rec {
        fn exited(&self, c: &str, e: Option<&str>, st: i32) {
            self.0
                .lock()
                .unwrap()
                .push((c.into(), e.map(str::to_string), st));
        }
        fn died(&self, why: &str) {
            *self.1.lock().unwrap() = Some(why.into());
        }
    }

    fn read_frame(s: &mut UnixStream, d: &mut Decoder) -> Frame {
        let mut buf = [0u8; 65536];
        loop {
            if let Some(f) = d.next_frame().unwrap() {
                return f;
            }
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "host closed");
            d.feed(&buf[..n]);
        }
    }

    #[test]
    fn requests_streams_credit_and_exit_against_a_scripted_guest() {
        let (host, mut guest) = UnixStream::pair().unwrap();
        let ev = Arc::new(Rec::default());
        let c = AgentConn::start(Box::new(host), ev.clone()).unwrap();
        let hello = Hello {
            version: proto::PROTOCOL_VERSION,
            agent: "fake".into(),
            kernel_release: "6.1.0-test".into(),
            init_ms: 5,
            ready_ms: 9,
        };
        guest
            .write_all(&control(Kind::Hello, &hello).encode())
            .unwrap();
        assert_eq!(
            c.wait_hello(Duration::from_secs(5)).unwrap().kernel_release,
            "6.1.0-test"
        );
        let mut d = Decoder::new();
        assert_eq!(read_frame(&mut guest, &mut d).kind, Kind::Hello);

        // An output stream: bytes land in the sink and every byte is credited back.
        let (out_r, out_w) = UnixStream::pair().unwrap();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let d2 = done.clone();
        c.attach_output(
            7,
            OwnedFd::from(out_w),
            Box::new(move || d2.store(true, std::sync::atomic::Ordering::SeqCst)),
        );
        guest
            .write_all(&Frame::new(7, Kind::Data, b"hello ".to_vec()).encode())
            .unwrap();
        guest
            .write_all(&Frame::new(7, Kind::Data, b"world".to_vec()).encode())
            .unwrap();
        guest.write_all(&Frame::eof(7).encode()).unwrap();
        let mut got = String::new();
        let mut out_r = out_r;
        out_r.read_to_string(&mut got).unwrap();
        assert_eq!(got, "hello world");
        let credits: u32 = (0..2)
            .map(|_| read_frame(&mut guest, &mut d).credit_amount().unwrap())
            .sum();
        assert_eq!(credits, 11);
        for _ in 0..100 {
            if done.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(done.load(std::sync::atomic::Ordering::SeqCst));

        // A request answered out of band; an error answer becomes Refused with its text.
        let c2 = c.clone();
        let t = std::thread::spawn(move || c2.request(Op::Ping, Duration::from_secs(5)));
        let f = read_frame(&mut guest, &mut d);
        let req: Request = proto::parse(&f, Kind::Request).unwrap();
        let resp = Response {
            id: req.id,
            error: Some("no such container".into()),
            ..Default::default()
        };
        guest
            .write_all(&control(Kind::Response, &resp).encode())
            .unwrap();
        match t.join().unwrap() {
            Err(ChannelError::Refused { why, .. }) => assert_eq!(why, "no such container"),
            other => panic!("{other:?}"),
        }

        // Events reach the daemon; a closed channel fails pending and later requests.
        let exit = Event::Exited {
            container: "c1".into(),
            exec_id: None,
            status: 7,
        };
        guest
            .write_all(&control(Kind::Event, &exit).encode())
            .unwrap();
        drop(guest);
        for _ in 0..100 {
            if ev.1.lock().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            ev.0.lock().unwrap().as_slice(),
            [("c1".to_string(), None, 7)]
        );
        assert!(ev.1.lock().unwrap().is_some());
        assert!(matches!(
            c.request(Op::Ping, Duration::from_secs(1)),
            Err(ChannelError::Dead(_))
        ));
    }

    #[test]
    fn a_garbage_frame_from_the_guest_ends_the_channel() {
        let (host, mut guest) = UnixStream::pair().unwrap();
        let ev = Arc::new(Rec::default());
        let c = AgentConn::start(Box::new(host), ev.clone()).unwrap();
        guest
            .write_all(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 1])
            .unwrap();
        for _ in 0..100 {
            if c.is_dead() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(c.is_dead());
        assert!(
            ev.1.lock()
                .unwrap()
                .as_deref()
                .unwrap()
                .contains("bad frame")
        );
    }
}

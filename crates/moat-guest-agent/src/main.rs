//! moat-guest-agent: PID 1 of a moat VM sandbox.
//!
//! Boot: pseudo filesystems, virtio modules, the 9p share, then the virtio-serial port named
//! `agent.channel.0`. It greets the host with `Hello` and serves requests: each request on a
//! thread of its own, stdio as pushed streams with credit (one pump thread per output, one
//! writer thread per input), and a reaper that collects every child (PID 1 must).

mod caps;
mod cgroup;
mod container;
mod error;
mod init;
mod net;
mod sys;

use moat_vm_proto::{
    self as proto, Decoder, Event, Frame, Hello, Kind, Op, ProcessSpec, Request, Response, Window,
};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use error::OpError;

struct Proc {
    container: String,
    exec_id: Option<String>,
    pid: i32,
    status: Option<i32>,
    open_outputs: usize,
    reported: bool,
    start: Option<i32>,
    pty: Option<i32>,
    stdin_stream: Option<u32>,
}

struct Container {
    dir: String,
    init_monitor: Option<i32>,
}

#[derive(Default)]
struct State {
    containers: HashMap<String, Container>,
    /// Keyed by monitor pid (the child the agent reaps).
    procs: HashMap<i32, Proc>,
    /// Reaped before the spawner registered them.
    early: HashMap<i32, i32>,
    windows: HashMap<u32, Window>,
    stdin: HashMap<u32, mpsc::Sender<Option<Vec<u8>>>>,
}

struct Agent {
    out: Mutex<File>,
    st: Mutex<State>,
    credit: Condvar,
    exited: Condvar,
}

type Shared = Arc<Agent>;

/// Logs go to the kernel log (and so the serial console): one write per line, as /dev/kmsg
/// wants, and it works before and after the console is set up.
pub(crate) fn log(msg: &str) {
    // Level 3 (err) so that a `quiet` console still shows it.
    let line = format!("<3>moat-guest-agent: {msg}\n");
    match std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        Ok(mut k) => {
            let _ = k.write_all(line.as_bytes());
        }
        Err(_) => eprint!("{line}"),
    }
}

impl Agent {
    fn send(&self, f: &Frame) {
        let bytes = f.encode();
        if let Ok(mut o) = self.out.lock()
            && let Err(e) = o.write_all(&bytes)
        {
            log(&format!("writing to the host channel: {e}"));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `Exited` once the process is reaped and all its output has gone out.
    fn maybe_exit(&self, st: &mut State, monitor: i32) {
        let Some(p) = st.procs.get_mut(&monitor) else {
            return;
        };
        if p.reported || p.open_outputs > 0 {
            return;
        }
        let Some(status) = p.status else {
            return;
        };
        p.reported = true;
        let pty = p.pty.take();
        if let Some(s) = p.stdin_stream.take() {
            st.stdin.remove(&s);
        }
        if let Some(fd) = pty {
            sys::close(fd);
        }
        let Some(p) = st.procs.get(&monitor) else {
            return;
        };
        let ev = Event::Exited {
            container: p.container.clone(),
            exec_id: p.exec_id.clone(),
            status,
        };
        self.send(&proto::control(Kind::Event, &ev));
        self.exited.notify_all();
    }
}

fn reaper(a: Shared) {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid status pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid < 0 {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        };
        let mut st = a.lock();
        match st.procs.get_mut(&pid) {
            Some(p) => {
                p.status = Some(code);
                a.maybe_exit(&mut st, pid);
            }
            None => {
                st.early.insert(pid, code);
            }
        }
    }
}

/// Pumps one output fd to the host as `Data` frames within the stream's window.
fn pump_output(a: Shared, fd: i32, stream: u32, monitor: i32, owned: bool) {
    let mut file = sys_file(fd);
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = {
            let mut st = a.lock();
            loop {
                let w = st.windows.entry(stream).or_default();
                let n = w.take(buf.len());
                if n > 0 {
                    break n;
                }
                st = a.credit.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        };
        let got = match file.read(&mut buf[..n]) {
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
            // EIO is how a pty master says its last slave closed.
            Err(_) => {
                break;
            }
        };
        if got < n {
            let mut st = a.lock();
            if let Some(w) = st.windows.get_mut(&stream) {
                w.grant((n - got) as u32);
            }
        }
        if got == 0 {
            break;
        }
        a.send(&Frame::new(stream, Kind::Data, buf[..got].to_vec()));
    }
    a.send(&Frame::eof(stream));
    let mut st = a.lock();
    st.windows.remove(&stream);
    if let Some(p) = st.procs.get_mut(&monitor) {
        p.open_outputs -= 1;
    }
    a.maybe_exit(&mut st, monitor);
    // The pty master is shared with stdin and closed when the process is done; a pipe end is
    // ours alone.
    if !owned {
        std::mem::forget(file);
    }
}

fn sys_file(fd: i32) -> File {
    use std::os::fd::FromRawFd;
    // SAFETY: the caller hands over a descriptor it owns and does not use again.
    unsafe { File::from_raw_fd(fd) }
}

/// Writes host `Data` for one stdin stream into the process and returns credit.
fn stdin_writer(
    a: Shared,
    fd: i32,
    stream: u32,
    rx: mpsc::Receiver<Option<Vec<u8>>>,
    keep_open: bool,
) {
    let mut file = sys_file(fd);
    while let Ok(Some(data)) = rx.recv() {
        // A process that closed its stdin just loses the data; credit still flows so the host
        // never blocks on a dead stream.
        let _ = file.write_all(&data);
        a.send(&Frame::credit(stream, data.len() as u32));
    }
    if keep_open {
        std::mem::forget(file);
    }
}

fn attach(a: &Shared, sp: &container::Spawned, process: &ProcessSpec, monitor: i32) {
    let s = process.stdio;
    let mut outs = Vec::new();
    if let Some(m) = sp.pty_master {
        if let Some(id) = s.stdout {
            outs.push((m, id));
        }
    } else {
        if let (Some(fd), Some(id)) = (sp.stdout, s.stdout) {
            outs.push((fd, id));
        }
        if let (Some(fd), Some(id)) = (sp.stderr, s.stderr) {
            outs.push((fd, id));
        }
    }
    {
        let mut st = a.lock();
        if let Some(p) = st.procs.get_mut(&monitor) {
            p.open_outputs = outs.len();
        }
        if let Some(id) = s.stdin {
            let fd = sp.pty_master.or(sp.stdin);
            if let Some(p) = st.procs.get_mut(&monitor) {
                p.stdin_stream = Some(id);
            }
            if let Some(fd) = fd {
                let (tx, rx) = mpsc::channel();
                st.stdin.insert(id, tx);
                let a2 = a.clone();
                let keep = sp.pty_master.is_some();
                std::thread::spawn(move || stdin_writer(a2, fd, id, rx, keep));
            }
        }
    }
    let owned = sp.pty_master.is_none();
    for (fd, id) in outs {
        let a2 = a.clone();
        std::thread::spawn(move || pump_output(a2, fd, id, monitor, owned));
    }
}

fn register(a: &Shared, sp: &container::Spawned, container: &str, exec_id: Option<String>) {
    let mut st = a.lock();
    let early = st.early.remove(&sp.monitor);
    st.procs.insert(
        sp.monitor,
        Proc {
            container: container.to_string(),
            exec_id,
            pid: sp.pid,
            status: early,
            open_outputs: 0,
            reported: false,
            start: sp.start,
            pty: sp.pty_master,
            stdin_stream: None,
        },
    );
}

fn find_proc(st: &State, container: &str, exec_id: Option<&str>) -> Option<i32> {
    st.procs
        .iter()
        .find(|(_, p)| p.container == container && p.exec_id.as_deref() == exec_id)
        .map(|(m, _)| *m)
}

fn pid_ns(pid: i32) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

/// Pids (as the agent sees them) sharing the PID namespace of `init`.
fn container_pids(init: i32) -> Vec<(i32, String)> {
    let Some(ns) = pid_ns(init) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for ent in rd.flatten() {
            let Ok(pid) = ent.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if pid_ns(pid).as_ref() == Some(&ns) {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd)
                    .replace('\0', " ")
                    .trim()
                    .to_string();
                out.push((pid, cmd));
            }
        }
    }
    out.sort();
    out
}

fn handle(a: &Shared, op: Op) -> Result<Response, OpError> {
    match op {
        Op::Ping => Ok(Response::default()),
        Op::CreateContainer(spec) => {
            proto_id_ok(&spec.id)?;
            if a.lock().containers.contains_key(&spec.id) {
                return Err(OpError::Exists(spec.id));
            }
            let dir = format!("/run/c/{}", spec.id);
            let lower = container::under(init::SHARED, &spec.rootfs)
                .map_err(OpError::io("finding the rootfs"))?;
            let root = container::prepare_rootfs(&dir, &lower).map_err(|e| {
                container::remove_rootfs(&dir);
                OpError::io("preparing rootfs")(e)
            })?;
            let cg = match cgroup::create(&spec.id, &spec.resources) {
                Ok(cg) => cg,
                Err(e) => {
                    container::remove_rootfs(&dir);
                    return Err(OpError::io(format!(
                        "creating the cgroup of container {}",
                        spec.id
                    ))(e));
                }
            };
            let sp = match container::spawn(container::What::Init {
                spec: &spec,
                root: &root,
                cgroup: cg.as_deref(),
            }) {
                Ok(sp) => sp,
                Err(e) => {
                    cgroup::remove(&spec.id);
                    container::remove_rootfs(&dir);
                    return Err(OpError::io(format!("creating container {}", spec.id))(e));
                }
            };
            register(a, &sp, &spec.id, None);
            a.lock().containers.insert(
                spec.id.clone(),
                Container {
                    dir,
                    init_monitor: Some(sp.monitor),
                },
            );
            attach(a, &sp, &spec.process, sp.monitor);
            Ok(Response {
                pid: Some(sp.pid),
                ..Default::default()
            })
        }
        Op::StartContainer { id } => {
            let mut st = a.lock();
            let m = find_proc(&st, &id, None).ok_or_else(|| OpError::NoContainer(id.clone()))?;
            let p = st
                .procs
                .get_mut(&m)
                .ok_or_else(|| OpError::NoContainer(id.clone()))?;
            let fd = p
                .start
                .take()
                .ok_or_else(|| OpError::AlreadyStarted(id.clone()))?;
            let r = sys::write_all(fd, b"s");
            sys::close(fd);
            r.map_err(OpError::io(format!("starting {id}")))?;
            Ok(Response::default())
        }
        Op::Exec {
            container,
            exec_id,
            process,
            guest,
        } => {
            let init_pid = {
                let st = a.lock();
                let m = find_proc(&st, &container, None)
                    .ok_or_else(|| OpError::NoContainer(container.clone()))?;
                let p = &st.procs[&m];
                if p.status.is_some() {
                    return Err(OpError::NotRunning(container));
                }
                if find_proc(&st, &container, Some(&exec_id)).is_some() {
                    return Err(OpError::ExecIdInUse(exec_id));
                }
                // The debug console joins PID 1's own namespaces: the guest itself.
                if guest { 1 } else { p.pid }
            };
            let sp = container::spawn(container::What::Exec {
                init_pid,
                process: &process,
            })
            .map_err(OpError::io(format!("exec in {container}")))?;
            register(a, &sp, &container, Some(exec_id));
            attach(a, &sp, &process, sp.monitor);
            Ok(Response {
                pid: Some(sp.pid),
                ..Default::default()
            })
        }
        Op::Signal {
            container,
            exec_id,
            signal,
            all,
        } => {
            let st = a.lock();
            let m = find_proc(&st, &container, exec_id.as_deref())
                .ok_or_else(|| OpError::NoProcess(container.clone()))?;
            let p = &st.procs[&m];
            if p.status.is_some() {
                return Err(OpError::NotRunning(container));
            }
            let targets: Vec<i32> = if all && signal != libc::SIGKILL {
                container_pids(p.pid).into_iter().map(|(p, _)| p).collect()
            } else {
                vec![p.pid]
            };
            for t in targets {
                // SAFETY: sending a signal to a pid of this container.
                unsafe { libc::kill(t, signal) };
            }
            Ok(Response::default())
        }
        Op::Resize {
            container,
            exec_id,
            rows,
            cols,
        } => {
            let st = a.lock();
            let m = find_proc(&st, &container, exec_id.as_deref())
                .ok_or_else(|| OpError::NoProcess(container.clone()))?;
            if let Some(fd) = st.procs[&m].pty {
                let ws = libc::winsize {
                    ws_row: rows,
                    ws_col: cols,
                    ws_xpixel: 0,
                    ws_ypixel: 0,
                };
                // SAFETY: TIOCSWINSZ with a valid winsize.
                unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
            }
            Ok(Response::default())
        }
        Op::Ps { container } => {
            let st = a.lock();
            let m = find_proc(&st, &container, None)
                .ok_or_else(|| OpError::NoContainer(container.clone()))?;
            let p = &st.procs[&m];
            let processes = if p.status.is_some() {
                Vec::new()
            } else {
                container_pids(p.pid)
            };
            Ok(Response {
                processes,
                ..Default::default()
            })
        }
        Op::RemoveContainer { id } => {
            let mut st = a.lock();
            let c = st
                .containers
                .get(&id)
                .ok_or_else(|| OpError::NoContainer(id.clone()))?;
            let dir = c.dir.clone();
            let init = c.init_monitor;
            let monitors: Vec<i32> = st
                .procs
                .iter()
                .filter(|(_, p)| p.container == id)
                .map(|(m, _)| *m)
                .collect();
            for m in &monitors {
                if let Some(p) = st.procs.get_mut(m) {
                    if let Some(fd) = p.start.take() {
                        sys::close(fd);
                    }
                    if p.status.is_none() {
                        // SAFETY: killing a process of the container being removed.
                        unsafe { libc::kill(p.pid, libc::SIGKILL) };
                    }
                }
            }
            // Wait (bounded) for the reaper so no process outlives its rootfs.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while init.is_some_and(|m| st.procs.get(&m).is_some_and(|p| !p.reported))
                && std::time::Instant::now() < deadline
            {
                st = a
                    .exited
                    .wait_timeout(st, Duration::from_millis(100))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            for m in monitors {
                st.procs.remove(&m);
            }
            st.containers.remove(&id);
            drop(st);
            cgroup::remove(&id);
            container::remove_rootfs(&dir);
            Ok(Response::default())
        }
        Op::ConfigureNetwork(cfg) => {
            net::configure(&cfg).map_err(OpError::io("configuring network"))?;
            Ok(Response::default())
        }
        Op::Shutdown => Ok(Response::default()),
        Op::Resume {
            unix_time_ns,
            entropy,
        } => {
            init::resume(unix_time_ns, &entropy).map_err(OpError::io("resuming"))?;
            init::mount_share(proto::SHARE_TAG).map_err(OpError::io("mounting the share"))?;
            Ok(Response::default())
        }
    }
}

fn proto_id_ok(id: &str) -> Result<(), OpError> {
    if proto::valid_id(id) {
        Ok(())
    } else {
        Err(OpError::InvalidId(id.to_string()))
    }
}

fn serve(a: Shared, mut input: File, init_ms: u64) -> std::io::Result<()> {
    let hello = Hello {
        version: proto::PROTOCOL_VERSION,
        agent: format!("moat-guest-agent {}", env!("CARGO_PKG_VERSION")),
        kernel_release: sys::kernel_release(),
        init_ms,
        ready_ms: sys::boottime_ms(),
    };
    a.send(&proto::control(Kind::Hello, &hello));
    let mut dec = Decoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            // The host closed the port; a virtio-serial read returns 0 until it reopens.
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        dec.feed(&buf[..n]);
        loop {
            let f = match dec.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    log(&format!("host sent a bad frame, stopping: {e}"));
                    return Err(std::io::Error::other(e));
                }
            };
            match f.kind {
                Kind::Request => {
                    let req: Request = match proto::parse(&f, Kind::Request) {
                        Ok(r) => r,
                        Err(e) => {
                            log(&format!("undecodable request: {e}"));
                            continue;
                        }
                    };
                    let a2 = a.clone();
                    std::thread::spawn(move || {
                        let shutdown = matches!(req.op, Op::Shutdown);
                        let mut resp = match handle(&a2, req.op) {
                            Ok(r) => r,
                            Err(e) => Response {
                                error: Some(error::chain(&e)),
                                ..Default::default()
                            },
                        };
                        resp.id = req.id;
                        a2.send(&proto::control(Kind::Response, &resp));
                        if shutdown {
                            init::power_off();
                        }
                    });
                }
                Kind::Data => {
                    let st = a.lock();
                    if let Some(tx) = st.stdin.get(&f.stream) {
                        let _ = tx.send(Some(f.payload));
                    }
                }
                Kind::Eof => {
                    let mut st = a.lock();
                    if let Some(tx) = st.stdin.remove(&f.stream) {
                        let _ = tx.send(None);
                    }
                }
                Kind::Credit => {
                    let mut st = a.lock();
                    if let (Some(n), Some(w)) = (f.credit_amount(), st.windows.get_mut(&f.stream)) {
                        w.grant(n);
                    }
                    a.credit.notify_all();
                }
                Kind::Hello => {
                    if let Ok(h) = proto::parse::<Hello>(&f, Kind::Hello)
                        && h.version != proto::PROTOCOL_VERSION
                    {
                        log(&format!(
                            "host speaks protocol {}, we speak {}",
                            h.version,
                            proto::PROTOCOL_VERSION
                        ));
                    }
                }
                Kind::Response | Kind::Event => {}
            }
        }
    }
}

fn boot() -> std::io::Result<File> {
    init::mount_pseudo_filesystems()?;
    // The benchmark's and `moat-runtime check`'s bare boot: an init that powers off at once.
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if cmdline.split_whitespace().any(|w| w == "moat.poweroff") {
        init::power_off();
    }
    // `moat.trace` on the kernel command line logs when each start-up step ends (guest
    // clock), to see where a sandbox's start-up goes.
    let tracing = cmdline.split_whitespace().any(|w| w == "moat.trace");
    let step = |what: &str| {
        if tracing {
            log(&format!("{what} done at {} ms", sys::boottime_ms()));
        }
    };
    step("pseudo filesystems");
    init::console_stdio();
    // Without it containers with limits are refused (clearly, at create); nothing else
    // needs it, so the guest still boots.
    if let Err(e) = cgroup::mount_hierarchy() {
        log(&format!("no cgroup hierarchy: {e}"));
    }
    step("cgroup hierarchy");
    init::load_modules()?;
    step("modules");
    net::loopback_up()?;
    // A template is saved before anything is mounted from the host (9p cannot migrate while
    // mounted); each restored copy mounts its own share on `Resume`.
    if !cmdline.split_whitespace().any(|w| w == "moat.template") {
        init::mount_share(proto::SHARE_TAG)?;
        step("share");
    }
    let port = init::find_port(proto::CHANNEL_NAME, Duration::from_secs(10))?;
    step("channel port");
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&port)
        .map_err(|e| sys::ctx("opening", &port.to_string_lossy(), e))
}

fn main() {
    // SAFETY: getpid has no preconditions.
    let pid1 = unsafe { libc::getpid() } == 1;
    let init_ms = sys::boottime_ms();
    if !pid1 {
        eprintln!("moat-guest-agent runs as PID 1 of a moat VM sandbox (the initramfs /init)");
        std::process::exit(2);
    }
    let port = match boot() {
        Ok(p) => p,
        Err(e) => {
            log(&format!("boot failed: {e}"));
            init::power_off();
        }
    };
    let out = match port.try_clone() {
        Ok(o) => o,
        Err(e) => {
            log(&format!("duplicating the channel: {e}"));
            init::power_off();
        }
    };
    let a: Shared = Arc::new(Agent {
        out: Mutex::new(out),
        st: Mutex::new(State::default()),
        credit: Condvar::new(),
        exited: Condvar::new(),
    });
    let a2 = a.clone();
    std::thread::spawn(move || reaper(a2));
    if let Err(e) = serve(a, port, init_ms) {
        log(&format!("channel failed: {e}"));
    }
    init::power_off();
}

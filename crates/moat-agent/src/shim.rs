//! The per-container shim (containerd-shim's job, much reduced): it runs the handler's
//! `create`, answers the agent with `ok <pid>` or `error <message>` on stdout, then stays as
//! the container's subreaper, copying its stdout/stderr into the CRI log file and recording
//! the exit code in the bundle. It outlives agent restarts, so containers keep their logs and
//! nobody loses their exit status.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

/// Why the shim (or the exec reaper) failed. The agent reads its chain from the `error ...`
/// line, so the runtime's own stderr passes through as [`ShimError::Failed`].
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{0} needs a value")]
    MissingValue(String),
    #[error("unknown shim argument {0}")]
    UnknownArgument(String),
    #[error("shim needs --runtime, --id and --bundle")]
    MissingArguments,
    #[error("no command")]
    NoCommand,
    #[error("{step}")]
    Io {
        step: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{step}")]
    Sys {
        step: String,
        #[source]
        source: nix::errno::Errno,
    },
    /// The runtime (or the reaped command) failed: its stderr, or its status when silent.
    #[error("{0}")]
    Failed(String),
    #[error("no pid in {}", .0.display())]
    NoPid(PathBuf),
    #[error("the runtime sent no terminal")]
    NoTerminal,
}

fn io(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> ShimError {
    let step = step.into();
    move |source| ShimError::Io { step, source }
}

fn sys(step: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> ShimError {
    let step = step.into();
    move |source| ShimError::Sys { step, source }
}

/// Name of the file in the bundle where the shim records the exit code.
pub const EXIT_FILE: &str = "exit";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimArgs {
    pub runtime: PathBuf,
    pub root: PathBuf,
    pub options: Vec<String>,
    pub id: String,
    pub bundle: PathBuf,
    pub log: PathBuf,
}

impl ShimArgs {
    pub fn to_args(&self) -> Vec<String> {
        let mut v = vec![
            "--runtime".into(),
            self.runtime.display().to_string(),
            "--root".into(),
            self.root.display().to_string(),
        ];
        for o in &self.options {
            v.push(format!("--option={o}"));
        }
        v.extend([
            "--id".into(),
            self.id.clone(),
            "--bundle".into(),
            self.bundle.display().to_string(),
            "--log".into(),
            self.log.display().to_string(),
        ]);
        v
    }

    pub fn parse(args: &[String]) -> Result<ShimArgs, ShimError> {
        let mut a = ShimArgs {
            runtime: PathBuf::new(),
            root: PathBuf::new(),
            options: Vec::new(),
            id: String::new(),
            bundle: PathBuf::new(),
            log: PathBuf::new(),
        };
        let mut it = args.iter();
        while let Some(k) = it.next() {
            if let Some(o) = k.strip_prefix("--option=") {
                a.options.push(o.into());
                continue;
            }
            let v = it
                .next()
                .ok_or_else(|| ShimError::MissingValue(k.clone()))?;
            match k.as_str() {
                "--runtime" => a.runtime = v.into(),
                "--root" => a.root = v.into(),
                "--id" => a.id = v.clone(),
                "--bundle" => a.bundle = v.into(),
                "--log" => a.log = v.into(),
                _ => return Err(ShimError::UnknownArgument(k.clone())),
            }
        }
        if a.runtime.as_os_str().is_empty() || a.id.is_empty() || a.bundle.as_os_str().is_empty() {
            return Err(ShimError::MissingArguments);
        }
        Ok(a)
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// The CRI log file, reopened when its path names another file: the agent's log rotation
/// renames the current file and creates a new one (see [`crate::logrotate`]).
pub struct LogFile {
    path: PathBuf,
    file: File,
}

fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

impl LogFile {
    pub fn open(path: &std::path::Path) -> std::io::Result<LogFile> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(LogFile {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends `data` to the file the path names now (one stat per write).
    pub fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        let rotated = match (std::fs::metadata(&self.path), self.file.metadata()) {
            (Ok(now), Ok(open)) => !same_file(&now, &open),
            (Err(_), _) => true,
            (Ok(_), Err(_)) => false,
        };
        if rotated
            && let Ok(f) = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
        {
            self.file = f;
        }
        self.file.write_all(data)
    }
}

fn copy_stream(mut r: File, stream: &'static str, log: Arc<Mutex<LogFile>>) {
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut out = Vec::new();
        crate::logs::encode(&now(), stream, &mut pending, &buf[..n], &mut out);
        if !out.is_empty()
            && let Ok(mut f) = log.lock()
        {
            let _ = f.write_all(&out);
        }
    }
    let mut out = Vec::new();
    crate::logs::flush(&now(), stream, &mut pending, &mut out);
    if let Ok(mut f) = log.lock() {
        let _ = f.write_all(&out);
    }
}

fn answer(line: &str) {
    let mut o = std::io::stdout();
    let _ = writeln!(o, "{}", line.replace('\n', " "));
    let _ = o.flush();
}

/// Runs the shim; the process exit code. `--reap PID_FILE -- CMD...` is the exec reaper
/// instead (see [`reap`]).
pub fn main(args: &[String]) -> i32 {
    if let Some(("--reap", rest)) = args.split_first().map(|(a, r)| (a.as_str(), r)) {
        return match rest {
            [pid_file, dashdash, cmd @ ..] if dashdash == "--" && !cmd.is_empty() => {
                match reap(std::path::Path::new(pid_file), cmd) {
                    Ok(()) => 0,
                    Err(e) => {
                        answer(&format!("error {}", crate::errors::chain(&e)));
                        1
                    }
                }
            }
            _ => {
                answer("error usage: shim --reap PID_FILE -- CMD...");
                2
            }
        };
    }
    // The container's shim lives as long as the container (the exec reaper only as long
    // as its process).
    close_inherited_fds();
    let a = match ShimArgs::parse(args) {
        Ok(a) => a,
        Err(e) => {
            answer(&format!("error {}", crate::errors::chain(&e)));
            return 2;
        }
    };
    match run(&a) {
        Ok(()) => 0,
        Err(e) => {
            answer(&format!("error {}", crate::errors::chain(&e)));
            1
        }
    }
}

/// Closes every descriptor but stdio. A shim outlives whoever started it (the agent, a
/// server, a test harness); a descriptor it inherited by accident, such as a lock file
/// held open by a parent, would stay held for the container's lifetime.
fn close_inherited_fds() {
    // SAFETY: close_range only closes descriptors of this process; at this point (the
    // start of the shim's main, before any thread or file is opened) nothing in it owns
    // a descriptor above 2.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if rc != 0
        && let Ok(rd) = std::fs::read_dir("/proc/self/fd")
    {
        // Kernels before 5.9: close them one by one.
        let fds: Vec<i32> = rd
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|&fd| fd > 2)
            .collect();
        for fd in fds {
            // SAFETY: as above; the read_dir's own descriptor is closed already or
            // closing it fails harmlessly (EBADF).
            unsafe { libc::close(fd) };
        }
    }
}

/// For a detached process (`runc exec -d -t`, whose parent exits at once): becomes a
/// subreaper, runs `cmd` (which writes the process's pid to `pid_file`), answers `ok <pid>`,
/// then waits for the process and answers `exit <code>` (128+signal when killed).
pub fn reap(pid_file: &std::path::Path, cmd: &[String]) -> Result<(), ShimError> {
    become_subreaper()?;
    let (prog, args) = cmd.split_first().ok_or(ShimError::NoCommand)?;
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(io(format!("running {prog}")))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(ShimError::Failed(if msg.is_empty() {
            format!("{prog} failed ({})", out.status)
        } else {
            msg
        }));
    }
    let pid: i32 = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| ShimError::NoPid(pid_file.to_path_buf()))?;
    answer(&format!("ok {pid}"));
    let code = loop {
        match nix::sys::wait::waitpid(None, None) {
            Ok(nix::sys::wait::WaitStatus::Exited(p, c)) if p.as_raw() == pid => break c,
            Ok(nix::sys::wait::WaitStatus::Signaled(p, s, _)) if p.as_raw() == pid => {
                break 128 + s as i32;
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            // No children left: it was not ours to wait for (e.g. reaped elsewhere).
            Err(e) => return Err(sys(format!("waiting for {pid}"))(e)),
        }
    };
    answer(&format!("exit {code}"));
    Ok(())
}

fn pipe() -> Result<(File, OwnedFd), ShimError> {
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("creating a pipe"))?;
    Ok((File::from(r), w))
}

fn become_subreaper() -> Result<(), ShimError> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes integer arguments only and changes only
    // this process's reaping behaviour.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(io("becoming a subreaper")(std::io::Error::last_os_error()));
    }
    Ok(())
}

fn run(a: &ShimArgs) -> Result<(), ShimError> {
    let _ = std::env::set_current_dir("/");
    become_subreaper()?;
    if let Some(d) = a.log.parent() {
        std::fs::create_dir_all(d).map_err(io(format!("creating {}", d.display())))?;
    }
    let log = LogFile::open(&a.log).map_err(io(format!("opening the log {}", a.log.display())))?;
    let log = Arc::new(Mutex::new(log));
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let stdin_mode = stdin_mode(&a.bundle);
    let terminal = terminal(&a.bundle);
    // With stdin asked for, the container reads a pipe whose write end stays here and
    // is fed by `kubectl attach -i` sessions through the bundle's attach socket (a
    // terminal container reads its terminal instead).
    let (stdin_for_runtime, stdin_keep) = match stdin_mode {
        Some(_) if !terminal => {
            let (r, w) = pipe()?;
            (Stdio::from(r), Some(File::from(w)))
        }
        _ => (Stdio::null(), None),
    };
    // A container with a terminal gets it from the runtime through a console socket (as
    // containerd's shim does): the master comes back here, its output goes to the log.
    let console = if terminal {
        Some(console_listener(&a.bundle)?)
    } else {
        None
    };
    let pid_file = a.bundle.join("init.pid");
    let status = {
        let mut c = Command::new(&a.runtime);
        c.args(&a.options).arg("--root").arg(&a.root).arg("create");
        if console.is_some() {
            // Relative to the bundle, so the address fits a unix socket whatever its path.
            c.current_dir(&a.bundle)
                .args(["--console-socket", CONSOLE_SOCKET]);
        }
        c.arg("--bundle")
            .arg(&a.bundle)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(&a.id)
            .stdin(stdin_for_runtime)
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::from(err_w));
        // `c` (holding our copies of the write ends) is dropped at the end of this block.
        c.status()
            .map_err(io(format!("running {} create", a.runtime.display())))?
    };
    if !status.success() {
        // Nothing runs in the container: the pipes hit EOF once the runtime is gone.
        let mut msg = String::new();
        let (mut o, mut e) = (out_r, err_r);
        let _ = e.read_to_string(&mut msg);
        let _ = o.read_to_string(&mut msg);
        let msg = msg.trim();
        return Err(ShimError::Failed(if msg.is_empty() {
            format!("{} create failed ({status})", a.runtime.display())
        } else {
            msg.to_string()
        }));
    }
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| ShimError::NoPid(pid_file.clone()))?;
    let master = match console {
        Some(rx) => Some(
            rx.recv_timeout(std::time::Duration::from_secs(10))
                .map_err(|_| ShimError::NoTerminal)?
                .map_err(io("receiving the terminal"))?,
        ),
        None => None,
    };
    let _ = std::fs::remove_file(a.bundle.join(CONSOLE_SOCKET));
    answer(&format!("ok {pid}"));
    // From here on nobody reads stdout: point it at /dev/null so a late write cannot fail.
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
    }
    if let Some(w) = stdin_keep {
        let once = stdin_mode == Some(StdinMode::Once);
        let bundle = a.bundle.clone();
        std::thread::spawn(move || serve_stdin(&bundle, w, once));
    }
    let tty_copy = match master {
        Some(m) => {
            let out = m.try_clone().map_err(io("the container's terminal"))?;
            let bundle = a.bundle.clone();
            std::thread::spawn(move || serve_terminal(&bundle, &m));
            let l = log.clone();
            Some(std::thread::spawn(move || copy_stream(out, "stdout", l)))
        }
        None => None,
    };
    let (l1, l2) = (log.clone(), log);
    let t1 = std::thread::spawn(move || copy_stream(out_r, "stdout", l1));
    let t2 = std::thread::spawn(move || copy_stream(err_r, "stderr", l2));
    let code = loop {
        match nix::sys::wait::waitpid(None, None) {
            Ok(nix::sys::wait::WaitStatus::Exited(p, c)) if p.as_raw() == pid => break c,
            Ok(nix::sys::wait::WaitStatus::Signaled(p, s, _)) if p.as_raw() == pid => {
                break 128 + s as i32;
            }
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(sys("waiting for the container")(e)),
        }
    };
    let tmp = a.bundle.join(format!("{}.tmp", EXIT_FILE));
    let _ = std::fs::write(&tmp, format!("{code}\n"))
        .and_then(|()| std::fs::rename(&tmp, a.bundle.join(EXIT_FILE)));
    let _ = std::fs::remove_file(a.bundle.join(ATTACH_SOCKET));
    let _ = t1.join();
    let _ = t2.join();
    if let Some(t) = tty_copy {
        let _ = t.join();
    }
    Ok(())
}

/// The console socket the runtime sends a terminal container's pty master to (in the
/// bundle; the runtime runs there and is given the relative name).
pub const CONSOLE_SOCKET: &str = "console.sock";

/// Whether the bundle's process asks for a terminal.
pub fn terminal(bundle: &std::path::Path) -> bool {
    std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v["process"]["terminal"] == true)
}

/// Listens on the bundle's console socket; the master arrives on the channel.
fn console_listener(
    bundle: &std::path::Path,
) -> Result<std::sync::mpsc::Receiver<std::io::Result<File>>, ShimError> {
    let dir = File::open(bundle).map_err(io(format!("opening {}", bundle.display())))?;
    let path = short_socket_path(&dir, CONSOLE_SOCKET);
    let _ = std::fs::remove_file(&path);
    let l =
        std::os::unix::net::UnixListener::bind(&path).map_err(io("binding the console socket"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = l
            .accept()
            .and_then(|(conn, _)| crate::exec::recv_master(&conn));
        let _ = tx.send(r);
    });
    Ok(rx)
}

/// For a terminal container, the attach socket hands each session a copy of the pty
/// master (SCM_RIGHTS): the session writes its input there and sets the window size,
/// while the output keeps going to the log, read by nobody else.
fn serve_terminal(bundle: &std::path::Path, master: &File) {
    use std::os::fd::AsRawFd;
    let Ok(dir) = File::open(bundle) else {
        return;
    };
    let path = short_socket_path(&dir, ATTACH_SOCKET);
    let _ = std::fs::remove_file(&path);
    let Ok(listener) = std::os::unix::net::UnixListener::bind(&path) else {
        return;
    };
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let fds = [master.as_raw_fd()];
        let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
        let iov = [std::io::IoSlice::new(b"t")];
        let _ = nix::sys::socket::sendmsg::<()>(
            conn.as_raw_fd(),
            &iov,
            &cmsg,
            nix::sys::socket::MsgFlags::empty(),
            None,
        );
    }
}

/// The unix socket in a bundle through which attach sessions write the container's stdin.
pub const ATTACH_SOCKET: &str = "attach.sock";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdinMode {
    /// Open for every attach session, for the container's lifetime.
    Open,
    /// Closed (EOF to the container) once the first attach session ends.
    Once,
}

/// What the bundle's annotation asks for (see [`crate::bundle::STDIN_ANNOTATION`]).
pub fn stdin_mode(bundle: &std::path::Path) -> Option<StdinMode> {
    let config = std::fs::read(bundle.join("config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&config).ok()?;
    match v["annotations"][crate::bundle::STDIN_ANNOTATION].as_str()? {
        "true" => Some(StdinMode::Open),
        "once" => Some(StdinMode::Once),
        _ => None,
    }
}

/// A path to `name` in `dir` short enough for a unix socket address (108 bytes), whatever
/// the length of `dir`'s own path: through the open directory's `/proc/self/fd` entry.
pub fn short_socket_path(dir: &File, name: &str) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()))
}

/// Copies each attach session's bytes (one session at a time, in order) into the
/// container's stdin; with `once`, the first session's end closes it.
fn serve_stdin(bundle: &std::path::Path, mut stdin: File, once: bool) {
    let Ok(dir) = File::open(bundle) else {
        return;
    };
    let path = short_socket_path(&dir, ATTACH_SOCKET);
    let _ = std::fs::remove_file(&path);
    let Ok(listener) = std::os::unix::net::UnixListener::bind(&path) else {
        return;
    };
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        if std::io::copy(&mut conn, &mut stdin).is_err() {
            // The container closed its stdin (or ended): nobody reads any more.
            break;
        }
        if once {
            break;
        }
    }
    let _ = std::fs::remove_file(&path);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_round_trip() {
        let a = ShimArgs {
            runtime: "/usr/sbin/runc".into(),
            root: "/run/r".into(),
            options: vec!["--debug".into()],
            id: "c1".into(),
            bundle: "/b".into(),
            log: "/l/0.log".into(),
        };
        assert_eq!(ShimArgs::parse(&a.to_args()).unwrap(), a);
        assert!(ShimArgs::parse(&["--id".into()]).is_err());
        assert!(ShimArgs::parse(&["--bogus".into(), "x".into()]).is_err());
    }

    #[test]
    fn the_log_follows_its_path_after_a_rotation() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("0.log");
        let mut log = LogFile::open(&p).unwrap();
        log.write_all(b"one\n").unwrap();
        std::fs::rename(&p, d.path().join("0.log.1")).unwrap();
        std::fs::write(&p, b"").unwrap();
        log.write_all(b"two\n").unwrap();
        std::fs::rename(&p, d.path().join("0.log.2")).unwrap();
        // Nothing at the path (the rotation is half-way): the write creates it.
        log.write_all(b"three\n").unwrap();
        let read = |n: &str| std::fs::read_to_string(d.path().join(n)).unwrap();
        assert_eq!(
            (read("0.log.1"), read("0.log.2"), read("0.log")),
            ("one\n".into(), "two\n".into(), "three\n".into())
        );
    }
}

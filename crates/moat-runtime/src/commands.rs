//! The runc-contract commands. Each talks to the sandbox daemon over its control socket;
//! `create` of a sandbox's first container also starts that daemon (and so the VM).

use crate::ctl::{Conn, CtlRequest, CtlResponse};
use crate::state::{OCI_VERSION, State, StateError, StateStore, Status};
use crate::{oci, sandbox};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("reading {path}")]
    Bundle {
        path: String,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error(transparent)]
    Oci(#[from] oci::OciError),
    #[error("starting the sandbox VM: {0}")]
    Sandbox(String),
    #[error("sandbox {0} of this container is not running")]
    NoSandbox(String),
    #[error(transparent)]
    Ctl(#[from] crate::ctl::CtlError),
    #[error("{0}")]
    Refused(String),
    #[error("{step}")]
    Io {
        step: String,
        #[source]
        source: std::io::Error,
    },
    #[error("container {id} is {status}: {what}")]
    WrongState {
        id: String,
        status: String,
        what: &'static str,
    },
    #[error("unknown signal {0:?}")]
    Signal(String),
}

fn ioe(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> CmdError {
    let step = step.into();
    move |source| CmdError::Io { step, source }
}

pub struct Ctx {
    pub root: PathBuf,
    pub config: PathBuf,
}

impl Ctx {
    fn store(&self) -> StateStore {
        StateStore::new(&self.root)
    }

    fn sandbox_of(&self, id: &str) -> Result<String, CmdError> {
        let p = self.store().dir(id)?.join("sandbox");
        std::fs::read_to_string(&p)
            .map(|s| s.trim().to_string())
            .map_err(ioe(format!("reading {}", p.display())))
    }

    fn connect(&self, sandbox_id: &str) -> Result<Conn, CmdError> {
        let dir = sandbox::dir(&self.root, sandbox_id);
        Conn::connect(&sandbox::ctl_socket(&dir))
            .map_err(|_| CmdError::NoSandbox(sandbox_id.to_string()))
    }

    fn call(&self, id: &str, req: &CtlRequest, fds: &[RawFd]) -> Result<CtlResponse, CmdError> {
        let c = self.connect(&self.sandbox_of(id)?)?;
        let r = c.call(req, fds)?;
        match r.error {
            Some(e) => Err(CmdError::Refused(e)),
            None => Ok(r),
        }
    }

    /// The recorded state, with `stopped` when the process standing for the container is
    /// gone (runc does the same with its init pid).
    pub fn state(&self, id: &str) -> Result<State, CmdError> {
        let mut st = self.store().load(id)?;
        if matches!(st.status, Status::Created | Status::Running) {
            let alive = st.pid.is_some_and(|p| sandbox::alive_with(p, id));
            if !alive {
                st.status = Status::Stopped;
            }
        }
        Ok(st)
    }
}

fn status_name(s: Status) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn self_exe() -> Result<PathBuf, CmdError> {
    std::env::current_exe().map_err(ioe("finding our own executable"))
}

/// Closes every descriptor from `from` up (conmon and containerd hand runtimes sync pipes
/// that must not stay open in long-lived helpers).
fn close_from(from: u32) {
    // SAFETY: close_range with plain integers; nothing in the child needs those fds.
    unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0) };
}

fn spawn_daemon(ctx: &Ctx, sandbox_id: &str, bundle: &Path) -> Result<(), CmdError> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| CmdError::Sandbox(format!("pipe: {e}")))?;
    let wfd = w.as_raw_fd();
    let mut cmd = Command::new(self_exe()?);
    cmd.arg("--root")
        .arg(&ctx.root)
        .arg("--config")
        .arg(&ctx.config)
        .arg("daemon")
        .arg("--bundle")
        .arg(bundle)
        .arg(sandbox_id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: dup2/setsid/close_range only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::dup2(wfd, 3);
            close_from(4);
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| CmdError::Sandbox(format!("spawning the daemon: {e}")))?;
    drop(w);
    let mut msg = String::new();
    let _ = std::fs::File::from(r).read_to_string(&mut msg);
    if msg == "ok" {
        // The daemon lives on; reap it later through whoever adopts it.
        std::mem::forget(child);
        Ok(())
    } else {
        let _ = child.wait();
        Err(CmdError::Sandbox(if msg.is_empty() {
            "the daemon exited without a word".into()
        } else {
            msg
        }))
    }
}

/// Connects to the sandbox's daemon or, holding the sandbox's lock so concurrent creates of
/// one pod boot one VM, starts it. Returns whether this call started it.
fn ensure_sandbox(ctx: &Ctx, sandbox_id: &str, bundle: &Path) -> Result<bool, CmdError> {
    let dir = sandbox::dir(&ctx.root, sandbox_id);
    std::fs::create_dir_all(&ctx.root).map_err(ioe("creating the runtime root"))?;
    let lock_path = sandbox::lock_path(&dir);
    // The teardown unlinks the lock file: a lock taken on an unlinked inode is no lock.
    let _lock = loop {
        let lock = std::fs::File::create(&lock_path)
            .map_err(ioe(format!("opening {}", lock_path.display())))?;
        // SAFETY: flock on a descriptor we own; released when `lock` is dropped.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(CmdError::Io {
                step: format!("locking {}", lock_path.display()),
                source: std::io::Error::last_os_error(),
            });
        }
        use std::os::unix::fs::MetadataExt;
        let same = match (lock.metadata(), std::fs::metadata(&lock_path)) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        };
        if same {
            break lock;
        }
    };
    if ctx.connect(sandbox_id).is_ok() {
        return Ok(false);
    }
    // A directory without a daemon answering is what a dead one left.
    if dir.exists() {
        sandbox::cleanup_offline(&dir, sandbox_id);
    }
    spawn_daemon(ctx, sandbox_id, bundle)?;
    Ok(true)
}

/// Whether a container other than `id` still records `sandbox_id` as its sandbox.
fn others_in_sandbox(ctx: &Ctx, sandbox_id: &str, id: &str) -> bool {
    ctx.store()
        .list()
        .unwrap_or_default()
        .iter()
        .filter(|s| s.id != id)
        .any(|s| ctx.sandbox_of(&s.id).is_ok_and(|sb| sb == sandbox_id))
}

fn spawn_shim(
    ctx: &Ctx,
    sandbox_id: &str,
    id: &str,
    exec_id: Option<&str>,
) -> Result<i32, CmdError> {
    let mut cmd = Command::new(self_exe()?);
    cmd.arg("--root")
        .arg(&ctx.root)
        .arg("shim")
        .arg("--sandbox")
        .arg(sandbox_id);
    if let Some(e) = exec_id {
        cmd.arg("--exec").arg(e);
    }
    cmd.arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: close_range only, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            close_from(3);
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(ioe("spawning the shim"))?;
    Ok(child.id() as i32)
}

/// Writes the pid file as runc does: the pid alone, atomically.
fn write_pid_file(path: &Path, pid: i32) -> Result<(), CmdError> {
    let tmp = path.with_extension("moat-tmp");
    std::fs::write(&tmp, pid.to_string()).map_err(ioe(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(ioe(format!("writing {}", path.display())))
}

/// stdio for the container: ours, or a fresh terminal whose master goes to the console socket.
fn stdio_fds(
    console_socket: Option<&Path>,
    terminal: bool,
) -> Result<(Vec<RawFd>, Option<OwnedFd>), CmdError> {
    match (console_socket, terminal) {
        (Some(sock), true) => {
            let pty = nix::pty::openpty(None, None).map_err(|e| CmdError::Io {
                step: "openpty".into(),
                source: e.into(),
            })?;
            // The guest has the real terminal; ours just carries bytes.
            if let Ok(mut t) = nix::sys::termios::tcgetattr(&pty.slave) {
                nix::sys::termios::cfmakeraw(&mut t);
                let _ = nix::sys::termios::tcsetattr(
                    &pty.slave,
                    nix::sys::termios::SetArg::TCSANOW,
                    &t,
                );
            }
            crate::ctl::send_console(sock, pty.master.as_raw_fd())?;
            let s = pty.slave.as_raw_fd();
            Ok((vec![s, s, s], Some(pty.slave)))
        }
        (None, true) => Err(CmdError::Refused(
            "process.terminal is true but no --console-socket was given".into(),
        )),
        _ => Ok((vec![0, 1, 2], None)),
    }
}

pub fn create(
    ctx: &Ctx,
    id: &str,
    bundle: &Path,
    pid_file: Option<&Path>,
    console_socket: Option<&Path>,
) -> Result<(), CmdError> {
    crate::state::validate_id(id)?;
    let bundle =
        std::fs::canonicalize(bundle).map_err(ioe(format!("bundle {}", bundle.display())))?;
    let cfg = bundle.join("config.json");
    let spec = oci_spec::runtime::Spec::load(&cfg).map_err(|source| CmdError::Bundle {
        path: cfg.display().to_string(),
        source,
    })?;
    let annotations = spec.annotations().clone().unwrap_or_default();
    let sandbox_id = oci::sandbox_id(id, &annotations)?;
    // Refuse what we cannot run before anything exists.
    oci::plan(id, &bundle, &spec, Default::default())?;
    let terminal = spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    let store = ctx.store();
    let mut st = State {
        oci_version: OCI_VERSION.into(),
        id: id.to_string(),
        status: Status::Creating,
        pid: None,
        bundle: bundle.clone(),
        annotations: annotations.into_iter().collect(),
    };
    store.create(&st)?;
    let undo = |e: CmdError| {
        let _ = store.remove(id);
        e
    };
    let dir = store.dir(id)?;
    std::fs::write(dir.join("sandbox"), &sandbox_id)
        .map_err(ioe("recording the sandbox"))
        .map_err(undo)?;
    // The first container of a sandbox to arrive boots its VM (a CRI pod's pause container,
    // or any container of a pod whose manager names the pod as sandbox, like moat's agent).
    let new_sandbox = ensure_sandbox(ctx, &sandbox_id, &bundle).map_err(undo)?;
    let r = (|| {
        let (fds, _slave) = stdio_fds(console_socket, terminal)?;
        ctx.call(
            id,
            &CtlRequest::Create {
                id: id.to_string(),
                bundle: bundle.display().to_string(),
            },
            &fds,
        )?;
        let pid = spawn_shim(ctx, &sandbox_id, id, None)?;
        if let Some(p) = pid_file {
            write_pid_file(p, pid)?;
        }
        Ok(pid)
    })();
    match r {
        Ok(pid) => {
            st.status = Status::Created;
            st.pid = Some(pid);
            store.save(&st)?;
            Ok(())
        }
        Err(e) => {
            let _ = ctx.call(
                id,
                &CtlRequest::Delete {
                    id: id.to_string(),
                    force: true,
                },
                &[],
            );
            if new_sandbox {
                sandbox::cleanup_offline(&sandbox::dir(&ctx.root, &sandbox_id), &sandbox_id);
            }
            Err(undo(e))
        }
    }
}

pub fn start(ctx: &Ctx, id: &str) -> Result<(), CmdError> {
    let mut st = ctx.state(id)?;
    if st.status != Status::Created {
        return Err(CmdError::WrongState {
            id: id.into(),
            status: status_name(st.status),
            what: "only a created container can be started",
        });
    }
    ctx.call(id, &CtlRequest::Start { id: id.into() }, &[])?;
    st.status = Status::Running;
    ctx.store().save(&st)?;
    Ok(())
}

/// Signal names as runc accepts them: "TERM", "SIGTERM", or a number.
pub fn parse_signal(s: &str) -> Result<i32, CmdError> {
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err(CmdError::Signal(s.into()))
        };
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    Ok(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        "WINCH" => libc::SIGWINCH,
        "ALRM" => libc::SIGALRM,
        "PIPE" => libc::SIGPIPE,
        _ => return Err(CmdError::Signal(s.into())),
    })
}

pub fn kill(ctx: &Ctx, id: &str, signal: &str, all: bool) -> Result<(), CmdError> {
    let sig = parse_signal(signal)?;
    let st = ctx.state(id)?;
    if st.status == Status::Stopped {
        return Err(CmdError::WrongState {
            id: id.into(),
            status: "stopped".into(),
            what: "container not running",
        });
    }
    ctx.call(
        id,
        &CtlRequest::Kill {
            id: id.into(),
            exec_id: None,
            signal: sig,
            all,
        },
        &[],
    )?;
    Ok(())
}

pub fn delete(ctx: &Ctx, id: &str, force: bool) -> Result<(), CmdError> {
    let st = match ctx.state(id) {
        Ok(s) => s,
        // runc: deleting a missing container with --force succeeds.
        Err(CmdError::State(StateError::NotFound(_))) if force => return Ok(()),
        Err(e) => return Err(e),
    };
    if st.status == Status::Running && !force {
        return Err(CmdError::WrongState {
            id: id.into(),
            status: "running".into(),
            what: "cannot delete a running container without --force",
        });
    }
    let sandbox_id = ctx.sandbox_of(id).unwrap_or_else(|_| id.to_string());
    match ctx.connect(&sandbox_id) {
        Ok(c) => {
            let r = c.call(
                &CtlRequest::Delete {
                    id: id.into(),
                    force,
                },
                &[],
            );
            match r {
                Ok(CtlResponse { error: Some(e), .. }) if !force => {
                    return Err(CmdError::Refused(e));
                }
                _ => {}
            }
        }
        Err(_) => {
            // The daemon is gone (killed, or the VM died and it exited): clean up after it,
            // the whole sandbox once its last container goes.
            let dir = sandbox::dir(&ctx.root, &sandbox_id);
            sandbox::unmount_all_under(&sandbox::shared_dir(&dir).join(id));
            sandbox::unmount_all_under(&sandbox::shared_rw_dir(&dir).join(id));
            if !others_in_sandbox(ctx, &sandbox_id, id) {
                sandbox::cleanup_offline(&dir, &sandbox_id);
            }
        }
    }
    if let Some(pid) = st.pid
        && sandbox::alive_with(pid, id)
    {
        // SAFETY: the shim of this container, checked by its command line.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    ctx.store().remove(id)?;
    Ok(())
}

pub struct ExecArgs<'a> {
    pub process: Option<&'a Path>,
    pub args: &'a [String],
    pub tty: bool,
    pub cwd: Option<&'a str>,
    pub env: &'a [String],
    pub detach: bool,
    pub pid_file: Option<&'a Path>,
    pub console_socket: Option<&'a Path>,
}

/// Returns the exit status to exit with (0 when detached).
pub fn exec(ctx: &Ctx, id: &str, a: &ExecArgs<'_>) -> Result<i32, CmdError> {
    let st = ctx.state(id)?;
    if st.status != Status::Running {
        return Err(CmdError::WrongState {
            id: id.into(),
            status: status_name(st.status),
            what: "exec needs a running container",
        });
    }
    let process: serde_json::Value = match a.process {
        Some(p) => {
            let text = std::fs::read(p).map_err(ioe(format!("reading {}", p.display())))?;
            serde_json::from_slice(&text)
                .map_err(|e| CmdError::Refused(format!("{}: {e}", p.display())))?
        }
        None => {
            if a.args.is_empty() {
                return Err(CmdError::Refused(
                    "exec needs --process or a command".into(),
                ));
            }
            let spec =
                oci_spec::runtime::Spec::load(st.bundle.join("config.json")).map_err(|source| {
                    CmdError::Bundle {
                        path: st.bundle.display().to_string(),
                        source,
                    }
                })?;
            let base = spec.process().clone().unwrap_or_default();
            let mut v = serde_json::to_value(base).map_err(|e| CmdError::Refused(e.to_string()))?;
            v["args"] = serde_json::json!(a.args);
            v["terminal"] = serde_json::json!(a.tty);
            if let Some(c) = a.cwd {
                v["cwd"] = serde_json::json!(c);
            }
            if !a.env.is_empty() {
                let mut env: Vec<String> = v["env"]
                    .as_array()
                    .map(|x| {
                        x.iter()
                            .filter_map(|s| s.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                env.extend(a.env.iter().cloned());
                v["env"] = serde_json::json!(env);
            }
            v
        }
    };
    let terminal = process["terminal"].as_bool().unwrap_or(false);
    let exec_id = format!(
        "exec-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let (fds, _slave) = stdio_fds(a.console_socket, terminal)?;
    ctx.call(
        id,
        &CtlRequest::Exec {
            id: id.into(),
            exec_id: exec_id.clone(),
            process,
            guest: false,
        },
        &fds,
    )?;
    let sandbox_id = ctx.sandbox_of(id)?;
    if a.detach {
        let pid = spawn_shim(ctx, &sandbox_id, id, Some(&exec_id))?;
        if let Some(p) = a.pid_file {
            write_pid_file(p, pid)?;
        }
        return Ok(0);
    }
    if let Some(p) = a.pid_file {
        write_pid_file(p, std::process::id() as i32)?;
    }
    // Our stdio now belongs to the daemon's streams; release it so EOF reaches the reader.
    for fd in 0..3 {
        // SAFETY: closing our own stdio, replaced by /dev/null.
        unsafe {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            libc::dup2(null, fd);
            libc::close(null);
        }
    }
    wait(ctx, &sandbox_id, id, Some(&exec_id))
}

/// A shell in the guest itself, outside the container (Kata's debug console): for looking at
/// the VM's mounts, processes and kernel log. Needs `hypervisor.debug_console = true` when the
/// sandbox booted (that initramfs carries the shell). Interactive when stdin is a terminal.
pub fn debug_console(ctx: &Ctx, id: &str) -> Result<i32, CmdError> {
    let st = ctx.state(id)?;
    if st.status != Status::Running {
        return Err(CmdError::WrongState {
            id: id.into(),
            status: status_name(st.status),
            what: "the debug console needs a running container in the sandbox",
        });
    }
    let tty = nix::unistd::isatty(std::io::stdin()).unwrap_or(false);
    let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
    let process = serde_json::json!({
        "terminal": tty,
        "user": {"uid": 0, "gid": 0},
        "args": ["/bin/sh"],
        "env": ["PATH=/bin", format!("TERM={term}"), "PS1=moat-guest# "],
        "cwd": "/",
    });
    let exec_id = format!("debug-{}", std::process::id());
    let saved = if tty {
        let t = nix::sys::termios::tcgetattr(std::io::stdin()).ok();
        if let Some(mut raw) = t.clone() {
            nix::sys::termios::cfmakeraw(&mut raw);
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                &raw,
            );
        }
        t
    } else {
        None
    };
    let r = ctx
        .call(
            id,
            &CtlRequest::Exec {
                id: id.into(),
                exec_id: exec_id.clone(),
                process,
                guest: true,
            },
            &[0, 1, 2],
        )
        .map_err(|e| match e {
            CmdError::Refused(m) if m.contains("/bin/sh") => CmdError::Refused(format!(
                "{m}: the sandbox has no shell; set hypervisor.debug_console = true in {} \
                 (and build the assets with --debug-shell) before the sandbox boots",
                ctx.config.display()
            )),
            e => e,
        })
        .and_then(|_| wait(ctx, &ctx.sandbox_of(id)?, id, Some(&exec_id)));
    if let Some(t) = saved {
        let _ =
            nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, &t);
    }
    r
}

/// Blocks until the process is done; its status, or 255 if the sandbox vanished.
pub fn wait(ctx: &Ctx, sandbox_id: &str, id: &str, exec_id: Option<&str>) -> Result<i32, CmdError> {
    let c = match ctx.connect(sandbox_id) {
        Ok(c) => c,
        Err(_) => return Ok(crate::daemon::VM_DIED_STATUS),
    };
    match c.call(
        &CtlRequest::Wait {
            id: id.into(),
            exec_id: exec_id.map(str::to_string),
        },
        &[],
    ) {
        Ok(CtlResponse {
            status: Some(s), ..
        }) => Ok(s),
        Ok(CtlResponse { error: Some(e), .. }) => Err(CmdError::Refused(e)),
        _ => Ok(crate::daemon::VM_DIED_STATUS),
    }
}

pub fn ps(ctx: &Ctx, id: &str) -> Result<Vec<(i32, String)>, CmdError> {
    Ok(ctx
        .call(id, &CtlRequest::Ps { id: id.into() }, &[])?
        .processes)
}

/// For the daemon: the read end it reports on is fd 3.
pub fn ready_fd() -> OwnedFd {
    // SAFETY: spawn_daemon placed the pipe's write end at fd 3 for us.
    unsafe { OwnedFd::from_raw_fd(3) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn signals_parse_like_runc() {
        use super::parse_signal;
        assert_eq!(parse_signal("TERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("SIGKILL").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("NOPE").is_err());
    }
}

//! The hypervisor as the daemon and the boot probe see it: launch a VM, learn whether it is
//! still running, kill it. QEMU is the real implementation; unit tests use a recording fake
//! whose "guest" is a thread speaking the agent protocol, so the daemon's boot, death
//! detection and teardown are tested without QEMU or root.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio as PStdio};

use crate::config::Config;
use crate::error::DaemonError;
use crate::qemu::{self, VmSpec};

pub trait Hypervisor: Send + Sync {
    /// Starts the VM `vm`. `agent` is the guest's end of the agent channel and `tap` the
    /// NIC's descriptor; the VM keeps its own copies. `log` gets the hypervisor's output.
    fn launch(
        &self,
        cfg: &Config,
        vm: &VmSpec,
        agent: &UnixStream,
        tap: Option<&OwnedFd>,
        log: &Path,
    ) -> Result<Box<dyn Vm>, DaemonError>;
}

/// A running VM.
pub trait Vm: Send {
    /// The process to record (and that kill -9 tests aim at).
    fn pid(&self) -> u32;
    /// `Some(success)` once the VM has ended.
    fn exited(&mut self) -> std::io::Result<Option<bool>>;
    /// Kills the VM (if still running) and reaps it.
    fn kill(&mut self);
}

/// QEMU, as `crate::qemu::args` describes it.
pub struct Qemu;

impl Hypervisor for Qemu {
    fn launch(
        &self,
        cfg: &Config,
        vm: &VmSpec,
        agent: &UnixStream,
        tap: Option<&OwnedFd>,
        log: &Path,
    ) -> Result<Box<dyn Vm>, DaemonError> {
        Ok(Box::new(spawn_qemu(cfg, vm, agent, tap, log)?))
    }
}

impl Vm for std::process::Child {
    fn pid(&self) -> u32 {
        self.id()
    }
    fn exited(&mut self) -> std::io::Result<Option<bool>> {
        Ok(self.try_wait()?.map(|s| s.success()))
    }
    fn kill(&mut self) {
        let _ = std::process::Child::kill(self);
        let _ = self.wait();
    }
}

/// The recording fake: each launch records QEMU's would-be arguments and starts a thread
/// that plays the guest agent on the channel, as its [`Script`] says.
/// Launches QEMU with the agent socket (and tap) at fixed descriptor numbers, bound to die
/// with this process.
fn io(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DaemonError {
    let path = path.to_path_buf();
    move |source| DaemonError::Io { step, path, source }
}

/// Starts QEMU for `vm` with the agent channel, the tap and a template's state on their fixed
/// descriptors, dying with its parent (PR_SET_PDEATHSIG).
pub(crate) fn spawn_qemu(
    cfg: &Config,
    vm: &qemu::VmSpec,
    agent: &UnixStream,
    tap: Option<&OwnedFd>,
    log: &Path,
) -> Result<Child, DaemonError> {
    let args = qemu::args(cfg, vm);
    let log_file = std::fs::File::create(log).map_err(io("creating", log))?;
    let agent_fd = agent.as_raw_fd();
    let tap_fd = tap.map(|t| t.as_raw_fd());
    let state = match &vm.template {
        Some(qemu::Template::Restore { state, .. }) => {
            Some(std::fs::File::open(state).map_err(io("opening the template state", state))?)
        }
        _ => None,
    };
    let state_fd = state.as_ref().map(|f| f.as_raw_fd());
    let mut cmd = Command::new(&cfg.hypervisor.path);
    cmd.args(&args)
        .stdin(PStdio::null())
        .stdout(log_file.try_clone().map_err(io("duplicating", log))?)
        .stderr(log_file);
    // SAFETY: only async-signal-safe calls (dup2, fcntl, prctl, getppid) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let place = |from: i32, to: i32| {
                if from == to {
                    let fl = libc::fcntl(to, libc::F_GETFD);
                    libc::fcntl(to, libc::F_SETFD, fl & !libc::FD_CLOEXEC);
                } else {
                    libc::dup2(from, to);
                }
            };
            // Move the tap and state out of the way first in case they sit on a target.
            let tap_tmp = tap_fd.map(|t| libc::fcntl(t, libc::F_DUPFD_CLOEXEC, 10));
            let state_tmp = state_fd.map(|t| libc::fcntl(t, libc::F_DUPFD_CLOEXEC, 10));
            place(agent_fd, qemu::AGENT_FD);
            if let Some(t) = tap_tmp {
                place(t, qemu::TAP_FD);
            }
            if let Some(t) = state_tmp {
                place(t, qemu::STATE_FD);
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The daemon may have died between fork and prctl.
            if libc::getppid() == 1 {
                return Err(std::io::Error::other("parent exited"));
            }
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|e| DaemonError::Qemu(cfg.hypervisor.path.display().to_string(), e))
}

#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use moat_vm_proto::{self as proto, Decoder, Hello, Kind, Request, Response};
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub enum Script {
        /// Says hello, answers every request, powers off on Shutdown.
        Healthy,
        /// Writes a line to the console and closes the channel without a hello.
        Panics,
        /// Says hello, then the VM ends on its own (a crash, a kill from outside).
        DiesAfterHello,
    }

    #[derive(Default, Debug)]
    pub struct Record {
        /// QEMU's arguments, one entry per launch.
        pub launches: Vec<Vec<String>>,
        /// The requests the guest received, by operation name.
        pub ops: Vec<String>,
        pub exited: Option<bool>,
        pub killed: bool,
    }

    pub struct Fake {
        pub script: Script,
        pub rec: Arc<Mutex<Record>>,
    }

    impl Fake {
        pub fn new(script: Script) -> Fake {
            Fake {
                script,
                rec: Arc::default(),
            }
        }
    }

    struct FakeVm(Arc<Mutex<Record>>);

    impl Vm for FakeVm {
        fn pid(&self) -> u32 {
            4242
        }
        fn exited(&mut self) -> std::io::Result<Option<bool>> {
            Ok(self.0.lock().unwrap().exited)
        }
        fn kill(&mut self) {
            let mut r = self.0.lock().unwrap();
            r.killed = true;
            r.exited.get_or_insert(false);
        }
    }

    fn guest(
        script: Script,
        mut s: UnixStream,
        console: std::path::PathBuf,
        rec: Arc<Mutex<Record>>,
    ) {
        if script == Script::Panics {
            let _ = std::fs::write(&console, "[    0.5] fake: kernel panic - not syncing\n");
            rec.lock().unwrap().exited = Some(false);
            return;
        }
        let hello = Hello {
            version: proto::PROTOCOL_VERSION,
            agent: "fake".into(),
            kernel_release: "6.1.0-fake".into(),
            init_ms: 1,
            ready_ms: 2,
        };
        if s.write_all(&proto::control(Kind::Hello, &hello).encode())
            .is_err()
        {
            return;
        }
        if script == Script::DiesAfterHello {
            std::thread::sleep(std::time::Duration::from_millis(300));
            rec.lock().unwrap().exited = Some(false);
            return;
        }
        let mut d = Decoder::new();
        let mut buf = [0u8; 65536];
        loop {
            let f = loop {
                match d.next_frame() {
                    Ok(Some(f)) => break f,
                    Ok(None) => {}
                    Err(_) => return,
                }
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => d.feed(&buf[..n]),
                }
            };
            if f.kind != Kind::Request {
                continue;
            }
            let Ok(req) = proto::parse::<Request>(&f, Kind::Request) else {
                return;
            };
            let name = format!("{:?}", req.op);
            let name = name
                .split(|c: char| !c.is_alphanumeric())
                .next()
                .unwrap_or("")
                .to_string();
            let shutdown = name == "Shutdown";
            rec.lock().unwrap().ops.push(name);
            let resp = Response {
                id: req.id,
                ..Default::default()
            };
            if s.write_all(&proto::control(Kind::Response, &resp).encode())
                .is_err()
            {
                return;
            }
            if shutdown {
                rec.lock().unwrap().exited = Some(true);
                return;
            }
        }
    }

    impl Hypervisor for Fake {
        fn launch(
            &self,
            cfg: &Config,
            vm: &VmSpec,
            agent: &UnixStream,
            _tap: Option<&OwnedFd>,
            _log: &Path,
        ) -> Result<Box<dyn Vm>, DaemonError> {
            self.rec
                .lock()
                .unwrap()
                .launches
                .push(crate::qemu::args(cfg, vm));
            let s = agent
                .try_clone()
                .map_err(|e| DaemonError::Qemu("fake".into(), e))?;
            let (script, console, rec) = (self.script, vm.console_log.clone(), self.rec.clone());
            std::thread::spawn(move || guest(script, s, console, rec));
            Ok(Box::new(FakeVm(self.rec.clone())))
        }
    }
}

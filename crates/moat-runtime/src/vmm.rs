//! The hypervisor as the daemon and the boot probe see it: launch a VM, learn whether it is
//! still running, kill it. QEMU is the real implementation; unit tests use a recording fake
//! whose "guest" is a thread speaking the agent protocol, so the daemon's boot, death
//! detection and teardown are tested without QEMU or root.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::config::Config;
use crate::daemon::DaemonError;
use crate::qemu::VmSpec;

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
        Ok(Box::new(crate::daemon::spawn_qemu(
            cfg, vm, agent, tap, log,
        )?))
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

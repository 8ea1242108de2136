//! The sandbox daemon: one per VM. It owns QEMU (which dies with it: PR_SET_PDEATHSIG), the
//! agent channel, the shared directory's mounts and the network splice, and serves the
//! control socket that the CLI commands and shims talk to. It exits, after tearing the
//! sandbox down, when its last container is deleted.

use crate::channel::{AgentConn, Events};
use crate::config::Config;
use crate::ctl::{self, Conn, CtlRequest, CtlResponse};
use crate::{net, oci, qemu, sandbox, shares};
use moat_vm_proto::{Op, Stdio};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Under TCG on a loaded 2-core machine a boot can take many seconds.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Exit status reported for processes of a VM that died under them.
pub const VM_DIED_STATUS: i32 = 255;

pub use crate::error::DaemonError;
use crate::error::{RequestError, chain};

/// The sandbox VM's size: configured defaults plus the pod's limits, within what this host
/// can give (its MemTotal; `max_vcpus`).
fn sandbox_size(
    cfg: &Config,
    spec: &oci_spec::runtime::Spec,
) -> Result<crate::sizing::Size, DaemonError> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .map_err(io("reading", Path::new("/proc/meminfo")))?;
    let host = crate::sizing::HostLimits {
        max_vcpus: cfg.hypervisor.max_vcpus,
        memory_mib: crate::sizing::mem_total_mib(&meminfo).unwrap_or(u64::MAX),
    };
    let w = crate::sizing::workload(spec)?;
    Ok(crate::sizing::size(
        cfg.hypervisor.vcpus,
        cfg.hypervisor.memory_mib,
        &w,
        &host,
    )?)
}

#[derive(Default)]
struct ProcSt {
    status: Option<i32>,
    /// Output sinks still writing.
    sinks: usize,
    stdin_stream: Option<u32>,
}

#[derive(Default)]
struct CSt {
    procs: HashMap<Option<String>, ProcSt>,
    /// Share mount points, in mount order.
    mounts: Vec<PathBuf>,
}

#[derive(Default)]
struct SbState {
    containers: HashMap<String, CSt>,
    vm_dead: Option<String>,
}

pub struct Daemon {
    dir: PathBuf,
    st: Mutex<SbState>,
    cv: Condvar,
    agent: Mutex<Option<Arc<AgentConn>>>,
    qemu: Mutex<Option<Box<dyn crate::vmm::Vm>>>,
    net_veth: Mutex<Option<(PathBuf, String)>>,
    /// Creates and deletes run one at a time, so a delete racing a create (a manager giving
    /// up on a slow create) sees the container either absent or complete.
    ops: Mutex<()>,
    /// The share mounts (host paths bound into the guest-visible directories).
    mounts: Arc<dyn shares::Mounts>,
}

struct Ev(Arc<Daemon>);

impl Events for Ev {
    fn exited(&self, container: &str, exec_id: Option<&str>, status: i32) {
        let d = &self.0;
        let stdin = {
            let mut st = d.lock();
            let p = st
                .containers
                .get_mut(container)
                .and_then(|c| c.procs.get_mut(&exec_id.map(str::to_string)));
            p.and_then(|p| {
                p.status = Some(status);
                p.stdin_stream
            })
        };
        if let (Some(s), Some(a)) = (stdin, d.agent()) {
            a.close_input(s);
        }
        d.cv.notify_all();
    }

    fn died(&self, why: &str) {
        let mut st = self.0.lock();
        st.vm_dead = Some(why.to_string());
        for c in st.containers.values_mut() {
            for p in c.procs.values_mut() {
                p.status.get_or_insert(VM_DIED_STATUS);
            }
        }
        drop(st);
        self.0.cv.notify_all();
    }
}

/// A process's stdin, to be pumped once the guest has created the process.
struct PendingInput(u32, OwnedFd, Option<(String, Option<String>)>);

fn start_input(agent: &Arc<AgentConn>, p: Option<PendingInput>) {
    if let Some(PendingInput(stream, fd, tty)) = p {
        agent.attach_input(stream, fd, tty);
    }
}

fn io(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DaemonError {
    let path = path.to_path_buf();
    move |source| DaemonError::Io { step, path, source }
}

fn console_tail(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl Daemon {
    /// A daemon for the sandbox directory `dir`, with nothing started yet.
    fn new(dir: PathBuf) -> Arc<Daemon> {
        Arc::new(Daemon {
            dir,
            st: Mutex::new(SbState::default()),
            cv: Condvar::new(),
            agent: Mutex::new(None),
            qemu: Mutex::new(None),
            net_veth: Mutex::new(None),
            ops: Mutex::new(()),
            mounts: Arc::new(shares::HostMounts),
        })
    }

    fn lock(&self) -> MutexGuard<'_, SbState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn agent(&self) -> Option<Arc<AgentConn>> {
        self.agent.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn agent_or_err(&self) -> Result<Arc<AgentConn>, RequestError> {
        self.agent().ok_or(RequestError::NoVm)
    }

    fn create(
        self: &Arc<Self>,
        id: &str,
        bundle: &Path,
        fds: Vec<OwnedFd>,
    ) -> Result<CtlResponse, RequestError> {
        let agent = self.agent_or_err()?;
        if self.lock().containers.contains_key(id) {
            return Err(RequestError::Exists(id.to_string()));
        }
        let spec = oci_spec::runtime::Spec::load(bundle.join("config.json"))
            .map_err(|e| RequestError::Spec(bundle.to_path_buf(), e))?;
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        let streams = agent.alloc_streams(3);
        let stdio = Stdio {
            stdin: Some(streams[0]),
            stdout: Some(streams[1]),
            stderr: (!terminal).then_some(streams[2]),
        };
        let plan = oci::plan(id, bundle, &spec, stdio)?;
        let shared = sandbox::shared_dir(&self.dir);
        let shared_rw = sandbox::shared_rw_dir(&self.dir);
        let mounts = shares::bind_all(
            &*self.mounts,
            plan.shares.iter().map(|s| {
                let dst = if s.writable { &shared_rw } else { &shared }.join(&s.rel);
                (s.host.clone(), dst)
            }),
        )
        .map_err(RequestError::Share)?;
        self.lock().containers.insert(
            id.to_string(),
            CSt {
                procs: HashMap::new(),
                mounts: mounts.clone(),
            },
        );
        let input = self.attach(&agent, id, None, stdio, fds);
        match agent.request(Op::CreateContainer(Box::new(plan.spec)), REQUEST_TIMEOUT) {
            Ok(r) => {
                start_input(&agent, input);
                Ok(CtlResponse {
                    pid: r.pid,
                    ..Default::default()
                })
            }
            Err(e) => {
                self.lock().containers.remove(id);
                for s in &streams[1..] {
                    agent.close_output(*s);
                }
                shares::detach_all(&*self.mounts, &mounts);
                for share in [&shared, &shared_rw] {
                    sandbox::unmount_all_under(&share.join(id));
                    let _ = std::fs::remove_dir_all(share.join(id));
                }
                Err(e.into())
            }
        }
    }

    /// Hooks a process's host descriptors to its streams and records it.
    fn attach(
        self: &Arc<Self>,
        agent: &Arc<AgentConn>,
        id: &str,
        exec: Option<String>,
        stdio: Stdio,
        fds: Vec<OwnedFd>,
    ) -> Option<PendingInput> {
        let mut it = fds.into_iter();
        let (fin, fout, ferr) = (it.next(), it.next(), it.next());
        let mut sinks = 0;
        let outs: Vec<(u32, OwnedFd)> = [(stdio.stdout, fout), (stdio.stderr, ferr)]
            .into_iter()
            .filter_map(|(s, f)| Some((s?, f?)))
            .collect();
        sinks += outs.len();
        {
            let mut st = self.lock();
            if let Some(c) = st.containers.get_mut(id) {
                c.procs.insert(
                    exec.clone(),
                    ProcSt {
                        status: None,
                        sinks,
                        stdin_stream: stdio.stdin,
                    },
                );
            }
        }
        for (s, f) in outs {
            let d = self.clone();
            let id = id.to_string();
            let exec = exec.clone();
            agent.attach_output(
                s,
                f,
                Box::new(move || {
                    let mut st = d.lock();
                    if let Some(p) = st
                        .containers
                        .get_mut(&id)
                        .and_then(|c| c.procs.get_mut(&exec))
                    {
                        p.sinks = p.sinks.saturating_sub(1);
                    }
                    drop(st);
                    d.cv.notify_all();
                }),
            );
        }
        // stdin starts only once the guest has the process (see `start_input`): data sent
        // before the guest knows the stream would be dropped there.
        stdio.stdin.zip(fin).map(|(s, f)| {
            let tty = stdio
                .stderr
                .is_none()
                .then(|| (id.to_string(), exec.clone()));
            PendingInput(s, f, tty)
        })
    }

    fn exec(
        self: &Arc<Self>,
        id: &str,
        exec_id: &str,
        process: serde_json::Value,
        guest: bool,
        fds: Vec<OwnedFd>,
    ) -> Result<CtlResponse, RequestError> {
        let agent = self.agent_or_err()?;
        let p: oci_spec::runtime::Process =
            serde_json::from_value(process).map_err(RequestError::ExecProcess)?;
        {
            let st = self.lock();
            let c = st
                .containers
                .get(id)
                .ok_or_else(|| RequestError::NoContainer(id.to_string()))?;
            if c.procs.contains_key(&Some(exec_id.to_string())) {
                return Err(RequestError::ExecIdInUse(exec_id.to_string()));
            }
        }
        let terminal = p.terminal().unwrap_or(false);
        let streams = agent.alloc_streams(3);
        let stdio = Stdio {
            stdin: Some(streams[0]),
            stdout: Some(streams[1]),
            stderr: (!terminal).then_some(streams[2]),
        };
        let process = oci::process(&p, stdio)?;
        let input = self.attach(&agent, id, Some(exec_id.to_string()), stdio, fds);
        match agent.request(
            Op::Exec {
                container: id.to_string(),
                exec_id: exec_id.to_string(),
                process: Box::new(process),
                guest,
            },
            REQUEST_TIMEOUT,
        ) {
            Ok(r) => {
                start_input(&agent, input);
                Ok(CtlResponse {
                    pid: r.pid,
                    ..Default::default()
                })
            }
            Err(e) => {
                if let Some(c) = self.lock().containers.get_mut(id) {
                    c.procs.remove(&Some(exec_id.to_string()));
                }
                for s in &streams[1..] {
                    agent.close_output(*s);
                }
                Err(e.into())
            }
        }
    }

    fn wait(&self, id: &str, exec: Option<String>) -> Result<CtlResponse, RequestError> {
        let mut st = self.lock();
        loop {
            let p = st
                .containers
                .get(id)
                .ok_or_else(|| RequestError::NoContainer(id.to_string()))?
                .procs
                .get(&exec)
                .ok_or_else(|| RequestError::NoProcess(id.to_string()))?;
            // Sinks of a dead VM never finish writing; the status is all there is.
            if let Some(s) = p.status
                && (p.sinks == 0 || st.vm_dead.is_some())
            {
                return Ok(CtlResponse {
                    status: Some(s),
                    ..Default::default()
                });
            }
            st = self
                .cv
                .wait_timeout(st, Duration::from_millis(500))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    fn delete_serialized(&self, id: &str) -> Result<bool, RequestError> {
        let _op = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        self.delete(id)
    }

    /// Deletes a container; returns true when it was the last one and the sandbox is gone.
    fn delete(&self, id: &str) -> Result<bool, RequestError> {
        let (running, mounts) = {
            let st = self.lock();
            let Some(c) = st.containers.get(id) else {
                // A sandbox whose first create never completed (the CLI was killed, or the
                // create failed) is torn down by deleting that container.
                if st.containers.is_empty() {
                    return Ok(true);
                }
                return Err(RequestError::NoContainer(id.to_string()));
            };
            (
                c.procs.get(&None).is_some_and(|p| p.status.is_none()),
                c.mounts.clone(),
            )
        };
        if running {
            // The CLI checked started/force; a created-but-never-started init is just killed.
            if let Some(a) = self.agent() {
                let _ = a.request(
                    Op::Signal {
                        container: id.to_string(),
                        exec_id: None,
                        signal: libc::SIGKILL,
                        all: true,
                    },
                    REQUEST_TIMEOUT,
                );
            }
        }
        // The host side goes whatever the guest says: a guest that lost the container (or
        // died) must not keep its mounts and the sandbox alive.
        if let Some(a) = self.agent()
            && !a.is_dead()
        {
            let _ = a.request(Op::RemoveContainer { id: id.to_string() }, REQUEST_TIMEOUT);
        }
        shares::detach_all(&*self.mounts, &mounts);
        // Whatever is still mounted (a bind whose detach failed) is unmounted before any
        // removal, so the removal never reaches into a host volume.
        for share in [
            sandbox::shared_dir(&self.dir),
            sandbox::shared_rw_dir(&self.dir),
        ] {
            sandbox::unmount_all_under(&share.join(id));
            let _ = std::fs::remove_dir_all(share.join(id));
        }
        let mut st = self.lock();
        st.containers.remove(id);
        Ok(st.containers.is_empty())
    }

    /// Powers the VM off (bounded), kills QEMU if needed, undoes the network splice, removes
    /// the sandbox directory.
    fn teardown(&self) {
        if let Some(a) = self.agent()
            && !a.is_dead()
        {
            let _ = a.request(Op::Shutdown, Duration::from_secs(5));
        }
        if let Some(mut q) = self.qemu.lock().unwrap_or_else(|p| p.into_inner()).take() {
            for _ in 0..50 {
                if matches!(q.exited(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            q.kill();
        }
        if let Some((ns, veth)) = self
            .net_veth
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = net::teardown_with(&net::Nsenter, &ns, &veth);
        }
        sandbox::unmount_all_under(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(sandbox::lock_path(&self.dir));
    }

    fn serve(self: Arc<Self>, c: Conn) {
        loop {
            let (req, fds): (CtlRequest, Vec<OwnedFd>) = match c.recv() {
                Ok(x) => x,
                Err(_) => return,
            };
            let mut exit_after = false;
            let r = match req {
                CtlRequest::Ping => Ok(CtlResponse::default()),
                CtlRequest::Create { id, bundle } => {
                    let _op = self.ops.lock().unwrap_or_else(|p| p.into_inner());
                    self.create(&id, Path::new(&bundle), fds)
                }
                CtlRequest::Start { id } => self
                    .agent_or_err()
                    .and_then(|a| Ok(a.request(Op::StartContainer { id }, REQUEST_TIMEOUT)?))
                    .map(|_| CtlResponse::default()),
                CtlRequest::Kill {
                    id,
                    exec_id,
                    signal,
                    all,
                } => self
                    .agent_or_err()
                    .and_then(|a| {
                        Ok(a.request(
                            Op::Signal {
                                container: id,
                                exec_id,
                                signal,
                                all,
                            },
                            REQUEST_TIMEOUT,
                        )?)
                    })
                    .map(|_| CtlResponse::default()),
                CtlRequest::Wait { id, exec_id } => self.wait(&id, exec_id),
                CtlRequest::Exec {
                    id,
                    exec_id,
                    process,
                    guest,
                } => self.exec(&id, &exec_id, process, guest, fds),
                CtlRequest::Ps { id } => self
                    .agent_or_err()
                    .and_then(|a| Ok(a.request(Op::Ps { container: id }, REQUEST_TIMEOUT)?))
                    .map(|r| CtlResponse {
                        processes: r.processes,
                        ..Default::default()
                    }),
                CtlRequest::Delete { id, .. } => match self.delete_serialized(&id) {
                    Ok(last) => {
                        if last {
                            self.teardown();
                            exit_after = true;
                        }
                        Ok(CtlResponse::default())
                    }
                    Err(e) => Err(e),
                },
            };
            let resp = r.unwrap_or_else(|e| CtlResponse {
                error: Some(chain(&e)),
                ..Default::default()
            });
            let _ = c.send(&resp, &[]);
            if exit_after {
                std::process::exit(0);
            }
        }
    }
}

/// Runs the daemon for `sandbox_id` whose first container's bundle is `bundle`; reports
/// readiness (or the error) on `ready`, then serves until the last container is deleted.
pub fn run(root: &Path, config: &Path, sandbox_id: &str, bundle: &Path, ready: OwnedFd) -> ! {
    let mut ready = std::fs::File::from(ready);
    let dir = sandbox::dir(root, sandbox_id);
    let d = Daemon::new(dir.clone());
    let r = boot(&d, &crate::vmm::Qemu, root, config, sandbox_id, bundle);
    let listener = match r {
        Ok(l) => {
            let _ = std::io::Write::write_all(&mut ready, b"ok");
            l
        }
        Err(e) => {
            let _ = std::io::Write::write_all(&mut ready, chain(&e).as_bytes());
            d.teardown();
            std::process::exit(1);
        }
    };
    drop(ready);
    loop {
        match ctl::accept(&listener) {
            Ok(c) => {
                let d = d.clone();
                std::thread::spawn(move || d.serve(c));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn boot(
    d: &Arc<Daemon>,
    hv: &dyn crate::vmm::Hypervisor,
    root: &Path,
    config: &Path,
    sandbox_id: &str,
    bundle: &Path,
) -> Result<OwnedFd, DaemonError> {
    let started = std::time::Instant::now();
    let dir = &d.dir;
    std::fs::create_dir_all(sandbox::shared_dir(dir)).map_err(io("creating", dir))?;
    std::fs::create_dir_all(sandbox::shared_rw_dir(dir)).map_err(io("creating", dir))?;
    std::fs::write(dir.join("sandbox-id"), sandbox_id).map_err(io("writing", dir))?;
    std::fs::write(dir.join("daemon.pid"), std::process::id().to_string())
        .map_err(io("writing", dir))?;
    let cfg = Config::load(config).map_err(|e| DaemonError::Assets(e.to_string()))?;
    let kernel = cfg.assets.kernel_path();
    let initramfs = cfg.assets.initramfs_path(cfg.hypervisor.debug_console);
    for p in [&kernel, &initramfs] {
        if !p.is_file() {
            return Err(DaemonError::Assets(p.display().to_string()));
        }
    }
    let spec =
        oci_spec::runtime::Spec::load(bundle.join("config.json")).map_err(DaemonError::Bundle)?;
    let netns = oci::netns(&spec)?;
    // Sized before anything is set up, so an impossible size changes nothing.
    let size = sandbox_size(&cfg, &spec)?;
    let mut tap = None;
    let mut nic = None;
    let mut guest_net = None;
    if let Some(ns) = &netns {
        let (plan, fd) = net::setup(&net::Nsenter, ns)?;
        std::fs::write(
            dir.join("netns"),
            format!("{}\n{}\n", ns.display(), plan.veth),
        )
        .map_err(io("writing", dir))?;
        *d.net_veth.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((ns.clone(), plan.veth.clone()));
        nic = Some(qemu::Nic {
            mac: plan.mac.clone(),
        });
        guest_net = Some(plan.guest);
        tap = Some(fd);
    }
    let accel =
        crate::kvm::verdict(&crate::kvm::probe_with_cache(root), cfg.hypervisor.accel).accel;
    let tsc_khz = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| qemu::tsc_khz(&c));
    // The template is a VM of the default size; a pod with limits boots its own.
    let default_size = crate::sizing::Size {
        vcpus: cfg.hypervisor.vcpus,
        memory_mib: cfg.hypervisor.memory_mib,
    };
    let template = if cfg.factory.template && size == default_size {
        Some(crate::template::ensure(
            hv,
            &cfg,
            root,
            accel,
            tsc_khz,
            BOOT_TIMEOUT,
        )?)
    } else {
        None
    };
    let console = dir.join("console.log");
    let qmp = dir.join("qmp.sock");
    let vm = qemu::VmSpec {
        sandbox_id: sandbox_id.to_string(),
        accel,
        vcpus: size.vcpus,
        memory_mib: size.memory_mib,
        kernel,
        initramfs,
        shared_dir: sandbox::shared_dir(dir),
        shared_rw_dir: sandbox::shared_rw_dir(dir),
        console_log: console.clone(),
        nic,
        tsc_khz,
        poweroff: false,
        template: template.as_ref().map(|f| qemu::Template::Restore {
            memory: f.memory.clone(),
            state: f.state.clone(),
            qmp: qmp.clone(),
        }),
    };
    let (host, guest) = UnixStream::pair().map_err(io("socketpair for", dir))?;
    let t_spawn = started.elapsed();
    let child = hv.launch(&cfg, &vm, &guest, tap.as_ref(), &dir.join("qemu.log"))?;
    drop(guest);
    drop(tap);
    std::fs::write(dir.join("qemu.pid"), child.pid().to_string()).map_err(io("writing", dir))?;
    *d.qemu.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
    let agent = AgentConn::start(Box::new(host), Arc::new(Ev(d.clone())))
        .map_err(io("starting the channel on", dir))?;
    *d.agent.lock().unwrap_or_else(|p| p.into_inner()) = Some(agent.clone());
    let boot_err = |why: String| DaemonError::Boot {
        why,
        console: console_tail(&console),
    };
    let timings = if template.is_some() {
        crate::template::restore(&qmp, BOOT_TIMEOUT)?;
        agent.greet().map_err(|e| boot_err(e.to_string()))?;
        agent
            .request(crate::template::resume_op(), REQUEST_TIMEOUT)
            .map_err(|e| boot_err(e.to_string()))?;
        serde_json::json!({
            "accel": accel,
            "template": true,
            "qemuSpawnMs": t_spawn.as_millis() as u64,
            "helloMs": started.elapsed().as_millis() as u64,
        })
    } else {
        let hello = agent
            .wait_hello(BOOT_TIMEOUT)
            .map_err(|e| boot_err(e.to_string()))?;
        let t_hello = started.elapsed();
        // Where boot time goes, for `bench/vm.sh`: host-side milliseconds since the daemon
        // started, and the guest's own clock at kernel-done (init) and agent-ready.
        serde_json::json!({
            "accel": accel,
            "qemuSpawnMs": t_spawn.as_millis() as u64,
            "helloMs": t_hello.as_millis() as u64,
            "guestInitMs": hello.init_ms,
            "guestReadyMs": hello.ready_ms,
        })
    };
    std::fs::write(dir.join("timings.json"), timings.to_string()).map_err(io("writing", dir))?;
    if let Some(mut cfg) = guest_net {
        if template.is_some() {
            for i in &mut cfg.interfaces {
                i.current_mac = Some(qemu::TEMPLATE_MAC.to_string());
            }
        }
        agent
            .request(Op::ConfigureNetwork(cfg), REQUEST_TIMEOUT)
            .map_err(|e| boot_err(e.to_string()))?;
    }
    // A thread notices QEMU dying on its own (killed, crashed).
    let d2 = d.clone();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let mut q = d2.qemu.lock().unwrap_or_else(|p| p.into_inner());
            match q.as_mut().map(|c| c.exited()) {
                Some(Ok(Some(_))) | None => {
                    drop(q);
                    Ev(d2.clone()).died("QEMU exited");
                    return;
                }
                _ => {}
            }
        }
    });
    Ok(ctl::listen(&sandbox::ctl_socket(dir))?)
}

#[cfg(test)]
mod tests {
    //! The daemon's boot, death detection and teardown against the recording hypervisor
    //! fake (`vmm::fake`): no QEMU, no root. The real path is `tests/vm.rs`.
    use super::*;
    use crate::vmm::fake::{Fake, Script};

    struct Setup {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        config: PathBuf,
        bundle: PathBuf,
    }

    fn setup() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let assets = tmp.path().join("assets");
        std::fs::create_dir_all(&assets).unwrap();
        let kind = crate::config::KernelKind::default();
        std::fs::write(assets.join(crate::assets::kernel_name(kind)), "kernel").unwrap();
        std::fs::write(
            assets.join(crate::assets::initramfs_name(kind, false)),
            "initramfs",
        )
        .unwrap();
        let config = tmp.path().join("rt.toml");
        std::fs::write(
            &config,
            format!(
                "[hypervisor]\naccel = \"tcg\"\n[assets]\ndir = \"{}\"\n",
                assets.display()
            ),
        )
        .unwrap();
        let bundle = tmp.path().join("bundle");
        std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
        std::fs::write(
            bundle.join("config.json"),
            serde_json::json!({
                "ociVersion": "1.0.2",
                "root": {"path": "rootfs"},
                "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
                "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}]}
            })
            .to_string(),
        )
        .unwrap();
        Setup {
            _tmp: tmp,
            root,
            config,
            bundle,
        }
    }

    fn daemon(root: &Path, id: &str) -> Arc<Daemon> {
        Daemon::new(sandbox::dir(root, id))
    }

    fn eventually(what: &str, f: impl Fn() -> bool) {
        for _ in 0..300 {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("timed out waiting for {what}");
    }

    #[test]
    fn boot_launches_once_records_the_vm_and_teardown_powers_it_off() {
        let s = setup();
        let fake = Fake::new(Script::Healthy);
        let d = daemon(&s.root, "sb1");
        boot(&d, &fake, &s.root, &s.config, "sb1", &s.bundle).expect("boot");
        {
            let r = fake.rec.lock().unwrap();
            assert_eq!(r.launches.len(), 1);
            let a = r.launches[0].join(" ");
            assert!(
                a.contains("-name sandbox-sb1") && a.contains("-accel tcg"),
                "{a}"
            );
            assert!(!a.contains("netdev"), "no netns path, no NIC: {a}");
        }
        assert_eq!(
            std::fs::read_to_string(d.dir.join("qemu.pid")).unwrap(),
            "4242"
        );
        let t: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.dir.join("timings.json")).unwrap())
                .unwrap();
        assert_eq!(t["guestReadyMs"], 2);
        assert!(sandbox::ctl_socket(&d.dir).exists());
        d.teardown();
        let r = fake.rec.lock().unwrap();
        assert_eq!(r.ops, ["Shutdown"], "the guest is asked to power off");
        assert!(r.killed, "and the VM is reaped");
        assert!(!d.dir.exists(), "nothing of the sandbox is left");
    }

    #[test]
    fn a_guest_that_never_says_hello_fails_the_boot_with_its_console() {
        let s = setup();
        let fake = Fake::new(Script::Panics);
        let d = daemon(&s.root, "sb2");
        let e = boot(&d, &fake, &s.root, &s.config, "sb2", &s.bundle).expect_err("no hello");
        let msg = e.to_string();
        assert!(msg.contains("the VM did not come up"), "{msg}");
        assert!(
            msg.contains("kernel panic - not syncing"),
            "the console tail is shown: {msg}"
        );
        d.teardown();
        assert!(fake.rec.lock().unwrap().killed);
        assert!(!d.dir.exists());
    }

    #[test]
    fn a_vm_that_ends_on_its_own_stops_its_processes_with_the_died_status() {
        let s = setup();
        let fake = Fake::new(Script::DiesAfterHello);
        let d = daemon(&s.root, "sb3");
        boot(&d, &fake, &s.root, &s.config, "sb3", &s.bundle).expect("boot");
        d.lock()
            .containers
            .entry("c1".into())
            .or_default()
            .procs
            .insert(None, ProcSt::default());
        eventually("the VM's death to be noticed", || {
            d.lock().vm_dead.is_some()
        });
        assert_eq!(
            d.lock().containers["c1"].procs[&None].status,
            Some(VM_DIED_STATUS)
        );
        d.teardown();
        assert!(!d.dir.exists());
    }
}

//! The VM factory's template (Kata's `enable_template`, `[factory] template = true`): one VM
//! is booted until its agent is ready (modules loaded, nothing mounted from the host), then
//! stopped and saved: its memory stays in a file, its device state (tens of KiB) goes to
//! another. A sandbox then starts by restoring that state over a private, copy-on-write
//! mapping of the memory file, instead of booting a kernel; the agent's `Resume` sets the
//! clock, reseeds the random pool and mounts the sandbox's own share.
//!
//! The template lives in `<root>/.template`, rebuilt when the configuration or the assets
//! change (the key file records what it was built from).

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::channel::{AgentConn, Events};
use crate::config::Config;
use crate::error::DaemonError;
use crate::qemu::{Template, VmSpec};
use crate::qmp::Qmp;
use crate::vmm::Hypervisor;

pub struct Files {
    pub memory: PathBuf,
    pub state: PathBuf,
}

pub fn dir(root: &Path) -> PathBuf {
    root.join(".template")
}

fn err(step: &'static str) -> impl FnOnce(String) -> DaemonError {
    move |why| DaemonError::Template { step, why }
}

fn qmp_err(step: &'static str) -> impl FnOnce(crate::qmp::QmpError) -> DaemonError {
    move |e| err(step)(e.to_string())
}

/// Guest memory stays out of the migration stream on both sides: it is the template's file.
fn ignore_shared(m: &mut Qmp, step: &'static str) -> Result<(), DaemonError> {
    m.cmd(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]}),
    )
    .map(|_| ())
    .map_err(qmp_err(step))
}

/// What a template depends on: the hypervisor settings, the accelerator and the assets.
fn key(cfg: &Config, accel: &str, initramfs: &Path) -> String {
    let stamp = std::fs::read_to_string(cfg.assets.dir.join("stamp")).unwrap_or_default();
    let mtime = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    };
    // The machine's device layout (two 9p shares since the writable one) must match between
    // the saved template and its copies; bump when it changes.
    format!(
        "layout 2|{:?}|{accel}|{}|{}|{}|{}",
        cfg.hypervisor,
        stamp.trim(),
        initramfs.display(),
        mtime(initramfs),
        mtime(&cfg.assets.kernel_path())
    )
}

struct Quiet;
impl Events for Quiet {
    fn exited(&self, _: &str, _: Option<&str>, _: i32) {}
    fn died(&self, _: &str) {}
}

/// The template for `cfg`, built first if missing or stale. Serialized by a lock, so
/// concurrent first sandboxes build it once.
pub fn ensure(
    hv: &dyn Hypervisor,
    cfg: &Config,
    root: &Path,
    accel: &'static str,
    tsc_khz: Option<u64>,
    boot_timeout: Duration,
) -> Result<Files, DaemonError> {
    std::fs::create_dir_all(root).map_err(|e| err("creating the runtime root")(e.to_string()))?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(root.join(".template.lock"))
        .map_err(|e| err("opening the template lock")(e.to_string()))?;
    // SAFETY: flock on a descriptor we own; released when `lock` is dropped.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(err("locking the template")(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    let d = dir(root);
    let initramfs = cfg.assets.initramfs_path(cfg.hypervisor.debug_console);
    let want = key(cfg, accel, &initramfs);
    let files = Files {
        memory: d.join("memory"),
        state: d.join("state"),
    };
    if files.state.is_file() && std::fs::read_to_string(d.join("key")).is_ok_and(|k| k == want) {
        return Ok(files);
    }
    let _ = std::fs::remove_dir_all(&d);
    let r = build(hv, cfg, &d, &initramfs, accel, tsc_khz, boot_timeout, &want);
    if r.is_err() {
        let _ = std::fs::remove_dir_all(&d);
    }
    r.map(|()| files)
}

#[allow(clippy::too_many_arguments)]
fn build(
    hv: &dyn Hypervisor,
    cfg: &Config,
    d: &Path,
    initramfs: &Path,
    accel: &'static str,
    tsc_khz: Option<u64>,
    boot_timeout: Duration,
    key: &str,
) -> Result<(), DaemonError> {
    let io = |step: &'static str| move |e: std::io::Error| err(step)(e.to_string());
    std::fs::create_dir_all(d.join("share")).map_err(io("creating the template directory"))?;
    std::fs::create_dir_all(d.join("share-rw")).map_err(io("creating the template directory"))?;
    let vm = VmSpec {
        sandbox_id: "template".into(),
        accel,
        vcpus: cfg.hypervisor.vcpus,
        memory_mib: cfg.hypervisor.memory_mib,
        kernel: cfg.assets.kernel_path(),
        initramfs: initramfs.to_path_buf(),
        shared_dir: d.join("share"),
        shared_rw_dir: d.join("share-rw"),
        console_log: d.join("console.log"),
        nic: None,
        tsc_khz,
        poweroff: false,
        template: Some(Template::Build {
            memory: d.join("memory"),
            qmp: d.join("qmp.sock"),
        }),
    };
    let (host, guest) = UnixStream::pair().map_err(io("socketpair for the template"))?;
    let mut q = hv.launch(cfg, &vm, &guest, None, &d.join("qemu.log"))?;
    drop(guest);
    let r = (|| {
        let agent = AgentConn::start(Box::new(host), Arc::new(Quiet))
            .map_err(io("starting the template's channel"))?;
        agent
            .wait_hello(boot_timeout)
            .map_err(|e| DaemonError::Boot {
                why: format!("template VM: {e}"),
                console: std::fs::read_to_string(d.join("console.log")).unwrap_or_default(),
            })?;
        let mut m = Qmp::connect(&d.join("qmp.sock"), Duration::from_secs(10))
            .map_err(qmp_err("connecting to the template's monitor"))?;
        ignore_shared(&mut m, "keeping memory out of the saved state")?;
        m.cmd("stop", json!({}))
            .map_err(qmp_err("stopping the template"))?;
        let tmp = d.join("state.tmp");
        let uri = format!(
            "exec:cat > '{}'",
            tmp.display().to_string().replace('\'', "'\\''")
        );
        m.cmd("migrate", json!({"uri": uri}))
            .map_err(qmp_err("saving the template"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let st = m
                .cmd("query-migrate", json!({}))
                .map_err(qmp_err("watching the save"))?;
            match st["status"].as_str() {
                Some("completed") => break,
                Some("failed") | Some("cancelled") => {
                    return Err(err("saving the template")(
                        st["error-desc"].as_str().unwrap_or("failed").to_string(),
                    ));
                }
                _ if Instant::now() > deadline => {
                    return Err(err("saving the template")("timed out".into()));
                }
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        let _ = m.cmd("quit", json!({}));
        // Durable and atomic: a crash leaves either no template or a whole one.
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io("syncing the template state"))?;
        std::fs::rename(&tmp, d.join("state")).map_err(io("keeping the template state"))?;
        std::fs::write(d.join("key.tmp"), key).map_err(io("writing the template key"))?;
        std::fs::rename(d.join("key.tmp"), d.join("key")).map_err(io("writing the template key"))
    })();
    q.kill();
    r
}

/// Brings a VM launched with [`Template::Restore`] to running: the saved device state is
/// loaded from its state descriptor over the template memory, then the VM continues.
pub fn restore(qmp_path: &Path, timeout: Duration) -> Result<(), DaemonError> {
    let mut m = Qmp::connect(qmp_path, timeout).map_err(qmp_err("connecting to the monitor"))?;
    ignore_shared(&mut m, "mapping the template memory")?;
    m.cmd(
        "migrate-incoming",
        json!({"uri": format!("fd:{}", crate::qemu::STATE_FD)}),
    )
    .map_err(qmp_err("loading the template state"))?;
    let deadline = Instant::now() + timeout;
    loop {
        let st = m
            .cmd("query-status", json!({}))
            .map_err(qmp_err("waiting for the restore"))?;
        match st["status"].as_str() {
            Some("running") => return Ok(()),
            // The template was stopped when saved, so the copy arrives paused.
            Some("paused") => {
                m.cmd("cont", json!({})).map_err(qmp_err("resuming"))?;
            }
            _ if Instant::now() > deadline => {
                return Err(err("restoring the template")("timed out".into()));
            }
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// The host's part of a restored VM's `Resume`: its clock and fresh entropy.
pub fn resume_op() -> moat_vm_proto::Op {
    let mut entropy = vec![0u8; 64];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut entropy));
    let unix_time_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    moat_vm_proto::Op::Resume {
        unix_time_ns,
        entropy,
    }
}

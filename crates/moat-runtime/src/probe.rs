//! Bare boots: the guest kernel + initramfs with an init that powers off at once. `check`
//! uses one under KVM to learn whether guests really boot there (here /dev/kvm opens and
//! KVM_CREATE_VM works, yet nested guests hang), and the benchmark uses them as the limit a
//! sandbox boot is measured against.

use crate::config::Config;
use crate::qemu;
use crate::vmm::Hypervisor;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where `check` records what it saw, for `accel = "auto"` to read.
pub fn cache_path(root: &Path) -> PathBuf {
    root.join(".kvm-boot-probe")
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("guest assets missing in {0}")]
    Assets(String),
    #[error("{step}")]
    Io {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("starting QEMU")]
    Qemu(#[source] crate::error::DaemonError),
}

/// Boots once; `Ok(Some(elapsed))` when the guest powered off (QEMU exited 0) in time,
/// `Ok(None)` when it did not (QEMU killed at the deadline).
pub fn bare_boot(
    cfg: &Config,
    accel: &'static str,
    timeout: Duration,
) -> Result<Option<Duration>, ProbeError> {
    bare_boot_with(&crate::vmm::Qemu, cfg, accel, timeout)
}

/// [`bare_boot`] on the given hypervisor.
pub fn bare_boot_with(
    hv: &dyn Hypervisor,
    cfg: &Config,
    accel: &'static str,
    timeout: Duration,
) -> Result<Option<Duration>, ProbeError> {
    let kernel = cfg.assets.kernel_path();
    let initramfs = cfg.assets.initramfs_path(false);
    if !kernel.is_file() || !initramfs.is_file() {
        return Err(ProbeError::Assets(cfg.assets.dir.display().to_string()));
    }
    let io = |step| move |source| ProbeError::Io { step, source };
    let tmp = tempfile::tempdir().map_err(io("creating a scratch directory"))?;
    let shared = tmp.path().join("shared");
    std::fs::create_dir_all(&shared).map_err(io("creating the share"))?;
    std::fs::create_dir_all(tmp.path().join("shared-rw")).map_err(io("creating the share"))?;
    let vm = qemu::VmSpec {
        sandbox_id: "boot-probe".into(),
        accel,
        vcpus: cfg.hypervisor.vcpus,
        memory_mib: cfg.hypervisor.memory_mib,
        kernel,
        initramfs,
        shared_dir: shared,
        shared_rw_dir: tmp.path().join("shared-rw"),
        console_log: tmp.path().join("console.log"),
        nic: None,
        tsc_khz: std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| qemu::tsc_khz(&c)),
        poweroff: true,
        template: None,
    };
    let (_host, guest) = UnixStream::pair().map_err(io("socketpair"))?;
    let t0 = Instant::now();
    let mut child = hv
        .launch(cfg, &vm, &guest, None, &tmp.path().join("qemu.log"))
        .map_err(ProbeError::Qemu)?;
    loop {
        match child.exited().map_err(io("waiting for QEMU"))? {
            Some(ok) => return Ok(ok.then(|| t0.elapsed())),
            None if t0.elapsed() > timeout => {
                child.kill();
                return Ok(None);
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

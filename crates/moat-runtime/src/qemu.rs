//! The QEMU command line for one sandbox (sans-IO) and the launcher behind a trait.

use crate::config::Config;
use std::path::{Path, PathBuf};

/// Where the daemon puts the pre-connected agent socket in QEMU's descriptor table.
pub const AGENT_FD: i32 = 3;
/// Where the tap descriptor goes when the sandbox has a network.
pub const TAP_FD: i32 = 4;
/// Where a restored VM reads the template's device state from.
pub const STATE_FD: i32 = 5;
/// The NIC's MAC in a template (a restored VM's agent gives it the veth's).
pub const TEMPLATE_MAC: &str = "02:6d:6f:61:74:01";

/// A VM's part in the VM factory (`[factory] template`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Template {
    /// Booted to be saved: guest memory in a shared file, QMP to stop and save it. The
    /// agent stops short of mounting the share (9p cannot migrate while mounted).
    Build { memory: PathBuf, qmp: PathBuf },
    /// Restored from `state` (device state, read from [`STATE_FD`]) over a private,
    /// copy-on-write mapping of the template's `memory`.
    Restore {
        memory: PathBuf,
        state: PathBuf,
        qmp: PathBuf,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub mac: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    pub sandbox_id: String,
    pub accel: &'static str,
    /// The VM's size (see `crate::sizing`).
    pub vcpus: u32,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub shared_dir: PathBuf,
    pub shared_rw_dir: PathBuf,
    pub console_log: PathBuf,
    pub nic: Option<Nic>,
    /// The host's TSC rate, handed to the guest (see [`tsc_khz`]).
    pub tsc_khz: Option<u64>,
    /// Boot to the agent and power off at once (the bare-boot probe and benchmark limit).
    pub poweroff: bool,
    pub template: Option<Template>,
}

/// The host TSC rate in kHz from /proc/cpuinfo. Guests read the host's TSC (TCG passes it
/// through, KVM too), and when a loaded host makes the guest's PIT calibration fail the kernel
/// marks the TSC unstable and hangs at boot (seen here 2 boots in 12). `tsc_early_khz=` skips
/// that calibration.
pub fn tsc_khz(cpuinfo: &str) -> Option<u64> {
    let flags_ok = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .is_some_and(|l| l.split_whitespace().any(|f| f == "constant_tsc"));
    if !flags_ok {
        return None;
    }
    let mhz: f64 = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

/// Builds QEMU's arguments: a `microvm` with virtio-mmio devices only, the agent channel on a
/// virtio-serial port (Kata 1.x's `agent.channel.0`), the shared directory on 9p, an optional
/// tap NIC, the serial console to a file, and QEMU's own seccomp sandbox.
pub fn args(cfg: &Config, vm: &VmSpec) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
    push(&["-name", &format!("sandbox-{}", vm.sandbox_id)]);
    // microvm's PIT/PIC/RTC stay on: turning them off hangs TCG guests here (VM.md). Our
    // kernel has no ACPI: without it QEMU lists the virtio-mmio devices on the kernel command
    // line and the firmware's MP table describes the CPUs.
    let machine = match cfg.assets.kernel {
        crate::config::KernelKind::Debian => "microvm,x-option-roms=off,isa-serial=on",
        crate::config::KernelKind::Moat => "microvm,x-option-roms=off,isa-serial=on,acpi=off",
    };
    match &vm.template {
        None => push(&["-M", machine]),
        Some(Template::Build { memory, .. } | Template::Restore { memory, .. }) => {
            // Built and restored VMs must describe the same machine: the same memory backend
            // (shared when saving, private when restoring), devices and command line.
            let share = if matches!(vm.template, Some(Template::Build { .. })) {
                "on"
            } else {
                "off"
            };
            push(&["-M", &format!("{machine},memory-backend=ram")]);
            push(&[
                "-object",
                &format!(
                    "memory-backend-file,id=ram,size={}M,mem-path={},share={share}",
                    vm.memory_mib,
                    qemu_escape(memory)
                ),
            ]);
        }
    }
    push(&["-accel", vm.accel]);
    // `-cpu host` under KVM trips on MSR 0x10a here; `max` works under both.
    push(&["-cpu", "max"]);
    push(&["-m", &format!("{}M", vm.memory_mib)]);
    push(&["-smp", &vm.vcpus.to_string()]);
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);
    push(&["-kernel", &vm.kernel.to_string_lossy()]);
    push(&["-initrd", &vm.initramfs.to_string_lossy()]);
    let mut cmdline = cfg.kernel_cmdline();
    if let Some(k) = vm.tsc_khz {
        cmdline = format!("{cmdline} tsc_early_khz={k}");
    }
    if vm.poweroff {
        cmdline.push_str(" moat.poweroff");
    }
    // The guest loads its network driver only when there is a NIC; a template always has
    // one (a restored copy may need it) and skips the share.
    if vm.template.is_some() {
        cmdline.push_str(" moat.template moat.nic");
    } else if vm.nic.is_some() {
        cmdline.push_str(" moat.nic");
    }
    push(&["-append", &cmdline]);
    push(&["-chardev", &format!("socket,id=agent,fd={AGENT_FD}")]);
    // Two ports (0 stays reserved for a console, the agent's is 1) instead of QEMU's default
    // 31: every port is two virtqueues the guest sets up at probe, which took about 50 ms of
    // the guest's start-up under TCG.
    push(&["-device", "virtio-serial-device,max_ports=2"]);
    push(&[
        "-device",
        &format!(
            "virtserialport,chardev=agent,name={}",
            moat_vm_proto::CHANNEL_NAME
        ),
    ]);
    push(&[
        "-fsdev",
        &format!(
            "local,id=share,path={},security_model=passthrough,readonly=on",
            qemu_escape(&vm.shared_dir)
        ),
    ]);
    push(&[
        "-device",
        &format!(
            "virtio-9p-device,fsdev=share,mount_tag={}",
            moat_vm_proto::SHARE_TAG
        ),
    ]);
    // The writable share: mapped-xattr keeps the guest's ownership, modes, symlinks and device
    // nodes in xattrs, so on the host they are plain files owned by QEMU's user: nothing the
    // guest plants there is followed or opened as a device by the host.
    push(&[
        "-fsdev",
        &format!(
            "local,id=sharerw,path={},security_model=mapped-xattr",
            qemu_escape(&vm.shared_rw_dir)
        ),
    ]);
    push(&[
        "-device",
        &format!(
            "virtio-9p-device,fsdev=sharerw,mount_tag={}",
            moat_vm_proto::SHARE_RW_TAG
        ),
    ]);
    match (&vm.nic, &vm.template) {
        (Some(nic), None) => {
            push(&["-netdev", &format!("tap,id=net0,fd={TAP_FD},vhost=off")]);
            push(&[
                "-device",
                &format!("virtio-net-device,netdev=net0,mac={}", nic.mac),
            ]);
        }
        (nic, Some(_)) => {
            // A template's NIC: the tap when the restored sandbox has one, otherwise a hub
            // port leading nowhere (the device must exist either way).
            if nic.is_some() {
                push(&["-netdev", &format!("tap,id=net0,fd={TAP_FD},vhost=off")]);
            } else {
                push(&["-netdev", "hubport,id=net0,hubid=0"]);
            }
            push(&[
                "-device",
                &format!("virtio-net-device,netdev=net0,mac={TEMPLATE_MAC}"),
            ]);
        }
        (None, None) => {}
    }
    push(&[
        "-chardev",
        &format!("file,id=console,path={}", qemu_escape(&vm.console_log)),
    ]);
    push(&["-serial", "chardev:console"]);
    match &vm.template {
        Some(Template::Build { qmp, .. }) => {
            push(&[
                "-qmp",
                &format!("unix:{},server=on,wait=off", qemu_escape(qmp)),
            ]);
            // Saving runs `cat` (QEMU 7.2 has no file: migration); the template VM runs only
            // our agent, and never a container.
            push(&[
                "-sandbox",
                "on,obsolete=deny,elevateprivileges=deny,resourcecontrol=deny",
            ]);
        }
        Some(Template::Restore { qmp, .. }) => {
            push(&[
                "-qmp",
                &format!("unix:{},server=on,wait=off", qemu_escape(qmp)),
            ]);
            push(&["-incoming", "defer"]);
            push(&[
                "-sandbox",
                "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
            ]);
        }
        None => push(&[
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ]),
    }
    a
}

/// QEMU option values separate with ',' and escape it by doubling.
fn qemu_escape(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_rate_from_cpuinfo_only_when_constant() {
        let c =
            "processor\t: 0\ncpu MHz\t\t: 2600.000\nflags\t\t: fpu tsc constant_tsc nonstop_tsc\n";
        assert_eq!(tsc_khz(c), Some(2_600_000));
        assert_eq!(tsc_khz("cpu MHz\t: 2600.000\nflags\t: fpu tsc\n"), None);
        assert_eq!(tsc_khz("flags\t: constant_tsc\n"), None);
    }

    fn vm(nic: bool) -> VmSpec {
        VmSpec {
            sandbox_id: "abc".into(),
            accel: "tcg",
            vcpus: 3,
            memory_mib: 1280,
            kernel: "/a/vmlinux".into(),
            initramfs: "/a/initramfs.cpio".into(),
            shared_dir: "/run/x,y/shared".into(),
            shared_rw_dir: "/run/x,y/shared-rw".into(),
            console_log: "/run/c.log".into(),
            nic: nic.then(|| Nic {
                mac: "02:00:00:00:00:01".into(),
            }),
            tsc_khz: Some(2_600_000),
            poweroff: false,
            template: None,
        }
    }

    #[test]
    fn command_line_has_channel_share_and_sandbox() {
        let a = args(&Config::default(), &vm(false)).join(" ");
        assert!(a.contains("-name sandbox-abc"), "{a}");
        assert!(
            a.contains("virtserialport,chardev=agent,name=agent.channel.0"),
            "{a}"
        );
        assert!(a.contains("path=/run/x,,y/shared"), "{a}");
        assert!(a.contains("mount_tag=moatShared "), "{a}");
        assert!(
            a.contains("path=/run/x,,y/shared-rw,security_model=mapped-xattr")
                && a.contains("mount_tag=moatSharedRw"),
            "{a}"
        );
        assert!(a.contains("-accel tcg"), "{a}");
        assert!(a.contains("-m 1280M -smp 3"), "the VM's own size: {a}");
        assert!(a.contains("-sandbox on,obsolete=deny"), "{a}");
        assert!(!a.contains("netdev"), "{a}");
        assert!(!a.contains("moat.nic"), "{a}");
        assert!(a.contains("tsc_early_khz=2600000"), "{a}");
        assert!(a.contains("virtio-serial-device,max_ports=2"), "{a}");
        let a = args(&Config::default(), &vm(true)).join(" ");
        assert!(a.contains("tap,id=net0,fd=4,vhost=off"), "{a}");
        assert!(
            a.contains(" moat.nic"),
            "the guest is told to load its NIC driver: {a}"
        );
        assert!(a.contains("mac=02:00:00:00:00:01"), "{a}");
    }

    #[test]
    fn our_kernel_gets_a_machine_without_acpi_debians_keeps_it() {
        let a = args(&Config::default(), &vm(false)).join(" ");
        assert!(
            a.contains("-M microvm,x-option-roms=off,isa-serial=on,acpi=off"),
            "{a}"
        );
        let mut c = Config::default();
        c.assets.kernel = crate::config::KernelKind::Debian;
        let a = args(&c, &vm(false)).join(" ");
        assert!(
            a.contains("-M microvm,x-option-roms=off,isa-serial=on "),
            "{a}"
        );
    }
}

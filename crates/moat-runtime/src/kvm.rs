//! Host probes behind `check` and `env`: CPU virtualization flags, /dev/kvm, KVM_CREATE_VM.
//!
//! The verdict is a pure function of the probe results so it is unit-tested without a host.
//! On this machine /dev/kvm exists and KVM_CREATE_VM succeeds yet a nested guest hangs, so KVM
//! is only chosen when a real guest boot under KVM has been observed (`guest_boot`, recorded by
//! `moat-runtime check`'s boot probe; `None` until one ran, and then the verdict is TCG).

use crate::config::Accel;
use serde::Serialize;
use std::os::fd::AsRawFd;

/// A probe step's OS error, kept as its errno so a `Probe` stays `Clone + Eq`; shown and
/// serialized (in `env`'s JSON) as the OS message, as before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", std::io::Error::from_raw_os_error(self.errno))]
pub struct OsError {
    pub errno: i32,
}

impl OsError {
    fn last() -> OsError {
        OsError::from(std::io::Error::last_os_error())
    }
}

impl From<std::io::Error> for OsError {
    fn from(e: std::io::Error) -> OsError {
        // Errors of open(2) and ioctl(2) always carry an errno; EIO stands in otherwise.
        OsError {
            errno: e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

impl Serialize for OsError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Probe {
    /// `vmx` or `svm` when /proc/cpuinfo advertises one.
    pub cpu_virt_flag: Option<String>,
    pub dev_kvm: Result<(), OsError>,
    pub kvm_api_version: Result<i32, OsError>,
    pub kvm_create_vm: Result<(), OsError>,
    /// Whether a guest booted under KVM and answered; `None` when not probed.
    pub guest_boot: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub accel: &'static str,
    pub reason: String,
}

/// Finds `vmx`/`svm` in the `flags` line of /proc/cpuinfo text.
pub fn cpu_virt_flag(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| {
            l.split_once(':')
                .map(|(_, f)| f)
                .unwrap_or("")
                .split_whitespace()
        })
        .find(|f| *f == "vmx" || *f == "svm")
        .map(str::to_string)
}

pub fn verdict(probe: &Probe, requested: Accel) -> Verdict {
    let kvm_ready = probe.dev_kvm.is_ok() && probe.kvm_create_vm.is_ok();
    match requested {
        Accel::Tcg => Verdict {
            accel: "tcg",
            reason: "configured accel = \"tcg\"".into(),
        },
        Accel::Kvm if kvm_ready => Verdict {
            accel: "kvm",
            reason: "configured accel = \"kvm\"".into(),
        },
        Accel::Kvm => Verdict {
            accel: "tcg",
            reason: format!(
                "configured accel = \"kvm\" but KVM is unusable ({}); falling back to TCG",
                first_error(probe)
            ),
        },
        Accel::Auto if !kvm_ready => Verdict {
            accel: "tcg",
            reason: format!("KVM unusable ({})", first_error(probe)),
        },
        Accel::Auto => match probe.guest_boot {
            Some(true) => Verdict {
                accel: "kvm",
                reason: "a guest booted under KVM and its agent answered".into(),
            },
            Some(false) => Verdict {
                accel: "tcg",
                reason: "KVM_CREATE_VM works but a guest did not boot under KVM".into(),
            },
            None => Verdict {
                accel: "tcg",
                reason:
                    "KVM_CREATE_VM works but no guest boot under KVM was observed (probe not run)"
                        .into(),
            },
        },
    }
}

fn first_error(p: &Probe) -> String {
    if let Err(e) = &p.dev_kvm {
        return format!("/dev/kvm: {e}");
    }
    if let Err(e) = &p.kvm_create_vm {
        return format!("KVM_CREATE_VM: {e}");
    }
    "no error".into()
}

// _IO(KVMIO=0xAE, nr) from linux/kvm.h.
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
const KVM_CREATE_VM: libc::c_ulong = 0xAE01;

/// Runs the real host probes (no guest boot).
pub fn probe_host() -> Probe {
    let cpu_virt_flag = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| cpu_virt_flag(&s));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    let (dev_kvm, kvm_api_version, kvm_create_vm) = match file {
        Err(e) => {
            let e = OsError::from(e);
            (Err(e), Err(e), Err(e))
        }
        Ok(f) => {
            // SAFETY: KVM_GET_API_VERSION takes no argument and only reads the fd.
            let ver = unsafe { libc::ioctl(f.as_raw_fd(), KVM_GET_API_VERSION, 0) };
            let ver = if ver < 0 {
                Err(OsError::last())
            } else {
                Ok(ver)
            };
            // SAFETY: KVM_CREATE_VM with machine type 0 returns a new fd or -1; we own and
            // close the returned fd immediately.
            let vm = unsafe { libc::ioctl(f.as_raw_fd(), KVM_CREATE_VM, 0) };
            let vm = if vm < 0 {
                Err(OsError::last())
            } else {
                // SAFETY: vm is a fresh fd returned by the kernel and not used elsewhere.
                unsafe { libc::close(vm) };
                Ok(())
            };
            (Ok(()), ver, vm)
        }
    };
    Probe {
        cpu_virt_flag,
        dev_kvm,
        kvm_api_version,
        kvm_create_vm,
        guest_boot: None,
    }
}

/// The probe of this host with the guest-boot result `check` recorded under `root`.
pub fn probe_with_cache(root: &std::path::Path) -> Probe {
    let mut p = probe_host();
    p.guest_boot = match std::fs::read_to_string(crate::probe::cache_path(root)) {
        Ok(s) if s.trim() == "ok" => Some(true),
        Ok(s) if s.trim() == "failed" => Some(false),
        _ => None,
    };
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_probe(guest_boot: Option<bool>) -> Probe {
        Probe {
            cpu_virt_flag: Some("vmx".into()),
            dev_kvm: Ok(()),
            kvm_api_version: Ok(12),
            kvm_create_vm: Ok(()),
            guest_boot,
        }
    }

    #[test]
    fn cpu_flags_are_found_in_cpuinfo() {
        let s = "processor\t: 0\nflags\t\t: fpu vme svm sse\n";
        assert_eq!(cpu_virt_flag(s).as_deref(), Some("svm"));
        assert_eq!(cpu_virt_flag("flags\t: fpu sse\n"), None);
        assert_eq!(cpu_virt_flag("vmx\n"), None);
    }

    #[test]
    fn auto_needs_an_observed_guest_boot_for_kvm() {
        assert_eq!(verdict(&ok_probe(None), Accel::Auto).accel, "tcg");
        assert_eq!(verdict(&ok_probe(Some(false)), Accel::Auto).accel, "tcg");
        assert_eq!(verdict(&ok_probe(Some(true)), Accel::Auto).accel, "kvm");
    }

    #[test]
    fn unusable_kvm_falls_back_with_reason() {
        let mut p = ok_probe(Some(true));
        p.dev_kvm = Err(OsError {
            errno: libc::ENOENT,
        });
        let v = verdict(&p, Accel::Kvm);
        assert_eq!(v.accel, "tcg");
        assert!(v.reason.contains("/dev/kvm: No such file"), "{}", v.reason);
        assert_eq!(
            serde_json::to_value(&p).expect("json")["dev_kvm"],
            serde_json::json!({"Err": "No such file or directory (os error 2)"})
        );
        assert_eq!(verdict(&ok_probe(None), Accel::Kvm).accel, "kvm");
        assert_eq!(verdict(&ok_probe(Some(true)), Accel::Tcg).accel, "tcg");
    }
}

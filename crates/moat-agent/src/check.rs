//! What this node can do (`moat agent check`): runtime handler binaries and whether their
//! runtime accepts this machine's cgroup layout, whether a VM handler (moat-runtime) can boot
//! sandboxes and how (QEMU, guest assets, KVM or TCG), CNI plugins, nftables, /dev/kvm. The
//! cgroup analysis is sans-IO over /proc/self/mountinfo, the VM verdict over the runtime's
//! own `env` report.

use std::path::{Path, PathBuf};

use crate::handlers::Handlers;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupMode {
    /// cgroup v2 only (`/sys/fs/cgroup` is cgroup2).
    Unified,
    /// v1 controllers only.
    Legacy,
    /// v1 controllers plus a unified hierarchy at `path` holding `controllers`.
    Hybrid {
        path: String,
        controllers: Vec<String>,
    },
}

/// Reads the cgroup layout from mountinfo; `controllers(path)` reads a cgroup2 mount's
/// `cgroup.controllers`.
pub fn cgroup_mode(mountinfo: &str, controllers: impl Fn(&str) -> Option<String>) -> CgroupMode {
    let mut v1 = false;
    let mut v2: Option<String> = None;
    for l in mountinfo.lines() {
        // Fields: id parent maj:min root mountpoint opts [optional...] - fstype source opts
        let mut f = l.split(' ');
        let mountpoint = f.nth(4).unwrap_or("");
        let fstype = l.split(" - ").nth(1).and_then(|r| r.split(' ').next());
        match fstype {
            Some("cgroup") => v1 = true,
            Some("cgroup2") => v2 = Some(mountpoint.to_string()),
            _ => {}
        }
    }
    match (v1, v2) {
        (false, Some(_)) => CgroupMode::Unified,
        (true, Some(path)) => CgroupMode::Hybrid {
            controllers: controllers(&path)
                .unwrap_or_default()
                .split_whitespace()
                .map(String::from)
                .collect(),
            path,
        },
        _ => CgroupMode::Legacy,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub ok: bool,
    pub what: String,
    pub detail: String,
}

/// crun on a hybrid cgroup layout whose unified hierarchy holds controllers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "crun refuses this machine's cgroups: hybrid mode (v1 controllers plus a unified hierarchy at {path} holding {}); pods sent to this handler fail with CreateContainerError",
    controllers.join(", ")
)]
pub struct CrunHybrid {
    pub path: String,
    pub controllers: Vec<String>,
}

/// Whether a handler's runtime works with `mode`; crun refuses a hybrid layout whose unified
/// hierarchy holds controllers ("cgroups in hybrid mode not supported").
pub fn runtime_verdict(binary: &Path, version: &str, mode: &CgroupMode) -> Result<(), CrunHybrid> {
    let is_crun = version.to_ascii_lowercase().starts_with("crun")
        || binary.file_name().is_some_and(|n| n == "crun");
    if let (
        true,
        CgroupMode::Hybrid {
            path, controllers, ..
        },
    ) = (is_crun, mode)
        && !controllers.is_empty()
    {
        return Err(CrunHybrid {
            path: path.clone(),
            controllers: controllers.clone(),
        });
    }
    Ok(())
}

/// Whether a moat-runtime handler can run VM pods, from what `moat-runtime env` reports (the
/// configuration, asset paths and accelerator verdict the runtime itself would use) and
/// which of the files it names exist. Missing QEMU or guest assets make the handler
/// unusable; no usable KVM only makes it slower (TCG), which the detail says.
pub fn vm_handler_verdict(
    name: &str,
    env: &serde_json::Value,
    is_file: impl Fn(&Path) -> bool,
) -> Finding {
    let what = format!("handler {name}: VM sandboxes");
    let path = |v: &serde_json::Value| v.as_str().map(PathBuf::from);
    let mut missing = Vec::new();
    match path(&env["config"]["hypervisor"]["path"]) {
        Some(q) if is_file(&q) => {}
        Some(q) => missing.push(format!(
            "no QEMU at {} (apt-get install qemu-system-x86)",
            q.display()
        )),
        None => missing.push("the runtime names no hypervisor".into()),
    }
    let assets: Vec<PathBuf> = ["kernel", "initramfs"]
        .iter()
        .filter_map(|k| path(&env[*k]))
        .collect();
    let absent: Vec<String> = assets
        .iter()
        .filter(|p| !is_file(p))
        .map(|p| p.display().to_string())
        .collect();
    if assets.len() < 2 {
        missing.push("the runtime names no guest kernel or initramfs".into());
    } else if !absent.is_empty() {
        missing.push(format!(
            "no guest assets: {} missing (run scripts/guest-assets.sh)",
            absent.join(", ")
        ));
    }
    if !missing.is_empty() {
        return Finding {
            ok: false,
            what,
            detail: format!("{}; pods sent to this handler fail", missing.join("; ")),
        };
    }
    let accel = env["accel"]["accel"].as_str().unwrap_or("?");
    let reason = env["accel"]["reason"].as_str().unwrap_or("");
    let accel = if accel == "kvm" {
        format!("KVM ({reason})")
    } else {
        format!("TCG, emulated and slower: {reason}")
    };
    let kernel = match env["kernelKind"].as_str() {
        Some(k) => format!("{k} kernel"),
        None => "kernel".into(),
    };
    Finding {
        ok: true,
        what,
        detail: format!(
            "{kernel} {}, {accel}",
            env["kernel"].as_str().unwrap_or("?")
        ),
    }
}

fn vm_handler(name: &str, h: &crate::handlers::Handler) -> Finding {
    let out = std::process::Command::new(&h.binary)
        .args(&h.options)
        .arg("--root")
        .arg(&h.root)
        .arg("env")
        .output();
    let what = format!("handler {name}: VM sandboxes");
    match out {
        Err(e) => Finding {
            ok: false,
            what,
            detail: format!("cannot run {} env: {e}", h.binary.display()),
        },
        Ok(o) if !o.status.success() => Finding {
            ok: false,
            what,
            detail: format!(
                "{} env failed: {}",
                h.binary.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        },
        Ok(o) => match serde_json::from_slice::<serde_json::Value>(&o.stdout) {
            Ok(env) => vm_handler_verdict(name, &env, |p| p.is_file()),
            Err(e) => Finding {
                ok: false,
                what,
                detail: format!("{} env printed no JSON: {e}", h.binary.display()),
            },
        },
    }
}

pub fn check(handlers: &Handlers, cni_bin_dirs: &[PathBuf]) -> Vec<Finding> {
    let mut out = Vec::new();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mode = cgroup_mode(&mountinfo, |p| {
        std::fs::read_to_string(Path::new(p).join("cgroup.controllers")).ok()
    });
    out.push(Finding {
        ok: true,
        what: "cgroups".into(),
        detail: match &mode {
            CgroupMode::Unified => "v2 (unified)".into(),
            CgroupMode::Legacy => "v1".into(),
            CgroupMode::Hybrid { path, controllers } => format!(
                "hybrid: v1 controllers + unified hierarchy at {path} ({})",
                if controllers.is_empty() {
                    "no controllers".to_string()
                } else {
                    controllers.join(", ")
                }
            ),
        },
    });
    for (name, h) in &handlers.map {
        let what = format!("handler {name} ({})", h.binary.display());
        let version = std::process::Command::new(&h.binary)
            .arg("--version")
            .output();
        let f = match version {
            Err(e) => Finding {
                ok: false,
                what,
                detail: format!("cannot run: {e}"),
            },
            Ok(o) => {
                let v = String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                let is_vm = v.starts_with("moat-runtime");
                let f = match runtime_verdict(&h.binary, &v, &mode) {
                    Ok(()) => Finding {
                        ok: true,
                        what,
                        detail: v,
                    },
                    Err(why) => Finding {
                        ok: false,
                        what,
                        detail: why.to_string(),
                    },
                };
                if is_vm {
                    out.push(f);
                    vm_handler(name, h)
                } else {
                    f
                }
            }
        };
        out.push(f);
    }
    for plugin in ["bridge", "host-local", "portmap", "loopback"] {
        let found = cni_bin_dirs
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file());
        out.push(Finding {
            ok: found.is_some(),
            what: format!("CNI plugin {plugin}"),
            detail: found.map_or_else(
                || "not found (apt-get install containernetworking-plugins)".into(),
                |p| p.display().to_string(),
            ),
        });
    }
    let nft = ["/usr/sbin/nft", "/sbin/nft"]
        .iter()
        .find(|p| Path::new(p).is_file());
    out.push(Finding {
        ok: nft.is_some(),
        what: "nftables".into(),
        detail: nft.map_or("nft not found".into(), |p| p.to_string()),
    });
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    out.push(Finding {
        ok: kvm.is_ok(),
        what: "/dev/kvm".into(),
        detail: match kvm {
            Ok(_) => "opens (VM pods can use KVM; nested guests may still need TCG)".into(),
            Err(e) => format!("unusable ({e}): VM pods fall back to TCG"),
        },
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Trimmed from this build machine's /proc/self/mountinfo.
    const HYBRID: &str = "\
30 24 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,memory
33 30 0:29 / /sys/fs/cgroup/cpu rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,cpu
";

    #[test]
    fn hybrid_with_hugetlb_in_v2_is_refused_for_crun_only() {
        let mode = cgroup_mode(HYBRID, |p| {
            assert_eq!(p, "/sys/fs/cgroup/unified");
            Some("hugetlb\n".into())
        });
        assert_eq!(
            mode,
            CgroupMode::Hybrid {
                path: "/sys/fs/cgroup/unified".into(),
                controllers: vec!["hugetlb".into()]
            }
        );
        let e = runtime_verdict(Path::new("/usr/bin/crun"), "crun version 1.8.1", &mode)
            .unwrap_err()
            .to_string();
        assert!(e.contains("hybrid") && e.contains("hugetlb"), "{e}");
        assert!(runtime_verdict(Path::new("/usr/sbin/runc"), "runc version 1.1.5", &mode).is_ok());
        // A wrapper that is crun underneath is recognised by its version line.
        assert!(runtime_verdict(Path::new("/opt/wrap"), "crun version 1.8", &mode).is_err());
    }

    fn env(accel: &str, reason: &str) -> serde_json::Value {
        serde_json::json!({
            "config": {"hypervisor": {"path": "/usr/bin/qemu-system-x86_64"}},
            "kernel": "/a/vmlinux", "initramfs": "/a/initramfs.cpio", "kernelKind": "moat",
            "accel": {"accel": accel, "reason": reason},
        })
    }

    #[test]
    fn vm_handler_says_why_it_cannot_run_pods() {
        let all = |_: &Path| true;
        let f = vm_handler_verdict("kata", &env("tcg", "KVM unusable (no /dev/kvm)"), all);
        assert!(f.ok, "{f:?}");
        assert!(
            f.detail.contains("TCG") && f.detail.contains("no /dev/kvm"),
            "{f:?}"
        );
        assert!(f.detail.contains("moat kernel /a/vmlinux"), "{f:?}");
        let f = vm_handler_verdict("kata", &env("kvm", "a guest booted"), all);
        assert!(f.ok && f.detail.contains("KVM (a guest booted)"), "{f:?}");

        let no_qemu = |p: &Path| !p.ends_with("qemu-system-x86_64");
        let f = vm_handler_verdict("kata", &env("tcg", ""), no_qemu);
        assert!(!f.ok && f.detail.contains("no QEMU at"), "{f:?}");
        let no_assets = |p: &Path| !p.starts_with("/a");
        let f = vm_handler_verdict("kata", &env("tcg", ""), no_assets);
        assert!(
            !f.ok
                && f.detail.contains("/a/vmlinux, /a/initramfs.cpio missing")
                && f.detail.contains("guest-assets.sh"),
            "{f:?}"
        );
        let f = vm_handler_verdict("kata", &serde_json::json!({}), all);
        assert!(!f.ok, "{f:?}");
    }

    #[test]
    fn unified_and_empty_hybrid_are_fine_for_crun() {
        let v2 = "31 24 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup_mode(v2, |_| None), CgroupMode::Unified);
        let empty = cgroup_mode(HYBRID, |_| Some(String::new()));
        assert!(runtime_verdict(Path::new("/usr/bin/crun"), "crun", &empty).is_ok());
        assert!(runtime_verdict(Path::new("/usr/bin/crun"), "crun", &CgroupMode::Unified).is_ok());
    }
}

//! How big a sandbox VM is (sans-IO), as Kata's static sandbox sizing: the configured
//! defaults plus what the pod's containers may use.
//!
//! What the pod may use comes from the CRI sandbox annotations when the bundle carries them
//! (containerd ≥ 1.6.7 and moat's node agent write the sum of the pod's container limits as
//! `io.kubernetes.cri.sandbox-cpu-quota`/`-cpu-period`/`-memory`), otherwise from the booting
//! container's own `linux.resources` (podman, `ctr run`: one container per sandbox). vCPUs
//! add `ceil(quota / period)`, memory adds the limit rounded up to MiB. The guest's
//! per-container cgroups still enforce each container's own limits inside.

use oci_spec::runtime::Spec;
use std::collections::HashMap;

pub const SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
pub const SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
pub const SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";

const MIB: u64 = 1 << 20;

/// What the host can give one VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    /// vCPUs one VM may have: the guest kernel's NR_CPUS and the configured maximum.
    /// Host CPUs may be overcommitted (vCPUs are threads, like a pod's processes).
    pub max_vcpus: u32,
    /// The host's memory (MemTotal): a VM larger than that cannot be backed.
    pub memory_mib: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub vcpus: u32,
    pub memory_mib: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizeError {
    #[error(
        "the pod's CPU limits need a VM with {want} vCPUs ({default} default + {extra} for the limits), more than the {max} a sandbox VM may have"
    )]
    TooManyVcpus {
        want: u64,
        default: u32,
        extra: u64,
        max: u32,
    },
    #[error(
        "the pod's memory limits need a VM with {want} MiB ({default} MiB default + {extra} MiB for the limits), more than this host's {host} MiB"
    )]
    TooMuchMemory {
        want: u64,
        default: u32,
        extra: u64,
        host: u64,
    },
    #[error("annotation {0} is not a number: {1:?}")]
    BadAnnotation(&'static str, String),
}

/// What the workload may use: (CPU quota, CPU period) in µs and memory in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Workload {
    pub cpu: Option<(i64, u64)>,
    pub memory: Option<i64>,
}

fn number<T: std::str::FromStr>(
    a: &HashMap<String, String>,
    key: &'static str,
) -> Result<Option<T>, SizeError> {
    match a.get(key) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| SizeError::BadAnnotation(key, v.clone())),
    }
}

/// The workload the sandbox is sized for (see the module doc for where it comes from).
pub fn workload(spec: &Spec) -> Result<Workload, SizeError> {
    let empty = HashMap::new();
    let a = spec.annotations().as_ref().unwrap_or(&empty);
    let quota: Option<i64> = number(a, SANDBOX_CPU_QUOTA)?;
    let period: Option<u64> = number(a, SANDBOX_CPU_PERIOD)?;
    let memory: Option<i64> = number(a, SANDBOX_MEMORY)?;
    if quota.is_some() || memory.is_some() {
        return Ok(Workload {
            cpu: quota.map(|q| (q, period.unwrap_or(100_000))),
            memory,
        });
    }
    let r = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    let cpu = r.and_then(|r| r.cpu().as_ref()).and_then(|c| {
        c.quota()
            .map(|q| (q, c.period().filter(|p| *p > 0).unwrap_or(100_000)))
    });
    let memory = r.and_then(|r| r.memory().as_ref()).and_then(|m| m.limit());
    Ok(Workload { cpu, memory })
}

/// The VM for `w`: defaults plus the limits, within what the host can give.
pub fn size(
    default_vcpus: u32,
    default_memory_mib: u32,
    w: &Workload,
    host: &HostLimits,
) -> Result<Size, SizeError> {
    // A quota of -1 (or 0) means "no limit": nothing to add.
    let extra_cpu = match w.cpu {
        Some((q, p)) if q > 0 && p > 0 => (q as u64).div_ceil(p),
        _ => 0,
    };
    let extra_mem = match w.memory {
        Some(m) if m > 0 => (m as u64).div_ceil(MIB),
        _ => 0,
    };
    let vcpus = default_vcpus as u64 + extra_cpu;
    if vcpus > host.max_vcpus as u64 {
        return Err(SizeError::TooManyVcpus {
            want: vcpus,
            default: default_vcpus,
            extra: extra_cpu,
            max: host.max_vcpus,
        });
    }
    let memory = default_memory_mib as u64 + extra_mem;
    if memory > host.memory_mib || memory > u32::MAX as u64 {
        return Err(SizeError::TooMuchMemory {
            want: memory,
            default: default_memory_mib,
            extra: extra_mem,
            host: host.memory_mib,
        });
    }
    Ok(Size {
        vcpus: vcpus as u32,
        memory_mib: memory as u32,
    })
}

/// MemTotal from /proc/meminfo, in MiB.
pub fn mem_total_mib(meminfo: &str) -> Option<u64> {
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: HostLimits = HostLimits {
        max_vcpus: 64,
        memory_mib: 24_000,
    };

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn limits_add_to_the_defaults() {
        // limits: {cpu: 2, memory: 1Gi} as the agent writes them.
        let s = spec(
            serde_json::json!({"ociVersion": "1.0.2", "linux": {"resources": {
            "cpu": {"quota": 200000, "period": 100000}, "memory": {"limit": 1073741824u64}}}}),
        );
        let w = workload(&s).unwrap();
        assert_eq!(
            size(1, 256, &w, &HOST).unwrap(),
            Size {
                vcpus: 3,
                memory_mib: 1280
            }
        );
        // 500m rounds up to a whole vCPU; a byte over a MiB to a whole MiB.
        let w = Workload {
            cpu: Some((50_000, 100_000)),
            memory: Some((64 << 20) + 1),
        };
        assert_eq!(
            size(1, 256, &w, &HOST).unwrap(),
            Size {
                vcpus: 2,
                memory_mib: 321
            }
        );
    }

    #[test]
    fn no_limits_give_the_defaults() {
        let s = spec(serde_json::json!({"ociVersion": "1.0.2"}));
        let w = workload(&s).unwrap();
        assert_eq!(w, Workload::default());
        assert_eq!(
            size(1, 256, &w, &HOST).unwrap(),
            Size {
                vcpus: 1,
                memory_mib: 256
            }
        );
        let unlimited = Workload {
            cpu: Some((-1, 100_000)),
            memory: Some(-1),
        };
        assert_eq!(size(2, 512, &unlimited, &HOST).unwrap().vcpus, 2);
    }

    #[test]
    fn sandbox_annotations_win_over_the_containers_own_limits() {
        let s = spec(serde_json::json!({"ociVersion": "1.0.2",
            "annotations": {SANDBOX_CPU_QUOTA: "300000", SANDBOX_CPU_PERIOD: "100000",
                            SANDBOX_MEMORY: "536870912"},
            "linux": {"resources": {"cpu": {"quota": 100000, "period": 100000}}}}));
        let w = workload(&s).unwrap();
        assert_eq!(
            size(1, 256, &w, &HOST).unwrap(),
            Size {
                vcpus: 4,
                memory_mib: 768
            }
        );
        let bad = spec(serde_json::json!({"ociVersion": "1.0.2",
            "annotations": {SANDBOX_MEMORY: "lots"}}));
        assert_eq!(
            workload(&bad).unwrap_err(),
            SizeError::BadAnnotation(SANDBOX_MEMORY, "lots".into())
        );
    }

    #[test]
    fn impossible_sizes_are_clear_errors() {
        let w = Workload {
            cpu: Some((100 * 100_000, 100_000)),
            memory: None,
        };
        let e = size(1, 256, &w, &HOST).unwrap_err().to_string();
        assert!(e.contains("101 vCPUs") && e.contains("64"), "{e}");
        let w = Workload {
            cpu: None,
            memory: Some(100 << 30),
        };
        let e = size(1, 256, &w, &HOST).unwrap_err().to_string();
        assert!(e.contains("102656 MiB") && e.contains("24000 MiB"), "{e}");
    }

    #[test]
    fn mem_total_from_meminfo() {
        assert_eq!(
            mem_total_mib("MemTotal:       24684304 kB\nMemFree: 1 kB\n"),
            Some(24105)
        );
        assert_eq!(mem_total_mib("MemFree: 1 kB\n"), None);
    }
}

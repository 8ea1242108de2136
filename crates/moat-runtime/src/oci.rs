//! From an OCI bundle to what the guest agent needs (sans-IO): the container spec, the host
//! paths to expose in the sandbox's shared directory, and the sandbox the container belongs
//! to (CRI annotations).

use moat_vm_proto::{Capabilities, ContainerSpec, MountSpec, ProcessSpec, Rlimit, Stdio};
use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// CRI-O spells them differently.
const CRIO_CONTAINER_TYPE: &str = "io.kubernetes.cri-o.ContainerType";
const CRIO_SANDBOX_ID: &str = "io.kubernetes.cri-o.SandboxID";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OciError {
    #[error("config.json has no process")]
    NoProcess,
    #[error("config.json has no process.args")]
    NoArgs,
    #[error("config.json has no root.path")]
    NoRoot,
    #[error(
        "the container shares the host's network namespace (hostNetwork); a VM sandbox has its own kernel and network stack, so moat-runtime cannot run it: use runc for hostNetwork pods"
    )]
    HostNetwork,
    #[error("annotation {CONTAINER_TYPE}=container needs {SANDBOX_ID}")]
    NoSandboxId,
    #[error("mount destination {0:?} is not absolute")]
    RelativeMount(String),
}

/// A host path bind-mounted into the shared directory at `rel` before the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub host: PathBuf,
    pub rel: String,
    /// Exported through the writable share (a bind mount without `ro`).
    pub writable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub spec: ContainerSpec,
    pub shares: Vec<Share>,
    /// The network namespace the sandbox's NIC should be wired into (CNI's netns).
    pub netns: Option<PathBuf>,
}

/// Which VM the container runs in: its own (a sandbox) or an existing pod's.
pub fn sandbox_id(id: &str, annotations: &HashMap<String, String>) -> Result<String, OciError> {
    let ty = annotations
        .get(CONTAINER_TYPE)
        .or_else(|| annotations.get(CRIO_CONTAINER_TYPE));
    if ty.map(String::as_str) == Some("container") {
        annotations
            .get(SANDBOX_ID)
            .or_else(|| annotations.get(CRIO_SANDBOX_ID))
            .cloned()
            .ok_or(OciError::NoSandboxId)
    } else {
        Ok(id.to_string())
    }
}

fn cap_names<T: serde::Serialize>(set: &Option<T>) -> Vec<String> {
    let mut v: Vec<String> = match set.as_ref().map(serde_json::to_value) {
        Some(Ok(serde_json::Value::Array(a))) => a
            .into_iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    v.sort();
    v
}

pub fn process(p: &Process, stdio: Stdio) -> Result<ProcessSpec, OciError> {
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(OciError::NoArgs);
    }
    let capabilities = p.capabilities().as_ref().map(|c| Capabilities {
        bounding: cap_names(c.bounding()),
        effective: cap_names(c.effective()),
        permitted: cap_names(c.permitted()),
        inheritable: cap_names(c.inheritable()),
        ambient: cap_names(c.ambient()),
    });
    let rlimits = p
        .rlimits()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| {
            let kind = serde_json::to_value(r.typ()).ok()?.as_str()?.to_string();
            Some(Rlimit {
                kind,
                soft: r.soft(),
                hard: r.hard(),
            })
        })
        .collect();
    Ok(ProcessSpec {
        args,
        env: p.env().clone().unwrap_or_default(),
        cwd: p.cwd().to_string_lossy().into_owned(),
        uid: p.user().uid(),
        gid: p.user().gid(),
        additional_gids: p.user().additional_gids().clone().unwrap_or_default(),
        terminal: p.terminal().unwrap_or(false),
        capabilities,
        rlimits,
        no_new_privileges: p.no_new_privileges().unwrap_or(false),
        stdio,
    })
}

/// The network namespace path named by the config; `Err(HostNetwork)` if it has none at all.
pub fn netns(spec: &Spec) -> Result<Option<PathBuf>, OciError> {
    let ns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    match ns.iter().find(|n| n.typ() == LinuxNamespaceType::Network) {
        None => Err(OciError::HostNetwork),
        Some(n) => Ok(n.path().clone()),
    }
}

/// The limits of `linux.resources` the guest applies (cgroup v2 names; non-positive values
/// mean unlimited, as runc reads them).
fn resources(r: &oci_spec::runtime::LinuxResources) -> moat_vm_proto::Resources {
    let positive = |v: Option<i64>| v.filter(|v| *v > 0);
    let cpu = r.cpu().as_ref();
    moat_vm_proto::Resources {
        memory_max: positive(r.memory().as_ref().and_then(|m| m.limit())),
        pids_max: positive(r.pids().as_ref().map(|p| p.limit())),
        cpu_quota: positive(cpu.and_then(|c| c.quota())),
        cpu_period: cpu.and_then(|c| c.period()).filter(|p| *p > 0),
        // cgroup v1 shares (2–262144) onto v2 weight (1–10000), the mapping runc and crun use.
        cpu_weight: cpu
            .and_then(|c| c.shares())
            .filter(|s| *s > 0)
            .map(|s| 1 + (s.clamp(2, 262_144) - 2) * 9999 / 262_142),
    }
}

pub fn plan(id: &str, bundle: &Path, spec: &Spec, stdio: Stdio) -> Result<Plan, OciError> {
    let netns = netns(spec)?;
    let p = spec.process().as_ref().ok_or(OciError::NoProcess)?;
    let process = process(p, stdio)?;
    let root = spec.root().as_ref().ok_or(OciError::NoRoot)?;
    let rootfs_host = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    let rootfs_rel = format!("{id}/rootfs");
    // The rootfs is always read-only from the host: the guest overlays a tmpfs on it.
    let mut shares = vec![Share {
        host: rootfs_host,
        rel: rootfs_rel.clone(),
        writable: false,
    }];
    let mut mounts = Vec::new();
    for (n, m) in spec.mounts().clone().unwrap_or_default().iter().enumerate() {
        let dest = m.destination().to_string_lossy().into_owned();
        if !dest.starts_with('/') {
            return Err(OciError::RelativeMount(dest));
        }
        let options = m.options().clone().unwrap_or_default();
        let kind = m.typ().clone().unwrap_or_else(|| "bind".into());
        let is_bind = kind == "bind" || options.iter().any(|o| o == "bind" || o == "rbind");
        let writable = is_bind && !options.iter().any(|o| o == "ro");
        let source = if is_bind {
            let Some(src) = m.source().clone() else {
                continue;
            };
            let src = if src.is_absolute() {
                src
            } else {
                bundle.join(src)
            };
            let rel = format!("{id}/mounts/{n}");
            shares.push(Share {
                host: src,
                rel: rel.clone(),
                writable,
            });
            rel
        } else {
            m.source()
                .as_ref()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        mounts.push(MountSpec {
            destination: dest,
            kind: if is_bind { "bind".into() } else { kind },
            source,
            options,
            writable,
        });
    }
    let linux = spec.linux().as_ref();
    let mut sysctl: Vec<(String, String)> = linux
        .and_then(|l| l.sysctl().clone())
        .unwrap_or_default()
        .into_iter()
        .collect();
    sysctl.sort();
    let resources = linux
        .and_then(|l| l.resources().as_ref())
        .map(resources)
        .unwrap_or_default();
    Ok(Plan {
        spec: ContainerSpec {
            id: id.to_string(),
            rootfs: rootfs_rel,
            readonly_rootfs: root.readonly().unwrap_or(false),
            hostname: spec.hostname().clone(),
            process,
            mounts,
            masked_paths: linux
                .and_then(|l| l.masked_paths().clone())
                .unwrap_or_default(),
            readonly_paths: linux
                .and_then(|l| l.readonly_paths().clone())
                .unwrap_or_default(),
            sysctl,
            resources,
        },
        shares,
        netns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn resources_map_to_cgroup2_limits_and_unlimited_is_absent() {
        let r: oci_spec::runtime::LinuxResources = serde_json::from_value(serde_json::json!({
            "memory": {"limit": 1048576}, "pids": {"limit": 0},
            "cpu": {"quota": -1, "period": 100000, "shares": 1024}
        }))
        .unwrap();
        let got = resources(&r);
        assert_eq!(got.memory_max, Some(1 << 20));
        assert_eq!(got.pids_max, None, "0 is unlimited");
        assert_eq!(got.cpu_quota, None, "-1 is unlimited");
        assert_eq!(got.cpu_period, Some(100_000));
        assert_eq!(
            got.cpu_weight,
            Some(39),
            "runc maps 1024 shares to weight 39"
        );
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs", "readonly": true},
            "hostname": "c1",
            "process": {
                "args": ["sh", "-c", "exit 7"],
                "env": ["PATH=/bin"],
                "cwd": "/",
                "user": {"uid": 0, "gid": 0},
                "capabilities": {"bounding": ["CAP_KILL", "CAP_CHOWN"]},
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
            },
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "/var/x/hosts", "options": ["rbind", "ro"]}
            ],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network", "path": "/var/run/netns/p"}],
                      "maskedPaths": ["/proc/kcore"]}
        })
    }

    #[test]
    fn bundle_becomes_guest_spec_and_shares() {
        let p = plan("c1", Path::new("/b"), &spec(base()), Stdio::default()).unwrap();
        assert_eq!(p.netns.as_deref(), Some(Path::new("/var/run/netns/p")));
        assert_eq!(p.spec.rootfs, "c1/rootfs");
        assert!(p.spec.readonly_rootfs);
        assert_eq!(p.shares[0].host, Path::new("/b/rootfs"));
        assert_eq!(p.shares[1].host, Path::new("/var/x/hosts"));
        assert_eq!(p.spec.mounts[1].source, "c1/mounts/1");
        assert_eq!(p.spec.mounts[1].kind, "bind");
        assert_eq!(p.spec.mounts[0].kind, "proc");
        assert_eq!(
            p.spec.process.capabilities.unwrap().bounding,
            ["CAP_CHOWN", "CAP_KILL"]
        );
        assert_eq!(p.spec.process.rlimits[0].kind, "RLIMIT_NOFILE");
        assert_eq!(p.spec.masked_paths, ["/proc/kcore"]);
    }

    #[test]
    fn host_network_is_refused_clearly() {
        let mut j = base();
        j["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}]);
        let e = plan("c1", Path::new("/b"), &spec(j), Stdio::default()).unwrap_err();
        assert_eq!(e, OciError::HostNetwork);
        assert!(e.to_string().contains("hostNetwork"));
    }

    #[test]
    fn cri_annotations_choose_the_sandbox() {
        let mut a = HashMap::new();
        assert_eq!(sandbox_id("p", &a).unwrap(), "p");
        a.insert(CONTAINER_TYPE.to_string(), "sandbox".to_string());
        assert_eq!(sandbox_id("p", &a).unwrap(), "p");
        a.insert(CONTAINER_TYPE.to_string(), "container".to_string());
        assert_eq!(sandbox_id("c", &a), Err(OciError::NoSandboxId));
        a.insert(SANDBOX_ID.to_string(), "p".to_string());
        assert_eq!(sandbox_id("c", &a).unwrap(), "p");
    }

    #[test]
    fn missing_args_is_an_error() {
        let mut j = base();
        j["process"]["args"] = serde_json::json!([]);
        assert_eq!(
            plan("c1", Path::new("/b"), &spec(j), Stdio::default()).unwrap_err(),
            OciError::NoArgs
        );
    }
}

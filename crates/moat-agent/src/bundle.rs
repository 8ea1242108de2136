//! OCI bundle generation (sans-IO): a pod's container + its image config + the sandbox become
//! an `oci_spec` runtime [`Spec`]. Defaults follow containerd's CRI plugin: its capability set,
//! masked and read-only paths, `/dev/shm`, `/dev/mqueue`, and the pod's network namespace.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, PodSpec};
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespace,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, Mount, MountBuilder,
    ProcessBuilder, RootBuilder, Spec, UserBuilder,
};
use serde::Deserialize;

use moat_api::quantity;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("container {container}: {what}")]
    Invalid { container: String, what: String },
    #[error("building the OCI spec for container {container}")]
    Oci {
        container: String,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("parsing the image config")]
    ImageConfig(#[source] serde_json::Error),
    #[error("container {container}")]
    User {
        container: String,
        #[source]
        source: UserError,
    },
}

/// A `user[:group]` name the image's files do not define (containerd's wording).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("unable to find user {0}: no matching entries in passwd file")]
    User(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    Group(String),
}

/// The parts of an image's config (`config` object of the config blob) a container inherits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageDefaults {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    /// The image's `/etc/passwd` and `/etc/group` (read by the agent from the prepared
    /// rootfs), for named users and their groups.
    #[serde(skip)]
    pub etc_passwd: Option<String>,
    #[serde(skip)]
    pub etc_group: Option<String>,
}

/// (name, uid, gid) of each well-formed `/etc/passwd` line.
fn passwd_entries(text: &str) -> impl Iterator<Item = (&str, u32, u32)> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        Some((
            *f.first()?,
            f.get(2)?.parse().ok()?,
            f.get(3)?.parse().ok()?,
        ))
    })
}

/// (name, gid, members) of each well-formed `/etc/group` line.
fn group_entries(text: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        let members = f
            .get(3)
            .map(|m| m.split(',').filter(|m| !m.is_empty()).collect())
            .unwrap_or_default();
        Some((*f.first()?, f.get(2)?.parse().ok()?, members))
    })
}

/// containerd's `WithUser` for `user[:group]` (names or ids) against the image's
/// `/etc/passwd` and `/etc/group`: (uid, gid). A uid without a group takes its passwd
/// entry's group, or 0 when it has none; names must exist.
pub fn resolve_user(
    userstr: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<(u32, u32), UserError> {
    let (u, g) = match userstr.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (userstr, None),
    };
    let users = || passwd_entries(passwd.unwrap_or(""));
    let (uid, primary) = match u.parse::<u32>() {
        Ok(uid) => (uid, users().find(|e| e.1 == uid).map_or(0, |e| e.2)),
        Err(_) => users()
            .find(|e| e.0 == u)
            .map(|e| (e.1, e.2))
            .ok_or_else(|| UserError::User(u.to_string()))?,
    };
    let gid = match g {
        None | Some("") => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group.unwrap_or(""))
                .find(|e| e.0 == g)
                .map(|e| e.1)
                .ok_or_else(|| UserError::Group(g.to_string()))?,
        },
    };
    Ok((uid, gid))
}

/// containerd CRI's additional gids for user `u` (a name or uid): the groups of
/// `/etc/group` listing the user as a member (not its own group by name).
pub fn member_gids(u: &str, passwd: Option<&str>, group: Option<&str>) -> Vec<u32> {
    let name = match u.parse::<u32>() {
        Ok(uid) => match passwd_entries(passwd.unwrap_or("")).find(|e| e.1 == uid) {
            Some(e) => e.0,
            None => return Vec::new(),
        },
        Err(_) => u,
    };
    group_entries(group.unwrap_or(""))
        .filter(|e| e.0 != name && e.2.contains(&name))
        .map(|e| e.1)
        .collect()
}

impl ImageDefaults {
    pub fn from_config_blob(bytes: &[u8]) -> Result<ImageDefaults, BundleError> {
        #[derive(Deserialize)]
        struct Blob {
            #[serde(default)]
            config: Option<ImageDefaults>,
        }
        let b: Blob = serde_json::from_slice(bytes).map_err(BundleError::ImageConfig)?;
        Ok(b.config.unwrap_or_default())
    }
}

/// Everything about the sandbox a container joins.
#[derive(Debug, Clone)]
pub struct SandboxRef {
    /// The pod's IPC and UTS namespaces to join and its /dev/shm (`None`: new ones per
    /// container; the pod's `hostIPC` / `hostNetwork` mean the host's instead).
    pub ipc_ns: Option<PathBuf>,
    pub uts_ns: Option<PathBuf>,
    pub shm: Option<PathBuf>,
    pub hostname: String,
    pub netns: PathBuf,
    /// Bind-mounted over the container's /etc/hosts, /etc/resolv.conf, /etc/hostname.
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
    pub hostname_file: PathBuf,
    /// Volume name → host directory (emptyDir dirs under the pod dir, hostPath paths).
    pub volumes: Vec<(String, PathBuf)>,
    /// The pod's uid: handed to the runtime as CRI's sandbox id, so a VM runtime puts all the
    /// pod's containers in one VM (runc ignores it).
    pub sandbox_id: String,
}

/// Kubernetes' rule: `command` replaces the entrypoint (and drops the image's Cmd), `args`
/// replaces Cmd.
pub fn argv(c: &Container, img: &ImageDefaults) -> Result<Vec<String>, BundleError> {
    let (ep, cmd) = match (&c.command, &c.args) {
        (Some(command), Some(args)) => (command.clone(), args.clone()),
        (Some(command), None) => (command.clone(), Vec::new()),
        (None, Some(args)) => (img.entrypoint.clone().unwrap_or_default(), args.clone()),
        (None, None) => (
            img.entrypoint.clone().unwrap_or_default(),
            img.cmd.clone().unwrap_or_default(),
        ),
    };
    let v: Vec<String> = ep.into_iter().chain(cmd).collect();
    if v.is_empty() {
        return Err(BundleError::Invalid {
            container: c.name.clone(),
            what: "no command: neither the pod nor the image gives one".into(),
        });
    }
    Ok(v)
}

/// Image env, then the container's `env` (later wins by name), taken literally: the agent
/// hands in a container whose `env` [`crate::envvars::resolve`] has already resolved
/// (`envFrom`, `valueFrom`, `$(VAR)`); an unresolved `valueFrom` is left out.
pub fn env(c: &Container, img: &ImageDefaults) -> Vec<String> {
    fn set(out: &mut Vec<(String, String)>, k: &str, v: &str) {
        if let Some(e) = out.iter_mut().find(|(n, _)| n == k) {
            e.1 = v.to_string();
        } else {
            out.push((k.to_string(), v.to_string()));
        }
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for kv in img.env.iter().flatten() {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        set(&mut out, k, v);
    }
    if !out.iter().any(|(k, _)| k == "PATH") {
        set(
            &mut out,
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    for e in c.env.iter().flatten() {
        if e.value_from.is_none() {
            set(&mut out, &e.name, e.value.as_deref().unwrap_or(""));
        }
    }
    out.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// containerd's default capability set for unprivileged containers.
const DEFAULT_CAPS: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

fn bind(dest: &str, src: &Path, ro: bool) -> Result<Mount, oci_spec::OciSpecError> {
    let mut opts = vec!["rbind".to_string(), "rprivate".to_string()];
    if ro {
        opts.push("ro".into());
    }
    MountBuilder::default()
        .destination(dest)
        .typ("bind")
        .source(src)
        .options(opts)
        .build()
}

fn ns(typ: LinuxNamespaceType, path: Option<&Path>) -> Result<LinuxNamespace, BundleError> {
    let b = LinuxNamespaceBuilder::default().typ(typ);
    let b = match path {
        Some(p) => b.path(p),
        None => b,
    };
    b.build().map_err(|source| BundleError::Oci {
        container: String::new(),
        source,
    })
}

/// The runtime spec for one container of a pod.
pub fn spec(
    pod: &PodSpec,
    c: &Container,
    img: &ImageDefaults,
    sb: &SandboxRef,
    cgroups_path: &str,
) -> Result<Spec, BundleError> {
    let name = c.name.clone();
    let oci = |source| BundleError::Oci {
        container: name.clone(),
        source,
    };
    let invalid = |what: String| BundleError::Invalid {
        container: name.clone(),
        what,
    };
    let pod_sc = pod.security_context.as_ref();
    let sc = c.security_context.as_ref();
    let privileged = sc.and_then(|s| s.privileged).unwrap_or(false);
    let run_as_user = sc
        .and_then(|s| s.run_as_user)
        .or(pod_sc.and_then(|s| s.run_as_user));
    let run_as_group = sc
        .and_then(|s| s.run_as_group)
        .or(pod_sc.and_then(|s| s.run_as_group));
    let to_u32 = |v: i64, what: &str| {
        u32::try_from(v).map_err(|_| invalid(format!("{what} {v} out of range")))
    };
    // containerd CRI: runAsUser[:runAsGroup] when given, else the image's User.
    let image_user = img.user.clone().filter(|u| !u.is_empty());
    let userstr = match (run_as_user, run_as_group) {
        (Some(u), Some(g)) => Some(format!(
            "{}:{}",
            to_u32(u, "runAsUser")?,
            to_u32(g, "runAsGroup")?
        )),
        (Some(u), None) => Some(to_u32(u, "runAsUser")?.to_string()),
        (None, Some(g)) => Some(format!("0:{}", to_u32(g, "runAsGroup")?)),
        (None, None) => image_user.clone(),
    };
    let (passwd, group) = (img.etc_passwd.as_deref(), img.etc_group.as_deref());
    let (uid, gid) = match &userstr {
        Some(u) => resolve_user(u, passwd, group).map_err(|source| BundleError::User {
            container: name.clone(),
            source,
        })?,
        None => (0, 0),
    };
    let member_of = match (run_as_user, &image_user) {
        (Some(u), _) => u.to_string(),
        (None, Some(iu)) => iu.split(':').next().unwrap_or("0").to_string(),
        (None, None) => "0".into(),
    };
    let mut additional = vec![gid];
    additional.extend(member_gids(&member_of, passwd, group));
    if let Some(g) = pod_sc.and_then(|s| s.fs_group) {
        additional.push(to_u32(g, "fsGroup")?);
    }
    for g in pod_sc
        .and_then(|s| s.supplemental_groups.as_ref())
        .into_iter()
        .flatten()
    {
        additional.push(to_u32(*g, "supplementalGroups")?);
    }
    additional.sort_unstable();
    additional.dedup();
    let user = UserBuilder::default()
        .uid(uid)
        .gid(gid)
        .additional_gids(additional)
        .build()
        .map_err(oci)?;

    let mut caps = oci_spec::runtime::LinuxCapabilities::default();
    let set: std::collections::HashSet<Capability> = if privileged {
        all_caps()
    } else {
        let mut s: std::collections::HashSet<Capability> = DEFAULT_CAPS.iter().copied().collect();
        if let Some(c) = sc.and_then(|s| s.capabilities.as_ref()) {
            for a in c.add.iter().flatten() {
                s.insert(parse_cap(a).ok_or_else(|| invalid(format!("capability {a:?}")))?);
            }
            for d in c.drop.iter().flatten() {
                if d.eq_ignore_ascii_case("ALL") {
                    s.clear();
                } else if let Some(cap) = parse_cap(d) {
                    s.remove(&cap);
                }
            }
        }
        s
    };
    caps.set_bounding(Some(set.clone()));
    caps.set_effective(Some(set.clone()));
    caps.set_permitted(Some(set));
    caps.set_inheritable(None);
    caps.set_ambient(None);

    let cwd = c
        .working_dir
        .clone()
        .or_else(|| img.working_dir.clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    let no_new_privs = !privileged
        && sc
            .and_then(|s| s.allow_privilege_escalation)
            .is_none_or(|a| !a);
    let process = ProcessBuilder::default()
        .terminal(c.tty.unwrap_or(false))
        .user(user)
        .args(argv(c, img)?)
        .env(env(c, img))
        .cwd(cwd)
        .capabilities(caps)
        .no_new_privileges(no_new_privs)
        .build()
        .map_err(oci)?;

    let ro_root = sc
        .and_then(|s| s.read_only_root_filesystem)
        .unwrap_or(false);
    let root = RootBuilder::default()
        .path("rootfs")
        .readonly(ro_root)
        .build()
        .map_err(oci)?;

    let mut mounts = oci_spec::runtime::get_default_mounts();
    // containerd mounts sysfs read-only unless privileged, and gives /dev/shm 64 MiB.
    for m in mounts.iter_mut() {
        if m.destination() == Path::new("/sys") && privileged {
            m.set_options(Some(vec!["nosuid".into(), "noexec".into(), "nodev".into()]));
        }
        if m.destination() == Path::new("/dev/shm") {
            m.set_options(Some(vec![
                "nosuid".into(),
                "noexec".into(),
                "nodev".into(),
                "mode=1777".into(),
                "size=65536k".into(),
            ]));
        }
    }
    // The pod's /dev/shm (the host's with hostIPC) instead of one per container.
    let host_ipc = pod.host_ipc.unwrap_or(false);
    let shared_shm = if host_ipc {
        Some(Path::new("/dev/shm"))
    } else {
        sb.shm.as_deref()
    };
    if let Some(shm) = shared_shm {
        mounts.retain(|m| m.destination() != Path::new("/dev/shm"));
        mounts.push(bind("/dev/shm", shm, false).map_err(oci)?);
    }
    mounts.push(bind("/etc/hosts", &sb.hosts, false).map_err(oci)?);
    mounts.push(bind("/etc/resolv.conf", &sb.resolv_conf, false).map_err(oci)?);
    mounts.push(bind("/etc/hostname", &sb.hostname_file, false).map_err(oci)?);
    for vm in c.volume_mounts.iter().flatten() {
        let src = sb
            .volumes
            .iter()
            .find(|(n, _)| *n == vm.name)
            .map(|(_, p)| p)
            .ok_or_else(|| invalid(format!("volumeMount {:?} has no usable volume", vm.name)))?;
        if !vm.mount_path.starts_with('/') {
            return Err(invalid(format!(
                "mountPath {:?} is not absolute",
                vm.mount_path
            )));
        }
        let src = match vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sp) if sp.split('/').any(|c| c == "..") || sp.starts_with('/') => {
                return Err(invalid(format!("subPath {sp:?} escapes the volume")));
            }
            Some(sp) => src.join(sp),
            None => src.clone(),
        };
        mounts.push(bind(&vm.mount_path, &src, vm.read_only.unwrap_or(false)).map_err(oci)?);
    }

    let mut resources = LinuxResourcesBuilder::default();
    let limits = c.resources.as_ref().and_then(|r| r.limits.as_ref());
    let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
    let q = |m: Option<
        &std::collections::BTreeMap<
            String,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        >,
    >,
             k: &str| { m.and_then(|m| m.get(k)).map(|q| q.0.clone()) };
    if let Some(mem) = q(limits, "memory") {
        let b = quantity::value(&mem).map_err(|e| invalid(e.to_string()))?;
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(b)
                .build()
                .map_err(oci)?,
        );
    }
    let mut cpu = LinuxCpuBuilder::default();
    let mut any_cpu = false;
    if let Some(l) = q(limits, "cpu") {
        let m = quantity::milli_value(&l).map_err(|e| invalid(e.to_string()))?;
        // CFS quota over a 100 ms period, as the kubelet computes it (minimum 1 ms).
        cpu = cpu.quota((m * 100).max(1000)).period(100_000u64);
        any_cpu = true;
    }
    if let Some(r) = q(requests, "cpu").or(q(limits, "cpu")) {
        let m = quantity::milli_value(&r).map_err(|e| invalid(e.to_string()))?;
        cpu = cpu.shares(((m * 1024) / 1000).max(2) as u64);
        any_cpu = true;
    }
    if any_cpu {
        resources = resources.cpu(cpu.build().map_err(oci)?);
    }
    let resources = resources.build().map_err(oci)?;

    let host_network = pod.host_network.unwrap_or(false);
    let mut namespaces = vec![
        ns(LinuxNamespaceType::Pid, None)?,
        ns(LinuxNamespaceType::Mount, None)?,
    ];
    if !host_network {
        namespaces.push(ns(LinuxNamespaceType::Network, Some(&sb.netns))?);
        namespaces.push(ns(LinuxNamespaceType::Uts, sb.uts_ns.as_deref())?);
    }
    if !host_ipc {
        namespaces.push(ns(LinuxNamespaceType::Ipc, sb.ipc_ns.as_deref())?);
    }
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(cgroups_path))
        .resources(resources);
    linux = if privileged {
        linux
            .masked_paths(Vec::<String>::new())
            .readonly_paths(Vec::<String>::new())
    } else {
        linux
            .masked_paths(oci_spec::runtime::get_default_maskedpaths())
            .readonly_paths(oci_spec::runtime::get_default_readonly_paths())
    };
    let linux = linux.build().map_err(oci)?;

    let mut s = Spec::default();
    s.set_process(Some(process));
    s.set_root(Some(root));
    // A host-network pod has the host's UTS namespace, whose name is not the container's to set.
    s.set_hostname((!host_network).then(|| sb.hostname.clone()));
    s.set_mounts(Some(mounts));
    s.set_linux(Some(linux));
    // CRI's annotations (containerd's spelling): every container of the pod names the pod as
    // its sandbox, which is how a VM runtime knows which VM a container joins; the pod's
    // summed limits let it size that VM whichever container boots it.
    s.set_annotations(Some(
        crate::podsize::sandbox_annotations(pod)
            .into_iter()
            .chain([
                (
                    "io.kubernetes.cri.container-type".to_string(),
                    "container".to_string(),
                ),
                (
                    "io.kubernetes.cri.sandbox-id".to_string(),
                    sb.sandbox_id.clone(),
                ),
                (
                    "io.kubernetes.cri.container-name".to_string(),
                    c.name.clone(),
                ),
            ])
            .chain(stdin_mode(c).map(|m| (STDIN_ANNOTATION.to_string(), m.to_string())))
            .collect(),
    ));
    Ok(s)
}

/// Tells the shim to give the container a stdin that `kubectl attach -i` can write to
/// (`true`), closed after the first attach ends (`once`, the container's `stdinOnce`).
pub const STDIN_ANNOTATION: &str = "moat.io/stdin";

fn stdin_mode(c: &Container) -> Option<&'static str> {
    match (c.stdin.unwrap_or(false), c.stdin_once.unwrap_or(false)) {
        (false, _) => None,
        (true, false) => Some("true"),
        (true, true) => Some("once"),
    }
}

fn parse_cap(s: &str) -> Option<Capability> {
    let n = s.trim().to_ascii_uppercase();
    let n = n.strip_prefix("CAP_").unwrap_or(&n);
    let quoted = format!("\"CAP_{n}\"");
    serde_json::from_str(&quoted).ok()
}

fn all_caps() -> std::collections::HashSet<Capability> {
    (0..64)
        .filter_map(|i| {
            let v = serde_json::Value::from(format!("CAP_{}", cap_name(i)?));
            serde_json::from_value(v).ok()
        })
        .collect()
}

fn cap_name(i: u32) -> Option<&'static str> {
    const NAMES: &[&str] = &[
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ];
    NAMES.get(i as usize).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn container(v: serde_json::Value) -> Container {
        serde_json::from_value(v).unwrap()
    }

    fn sandbox() -> SandboxRef {
        SandboxRef {
            ipc_ns: Some("/run/p/ns-ipc".into()),
            uts_ns: Some("/run/p/ns-uts".into()),
            shm: Some("/run/p/shm".into()),
            hostname: "web-1".into(),
            netns: "/run/moat/netns/p1".into(),
            hosts: "/run/p/hosts".into(),
            resolv_conf: "/run/p/resolv.conf".into(),
            hostname_file: "/run/p/hostname".into(),
            volumes: vec![("data".into(), "/run/p/volumes/data".into())],
            sandbox_id: "uid-1".into(),
        }
    }

    fn busybox() -> ImageDefaults {
        ImageDefaults::from_config_blob(
            br#"{"config":{"Env":["PATH=/bin","A=img"],"Cmd":["sh"],"WorkingDir":"/"}}"#,
        )
        .unwrap()
    }

    #[test]
    fn command_and_args_follow_kubernetes_rules() {
        let img = ImageDefaults {
            entrypoint: Some(vec!["/ep".into()]),
            cmd: Some(vec!["c1".into()]),
            ..Default::default()
        };
        let c = |v| container(v);
        assert_eq!(argv(&c(json!({"name":"a"})), &img).unwrap(), ["/ep", "c1"]);
        assert_eq!(
            argv(&c(json!({"name":"a","args":["x"]})), &img).unwrap(),
            ["/ep", "x"]
        );
        assert_eq!(
            argv(&c(json!({"name":"a","command":["/bin/x"]})), &img).unwrap(),
            ["/bin/x"]
        );
        assert!(argv(&c(json!({"name":"a"})), &ImageDefaults::default()).is_err());
    }

    #[test]
    fn env_layers_image_then_container() {
        let c = container(
            json!({"name":"a","env":[{"name":"A","value":"pod"},{"name":"B","value":"2"}]}),
        );
        assert_eq!(env(&c, &busybox()), ["PATH=/bin", "A=pod", "B=2"]);
    }

    #[test]
    fn spec_joins_the_pod_netns_and_mounts_sandbox_files() {
        let web = json!({
            "name": "web", "image": "busybox",
            "command": ["httpd", "-f", "-p", "8080"],
            "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": true}],
            "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}},
            "securityContext": {"runAsUser": 1000, "readOnlyRootFilesystem": true}
        });
        let pod: PodSpec = serde_json::from_value(json!({"containers": [web]})).unwrap();
        let c = container(web);
        let s = spec(&pod, &c, &busybox(), &sandbox(), "/moat/p1-web-0").unwrap();
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["process"]["args"], json!(["httpd", "-f", "-p", "8080"]));
        assert_eq!(v["process"]["user"]["uid"], 1000);
        assert_eq!(v["root"], json!({"path": "rootfs", "readonly": true}));
        assert_eq!(v["hostname"], "web-1");
        let nss = v["linux"]["namespaces"].as_array().unwrap();
        assert!(nss.contains(&json!({"type": "network", "path": "/run/moat/netns/p1"})));
        assert!(nss.contains(&json!({"type": "ipc", "path": "/run/p/ns-ipc"})));
        assert!(nss.contains(&json!({"type": "uts", "path": "/run/p/ns-uts"})));
        let shm: Vec<_> = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["destination"] == "/dev/shm")
            .collect();
        assert_eq!(shm.len(), 1);
        assert_eq!(shm[0]["source"], "/run/p/shm");
        assert_eq!(v["linux"]["cgroupsPath"], "/moat/p1-web-0");
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(v["linux"]["resources"]["cpu"]["shares"], 512);
        // The pod's limits for a VM runtime's sizing (one container here).
        let a = &v["annotations"];
        assert_eq!(
            a["io.kubernetes.cri.sandbox-memory"],
            (64 << 20).to_string()
        );
        assert_eq!(a["io.kubernetes.cri.sandbox-cpu-quota"], "50000");
        assert_eq!(a["io.kubernetes.cri.sandbox-cpu-period"], "100000");
        let mounts = v["mounts"].as_array().unwrap();
        let data = mounts.iter().find(|m| m["destination"] == "/data").unwrap();
        assert_eq!(data["source"], "/run/p/volumes/data");
        assert!(data["options"].as_array().unwrap().contains(&json!("ro")));
        assert!(
            mounts
                .iter()
                .any(|m| m["destination"] == "/etc/resolv.conf")
        );
        let caps = v["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert!(caps.contains(&json!("CAP_NET_BIND_SERVICE")));
        assert!(!caps.contains(&json!("CAP_SYS_ADMIN")));
        assert!(
            v["linux"]["maskedPaths"]
                .as_array()
                .is_some_and(|m| !m.is_empty())
        );
    }

    #[test]
    fn users_and_groups_resolve_as_containerd_does() {
        let passwd = Some(
            "root:x:0:0:root:/root:/bin/sh\nbad line\nnginx:x:101:101::/:/bin/false\nnobody:x:65534:65534::/:/bin/false\n",
        );
        let group = Some("root:x:0:\nnginx:x:101:nginx\nwww:x:33:nginx,other\nlogs:x:4:nobody\n");
        assert_eq!(resolve_user("nginx", passwd, group), Ok((101, 101)));
        assert_eq!(resolve_user("nginx:www", passwd, group), Ok((101, 33)));
        assert_eq!(resolve_user("nginx:7", passwd, group), Ok((101, 7)));
        assert_eq!(resolve_user("101", passwd, group), Ok((101, 101)));
        assert_eq!(resolve_user("4242", passwd, group), Ok((4242, 0)));
        assert_eq!(resolve_user("4242:www", passwd, group), Ok((4242, 33)));
        assert_eq!(
            resolve_user("nginx", None, None).unwrap_err().to_string(),
            "unable to find user nginx: no matching entries in passwd file"
        );
        assert_eq!(
            resolve_user("nginx:nogroup", passwd, group),
            Err(UserError::Group("nogroup".into()))
        );
        assert_eq!(member_gids("nginx", passwd, group), [33]);
        assert_eq!(member_gids("101", passwd, group), [33]);
        assert_eq!(member_gids("65534", passwd, group), [4]);
        assert!(member_gids("4242", passwd, group).is_empty());

        let pod: PodSpec = serde_json::from_value(
            json!({"containers":[], "securityContext": {"supplementalGroups": [5000]}}),
        )
        .unwrap();
        let mut img = busybox();
        img.user = Some("nginx".into());
        img.etc_passwd = passwd.map(String::from);
        img.etc_group = group.map(String::from);
        let user = |c: serde_json::Value, img: &ImageDefaults| {
            let v = serde_json::to_value(spec(&pod, &container(c), img, &sandbox(), "/m").unwrap())
                .unwrap();
            v["process"]["user"].clone()
        };
        assert_eq!(
            user(json!({"name": "a", "command": ["sh"]}), &img),
            json!({"uid": 101, "gid": 101, "additionalGids": [33, 101, 5000]})
        );
        // runAsUser wins over the image's user; its group comes from passwd.
        assert_eq!(
            user(
                json!({"name": "a", "command": ["sh"], "securityContext": {"runAsUser": 65534}}),
                &img
            ),
            json!({"uid": 65534, "gid": 65534, "additionalGids": [4, 5000, 65534]})
        );
        assert_eq!(
            user(
                json!({"name": "a", "command": ["sh"], "securityContext": {"runAsGroup": 9}}),
                &img
            ),
            // (containerd takes the image's user for the member groups here)
            json!({"uid": 0, "gid": 9, "additionalGids": [9, 33, 5000]})
        );
        img.user = Some("ghost".into());
        let e = spec(
            &pod,
            &container(json!({"name": "a", "command": ["sh"]})),
            &img,
            &sandbox(),
            "/m",
        )
        .unwrap_err();
        // As the worker reports it (CreateContainerConfigError's message).
        assert_eq!(
            crate::errors::chain(&e),
            "container a: unable to find user ghost: no matching entries in passwd file"
        );
    }

    #[test]
    fn host_network_and_host_ipc_use_the_hosts_namespaces() {
        let pod: PodSpec =
            serde_json::from_value(json!({"containers":[], "hostNetwork": true, "hostIPC": true}))
                .unwrap();
        let c = container(json!({"name":"h","command":["sh"]}));
        let v =
            serde_json::to_value(spec(&pod, &c, &busybox(), &sandbox(), "/m/x").unwrap()).unwrap();
        let types: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["pid", "mount"]);
        assert!(v.get("hostname").is_none_or(|h| h.is_null()), "{v}");
        let shm = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/dev/shm")
            .unwrap()
            .clone();
        assert_eq!(shm["source"], "/dev/shm");
    }

    #[test]
    fn privileged_gets_all_caps_and_no_masks() {
        let pod: PodSpec = serde_json::from_value(json!({"containers":[]})).unwrap();
        let c =
            container(json!({"name":"p","command":["sh"],"securityContext":{"privileged":true}}));
        let v =
            serde_json::to_value(spec(&pod, &c, &busybox(), &sandbox(), "/m/x").unwrap()).unwrap();
        let caps = v["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert!(caps.contains(&json!("CAP_SYS_ADMIN")));
        assert!(
            v["linux"]["maskedPaths"]
                .as_array()
                .is_none_or(|m| m.is_empty())
        );
        assert!(
            v["linux"]["readonlyPaths"]
                .as_array()
                .is_none_or(|m| m.is_empty())
        );
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let pod: PodSpec = serde_json::from_value(json!({"containers":[]})).unwrap();
        let c = container(
            json!({"name":"w","command":["sh"],"volumeMounts":[{"name":"nope","mountPath":"/x"}]}),
        );
        let e = spec(&pod, &c, &busybox(), &sandbox(), "/m")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope"), "{e}");
        let c = container(
            json!({"name":"w","command":["sh"],"volumeMounts":[{"name":"data","mountPath":"/x","subPath":"../etc"}]}),
        );
        assert!(spec(&pod, &c, &busybox(), &sandbox(), "/m").is_err());
    }
}

//! The node's side of a pod's lifecycle: the IO that carries out [`crate::lifecycle`]'s
//! effects — sandbox (netns, CNI, IPC/UTS namespaces, /dev/shm, sandbox files, volumes),
//! container runs (image, bundle, runtime create/start), removal, teardown — over the narrow
//! traits in [`Parts`]. It decides nothing: what to do and when is the lifecycle's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Container, Pod};
use moat_cni::{Attachment, Cni, Exec, NetworkList, ResultCache};

use crate::bundle::{self, SandboxRef};
use crate::config::AgentConfig;
use crate::handlers::Handler;
use crate::hooks::{HookError, PodNetHooks};
use crate::hostinfo::HostFacts;
use crate::images::{ImageError, Images};
use crate::lifecycle::{Done, Effect, Failure, ProbeKind, RtState, StartFailure, Started};
use crate::podstate::{self, PodRecord, RecordError, safe_component};
use crate::probe::ProbeDialer;
use crate::runtime::{Runtime, Status};
use crate::sandbox::{self, NetnsOps};
use crate::volumes::{PodObjects, VolumeError};

/// The IO edges the pod lifecycle goes through.
pub struct Parts {
    pub runtime: Arc<dyn Runtime>,
    pub netns: Arc<dyn NetnsOps>,
    pub cni: Arc<dyn Exec + Send + Sync>,
    pub images: Arc<dyn Images>,
    pub hooks: Arc<dyn PodNetHooks>,
    pub host: Arc<dyn HostFacts>,
    /// How probes reach the pods (TCP and HTTP; exec probes go through the runtime).
    pub probes: Arc<dyn ProbeDialer>,
    /// ConfigMaps and Secrets pods consume (`None`: no API, e.g. in unit tests).
    pub objects: Option<Arc<dyn PodObjects>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{step} {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pod sandbox network (CNI)")]
    Cni(#[from] moat_cni::CniError),
    #[error("saving the pod record")]
    Record(#[from] RecordError),
    #[error("volume {name}")]
    Volume {
        name: String,
        #[source]
        source: VolumeError,
    },
    #[error("volume {0}: no API to read it from")]
    NoApi(String),
    #[error("network hook")]
    Hook(#[from] HookError),
}

fn io_err<'a>(
    step: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> SandboxError + 'a {
    move |source| SandboxError::Io {
        step,
        path: path.to_path_buf(),
        source,
    }
}

/// Each teardown step that failed, in order (the others went ahead).
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct TeardownError(pub Vec<String>);

pub use crate::errors::chain;

pub struct Node {
    pub cfg: AgentConfig,
    pub(crate) parts: Parts,
    network: NetworkList,
}

impl Node {
    /// `default_network` is the CNI config pods get unless the user installed one in the CNI
    /// conf dir.
    pub fn new(
        cfg: AgentConfig,
        parts: Parts,
        default_network: NetworkList,
    ) -> Result<Node, SandboxError> {
        let pods_dir = cfg.run_dir.join("pods");
        std::fs::create_dir_all(&pods_dir).map_err(io_err("creating the pods dir", &pods_dir))?;
        let default = || default_network.clone();
        let network = match cfg.cni_conf_dir.as_deref() {
            Some(d) if d.is_dir() => match NetworkList::load_dir(d) {
                Ok(n) => n,
                Err(moat_cni::CniError::NoConfig(_)) => default(),
                Err(e) => return Err(e.into()),
            },
            _ => default(),
        };
        Ok(Node {
            cfg,
            parts,
            network,
        })
    }

    /// Pod records left by earlier runs of the agent.
    pub fn records(&self) -> Vec<PodRecord> {
        podstate::records(&self.cfg.run_dir)
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        podstate::pod_dir(&self.cfg.run_dir, uid)
    }

    pub(crate) fn save(&self, rec: &PodRecord) -> Result<(), RecordError> {
        podstate::save(&self.cfg.run_dir, rec)
    }

    fn bundle_dir(&self, uid: &str, id: &str) -> PathBuf {
        self.pod_dir(uid).join("containers").join(id)
    }

    /// `<log_dir>/<ns>_<name>_<uid>/<container>/<restart>.log`
    pub fn log_path(
        &self,
        ns: &str,
        pod: &str,
        uid: &str,
        container: &str,
        restart: u32,
    ) -> PathBuf {
        crate::logs::log_path(&self.cfg.log_dir, ns, pod, uid, container, restart)
    }

    /// Carries out one effect (events and object deletion are the worker's).
    pub fn execute(&self, pod: &Pod, rec: Option<&PodRecord>, e: &Effect) -> Option<Done> {
        match (e, rec) {
            (Effect::CreateSandbox(h), _) => Some(Done::Sandbox(
                self.create_sandbox(pod, h)
                    .map(Box::new)
                    .map_err(|e| Failure(chain(&e))),
            )),
            (Effect::StartContainer(name), Some(rec)) => {
                let c = pod
                    .spec
                    .iter()
                    .flat_map(|s| {
                        s.init_containers
                            .iter()
                            .flatten()
                            .chain(s.containers.iter())
                    })
                    .find(|c| &c.name == name)?;
                Some(Done::Started {
                    name: name.clone(),
                    result: self.start_container(pod, rec, c),
                })
            }
            (Effect::StartCreated(id), Some(rec)) => {
                if let Err(e) = self.parts.runtime.start(&rec.handler(), id) {
                    tracing::warn!(error = %chain(&e), "starting a created container");
                }
                None
            }
            (Effect::Remove(id), Some(rec)) => {
                self.remove_container(rec, id);
                None
            }
            (Effect::Kill { id, signal }, Some(rec)) => {
                if let Err(e) = self.parts.runtime.kill(&rec.handler(), id, signal) {
                    tracing::debug!(error = %chain(&e), "signalling a container");
                }
                None
            }
            (
                Effect::Probe {
                    container,
                    id,
                    kind,
                },
                Some(rec),
            ) => {
                let c = pod
                    .spec
                    .iter()
                    .flat_map(|s| {
                        s.init_containers
                            .iter()
                            .flatten()
                            .chain(s.containers.iter())
                    })
                    .find(|c| &c.name == container)?;
                let p = match kind {
                    ProbeKind::Readiness => c.readiness_probe.as_ref()?,
                    ProbeKind::Liveness => c.liveness_probe.as_ref()?,
                };
                let h = rec.handler();
                let exec = |cmd: &[String]| self.parts.runtime.exec_ok(&h, id, cmd);
                let ok = crate::probe::run(p, c, rec.ip.as_deref(), &exec, &*self.parts.probes);
                Some(Done::Probed {
                    name: container.clone(),
                    kind: *kind,
                    ok,
                })
            }
            (Effect::Teardown, Some(rec)) => Some(Done::TornDown(
                self.teardown(rec).map_err(|e| Failure(chain(&e))),
            )),
            // Without a record there is nothing of the pod on the node to act on.
            (Effect::Teardown, None) => Some(Done::TornDown(Ok(()))),
            _ => None,
        }
    }

    /// The observed state of each runtime container of the record.
    pub fn observe(&self, rec: &PodRecord) -> BTreeMap<String, RtState> {
        let h = rec.handler();
        let mut out = BTreeMap::new();
        for id in rec.container_ids() {
            let st = match self
                .parts
                .runtime
                .state(&h, &id, &self.bundle_dir(&rec.uid, &id))
            {
                Ok(Some(s)) => match s.status {
                    Status::Stopped => RtState::Stopped(s.exit_code.unwrap_or(255)),
                    Status::Created => RtState::Created,
                    Status::Running | Status::Other => RtState::Running,
                },
                Ok(None) => RtState::Missing,
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "container state");
                    continue;
                }
            };
            out.insert(id, st);
        }
        out
    }

    fn attachment(rt: &PodRecord) -> Attachment {
        Attachment {
            container_id: rt.uid.clone(),
            netns: rt.netns.clone(),
            ifname: "eth0".into(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), rt.namespace.clone()),
                ("K8S_POD_NAME".into(), rt.name.clone()),
                ("K8S_POD_INFRA_CONTAINER_ID".into(), rt.uid.clone()),
                ("K8S_POD_UID".into(), rt.uid.clone()),
            ],
            capabilities: BTreeMap::new(),
        }
    }

    fn cni(&self) -> (Cni<'_>, ResultCache) {
        (
            Cni {
                exec: self.parts.cni.as_ref(),
                bin_dirs: self.cfg.cni_bin_dirs.clone(),
            },
            ResultCache {
                dir: self.cfg.run_dir.join("cni/results"),
            },
        )
    }

    /// Creates the sandbox; on failure undoes what was made (the lifecycle retries later).
    fn create_sandbox(&self, pod: &Pod, handler: &Handler) -> Result<PodRecord, SandboxError> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let res = self.make_sandbox(pod, handler);
        if res.is_err()
            && let Some(rec) = podstate::load(&self.cfg.run_dir, &uid)
            && let Err(e) = self.teardown(&rec)
        {
            tracing::warn!(error = %e, "undoing a failed sandbox");
        }
        res
    }

    fn make_sandbox(&self, pod: &Pod, handler: &Handler) -> Result<PodRecord, SandboxError> {
        let meta = &pod.metadata;
        let uid = meta.uid.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let name = meta.name.clone().unwrap_or_default();
        let host_network = spec.host_network.unwrap_or(false);
        let mut rt = PodRecord {
            uid: uid.clone(),
            namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
            name: name.clone(),
            handler: handler.into(),
            // A host-network pod shares the agent's network namespace (on a `moat cluster`
            // node that is the node's, not the machine's): its containers get no netns entry
            // and inherit the runtime's, which is the agent's.
            netns: if host_network {
                PathBuf::from("/proc/self/ns/net")
            } else {
                self.cfg.run_dir.join("netns").join(&uid)
            },
            host_network,
            ipc_ns: None,
            uts_ns: None,
            shm: None,
            ip: None,
            start_time: moat_api::time::rfc3339_from_millis(chrono::Utc::now().timestamp_millis()),
            containers: BTreeMap::new(),
            phase: Default::default(),
        };
        let dir = self.pod_dir(&uid);
        if !spec.host_ipc.unwrap_or(false) {
            rt.ipc_ns = Some(dir.join("ns-ipc"));
            rt.shm = Some(dir.join("shm"));
        }
        if !host_network {
            rt.uts_ns = Some(dir.join("ns-uts"));
        }
        std::fs::create_dir_all(&dir).map_err(io_err("creating the pod dir", &dir))?;
        // Persist first: a crash in the middle leaves a record teardown can work from.
        self.save(&rt)?;
        if !host_network {
            self.parts
                .netns
                .create(&rt.netns)
                .map_err(io_err("creating the pod network namespace", &rt.netns))?;
            let mut att = Self::attachment(&rt);
            let ports: Vec<moat_cni::PortMapping> = spec
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .filter_map(|p| {
                    Some(moat_cni::PortMapping {
                        host_port: u16::try_from(p.host_port?).ok().filter(|&h| h > 0)?,
                        container_port: u16::try_from(p.container_port).ok()?,
                        protocol: p
                            .protocol
                            .clone()
                            .unwrap_or_else(|| "TCP".into())
                            .to_lowercase(),
                        host_ip: p.host_ip.clone().filter(|h| !h.is_empty()),
                    })
                })
                .collect();
            if !ports.is_empty() {
                att.port_mappings(&ports);
            }
            let (cni, cache) = self.cni();
            let res = cni.add(&self.network, &att)?;
            cache.save(&self.network.name, &att, &res)?;
            rt.ip = res.pod_ip().map(String::from);
            // The IP is known before any container runs: the network components (policy
            // first) program the pod now.
            self.save(&rt)?;
        } else {
            rt.ip = self.cfg.node_ip.clone();
        }
        self.parts.hooks.sandbox_ready(pod, rt.ip.as_deref())?;
        // Containers of a pod share its IPC (with /dev/shm) and UTS namespaces.
        self.parts
            .netns
            .create_ipc_uts(rt.ipc_ns.as_deref(), rt.uts_ns.as_deref(), &name)
            .map_err(io_err("creating the pod's IPC/UTS namespaces", &dir))?;
        if let Some(shm) = &rt.shm {
            self.parts
                .netns
                .mount_shm(shm)
                .map_err(io_err("mounting the pod's /dev/shm", shm))?;
        }
        let hostname = if host_network {
            self.parts.host.hostname().unwrap_or_else(|| name.clone())
        } else {
            name.clone()
        };
        let resolv = crate::hooks::resolv_conf(
            pod,
            self.cfg.cluster_dns.as_ref(),
            &self.parts.host.resolv_conf(),
        );
        let files = [
            ("hosts", sandbox::hosts_file(&hostname, rt.ip.as_deref())),
            ("resolv.conf", resolv),
            ("hostname", format!("{hostname}\n")),
        ];
        for (f, text) in files {
            let p = dir.join(f);
            std::fs::write(&p, text).map_err(io_err("writing a sandbox file", &p))?;
        }
        for v in spec.volumes.iter().flatten() {
            if !safe_component(&v.name) {
                continue;
            }
            let p = dir.join("volumes").join(&v.name);
            if v.empty_dir.is_some() {
                std::fs::create_dir_all(&p).map_err(io_err("creating an emptyDir", &p))?;
            } else if v.config_map.is_some() || v.secret.is_some() {
                let objects = self
                    .parts
                    .objects
                    .as_deref()
                    .ok_or_else(|| SandboxError::NoApi(v.name.clone()))?;
                let files =
                    crate::volumes::files_of(objects, &rt.namespace, v).map_err(|source| {
                        SandboxError::Volume {
                            name: v.name.clone(),
                            source,
                        }
                    })?;
                std::fs::create_dir_all(&p).map_err(io_err("creating a volume", &p))?;
                for (name, data) in files {
                    let f = p.join(&name);
                    if let Some(d) = f.parent() {
                        std::fs::create_dir_all(d).map_err(io_err("creating a volume", d))?;
                    }
                    std::fs::write(&f, data).map_err(io_err("writing a volume file", &f))?;
                }
            }
        }
        self.save(&rt)?;
        Ok(rt)
    }

    fn sandbox_ref(&self, pod: &Pod, rt: &PodRecord) -> SandboxRef {
        let dir = self.pod_dir(&rt.uid);
        let mut volumes = Vec::new();
        for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            if (v.empty_dir.is_some() || v.config_map.is_some() || v.secret.is_some())
                && safe_component(&v.name)
            {
                volumes.push((v.name.clone(), dir.join("volumes").join(&v.name)));
            } else if let Some(h) = &v.host_path {
                volumes.push((v.name.clone(), PathBuf::from(&h.path)));
            }
        }
        SandboxRef {
            ipc_ns: rt.ipc_ns.clone(),
            uts_ns: rt.uts_ns.clone(),
            shm: rt.shm.clone(),
            hostname: std::fs::read_to_string(dir.join("hostname"))
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| rt.name.clone()),
            netns: rt.netns.clone(),
            hosts: dir.join("hosts"),
            resolv_conf: dir.join("resolv.conf"),
            hostname_file: dir.join("hostname"),
            volumes,
            sandbox_id: rt.uid.clone(),
        }
    }

    /// Creates and starts the next run of container `c`.
    fn start_container(
        &self,
        pod: &Pod,
        rt: &PodRecord,
        c: &Container,
    ) -> Result<Started, (StartFailure, String)> {
        use StartFailure::*;
        let slot = rt.containers.get(&c.name).cloned().unwrap_or_default();
        let restart = if slot.last.is_some() {
            slot.restart_count + 1
        } else {
            slot.restart_count
        };
        let image = c.image.clone().unwrap_or_default();
        let (img, image_id) = self
            .parts
            .images
            .resolve(&image, c.image_pull_policy.as_deref())
            .map_err(|e: ImageError| (ErrImagePull, chain(&e)))?;
        let id = format!("{}-{}-{}", rt.uid, c.name, restart);
        if !safe_component(&id) {
            return Err((
                CreateContainerError,
                format!("container id {id:?} is not usable"),
            ));
        }
        let h = rt.handler();
        let bdir = self.bundle_dir(&rt.uid, &id);
        let rootfs = bdir.join("rootfs");
        let spec_ = pod.spec.clone().unwrap_or_default();
        let sb = self.sandbox_ref(pod, rt);
        let lookup = |kind: &str, name: &str| -> Result<_, crate::envvars::LookupError> {
            let kind = match kind {
                "configmaps" => crate::volumes::ObjectKind::ConfigMap,
                "secrets" => crate::volumes::ObjectKind::Secret,
                other => return Err(format!("cannot read {other} for a container's env").into()),
            };
            match &self.parts.objects {
                Some(o) => Ok(o.get(&rt.namespace, kind, name)?),
                None => Err(format!("{}/{name}: no API to read it from", kind.plural()).into()),
            }
        };
        let host = &self.parts.host;
        let facts = crate::envvars::Facts {
            pod,
            pod_ip: rt.ip.as_deref(),
            host_ip: self.cfg.node_ip.as_deref(),
            node_cpu_millis: self
                .cfg
                .node_cpu_millis
                .unwrap_or(i64::from(host.cpus()) * 1000),
            node_memory_bytes: self.cfg.node_memory_bytes.unwrap_or_else(|| {
                i64::try_from(host.memory_kib().saturating_mul(1024)).unwrap_or(i64::MAX)
            }),
        };
        let env = crate::envvars::resolve(c, &facts, &lookup)
            .map_err(|e| (CreateContainerConfigError, chain(&e)))?;
        let mut resolved = crate::envvars::expand_command(c, &env);
        resolved.env_from = None;
        resolved.env = Some(
            env.into_iter()
                .map(|(name, value)| k8s_openapi::api::core::v1::EnvVar {
                    name,
                    value: Some(value),
                    value_from: None,
                })
                .collect(),
        );
        // Clear leftovers of an attempt that died half-way (same id).
        let _ = self.parts.runtime.delete(&h, &id);
        let _ = self.parts.images.release(&id, &rootfs);
        std::fs::create_dir_all(&bdir).map_err(|e| {
            (
                CreateContainerError,
                format!("creating {}: {e}", bdir.display()),
            )
        })?;
        let undo = || {
            let _ = self.parts.runtime.delete(&h, &id);
            let _ = self.parts.images.release(&id, &rootfs);
            let _ = std::fs::remove_dir_all(&bdir);
        };
        if let Err(e) = self.parts.images.prepare(&image, &id, &rootfs) {
            undo();
            return Err((
                CreateContainerError,
                format!("preparing the rootfs: {}", chain(&e)),
            ));
        }
        // Named users and their groups come from the image's own files.
        let mut img = img;
        img.etc_passwd = image_etc_file(&rootfs, "passwd");
        img.etc_group = image_etc_file(&rootfs, "group");
        let oci = match bundle::spec(
            &spec_,
            &resolved,
            &img,
            &sb,
            &format!("{}/{id}", self.cfg.cgroup_parent.trim_end_matches('/')),
        ) {
            Ok(o) => o,
            Err(e) => {
                undo();
                return Err((CreateContainerConfigError, chain(&e)));
            }
        };
        let written = serde_json::to_vec_pretty(&oci)
            .map_err(|e| e.to_string())
            .and_then(|cfg| {
                std::fs::write(bdir.join("config.json"), cfg)
                    .map_err(|e| format!("writing config.json: {e}"))
            });
        if let Err(e) = written {
            undo();
            return Err((CreateContainerError, e));
        }
        let log = self.log_path(&rt.namespace, &rt.name, &rt.uid, &c.name, restart);
        if let Some(dir) = log.parent()
            && let Err(e) = crate::logrotate::remove_stale_runs(dir, restart)
        {
            tracing::warn!(error = %chain(&e), "removing old logs");
        }
        let pid = match self.parts.runtime.create(&h, &id, &bdir, &log) {
            Ok(pid) => pid,
            Err(e) => {
                undo();
                return Err((CreateContainerError, chain(&e)));
            }
        };
        if let Err(e) = self.parts.runtime.start(&h, &id) {
            undo();
            return Err((RunContainerError, chain(&e)));
        }
        crate::runtime::mark_started(&bdir, pid);
        Ok(Started {
            id,
            restart_count: restart,
            image,
            image_id,
        })
    }

    /// Removes one runtime container (stopped or not) with its rootfs and bundle.
    fn remove_container(&self, rt: &PodRecord, id: &str) {
        let h = rt.handler();
        if let Err(e) = self.parts.runtime.delete(&h, id) {
            tracing::warn!(error = %chain(&e), "deleting container");
        }
        let bdir = self.bundle_dir(&rt.uid, id);
        if let Err(e) = self.parts.images.release(id, &bdir.join("rootfs")) {
            tracing::warn!(error = %chain(&e), "releasing rootfs");
        }
        let _ = std::fs::remove_dir_all(&bdir);
    }

    /// Removes everything of a pod whose containers are stopped (or given up on): runtime
    /// containers, rootfs, namespaces, CNI attachment, netns, pod dir, logs. Every step runs;
    /// an error in any keeps the record so the whole teardown is retried.
    pub fn teardown(&self, rt: &PodRecord) -> Result<(), TeardownError> {
        let h = rt.handler();
        let mut failed = Vec::new();
        // Also sweep bundles of attempts not recorded (a crash between create and save).
        let mut all: BTreeSet<String> = rt.container_ids().into_iter().collect();
        if let Ok(rd) = std::fs::read_dir(self.pod_dir(&rt.uid).join("containers")) {
            all.extend(
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().map(String::from)),
            );
        }
        for id in &all {
            if let Err(e) = self.parts.runtime.delete(&h, id) {
                failed.push(chain(&e));
                continue;
            }
            let bdir = self.bundle_dir(&rt.uid, id);
            if let Err(e) = self.parts.images.release(id, &bdir.join("rootfs")) {
                failed.push(chain(&e));
                continue;
            }
            let _ = std::fs::remove_dir_all(&bdir);
        }
        for p in [&rt.shm, &rt.ipc_ns, &rt.uts_ns].into_iter().flatten() {
            if let Err(e) = self.parts.netns.release(p) {
                failed.push(format!("releasing {}: {e}", p.display()));
            }
        }
        if !rt.host_network {
            let att = Self::attachment(rt);
            let (cni, cache) = self.cni();
            let prev = cache.load(&self.network.name, &att).ok().flatten();
            match cni.del(&self.network, &att, prev.as_ref()) {
                Ok(()) => {
                    let _ = cache.remove(&self.network.name, &att);
                }
                Err(e) => failed.push(format!("CNI DEL: {}", chain(&e))),
            }
            if let Err(e) = self.parts.netns.remove(&rt.netns) {
                failed.push(format!("removing the netns {}: {e}", rt.netns.display()));
            }
        }
        if !failed.is_empty() {
            return Err(TeardownError(failed));
        }
        let dir = self.pod_dir(&rt.uid);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(TeardownError(vec![format!(
                "removing {}: {e}",
                dir.display()
            )]));
        }
        self.parts.hooks.sandbox_gone(&rt.uid, rt.ip.as_deref());
        // Its logs go with it, as the kubelet's container GC removes a deleted pod's logs.
        let logs = self
            .cfg
            .log_dir
            .join(format!("{}_{}_{}", rt.namespace, rt.name, rt.uid));
        if let Err(e) = std::fs::remove_dir_all(&logs)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, dir = %logs.display(), "removing the pod's logs");
        }
        Ok(())
    }
}

/// `<rootfs>/etc/<name>` if it is a regular file reached without symlinks (an image must not
/// point the agent at a host file) and of a sane size.
pub(crate) fn image_etc_file(rootfs: &Path, name: &str) -> Option<String> {
    let etc = rootfs.join("etc");
    if !std::fs::symlink_metadata(&etc).ok()?.is_dir() {
        return None;
    }
    let f = etc.join(name);
    let m = std::fs::symlink_metadata(&f).ok()?;
    if !m.is_file() || m.len() > 4 << 20 {
        return None;
    }
    std::fs::read_to_string(f).ok()
}

//! The agent: [`Node`] is the per-node pod lifecycle (sandbox, containers, restarts,
//! teardown, status) over narrow IO traits; [`Agent`] connects it to the API server (node
//! registration, Lease heartbeat, watching the pods bound to this node, pods/status).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};
use moat_cni::{Attachment, Cni, Exec, NetworkList, ResultCache};
use moat_manager::Client;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::bundle::{self, ImageDefaults, SandboxRef};
use crate::handlers::{Handler, Handlers};
use crate::runtime::{Runtime, Status};
use crate::sandbox::{self, NetnsOps};
use crate::status::{self, ContainerView, PodFacts, State};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("API: {0}")]
    Api(#[from] moat_manager::ClientError),
    #[error("{step}: {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pod sandbox network (CNI)")]
    Cni(#[from] moat_cni::CniError),
    #[error("{0}")]
    Other(String),
}

fn io_err<'a>(
    step: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> AgentError + 'a {
    move |source| AgentError::Io {
        step,
        path: path.to_path_buf(),
        source,
    }
}

/// How the agent reaches the API server.
#[derive(Debug, Clone)]
pub enum Join {
    /// A kubeconfig file (server URL, CA, token), like `moat server` writes.
    Kubeconfig(PathBuf),
    /// `--server URL --token T` with the CA (or no verification) as given.
    Server {
        url: String,
        token: String,
        trust: moat_manager::ServerTrust,
    },
}

impl Join {
    pub fn client(&self) -> Result<Client, AgentError> {
        Ok(match self {
            Join::Kubeconfig(p) => Client::from_kubeconfig(p)?,
            Join::Server { url, token, trust } => Client::connect(url, token, trust.clone())?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    pub join: Join,
    /// Sandboxes, bundles, netns files, CNI state (tmpfs: gone on reboot, as are the pods).
    pub run_dir: PathBuf,
    /// CRI logs: `<log_dir>/<ns>_<pod>_<uid>/<container>/<restart>.log`.
    pub log_dir: PathBuf,
    pub image_root: PathBuf,
    /// A directory whose first conflist is used instead of the default one, if it has any.
    pub cni_conf_dir: Option<PathBuf>,
    pub cni_bin_dirs: Vec<PathBuf>,
    /// Used when the Node object has no spec.podCIDR.
    pub pod_cidr: String,
    pub handlers: Handlers,
    /// The shim command prefix (the `moat` binary's `agent shim`).
    pub shim: Vec<String>,
    pub node_ip: Option<String>,
    /// The agent's HTTPS endpoint (logs, exec) for the API server to proxy to; None: off.
    pub listen: Option<std::net::SocketAddr>,
    /// Container log rotation (the kubelet's containerLogMaxSize / containerLogMaxFiles).
    pub log_policy: crate::logrotate::Policy,
    /// How often running containers' logs are checked for rotation.
    pub log_monitor_interval: Duration,
}

/// Image lookup and per-container rootfs.
pub trait Images: Send + Sync {
    /// Image config defaults and the image ID (manifest digest); pulls when missing.
    fn resolve(&self, image: &str, policy: Option<&str>)
    -> Result<(ImageDefaults, String), String>;
    fn prepare(&self, image: &str, id: &str, target: &Path) -> Result<(), String>;
    fn release(&self, id: &str, target: &Path) -> Result<(), String>;
}

pub struct StoreImages {
    pub store: moat_image::Store,
    pub mounter: Box<dyn moat_image::Mounter + Send + Sync>,
}

impl Images for StoreImages {
    fn resolve(
        &self,
        image: &str,
        policy: Option<&str>,
    ) -> Result<(ImageDefaults, String), String> {
        let r = moat_image::Reference::parse(image).map_err(|e| e.to_string())?;
        let pol = moat_image::PullPolicy::from_field(policy, &r)?;
        let present = self.store.get(image).map_err(|e| e.to_string())?;
        let rec = match (moat_image::decide(pol, present.is_some()), present) {
            (moat_image::PullDecision::UseLocal, Some(rec)) => rec,
            (moat_image::PullDecision::Pull, _) => moat_image::registry::Client::new(None)
                .pull(&self.store, &r, &mut |_, _, _| {})
                .map_err(|e| format!("pulling {image}: {e}"))?,
            (_, _) => return Err(format!("image {image} is not present on the node")),
        };
        let cfg = self
            .store
            .read_blob(&rec.config)
            .map_err(|e| e.to_string())?;
        let d = ImageDefaults::from_config_blob(&cfg).map_err(|e| e.to_string())?;
        Ok((d, rec.manifest.as_str().to_string()))
    }

    fn prepare(&self, image: &str, id: &str, target: &Path) -> Result<(), String> {
        self.store
            .prepare_rootfs(self.mounter.as_ref(), image, id, target)
            .map_err(|e| e.to_string())
    }

    fn release(&self, id: &str, target: &Path) -> Result<(), String> {
        self.store
            .release_rootfs(self.mounter.as_ref(), id, target)
            .map_err(|e| e.to_string())
    }
}

/// The IO edges the pod lifecycle goes through.
pub struct Parts {
    pub runtime: Arc<dyn Runtime>,
    pub netns: Arc<dyn NetnsOps>,
    pub cni: Arc<dyn Exec + Send + Sync>,
    pub images: Arc<dyn Images>,
}

/// One container slot of a pod, persisted.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Slot {
    /// The runtime container currently existing for this slot.
    pub(crate) id: Option<String>,
    pub(crate) restart_count: u32,
    pub(crate) started_at: Option<String>,
    pub(crate) image_id: String,
    /// The image as the pod spec names it (for `moat ps`).
    #[serde(default)]
    pub(crate) image: String,
    pub(crate) last: Option<State>,
    /// Final state when the policy does not restart it.
    pub(crate) done: Option<State>,
    /// Unix seconds before which it is not started again (CrashLoopBackOff).
    pub(crate) not_before: Option<i64>,
    pub(crate) waiting: Option<(String, Option<String>)>,
    /// Create/start failures in a row, for their own backoff.
    pub(crate) errors: u32,
    /// Readiness probe state of the current container.
    #[serde(default)]
    pub(crate) probe: crate::probe::ProbeState,
    /// Liveness probe state of the current container.
    #[serde(default)]
    pub(crate) liveness: crate::probe::ProbeState,
}

/// A pod's sandbox and containers, persisted as `<run_dir>/pods/<uid>/state.json` so a
/// restarted agent re-adopts them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    pub uid: String,
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) handler: Handler2,
    pub(crate) netns: PathBuf,
    pub(crate) host_network: bool,
    /// The pod's IPC and UTS namespace files and /dev/shm tmpfs (`None`: the host's, or a
    /// record from before pods shared them).
    #[serde(default)]
    pub(crate) ipc_ns: Option<PathBuf>,
    #[serde(default)]
    pub(crate) uts_ns: Option<PathBuf>,
    #[serde(default)]
    pub(crate) shm: Option<PathBuf>,
    pub(crate) ip: Option<String>,
    pub(crate) start_time: String,
    pub(crate) containers: BTreeMap<String, Slot>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Handler2 {
    name: String,
    binary: PathBuf,
    root: PathBuf,
    options: Vec<String>,
}

impl From<&Handler> for Handler2 {
    fn from(h: &Handler) -> Self {
        Handler2 {
            name: h.name.clone(),
            binary: h.binary.clone(),
            root: h.root.clone(),
            options: h.options.clone(),
        }
    }
}

impl Handler2 {
    fn handler(&self) -> Handler {
        Handler {
            name: self.name.clone(),
            binary: self.binary.clone(),
            root: self.root.clone(),
            options: self.options.clone(),
        }
    }
}

impl PodRecord {
    /// (restart count, current runtime container id, has a previous run) of a container.
    pub fn container(&self, name: &str) -> Option<(u32, Option<String>, bool)> {
        self.containers
            .get(name)
            .map(|s| (s.restart_count, s.id.clone(), s.last.is_some()))
    }

    pub fn bundle(&self, run_dir: &Path, id: &str) -> PathBuf {
        run_dir
            .join("pods")
            .join(&self.uid)
            .join("containers")
            .join(id)
    }

    pub fn handler(&self) -> Handler {
        self.handler.handler()
    }
}

/// Every pod record persisted under `<run_dir>/pods/` (unreadable ones are skipped).
pub fn records(run_dir: &Path) -> Vec<PodRecord> {
    let Ok(rd) = std::fs::read_dir(run_dir.join("pods")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| std::fs::read(e.path().join("state.json")).ok())
        .filter_map(|b| serde_json::from_slice::<PodRecord>(&b).ok())
        .collect()
}

/// The persisted record of pod `ns/name` on this node.
pub fn find_pod(run_dir: &Path, ns: &str, name: &str) -> Option<PodRecord> {
    records(run_dir)
        .into_iter()
        .find(|r| r.namespace == ns && r.name == name)
}

pub enum Outcome {
    /// The status to report.
    Status(Value),
    /// The pod was being deleted and everything it had on the node is gone.
    Removed,
}

pub struct Node {
    pub cfg: AgentConfig,
    parts: Parts,
    network: NetworkList,
    /// Pods are synced concurrently: each sync takes its record out and puts it back.
    pods: std::sync::Mutex<BTreeMap<String, PodRecord>>,
    /// Events to post.
    pub events: std::sync::Mutex<Vec<Event>>,
    /// Files of a configMap or secret volume (key → content), looked up through the API.
    pub volume_source: Option<Box<VolumeSource>>,
    /// ConfigMaps and Secrets for container env (`envFrom`, `configMapKeyRef`,
    /// `secretKeyRef`), looked up through the API.
    pub object_source: Option<Box<ObjectSource>>,
}

/// (namespace, `configmaps` | `secrets`, name) → the object; `None` when it does not exist.
pub type ObjectSource = dyn Fn(&str, &str, &str) -> Result<Option<Value>, String> + Send + Sync;

/// (namespace, volume) → the volume's files; `Err` when it cannot be made.
pub type VolumeSource = dyn Fn(&str, &k8s_openapi::api::core::v1::Volume) -> Result<Vec<(String, Vec<u8>)>, String>
    + Send
    + Sync;

/// Files of a configMap/secret volume from the object's data (secrets are base64), limited
/// to `items` when given. Keys must be plain file names.
pub fn volume_files(
    v: &k8s_openapi::api::core::v1::Volume,
    obj: &Value,
) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut files = Vec::new();
    let (items, secret) = match (&v.config_map, &v.secret) {
        (Some(cm), _) => (cm.items.clone(), false),
        (_, Some(sec)) => (sec.items.clone(), true),
        _ => return Ok(files),
    };
    let decode = |key: &str, text: Option<&str>, bin: Option<&str>| -> Result<Vec<u8>, String> {
        let data = match (text, bin) {
            (Some(t), _) if !secret => t.as_bytes().to_vec(),
            (Some(t), _) => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(t)
                    .map_err(|e| format!("secret key {key}: {e}"))?
            }
            (None, Some(b)) => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(|e| format!("binaryData key {key}: {e}"))?
            }
            (None, None) => return Err(format!("key {key} not found")),
        };
        Ok(data)
    };
    let data = &obj["data"];
    let bin = &obj["binaryData"];
    match items {
        Some(items) => {
            for it in items {
                let d = decode(&it.key, data[&it.key].as_str(), bin[&it.key].as_str())?;
                files.push((it.path.clone(), d));
            }
        }
        None => {
            for src in [data, bin] {
                for (k, _) in src.as_object().into_iter().flatten() {
                    files.push((k.clone(), decode(k, data[k].as_str(), bin[k].as_str())?));
                }
            }
        }
    }
    for (name, _) in &files {
        if name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
            || name.starts_with('/')
        {
            return Err(format!("volume file {name:?} escapes the volume"));
        }
    }
    Ok(files)
}

/// (pod namespace, pod name, uid, type, reason, message)
pub type Event = (String, String, String, &'static str, String, String);

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn safe_component(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Node {
    /// Loads what earlier runs of the agent left running.
    pub fn new(cfg: AgentConfig, parts: Parts, pod_cidr: &str) -> Result<Node, AgentError> {
        let pods_dir = cfg.run_dir.join("pods");
        std::fs::create_dir_all(&pods_dir).map_err(io_err("creating the pods dir", &pods_dir))?;
        let mut pods = BTreeMap::new();
        for e in std::fs::read_dir(&pods_dir).map_err(io_err("listing pods", &pods_dir))? {
            let Ok(e) = e else { continue };
            let p = e.path().join("state.json");
            if let Ok(b) = std::fs::read(&p)
                && let Ok(rt) = serde_json::from_slice::<PodRecord>(&b)
            {
                pods.insert(rt.uid.clone(), rt);
            }
        }
        let network = match cfg.cni_conf_dir.as_deref() {
            Some(d) if d.is_dir() => match NetworkList::load_dir(d) {
                Ok(n) => n,
                Err(moat_cni::CniError::NoConfig(_)) => {
                    NetworkList::moat_default(pod_cidr, Some(&cfg.run_dir.join("cni/networks")))
                }
                Err(e) => return Err(e.into()),
            },
            _ => NetworkList::moat_default(pod_cidr, Some(&cfg.run_dir.join("cni/networks"))),
        };
        Ok(Node {
            cfg,
            parts,
            network,
            pods: std::sync::Mutex::new(pods),
            events: std::sync::Mutex::new(Vec::new()),
            volume_source: None,
            object_source: None,
        })
    }

    /// UIDs of the pods this node holds.
    pub fn pod_uids(&self) -> BTreeSet<String> {
        self.pods_map().keys().cloned().collect()
    }

    fn pods_map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PodRecord>> {
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn event(&self, e: Event) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(e);
    }

    /// Takes the events collected so far.
    pub fn take_events(&self) -> Vec<Event> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn holds(&self, uid: &str) -> bool {
        self.pods_map().contains_key(uid)
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.cfg.run_dir.join("pods").join(uid)
    }

    fn save(&self, rt: &PodRecord) -> Result<(), AgentError> {
        let dir = self.pod_dir(&rt.uid);
        std::fs::create_dir_all(&dir).map_err(io_err("creating the pod dir", &dir))?;
        let p = dir.join("state.json");
        let tmp = dir.join("state.json.tmp");
        let data = serde_json::to_vec(rt).map_err(|e| AgentError::Other(e.to_string()))?;
        std::fs::write(&tmp, data).map_err(io_err("writing pod state", &tmp))?;
        std::fs::rename(&tmp, &p).map_err(io_err("writing pod state", &p))
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

    fn create_sandbox(&self, pod: &Pod, handler: &Handler) -> Result<PodRecord, AgentError> {
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
            netns: if host_network {
                PathBuf::from("/proc/1/ns/net")
            } else {
                self.cfg.run_dir.join("netns").join(&uid)
            },
            host_network,
            ipc_ns: None,
            uts_ns: None,
            shm: None,
            ip: None,
            start_time: now_rfc3339(),
            containers: BTreeMap::new(),
        };
        let dir = self.pod_dir(&uid);
        let host_ipc = spec.host_ipc.unwrap_or(false);
        if !host_ipc {
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
        } else {
            rt.ip = self.cfg.node_ip.clone();
        }
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
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| name.clone())
        } else {
            name.clone()
        };
        let files = [
            ("hosts", sandbox::hosts_file(&hostname, rt.ip.as_deref())),
            (
                "resolv.conf",
                sandbox::resolv_conf(
                    &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
                ),
            ),
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
                let src = self.volume_source.as_ref().ok_or_else(|| {
                    AgentError::Other(format!("volume {}: no API to read it from", v.name))
                })?;
                let files = src(&rt.namespace, v)
                    .map_err(|e| AgentError::Other(format!("volume {}: {e}", v.name)))?;
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

    /// `<log_dir>/<ns>_<name>_<uid>/<container>/<restart>.log`
    pub fn log_path(
        &self,
        ns: &str,
        pod: &str,
        uid: &str,
        container: &str,
        restart: u32,
    ) -> PathBuf {
        self.cfg
            .log_dir
            .join(format!("{ns}_{pod}_{uid}"))
            .join(container)
            .join(format!("{restart}.log"))
    }

    /// Rotates the logs of running containers that reached the policy's size.
    pub fn rotate_logs(&self) {
        let logs: Vec<PathBuf> = self
            .pods_map()
            .values()
            .flat_map(|r| {
                r.containers
                    .iter()
                    .filter(|(_, s)| s.id.is_some())
                    .map(|(c, s)| self.log_path(&r.namespace, &r.name, &r.uid, c, s.restart_count))
            })
            .collect();
        let now = chrono::Utc::now();
        for log in logs {
            match crate::logrotate::rotate_if_needed(&log, &self.cfg.log_policy, now) {
                Ok(true) => tracing::debug!(log = %log.display(), "rotated a container log"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %format!("{e}: {}", source_chain(&e)), "log rotation")
                }
            }
        }
    }

    fn bundle_dir(&self, uid: &str, id: &str) -> PathBuf {
        self.pod_dir(uid).join("containers").join(id)
    }

    fn start_container(&self, pod: &Pod, rt: &mut PodRecord, c: &Container) -> Result<(), String> {
        let slot = rt.containers.entry(c.name.clone()).or_default();
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
            .map_err(|e| format!("ErrImagePull: {e}"))?;
        let id = format!("{}-{}-{}", rt.uid, c.name, restart);
        if !safe_component(&id) {
            return Err(format!("container id {id:?} is not usable"));
        }
        let h = rt.handler.handler();
        let bdir = self.bundle_dir(&rt.uid, &id);
        let rootfs = bdir.join("rootfs");
        let spec_ = pod.spec.clone().unwrap_or_default();
        let sb = self.sandbox_ref(pod, rt);
        let lookup = |kind: &str, name: &str| match &self.object_source {
            Some(f) => f(&rt.namespace, kind, name),
            None => Err(format!("{kind}/{name}: no API to read it from")),
        };
        let facts = crate::envvars::Facts {
            pod,
            pod_ip: rt.ip.as_deref(),
            host_ip: self.cfg.node_ip.as_deref(),
            node_cpu_millis: node_cpu_millis(),
            node_memory_bytes: i64::try_from(mem_kib().saturating_mul(1024)).unwrap_or(i64::MAX),
        };
        let env = crate::envvars::resolve(c, &facts, &lookup)
            .map_err(|e| format!("CreateContainerConfigError: {e}"))?;
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
        std::fs::create_dir_all(&bdir).map_err(|e| format!("creating {}: {e}", bdir.display()))?;
        self.parts
            .images
            .prepare(&image, &id, &rootfs)
            .map_err(|e| format!("CreateContainerError: preparing the rootfs: {e}"))?;
        // Named users and their groups come from the image's own files.
        let mut img = img;
        img.etc_passwd = image_etc_file(&rootfs, "passwd");
        img.etc_group = image_etc_file(&rootfs, "group");
        let written = bundle::spec(&spec_, &resolved, &img, &sb, &format!("/moat/{id}"))
            .map_err(|e| format!("CreateContainerConfigError: {e}"))
            .and_then(|oci| serde_json::to_vec_pretty(&oci).map_err(|e| e.to_string()))
            .and_then(|cfg| {
                std::fs::write(bdir.join("config.json"), cfg)
                    .map_err(|e| format!("writing config.json: {e}"))
            });
        if let Err(e) = written {
            let _ = self.parts.images.release(&id, &rootfs);
            let _ = std::fs::remove_dir_all(&bdir);
            return Err(e);
        }
        let log = self.log_path(&rt.namespace, &rt.name, &rt.uid, &c.name, restart);
        if let Some(dir) = log.parent()
            && let Err(e) = crate::logrotate::remove_stale_runs(dir, restart)
        {
            tracing::warn!(error = %format!("{e}: {}", source_chain(&e)), "removing old logs");
        }
        let slot_id = id.clone();
        let undo = |me: &Self| {
            let _ = me.parts.runtime.delete(&h, &slot_id);
            let _ = me.parts.images.release(&slot_id, &rootfs);
            let _ = std::fs::remove_dir_all(me.bundle_dir(&rt.uid, &slot_id));
        };
        let pid = match self.parts.runtime.create(&h, &id, &bdir, &log) {
            Ok(pid) => pid,
            Err(e) => {
                undo(self);
                return Err(format!("CreateContainerError: {e}"));
            }
        };
        let slot = rt.containers.entry(c.name.clone()).or_default();
        slot.id = Some(id.clone());
        slot.restart_count = restart;
        slot.image_id = image_id;
        slot.image = image.clone();
        slot.started_at = Some(now_rfc3339());
        slot.waiting = None;
        slot.not_before = None;
        slot.probe = Default::default();
        slot.liveness = Default::default();
        if let Err(e) = self.parts.runtime.start(&h, &id) {
            let slot = rt.containers.entry(c.name.clone()).or_default();
            slot.id = None;
            undo(self);
            return Err(format!("RunContainerError: {e}"));
        }
        crate::runtime::mark_started(&bdir, pid);
        Ok(())
    }

    /// Removes one runtime container (stopped or not) with its rootfs and bundle.
    fn remove_container(&self, rt: &PodRecord, id: &str) {
        let h = rt.handler.handler();
        if let Err(e) = self.parts.runtime.delete(&h, id) {
            tracing::warn!(error = %e, "deleting container");
        }
        let bdir = self.bundle_dir(&rt.uid, id);
        if let Err(e) = self.parts.images.release(id, &bdir.join("rootfs")) {
            tracing::warn!(error = %e, "releasing rootfs");
        }
        let _ = std::fs::remove_dir_all(&bdir);
    }

    /// Brings one pod to its desired state; returns its status (or Removed).
    pub fn sync(&self, pod: &Pod, handler: Result<Handler, String>) -> Outcome {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let grace = pod.metadata.deletion_grace_period_seconds;
        if pod.metadata.deletion_timestamp.is_some() {
            self.teardown(&uid, grace.unwrap_or(30));
            return Outcome::Removed;
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let prev = pod
            .status
            .as_ref()
            .map(|s| serde_json::to_value(s).unwrap_or_default())
            .unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        let now = now_rfc3339();
        if !safe_component(&uid) {
            return Outcome::Status(
                json!({"phase": "Failed", "reason": "InvalidPod", "message": "pod has no usable uid"}),
            );
        }
        let taken = self.pods_map().remove(&uid);
        let mut rt = match taken {
            Some(rt) => rt,
            None => {
                let h = match handler {
                    Ok(h) => h,
                    Err(msg) => {
                        self.event((
                            ns.clone(),
                            name.clone(),
                            uid.clone(),
                            "Warning",
                            "FailedCreatePodSandBox".into(),
                            msg.clone(),
                        ));
                        let views = waiting_views(&spec.containers, "ContainerCreating", None);
                        return Outcome::Status(status::pod_status(
                            &views,
                            &PodFacts {
                                restart_policy: &policy,
                                pod_ip: None,
                                host_ip: self.cfg.node_ip.as_deref(),
                                start_time: Some(&now),
                                previous: &prev,
                                now: &now,
                                failure: Some(("RuntimeHandlerNotFound", &msg)),
                            },
                        ));
                    }
                };
                match self.create_sandbox(pod, &h) {
                    Ok(rt) => rt,
                    Err(e) => {
                        let msg = format!("{e}: {}", source_chain(&e));
                        tracing::warn!(pod = %name, error = %msg, "creating the sandbox");
                        self.event((
                            ns.clone(),
                            name.clone(),
                            uid.clone(),
                            "Warning",
                            "FailedCreatePodSandBox".into(),
                            msg.clone(),
                        ));
                        // Undo what was done; the next pass tries again.
                        if let Some(b) = std::fs::read(self.pod_dir(&uid).join("state.json"))
                            .ok()
                            .and_then(|b| serde_json::from_slice::<PodRecord>(&b).ok())
                        {
                            self.pods_map().insert(uid.clone(), b);
                            self.teardown(&uid, 0);
                        }
                        let views =
                            waiting_views(&spec.containers, "ContainerCreating", Some(&msg));
                        return Outcome::Status(status::pod_status(
                            &views,
                            &PodFacts {
                                restart_policy: &policy,
                                pod_ip: None,
                                host_ip: self.cfg.node_ip.as_deref(),
                                start_time: Some(&now),
                                previous: &prev,
                                now: &now,
                                failure: None,
                            },
                        ));
                    }
                }
            }
        };
        let h = rt.handler.handler();
        let mut views = Vec::new();
        // Init containers run one at a time, each to success, before the app containers.
        let inits = spec.init_containers.clone().unwrap_or_default();
        let mut init_views = Vec::new();
        let mut initialized = true;
        let mut init_failed = false;
        let all: Vec<(bool, &Container)> = inits
            .iter()
            .map(|c| (true, c))
            .chain(spec.containers.iter().map(|c| (false, c)))
            .collect();
        for (init, c) in all {
            if !initialized {
                let mut v = waiting_views(std::slice::from_ref(c), "PodInitializing", None);
                if init {
                    init_views.append(&mut v);
                } else {
                    views.append(&mut v);
                }
                continue;
            }
            let slot = rt.containers.entry(c.name.clone()).or_default().clone();
            let mut slot = slot;
            if let Some(id) = slot.id.clone() {
                let bdir = self.bundle_dir(&uid, &id);
                match self.parts.runtime.state(&h, &id, &bdir) {
                    Ok(Some(st)) if st.status == Status::Stopped => {
                        let code = st.exit_code.unwrap_or(255);
                        let term = State::Terminated {
                            exit_code: code,
                            reason: status::exit_reason(code).into(),
                            started_at: slot.started_at.clone(),
                            finished_at: now.clone(),
                            container_id: format!("{}://{id}", h.name),
                        };
                        self.remove_container(&rt, &id);
                        slot.id = None;
                        let restart = if init {
                            code != 0 && policy != "Never"
                        } else {
                            status::should_restart(&policy, code)
                        };
                        if restart {
                            let delay = status::backoff(slot.restart_count);
                            slot.not_before = Some(unix_now() + delay.as_secs() as i64);
                            slot.last = Some(term);
                            slot.waiting = Some((
                                "CrashLoopBackOff".into(),
                                Some(format!(
                                    "back-off {}s restarting failed container={} pod={name}",
                                    delay.as_secs(),
                                    c.name
                                )),
                            ));
                        } else {
                            slot.done = Some(term);
                        }
                    }
                    Ok(Some(st)) if st.status == Status::Created => {
                        if let Err(e) = self.parts.runtime.start(&h, &id) {
                            tracing::warn!(error = %e, "starting a created container");
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        // The runtime lost it (e.g. its state root was wiped): count it as
                        // ended with an unknown code.
                        slot.id = None;
                        slot.last = Some(State::Terminated {
                            exit_code: 255,
                            reason: "Unknown".into(),
                            started_at: slot.started_at.clone(),
                            finished_at: now.clone(),
                            container_id: format!("{}://{id}", h.name),
                        });
                        self.remove_container(&rt, &id);
                    }
                    Err(e) => tracing::warn!(error = %e, "container state"),
                }
            }
            rt.containers.insert(c.name.clone(), slot.clone());
            if slot.id.is_none()
                && slot.done.is_none()
                && slot.not_before.is_none_or(|t| unix_now() >= t)
            {
                match self.start_container(pod, &mut rt, c) {
                    Ok(()) => {
                        if let Some(s) = rt.containers.get_mut(&c.name) {
                            s.errors = 0;
                        }
                    }
                    Err(e) => {
                        let (reason, msg) =
                            e.split_once(": ").unwrap_or(("CreateContainerError", &e));
                        let s = rt.containers.entry(c.name.clone()).or_default();
                        s.waiting = Some((reason.to_string(), Some(msg.to_string())));
                        s.not_before =
                            Some(unix_now() + status::backoff(s.errors).as_secs() as i64);
                        s.errors += 1;
                        self.event((
                            ns.clone(),
                            name.clone(),
                            uid.clone(),
                            "Warning",
                            "Failed".into(),
                            format!("{}: {msg}", c.name),
                        ));
                    }
                }
            }
            if let (Some(p), Some(s)) = (&c.readiness_probe, rt.containers.get_mut(&c.name))
                && let Some(id) = s.id.clone()
            {
                let started_ms = s
                    .started_at
                    .as_deref()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map_or(0, |t| t.timestamp_millis());
                let now_ms = chrono::Utc::now().timestamp_millis();
                if s.probe.due(p, started_ms, now_ms) {
                    let exec = |cmd: &[String]| exec_ok(&h, &id, cmd);
                    let ok = crate::probe::run(p, c, rt.ip.as_deref(), &exec);
                    s.probe.record(p, ok, now_ms);
                }
            }
            if let (Some(p), Some(s)) = (&c.liveness_probe, rt.containers.get_mut(&c.name))
                && let Some(id) = s.id.clone()
            {
                let started_ms = s
                    .started_at
                    .as_deref()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map_or(0, |t| t.timestamp_millis());
                let now_ms = chrono::Utc::now().timestamp_millis();
                if s.liveness.due(p, started_ms, now_ms) {
                    let exec = |cmd: &[String]| exec_ok(&h, &id, cmd);
                    let ok = crate::probe::run(p, c, rt.ip.as_deref(), &exec);
                    s.liveness.record(p, ok, now_ms);
                    if s.liveness.failures >= p.failure_threshold.unwrap_or(3).max(1) as u32 {
                        // Killed here; the next pass sees it stopped and restarts it per
                        // the policy, like any other exit.
                        self.event((
                            ns.clone(),
                            name.clone(),
                            uid.clone(),
                            "Warning",
                            "Unhealthy".into(),
                            format!(
                                "Liveness probe failed: container {} will be restarted",
                                c.name
                            ),
                        ));
                        let _ = self.parts.runtime.kill(&h, &id, "SIGKILL");
                        s.liveness = Default::default();
                    }
                }
            }
            let slot = rt.containers.get(&c.name).cloned().unwrap_or_default();
            let state = match (&slot.id, &slot.done, &slot.waiting) {
                (Some(_), _, _) => State::Running {
                    started_at: slot.started_at.clone().unwrap_or_else(|| now.clone()),
                },
                (None, Some(d), _) => d.clone(),
                (None, None, Some((r, m))) => State::Waiting {
                    reason: r.clone(),
                    message: m.clone(),
                },
                (None, None, None) => State::Waiting {
                    reason: "ContainerCreating".into(),
                    message: None,
                },
            };
            let view = ContainerView {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                image_id: slot.image_id.clone(),
                container_id: slot.id.as_ref().map(|i| format!("{}://{i}", h.name)),
                state,
                last: slot.last.clone(),
                restart_count: slot.restart_count,
                probe_ready: c.readiness_probe.as_ref().map(|_| slot.probe.ready),
            };
            if init {
                match &slot.done {
                    Some(State::Terminated { exit_code: 0, .. }) => {}
                    Some(State::Terminated { .. }) => {
                        initialized = false;
                        init_failed = true;
                    }
                    _ => initialized = false,
                }
                init_views.push(view);
            } else {
                views.push(view);
            }
        }
        if let Err(e) = self.save(&rt) {
            tracing::warn!(error = %e, "saving pod state");
        }
        let mut st = status::pod_status(
            &views,
            &PodFacts {
                restart_policy: &policy,
                pod_ip: rt.ip.as_deref(),
                host_ip: self.cfg.node_ip.as_deref(),
                start_time: Some(&rt.start_time.clone()),
                previous: &prev,
                now: &now,
                failure: init_failed.then_some(("InitContainerFailed", "an init container failed")),
            },
        );
        if !inits.is_empty() {
            st["initContainerStatuses"] =
                Value::Array(init_views.iter().map(status::container_status).collect());
            if !initialized {
                if !init_failed {
                    st["phase"] = json!("Pending");
                }
                if let Some(cs) = st["conditions"].as_array_mut() {
                    for c in cs.iter_mut().filter(|c| c["type"] == "Initialized") {
                        c["status"] = json!("False");
                        c["reason"] = json!("ContainersNotInitialized");
                    }
                }
            }
        }
        self.pods_map().insert(uid, rt);
        Outcome::Status(st)
    }

    /// Stops (SIGTERM, `grace` seconds, SIGKILL) and removes everything of a pod: containers,
    /// rootfs, CNI attachment, netns, pod dir.
    pub fn teardown(&self, uid: &str, grace: i64) {
        let taken = self.pods_map().remove(uid);
        let Some(rt) = taken else {
            return;
        };
        let h = rt.handler.handler();
        let ids: Vec<String> = rt
            .containers
            .values()
            .filter_map(|s| s.id.clone())
            .collect();
        for id in &ids {
            let _ = self.parts.runtime.kill(&h, id, "SIGTERM");
        }
        let deadline = Instant::now() + Duration::from_secs(grace.max(0) as u64);
        let running = |me: &Self, id: &str| {
            matches!(
                me.parts.runtime.state(&h, id, &me.bundle_dir(uid, id)),
                Ok(Some(s)) if s.status == Status::Running || s.status == Status::Created
            )
        };
        while Instant::now() < deadline && ids.iter().any(|id| running(self, id)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        for id in &ids {
            if running(self, id) {
                let _ = self.parts.runtime.kill(&h, id, "SIGKILL");
            }
        }
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until && ids.iter().any(|id| running(self, id)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        // Also sweep bundles of attempts not recorded (a crash between create and save).
        let cdir = self.pod_dir(uid).join("containers");
        let mut all: BTreeSet<String> = ids.into_iter().collect();
        if let Ok(rd) = std::fs::read_dir(&cdir) {
            for e in rd.flatten() {
                if let Some(n) = e.file_name().to_str() {
                    all.insert(n.to_string());
                }
            }
        }
        for id in &all {
            self.remove_container(&rt, id);
        }
        for p in [&rt.shm, &rt.ipc_ns, &rt.uts_ns].into_iter().flatten() {
            if let Err(e) = self.parts.netns.release(p) {
                tracing::warn!(error = %e, path = %p.display(), "releasing a pod namespace");
            }
        }
        if !rt.host_network {
            let att = Self::attachment(&rt);
            let (cni, cache) = self.cni();
            let prev = cache.load(&self.network.name, &att).ok().flatten();
            if let Err(e) = cni.del(&self.network, &att, prev.as_ref()) {
                tracing::warn!(error = %e, "CNI DEL");
            }
            let _ = cache.remove(&self.network.name, &att);
            if let Err(e) = self.parts.netns.remove(&rt.netns) {
                tracing::warn!(error = %e, "removing the netns");
            }
        }
        let _ = std::fs::remove_dir_all(self.pod_dir(uid));
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
    }
}

/// `<rootfs>/etc/<name>` if it is a regular file reached without symlinks (an image must not
/// point the agent at a host file) and of a sane size.
fn image_etc_file(rootfs: &Path, name: &str) -> Option<String> {
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

/// Runs `cmd` in container `id` through its handler; whether it exited 0.
fn exec_ok(h: &Handler, id: &str, cmd: &[String]) -> bool {
    std::process::Command::new(&h.binary)
        .args(&h.options)
        .arg("--root")
        .arg(&h.root)
        .arg("exec")
        .arg(id)
        .args(cmd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|st| st.success())
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = Vec::new();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push(c.to_string());
        cur = c.source();
    }
    s.join(": ")
}

fn waiting_views(cs: &[Container], reason: &str, msg: Option<&str>) -> Vec<ContainerView> {
    cs.iter()
        .map(|c| ContainerView {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            image_id: String::new(),
            container_id: None,
            state: State::Waiting {
                reason: reason.into(),
                message: msg.map(String::from),
            },
            last: None,
            restart_count: 0,
            probe_ready: None,
        })
        .collect()
}

/// The API side.
pub struct Agent {
    client: Client,
    node: Node,
    sent: BTreeMap<String, Value>,
    endpoint_port: Option<u16>,
}

fn host_ipv4() -> Option<String> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    for a in addrs {
        if a.interface_name == "lo" || a.interface_name == "cni0" {
            continue;
        }
        if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
            let ip = sin.ip();
            if !ip.is_loopback() {
                return Some(ip.to_string());
            }
        }
    }
    None
}

fn node_cpu_millis() -> i64 {
    std::thread::available_parallelism().map_or(1000, |n| n.get() as i64 * 1000)
}

fn mem_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

impl Agent {
    /// Registers the node (creating it with the configured podCIDR if absent) and re-adopts
    /// pods from earlier runs.
    pub fn new(mut cfg: AgentConfig, parts: Parts) -> Result<Agent, AgentError> {
        let client = cfg.join.client()?;
        if cfg.node_ip.is_none() {
            cfg.node_ip = host_ipv4();
        }
        let path = format!("/api/v1/nodes/{}", cfg.node_name);
        let node = match client.get(&path) {
            Ok(n) => n,
            Err(e) if e.code() == Some(404) => client.create(
                "/api/v1/nodes",
                &json!({
                    "apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": cfg.node_name, "labels": {
                        "kubernetes.io/hostname": cfg.node_name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "beta.kubernetes.io/os": "linux",
                        "beta.kubernetes.io/arch": "amd64",
                    }},
                    "spec": {"podCIDR": cfg.pod_cidr, "podCIDRs": [cfg.pod_cidr]},
                }),
            )?,
            Err(e) => return Err(e.into()),
        };
        let cidr = node["spec"]["podCIDR"]
            .as_str()
            .unwrap_or(&cfg.pod_cidr)
            .to_string();
        let mut endpoint_port = None;
        if let Some(listen) = cfg.listen {
            // The API server proxies logs/exec with the cluster token, the one we hold.
            let token = client.token().to_string();
            let mut names = vec![
                "localhost".to_string(),
                "127.0.0.1".into(),
                cfg.node_name.clone(),
            ];
            names.extend(cfg.node_ip.clone());
            let ep = crate::endpoint::spawn(
                listen,
                names,
                crate::endpoint::Ctx {
                    token,
                    run_dir: cfg.run_dir.clone(),
                    log_dir: cfg.log_dir.clone(),
                    shim: cfg.shim.clone(),
                },
            )
            .map_err(|e| AgentError::Other(format!("{e}: {}", source_chain(&e))))?;
            let host = if ep.addr.ip().is_unspecified() {
                cfg.node_ip.clone().unwrap_or_else(|| "127.0.0.1".into())
            } else {
                ep.addr.ip().to_string()
            };
            endpoint_port = Some(ep.addr.port());
            client.merge_patch(
                &path,
                &json!({"metadata": {"annotations": {
                    "moat.io/agent-endpoint": format!("https://{host}:{}", ep.addr.port()),
                    "moat.io/agent-cert": ep.cert_pem,
                }}}),
            )?;
        }
        let mut node = Node::new(cfg, parts, &cidr)?;
        let vc = client.clone();
        node.volume_source = Some(Box::new(
            move |ns: &str, v: &k8s_openapi::api::core::v1::Volume| {
                let (path, optional) = match (&v.config_map, &v.secret) {
                    (Some(cm), _) => (
                        format!("/api/v1/namespaces/{ns}/configmaps/{}", cm.name),
                        cm.optional.unwrap_or(false),
                    ),
                    (_, Some(s)) => (
                        format!(
                            "/api/v1/namespaces/{ns}/secrets/{}",
                            s.secret_name.clone().unwrap_or_default()
                        ),
                        s.optional.unwrap_or(false),
                    ),
                    _ => return Ok(Vec::new()),
                };
                match vc.get(&path) {
                    Ok(obj) => volume_files(v, &obj),
                    Err(e) if e.code() == Some(404) && optional => Ok(Vec::new()),
                    Err(e) => Err(e.to_string()),
                }
            },
        ));
        let oc = client.clone();
        node.object_source = Some(Box::new(move |ns: &str, kind: &str, name: &str| {
            if !matches!(kind, "configmaps" | "secrets") {
                return Err(format!("cannot read {kind} for a container's env"));
            }
            // Object names are DNS subdomains; anything else must not shape the request path.
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            {
                return Err(format!("{kind} name {name:?} is not a valid object name"));
            }
            match oc.get(&format!("/api/v1/namespaces/{ns}/{kind}/{name}")) {
                Ok(obj) => Ok(Some(obj)),
                Err(e) if e.code() == Some(404) => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        }));
        let a = Agent {
            client,
            node,
            sent: BTreeMap::new(),
            endpoint_port,
        };
        a.heartbeat();
        Ok(a)
    }

    /// Node status (Ready) and the Lease in kube-node-lease.
    fn heartbeat(&self) {
        let cfg = &self.node.cfg;
        let now = now_rfc3339();
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let mem = format!("{}Ki", mem_kib());
        let mut addresses = vec![json!({"type": "Hostname", "address": cfg.node_name})];
        if let Some(ip) = &cfg.node_ip {
            addresses.insert(0, json!({"type": "InternalIP", "address": ip}));
        }
        let kernel = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let st = json!({"status": {
            "capacity": {"cpu": cpus.to_string(), "memory": mem, "pods": "110"},
            "allocatable": {"cpu": cpus.to_string(), "memory": mem, "pods": "110"},
            "addresses": addresses,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.endpoint_port.unwrap_or(0)}},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "moat agent is posting ready status",
                "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "nodeInfo": {"kubeletVersion": "v1.33.0-moat", "kubeProxyVersion": "",
                "containerRuntimeVersion": format!("moat://{}", cfg.handlers.default),
                "operatingSystem": "linux", "architecture": "amd64", "kernelVersion": kernel,
                "osImage": "moat", "machineID": "", "systemUUID": "", "bootID": ""},
        }});
        let p = format!("/api/v1/nodes/{}/status", cfg.node_name);
        if let Err(e) = self.client.merge_patch(&p, &st) {
            tracing::warn!(error = %e, "node status");
        }
        let micro = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let lp = format!(
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{}",
            cfg.node_name
        );
        let renew = json!({"spec": {"holderIdentity": cfg.node_name, "leaseDurationSeconds": 40, "renewTime": micro}});
        match self.client.merge_patch(&lp, &renew) {
            Ok(_) => {}
            Err(e) if e.code() == Some(404) => {
                let _ = self.client.create(
                    "/api/v1/namespaces",
                    &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-node-lease"}}),
                );
                let mut l = renew.clone();
                l["apiVersion"] = json!("coordination.k8s.io/v1");
                l["kind"] = json!("Lease");
                l["metadata"] = json!({"name": cfg.node_name, "namespace": "kube-node-lease"});
                if let Err(e) = self.client.create(
                    "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                    &l,
                ) {
                    tracing::warn!(error = %e, "creating the node lease");
                }
            }
            Err(e) => tracing::warn!(error = %e, "renewing the node lease"),
        }
    }

    fn handler_for(
        &self,
        pod: &Pod,
        classes: &mut BTreeMap<String, Result<String, String>>,
    ) -> Result<Handler, String> {
        let class = pod.spec.as_ref().and_then(|s| s.runtime_class_name.clone());
        let hname = match class {
            None => None,
            Some(c) => {
                let r = classes.entry(c.clone()).or_insert_with(|| {
                    match self
                        .client
                        .get(&format!("/apis/node.k8s.io/v1/runtimeclasses/{c}"))
                    {
                        Ok(rc) => rc["handler"]
                            .as_str()
                            .map(String::from)
                            .ok_or_else(|| format!("RuntimeClass {c} has no handler")),
                        Err(e) => Err(format!("RuntimeClass {c}: {e}")),
                    }
                });
                Some(r.clone()?)
            }
        };
        self.node
            .cfg
            .handlers
            .get(hname.as_deref())
            .cloned()
            .map_err(|e| e.to_string())
    }

    /// One level-triggered pass over the pods bound to this node.
    pub fn pass(&mut self) -> Result<(), AgentError> {
        let (items, _) = self.client.list(&format!(
            "/api/v1/pods?fieldSelector=spec.nodeName%3D{}",
            self.node.cfg.node_name
        ))?;
        let mut live = BTreeSet::new();
        let mut classes = BTreeMap::new();
        let mut work = Vec::new();
        for v in items {
            let Ok(pod) = serde_json::from_value::<Pod>(v) else {
                continue;
            };
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
            // A finished pod this node no longer holds (e.g. failed before its sandbox).
            if pod.metadata.deletion_timestamp.is_none()
                && matches!(phase.as_deref(), Some("Failed" | "Succeeded"))
                && !self.node.holds(&uid)
            {
                live.insert(uid);
                continue;
            }
            live.insert(uid.clone());
            let handler = self.handler_for(&pod, &mut classes);
            work.push((pod, handler));
        }
        // Pods are independent: sync them on a few threads so one slow start (or a grace
        // period running out) does not hold the others back.
        let n = work.len();
        let queue = std::sync::Mutex::new(work.into_iter());
        let results = std::sync::Mutex::new(Vec::with_capacity(n));
        let node = &self.node;
        std::thread::scope(|sc| {
            for _ in 0..n.clamp(1, 8) {
                sc.spawn(|| {
                    loop {
                        let next = queue.lock().unwrap_or_else(|p| p.into_inner()).next();
                        let Some((pod, handler)) = next else { break };
                        let out = node.sync(&pod, handler);
                        let m = &pod.metadata;
                        results.lock().unwrap_or_else(|p| p.into_inner()).push((
                            m.uid.clone().unwrap_or_default(),
                            m.namespace.clone().unwrap_or_default(),
                            m.name.clone().unwrap_or_default(),
                            out,
                        ));
                    }
                });
            }
        });
        for (uid, ns, name, out) in results.into_inner().unwrap_or_else(|p| p.into_inner()) {
            match out {
                Outcome::Removed => {
                    self.sent.remove(&uid);
                    // Cleanup is done: the object may go now.
                    if let Err(e) = self.client.delete(&format!(
                        "/api/v1/namespaces/{ns}/pods/{name}?gracePeriodSeconds=0"
                    )) {
                        tracing::warn!(pod = %name, error = %e, "finishing pod deletion");
                    }
                }
                Outcome::Status(st) => {
                    if self.sent.get(&uid) != Some(&st) {
                        let p = format!("/api/v1/namespaces/{ns}/pods/{name}/status");
                        match self.client.merge_patch(&p, &json!({"status": st})) {
                            Ok(_) => {
                                self.sent.insert(uid, st);
                            }
                            Err(e) => tracing::warn!(pod = %name, error = %e, "pod status"),
                        }
                    }
                }
            }
        }
        for uid in self.node.pod_uids() {
            if !live.contains(&uid) {
                self.node.teardown(&uid, 0);
                self.sent.remove(&uid);
            }
        }
        for (ns, name, uid, ty, reason, message) in self.node.take_events() {
            let ev = json!({
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"generateName": format!("{name}."), "namespace": ns},
                "involvedObject": {"kind": "Pod", "namespace": ns, "name": name, "uid": uid, "apiVersion": "v1"},
                "type": ty, "reason": reason, "message": message,
                "source": {"component": "moat-agent", "host": self.node.cfg.node_name},
                "firstTimestamp": now_rfc3339(), "lastTimestamp": now_rfc3339(), "count": 1,
            });
            if let Err(e) = self
                .client
                .create(&format!("/api/v1/namespaces/{ns}/events"), &ev)
            {
                tracing::debug!(error = %e, "posting an event");
            }
        }
        Ok(())
    }

    /// Runs until `stop` is asked: a pass on every watch event of this node's pods, at least
    /// once a second, a heartbeat every 10 s, log rotation checks. Stopping ends the loop
    /// after the current pass and leaves every pod running (as the kubelet does): their shims
    /// keep logs and exit codes, and the next agent re-adopts them from their records.
    pub fn run(mut self, stop: &Stop) {
        let (tx, rx) = mpsc::channel::<()>();
        stop.register(tx.clone());
        let wc = self.client.clone();
        let path = format!(
            "/api/v1/pods?fieldSelector=spec.nodeName%3D{}",
            self.node.cfg.node_name
        );
        let watch_stop = stop.clone();
        std::thread::spawn(move || {
            while !watch_stop.is_stopped() {
                let t = tx.clone();
                let _ = wc.watch(&path, "0", |_| {
                    let _ = t.send(());
                });
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        let mut last_hb = Instant::now();
        let mut last_rotation = Instant::now();
        while !stop.is_stopped() {
            if let Err(e) = self.pass() {
                tracing::warn!(error = %e, "agent pass");
            }
            if last_hb.elapsed() >= Duration::from_secs(10) {
                self.heartbeat();
                last_hb = Instant::now();
            }
            if last_rotation.elapsed() >= self.node.cfg.log_monitor_interval {
                self.node.rotate_logs();
                last_rotation = Instant::now();
            }
            let _ = rx.recv_timeout(Duration::from_secs(1));
            while rx.try_recv().is_ok() {}
        }
        tracing::info!(
            pods = self.node.pod_uids().len(),
            "node agent stopped; its pods keep running"
        );
    }
}

/// Asks a running [`Agent`] to stop after its current pass; cloneable, usable from a signal
/// handler's thread.
#[derive(Clone, Default)]
pub struct Stop(Arc<StopInner>);

#[derive(Default)]
struct StopInner {
    flag: std::sync::atomic::AtomicBool,
    wake: std::sync::Mutex<Vec<mpsc::Sender<()>>>,
}

impl Stop {
    pub fn new() -> Stop {
        Stop::default()
    }

    pub fn stop(&self) {
        self.0.flag.store(true, std::sync::atomic::Ordering::SeqCst);
        for w in self.0.wake.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = w.send(());
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.0.flag.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn register(&self, tx: mpsc::Sender<()>) {
        self.0
            .wake
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
    }
}

/// The real parts for `cfg`.
pub fn real_parts(cfg: &AgentConfig) -> Result<Parts, AgentError> {
    let store = moat_image::Store::open(&cfg.image_root)
        .map_err(|e| AgentError::Other(format!("opening the image store: {e}")))?;
    Ok(Parts {
        runtime: Arc::new(crate::runtime::OciRuntime {
            shim: cfg.shim.clone(),
        }),
        netns: Arc::new(sandbox::RealNetns),
        cni: Arc::new(moat_cni::RealExec {
            wrapper: Vec::new(),
        }),
        images: Arc::new(StoreImages {
            store,
            mounter: Box::new(moat_image::RealMounter),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::RecordingRuntime;
    use crate::sandbox::FakeNetns;
    use std::sync::Mutex;

    #[derive(Default)]
    struct FakeImages {
        calls: Mutex<Vec<String>>,
    }

    impl Images for FakeImages {
        fn resolve(
            &self,
            image: &str,
            _p: Option<&str>,
        ) -> Result<(ImageDefaults, String), String> {
            if image == "missing" {
                return Err("image missing is not present on the node".into());
            }
            Ok((
                ImageDefaults {
                    cmd: Some(vec!["sh".into()]),
                    ..Default::default()
                },
                "sha256:abc".into(),
            ))
        }
        fn prepare(&self, image: &str, id: &str, _t: &Path) -> Result<(), String> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("prepare {image} {id}"));
            Ok(())
        }
        fn release(&self, id: &str, _t: &Path) -> Result<(), String> {
            self.calls.lock().unwrap().push(format!("release {id}"));
            Ok(())
        }
    }

    struct Fx {
        dir: tempfile::TempDir,
        rt: Arc<RecordingRuntime>,
        netns: Arc<FakeNetns>,
        cni: Arc<moat_cni::FakeExec>,
    }

    const RESULT: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"10.42.0.9/24","gateway":"10.42.0.1","interface":0}]}"#;

    impl Fx {
        fn new() -> Fx {
            let dir = tempfile::tempdir().unwrap();
            let bin = dir.path().join("cni-bin");
            std::fs::create_dir_all(&bin).unwrap();
            for p in ["bridge", "portmap"] {
                std::fs::write(bin.join(p), b"").unwrap();
            }
            Fx {
                dir,
                rt: Arc::new(RecordingRuntime::default()),
                netns: Arc::new(FakeNetns::default()),
                cni: Arc::new(moat_cni::FakeExec::default()),
            }
        }

        fn node(&self) -> Node {
            let run = self.dir.path().join("run");
            let cfg = AgentConfig {
                node_name: "n1".into(),
                join: Join::Kubeconfig(PathBuf::new()),
                run_dir: run.clone(),
                log_dir: self.dir.path().join("logs"),
                image_root: PathBuf::new(),
                cni_conf_dir: None,
                cni_bin_dirs: vec![self.dir.path().join("cni-bin")],
                pod_cidr: "10.42.0.0/24".into(),
                handlers: Handlers::defaults(&run),
                shim: Vec::new(),
                node_ip: Some("192.0.2.10".into()),
                listen: None,
                log_policy: crate::logrotate::Policy::new(16, 3).unwrap(),
                log_monitor_interval: Duration::from_secs(10),
            };
            let parts = Parts {
                runtime: self.rt.clone(),
                netns: self.netns.clone(),
                cni: self.cni.clone(),
                images: Arc::new(FakeImages::default()),
            };
            Node::new(cfg, parts, "10.42.0.0/24").unwrap()
        }

        /// bridge and portmap ADD answers.
        fn cni_reply(&self) {
            let mut r = self.cni.replies.lock().unwrap();
            r.push((true, RESULT.as_bytes().to_vec()));
            r.push((true, RESULT.as_bytes().to_vec()));
        }
    }

    fn pod(policy: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u-1"},
            "spec": {"nodeName": "n1", "restartPolicy": policy,
                "containers": [{"name": "c", "image": "busybox", "command": ["httpd", "-f"]}]},
        }))
        .unwrap()
    }

    fn status(o: Outcome) -> Value {
        match o {
            Outcome::Status(s) => s,
            Outcome::Removed => panic!("removed"),
        }
    }

    fn runc(n: &Node) -> Handler {
        n.cfg.handlers.get(None).unwrap().clone()
    }

    #[test]
    fn pod_runs_restarts_with_backoff_and_tears_down_completely() {
        let fx = Fx::new();
        fx.cni_reply();
        let n = fx.node();
        let p = pod("Always");
        let s = status(n.sync(&p, Ok(runc(&n))));
        assert_eq!(s["phase"], "Running", "{s}");
        assert_eq!(s["podIP"], "10.42.0.9");
        assert_eq!(s["containerStatuses"][0]["containerID"], "runc://u-1-c-0");
        let calls = fx.rt.calls();
        assert!(
            calls.iter().any(|c| c.starts_with("runc create u-1-c-0 ")),
            "{calls:?}"
        );
        assert!(calls.contains(&"runc start u-1-c-0".to_string()));
        let cni_cmds: Vec<String> = fx
            .cni
            .calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| {
                format!(
                    "{} {}",
                    c.env["CNI_COMMAND"],
                    c.plugin.file_name().unwrap().to_string_lossy()
                )
            })
            .collect();
        assert_eq!(cni_cmds, ["ADD bridge", "ADD portmap"]);
        // The bundle's config.json is what bundle::spec produced, joined to the pod netns.
        let cfg: Value = serde_json::from_slice(
            &std::fs::read(
                fx.dir
                    .path()
                    .join("run/pods/u-1/containers/u-1-c-0/config.json"),
            )
            .unwrap(),
        )
        .unwrap();
        let netns = fx.dir.path().join("run/netns/u-1");
        let pod_ns = |t: &str| fx.dir.path().join(format!("run/pods/u-1/ns-{t}"));
        let nss = cfg["linux"]["namespaces"].as_array().unwrap();
        assert!(nss.contains(&json!({"type": "network", "path": netns})));
        assert!(nss.contains(&json!({"type": "ipc", "path": pod_ns("ipc")})));
        assert!(nss.contains(&json!({"type": "uts", "path": pod_ns("uts")})));

        // Exit 1: CrashLoopBackOff, old container removed, no immediate restart.
        fx.rt.exit("u-1-c-0", 1);
        let s = status(n.sync(&p, Ok(runc(&n))));
        let cs = &s["containerStatuses"][0];
        assert_eq!(cs["state"]["waiting"]["reason"], "CrashLoopBackOff", "{s}");
        assert_eq!(cs["lastState"]["terminated"]["exitCode"], 1);
        assert_eq!(s["phase"], "Running");
        assert!(fx.rt.calls().contains(&"runc delete u-1-c-0".to_string()));
        let before = fx.rt.calls().len();
        let _ = n.sync(&p, Ok(runc(&n)));
        assert!(!fx.rt.calls()[before..].iter().any(|c| c.contains("create")));

        // A restarted agent re-adopts the pod from its state file: no second sandbox.
        drop(n);
        let n = fx.node();
        assert_eq!(n.pod_uids().len(), 1);
        let _ = n.sync(&p, Ok(runc(&n)));
        let pod_dir = fx.dir.path().join("run/pods/u-1");
        assert_eq!(
            *fx.netns.calls.lock().unwrap(),
            [
                format!("create {}", netns.display()),
                format!(
                    "ipc-uts {} {} web",
                    pod_dir.join("ns-ipc").display(),
                    pod_dir.join("ns-uts").display()
                ),
                format!("shm {}", pod_dir.join("shm").display()),
            ],
            "one sandbox: network, IPC and UTS namespaces and /dev/shm, made once"
        );

        // Deletion: everything goes, its logs too.
        let logs = fx.dir.path().join("logs/default_web_u-1");
        std::fs::create_dir_all(logs.join("c")).unwrap();
        std::fs::write(logs.join("c/0.log"), "T stdout F x\n").unwrap();
        let mut dv = serde_json::to_value(&p).unwrap();
        dv["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        dv["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        let del: Pod = serde_json::from_value(dv).unwrap();
        assert!(matches!(n.sync(&del, Ok(runc(&n))), Outcome::Removed));
        assert!(!fx.dir.path().join("run/pods/u-1").exists());
        assert!(!logs.exists());
        let ns_calls = fx.netns.calls.lock().unwrap().clone();
        assert_eq!(
            ns_calls[3..],
            [
                format!("release {}", pod_dir.join("shm").display()),
                format!("release {}", pod_dir.join("ns-ipc").display()),
                format!("release {}", pod_dir.join("ns-uts").display()),
                format!("remove {}", netns.display()),
            ]
        );
        let last_cni = fx.cni.calls.lock().unwrap().last().unwrap().env["CNI_COMMAND"].clone();
        assert_eq!(last_cni, "DEL");
    }

    #[test]
    fn logs_of_running_containers_rotate_past_the_max_size() {
        let fx = Fx::new();
        fx.cni_reply();
        let n = fx.node();
        let p = pod("Always");
        let _ = n.sync(&p, Ok(runc(&n)));
        let log = n.log_path("default", "web", "u-1", "c", 0);
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        std::fs::write(&log, "T stdout F sm\n").unwrap();
        n.rotate_logs();
        let count = || std::fs::read_dir(log.parent().unwrap()).unwrap().count();
        assert_eq!(count(), 1, "14 bytes are under the 16-byte limit");
        std::fs::write(&log, "T stdout F larger than that\n").unwrap();
        n.rotate_logs();
        let names: Vec<String> = std::fs::read_dir(log.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.iter().any(|n| n.starts_with("0.log.2")), "{names:?}");
        assert_eq!(std::fs::read(&log).unwrap(), b"");
        // A stopped container's log is left alone.
        fx.rt.exit("u-1-c-0", 1);
        let _ = n.sync(&p, Ok(runc(&n)));
        std::fs::write(&log, "T stdout F larger than that\n").unwrap();
        n.rotate_logs();
        assert_eq!(count(), 2);
    }

    #[test]
    fn image_user_files_are_read_without_following_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/passwd"), "app:x:7:7::/:/bin/sh\n").unwrap();
        std::fs::write(d.path().join("host-secret"), "root:secret\n").unwrap();
        std::os::unix::fs::symlink(d.path().join("host-secret"), root.join("etc/group")).unwrap();
        assert_eq!(
            image_etc_file(&root, "passwd").as_deref(),
            Some("app:x:7:7::/:/bin/sh\n")
        );
        assert_eq!(
            image_etc_file(&root, "group"),
            None,
            "a symlink out of the image"
        );
        assert_eq!(image_etc_file(&root, "shadow"), None);
        let linked = d.path().join("linked");
        std::fs::create_dir_all(&linked).unwrap();
        std::os::unix::fs::symlink(root.join("etc"), linked.join("etc")).unwrap();
        assert_eq!(image_etc_file(&linked, "passwd"), None, "a symlinked /etc");
    }

    #[test]
    fn failing_liveness_probe_kills_and_the_policy_restarts() {
        let fx = Fx::new();
        fx.cni_reply();
        let n = fx.node();
        let mut v = serde_json::to_value(pod("Always")).unwrap();
        // Execs in a container the fake runtime never made always fail.
        v["spec"]["containers"][0]["livenessProbe"] =
            json!({"exec": {"command": ["true"]}, "failureThreshold": 1});
        let p: Pod = serde_json::from_value(v).unwrap();
        let _ = n.sync(&p, Ok(runc(&n)));
        assert!(
            fx.rt
                .calls()
                .contains(&"runc kill u-1-c-0 SIGKILL".to_string()),
            "{:?}",
            fx.rt.calls()
        );
        assert!(n.take_events().iter().any(|e| e.4 == "Unhealthy"));
        let s = status(n.sync(&p, Ok(runc(&n))));
        let cs = &s["containerStatuses"][0];
        assert_eq!(cs["lastState"]["terminated"]["exitCode"], 137, "{s}");
        assert_eq!(cs["state"]["waiting"]["reason"], "CrashLoopBackOff");
    }

    fn with_init(policy: &str) -> Pod {
        let mut v = serde_json::to_value(pod(policy)).unwrap();
        v["spec"]["initContainers"] =
            json!([{"name": "i1", "image": "busybox", "command": ["true"]}]);
        serde_json::from_value(v).unwrap()
    }

    fn condition(s: &Value, t: &str) -> Value {
        s["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == t))
            .map(|c| c["status"].clone())
            .unwrap_or(Value::Null)
    }

    #[test]
    fn init_containers_run_to_success_before_the_app_containers() {
        let fx = Fx::new();
        fx.cni_reply();
        let n = fx.node();
        let p = with_init("Always");
        let s = status(n.sync(&p, Ok(runc(&n))));
        assert_eq!(s["phase"], "Pending", "{s}");
        assert_eq!(condition(&s, "Initialized"), "False");
        assert!(
            s["initContainerStatuses"][0]["state"]["running"].is_object(),
            "{s}"
        );
        assert_eq!(
            s["containerStatuses"][0]["state"]["waiting"]["reason"],
            "PodInitializing"
        );
        assert!(!fx.rt.calls().iter().any(|c| c.contains("create u-1-c-")));
        fx.rt.exit("u-1-i1-0", 0);
        let s = status(n.sync(&p, Ok(runc(&n))));
        assert_eq!(s["phase"], "Running", "{s}");
        assert_eq!(condition(&s, "Initialized"), "True");
        assert_eq!(
            s["initContainerStatuses"][0]["state"]["terminated"]["reason"],
            "Completed"
        );
        assert!(fx.rt.calls().iter().any(|c| c.contains("create u-1-c-0")));
    }

    #[test]
    fn a_failed_init_container_fails_a_never_restart_pod() {
        let fx = Fx::new();
        fx.cni_reply();
        let n = fx.node();
        let p = with_init("Never");
        status(n.sync(&p, Ok(runc(&n))));
        fx.rt.exit("u-1-i1-0", 2);
        let s = status(n.sync(&p, Ok(runc(&n))));
        assert_eq!(s["phase"], "Failed", "{s}");
        assert_eq!(
            s["initContainerStatuses"][0]["state"]["terminated"]["exitCode"],
            2
        );
        assert!(!fx.rt.calls().iter().any(|c| c.contains("create u-1-c-")));
    }

    #[test]
    fn configmap_and_secret_volume_files() {
        let vol =
            |v: Value| -> k8s_openapi::api::core::v1::Volume { serde_json::from_value(v).unwrap() };
        let cm = vol(json!({"name": "c", "configMap": {"name": "x"}}));
        let files = volume_files(
            &cm,
            &json!({"data": {"a": "1", "b": "2"}, "binaryData": {"c": "Mw=="}}),
        )
        .unwrap();
        assert_eq!(
            files,
            [
                ("a".into(), b"1".to_vec()),
                ("b".into(), b"2".to_vec()),
                ("c".into(), b"3".to_vec())
            ]
        );
        let sec = vol(
            json!({"name": "s", "secret": {"secretName": "x", "items": [{"key": "t", "path": "dir/tok"}]}}),
        );
        let files = volume_files(&sec, &json!({"data": {"t": "c2VjcmV0", "u": "eA=="}})).unwrap();
        assert_eq!(files, [("dir/tok".into(), b"secret".to_vec())]);
        let bad = vol(
            json!({"name": "s", "configMap": {"name": "x", "items": [{"key": "a", "path": "../../etc/x"}]}}),
        );
        assert!(volume_files(&bad, &json!({"data": {"a": "1"}})).is_err());
        let missing = vol(
            json!({"name": "s", "configMap": {"name": "x", "items": [{"key": "zz", "path": "z"}]}}),
        );
        assert!(volume_files(&missing, &json!({"data": {}})).is_err());
    }

    #[test]
    fn restart_policy_never_leaves_a_finished_pod() {
        let fx = Fx::new();
        fx.cni_reply();
        let n = fx.node();
        let p = pod("Never");
        status(n.sync(&p, Ok(runc(&n))));
        fx.rt.exit("u-1-c-0", 0);
        let s = status(n.sync(&p, Ok(runc(&n))));
        assert_eq!(s["phase"], "Succeeded", "{s}");
        assert_eq!(
            s["containerStatuses"][0]["state"]["terminated"]["reason"],
            "Completed"
        );
    }

    #[test]
    fn runtime_class_handler_is_used_and_failures_are_reported() {
        let fx = Fx::new();
        fx.cni_reply();
        fx.rt
            .fail_create
            .lock()
            .unwrap()
            .insert("crun".into(), "cgroups in hybrid mode not supported".into());
        let n = fx.node();
        let crun = n.cfg.handlers.get(Some("crun")).unwrap().clone();
        let s = status(n.sync(&pod("Always"), Ok(crun)));
        let w = &s["containerStatuses"][0]["state"]["waiting"];
        assert_eq!(w["reason"], "CreateContainerError", "{s}");
        assert!(w["message"].as_str().unwrap().contains("hybrid"), "{s}");
        assert!(fx.rt.calls().iter().any(|c| c.starts_with("crun create")));
        assert!(n.take_events().iter().any(|e| e.5.contains("hybrid")));

        let fx = Fx::new();
        let n = fx.node();
        let s = status(n.sync(&pod("Always"), Err("no runtime handler \"kata\"".into())));
        assert_eq!(s["phase"], "Failed");
        assert_eq!(s["reason"], "RuntimeHandlerNotFound");
        assert!(fx.rt.calls().is_empty());
        assert!(fx.netns.calls.lock().unwrap().is_empty());
    }
}

//! The agent's configuration and how it reaches the API server.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use moat_client::{Client, ClientError, ServerTrust};

use crate::handlers::Handlers;
use crate::hooks::ClusterDns;

/// How the agent reaches the API server.
#[derive(Debug, Clone)]
pub enum Join {
    /// A kubeconfig file (server URL, CA, token), like `moat server` writes.
    Kubeconfig(PathBuf),
    /// `--server URL --token T` with the CA (or no verification) as given.
    Server {
        url: String,
        token: String,
        trust: ServerTrust,
    },
}

impl Join {
    pub fn client(&self) -> Result<Client, ClientError> {
        match self {
            Join::Kubeconfig(p) => Client::from_kubeconfig(p),
            Join::Server { url, token, trust } => Client::connect(url, token, trust.clone()),
        }
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
    /// The podCIDR to register the Node with; `None`: wait for the server's node IPAM to
    /// assign one (as the kubelet does).
    pub pod_cidr: Option<String>,
    /// The cgroup under which pods' cgroups are made (`/moat`; one per node when several
    /// nodes share a host).
    pub cgroup_parent: String,
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
    /// Reported capacity instead of the host's (for nodes that share a host).
    pub node_cpu_millis: Option<i64>,
    pub node_memory_bytes: Option<i64>,
    /// Cluster DNS for pods' resolv.conf (`None`: the node's resolvers).
    pub cluster_dns: Option<ClusterDns>,
    /// Annotations the Node is (re-)registered with: the agent's endpoint and the pod
    /// network's, so a Node object deleted and re-created by the heartbeat is whole again.
    pub node_annotations: std::collections::BTreeMap<String, String>,
    /// Loops not to run (`heartbeat`, `logrotate`; like k3s's `--disable`).
    pub disabled_loops: BTreeSet<String>,
}

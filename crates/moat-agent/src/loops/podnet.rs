//! The pod-network loop (flannel's job, as k3s embeds it): before the pods loop starts, the
//! node waits for its podCIDR, reads the cluster's backend from flannel's `net-conf.json`
//! ConfigMap, sets up forwarding, `flannel.1` and masquerade, writes `subnet.env`, renders
//! the CNI config and publishes flannel's Node annotations; then the loop keeps every other
//! node's routes, neighbours and FDB entries in line with the Node list (watch-fed), and
//! reports, with an event on the peer's Node and a log line, a peer it cannot reach.
//! The planning lives in `moat-podnet`; this module only moves data between it and the API.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use moat_client::{Api, ClientError, EventRecorder, ObjectRef, Reflector};
use moat_cni::NetworkList;
use moat_hostnet::Iproute2;
use moat_nft::Nft;
use moat_podnet::conf::{CONFIGMAP_KEY, CONFIGMAP_NAME, CONFIGMAP_NAMESPACE};
use moat_podnet::{Backend, ConfError, NetConf, NodeNet, PodNet, PodNetError};
use serde_json::json;

use crate::config::AgentConfig;
use crate::supervisor::{LoopError, Stop};

pub type RealPodNet = PodNet<Iproute2>;

#[derive(Debug, thiserror::Error)]
pub enum PodnetSetupError {
    #[error(
        "reading the cluster network configuration (ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME})"
    )]
    ReadConf(#[source] ClientError),
    #[error(
        "the cluster network configuration (ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME}) is invalid"
    )]
    Conf(#[source] ConfError),
    #[error("node {node}: podCIDR")]
    BadPodCidr {
        node: String,
        #[source]
        source: moat_api::cidr::CidrError,
    },
    #[error("node {node}: podCIDR {subnet} is outside the cluster CIDR {network}")]
    Outside {
        node: String,
        subnet: Ipv4Net,
        network: Ipv4Net,
    },
    #[error("setting up the pod network")]
    Setup(#[source] PodNetError),
    #[error("publishing the pod network's Node annotations")]
    Annotate(#[source] ClientError),
    #[error("encoding the CNI config")]
    Conflist(#[source] moat_cni::CniError),
}

/// Reads flannel's `net-conf.json`; `None` when the server publishes none (a standalone agent
/// with `--pod-cidr` and the plain bridge network).
pub fn read_conf(api: &dyn Api) -> Result<Option<NetConf>, PodnetSetupError> {
    let path = format!("/api/v1/namespaces/{CONFIGMAP_NAMESPACE}/configmaps/{CONFIGMAP_NAME}");
    match api.get(&path) {
        Ok(cm) => match cm["data"][CONFIGMAP_KEY].as_str() {
            Some(text) => NetConf::from_json(text)
                .map(Some)
                .map_err(PodnetSetupError::Conf),
            None => Err(PodnetSetupError::Conf(ConfError::NetConf(format!(
                "no {CONFIGMAP_KEY} key"
            )))),
        },
        Err(e) if e.code() == Some(404) => Ok(None),
        Err(e) => Err(PodnetSetupError::ReadConf(e)),
    }
}

/// The node's network, ready before the first pod: the CNI config pods get when no user
/// config is installed, and the pod network to reconcile (`None`: nothing to program).
pub struct Prepared {
    pub default_network: NetworkList,
    pub podnet: Option<Arc<RealPodNet>>,
    /// The cluster's network configuration, if the server publishes one.
    pub net_conf: Option<NetConf>,
}

/// Where `subnet.env` goes: flannel's `/run/flannel/subnet.env` for the default run dir (a
/// host node), else under the node's run dir (a `moat cluster` node).
pub fn subnet_env_path(cfg: &AgentConfig) -> PathBuf {
    if cfg.run_dir == std::path::Path::new("/run/moat/agent") {
        PathBuf::from("/run/flannel/subnet.env")
    } else {
        cfg.run_dir.join("flannel/subnet.env")
    }
}

/// The subnet an earlier run of this node wrote to `subnet.env`, if any.
pub fn previous_subnet(cfg: &AgentConfig) -> Option<String> {
    let text = std::fs::read_to_string(subnet_env_path(cfg)).ok()?;
    let gw: Ipv4Net = text
        .lines()
        .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))?
        .trim()
        .parse()
        .ok()?;
    Some(gw.trunc().to_string())
}

pub fn prepare(api: &dyn Api, cfg: &AgentConfig, cidr: &str) -> Result<Prepared, PodnetSetupError> {
    let ipam_dir = cfg.run_dir.join("cni/networks");
    let legacy = || NetworkList::moat_default(cidr, Some(&ipam_dir));
    let Some(conf) = read_conf(api)? else {
        return Ok(Prepared {
            default_network: legacy(),
            podnet: None,
            net_conf: None,
        });
    };
    let subnet: Ipv4Net =
        moat_api::cidr::parse_network(cidr).map_err(|source| PodnetSetupError::BadPodCidr {
            node: cfg.node_name.clone(),
            source,
        })?;
    if !conf.network.contains(&subnet) {
        return Err(PodnetSetupError::Outside {
            node: cfg.node_name.clone(),
            subnet,
            network: conf.network,
        });
    }
    let ip: Option<Ipv4Addr> = cfg.node_ip.as_deref().and_then(|i| i.parse().ok());
    let (Some(ip), true) = (ip, conf.backend != Backend::None) else {
        if conf.backend != Backend::None {
            tracing::warn!(
                node = %cfg.node_name,
                "the node has no address (--node-ip): pods reach this node only, no routes to other nodes"
            );
        }
        return Ok(Prepared {
            default_network: legacy(),
            podnet: None,
            net_conf: Some(conf),
        });
    };
    let pn = PodNet::setup(
        Iproute2,
        &Nft::default(),
        conf.clone(),
        &cfg.node_name,
        subnet,
        ip,
    )
    .map_err(PodnetSetupError::Setup)?;
    pn.write_subnet_env(&subnet_env_path(cfg))
        .map_err(PodnetSetupError::Setup)?;
    api.merge_patch(
        &format!("/api/v1/nodes/{}", cfg.node_name),
        &json!({"metadata": {"annotations": pn.annotations()}}),
    )
    .map_err(PodnetSetupError::Annotate)?;
    let list = moat_podnet::render::conflist(subnet, pn.mtu(), Some(&ipam_dir));
    let default_network = NetworkList::parse(list.to_string().as_bytes(), &ipam_dir)
        .map_err(PodnetSetupError::Conflist)?;
    tracing::info!(
        node = %cfg.node_name, %subnet, backend = %pn.conf().backend, mtu = pn.mtu(),
        vtep_mac = ?pn.vtep_mac(), "pod network ready"
    );
    Ok(Prepared {
        default_network,
        podnet: Some(Arc::new(pn)),
        net_conf: Some(conf),
    })
}

pub struct PodnetLoop {
    pub api: Arc<dyn Api>,
    pub podnet: Arc<RealPodNet>,
    pub events: EventRecorder,
}

/// A resync even without a watch event, so drift (a route someone deleted) is repaired.
const RESYNC: Duration = Duration::from_secs(30);

impl PodnetLoop {
    pub fn run(&self, stop: &Stop) -> Result<(), LoopError> {
        let (wake_tx, wake) = mpsc::channel::<()>();
        stop.register(wake_tx.clone());
        let nodes = Reflector::spawn(self.api.clone(), "/api/v1/nodes", vec![wake_tx]);
        let mut reported: BTreeSet<String> = BTreeSet::new();
        let mut last = Instant::now() - RESYNC;
        while !stop.is_stopped() {
            if nodes.synced() {
                let snapshot = nodes.snapshot();
                let list: Vec<NodeNet> = nodes.items::<Node>().iter().map(NodeNet::of).collect();
                match self.podnet.reconcile(&list) {
                    Ok(r) => {
                        for op in &r.applied {
                            tracing::info!(%op, "pod network");
                        }
                        for (op, e) in &r.failed {
                            tracing::warn!(%op, error = %e, "pod network: the kernel refused a change; retrying");
                        }
                        let now: BTreeSet<String> =
                            r.problems.iter().map(ToString::to_string).collect();
                        for p in &r.problems {
                            let text = p.to_string();
                            if reported.contains(&text) {
                                continue;
                            }
                            tracing::warn!(peer = p.node(), "{text}");
                            let obj = snapshot
                                .iter()
                                .find(|v| v["metadata"]["name"] == p.node())
                                .map(|v| ObjectRef {
                                    api_version: "v1".into(),
                                    kind: "Node".into(),
                                    namespace: "default".into(),
                                    ..ObjectRef::of(v)
                                });
                            if let Some(obj) = obj {
                                self.events.record(&obj, "Warning", p.reason(), &text);
                            }
                        }
                        reported = now;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "pod network: reading the kernel's tables")
                    }
                }
                last = Instant::now();
            }
            let wait = RESYNC
                .saturating_sub(last.elapsed())
                .max(Duration::from_millis(50));
            let _ = wake.recv_timeout(if nodes.synced() {
                wait
            } else {
                Duration::from_millis(200)
            });
            // Coalesce a burst of watch events into one pass.
            while wake.try_recv().is_ok() {}
        }
        nodes.stop();
        Ok(())
    }
}

//! The agent: registers the node, starts its HTTPS endpoint, and runs its loops under the
//! [`Supervisor`]: `pods` (one worker per pod), `heartbeat`, `logrotate`, `podnet`, `proxy`, `dns`, `netpol`.

use std::sync::Arc;

use moat_client::{Api, EventRecorder};
use serde_json::json;

use crate::hooks::NoHooks;
use crate::hostinfo::RealHost;
use crate::loops::dns::DnsLoop;
use crate::loops::heartbeat::{self, HeartbeatLoop, RegisterError};
use crate::loops::logrotate::LogRotateLoop;
use crate::loops::netpol::{Netpol, NetpolHooks, NetpolLoop};
use crate::loops::podnet::{self, PodnetLoop, PodnetSetupError, RealPodNet};
use crate::loops::pods::PodsLoop;
use crate::loops::proxy::ProxyLoop;
use crate::node::{Node, SandboxError};
use crate::volumes::ApiObjects;

pub use crate::config::{AgentConfig, Join};
pub use crate::node::Parts;
pub use crate::podstate::{PodRecord, find_pod, records};
pub use crate::supervisor::{Health, Stop, Supervisor};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("API client")]
    Client(#[from] moat_client::ClientError),
    #[error("node registration")]
    Register(#[from] RegisterError),
    #[error("the agent's HTTPS endpoint")]
    Endpoint(#[from] crate::endpoint::EndpointError),
    #[error("setting up the node")]
    Node(#[from] SandboxError),
    #[error("the node's pod network")]
    Podnet(#[from] PodnetSetupError),
    #[error("opening the image store")]
    Images(#[source] moat_image::StoreError),
}

impl AgentError {
    /// Whether joining may work on a later try: the server not answering yet, or the node
    /// still waiting for its podCIDR. A refused credential, an untrusted certificate or bad
    /// configuration is not: those fail loudly at once.
    pub fn is_transient(&self) -> bool {
        let mut text = String::new();
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(self);
        let mut client: Option<&moat_client::ClientError> = None;
        while let Some(e) = cur {
            text.push_str(&e.to_string().to_lowercase());
            text.push(' ');
            if client.is_none() {
                client = e.downcast_ref::<moat_client::ClientError>();
            }
            cur = e.source();
        }
        if matches!(self, AgentError::Register(RegisterError::NoPodCidr { .. })) {
            return true;
        }
        match client {
            Some(c) => match c.code() {
                Some(code) => code >= 500 || code == 429,
                None => !text.contains("certificate") && !text.contains("kubeconfig"),
            },
            None => false,
        }
    }
}

/// The loop names `--disable-loop` accepts.
pub const LOOPS: [&str; 7] = [
    "pods",
    "heartbeat",
    "logrotate",
    "podnet",
    "proxy",
    "dns",
    "netpol",
];

/// How long a new node waits for the server's node IPAM to give it a podCIDR.
const POD_CIDR_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

pub struct Agent {
    api: Arc<dyn Api>,
    node: Arc<Node>,
    endpoint_port: Option<u16>,
    events: EventRecorder,
    podnet: Option<Arc<RealPodNet>>,
    cluster_cidr: String,
    netpol: Option<Arc<Netpol>>,
}

impl Agent {
    /// Registers the node (creating it with the configured podCIDR if absent), starts the
    /// endpoint and sends a first heartbeat.
    pub fn new(mut cfg: AgentConfig, mut parts: Parts) -> Result<Agent, AgentError> {
        let client = cfg.join.client()?;
        if cfg.node_ip.is_none() {
            cfg.node_ip = parts.host.ipv4();
        }
        let api: Arc<dyn Api> = Arc::new(client.clone());
        if cfg.pod_cidr.is_none() {
            // As flannel keeps its lease: a node whose Node object was deleted comes back
            // with the subnet its running pods are on.
            cfg.pod_cidr = podnet::previous_subnet(&cfg);
        }
        let cidr = match heartbeat::register(api.as_ref(), &cfg)? {
            Some(c) => c,
            None => heartbeat::wait_pod_cidr(api.as_ref(), &cfg, POD_CIDR_WAIT)?,
        };
        // The pod network is ready (routes aside, which its loop keeps) before any pod starts.
        let prepared = podnet::prepare(api.as_ref(), &cfg, &cidr)?;
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
            )?;
            let host = if ep.addr.ip().is_unspecified() {
                cfg.node_ip.clone().unwrap_or_else(|| "127.0.0.1".into())
            } else {
                ep.addr.ip().to_string()
            };
            endpoint_port = Some(ep.addr.port());
            cfg.node_annotations.insert(
                moat_api::annotations::AGENT_ENDPOINT.into(),
                format!("https://{host}:{}", ep.addr.port()),
            );
            cfg.node_annotations.insert(
                moat_api::annotations::AGENT_CERT.into(),
                ep.cert_pem.clone(),
            );
            api.merge_patch(
                &format!("/api/v1/nodes/{}", cfg.node_name),
                &json!({"metadata": {"annotations": cfg.node_annotations}}),
            )?;
        }
        parts.objects = Some(Arc::new(ApiObjects(api.clone())));
        let events = EventRecorder::spawn(api.clone(), "moat-agent", Some(&cfg.node_name));
        if let Some(pn) = &prepared.podnet {
            cfg.node_annotations.extend(pn.annotations());
        }
        let cluster_cidr = prepared
            .net_conf
            .as_ref()
            .map_or_else(|| "10.42.0.0/16".to_string(), |c| c.network.to_string());
        // NetworkPolicy programs each new pod from the lifecycle, before its first container.
        let netpol = (!cfg.disabled_loops.contains("netpol")).then(|| {
            // The node's own addresses toward its pods: its InternalIP, the bridge gateway
            // (.1, probes come from it) and the vxlan device's (.0).
            let mut node_addrs: Vec<std::net::Ipv4Addr> =
                cfg.node_ip.iter().filter_map(|i| i.parse().ok()).collect();
            if let Ok(net) = cidr.parse::<ipnet::Ipv4Net>() {
                node_addrs.push(net.network());
                node_addrs.push(moat_podnet::render::gateway(net));
            }
            Netpol::new(
                api.clone(),
                &cfg.node_name,
                node_addrs,
                events.with_component("moat-netpol"),
            )
        });
        if let Some(np) = &netpol {
            parts.hooks = Arc::new(NetpolHooks(np.clone()));
        }
        cfg.pod_cidr = Some(cidr);
        let node = Arc::new(Node::new(cfg, parts, prepared.default_network)?);
        if let Err(e) = heartbeat::beat(
            api.as_ref(),
            &node.cfg,
            node.parts.host.as_ref(),
            endpoint_port,
        ) {
            tracing::warn!(error = %e, "first node heartbeat");
        }
        Ok(Agent {
            api,
            node,
            endpoint_port,
            events,
            podnet: prepared.podnet,
            cluster_cidr,
            netpol,
        })
    }

    /// The loops this agent runs (all but the disabled ones).
    pub fn supervisor(&self) -> Supervisor {
        let mut s = Supervisor::default();
        let off = &self.node.cfg.disabled_loops;
        if !off.contains("pods") {
            let l = PodsLoop {
                node: self.node.clone(),
                api: self.api.clone(),
                events: self.events.clone(),
            };
            s.add("pods", Box::new(move |stop: &Stop| l.run(stop)));
        }
        if !off.contains("heartbeat") {
            let l = HeartbeatLoop {
                api: self.api.clone(),
                cfg: self.node.cfg.clone(),
                host: self.node.parts.host.clone(),
                endpoint_port: self.endpoint_port,
            };
            s.add("heartbeat", Box::new(move |stop: &Stop| l.run(stop)));
        }
        if let (false, Some(pn)) = (off.contains("podnet"), &self.podnet) {
            let l = PodnetLoop {
                api: self.api.clone(),
                podnet: pn.clone(),
                events: self.events.with_component("moat-podnet"),
            };
            s.add("podnet", Box::new(move |stop: &Stop| l.run(stop)));
        }
        let dns_ip: Option<std::net::Ipv4Addr> = self
            .node
            .cfg
            .cluster_dns
            .as_ref()
            .and_then(|d| d.servers.first())
            .and_then(|s| s.parse().ok());
        if !off.contains("proxy") {
            let l = ProxyLoop {
                api: self.api.clone(),
                node_name: self.node.cfg.node_name.clone(),
                node_ips: self
                    .node
                    .cfg
                    .node_ip
                    .iter()
                    .filter_map(|i| i.parse().ok())
                    .collect(),
                cluster_cidr: self.cluster_cidr.clone(),
                cluster_dns: dns_ip,
            };
            s.add("proxy", Box::new(move |stop: &Stop| l.run(stop)));
        }
        if let (false, Some(address), Some(d)) = (
            off.contains("dns"),
            dns_ip,
            self.node.cfg.cluster_dns.as_ref(),
        ) {
            let l = DnsLoop {
                api: self.api.clone(),
                address,
                domain: d.domain.clone(),
                resolv_conf: "/etc/resolv.conf".into(),
            };
            s.add("dns", Box::new(move |stop: &Stop| l.run(stop)));
        }
        if let (false, Some(np)) = (off.contains("netpol"), &self.netpol) {
            let l = NetpolLoop { netpol: np.clone() };
            s.add("netpol", Box::new(move |stop: &Stop| l.run(stop)));
        }
        if !off.contains("logrotate") {
            let l = LogRotateLoop {
                cfg: self.node.cfg.clone(),
            };
            s.add("logrotate", Box::new(move |stop: &Stop| l.run(stop)));
        }
        s
    }

    /// Runs the loops until `stop` is asked. Stopping leaves every pod running (as the
    /// kubelet does): their shims keep logs and exit codes, and the next agent re-adopts them
    /// from their records.
    pub fn run(self, stop: &Stop) {
        self.supervisor().run(stop);
        tracing::info!(
            pods = self.node.records().len(),
            "node agent stopped; its pods keep running"
        );
    }
}

/// The real parts for `cfg`.
pub fn real_parts(cfg: &AgentConfig) -> Result<Parts, AgentError> {
    let store = moat_image::Store::open(&cfg.image_root).map_err(AgentError::Images)?;
    Ok(Parts {
        runtime: Arc::new(crate::runtime::OciRuntime {
            shim: cfg.shim.clone(),
        }),
        netns: Arc::new(crate::sandbox::RealNetns),
        cni: Arc::new(moat_cni::RealExec {
            wrapper: Vec::new(),
        }),
        images: Arc::new(crate::images::StoreImages {
            store,
            mounter: Box::new(moat_image::RealMounter),
        }),
        hooks: Arc::new(NoHooks),
        host: Arc::new(RealHost),
        probes: Arc::new(crate::probe::NetDialer),
        objects: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> AgentError {
        AgentError::Client(moat_client::ClientError::Api {
            method: "GET",
            path: "/api/v1/nodes/n1".into(),
            code,
            reason: "x".into(),
            message: "x".into(),
        })
    }

    #[test]
    fn refused_credentials_fail_at_once_and_a_server_not_ready_is_retried() {
        assert!(!api(401).is_transient());
        assert!(!api(403).is_transient());
        assert!(api(503).is_transient());
        assert!(
            AgentError::Register(RegisterError::NoPodCidr {
                node: "n1".into(),
                waited: std::time::Duration::from_secs(1),
            })
            .is_transient()
        );
    }
}

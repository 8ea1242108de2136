//! Node registration and the heartbeat: the Node object (created with the configured
//! podCIDR if absent), its status (capacity, addresses, node info, Ready) and the Lease in
//! `kube-node-lease`, built as k8s-openapi types. The API side is unit-tested against the
//! in-memory fake.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Namespace, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec,
    NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use moat_client::{Api, ClientError};
use serde_json::{Value, json};

use crate::config::AgentConfig;
use crate::hostinfo::HostFacts;
use crate::supervisor::{LoopError, Stop};

/// How often the node status and Lease are renewed (the kubelet's nodeStatusUpdateFrequency
/// is 10 s; its lease renews at a quarter of the 40 s lease duration).
pub const INTERVAL: Duration = Duration::from_secs(10);
const LEASE_SECONDS: i32 = 40;

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("registering node {node}")]
    Api {
        node: String,
        #[source]
        source: ClientError,
    },
    #[error(
        "node {node} has no podCIDR after {waited:?}: is the server's node IPAM running (cluster CIDR full?)"
    )]
    NoPodCidr { node: String, waited: Duration },
    #[error("encoding the node object")]
    Encode(#[from] serde_json::Error),
}

/// The Node object a new node registers.
pub fn node_object(cfg: &AgentConfig) -> Node {
    let labels: BTreeMap<String, String> = [
        ("kubernetes.io/hostname", cfg.node_name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", "amd64"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Node {
        metadata: ObjectMeta {
            name: Some(cfg.node_name.clone()),
            labels: Some(labels),
            annotations: (!cfg.node_annotations.is_empty()).then(|| cfg.node_annotations.clone()),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: cfg.pod_cidr.clone(),
            pod_cidrs: cfg.pod_cidr.clone().map(|c| vec![c]),
            ..Default::default()
        }),
        status: None,
    }
}

/// Gets the node's object, creating it if absent; returns its podCIDR if it has one.
pub fn register(api: &dyn Api, cfg: &AgentConfig) -> Result<Option<String>, RegisterError> {
    let path = format!("/api/v1/nodes/{}", cfg.node_name);
    let err = |source| RegisterError::Api {
        node: cfg.node_name.clone(),
        source,
    };
    let node = match api.get(&path) {
        Ok(n) => n,
        Err(e) if e.code() == Some(404) => api
            .create("/api/v1/nodes", &serde_json::to_value(node_object(cfg))?)
            .map_err(err)?,
        Err(e) => return Err(err(e)),
    };
    Ok(pod_cidr_of(&node).or_else(|| cfg.pod_cidr.clone()))
}

fn pod_cidr_of(node: &Value) -> Option<String> {
    node["spec"]["podCIDR"]
        .as_str()
        .filter(|c| !c.is_empty())
        .map(str::to_string)
}

/// Waits for the server's node IPAM to give the node a podCIDR (pods cannot get addresses
/// before), up to `limit`.
pub fn wait_pod_cidr(
    api: &dyn Api,
    cfg: &AgentConfig,
    limit: Duration,
) -> Result<String, RegisterError> {
    let path = format!("/api/v1/nodes/{}", cfg.node_name);
    let start = std::time::Instant::now();
    loop {
        let node = api.get(&path).map_err(|source| RegisterError::Api {
            node: cfg.node_name.clone(),
            source,
        })?;
        if let Some(c) = pod_cidr_of(&node) {
            return Ok(c);
        }
        if start.elapsed() > limit {
            return Err(RegisterError::NoPodCidr {
                node: cfg.node_name.clone(),
                waited: limit,
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn parse_time<T: std::str::FromStr>(s: &str) -> Option<T> {
    s.parse().ok()
}

/// The node's status as the heartbeat reports it.
pub fn node_status(
    cfg: &AgentConfig,
    host: &dyn HostFacts,
    endpoint_port: Option<u16>,
    now: &str,
) -> NodeStatus {
    let cpu = match cfg.node_cpu_millis {
        Some(m) if m % 1000 == 0 => (m / 1000).to_string(),
        Some(m) => format!("{m}m"),
        None => host.cpus().to_string(),
    };
    let mem = match cfg.node_memory_bytes {
        Some(b) => b.to_string(),
        None => format!("{}Ki", host.memory_kib()),
    };
    let resources: BTreeMap<String, Quantity> =
        [("cpu", cpu), ("memory", mem), ("pods", "110".to_string())]
            .into_iter()
            .map(|(k, v)| (k.to_string(), Quantity(v)))
            .collect();
    let mut addresses = Vec::new();
    if let Some(ip) = &cfg.node_ip {
        addresses.push(NodeAddress {
            type_: "InternalIP".into(),
            address: ip.clone(),
        });
    }
    addresses.push(NodeAddress {
        type_: "Hostname".into(),
        address: cfg.node_name.clone(),
    });
    let t = parse_time(now).map(Time);
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        addresses: Some(addresses),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(endpoint_port.unwrap_or(0)),
            }),
        }),
        conditions: Some(vec![NodeCondition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: Some("KubeletReady".into()),
            message: Some("moat agent is posting ready status".into()),
            last_heartbeat_time: t.clone(),
            last_transition_time: t,
        }]),
        node_info: Some(NodeSystemInfo {
            kubelet_version: "v1.33.0-moat".into(),
            kube_proxy_version: String::new(),
            container_runtime_version: format!("moat://{}", cfg.handlers.default),
            operating_system: "linux".into(),
            architecture: "amd64".into(),
            kernel_version: host.kernel(),
            os_image: host.os_image(),
            machine_id: String::new(),
            system_uuid: String::new(),
            boot_id: String::new(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One heartbeat: node status, then the Lease (created, with its namespace, if missing).
pub fn beat(
    api: &dyn Api,
    cfg: &AgentConfig,
    host: &dyn HostFacts,
    endpoint_port: Option<u16>,
) -> Result<(), ClientError> {
    let now = moat_client::now_rfc3339();
    let st = node_status(cfg, host, endpoint_port, &now);
    let body = json!({"status": serde_json::to_value(st).unwrap_or(Value::Null)});
    api.merge_patch(&format!("/api/v1/nodes/{}/status", cfg.node_name), &body)?;
    let micro = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let spec = LeaseSpec {
        holder_identity: Some(cfg.node_name.clone()),
        lease_duration_seconds: Some(LEASE_SECONDS),
        renew_time: parse_time(&micro).map(MicroTime),
        ..Default::default()
    };
    let leases = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
    let lp = format!("{leases}/{}", cfg.node_name);
    let renew = json!({"spec": serde_json::to_value(&spec).unwrap_or(Value::Null)});
    match api.merge_patch(&lp, &renew) {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(404) => {
            let ns = Namespace {
                metadata: ObjectMeta {
                    name: Some("kube-node-lease".into()),
                    ..Default::default()
                },
                ..Default::default()
            };
            let mut nsv = serde_json::to_value(ns).unwrap_or(Value::Null);
            nsv["apiVersion"] = json!("v1");
            nsv["kind"] = json!("Namespace");
            match api.create("/api/v1/namespaces", &nsv) {
                Ok(_) => {}
                Err(e) if e.code() == Some(409) => {}
                Err(e) => return Err(e),
            }
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.node_name.clone()),
                    namespace: Some("kube-node-lease".into()),
                    ..Default::default()
                },
                spec: Some(spec),
            };
            let mut lv = serde_json::to_value(lease).unwrap_or(Value::Null);
            lv["apiVersion"] = json!("coordination.k8s.io/v1");
            lv["kind"] = json!("Lease");
            api.create(leases, &lv).map(|_| ())
        }
        Err(e) => Err(e),
    }
}

pub struct HeartbeatLoop {
    pub api: Arc<dyn Api>,
    pub cfg: AgentConfig,
    pub host: Arc<dyn HostFacts>,
    pub endpoint_port: Option<u16>,
}

impl HeartbeatLoop {
    pub fn run(&self, stop: &Stop) -> Result<(), LoopError> {
        while !stop.is_stopped() {
            match beat(
                self.api.as_ref(),
                &self.cfg,
                self.host.as_ref(),
                self.endpoint_port,
            ) {
                Ok(()) => {}
                // The Node was deleted under a live agent: register it again, as the kubelet
                // does, with the podCIDR and annotations it runs with.
                Err(e) if e.code() == Some(404) => {
                    tracing::warn!(node = %self.cfg.node_name, "the Node object is gone; registering again");
                    if let Err(e) = register(self.api.as_ref(), &self.cfg) {
                        tracing::warn!(error = %e, "registering the node again");
                    }
                    continue;
                }
                Err(e) => tracing::warn!(error = %e, "node heartbeat"),
            }
            stop.sleep(INTERVAL);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostinfo::FakeHost;
    use moat_client::fake::FakeApi;

    pub(crate) fn cfg() -> AgentConfig {
        let run = std::path::PathBuf::from("/nonexistent/run");
        AgentConfig {
            node_name: "n1".into(),
            join: crate::config::Join::Kubeconfig(Default::default()),
            run_dir: run.clone(),
            log_dir: Default::default(),
            image_root: Default::default(),
            cni_conf_dir: None,
            cni_bin_dirs: Vec::new(),
            pod_cidr: Some("10.42.7.0/24".into()),
            node_annotations: Default::default(),
            cgroup_parent: "/moat".into(),
            handlers: crate::Handlers::defaults(&run),
            shim: Vec::new(),
            node_ip: Some("192.0.2.10".into()),
            listen: None,
            log_policy: crate::logrotate::Policy::new(16, 3).unwrap(),
            log_monitor_interval: Duration::from_secs(10),
            node_cpu_millis: None,
            node_memory_bytes: None,
            cluster_dns: None,
            disabled_loops: Default::default(),
        }
    }

    #[test]
    fn registration_creates_the_node_once_and_keeps_a_server_assigned_cidr() {
        let api = FakeApi::default();
        let c = cfg();
        assert_eq!(register(&api, &c).unwrap().as_deref(), Some("10.42.7.0/24"));
        let n = api.object("/api/v1/nodes/n1").expect("created");
        assert_eq!(n["metadata"]["labels"]["kubernetes.io/hostname"], "n1");
        assert_eq!(n["spec"]["podCIDRs"], json!(["10.42.7.0/24"]));
        // The server gave it another subnet: the agent takes that one, creates nothing.
        api.insert(
            "/api/v1/nodes/n1",
            json!({"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.42.3.0/24"}}),
        );
        assert_eq!(register(&api, &c).unwrap().as_deref(), Some("10.42.3.0/24"));
        let posts = api.calls().iter().filter(|c| c.method == "POST").count();
        assert_eq!(posts, 1);
        // An API failure other than 404 is an error, not a second node.
        api.fail("GET", "/api/v1/nodes/n1", 500, 1);
        assert!(register(&api, &c).is_err());
    }

    #[test]
    fn heartbeat_patches_status_and_creates_then_renews_the_lease() {
        let api = FakeApi::default();
        let mut c = cfg();
        register(&api, &c).unwrap();
        c.node_cpu_millis = Some(1500);
        c.node_memory_bytes = Some(2 << 30);
        beat(&api, &c, &FakeHost::default(), Some(10250)).unwrap();
        let n = api.object("/api/v1/nodes/n1").unwrap();
        let st = &n["status"];
        assert_eq!(st["capacity"]["cpu"], "1500m", "{st}");
        assert_eq!(st["capacity"]["memory"], (2i64 << 30).to_string());
        assert_eq!(
            st["addresses"][0],
            json!({"type": "InternalIP", "address": "192.0.2.10"})
        );
        assert_eq!(st["nodeInfo"]["osImage"], "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(st["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10250);
        assert_eq!(st["conditions"][0]["type"], "Ready");
        let lease_path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1";
        let l = api.object(lease_path).expect("lease created");
        assert_eq!(l["spec"]["holderIdentity"], "n1");
        assert_eq!(l["spec"]["leaseDurationSeconds"], 40);
        assert!(api.object("/api/v1/namespaces/kube-node-lease").is_some());
        let first = l["spec"]["renewTime"].clone();
        std::thread::sleep(Duration::from_millis(5));
        beat(&api, &c, &FakeHost::default(), Some(10250)).unwrap();
        let l = api.object(lease_path).unwrap();
        assert_ne!(l["spec"]["renewTime"], first, "renewed");
        let creates = api.calls().iter().filter(|c| c.method == "POST").count();
        assert_eq!(creates, 3, "node, namespace, lease: each once");
        // A failing status patch is reported to the loop (which logs and retries).
        api.fail("PATCH", "/api/v1/nodes/n1/status", 503, 1);
        assert_eq!(
            beat(&api, &c, &FakeHost::default(), None)
                .unwrap_err()
                .code(),
            Some(503)
        );
    }
}

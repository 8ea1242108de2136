//! The planner: Services + EndpointSlices + node facts → the desired [`Model`], one
//! [`ServicePort`] per proxied (service, port). Pure: no IO, no clock.
//!
//! What is proxied follows kube-proxy: IPv4 ClusterIP/NodePort/LoadBalancer services with a
//! ClusterIP; headless (`clusterIP: None`) and `ExternalName` services are skipped (DNS
//! handles them). Endpoints come from `discovery.k8s.io/v1` EndpointSlices labelled
//! `kubernetes.io/service-name`, matched to service ports by port name and protocol.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use moat_api::cidr::Ipv4Net;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// Label an EndpointSlice carries naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// kube-proxy's default ClientIP affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10_800;

/// What the proxy needs to know about its own node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// Matched against an endpoint's `nodeName` for the Local traffic policies.
    pub name: String,
    /// Addresses NodePorts answer on (never loopback: kube-proxy's nftables mode does not
    /// accept NodePorts on 127.0.0.1, and neither do we).
    pub ips: Vec<Ipv4Addr>,
    /// Pod CIDR of the whole cluster: traffic to a ClusterIP from outside it is masqueraded.
    pub cluster_cidr: Ipv4Net,
}

/// One sync's input, borrowed from the caller's caches.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot<'a> {
    pub services: &'a [Service],
    pub slices: &'a [EndpointSlice],
    pub node: &'a NodeFacts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub fn parse(s: Option<&str>) -> Option<Proto> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            "SCTP" => Some(Proto::Sctp),
            _ => None,
        }
    }

    /// The nft keyword (`meta l4proto` / `inet_proto` value).
    pub fn nft(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

/// Identity of a service port: `namespace/name:port-name` (port name may be empty).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey {
    pub namespace: String,
    pub name: String,
    pub port_name: String,
    pub proto: Proto,
}

impl std::fmt::Display for PortKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.namespace,
            self.name,
            self.proto.nft(),
            self.port_name
        )
    }
}

/// One backend of a service port, with its EndpointSlice conditions.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// On this node (`nodeName` equals [`NodeFacts::name`]).
    pub local: bool,
}

/// Everything needed to program one service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub key: PortKey,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub node_port: Option<u16>,
    /// `spec.externalIPs` and `status.loadBalancer.ingress[].ip` (IPv4 only).
    pub external_ips: Vec<Ipv4Addr>,
    /// `sessionAffinity: ClientIP` timeout in seconds.
    pub affinity: Option<u32>,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// `externalTrafficPolicy: Local` (only meaningful with NodePort / external IPs).
    pub external_local: bool,
    /// All endpoints known for the port, sorted by (ip, port), deduplicated.
    pub endpoints: Vec<Endpoint>,
}

/// kube-proxy's rule: ready endpoints; when there is none, serving-but-terminating ones.
fn usable<'a>(eps: impl Iterator<Item = &'a Endpoint> + Clone) -> Vec<&'a Endpoint> {
    let ready: Vec<&Endpoint> = eps.clone().filter(|e| e.ready).collect();
    if !ready.is_empty() {
        return ready;
    }
    eps.filter(|e| e.serving && e.terminating).collect()
}

impl ServicePort {
    /// Usable endpoints anywhere (the cluster traffic policy).
    pub fn cluster_endpoints_all(&self) -> Vec<&Endpoint> {
        usable(self.endpoints.iter())
    }

    /// Usable endpoints on this node (the Local traffic policies), chosen among local
    /// endpoints only: a local terminating endpoint is used when no local one is ready.
    pub fn local_endpoints(&self) -> Vec<&Endpoint> {
        usable(self.endpoints.iter().filter(|e| e.local))
    }

    /// Any usable endpoint anywhere: without one, connections are rejected.
    pub fn has_endpoints(&self) -> bool {
        !usable(self.endpoints.iter()).is_empty()
    }

    pub fn has_external(&self) -> bool {
        self.node_port.is_some() || !self.external_ips.is_empty()
    }
}

/// The desired state: every proxied service port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    pub ports: BTreeMap<PortKey, ServicePort>,
}

fn v4(s: &str) -> Option<Ipv4Addr> {
    s.parse().ok()
}

/// Endpoints per (namespace, service) per (port name, proto): ip → endpoint.
type SliceIndex<'a> =
    HashMap<(&'a str, &'a str), HashMap<(&'a str, Proto), BTreeMap<(Ipv4Addr, u16), Endpoint>>>;

fn index_slices<'a>(slices: &'a [EndpointSlice], node: &NodeFacts) -> SliceIndex<'a> {
    let mut idx: SliceIndex<'a> = HashMap::new();
    for s in slices {
        if s.address_type != "IPv4" {
            continue;
        }
        let (Some(ns), Some(svc)) = (
            s.metadata.namespace.as_deref(),
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL)),
        ) else {
            continue;
        };
        let per_svc = idx.entry((ns, svc.as_str())).or_default();
        for p in s.ports.iter().flatten() {
            let (Some(port), Some(proto)) = (p.port, Proto::parse(p.protocol.as_deref())) else {
                continue;
            };
            let Ok(port) = u16::try_from(port) else {
                continue;
            };
            let per_port = per_svc
                .entry((p.name.as_deref().unwrap_or(""), proto))
                .or_default();
            for e in &s.endpoints {
                let c = e.conditions.as_ref();
                // API semantics: nil ready means "unknown, treat as ready"; nil serving
                // follows ready; nil terminating means not terminating.
                let ready = c.and_then(|c| c.ready).unwrap_or(true);
                let serving = c.and_then(|c| c.serving).unwrap_or(ready);
                let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
                let local = e.node_name.as_deref() == Some(node.name.as_str());
                for ip in e.addresses.iter().filter_map(|a| v4(a)) {
                    let ep = Endpoint {
                        ip,
                        port,
                        ready,
                        serving,
                        terminating,
                        local,
                    };
                    // The same endpoint can sit in two slices while the controller moves
                    // it; keep the more usable copy.
                    per_port
                        .entry((ip, port))
                        .and_modify(|old| {
                            if (ep.ready, ep.serving) > (old.ready, old.serving) {
                                *old = ep.clone();
                            }
                        })
                        .or_insert(ep);
                }
            }
        }
    }
    idx
}

/// Builds the desired model. Malformed objects (bad IPs, unknown protocols, out-of-range
/// ports) are skipped one port at a time, never failing the whole plan: one bad Service must
/// not take every other Service down.
pub fn plan(snap: &Snapshot<'_>) -> Model {
    let mut idx = index_slices(snap.slices, snap.node);
    let mut ports = BTreeMap::new();
    for svc in snap.services {
        let (Some(ns), Some(name), Some(spec)) = (
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref(),
            svc.spec.as_ref(),
        ) else {
            continue;
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        // Headless ("None"), unset and IPv6 ClusterIPs are not proxied.
        let Some(cluster_ip) = spec.cluster_ip.as_deref().and_then(v4) else {
            continue;
        };
        let mut external_ips: Vec<Ipv4Addr> = spec
            .external_ips
            .iter()
            .flatten()
            .filter_map(|s| v4(s))
            .collect();
        external_ips.extend(
            svc.status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip.as_deref().and_then(v4)),
        );
        external_ips.sort();
        external_ips.dedup();
        let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| *t > 0)
                .unwrap_or(DEFAULT_AFFINITY_SECONDS)
        });
        let node_port_allowed = matches!(
            spec.type_.as_deref(),
            Some("NodePort") | Some("LoadBalancer")
        );
        for p in spec.ports.iter().flatten() {
            let (Some(proto), Ok(port)) =
                (Proto::parse(p.protocol.as_deref()), u16::try_from(p.port))
            else {
                continue;
            };
            if port == 0 {
                continue;
            }
            let port_name = p.name.clone().unwrap_or_default();
            let node_port = p
                .node_port
                .filter(|_| node_port_allowed)
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n != 0);
            // Moved out of the index (API validation keeps port names unique per
            // Service); the map's (ip, port) order is the endpoints' sort order.
            let endpoints: Vec<Endpoint> = idx
                .get_mut(&(ns, name))
                .and_then(|m| m.remove(&(p.name.as_deref().unwrap_or(""), proto)))
                .map(|m| m.into_values().collect())
                .unwrap_or_default();
            let key = PortKey {
                namespace: ns.to_string(),
                name: name.to_string(),
                port_name,
                proto,
            };
            ports.insert(
                key.clone(),
                ServicePort {
                    key,
                    cluster_ip,
                    port,
                    node_port,
                    external_ips: external_ips.clone(),
                    affinity,
                    internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
                    external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
                    endpoints,
                },
            );
        }
    }
    Model { ports }
}

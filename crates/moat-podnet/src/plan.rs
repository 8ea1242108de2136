//! The sans-IO core: what each Node says about its pod network, the routes, neighbours and
//! FDB entries this node must have to reach every other node's subnet, and the operations
//! that take the kernel from what it has to that, touching nothing the pod network does not
//! own.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use moat_hostnet::{Fdb, Mac, Neigh, Op, Route};

use crate::conf::{Backend, NetConf};

/// Annotation prefix flannel publishes its per-node state under.
pub const ANNOTATION_PREFIX: &str = "flannel.alpha.coreos.com/";
/// The vxlan device, as flannel names it for VNI 1.
pub const VXLAN_DEV: &str = "flannel.1";
/// The pod bridge the CNI config creates.
pub const BRIDGE: &str = "cni0";

/// One node's pod network as its Node object says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeNet {
    pub name: String,
    pub subnet: Option<Ipv4Net>,
    /// Its `public-ip` annotation, else its InternalIP.
    pub ip: Option<Ipv4Addr>,
    pub vtep_mac: Option<Mac>,
}

impl NodeNet {
    pub fn of(node: &Node) -> NodeNet {
        let ann = node.metadata.annotations.as_ref();
        let get = |k: &str| ann.and_then(|a| a.get(&format!("{ANNOTATION_PREFIX}{k}")));
        let internal = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .and_then(|a| a.address.parse().ok());
        let vtep_mac = get("backend-data")
            .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
            .and_then(|d| d["VtepMAC"].as_str().and_then(|m| m.parse().ok()));
        NodeNet {
            name: node.metadata.name.clone().unwrap_or_default(),
            subnet: node
                .spec
                .as_ref()
                .and_then(|s| s.pod_cidr.as_deref())
                .and_then(|c| c.parse().ok()),
            ip: get("public-ip").and_then(|p| p.parse().ok()).or(internal),
            vtep_mac,
        }
    }
}

/// Why a peer is not (fully) reachable; each names the node, for an event and a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    OutsideCluster {
        node: String,
        subnet: Ipv4Net,
        network: Ipv4Net,
    },
    Overlaps {
        node: String,
        other: String,
        subnet: Ipv4Net,
    },
    NoAddress {
        node: String,
    },
    NoVtepMac {
        node: String,
    },
    NotAdjacent {
        node: String,
        ip: Ipv4Addr,
        gateway: Ipv4Addr,
    },
}

impl Problem {
    pub fn node(&self) -> &str {
        match self {
            Problem::OutsideCluster { node, .. }
            | Problem::Overlaps { node, .. }
            | Problem::NoAddress { node }
            | Problem::NoVtepMac { node }
            | Problem::NotAdjacent { node, .. } => node,
        }
    }

    /// A short CamelCase reason, for events.
    pub fn reason(&self) -> &'static str {
        match self {
            Problem::OutsideCluster { .. } => "PodCIDROutsideClusterCIDR",
            Problem::Overlaps { .. } => "PodCIDROverlap",
            Problem::NoAddress { .. } => "NoNodeAddress",
            Problem::NoVtepMac { .. } => "NoVtepMAC",
            Problem::NotAdjacent { .. } => "HostGwPeerNotOnLink",
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::OutsideCluster {
                node,
                subnet,
                network,
            } => write!(
                f,
                "node {node}: podCIDR {subnet} is outside the cluster CIDR {network}; no route to it"
            ),
            Problem::Overlaps {
                node,
                other,
                subnet,
            } => write!(
                f,
                "node {node}: podCIDR {subnet} overlaps node {other}'s; no route to it"
            ),
            Problem::NoAddress { node } => {
                write!(
                    f,
                    "node {node} has no InternalIP or public-ip yet; no route to it"
                )
            }
            Problem::NoVtepMac { node } => write!(
                f,
                "node {node} has not published its VTEP MAC (backend-data) yet; no tunnel to it"
            ),
            Problem::NotAdjacent { node, ip, gateway } => write!(
                f,
                "node {node} ({ip}) is not on this node's L2 segment (reached via gateway {gateway}); host-gw needs every node on one segment: use the vxlan backend"
            ),
        }
    }
}

/// This node's side of the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    pub name: String,
    pub subnet: Ipv4Net,
    pub ip: Ipv4Addr,
    /// The device that holds `ip`.
    pub underlay: String,
}

/// What the kernel must hold for the peers, as sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tables {
    pub routes: BTreeSet<Route>,
    pub neighs: BTreeSet<Neigh>,
    pub fdb: BTreeSet<Fdb>,
}

/// The desired tables for `nodes` (this node among them or not), and what keeps a peer out.
/// `gateway_of` answers whether a peer's address is on-link (`None`) or behind a gateway.
pub fn desired(
    conf: &NetConf,
    local: &Local,
    nodes: &[NodeNet],
    gateway_of: &dyn Fn(Ipv4Addr) -> Option<Ipv4Addr>,
) -> (Tables, Vec<Problem>) {
    let mut t = Tables::default();
    let mut problems = Vec::new();
    if conf.backend == Backend::None {
        return (t, problems);
    }
    let mut sorted: Vec<&NodeNet> = nodes.iter().filter(|n| n.name != local.name).collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    // Taken subnets, this node's first, so a peer claiming an overlapping block gets no route.
    let mut taken: BTreeMap<Ipv4Net, String> = BTreeMap::new();
    taken.insert(local.subnet, local.name.clone());
    for n in sorted {
        let Some(subnet) = n.subnet else { continue };
        if !conf.network.contains(&subnet) {
            problems.push(Problem::OutsideCluster {
                node: n.name.clone(),
                subnet,
                network: conf.network,
            });
            continue;
        }
        if let Some((_, other)) = taken
            .iter()
            .find(|(s, _)| s.contains(&subnet.network()) || subnet.contains(&s.network()))
        {
            problems.push(Problem::Overlaps {
                node: n.name.clone(),
                other: other.clone(),
                subnet,
            });
            continue;
        }
        taken.insert(subnet, n.name.clone());
        let Some(ip) = n.ip else {
            problems.push(Problem::NoAddress {
                node: n.name.clone(),
            });
            continue;
        };
        match conf.backend {
            Backend::HostGw => {
                if let Some(gateway) = gateway_of(ip) {
                    problems.push(Problem::NotAdjacent {
                        node: n.name.clone(),
                        ip,
                        gateway,
                    });
                    continue;
                }
                t.routes.insert(Route {
                    dst: subnet,
                    via: Some(ip),
                    dev: local.underlay.clone(),
                    onlink: false,
                });
            }
            Backend::Vxlan => {
                let Some(mac) = n.vtep_mac else {
                    problems.push(Problem::NoVtepMac {
                        node: n.name.clone(),
                    });
                    continue;
                };
                let gw = subnet.network();
                t.neighs.insert(Neigh {
                    ip: gw,
                    mac,
                    dev: VXLAN_DEV.into(),
                });
                t.fdb.insert(Fdb {
                    mac,
                    dst: ip,
                    dev: VXLAN_DEV.into(),
                });
                t.routes.insert(Route {
                    dst: subnet,
                    via: Some(gw),
                    dev: VXLAN_DEV.into(),
                    onlink: true,
                });
            }
            Backend::None => {}
        }
    }
    (t, problems)
}

/// The routes the pod network owns among all of the main table's: those to a block of the
/// cluster CIDR other than this node's own subnet (and not the local bridge's), whichever
/// backend made them, so switching backends or a restart cleans up what is no longer right.
pub fn owned_routes(conf: &NetConf, local: &Local, routes: &[Route]) -> BTreeSet<Route> {
    routes
        .iter()
        .filter(|r| conf.network.contains(&r.dst) && r.dst != conf.network)
        .filter(|r| r.dst != local.subnet && r.dev != BRIDGE)
        .filter(|r| r.via.is_some() || r.dev == VXLAN_DEV)
        .cloned()
        .collect()
}

/// The operations that take `have` to `want`: additions first in flannel's order (neighbour,
/// FDB entry, route), then removals in reverse. Entries already right are not touched, so a
/// restart changes nothing that works.
pub fn diff(have: &Tables, want: &Tables) -> Vec<Op> {
    let mut ops = Vec::new();
    let same_key_neigh = |a: &Neigh, b: &Neigh| a.ip == b.ip && a.dev == b.dev;
    for n in want.neighs.difference(&have.neighs) {
        ops.push(Op::AddNeigh(n.clone()));
    }
    for e in want.fdb.difference(&have.fdb) {
        ops.push(Op::AddFdb(e.clone()));
    }
    for r in want.routes.difference(&have.routes) {
        ops.push(Op::AddRoute(r.clone()));
    }
    for r in have.routes.difference(&want.routes) {
        // A route replaced above (same destination, new next hop) is already gone.
        if !want.routes.iter().any(|w| w.dst == r.dst) {
            ops.push(Op::DelRoute(r.clone()));
        }
    }
    for e in have.fdb.difference(&want.fdb) {
        if !want.fdb.iter().any(|w| w.mac == e.mac && w.dev == e.dev) {
            ops.push(Op::DelFdb(e.clone()));
        }
    }
    for n in have.neighs.difference(&want.neighs) {
        if !want.neighs.iter().any(|w| same_key_neigh(w, n)) {
            ops.push(Op::DelNeigh(n.clone()));
        }
    }
    ops
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;

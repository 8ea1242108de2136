//! The desired [`Model`] compiled to a flat, comparable description of the `ip moat-proxy`
//! table's dynamic part: per-service and per-endpoint chains with their rules, the elements
//! of the fixed dispatch maps and sets, and the per-endpoint affinity sets. The fixed part
//! (base chains, map declarations) is constant text in [`crate::script`].
//!
//! Layout (KEP-3866, kube-proxy's nftables mode):
//! - `services` (jumped from nat prerouting and output at priority `dstnat`):
//!   `ip daddr . meta l4proto . th dport vmap @service-ips` (ClusterIPs and external IPs),
//!   then `ip daddr @node-ips meta l4proto . th dport vmap @service-nodeports`.
//! - a *policy chain* per service port and traffic policy: `svc-…` over all usable endpoints,
//!   `local-…` over this node's; each tries the affinity sets, then picks an endpoint
//!   uniformly at random and DNATs to it (see `policy_rules` for why a numgen ladder and
//!   not KEP-3866's per-endpoint chains behind an inline vmap).
//! - an *external chain* `ext-…` for NodePorts and external IPs: marks for masquerade and
//!   goes to the cluster policy chain, or under externalTrafficPolicy Local lets pods and the
//!   node itself short-circuit to the cluster chain and sends the rest to local endpoints
//!   (dropped when none: source IP preservation must not silently fall back).
//! - hairpin: the `hairpin-pairs` set (`ep . ep`) matched in nat postrouting after DNAT.
//! - `no-endpoint-services` / `no-endpoint-nodeports`, checked from filter input, forward and
//!   output for new connections: `goto reject-chain` (TCP reset, ICMP port unreachable
//!   otherwise) for ports with no usable endpoint, `drop` when endpoints exist but the Local
//!   policy leaves none for this path.

use std::collections::{BTreeMap, BTreeSet};

use moat_nft::hashed_ident;

use crate::model::{Endpoint, Model, NodeFacts, ServicePort};

pub const FAMILY: &str = "ip";
pub const TABLE: &str = "moat-proxy";
/// Packet mark bit meaning "masquerade me in postrouting" (kube-proxy's 0x4000).
pub const MASQ_MARK: u32 = 0x4000;

pub const NODE_IPS: &str = "node-ips";
pub const CLUSTER_CIDRS: &str = "cluster-cidrs";
pub const SERVICE_IPS: &str = "service-ips";
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
pub const NO_EP_SERVICES: &str = "no-endpoint-services";
pub const NO_EP_NODEPORTS: &str = "no-endpoint-nodeports";
/// `ip . ip` pairs of every endpoint: after DNAT, a packet whose source and destination are
/// the same endpoint is a pod reaching itself through a Service (hairpin) and is
/// masqueraded, so the reply comes back through the node.
pub const HAIRPIN: &str = "hairpin-pairs";

/// The dynamic part of the table. Two equal `Ruleset`s are the same kernel state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Regular chains → their rules, in order.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Fixed sets ([`NODE_IPS`], [`CLUSTER_CIDRS`]) → elements.
    pub sets: BTreeMap<String, BTreeSet<String>>,
    /// Fixed verdict maps → key → verdict.
    pub maps: BTreeMap<String, BTreeMap<String, String>>,
    /// Affinity sets → timeout in seconds.
    pub affinity: BTreeMap<String, u32>,
}

impl Ruleset {
    /// Rules plus elements: the size of the table, for stats and benchmarks.
    pub fn counts(&self) -> (usize, usize, usize) {
        let rules = self.chains.values().map(Vec::len).sum();
        let elems = self.sets.values().map(BTreeSet::len).sum::<usize>()
            + self.maps.values().map(BTreeMap::len).sum::<usize>();
        (self.chains.len(), rules, elems)
    }
}

fn base(sp: &ServicePort) -> String {
    sp.key.to_string()
}

/// Name of the cluster-policy chain of a service port.
pub fn svc_chain(sp: &ServicePort) -> String {
    hashed_ident("svc", &base(sp))
}

pub fn local_chain(sp: &ServicePort) -> String {
    hashed_ident("local", &base(sp))
}

pub fn ext_chain(sp: &ServicePort) -> String {
    hashed_ident("ext", &base(sp))
}

/// Affinity set of an endpoint; the timeout is part of the name so a timeout change is a
/// new set (sets cannot be redefined in place).
pub fn affinity_set(sp: &ServicePort, ep: &Endpoint, timeout: u32) -> String {
    hashed_ident(
        "aff",
        &format!("{}__{}/{}/{timeout}", base(sp), ep.ip, ep.port),
    )
}

fn dnat(sp: &ServicePort, ep: &Endpoint) -> String {
    format!(
        "meta l4proto {} dnat to {}:{}",
        sp.key.proto.nft(),
        ep.ip,
        ep.port
    )
}

/// A policy chain: off-cluster masquerade mark, affinity hits, then a uniform random pick.
/// The pick is a ladder `numgen random mod (N-i) == 0 dnat to ep_i` (rule i matches with
/// probability 1/(N-i) given the earlier ones did not, so each endpoint gets 1/N) instead of
/// KEP-3866's `numgen random mod N vmap { i : goto endpoint-chain }`: each inline vmap is an
/// anonymous set, and creating 10,000 of them in one transaction is quadratic in the kernel
/// (measured: 114 s instead of 3 s for 10k Services), while endpoint chains made the nft
/// cache load of every incremental sync ~10x slower. Only a connection's first packet walks
/// the ladder.
fn policy_rules(sp: &ServicePort, eps: &[&Endpoint], masq_cluster_ip: bool) -> Vec<String> {
    let mut rules = Vec::new();
    if masq_cluster_ip {
        // Off-cluster clients reaching a ClusterIP (e.g. from the node's own address):
        // masquerade so the reply comes back through this node.
        rules.push(format!(
            "ip daddr {} ip saddr != @{CLUSTER_CIDRS} jump mark-for-masquerade",
            sp.cluster_ip
        ));
    }
    let update = |ep: &Endpoint| match sp.affinity {
        Some(t) => format!("update @{} {{ ip saddr }} ", affinity_set(sp, ep, t)),
        None => String::new(),
    };
    if let Some(t) = sp.affinity {
        for ep in eps {
            rules.push(format!(
                "ip saddr @{} {}{}",
                affinity_set(sp, ep, t),
                update(ep),
                dnat(sp, ep)
            ));
        }
    }
    let n = eps.len();
    for (i, ep) in eps.iter().enumerate() {
        let pick = if n - i > 1 {
            format!("numgen random mod {} == 0 ", n - i)
        } else {
            String::new()
        };
        rules.push(format!("{pick}{}{}", update(ep), dnat(sp, ep)));
    }
    rules
}

fn proto_port(sp: &ServicePort, port: u16) -> String {
    format!("{} . {port}", sp.key.proto.nft())
}

fn ip_proto_port(ip: std::net::Ipv4Addr, sp: &ServicePort, port: u16) -> String {
    format!("{ip} . {}", proto_port(sp, port))
}

/// Compiles the model for this node.
pub fn compile(model: &Model, node: &NodeFacts) -> Ruleset {
    let mut r = Ruleset::default();
    let mut node_ips: BTreeSet<String> = BTreeSet::new();
    for ip in &node.ips {
        node_ips.insert(ip.to_string());
    }
    r.sets.insert(NODE_IPS.into(), node_ips);
    r.sets.insert(HAIRPIN.into(), BTreeSet::new());
    r.sets.insert(
        CLUSTER_CIDRS.into(),
        BTreeSet::from([node.cluster_cidr.to_string()]),
    );
    for m in [
        SERVICE_IPS,
        SERVICE_NODEPORTS,
        NO_EP_SERVICES,
        NO_EP_NODEPORTS,
    ] {
        r.maps.insert(m.into(), BTreeMap::new());
    }
    for sp in model.ports.values() {
        compile_port(&mut r, sp);
    }
    r
}

fn map_insert(r: &mut Ruleset, map: &str, key: String, verdict: String) {
    if let Some(m) = r.maps.get_mut(map) {
        m.insert(key, verdict);
    }
}

fn compile_port(r: &mut Ruleset, sp: &ServicePort) {
    let reject = "goto reject-chain".to_string();
    let external_keys = |sp: &ServicePort| {
        let ips: Vec<String> = sp
            .external_ips
            .iter()
            .map(|ip| ip_proto_port(*ip, sp, sp.port))
            .collect();
        (ips, sp.node_port.map(|np| proto_port(sp, np)))
    };
    let cluster_key = ip_proto_port(sp.cluster_ip, sp, sp.port);
    if !sp.has_endpoints() {
        // Nothing to send to anywhere: reject, never a silent drop (clients fail fast).
        map_insert(r, NO_EP_SERVICES, cluster_key, reject.clone());
        let (ips, np) = external_keys(sp);
        for k in ips {
            map_insert(r, NO_EP_SERVICES, k, reject.clone());
        }
        if let Some(k) = np {
            map_insert(r, NO_EP_NODEPORTS, k, reject);
        }
        return;
    }
    let all = sp.cluster_endpoints_all();
    let local = sp.local_endpoints();
    let has_ext = sp.has_external();
    let need_cluster = !sp.internal_local || has_ext;
    let need_local = (sp.internal_local || (has_ext && sp.external_local)) && !local.is_empty();
    let mut used: BTreeSet<&Endpoint> = BTreeSet::new();
    if need_cluster {
        used.extend(all.iter().copied());
        r.chains.insert(svc_chain(sp), policy_rules(sp, &all, true));
    }
    if need_local {
        used.extend(local.iter().copied());
        r.chains
            .insert(local_chain(sp), policy_rules(sp, &local, true));
    }
    for ep in used {
        if let Some(set) = r.sets.get_mut(HAIRPIN) {
            set.insert(format!("{} . {}", ep.ip, ep.ip));
        }
        if let Some(t) = sp.affinity {
            r.affinity.insert(affinity_set(sp, ep, t), t);
        }
    }
    // Traffic to the ClusterIP.
    if !sp.internal_local {
        map_insert(
            r,
            SERVICE_IPS,
            cluster_key,
            format!("goto {}", svc_chain(sp)),
        );
    } else if need_local {
        map_insert(
            r,
            SERVICE_IPS,
            cluster_key,
            format!("goto {}", local_chain(sp)),
        );
    } else {
        // Endpoints exist, none here: internalTrafficPolicy Local drops (KEP-2086).
        map_insert(r, NO_EP_SERVICES, cluster_key, "drop".into());
    }
    if !has_ext {
        return;
    }
    let ext = ext_chain(sp);
    let rules = if sp.external_local {
        let mut v = vec![
            // Pods and the node itself may use external addresses of a Local service:
            // send them to every endpoint, as kube-proxy does.
            format!("ip saddr @{CLUSTER_CIDRS} goto {}", svc_chain(sp)),
            "fib saddr type local jump mark-for-masquerade".to_string(),
            format!("fib saddr type local goto {}", svc_chain(sp)),
        ];
        v.push(if need_local {
            format!("goto {}", local_chain(sp))
        } else {
            "drop".to_string()
        });
        v
    } else {
        vec![
            "jump mark-for-masquerade".to_string(),
            format!("goto {}", svc_chain(sp)),
        ]
    };
    r.chains.insert(ext.clone(), rules);
    let (ips, np) = external_keys(sp);
    for k in ips {
        map_insert(r, SERVICE_IPS, k, format!("goto {ext}"));
    }
    if let Some(k) = np {
        map_insert(r, SERVICE_NODEPORTS, k, format!("goto {ext}"));
    }
}

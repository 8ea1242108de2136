//! The desired [`Model`] compiled to a flat, comparable description of the `ip moat-proxy`
//! table's dynamic part: per-service-port chains with their rules, the elements of the fixed
//! dispatch maps and sets, and the per-endpoint affinity sets. The fixed part (base chains,
//! map declarations) is constant text in [`crate::script`]. Each service port compiles to a
//! [`Fragment`] on its own, so an incremental sync recompiles only the ports that changed;
//! [`Ruleset`] merges fragments (shared hairpin elements are reference-counted, a map key two
//! ports claim goes to the smallest [`PortKey`]), so any order of adds and removes gives the
//! same ruleset as [`compile`].
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

use crate::model::{Endpoint, Model, NodeFacts, PortKey, ServicePort};

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
#[derive(Debug, Clone, Default)]
pub struct Ruleset {
    /// Regular chains → their rules, in order.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Fixed sets ([`NODE_IPS`], [`CLUSTER_CIDRS`], [`HAIRPIN`]) → elements.
    pub sets: BTreeMap<String, BTreeSet<String>>,
    /// Fixed verdict maps → key → verdict.
    pub maps: BTreeMap<String, BTreeMap<String, String>>,
    /// Affinity sets → timeout in seconds.
    pub affinity: BTreeMap<String, u32>,
    /// Who wants each map key: several service ports may name the same address (two
    /// Services listing one external IP); the smallest [`PortKey`] wins, whatever the order
    /// ports were added in.
    claims: BTreeMap<(&'static str, String), BTreeMap<PortKey, String>>,
    /// How many endpoints of all ports share each hairpin pair.
    hairpin_refs: BTreeMap<String, usize>,
}

impl PartialEq for Ruleset {
    /// Kernel state only (the bookkeeping follows from it).
    fn eq(&self, o: &Self) -> bool {
        self.chains == o.chains
            && self.sets == o.sets
            && self.maps == o.maps
            && self.affinity == o.affinity
    }
}

impl Eq for Ruleset {}

/// What one service port contributes to the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fragment {
    pub chains: Vec<(String, Vec<String>)>,
    /// (map, key, verdict)
    pub claims: Vec<(&'static str, String, String)>,
    pub hairpin: Vec<String>,
    pub affinity: Vec<(String, u32)>,
}

/// Names of everything some fragments touch: the part of a [`Ruleset`] a change can alter.
#[derive(Debug, Default)]
pub struct Touched {
    chains: BTreeSet<String>,
    keys: BTreeSet<(&'static str, String)>,
    hairpin: BTreeSet<String>,
    affinity: BTreeSet<String>,
}

impl Touched {
    pub fn add(&mut self, f: &Fragment) {
        self.chains.extend(f.chains.iter().map(|(n, _)| n.clone()));
        self.keys
            .extend(f.claims.iter().map(|(m, k, _)| (*m, k.clone())));
        self.hairpin.extend(f.hairpin.iter().cloned());
        self.affinity
            .extend(f.affinity.iter().map(|(n, _)| n.clone()));
    }
}

impl Ruleset {
    /// The empty table for a node: node addresses and cluster CIDR, no service.
    pub fn new(node: &NodeFacts) -> Ruleset {
        let mut r = Ruleset::default();
        r.sets.insert(
            NODE_IPS.into(),
            node.ips.iter().map(|ip| ip.to_string()).collect(),
        );
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
        r
    }

    /// Rules plus elements: the size of the table, for stats and benchmarks.
    pub fn counts(&self) -> (usize, usize, usize) {
        let rules = self.chains.values().map(Vec::len).sum();
        let elems = self.sets.values().map(BTreeSet::len).sum::<usize>()
            + self.maps.values().map(BTreeMap::len).sum::<usize>();
        (self.chains.len(), rules, elems)
    }

    fn settle_key(&mut self, map: &'static str, key: &str) {
        let winner = self
            .claims
            .get(&(map, key.to_string()))
            .and_then(|c| c.values().next().cloned());
        if let Some(m) = self.maps.get_mut(map) {
            match winner {
                Some(v) => {
                    m.insert(key.to_string(), v);
                }
                None => {
                    m.remove(key);
                }
            }
        }
    }

    /// Adds a port's fragment.
    pub fn add(&mut self, port: &PortKey, f: &Fragment) {
        for (name, rules) in &f.chains {
            self.chains.insert(name.clone(), rules.clone());
        }
        for (map, key, verdict) in &f.claims {
            self.claims
                .entry((*map, key.clone()))
                .or_default()
                .insert(port.clone(), verdict.clone());
            self.settle_key(map, key);
        }
        for h in &f.hairpin {
            let n = self.hairpin_refs.entry(h.clone()).or_insert(0);
            *n += 1;
            if *n == 1
                && let Some(set) = self.sets.get_mut(HAIRPIN)
            {
                set.insert(h.clone());
            }
        }
        for (name, t) in &f.affinity {
            self.affinity.insert(name.clone(), *t);
        }
    }

    /// Removes a fragment previously added for `port`.
    pub fn remove(&mut self, port: &PortKey, f: &Fragment) {
        for (name, _) in &f.chains {
            self.chains.remove(name);
        }
        for (map, key, _) in &f.claims {
            let k = (*map, key.clone());
            if let Some(c) = self.claims.get_mut(&k) {
                c.remove(port);
                if c.is_empty() {
                    self.claims.remove(&k);
                }
            }
            self.settle_key(map, key);
        }
        for h in &f.hairpin {
            if let Some(n) = self.hairpin_refs.get_mut(h) {
                *n -= 1;
                if *n == 0 {
                    self.hairpin_refs.remove(h);
                    if let Some(set) = self.sets.get_mut(HAIRPIN) {
                        set.remove(h);
                    }
                }
            }
        }
        for (name, _) in &f.affinity {
            self.affinity.remove(name);
        }
    }

    /// The touched part of this ruleset, as a ruleset (for [`crate::script::diff`]).
    pub fn part(&self, t: &Touched) -> Ruleset {
        let mut p = Ruleset::default();
        for name in &t.chains {
            if let Some(rules) = self.chains.get(name) {
                p.chains.insert(name.clone(), rules.clone());
            }
        }
        for (map, key) in &t.keys {
            if let Some(v) = self.maps.get(*map).and_then(|m| m.get(key)) {
                p.maps
                    .entry((*map).to_string())
                    .or_default()
                    .insert(key.clone(), v.clone());
            }
        }
        let hp = self.sets.get(HAIRPIN);
        for h in &t.hairpin {
            if hp.is_some_and(|s| s.contains(h)) {
                p.sets.entry(HAIRPIN.into()).or_default().insert(h.clone());
            }
        }
        for name in &t.affinity {
            if let Some(tm) = self.affinity.get(name) {
                p.affinity.insert(name.clone(), *tm);
            }
        }
        p
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
    let mut r = Ruleset::new(node);
    for (key, sp) in &model.ports {
        r.add(key, &fragment(sp));
    }
    r
}

fn map_insert(f: &mut Fragment, map: &'static str, key: String, verdict: String) {
    f.claims.push((map, key, verdict));
}

/// What one service port contributes.
pub fn fragment(sp: &ServicePort) -> Fragment {
    let mut f = Fragment::default();
    let r = &mut f;
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
        return f;
    }
    let all = sp.cluster_endpoints_all();
    let local = sp.local_endpoints();
    let has_ext = sp.has_external();
    let need_cluster = !sp.internal_local || has_ext;
    let need_local = (sp.internal_local || (has_ext && sp.external_local)) && !local.is_empty();
    let mut used: BTreeSet<&Endpoint> = BTreeSet::new();
    if need_cluster {
        used.extend(all.iter().copied());
        r.chains.push((svc_chain(sp), policy_rules(sp, &all, true)));
    }
    if need_local {
        used.extend(local.iter().copied());
        r.chains
            .push((local_chain(sp), policy_rules(sp, &local, true)));
    }
    for ep in used {
        r.hairpin.push(format!("{} . {}", ep.ip, ep.ip));
        if let Some(t) = sp.affinity {
            r.affinity.push((affinity_set(sp, ep, t), t));
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
        return f;
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
    r.chains.push((ext.clone(), rules));
    let (ips, np) = external_keys(sp);
    for k in ips {
        map_insert(r, SERVICE_IPS, k, format!("goto {ext}"));
    }
    if let Some(k) = np {
        map_insert(r, SERVICE_NODEPORTS, k, format!("goto {ext}"));
    }
    f
}

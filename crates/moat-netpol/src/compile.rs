//! Compiles a [`Snapshot`] into the typed ruleset of one node.
//!
//! Shape (see lib.rs for the whole datapath): pods isolated in a direction are grouped by
//! *why* they are isolated — the set of policies selecting them (plus, for ingress, the
//! named ports those policies resolve on the pod). Each group has a chain with a fixed body
//! and three sets of allowed traffic; the pod's IP maps to the group's chain in a verdict
//! map. Group names are a hash of the group key, so a fresh compile and a long series of
//! incremental updates name everything identically, and a label change moves set and map
//! elements without touching any chain.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use crate::model::{NamedPort, Peer, PodInfo, Policy, PortSpec, Proto, Rule, Snapshot};

/// An inclusive IPv4 interval.
pub type IpRange = (u32, u32);
/// An inclusive port interval of one protocol.
pub type PortRange = (Proto, u16, u16);

/// What a group allows, normalised (sorted, disjoint, merged) so equal meaning ⇒ equal
/// value and interval sets never receive overlapping elements.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Allow {
    /// Peers allowed on every port and protocol (0.0.0.0–255.255.255.255 = allow all).
    pub peers: Vec<IpRange>,
    /// Ports allowed from/to every peer.
    pub ports: Vec<PortRange>,
    /// (peer, port) pairs.
    pub peer_ports: Vec<(IpRange, PortRange)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dir {
    Ingress,
    Egress,
}

impl Dir {
    pub fn prefix(self) -> &'static str {
        match self {
            Dir::Ingress => "in",
            Dir::Egress => "out",
        }
    }
}

/// One node's compiled policy state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    /// Group name → what it allows.
    pub groups: BTreeMap<String, (Dir, Allow)>,
    /// Local pod IP → ingress group name.
    pub ingress: BTreeMap<Ipv4Addr, String>,
    /// Local pod IP → egress group name.
    pub egress: BTreeMap<Ipv4Addr, String>,
    /// Local pod IPs (a pod may always reach itself, e.g. through a Service hairpin).
    pub local_ips: BTreeSet<Ipv4Addr>,
    pub node_addrs: BTreeSet<Ipv4Addr>,
}

pub(crate) const ALL_IPS: IpRange = (0, u32::MAX);

pub(crate) fn selects(p: &Policy, pod: &PodInfo) -> bool {
    !pod.host_network && p.namespace == pod.namespace && p.selector.matches(&pod.labels)
}

/// Whether a pod is in a peer's pod set: a selector peer of a policy in `policy_ns`, the
/// pod's namespace labels given (None = no such namespace). ipBlocks never match here.
pub(crate) fn peer_matches(
    peer: &Peer,
    policy_ns: &str,
    pod: &PodInfo,
    ns_labels: Option<&BTreeMap<String, String>>,
) -> bool {
    let Peer::Pods { pods, namespaces } = peer else {
        return false;
    };
    pod.ip.is_some()
        && !pod.host_network
        && match namespaces {
            None => pod.namespace == policy_ns,
            Some(nsel) => ns_labels.is_some_and(|l| nsel.matches(l)),
        }
        && pods.matches(&pod.labels)
}

/// Pods (with an IP, not hostNetwork) a selector-peer matches, from policy namespace `ns`.
fn peer_pods<'a>(
    s: &'a Snapshot,
    ns_labels: &HashMap<&str, &BTreeMap<String, String>>,
    peer: &Peer,
    ns: &str,
) -> Vec<&'a PodInfo> {
    s.pods
        .iter()
        .filter(|p| peer_matches(peer, ns, p, ns_labels.get(p.namespace.as_str()).copied()))
        .collect()
}

pub(crate) fn block_ranges(
    cidr: &crate::model::Cidr,
    except: &[crate::model::Cidr],
) -> Vec<IpRange> {
    let mut out = vec![moat_api::cidr::range(cidr)];
    for e in except {
        let (lo, hi) = moat_api::cidr::range(e);
        out = out
            .into_iter()
            .flat_map(|(a, b)| {
                let mut parts = Vec::new();
                if hi < a || lo > b {
                    parts.push((a, b));
                } else {
                    if lo > a {
                        parts.push((a, lo - 1));
                    }
                    if hi < b {
                        parts.push((hi + 1, b));
                    }
                }
                parts
            })
            .collect();
    }
    out
}

pub(crate) fn ip_u32(ip: Ipv4Addr) -> u32 {
    u32::from(ip)
}

/// Peer address ranges of a rule; None = all peers.
fn rule_peers(
    s: &Snapshot,
    ns_labels: &HashMap<&str, &BTreeMap<String, String>>,
    rule: &Rule,
    ns: &str,
) -> Option<Vec<IpRange>> {
    if rule.peers.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for peer in &rule.peers {
        match peer {
            Peer::Block { cidr, except } => out.extend(block_ranges(cidr, except)),
            Peer::Pods { .. } => out.extend(
                peer_pods(s, ns_labels, peer, ns)
                    .into_iter()
                    .filter_map(|p| p.ip.map(|ip| (ip_u32(ip), ip_u32(ip)))),
            ),
        }
    }
    Some(out)
}

pub(crate) fn in_ranges(ip: u32, ranges: &Option<Vec<IpRange>>) -> bool {
    match ranges {
        None => true,
        Some(r) => r.iter().any(|(a, b)| (*a..=*b).contains(&ip)),
    }
}

/// Where a named port of egress rules can go: every pod (with an IP, not hostNetwork) with
/// a container port of that name and protocol, as (address, port number).
pub(crate) type NamedDsts<'a> = dyn Fn(Proto, &str) -> Vec<(u32, u16)> + 'a;

/// The first container port of a pod with this name and protocol.
pub(crate) fn resolve_named(ports: &[NamedPort], name: &str, proto: Proto) -> Option<u16> {
    ports
        .iter()
        .find(|np| np.name == name && np.proto == proto)
        .map(|np| np.port)
}

/// Adds one rule's contribution for a pod's direction into `acc`; `own_ports` are the
/// isolated pod's named ports.
fn add_rule(
    dir: Dir,
    own_ports: &[NamedPort],
    named_dsts: &NamedDsts<'_>,
    rule: &Rule,
    peers: &Option<Vec<IpRange>>,
    acc: &mut Allow,
) {
    if rule.ports.is_empty() {
        match peers {
            None => acc.peers.push(ALL_IPS),
            Some(r) => acc.peers.extend(r.iter().copied()),
        }
        return;
    }
    for spec in &rule.ports {
        match spec {
            PortSpec::All(p) => push_ports(acc, peers, (*p, 0, u16::MAX)),
            PortSpec::Range(p, lo, hi) => push_ports(acc, peers, (*p, *lo, *hi)),
            // A named port resolves against the destination pod: for ingress that is the
            // isolated pod itself; for egress each destination pod in the peer set.
            PortSpec::Named(p, name) => match dir {
                Dir::Ingress => {
                    if let Some(port) = resolve_named(own_ports, name, *p) {
                        push_ports(acc, peers, (*p, port, port));
                    }
                }
                Dir::Egress => {
                    for (ip, port) in named_dsts(*p, name) {
                        if in_ranges(ip, peers) {
                            acc.peer_ports.push(((ip, ip), (*p, port, port)));
                        }
                    }
                }
            },
        }
    }
}

/// What a group allows: the rules of its policies (each with its resolved peers, None = all
/// peers), normalised.
pub(crate) fn allow_of<'r>(
    dir: Dir,
    rules: impl IntoIterator<Item = (&'r Rule, &'r Option<Vec<IpRange>>)>,
    own_ports: &[NamedPort],
    named_dsts: &NamedDsts<'_>,
) -> Allow {
    let mut acc = Allow::default();
    for (rule, peers) in rules {
        add_rule(dir, own_ports, named_dsts, rule, peers, &mut acc);
    }
    acc.normalise()
}

/// The group key of a pod isolated in `dir` by `selecting` (sorted by namespace and name:
/// the key never depends on input order). For ingress it also records how the named ports
/// of those rules resolve on the pod.
pub(crate) fn group_key(dir: Dir, selecting: &[&Policy], own_ports: &[NamedPort]) -> String {
    let mut key = format!("{}:", dir.prefix());
    for pol in selecting {
        key.push_str(&format!("{}/{};", pol.namespace, pol.name));
        if dir == Dir::Ingress {
            // Named ports make the group depend on the pod's own port names.
            for r in rules_of(pol, dir).unwrap_or(&[]) {
                for spec in &r.ports {
                    if let PortSpec::Named(p, n) = spec {
                        let res = resolve_named(own_ports, n, *p);
                        key.push_str(&format!("{n}/{p}={res:?};"));
                    }
                }
            }
        }
    }
    key
}

/// A group's name: stable across processes, so any history of updates names it the same.
pub(crate) fn group_name(dir: Dir, key: &str) -> String {
    format!("{}_{:016x}", dir.prefix(), fnv64(key))
}

fn push_ports(acc: &mut Allow, peers: &Option<Vec<IpRange>>, port: PortRange) {
    match peers {
        None => acc.ports.push(port),
        Some(r) => acc.peer_ports.extend(r.iter().map(|ip| (*ip, port))),
    }
}

/// Sorted, disjoint, adjacent-merged intervals.
fn merge<T: Copy + Ord>(mut v: Vec<(T, T)>, succ: impl Fn(T) -> Option<T>) -> Vec<(T, T)> {
    v.sort();
    let mut out: Vec<(T, T)> = Vec::with_capacity(v.len());
    for (a, b) in v {
        if let Some(last) = out.last_mut()
            && (a <= last.1 || succ(last.1) == Some(a))
        {
            if b > last.1 {
                last.1 = b;
            }
            continue;
        }
        out.push((a, b));
    }
    out
}

fn merge_ports(v: &[PortRange]) -> Vec<PortRange> {
    let mut by: BTreeMap<Proto, Vec<(u16, u16)>> = BTreeMap::new();
    for (p, a, b) in v {
        by.entry(*p).or_default().push((*a, *b));
    }
    by.into_iter()
        .flat_map(|(p, r)| {
            merge(r, |x: u16| x.checked_add(1))
                .into_iter()
                .map(move |(a, b)| (p, a, b))
        })
        .collect()
}

/// Canonical disjoint cover of (ip range × port range) pairs: cut the IP axis at every
/// boundary, merge the port ranges over each piece, then re-join neighbouring pieces with
/// equal port sets.
fn normalise_pairs(pairs: &[(IpRange, PortRange)]) -> Vec<(IpRange, PortRange)> {
    if pairs.is_empty() {
        return vec![];
    }
    // Fast path, the common case: the distinct IP ranges do not overlap (pod peers are
    // distinct /32s), so each range just gets its ports merged.
    let mut by_range: BTreeMap<IpRange, Vec<PortRange>> = BTreeMap::new();
    for (ip, port) in pairs {
        by_range.entry(*ip).or_default().push(*port);
    }
    let disjoint = by_range
        .keys()
        .zip(by_range.keys().skip(1))
        .all(|(a, b)| a.1 < b.0);
    if disjoint {
        let mut pieces: Vec<(IpRange, Vec<PortRange>)> = Vec::with_capacity(by_range.len());
        for (range, ports) in by_range {
            let ports = merge_ports(&ports);
            if let Some(last) = pieces.last_mut()
                && last.1 == ports
                && u64::from(last.0.1) + 1 == u64::from(range.0)
            {
                last.0.1 = range.1;
                continue;
            }
            pieces.push((range, ports));
        }
        return pieces
            .into_iter()
            .flat_map(|(ip, ports)| ports.into_iter().map(move |p| (ip, p)))
            .collect();
    }
    let mut cuts: BTreeSet<u64> = BTreeSet::new();
    for ((a, b), _) in pairs {
        cuts.insert(u64::from(*a));
        cuts.insert(u64::from(*b) + 1);
    }
    let cuts: Vec<u64> = cuts.into_iter().collect();
    let mut pieces: Vec<(IpRange, Vec<PortRange>)> = Vec::new();
    for w in cuts.windows(2) {
        let (lo, hi) = (w[0], w[1] - 1);
        let ports: Vec<PortRange> = pairs
            .iter()
            .filter(|((a, b), _)| u64::from(*a) <= lo && hi <= u64::from(*b))
            .map(|(_, p)| *p)
            .collect();
        if ports.is_empty() {
            continue;
        }
        let ports = merge_ports(&ports);
        // Pieces come from cut points of u32 values, so they fit back into u32.
        let range = (lo as u32, hi as u32);
        if let Some(last) = pieces.last_mut()
            && last.1 == ports
            && u64::from(last.0.1) + 1 == lo
        {
            last.0.1 = range.1;
            continue;
        }
        pieces.push((range, ports));
    }
    pieces
        .into_iter()
        .flat_map(|(ip, ports)| ports.into_iter().map(move |p| (ip, p)))
        .collect()
}

impl Allow {
    pub(crate) fn normalise(mut self) -> Allow {
        self.peers = merge(self.peers, |x: u32| x.checked_add(1));
        self.ports = merge_ports(&self.ports);
        self.peer_ports = normalise_pairs(&self.peer_ports);
        if self.peers == [ALL_IPS] {
            self.ports.clear();
            self.peer_ports.clear();
        }
        self
    }

    pub fn allows_all(&self) -> bool {
        self.peers == [ALL_IPS]
    }
}

/// FNV-1a: group names must be stable across processes and releases, which std's hasher
/// does not promise.
fn fnv64(data: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub(crate) fn rules_of(p: &Policy, dir: Dir) -> Option<&[Rule]> {
    match dir {
        Dir::Ingress => p.ingress.as_deref(),
        Dir::Egress => p.egress.as_deref(),
    }
}

/// Compiles the snapshot. Pure and deterministic; the result does not depend on the order
/// of the snapshot's lists (object names are unique, as in the API).
///
/// Work is shared where the answer is shared: each rule's peer set is resolved once, and
/// each group's allow-sets are built once for all the pods that share its key.
pub fn compile(s: &Snapshot) -> Compiled {
    let mut out = Compiled {
        node_addrs: s.node_addrs.iter().copied().collect(),
        ..Default::default()
    };
    let ns_labels: HashMap<&str, &BTreeMap<String, String>> = s
        .namespaces
        .iter()
        .rev()
        .map(|n| (n.name.as_str(), &n.labels))
        .collect();
    // Each local address is dispatched by the pod that owns it (see `PodInfo::ip_rank`).
    let mut owners: BTreeMap<Ipv4Addr, &PodInfo> = BTreeMap::new();
    for pod in s.pods.iter().filter(|p| p.local && !p.host_network) {
        let Some(ip) = pod.ip else { continue };
        let owner = owners.entry(ip).or_insert(pod);
        if pod.ip_rank() > owner.ip_rank() {
            *owner = pod;
        }
    }
    let named_dsts = |proto: Proto, name: &str| -> Vec<(u32, u16)> {
        s.pods
            .iter()
            .filter(|d| !d.host_network)
            .filter_map(|d| Some((ip_u32(d.ip?), resolve_named(&d.ports, name, proto)?)))
            .collect()
    };
    let mut peer_cache: HashMap<(usize, Dir, usize), Option<Vec<IpRange>>> = HashMap::new();
    // Group key → group name, or None when the group allows everything.
    let mut group_cache: HashMap<String, Option<String>> = HashMap::new();
    for (ip, pod) in owners {
        out.local_ips.insert(ip);
        for dir in [Dir::Ingress, Dir::Egress] {
            let mut selecting: Vec<usize> = s
                .policies
                .iter()
                .enumerate()
                .filter(|(_, p)| rules_of(p, dir).is_some() && selects(p, pod))
                .map(|(i, _)| i)
                .collect();
            if selecting.is_empty() {
                continue;
            }
            selecting.sort_by(|a, b| {
                let (a, b) = (&s.policies[*a], &s.policies[*b]);
                (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name))
            });
            let pols: Vec<&Policy> = selecting.iter().map(|i| &s.policies[*i]).collect();
            let key = group_key(dir, &pols, &pod.ports);
            let name = match group_cache.get(&key) {
                Some(n) => n.clone(),
                None => {
                    for &pi in &selecting {
                        let pol = &s.policies[pi];
                        for (ri, r) in rules_of(pol, dir).unwrap_or(&[]).iter().enumerate() {
                            peer_cache
                                .entry((pi, dir, ri))
                                .or_insert_with(|| rule_peers(s, &ns_labels, r, &pol.namespace));
                        }
                    }
                    let rules = selecting.iter().flat_map(|&pi| {
                        let peer_cache = &peer_cache;
                        rules_of(&s.policies[pi], dir)
                            .unwrap_or(&[])
                            .iter()
                            .enumerate()
                            .filter_map(move |(ri, r)| Some((r, peer_cache.get(&(pi, dir, ri))?)))
                    });
                    let allow = allow_of(dir, rules, &pod.ports, &named_dsts);
                    // Isolated but everything allowed: same as not isolated; no dispatch.
                    let name = (!allow.allows_all()).then(|| group_name(dir, &key));
                    if let Some(n) = &name {
                        out.groups.insert(n.clone(), (dir, allow));
                    }
                    group_cache.insert(key, name.clone());
                    name
                }
            };
            if let Some(name) = name {
                match dir {
                    Dir::Ingress => out.ingress.insert(ip, name),
                    Dir::Egress => out.egress.insert(ip, name),
                };
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_joins_adjacent_and_overlapping() {
        assert_eq!(
            merge(vec![(5u32, 6), (1, 2), (3, 4), (8, 9)], |x| x
                .checked_add(1)),
            vec![(1, 6), (8, 9)]
        );
        assert_eq!(
            merge(vec![(0u16, u16::MAX), (5, 6)], |x| x.checked_add(1)),
            vec![(0, u16::MAX)]
        );
    }

    #[test]
    fn except_splits_blocks() {
        let c = moat_api::cidr::parse_network("10.0.0.0/24").expect("cidr");
        let e = moat_api::cidr::parse_network("10.0.0.128/25").expect("cidr");
        let r = block_ranges(&c, &[e]);
        assert_eq!(
            r,
            vec![(u32::from(c.network()), u32::from(c.network()) + 127)]
        );
    }

    #[test]
    fn pairs_are_made_disjoint() {
        let t = |p| (Proto::Tcp, p, p);
        let pairs = vec![
            ((1, 10), t(80)),
            ((5, 20), t(80)),
            ((5, 5), t(81)),
            ((5, 5), (Proto::Tcp, 80, 90)),
        ];
        let n = normalise_pairs(&pairs);
        // Every (ip, port) covered exactly once and the union is unchanged.
        for ip in 0..25u32 {
            for port in 78..95u16 {
                let before = pairs.iter().any(|((a, b), (_, lo, hi))| {
                    (*a..=*b).contains(&ip) && (*lo..=*hi).contains(&port)
                });
                let hits = n
                    .iter()
                    .filter(|((a, b), (_, lo, hi))| {
                        (*a..=*b).contains(&ip) && (*lo..=*hi).contains(&port)
                    })
                    .count();
                assert_eq!(hits, usize::from(before), "ip {ip} port {port}: {n:?}");
            }
        }
    }
}

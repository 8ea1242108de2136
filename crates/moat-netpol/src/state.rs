//! Incremental compilation: the compiled ruleset kept up to date object by object, so a
//! pod, namespace or policy change costs time proportional to what it touches, not to the
//! cluster.
//!
//! [`State`] holds the validated inputs keyed by identity (namespaces by name, pods by
//! namespace/name/uid, policies by namespace/name) and indexes that let a change find what
//! it affects:
//! - per policy rule, the multiset of pod addresses its selector peers match (a pod change
//!   tests the pod against every selector peer, a namespace label change re-tests that
//!   namespace's pods against the peers whose namespace selector flipped);
//! - per local address, the pods claiming it (the owner is the greatest
//!   [`PodInfo::ip_rank`]) and the group keys its owner is dispatched to;
//! - per group key, its member addresses and policies; per policy, the groups it is in;
//! - per (protocol, port name), the addresses of the pods that define it (egress named ports).
//!
//! Mutations update the inputs and indexes at once and mark *dirty* addresses (whose owner or
//! group keys may change) and *dirty* policy directions (whose resolved peers changed).
//! [`State::flush`] re-keys the dirty addresses, creates and drops groups, rebuilds the
//! allow-sets of dirty groups, and returns the [`Delta`]: the touched entries before and
//! after, whose [`render::diff`] is exactly the diff between the whole rulesets.
//!
//! The contract, checked by a randomized test against [`crate::compile()`]: after any sequence of
//! mutations and a flush, [`State::compiled`] equals `compile` of [`State::snapshot`].
//! The group key, group name and allow-set construction are the compiler's own functions;
//! only the bookkeeping of who is affected lives here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use crate::compile::{
    Allow, Compiled, Dir, IpRange, block_ranges, ip_u32, peer_matches, rules_of, selects,
};
use crate::model::{
    NamedPort, NsInfo, Peer, PodInfo, Policy, PortSpec, Proto, Snapshot, legacy_policy,
};
use crate::render;

/// A policy's identity: (namespace, name).
pub type PolicyKey = (String, String);
/// A pod's identity: (name, uid) inside its namespace.
type PodName = (String, String);
/// The owner order of the pods claiming an address (see [`PodInfo::ip_rank`]).
type Rank = (bool, String, String, String);

fn dir_index(d: Dir) -> usize {
    match d {
        Dir::Ingress => 0,
        Dir::Egress => 1,
    }
}

const DIRS: [Dir; 2] = [Dir::Ingress, Dir::Egress];

/// One rule's resolved peers.
#[derive(Debug, Clone, Default)]
struct RulePeers {
    /// The ipBlock ranges (fixed by the rule).
    blocks: Vec<IpRange>,
    /// Addresses of the pods the selector peers match, with how many (pod, peer) matches
    /// put each one there.
    pods: BTreeMap<u32, u32>,
}

#[derive(Debug, Clone)]
struct PolicyEntry {
    policy: Policy,
    /// Per direction, per rule.
    peers: [Vec<RulePeers>; 2],
}

impl PolicyEntry {
    /// The resolved peers of one rule as the compiler shapes them (None = all peers).
    fn rule_ranges(&self, dir: Dir, ri: usize) -> Option<Vec<IpRange>> {
        let rule = &rules_of(&self.policy, dir)?[ri];
        if rule.peers.is_empty() {
            return None;
        }
        let rp = &self.peers[dir_index(dir)][ri];
        let mut v = rp.blocks.clone();
        v.extend(rp.pods.keys().map(|ip| (*ip, *ip)));
        Some(v)
    }

    fn egress_named(&self) -> impl Iterator<Item = (Proto, &str)> {
        rules_of(&self.policy, Dir::Egress)
            .unwrap_or(&[])
            .iter()
            .flat_map(|r| r.ports.iter())
            .filter_map(|p| match p {
                PortSpec::Named(proto, n) => Some((*proto, n.as_str())),
                _ => None,
            })
    }
}

#[derive(Debug, Clone)]
struct Group {
    dir: Dir,
    name: String,
    policies: Vec<PolicyKey>,
    /// The named ports of a member (all members resolve the key's named ports alike).
    ports: Vec<NamedPort>,
    members: BTreeSet<Ipv4Addr>,
    /// Allows everything: kept for its members, but not in the ruleset (no dispatch).
    allow_all: bool,
}

/// Old values of the output entries touched since the last flush (first touch wins).
#[derive(Debug, Default)]
struct Journal {
    groups: BTreeMap<String, Option<(Dir, Allow)>>,
    maps: [BTreeMap<Ipv4Addr, Option<String>>; 2],
    local: BTreeMap<Ipv4Addr, bool>,
    nodes: Option<BTreeSet<Ipv4Addr>>,
}

/// What a flush changed: the touched entries of the ruleset before and after. Entries not
/// in here are unchanged, so `render::diff(before, after)` is the whole diff.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    pub before: Compiled,
    pub after: Compiled,
}

impl Delta {
    /// The nft transaction for this change (empty when nothing changed).
    pub fn script(&self) -> String {
        render::diff(&self.before, &self.after)
    }

    pub fn is_empty(&self) -> bool {
        self.before == self.after
    }

    /// Applies the change to a whole ruleset (the one `before` was taken from).
    pub fn apply_to(&self, c: &mut Compiled) {
        for name in self.before.groups.keys() {
            c.groups.remove(name);
        }
        c.groups.extend(self.after.groups.clone());
        for (map, before, after) in [
            (&mut c.ingress, &self.before.ingress, &self.after.ingress),
            (&mut c.egress, &self.before.egress, &self.after.egress),
        ] {
            for ip in before.keys() {
                map.remove(ip);
            }
            map.extend(after.clone());
        }
        for ip in &self.before.local_ips {
            c.local_ips.remove(ip);
        }
        c.local_ips.extend(self.after.local_ips.iter().copied());
        if self.before.node_addrs != self.after.node_addrs {
            c.node_addrs = self.after.node_addrs.clone();
        }
    }
}

/// The incrementally compiled state of one node. See the module docs.
#[derive(Debug, Default)]
pub struct State {
    namespaces: BTreeMap<String, NsInfo>,
    pods: BTreeMap<String, BTreeMap<PodName, PodInfo>>,
    policies: BTreeMap<String, BTreeMap<String, PolicyEntry>>,
    /// (protocol, port name) → policies with an egress rule naming it.
    egress_named: HashMap<(Proto, String), BTreeSet<PolicyKey>>,
    /// (protocol, port name) → (address, port) of pods defining it, counted.
    named: HashMap<(Proto, String), BTreeMap<(u32, u16), u32>>,
    /// Local address → the pods claiming it.
    claims: BTreeMap<Ipv4Addr, BTreeSet<Rank>>,
    /// Local address → its owner's group key per direction.
    dispatch: BTreeMap<Ipv4Addr, [Option<String>; 2]>,
    groups: HashMap<String, Group>,
    /// Policy → keys of the groups naming it (kept apart from the policy's entry: a group
    /// outlives a delete and re-add of one of its policies within one flush).
    policy_groups: HashMap<PolicyKey, BTreeSet<String>>,
    out: Compiled,
    dirty_ips: BTreeSet<Ipv4Addr>,
    dirty_policies: BTreeSet<(String, String, Dir)>,
    journal: Journal,
}

impl State {
    pub fn new(node_addrs: &[Ipv4Addr]) -> State {
        let mut s = State::default();
        s.out.node_addrs = node_addrs.iter().copied().collect();
        s
    }

    /// Loads a whole snapshot (namespaces, then pods, then policies: each policy resolves
    /// its peers once over the pods already there) and flushes.
    pub fn from_snapshot(snap: &Snapshot) -> State {
        let mut s = State::new(&snap.node_addrs);
        for ns in &snap.namespaces {
            if !s.namespaces.contains_key(&ns.name) {
                s.upsert_namespace_labels(ns.clone());
            }
        }
        for p in &snap.pods {
            s.upsert_pod(p.clone());
        }
        for p in &snap.policies {
            s.upsert_policy(p.clone());
        }
        s.flush();
        s
    }

    /// The ruleset as of the last flush.
    pub fn compiled(&self) -> &Compiled {
        &self.out
    }

    /// The inputs, for a full compile (the self-check).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            namespaces: self.namespaces.values().cloned().collect(),
            pods: self
                .pods
                .values()
                .flat_map(|m| m.values().cloned())
                .collect(),
            policies: self
                .policies
                .values()
                .flat_map(|m| m.values().map(|e| e.policy.clone()))
                .collect(),
            node_addrs: self.out.node_addrs.iter().copied().collect(),
        }
    }

    pub fn namespace_names(&self) -> impl Iterator<Item = &str> {
        self.namespaces.keys().map(String::as_str)
    }

    pub fn namespace(&self, name: &str) -> Option<&NsInfo> {
        self.namespaces.get(name)
    }

    pub fn policy(&self, namespace: &str, name: &str) -> Option<&Policy> {
        Some(&self.policies.get(namespace)?.get(name)?.policy)
    }

    /// Replaces the ruleset the state believes is in force (after a self-check found it
    /// wrong and the kernel was given `c`).
    pub(crate) fn adopt(&mut self, c: Compiled) {
        self.out = c;
        self.journal = Journal::default();
    }

    pub fn set_node_addrs(&mut self, addrs: &[Ipv4Addr]) {
        let new: BTreeSet<Ipv4Addr> = addrs.iter().copied().collect();
        if new != self.out.node_addrs {
            self.journal
                .nodes
                .get_or_insert_with(|| self.out.node_addrs.clone());
            self.out.node_addrs = new;
        }
    }

    // ---- namespaces ----

    /// Adds or replaces a namespace (its labels as peers see them; the legacy flag).
    pub fn upsert_namespace(&mut self, ns: NsInfo) {
        if self.namespaces.get(&ns.name) == Some(&ns) {
            return;
        }
        let legacy_before = self
            .namespaces
            .get(&ns.name)
            .is_some_and(|o| o.legacy_default_deny);
        let (name, legacy) = (ns.name.clone(), ns.legacy_default_deny);
        self.upsert_namespace_labels(ns);
        if legacy != legacy_before {
            let p = legacy_policy(&name);
            if legacy {
                self.upsert_policy(p);
            } else {
                self.delete_policy(&p.namespace, &p.name);
            }
        }
    }

    pub fn delete_namespace(&mut self, name: &str) {
        let Some(old) = self.namespaces.remove(name) else {
            return;
        };
        self.relabel_namespace(name, Some(&old.labels), None);
        if old.legacy_default_deny {
            let p = legacy_policy(name);
            self.delete_policy(&p.namespace, &p.name);
        }
    }

    fn upsert_namespace_labels(&mut self, ns: NsInfo) {
        let name = ns.name.clone();
        let old = self.namespaces.insert(name.clone(), ns);
        let old_labels = old.map(|o| o.labels);
        if old_labels.as_ref() != self.namespaces.get(&name).map(|n| &n.labels) {
            let new_labels = self.namespaces.get(&name).map(|n| n.labels.clone());
            self.relabel_namespace(&name, old_labels.as_ref(), new_labels.as_ref());
        }
    }

    /// A namespace's labels changed: the selector peers whose namespace selector flipped for
    /// it gain or lose its matching pods.
    fn relabel_namespace(
        &mut self,
        ns: &str,
        old: Option<&BTreeMap<String, String>>,
        new: Option<&BTreeMap<String, String>>,
    ) {
        let Some(pods) = self.pods.get(ns) else {
            return;
        };
        for (pns, entries) in &mut self.policies {
            for (pname, entry) in entries.iter_mut() {
                for dir in DIRS {
                    let Some(rules) = rules_of(&entry.policy, dir) else {
                        continue;
                    };
                    let mut changed = false;
                    for (ri, rule) in rules.iter().enumerate() {
                        for peer in &rule.peers {
                            let Peer::Pods {
                                namespaces: Some(nsel),
                                ..
                            } = peer
                            else {
                                continue;
                            };
                            let was = old.is_some_and(|l| nsel.matches(l));
                            let is = new.is_some_and(|l| nsel.matches(l));
                            if was == is {
                                continue;
                            }
                            let set = &mut entry.peers[dir_index(dir)][ri].pods;
                            for pod in pods.values() {
                                // Evaluated with the labels the pod was counted under.
                                let labels = if was { old } else { new };
                                if peer_matches(peer, pns, pod, labels)
                                    && let Some(ip) = pod.ip
                                {
                                    changed |= bump(set, ip_u32(ip), is);
                                }
                            }
                        }
                    }
                    if changed {
                        self.dirty_policies
                            .insert((pns.clone(), pname.clone(), dir));
                    }
                }
            }
        }
    }

    // ---- pods ----

    /// Adds or replaces a pod (identity: namespace, name, uid).
    pub fn upsert_pod(&mut self, pod: PodInfo) {
        let id = (pod.name.clone(), pod.uid.clone());
        let ns = pod.namespace.clone();
        if let Some(old) = self.pods.get_mut(&ns).and_then(|m| m.remove(&id)) {
            if old == pod {
                self.pods.entry(ns).or_default().insert(id, old);
                return;
            }
            self.index_pod(&old, false);
        }
        self.index_pod(&pod, true);
        self.pods.entry(ns).or_default().insert(id, pod);
    }

    pub fn delete_pod(&mut self, namespace: &str, name: &str, uid: &str) {
        let Some(m) = self.pods.get_mut(namespace) else {
            return;
        };
        let Some(old) = m.remove(&(name.to_string(), uid.to_string())) else {
            return;
        };
        if m.is_empty() {
            self.pods.remove(namespace);
        }
        self.index_pod(&old, false);
    }

    /// Counts a pod into (or out of) every index: peer sets, named ports, address claims.
    fn index_pod(&mut self, pod: &PodInfo, add: bool) {
        let Some(ip) = pod.ip else { return };
        if pod.host_network {
            return;
        }
        let ns_labels = self.namespaces.get(&pod.namespace).map(|n| &n.labels);
        for (pns, entries) in &mut self.policies {
            for (pname, entry) in entries.iter_mut() {
                for dir in DIRS {
                    let Some(rules) = rules_of(&entry.policy, dir) else {
                        continue;
                    };
                    let mut changed = false;
                    for (ri, rule) in rules.iter().enumerate() {
                        for peer in &rule.peers {
                            if peer_matches(peer, pns, pod, ns_labels) {
                                let set = &mut entry.peers[dir_index(dir)][ri].pods;
                                changed |= bump(set, ip_u32(ip), add);
                            }
                        }
                    }
                    if changed {
                        self.dirty_policies
                            .insert((pns.clone(), pname.clone(), dir));
                    }
                }
            }
        }
        let mut seen: BTreeSet<(Proto, &str)> = BTreeSet::new();
        for np in &pod.ports {
            // The first port of a name and protocol is the one that counts.
            if !seen.insert((np.proto, np.name.as_str())) {
                continue;
            }
            let k = (np.proto, np.name.clone());
            let set = self.named.entry(k.clone()).or_default();
            if bump(set, (ip_u32(ip), np.port), add) {
                if set.is_empty() {
                    self.named.remove(&k);
                }
                for (pns, pname) in self.egress_named.get(&k).into_iter().flatten() {
                    self.dirty_policies
                        .insert((pns.clone(), pname.clone(), Dir::Egress));
                }
            }
        }
        if pod.local {
            let claims = self.claims.entry(ip).or_default();
            let rank = pod.ip_rank();
            let rank = (
                rank.0,
                rank.1.to_string(),
                rank.2.to_string(),
                rank.3.to_string(),
            );
            if add {
                claims.insert(rank);
            } else {
                claims.remove(&rank);
            }
            let claimed = !claims.is_empty();
            if !claimed {
                self.claims.remove(&ip);
            }
            self.set_local(ip, claimed);
            self.dirty_ips.insert(ip);
        }
    }

    // ---- policies ----

    /// Adds or replaces a (validated) policy.
    pub fn upsert_policy(&mut self, policy: Policy) {
        let (ns, name) = (policy.namespace.clone(), policy.name.clone());
        if self.policy(&ns, &name) == Some(&policy) {
            return;
        }
        self.remove_policy_entry(&ns, &name);
        let entry = PolicyEntry {
            peers: [
                self.resolve_peers(&policy, Dir::Ingress),
                self.resolve_peers(&policy, Dir::Egress),
            ],
            policy,
        };
        for (proto, n) in entry.egress_named() {
            self.egress_named
                .entry((proto, n.to_string()))
                .or_default()
                .insert((ns.clone(), name.clone()));
        }
        self.mark_selected(&entry.policy);
        // Groups that keep their members (same key) still get the new rules.
        for dir in DIRS {
            self.dirty_policies.insert((ns.clone(), name.clone(), dir));
        }
        self.policies.entry(ns).or_default().insert(name, entry);
    }

    pub fn delete_policy(&mut self, namespace: &str, name: &str) {
        self.remove_policy_entry(namespace, name);
    }

    fn remove_policy_entry(&mut self, ns: &str, name: &str) -> Option<PolicyEntry> {
        let m = self.policies.get_mut(ns)?;
        let entry = m.remove(name)?;
        if m.is_empty() {
            self.policies.remove(ns);
        }
        for (proto, n) in entry.egress_named() {
            let k = (proto, n.to_string());
            if let Some(s) = self.egress_named.get_mut(&k) {
                s.remove(&(ns.to_string(), name.to_string()));
                if s.is_empty() {
                    self.egress_named.remove(&k);
                }
            }
        }
        // Every member of its groups is selected by it, so re-keying them empties (and
        // drops) the groups that named it.
        self.mark_selected(&entry.policy);
        Some(entry)
    }

    /// Marks the addresses of the local pods a policy selects.
    fn mark_selected(&mut self, p: &Policy) {
        for pod in self
            .pods
            .get(&p.namespace)
            .into_iter()
            .flat_map(|m| m.values())
        {
            if let (true, Some(ip)) = (pod.local && selects(p, pod), pod.ip) {
                self.dirty_ips.insert(ip);
            }
        }
    }

    fn resolve_peers(&self, p: &Policy, dir: Dir) -> Vec<RulePeers> {
        let Some(rules) = rules_of(p, dir) else {
            return vec![];
        };
        rules
            .iter()
            .map(|rule| {
                let mut rp = RulePeers::default();
                for peer in &rule.peers {
                    match peer {
                        Peer::Block { cidr, except } => {
                            rp.blocks.extend(block_ranges(cidr, except));
                        }
                        Peer::Pods { namespaces, .. } => {
                            let nss: Vec<&str> = match namespaces {
                                None => vec![p.namespace.as_str()],
                                Some(nsel) => self
                                    .namespaces
                                    .values()
                                    .filter(|n| nsel.matches(&n.labels))
                                    .map(|n| n.name.as_str())
                                    .collect(),
                            };
                            for ns in nss {
                                let labels = self.namespaces.get(ns).map(|n| &n.labels);
                                for pod in self.pods.get(ns).into_iter().flat_map(|m| m.values()) {
                                    if peer_matches(peer, &p.namespace, pod, labels)
                                        && let Some(ip) = pod.ip
                                    {
                                        bump(&mut rp.pods, ip_u32(ip), true);
                                    }
                                }
                            }
                        }
                    }
                }
                rp
            })
            .collect()
    }

    // ---- output, journaled ----

    fn set_local(&mut self, ip: Ipv4Addr, present: bool) {
        let was = self.out.local_ips.contains(&ip);
        self.journal.local.entry(ip).or_insert(was);
        if present {
            self.out.local_ips.insert(ip);
        } else {
            self.out.local_ips.remove(&ip);
        }
    }

    fn set_group(&mut self, name: &str, value: Option<(Dir, Allow)>) {
        if !self.journal.groups.contains_key(name) {
            let old = self.out.groups.get(name).cloned();
            self.journal.groups.insert(name.to_string(), old);
        }
        match value {
            Some(v) => self.out.groups.insert(name.to_string(), v),
            None => self.out.groups.remove(name),
        };
    }

    /// Sets an address's map entries from its owner's groups.
    fn refresh_maps(&mut self, ip: Ipv4Addr) {
        for dir in DIRS {
            let want = self
                .dispatch
                .get(&ip)
                .and_then(|k| k[dir_index(dir)].as_ref())
                .and_then(|k| self.groups.get(k))
                .filter(|g| !g.allow_all)
                .map(|g| g.name.clone());
            let map = match dir {
                Dir::Ingress => &mut self.out.ingress,
                Dir::Egress => &mut self.out.egress,
            };
            if map.get(&ip) == want.as_ref() {
                continue;
            }
            let old = map.get(&ip).cloned();
            self.journal.maps[dir_index(dir)].entry(ip).or_insert(old);
            match want {
                Some(n) => map.insert(ip, n),
                None => map.remove(&ip),
            };
        }
    }
}

/// Adds or removes one count; true when the key appeared or disappeared.
fn bump<K: Ord>(set: &mut BTreeMap<K, u32>, k: K, add: bool) -> bool {
    if add {
        let c = set.entry(k).or_insert(0);
        *c += 1;
        *c == 1
    } else {
        match set.get_mut(&k) {
            Some(c) if *c > 1 => {
                *c -= 1;
                false
            }
            Some(_) => {
                set.remove(&k);
                true
            }
            None => false,
        }
    }
}

mod flush;

#[cfg(test)]
mod tests;

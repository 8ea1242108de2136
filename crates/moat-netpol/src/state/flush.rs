//! [`State::flush`]: turns the marks left by mutations into ruleset changes — re-keys dirty
//! addresses (creating and dropping groups), rebuilds the allow-sets of groups whose
//! policies' peers changed, and hands back the touched entries as a [`Delta`].

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::{DIRS, Delta, Group, PolicyKey, State, dir_index};
use crate::compile::{
    Allow, Compiled, Dir, IpRange, allow_of, group_key, group_name, rules_of, selects,
};
use crate::model::{NamedPort, Policy, Rule};

impl State {
    /// Brings the ruleset up to date with the mutations since the last flush and returns
    /// what changed. Cost: the dirty addresses (each re-keyed against the policies of its
    /// namespace) plus the groups whose policies' peers changed (each rebuilt).
    pub fn flush(&mut self) -> Delta {
        // Groups created by this flush are built from the current peers already.
        let mut fresh: BTreeSet<String> = BTreeSet::new();
        for ip in std::mem::take(&mut self.dirty_ips) {
            self.rekey(ip, &mut fresh);
        }
        let mut dirty: BTreeSet<String> = BTreeSet::new();
        for (ns, name, dir) in std::mem::take(&mut self.dirty_policies) {
            for key in self.policy_groups.get(&(ns, name)).into_iter().flatten() {
                if self.groups.get(key).is_some_and(|g| g.dir == dir) && !fresh.contains(key) {
                    dirty.insert(key.clone());
                }
            }
        }
        for key in dirty {
            self.rebuild(&key);
        }
        self.take_delta()
    }

    /// Recomputes which groups an address's owner belongs to and moves it there.
    fn rekey(&mut self, ip: Ipv4Addr, fresh: &mut BTreeSet<String>) {
        let owner = self
            .claims
            .get(&ip)
            .and_then(|c| c.last())
            .and_then(|(_, ns, name, uid)| self.pods.get(ns)?.get(&(name.clone(), uid.clone())));
        let mut want: [Option<(String, Vec<PolicyKey>)>; 2] = [None, None];
        let mut ports: Vec<NamedPort> = Vec::new();
        if let Some(pod) = owner {
            for dir in DIRS {
                let selecting: Vec<&Policy> = self
                    .policies
                    .get(&pod.namespace)
                    .into_iter()
                    .flat_map(|m| m.values())
                    .map(|e| &e.policy)
                    .filter(|p| rules_of(p, dir).is_some() && selects(p, pod))
                    .collect();
                if !selecting.is_empty() {
                    let key = group_key(dir, &selecting, &pod.ports);
                    let pols = selecting
                        .iter()
                        .map(|p| (p.namespace.clone(), p.name.clone()))
                        .collect();
                    want[dir_index(dir)] = Some((key, pols));
                }
            }
            ports = pod.ports.clone();
        }
        let old = self.dispatch.get(&ip).cloned().unwrap_or_default();
        let mut now: [Option<String>; 2] = [None, None];
        for dir in DIRS {
            let d = dir_index(dir);
            let new = want[d].take();
            if old[d].as_ref() != new.as_ref().map(|(k, _)| k) {
                if let Some(k) = &old[d] {
                    self.detach(ip, k);
                }
                if let Some((k, pols)) = &new {
                    self.attach(ip, k, dir, pols, &ports, fresh);
                }
            }
            now[d] = new.map(|(k, _)| k);
        }
        if now.iter().all(Option::is_none) {
            self.dispatch.remove(&ip);
        } else {
            self.dispatch.insert(ip, now);
        }
        self.refresh_maps(ip);
    }

    fn attach(
        &mut self,
        ip: Ipv4Addr,
        key: &str,
        dir: Dir,
        policies: &[PolicyKey],
        ports: &[NamedPort],
        fresh: &mut BTreeSet<String>,
    ) {
        if !self.groups.contains_key(key) {
            let mut g = Group {
                dir,
                name: group_name(dir, key),
                policies: policies.to_vec(),
                ports: ports.to_vec(),
                members: BTreeSet::new(),
                allow_all: false,
            };
            let allow = self.group_allow(&g);
            g.allow_all = allow.allows_all();
            if !g.allow_all {
                self.set_group(&g.name, Some((dir, allow)));
            }
            for pk in &g.policies {
                self.policy_groups
                    .entry(pk.clone())
                    .or_default()
                    .insert(key.to_string());
            }
            self.groups.insert(key.to_string(), g);
            fresh.insert(key.to_string());
        }
        if let Some(g) = self.groups.get_mut(key) {
            g.members.insert(ip);
        }
    }

    fn detach(&mut self, ip: Ipv4Addr, key: &str) {
        let Some(g) = self.groups.get_mut(key) else {
            return;
        };
        g.members.remove(&ip);
        if !g.members.is_empty() {
            return;
        }
        let Some(g) = self.groups.remove(key) else {
            return;
        };
        for pk in &g.policies {
            if let Some(set) = self.policy_groups.get_mut(pk) {
                set.remove(key);
                if set.is_empty() {
                    self.policy_groups.remove(pk);
                }
            }
        }
        self.set_group(&g.name, None);
    }

    /// Rebuilds a group's allow-sets from its policies' current peers.
    fn rebuild(&mut self, key: &str) {
        let Some(g) = self.groups.get(key) else {
            return;
        };
        let allow = self.group_allow(g);
        let (name, dir, was_all) = (g.name.clone(), g.dir, g.allow_all);
        let all = allow.allows_all();
        let want = (!all).then_some((dir, allow));
        if self.out.groups.get(&name) != want.as_ref() {
            self.set_group(&name, want);
        }
        if all != was_all {
            let members: Vec<Ipv4Addr> = match self.groups.get_mut(key) {
                Some(g) => {
                    g.allow_all = all;
                    g.members.iter().copied().collect()
                }
                None => vec![],
            };
            for ip in members {
                self.refresh_maps(ip);
            }
        }
    }

    /// What a group allows, built by the compiler's own function from the resolved peers.
    fn group_allow(&self, g: &Group) -> Allow {
        let mut rules: Vec<(&Rule, Option<Vec<IpRange>>)> = Vec::new();
        for (ns, name) in &g.policies {
            let Some(e) = self.policies.get(ns).and_then(|m| m.get(name)) else {
                continue;
            };
            for (ri, r) in rules_of(&e.policy, g.dir).unwrap_or(&[]).iter().enumerate() {
                rules.push((r, e.rule_ranges(g.dir, ri)));
            }
        }
        let named = |proto, name: &str| -> Vec<(u32, u16)> {
            self.named
                .get(&(proto, name.to_string()))
                .map(|m| m.keys().copied().collect())
                .unwrap_or_default()
        };
        allow_of(g.dir, rules.iter().map(|(r, p)| (*r, p)), &g.ports, &named)
    }

    /// The journaled entries, before and now; clears the journal.
    fn take_delta(&mut self) -> Delta {
        let j = std::mem::take(&mut self.journal);
        let mut before = Compiled::default();
        let mut after = Compiled::default();
        for (name, old) in j.groups {
            if let Some(now) = self.out.groups.get(&name) {
                after.groups.insert(name.clone(), now.clone());
            }
            if let Some(old) = old {
                before.groups.insert(name, old);
            }
        }
        for dir in DIRS {
            let (cur, b, a) = match dir {
                Dir::Ingress => (&self.out.ingress, &mut before.ingress, &mut after.ingress),
                Dir::Egress => (&self.out.egress, &mut before.egress, &mut after.egress),
            };
            for (ip, old) in &j.maps[dir_index(dir)] {
                if let Some(old) = old {
                    b.insert(*ip, old.clone());
                }
                if let Some(now) = cur.get(ip) {
                    a.insert(*ip, now.clone());
                }
            }
        }
        for (ip, was) in j.local {
            if was {
                before.local_ips.insert(ip);
            }
            if self.out.local_ips.contains(&ip) {
                after.local_ips.insert(ip);
            }
        }
        if let Some(old) = j.nodes {
            before.node_addrs = old;
            after.node_addrs = self.out.node_addrs.clone();
        }
        Delta { before, after }
    }
}

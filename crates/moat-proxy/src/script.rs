//! [`Ruleset`]s rendered as `nft -f` scripts: a full rewrite, or the element- and
//! chain-level difference between the last committed ruleset and the desired one. Both are
//! a single transaction. Only fixed keywords, hash-derived identifiers and typed values
//! (addresses, ports, numbers) are written, never a user-provided string.
//!
//! Every dynamic command is one line of the flat form `VERB KIND ip moat-proxy NAME ...`, so
//! the scripts can be replayed against a [`Ruleset`] (see the property tests).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::ruleset::{
    CLUSTER_CIDRS, FAMILY, HAIRPIN, MASQ_MARK, NO_EP_NODEPORTS, NO_EP_SERVICES, NODE_IPS, Ruleset,
    SERVICE_IPS, SERVICE_NODEPORTS, TABLE,
};

/// Elements per `add element` line: keeps lines bounded for nft's parser.
const CHUNK: usize = 1000;

/// The fixed part of the table: declarations and base chains. Hooks: nat at `dstnat`
/// (prerouting, and output where nft 1.0.6 only takes the number, -100) and `srcnat` (postrouting); the no-endpoint check at
/// `filter - 10` on input, forward and output, for new connections only.
fn fixed() -> String {
    format!(
        "table {FAMILY} {TABLE} {{
  set {NODE_IPS} {{ type ipv4_addr; }}
  set {CLUSTER_CIDRS} {{ type ipv4_addr; flags interval; }}
  set {HAIRPIN} {{ type ipv4_addr . ipv4_addr; }}
  map {SERVICE_IPS} {{ type ipv4_addr . inet_proto . inet_service : verdict; }}
  map {SERVICE_NODEPORTS} {{ type inet_proto . inet_service : verdict; }}
  map {NO_EP_SERVICES} {{ type ipv4_addr . inet_proto . inet_service : verdict; }}
  map {NO_EP_NODEPORTS} {{ type inet_proto . inet_service : verdict; }}
  chain mark-for-masquerade {{
    meta mark set meta mark or {MASQ_MARK:#x}
  }}
  chain reject-chain {{
    meta l4proto tcp reject with tcp reset
    reject with icmp type port-unreachable
  }}
  chain services {{
    ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}
    ip daddr @{NODE_IPS} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}
  }}
  chain endpoints-check {{
    ip daddr . meta l4proto . th dport vmap @{NO_EP_SERVICES}
    ip daddr @{NODE_IPS} meta l4proto . th dport vmap @{NO_EP_NODEPORTS}
  }}
  chain nat-prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    jump services
  }}
  chain nat-output {{
    type nat hook output priority -100; policy accept;
    jump services
  }}
  chain nat-postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ct status dnat ip saddr . ip daddr @{HAIRPIN} jump mark-for-masquerade
    meta mark & {MASQ_MARK:#x} == 0 return
    meta mark set meta mark xor {MASQ_MARK:#x}
    masquerade fully-random
  }}
  chain filter-input {{
    type filter hook input priority filter - 10; policy accept;
    ct state new jump endpoints-check
  }}
  chain filter-forward {{
    type filter hook forward priority filter - 10; policy accept;
    ct state new jump endpoints-check
  }}
  chain filter-output {{
    type filter hook output priority filter - 10; policy accept;
    ct state new jump endpoints-check
  }}
}}
"
    )
}

fn elements(out: &mut String, verb: &str, name: &str, elems: &[String]) {
    for chunk in elems.chunks(CHUNK) {
        let _ = writeln!(
            out,
            "{verb} element {FAMILY} {TABLE} {name} {{ {} }}",
            chunk.join(", ")
        );
    }
}

fn add_set(out: &mut String, name: &str, timeout: u32) {
    let _ = writeln!(
        out,
        "add set {FAMILY} {TABLE} {name} {{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}"
    );
}

fn add_chain(out: &mut String, name: &str) {
    let _ = writeln!(out, "add chain {FAMILY} {TABLE} {name}");
}

fn add_rules(out: &mut String, name: &str, rules: &[String]) {
    for rule in rules {
        let _ = writeln!(out, "add rule {FAMILY} {TABLE} {name} {rule}");
    }
}

fn map_elems(m: &BTreeMap<String, String>) -> Vec<String> {
    m.iter().map(|(k, v)| format!("{k} : {v}")).collect()
}

/// How a full rewrite treats what is already in the kernel.
#[derive(Debug, Clone, Copy)]
pub enum Base<'a> {
    /// Nothing known (first sync of this process): whatever a previous run left is deleted
    /// with the table, in the same transaction.
    Unknown,
    /// The last committed ruleset: the table is flushed (rules, then elements) and the
    /// dynamic chains and sets no longer wanted are deleted.
    Known(&'a Ruleset),
}

/// A transaction that makes the table exactly `new`.
pub fn full(base: Base<'_>, new: &Ruleset) -> String {
    let mut s = format!("add table {FAMILY} {TABLE}\n");
    match base {
        Base::Unknown => {
            let _ = writeln!(s, "delete table {FAMILY} {TABLE}");
            let _ = writeln!(s, "add table {FAMILY} {TABLE}");
        }
        Base::Known(old) => {
            // `flush table` empties chains but leaves set and map elements (which still
            // reference chains), so the fixed maps and sets are flushed one by one.
            let _ = writeln!(s, "flush table {FAMILY} {TABLE}");
            for name in old.maps.keys() {
                let _ = writeln!(s, "flush map {FAMILY} {TABLE} {name}");
            }
            for name in old.sets.keys().chain(old.affinity.keys()) {
                let _ = writeln!(s, "flush set {FAMILY} {TABLE} {name}");
            }
            for name in old.chains.keys().filter(|n| !new.chains.contains_key(*n)) {
                let _ = writeln!(s, "delete chain {FAMILY} {TABLE} {name}");
            }
            for name in old
                .affinity
                .keys()
                .filter(|n| !new.affinity.contains_key(*n))
            {
                let _ = writeln!(s, "delete set {FAMILY} {TABLE} {name}");
            }
        }
    }
    s.push_str(&fixed());
    for (name, t) in &new.affinity {
        add_set(&mut s, name, *t);
    }
    for name in new.chains.keys() {
        add_chain(&mut s, name);
    }
    for (name, rules) in &new.chains {
        add_rules(&mut s, name, rules);
    }
    for (name, elems) in &new.sets {
        elements(
            &mut s,
            "add",
            name,
            &elems.iter().cloned().collect::<Vec<_>>(),
        );
    }
    for (name, m) in &new.maps {
        elements(&mut s, "add", name, &map_elems(m));
    }
    s
}

/// The smallest transaction taking the kernel from `old` to `new`; empty when equal.
/// Order matters inside the transaction: objects are created before anything refers to
/// them, and references are gone before the objects are deleted.
pub fn diff(old: &Ruleset, new: &Ruleset) -> String {
    let mut s = String::new();
    // 1. New affinity sets and chains (empty), so rules and elements may refer to them.
    for (name, t) in new
        .affinity
        .iter()
        .filter(|(n, _)| !old.affinity.contains_key(*n))
    {
        add_set(&mut s, name, *t);
    }
    for name in new.chains.keys().filter(|n| !old.chains.contains_key(*n)) {
        add_chain(&mut s, name);
    }
    // 2. Rules of new and changed chains (a changed chain is flushed and rewritten whole:
    //    chains are short, and a flush is cheaper than addressing rules by handle).
    for (name, rules) in &new.chains {
        match old.chains.get(name) {
            None => add_rules(&mut s, name, rules),
            Some(o) if o != rules => {
                let _ = writeln!(s, "flush chain {FAMILY} {TABLE} {name}");
                add_rules(&mut s, name, rules);
            }
            Some(_) => {}
        }
    }
    // 3. Set elements.
    let empty_set = BTreeSet::new();
    let names: BTreeSet<&String> = old.sets.keys().chain(new.sets.keys()).collect();
    for name in names {
        let o = old.sets.get(name).unwrap_or(&empty_set);
        let n = new.sets.get(name).unwrap_or(&empty_set);
        let del: Vec<String> = o.difference(n).cloned().collect();
        let add: Vec<String> = n.difference(o).cloned().collect();
        elements(&mut s, "delete", name, &del);
        elements(&mut s, "add", name, &add);
    }
    // 4. Map elements: a key whose verdict changed is deleted and added again.
    let empty_map = BTreeMap::new();
    let names: BTreeSet<&String> = old.maps.keys().chain(new.maps.keys()).collect();
    for name in names {
        let o = old.maps.get(name).unwrap_or(&empty_map);
        let n = new.maps.get(name).unwrap_or(&empty_map);
        let del: Vec<String> = o
            .iter()
            .filter(|(k, v)| n.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect();
        let add: Vec<String> = n
            .iter()
            .filter(|(k, v)| o.get(*k) != Some(*v))
            .map(|(k, v)| format!("{k} : {v}"))
            .collect();
        elements(&mut s, "delete", name, &del);
        elements(&mut s, "add", name, &add);
    }
    // 5. Chains nobody refers to any more: flush all first (they may refer to each other),
    //    then delete; then the affinity sets their rules used.
    let gone: Vec<&String> = old
        .chains
        .keys()
        .filter(|n| !new.chains.contains_key(*n))
        .collect();
    for name in &gone {
        let _ = writeln!(s, "flush chain {FAMILY} {TABLE} {name}");
    }
    for name in &gone {
        let _ = writeln!(s, "delete chain {FAMILY} {TABLE} {name}");
    }
    for name in old
        .affinity
        .keys()
        .filter(|n| !new.affinity.contains_key(*n))
    {
        let _ = writeln!(s, "delete set {FAMILY} {TABLE} {name}");
    }
    s
}

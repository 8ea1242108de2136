//! Turns a [`Compiled`] ruleset into `nft -f` text: a full replacement, or the minimal
//! diff between two compiled states. Only generated identifiers (hash-derived group names,
//! fixed keywords) and typed values (addresses, protocol keywords, port numbers) are ever
//! written; no user-provided string reaches this text.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::compile::{Allow, Compiled, Dir, IpRange, PortRange};
use crate::model::Proto;

pub const TABLE: &str = "moat_netpol";

fn ip(v: u32) -> String {
    Ipv4Addr::from(v).to_string()
}

fn ip_range((a, b): IpRange) -> String {
    if a == b {
        ip(a)
    } else {
        format!("{}-{}", ip(a), ip(b))
    }
}

fn proto(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
        Proto::Sctp => "sctp",
    }
}

fn port_range((p, a, b): PortRange) -> String {
    if a == b {
        format!("{} . {a}", proto(p))
    } else {
        format!("{} . {a}-{b}", proto(p))
    }
}

/// A peer allowed on every protocol and port. The set is a concatenation with the whole
/// protocol range rather than a plain `ipv4_addr` interval set on purpose: nft 1.0.x, to
/// apply *any* element change, first reads back the elements of every plain interval set in
/// the network namespace (hundreds of milliseconds at 100k elements), and concatenated
/// interval sets are not read back. `meta l4proto` is defined for every IPv4 packet, so the
/// meaning is unchanged.
fn peer_elem(r: IpRange) -> String {
    format!("{} . 0-255", ip_range(r))
}

/// The three sets of a group, as (suffix, nft type, elements).
fn group_sets(a: &Allow) -> [(&'static str, &'static str, Vec<String>); 3] {
    [
        (
            "peers",
            "ipv4_addr . inet_proto",
            a.peers.iter().map(|r| peer_elem(*r)).collect(),
        ),
        (
            "ports",
            "inet_proto . inet_service",
            a.ports.iter().map(|p| port_range(*p)).collect(),
        ),
        (
            "pp",
            "ipv4_addr . inet_proto . inet_service",
            a.peer_ports
                .iter()
                .map(|(i, p)| format!("{} . {}", ip_range(*i), port_range(*p)))
                .collect(),
        ),
    ]
}

fn group_chain(name: &str, dir: Dir) -> String {
    let addr = match dir {
        Dir::Ingress => "ip saddr",
        Dir::Egress => "ip daddr",
    };
    format!(
        "  chain {name} {{\n    {addr} . meta l4proto @{name}_peers return\n    meta l4proto . th dport @{name}_ports return\n    {addr} . meta l4proto . th dport @{name}_pp return\n    drop\n  }}\n"
    )
}

fn set_decl(name: &str, ty: &str, elems: &[String]) -> String {
    let mut s = format!("  set {name} {{\n    type {ty}\n    flags interval\n");
    if !elems.is_empty() {
        let _ = writeln!(s, "    elements = {{ {} }}", elems.join(", "));
    }
    s.push_str("  }\n");
    s
}

fn group_decl(name: &str, dir: Dir, a: &Allow) -> String {
    let mut s = String::new();
    for (suffix, ty, elems) in group_sets(a) {
        s.push_str(&set_decl(&format!("{name}_{suffix}"), ty, &elems));
    }
    s.push_str(&group_chain(name, dir));
    s
}

fn map_elems(m: &std::collections::BTreeMap<Ipv4Addr, String>) -> Vec<String> {
    m.iter().map(|(ip, g)| format!("{ip} : jump {g}")).collect()
}

fn self_elems(c: &Compiled) -> Vec<String> {
    c.local_ips
        .iter()
        .map(|ip| format!("{ip} . {ip}"))
        .collect()
}

fn plain_set(name: &str, ty: &str, elems: &[String]) -> String {
    let mut s = format!("  set {name} {{\n    type {ty}\n");
    if !elems.is_empty() {
        let _ = writeln!(s, "    elements = {{ {} }}", elems.join(", "));
    }
    s.push_str("  }\n");
    s
}

fn map_decl(name: &str, elems: &[String]) -> String {
    let mut s = format!("  map {name} {{\n    type ipv4_addr : verdict\n");
    if !elems.is_empty() {
        let _ = writeln!(s, "    elements = {{ {} }}", elems.join(", "));
    }
    s.push_str("  }\n");
    s
}

/// A transaction that replaces the whole table (creating it if missing).
pub fn full(c: &Compiled) -> String {
    let mut s =
        format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n");
    let nodes: Vec<String> = c.node_addrs.iter().map(|a| a.to_string()).collect();
    s.push_str(&plain_set("node_addrs", "ipv4_addr", &nodes));
    s.push_str(&plain_set(
        "self_pairs",
        "ipv4_addr . ipv4_addr",
        &self_elems(c),
    ));
    for (name, (dir, a)) in &c.groups {
        s.push_str(&group_decl(name, *dir, a));
    }
    s.push_str(&map_decl("ingress", &map_elems(&c.ingress)));
    s.push_str(&map_decl("egress", &map_elems(&c.egress)));
    // Replies first, then the always-allowed cases, then source egress and destination
    // ingress, each returning on allow and dropping otherwise. Priority `filter` runs after
    // DNAT (`dstnat`), so a Service connection is judged by its backend pod.
    s.push_str(
        "  chain forward_hook {\n    type filter hook forward priority filter; policy accept;\n    ct state established,related accept\n    ct state invalid drop\n    ip saddr . ip daddr @self_pairs accept\n    ip saddr @node_addrs accept\n    ip saddr vmap @egress\n    ip daddr vmap @ingress\n  }\n}\n",
    );
    s
}

fn elem_cmd(out: &mut String, verb: &str, set: &str, elems: &[String]) {
    if !elems.is_empty() {
        let _ = writeln!(
            out,
            "{verb} element inet {TABLE} {set} {{ {} }}",
            elems.join(", ")
        );
    }
}

/// Elements only in `old` and only in `new`, formatted; a sorted-merge walk (normalised
/// allow-sets are sorted and free of duplicates; anything else is sorted first).
fn diff_typed<T: Ord + Clone>(
    old: &[T],
    new: &[T],
    fmt: impl Fn(&T) -> String,
) -> (Vec<String>, Vec<String>) {
    let sorted = |v: &[T]| -> Vec<T> {
        let mut v = v.to_vec();
        v.sort();
        v.dedup();
        v
    };
    let (o, n);
    let strict = |v: &[T]| v.is_sorted_by(|a, b| a < b);
    let (old, new) = match (strict(old), strict(new)) {
        (true, true) => (old, new),
        _ => {
            o = sorted(old);
            n = sorted(new);
            (o.as_slice(), n.as_slice())
        }
    };
    let (mut del, mut add) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) if a == b => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a < b => {
                del.push(fmt(a));
                i += 1;
            }
            (Some(a), None) => {
                del.push(fmt(a));
                i += 1;
            }
            (_, Some(b)) => {
                add.push(fmt(b));
                j += 1;
            }
            (None, None) => break,
        }
    }
    (del, add)
}

fn diff_list(old: &[String], new: &[String]) -> (Vec<String>, Vec<String>) {
    let o: BTreeSet<&String> = old.iter().collect();
    let n: BTreeSet<&String> = new.iter().collect();
    (
        o.difference(&n).map(|s| (*s).clone()).collect(),
        n.difference(&o).map(|s| (*s).clone()).collect(),
    )
}

/// The smallest transaction taking the kernel from `old` to `new`: set and map element
/// changes, plus creation/removal of whole groups. Empty when nothing changed.
pub fn diff(old: &Compiled, new: &Compiled) -> String {
    let mut s = String::new();
    // 1. New groups (their chains must exist before map elements jump to them).
    let added: Vec<(&String, &(Dir, Allow))> = new
        .groups
        .iter()
        .filter(|(n, _)| !old.groups.contains_key(*n))
        .collect();
    if !added.is_empty() {
        let _ = writeln!(s, "table inet {TABLE} {{");
        for (name, (dir, a)) in &added {
            s.push_str(&group_decl(name, *dir, a));
        }
        s.push_str("}\n");
    }
    // 2. Element changes inside groups that stay; deletions first so interval sets never
    //    hold overlapping elements mid-transaction.
    for (name, (_, a_new)) in &new.groups {
        let Some((_, a_old)) = old.groups.get(name) else {
            continue;
        };
        if a_old == a_new {
            continue;
        }
        // Typed values are compared and only the differences formatted: a change to a big
        // group costs its size in comparisons, not in text.
        let sets = [
            (
                "peers",
                diff_typed(&a_old.peers, &a_new.peers, |r| peer_elem(*r)),
            ),
            (
                "ports",
                diff_typed(&a_old.ports, &a_new.ports, |p| port_range(*p)),
            ),
            (
                "pp",
                diff_typed(&a_old.peer_ports, &a_new.peer_ports, |(i, p)| {
                    format!("{} . {}", ip_range(*i), port_range(*p))
                }),
            ),
        ];
        for (suffix, (del, add)) in sets {
            elem_cmd(&mut s, "delete", &format!("{name}_{suffix}"), &del);
            elem_cmd(&mut s, "add", &format!("{name}_{suffix}"), &add);
        }
    }
    // 3. Plain sets.
    let nodes = |c: &Compiled| {
        c.node_addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
    };
    for (set, o, n) in [
        ("node_addrs", nodes(old), nodes(new)),
        ("self_pairs", self_elems(old), self_elems(new)),
    ] {
        let (del, add) = diff_list(&o, &n);
        elem_cmd(&mut s, "delete", set, &del);
        elem_cmd(&mut s, "add", set, &add);
    }
    // 4. Dispatch maps: a key whose target changed is deleted and re-added.
    for (map, o, n) in [
        ("ingress", &old.ingress, &new.ingress),
        ("egress", &old.egress, &new.egress),
    ] {
        let del: Vec<String> = o
            .iter()
            .filter(|(ip, g)| n.get(ip) != Some(g))
            .map(|(ip, _)| ip.to_string())
            .collect();
        let add: Vec<String> = n
            .iter()
            .filter(|(ip, g)| o.get(ip) != Some(g))
            .map(|(ip, g)| format!("{ip} : jump {g}"))
            .collect();
        elem_cmd(&mut s, "delete", map, &del);
        elem_cmd(&mut s, "add", map, &add);
    }
    // 5. Groups nobody maps to any more.
    for name in old.groups.keys().filter(|n| !new.groups.contains_key(*n)) {
        let _ = writeln!(s, "flush chain inet {TABLE} {name}");
        let _ = writeln!(s, "delete chain inet {TABLE} {name}");
        for suffix in ["peers", "ports", "pp"] {
            let _ = writeln!(s, "delete set inet {TABLE} {name}_{suffix}");
        }
    }
    s
}

/// Rules and set elements in a compiled state (for the benchmark's counts).
pub fn counts(c: &Compiled) -> (usize, usize) {
    let rules = 6 + 4 * c.groups.len();
    let elems: usize = c
        .groups
        .values()
        .map(|(_, a)| a.peers.len() + a.ports.len() + a.peer_ports.len())
        .sum::<usize>()
        + c.ingress.len()
        + c.egress.len()
        + c.local_ips.len()
        + c.node_addrs.len();
    (rules, elems)
}

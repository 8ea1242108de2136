//! An nft-free evaluator of a *compiled* ruleset: walks the same structure the kernel walks
//! (self pairs, node addresses, egress map, ingress map, the three group sets) for the first
//! packet of a connection. The property test checks it against the independent reference
//! semantics; the lab checks it against real packets.

use std::net::Ipv4Addr;

use crate::compile::{Allow, Compiled};
use crate::model::Proto;

impl Allow {
    /// Whether traffic with the given peer address and port is allowed by this group.
    pub fn matches(&self, peer: Ipv4Addr, proto: Proto, port: u16) -> bool {
        let ip = u32::from(peer);
        let in_ip = |(a, b): (u32, u32)| (a..=b).contains(&ip);
        let in_port = |(p, a, b): (Proto, u16, u16)| p == proto && (a..=b).contains(&port);
        self.peers.iter().any(|r| in_ip(*r))
            || self.ports.iter().any(|p| in_port(*p))
            || self
                .peer_ports
                .iter()
                .any(|(i, p)| in_ip(*i) && in_port(*p))
    }
}

/// Verdict for a new connection `src → dst:port/proto` as the compiled ruleset decides it.
pub fn allowed(c: &Compiled, src: Ipv4Addr, dst: Ipv4Addr, proto: Proto, port: u16) -> bool {
    if src == dst && c.local_ips.contains(&src) {
        return true;
    }
    if c.node_addrs.contains(&src) {
        return true;
    }
    let check =
        |map: &std::collections::BTreeMap<Ipv4Addr, String>, key: Ipv4Addr, peer: Ipv4Addr| {
            match map.get(&key).and_then(|g| c.groups.get(g)) {
                None => true,
                Some((_, a)) => a.matches(peer, proto, port),
            }
        };
    check(&c.egress, src, dst) && check(&c.ingress, dst, src)
}

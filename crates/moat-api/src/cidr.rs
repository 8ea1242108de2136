//! IPv4 CIDRs: one parser with clear errors, over `ipnet::Ipv4Net`.
//!
//! Why `ipnet` and not a type of our own: the pod network (`moat-podnet`), the host network
//! edge (`moat-hostnet`) and the agent already speak `Ipv4Net` (routes, addresses, subnets,
//! `subnets()` iteration for podCIDR blocks), so standardizing on it removed the hand-written
//! CIDR structs of `moat-netpol` and `moat-proxy` and the tuple parsers of the node
//! controller and the guest agent without converting at every boundary. What `ipnet` lacks
//! is an error that says what was wrong with the text; that is this module.
//!
//! Two readings of "a.b.c.d/n": [`parse_network`] clears host bits (a pod or cluster CIDR,
//! a NetworkPolicy ipBlock), [`parse_interface`] keeps them (an interface address such as
//! "10.42.0.5/24").

use std::net::{IpAddr, Ipv4Addr};

pub use ipnet::Ipv4Net;

/// Why a CIDR does not parse; each names the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not a CIDR (want a.b.c.d/n)")]
    NoPrefix(String),
    #[error("{0:?} is an IPv6 CIDR; only IPv4 is supported")]
    Ipv6(String),
    #[error("{0:?} is not a valid IPv4 CIDR: bad address")]
    Address(String),
    #[error("{0:?} has an invalid prefix length (want 0 to 32)")]
    Prefix(String),
}

/// Parses "a.b.c.d/n" keeping the address as written (an interface address).
pub fn parse_interface(s: &str) -> Result<Ipv4Net, CidrError> {
    let (a, p) = s
        .split_once('/')
        .ok_or_else(|| CidrError::NoPrefix(s.to_string()))?;
    let addr: Ipv4Addr = match a.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4,
        Ok(IpAddr::V6(_)) => return Err(CidrError::Ipv6(s.to_string())),
        Err(_) => return Err(CidrError::Address(s.to_string())),
    };
    // Digits only: `u8::from_str` would accept "+24".
    let prefix = Some(p)
        .filter(|p| !p.is_empty() && p.len() <= 2 && p.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse::<u8>().ok())
        .ok_or_else(|| CidrError::Prefix(s.to_string()))?;
    Ipv4Net::new(addr, prefix).map_err(|_| CidrError::Prefix(s.to_string()))
}

/// Parses "a.b.c.d/n" and clears the host bits: "10.42.1.7/16" is 10.42.0.0/16.
pub fn parse_network(s: &str) -> Result<Ipv4Net, CidrError> {
    parse_interface(s).map(|n| n.trunc())
}

/// The first and last address of `net` as integers, for range arithmetic (nft intervals).
pub fn range(net: &Ipv4Net) -> (u32, u32) {
    (u32::from(net.network()), u32::from(net.broadcast()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_clears_host_bits() {
        let n = parse_network("10.42.1.7/16").expect("cidr");
        assert_eq!(n.to_string(), "10.42.0.0/16");
        assert_eq!(n.prefix_len(), 16);
        let i = parse_interface("10.42.0.5/24").expect("cidr");
        assert_eq!(
            (i.addr(), i.prefix_len()),
            (Ipv4Addr::new(10, 42, 0, 5), 24)
        );
        assert_eq!(i.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(
            parse_network("0.0.0.0/0").map(|n| range(&n)),
            Ok((0, u32::MAX))
        );
        assert_eq!(
            parse_network("10.0.0.0/24").map(|n| range(&n)),
            Ok((0x0a00_0000, 0x0a00_00ff))
        );
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let e = |s: &str| parse_network(s).map(|_| ()).unwrap_err().to_string();
        assert_eq!(
            e("10.42.0.0"),
            "\"10.42.0.0\" is not a CIDR (want a.b.c.d/n)"
        );
        assert_eq!(
            e("fd00::/64"),
            "\"fd00::/64\" is an IPv6 CIDR; only IPv4 is supported"
        );
        assert_eq!(
            e("10.42.0/16"),
            "\"10.42.0/16\" is not a valid IPv4 CIDR: bad address"
        );
        for bad in [
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/x",
            "10.0.0.0/008",
        ] {
            assert_eq!(
                parse_network(bad),
                Err(CidrError::Prefix(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn contains_and_iteration_come_from_ipnet() {
        let n = parse_network("10.42.0.0/16").expect("cidr");
        assert!(n.contains(&Ipv4Addr::new(10, 42, 255, 1)));
        assert!(!n.contains(&Ipv4Addr::new(10, 43, 0, 0)));
        assert!(n.contains(&parse_network("10.42.3.0/24").expect("cidr")));
        let blocks: Vec<Ipv4Net> = n.subnets(24).expect("subnets").take(2).collect();
        assert_eq!(blocks[1].to_string(), "10.42.1.0/24");
    }

    proptest::proptest! {
        /// Display and parse round-trip, and a network contains exactly its range.
        #[test]
        fn round_trip(addr in proptest::prelude::any::<u32>(), prefix in 0u8..=32, probe in proptest::prelude::any::<u32>()) {
            let text = format!("{}/{prefix}", Ipv4Addr::from(addr));
            let net = parse_network(&text).expect("valid");
            proptest::prop_assert_eq!(parse_network(&net.to_string()), Ok(net));
            let (lo, hi) = range(&net);
            proptest::prop_assert_eq!(net.contains(&Ipv4Addr::from(probe)), (lo..=hi).contains(&probe));
            proptest::prop_assert_eq!(parse_interface(&text).map(|i| i.addr()), Ok(Ipv4Addr::from(addr)));
        }
    }
}

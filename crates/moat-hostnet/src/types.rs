//! The kernel objects a node's pod network is made of, as plain values: what the planner
//! compares and what the [`crate::HostNet`] implementations read and write.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a MAC address like 0a:1b:2c:3d:4e:5f")]
pub struct BadMac(pub String);

impl FromStr for Mac {
    type Err = BadMac;
    fn from_str(s: &str) -> Result<Mac, BadMac> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            let p = parts.next().ok_or_else(|| BadMac(s.into()))?;
            if p.len() != 2 {
                return Err(BadMac(s.into()));
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| BadMac(s.into()))?;
        }
        if parts.next().is_some() {
            return Err(BadMac(s.into()));
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// A vxlan device's parameters as the kernel reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: u32,
    pub port: u16,
    pub local: Option<Ipv4Addr>,
    pub learning: bool,
}

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub mtu: u32,
    pub mac: Option<Mac>,
    pub up: bool,
    pub addrs: Vec<Ipv4Net>,
    pub vxlan: Option<VxlanInfo>,
}

/// What a vxlan device must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: Ipv4Addr,
    /// The underlay device the tunnel leaves by.
    pub dev: String,
    pub mtu: u32,
}

impl VxlanSpec {
    /// Whether an existing device already is this one (so a restart leaves it alone).
    pub fn matches(&self, l: &Link) -> bool {
        l.mtu == self.mtu
            && l.vxlan.as_ref().is_some_and(|v| {
                v.vni == self.vni
                    && v.port == self.port
                    && v.local == Some(self.local)
                    && !v.learning
            })
    }
}

/// A route in the main table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub dst: Ipv4Net,
    pub via: Option<Ipv4Addr>,
    pub dev: String,
    pub onlink: bool,
}

/// A permanent neighbour (ARP) entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Neigh {
    pub ip: Ipv4Addr,
    pub mac: Mac,
    pub dev: String,
}

/// A forwarding-database entry of a vxlan device: frames for `mac` go to `dst`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fdb {
    pub mac: Mac,
    pub dst: Ipv4Addr,
    pub dev: String,
}

/// One change to the kernel's tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    AddNeigh(Neigh),
    AddFdb(Fdb),
    AddRoute(Route),
    DelRoute(Route),
    DelFdb(Fdb),
    DelNeigh(Neigh),
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let route = |r: &Route| {
            let mut s = r.dst.to_string();
            if let Some(v) = r.via {
                s.push_str(&format!(" via {v}"));
            }
            s.push_str(&format!(" dev {}", r.dev));
            if r.onlink {
                s.push_str(" onlink");
            }
            s
        };
        match self {
            Op::AddNeigh(n) => write!(f, "neigh add {} lladdr {} dev {}", n.ip, n.mac, n.dev),
            Op::DelNeigh(n) => write!(f, "neigh del {} dev {}", n.ip, n.dev),
            Op::AddFdb(e) => write!(f, "fdb add {} dst {} dev {}", e.mac, e.dst, e.dev),
            Op::DelFdb(e) => write!(f, "fdb del {} dst {} dev {}", e.mac, e.dst, e.dev),
            Op::AddRoute(r) => write!(f, "route add {}", route(r)),
            Op::DelRoute(r) => write!(f, "route del {}", route(r)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips_and_rejects_garbage() {
        let m: Mac = "0a:1B:2c:3d:4e:5f".parse().unwrap();
        assert_eq!(m.to_string(), "0a:1b:2c:3d:4e:5f");
        for bad in [
            "",
            "0a:1b",
            "0a:1b:2c:3d:4e:5f:00",
            "zz:1b:2c:3d:4e:5f",
            "a:1b:2c:3d:4e:5f",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }
}

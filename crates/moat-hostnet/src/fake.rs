//! An in-memory [`HostNet`]: links, routes, neighbours and FDB entries as sets, every change
//! recorded, and an optional failure injected on an operation whose text contains a pattern.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::Ipv4Net;

use crate::{Fdb, HostNet, HostNetError, Link, Mac, Neigh, Op, Route, VxlanInfo, VxlanSpec};

#[derive(Debug, Default)]
pub struct State {
    pub links: Vec<Link>,
    pub routes: BTreeSet<Route>,
    pub neighs: BTreeSet<Neigh>,
    pub fdb: BTreeSet<Fdb>,
    pub sysctls: Vec<(String, String)>,
    /// Every change, in order, as text (`route add …`, `link add flannel.1`, …).
    pub log: Vec<String>,
    /// An operation whose text contains this fails.
    pub fail_on: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct FakeNet(pub Arc<Mutex<State>>);

impl FakeNet {
    /// A node with `eth0` holding `ip/prefix` (MTU 1500) and the connected route.
    pub fn node(ip: &str, prefix: u8, mtu: u32) -> FakeNet {
        let f = FakeNet::default();
        let addr: Ipv4Net = format!("{ip}/{prefix}").parse().unwrap_or_default();
        {
            let mut s = f.state();
            s.links.push(Link {
                name: "eth0".into(),
                mtu,
                mac: Some(Mac([2, 0, 0, 0, 0, 1])),
                up: true,
                addrs: vec![addr],
                vxlan: None,
            });
            s.routes.insert(Route {
                dst: addr.trunc(),
                via: None,
                dev: "eth0".into(),
                onlink: false,
            });
        }
        f
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The recorded changes, and forgets them.
    pub fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut self.state().log)
    }

    fn record(&self, what: String) -> Result<(), HostNetError> {
        let mut s = self.state();
        if s.fail_on
            .as_ref()
            .is_some_and(|p| what.contains(p.as_str()))
        {
            return Err(HostNetError::Injected(what));
        }
        s.log.push(what);
        Ok(())
    }
}

impl HostNet for FakeNet {
    fn links(&self) -> Result<Vec<Link>, HostNetError> {
        Ok(self.state().links.clone())
    }

    fn create_vxlan(&self, s: &VxlanSpec) -> Result<(), HostNetError> {
        self.record(format!(
            "link add {} vxlan id {} port {}",
            s.name, s.vni, s.port
        ))?;
        let mut st = self.state();
        let n = st.links.len() as u8;
        st.links.push(Link {
            name: s.name.clone(),
            mtu: s.mtu,
            mac: Some(Mac([0x0a, 0x58, 0, 0, 0, n])),
            up: true,
            addrs: Vec::new(),
            vxlan: Some(VxlanInfo {
                vni: s.vni,
                port: s.port,
                local: Some(s.local),
                learning: false,
            }),
        });
        Ok(())
    }

    fn delete_link(&self, name: &str) -> Result<(), HostNetError> {
        self.record(format!("link del {name}"))?;
        let mut st = self.state();
        st.links.retain(|l| l.name != name);
        // The kernel drops what hung off the device with it.
        st.routes.retain(|r| r.dev != name);
        st.neighs.retain(|n| n.dev != name);
        st.fdb.retain(|e| e.dev != name);
        Ok(())
    }

    fn ensure_addr(&self, dev: &str, addr: Ipv4Net) -> Result<(), HostNetError> {
        let present = self
            .state()
            .links
            .iter()
            .any(|l| l.name == dev && l.addrs.contains(&addr));
        if present {
            return Ok(());
        }
        self.record(format!("addr add {addr} dev {dev}"))?;
        let mut st = self.state();
        if let Some(l) = st.links.iter_mut().find(|l| l.name == dev) {
            l.addrs.push(addr);
        }
        Ok(())
    }

    fn routes(&self) -> Result<Vec<Route>, HostNetError> {
        Ok(self.state().routes.iter().cloned().collect())
    }

    fn neighs(&self, dev: &str) -> Result<Vec<Neigh>, HostNetError> {
        Ok(self
            .state()
            .neighs
            .iter()
            .filter(|n| n.dev == dev)
            .cloned()
            .collect())
    }

    fn fdb(&self, dev: &str) -> Result<Vec<Fdb>, HostNetError> {
        Ok(self
            .state()
            .fdb
            .iter()
            .filter(|e| e.dev == dev)
            .cloned()
            .collect())
    }

    fn apply(&self, op: &Op) -> Result<(), HostNetError> {
        self.record(op.to_string())?;
        let mut st = self.state();
        match op {
            Op::AddNeigh(n) => {
                st.neighs.retain(|x| !(x.ip == n.ip && x.dev == n.dev));
                st.neighs.insert(n.clone());
            }
            Op::DelNeigh(n) => {
                st.neighs.retain(|x| !(x.ip == n.ip && x.dev == n.dev));
            }
            Op::AddFdb(e) => {
                st.fdb.retain(|x| !(x.mac == e.mac && x.dev == e.dev));
                st.fdb.insert(e.clone());
            }
            Op::DelFdb(e) => {
                st.fdb.remove(e);
            }
            Op::AddRoute(r) => {
                st.routes.retain(|x| x.dst != r.dst);
                st.routes.insert(r.clone());
            }
            Op::DelRoute(r) => {
                st.routes.remove(r);
            }
        }
        Ok(())
    }

    fn gateway_to(&self, ip: Ipv4Addr) -> Result<Option<Ipv4Addr>, HostNetError> {
        let st = self.state();
        let best = st
            .routes
            .iter()
            .filter(|r| r.dst.contains(&ip))
            .max_by_key(|r| r.dst.prefix_len());
        Ok(best.and_then(|r| r.via))
    }

    fn sysctl(&self, key: &str, value: &str) -> Result<(), HostNetError> {
        self.record(format!("sysctl {key}={value}"))?;
        self.state().sysctls.push((key.into(), value.into()));
        Ok(())
    }
}

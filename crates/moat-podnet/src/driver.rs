//! The IO edge: sets this node up (forwarding, the vxlan device, masquerade, `subnet.env`)
//! and reconciles the peers' routes, neighbours and FDB entries against what the kernel has,
//! through [`HostNet`] and [`NftApply`] so the whole of it runs against fakes in tests.

use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use moat_hostnet::{HostNet, HostNetError, Mac, Op, VxlanSpec};
use moat_nft::{ApplyError, NftApply};

use crate::conf::{Backend, NetConf};
use crate::plan::{self, Local, NodeNet, Problem, Tables, VXLAN_DEV};
use crate::render;

/// The vxlan header and outer IP/UDP/Ethernet headers take 50 bytes of the underlay MTU.
pub const VXLAN_OVERHEAD: u32 = 50;

#[derive(Debug, thiserror::Error)]
pub enum PodNetError {
    #[error("no interface holds the node address {0}: pass the right --node-ip")]
    NoUnderlay(Ipv4Addr),
    #[error("{step}")]
    Host {
        step: &'static str,
        #[source]
        source: HostNetError,
    },
    #[error("programming the masquerade rules")]
    Nft(#[source] ApplyError),
    #[error("writing {path}")]
    WriteEnv {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn step(step: &'static str) -> impl FnOnce(HostNetError) -> PodNetError {
    move |source| PodNetError::Host { step, source }
}

/// What one reconcile did.
#[derive(Debug, Default)]
pub struct Report {
    pub applied: Vec<Op>,
    pub problems: Vec<Problem>,
    /// Operations the kernel refused (retried on the next pass).
    pub failed: Vec<(Op, HostNetError)>,
}

pub struct PodNet<H: HostNet> {
    host: H,
    conf: NetConf,
    local: Local,
    mtu: u32,
    vtep_mac: Option<Mac>,
}

impl<H: HostNet> PodNet<H> {
    /// Prepares this node: IP forwarding, the vxlan device (kept as it is when it already
    /// matches, so a restart does not flap it), masquerade.
    pub fn setup(
        host: H,
        nft: &dyn NftApply,
        conf: NetConf,
        name: &str,
        subnet: Ipv4Net,
        ip: Ipv4Addr,
    ) -> Result<Self, PodNetError> {
        let underlay = host
            .link_with_addr(ip)
            .map_err(step("reading the node's links"))?
            .ok_or(PodNetError::NoUnderlay(ip))?;
        let local = Local {
            name: name.to_string(),
            subnet,
            ip,
            underlay: underlay.name.clone(),
        };
        let mut mtu = underlay.mtu;
        let mut vtep_mac = None;
        let existing = host.link(VXLAN_DEV).map_err(step("reading flannel.1"))?;
        if conf.backend == Backend::Vxlan {
            mtu = underlay.mtu.saturating_sub(VXLAN_OVERHEAD);
            let spec = VxlanSpec {
                name: VXLAN_DEV.into(),
                vni: conf.vni,
                port: conf.port,
                local: ip,
                dev: underlay.name.clone(),
                mtu,
            };
            let keep = existing.as_ref().is_some_and(|l| spec.matches(l));
            if !keep {
                if existing.is_some() {
                    host.delete_link(VXLAN_DEV)
                        .map_err(step("removing a flannel.1 that does not match"))?;
                }
                host.create_vxlan(&spec)
                    .map_err(step("creating flannel.1"))?;
            }
            let addr = Ipv4Net::new(subnet.network(), 32).unwrap_or(subnet);
            host.ensure_addr(VXLAN_DEV, addr)
                .map_err(step("addressing flannel.1"))?;
            vtep_mac = host
                .link(VXLAN_DEV)
                .map_err(step("reading flannel.1"))?
                .and_then(|l| l.mac);
        } else if existing.is_some() {
            host.delete_link(VXLAN_DEV)
                .map_err(step("removing flannel.1 (backend is not vxlan)"))?;
        }
        if conf.backend != Backend::None {
            host.sysctl("net.ipv4.ip_forward", "1")
                .map_err(step("enabling IP forwarding"))?;
            nft.apply(&render::masquerade(&conf, subnet))
                .map_err(PodNetError::Nft)?;
        }
        Ok(PodNet {
            host,
            conf,
            local,
            mtu,
            vtep_mac,
        })
    }

    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    pub fn vtep_mac(&self) -> Option<Mac> {
        self.vtep_mac
    }

    pub fn local(&self) -> &Local {
        &self.local
    }

    pub fn conf(&self) -> &NetConf {
        &self.conf
    }

    pub fn annotations(&self) -> std::collections::BTreeMap<String, String> {
        render::annotations(&self.conf, self.local.ip, self.vtep_mac)
    }

    /// Writes `subnet.env` atomically (temporary file, then rename).
    pub fn write_subnet_env(&self, path: &Path) -> Result<(), PodNetError> {
        let text = render::subnet_env(
            &self.conf,
            self.local.subnet,
            self.mtu,
            self.conf.backend != Backend::None,
        );
        let err = |source| PodNetError::WriteEnv {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = path.with_extension("env.tmp");
        std::fs::write(&tmp, text).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// What the kernel holds of the pod network now.
    pub fn observed(&self) -> Result<Tables, PodNetError> {
        let routes = self.host.routes().map_err(step("listing routes"))?;
        let mut t = Tables {
            routes: plan::owned_routes(&self.conf, &self.local, &routes),
            ..Tables::default()
        };
        if self
            .host
            .link(VXLAN_DEV)
            .map_err(step("reading flannel.1"))?
            .is_some()
        {
            t.neighs = self
                .host
                .neighs(VXLAN_DEV)
                .map_err(step("listing neighbours"))?
                .into_iter()
                .collect();
            t.fdb = self
                .host
                .fdb(VXLAN_DEV)
                .map_err(step("listing FDB entries"))?
                .into_iter()
                .collect();
        }
        Ok(t)
    }

    /// Takes the kernel to what `nodes` require: entries already right are left alone.
    pub fn reconcile(&self, nodes: &[NodeNet]) -> Result<Report, PodNetError> {
        let have = self.observed()?;
        let gateway_of = |ip: Ipv4Addr| self.host.gateway_to(ip).ok().flatten();
        let (want, problems) = plan::desired(&self.conf, &self.local, nodes, &gateway_of);
        let mut report = Report {
            problems,
            ..Report::default()
        };
        for op in plan::diff(&have, &want) {
            match self.host.apply(&op) {
                Ok(()) => report.applied.push(op),
                Err(e) => report.failed.push((op, e)),
            }
        }
        Ok(report)
    }
}

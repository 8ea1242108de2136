//! The node's kernel network state behind one narrow trait, [`HostNet`]: links and their
//! addresses, main-table routes, permanent neighbours and vxlan FDB entries, vxlan devices
//! and sysctls, as the typed values of [`types`]. Everything acts on the network namespace of
//! the calling process (a `moat cluster` node runs its agent inside its own namespace).
//!
//! [`Iproute2`] is the real implementation: it runs iproute2's `ip`/`bridge` with JSON output.
//! Netlink through a crate would save the process spawns; the pod network programs a handful
//! of entries per peer, on changes only, so the spawns do not matter yet and iproute2's own
//! parsing of kernel attributes is the better-tested path. [`fake::FakeNet`] keeps the same
//! state in memory and records every change, for the planners' tests.

pub mod fake;
mod iproute2;
pub mod types;

pub use iproute2::Iproute2;
pub use types::{Fdb, Link, Mac, Neigh, Op, Route, VxlanInfo, VxlanSpec};

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

#[derive(Debug, thiserror::Error)]
pub enum HostNetError {
    #[error("running `{cmd}`")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` failed: {stderr}")]
    Failed { cmd: String, stderr: String },
    #[error("reading the output of `{cmd}`")]
    Parse {
        cmd: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("writing sysctl {key}")]
    Sysctl {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("fake host network told to fail: {0}")]
    Injected(String),
}

/// The kernel operations the pod network needs, in the caller's network namespace.
pub trait HostNet: Send + Sync {
    /// Every link with its IPv4 addresses.
    fn links(&self) -> Result<Vec<Link>, HostNetError>;
    fn link(&self, name: &str) -> Result<Option<Link>, HostNetError> {
        Ok(self.links()?.into_iter().find(|l| l.name == name))
    }
    /// The link that holds `ip` as one of its addresses.
    fn link_with_addr(&self, ip: Ipv4Addr) -> Result<Option<Link>, HostNetError> {
        Ok(self
            .links()?
            .into_iter()
            .find(|l| l.addrs.iter().any(|a| a.addr() == ip)))
    }
    /// Creates the vxlan device (learning off), sets its MTU and brings it up.
    fn create_vxlan(&self, spec: &VxlanSpec) -> Result<(), HostNetError>;
    fn delete_link(&self, name: &str) -> Result<(), HostNetError>;
    /// Adds `addr` to `dev` unless it is there.
    fn ensure_addr(&self, dev: &str, addr: Ipv4Net) -> Result<(), HostNetError>;
    /// The main table's IPv4 unicast routes.
    fn routes(&self) -> Result<Vec<Route>, HostNetError>;
    /// Permanent neighbour entries on `dev`.
    fn neighs(&self, dev: &str) -> Result<Vec<Neigh>, HostNetError>;
    /// FDB entries with a remote destination on `dev`.
    fn fdb(&self, dev: &str) -> Result<Vec<Fdb>, HostNetError>;
    fn apply(&self, op: &Op) -> Result<(), HostNetError>;
    /// The gateway the kernel would use to reach `ip`: `None` when `ip` is on a directly
    /// connected network (on-link).
    fn gateway_to(&self, ip: Ipv4Addr) -> Result<Option<Ipv4Addr>, HostNetError>;
    /// Writes `/proc/sys/<key with dots as slashes>`.
    fn sysctl(&self, key: &str, value: &str) -> Result<(), HostNetError>;
}

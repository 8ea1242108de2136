//! UDP conntrack cleanup after a sync.
//!
//! UDP has no connection teardown: a client that keeps sending to a ClusterIP keeps its
//! conntrack entry, whose DNAT still points at an endpoint that went away, and its packets
//! vanish until the entry expires. kube-proxy therefore deletes, after each sync, the UDP
//! entries whose reply source (the DNAT target) is an endpoint that is no longer served for
//! that service address, and the entries of a UDP service that just got its first endpoint
//! (they were created while the service rejected and carry no DNAT). [`stale_udp`] computes
//! both from the previous and new models; a [`Conntrack`] deletes them.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::{Arc, Mutex};

use crate::model::{Model, Proto, ServicePort};

/// Conntrack entries to delete.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StaleFlow {
    /// Entries to `dst:port` (a ClusterIP or external IP) DNATed to `endpoint`.
    Endpoint {
        dst: Ipv4Addr,
        port: u16,
        endpoint: Ipv4Addr,
    },
    /// Entries to a NodePort (any node address) DNATed to `endpoint`.
    NodePort { port: u16, endpoint: Ipv4Addr },
    /// All entries to `dst:port`: the service had no endpoint until now.
    Service { dst: Ipv4Addr, port: u16 },
}

#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("running conntrack (netns {netns:?})")]
    Spawn {
        netns: Option<String>,
        #[source]
        source: std::io::Error,
    },
    #[error("conntrack failed for {flow:?}: {stderr}")]
    Failed { flow: StaleFlow, stderr: String },
}

pub trait Conntrack {
    /// Deletes the UDP entries of each flow. Deleting nothing is not an error.
    fn delete_udp(&self, flows: &[StaleFlow]) -> Result<(), ConntrackError>;
}

/// Endpoint IPs a service port actually sends traffic to.
fn served(sp: &ServicePort) -> BTreeSet<Ipv4Addr> {
    let mut s: BTreeSet<Ipv4Addr> = sp.cluster_endpoints_all().iter().map(|e| e.ip).collect();
    s.extend(sp.local_endpoints().iter().map(|e| e.ip));
    s
}

/// Flows to delete after moving from `old` to `new` (UDP service ports only).
pub fn stale_udp(old: &Model, new: &Model) -> Vec<StaleFlow> {
    let mut out = BTreeSet::new();
    for (key, o) in &old.ports {
        if key.proto != Proto::Udp {
            continue;
        }
        let still = new.ports.get(key).map(served).unwrap_or_default();
        for ep in served(o).difference(&still) {
            for dst in std::iter::once(o.cluster_ip).chain(o.external_ips.iter().copied()) {
                out.insert(StaleFlow::Endpoint {
                    dst,
                    port: o.port,
                    endpoint: *ep,
                });
            }
            if let Some(np) = o.node_port {
                out.insert(StaleFlow::NodePort {
                    port: np,
                    endpoint: *ep,
                });
            }
        }
    }
    for (key, n) in &new.ports {
        if key.proto != Proto::Udp || !n.has_endpoints() {
            continue;
        }
        if old.ports.get(key).is_none_or(|o| !o.has_endpoints()) {
            for dst in std::iter::once(n.cluster_ip).chain(n.external_ips.iter().copied()) {
                out.insert(StaleFlow::Service { dst, port: n.port });
            }
        }
    }
    out.into_iter().collect()
}

/// Runs the `conntrack` CLI (Debian's `conntrack` package, conntrack-tools), inside
/// `ip netns exec NETNS` when a namespace is given. Per flow:
/// - `conntrack -D -p udp --orig-dst SVCIP --orig-port-dst PORT --reply-src EPIP`: the
///   original direction was addressed to the service, and the reply comes from the
///   endpoint, i.e. exactly the entries DNATed to that endpoint;
/// - `conntrack -D -p udp --orig-port-dst NODEPORT --reply-src EPIP` for NodePorts (any
///   node address);
/// - `conntrack -D -p udp --orig-dst SVCIP --orig-port-dst PORT` for a service that had no
///   endpoint.
///
/// conntrack exits 1 with "0 flow entries have been deleted" when nothing matched; that is
/// success here.
#[derive(Debug, Clone, Default)]
pub struct ConntrackCli {
    pub netns: Option<String>,
}

fn flow_args(f: &StaleFlow) -> Vec<String> {
    let mut a: Vec<String> = ["-D", "-p", "udp"].map(String::from).to_vec();
    match f {
        StaleFlow::Endpoint {
            dst,
            port,
            endpoint,
        } => a.extend([
            "--orig-dst".into(),
            dst.to_string(),
            "--orig-port-dst".into(),
            port.to_string(),
            "--reply-src".into(),
            endpoint.to_string(),
        ]),
        StaleFlow::NodePort { port, endpoint } => a.extend([
            "--orig-port-dst".into(),
            port.to_string(),
            "--reply-src".into(),
            endpoint.to_string(),
        ]),
        StaleFlow::Service { dst, port } => a.extend([
            "--orig-dst".into(),
            dst.to_string(),
            "--orig-port-dst".into(),
            port.to_string(),
        ]),
    }
    a
}

impl Conntrack for ConntrackCli {
    fn delete_udp(&self, flows: &[StaleFlow]) -> Result<(), ConntrackError> {
        for f in flows {
            let mut cmd = match &self.netns {
                Some(ns) => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", ns, "conntrack"]);
                    c
                }
                None => Command::new("conntrack"),
            };
            let out = cmd
                .args(flow_args(f))
                .output()
                .map_err(|source| ConntrackError::Spawn {
                    netns: self.netns.clone(),
                    source,
                })?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() && !stderr.contains("0 flow entries") {
                return Err(ConntrackError::Failed {
                    flow: f.clone(),
                    stderr: stderr.trim().to_string(),
                });
            }
        }
        Ok(())
    }
}

/// Records the flows it is asked to delete.
#[derive(Debug, Clone, Default)]
pub struct RecordingConntrack {
    pub deleted: Arc<Mutex<Vec<StaleFlow>>>,
}

impl Conntrack for RecordingConntrack {
    fn delete_udp(&self, flows: &[StaleFlow]) -> Result<(), ConntrackError> {
        if let Ok(mut d) = self.deleted.lock() {
            d.extend_from_slice(flows);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_arguments_select_entries_dnated_to_the_endpoint() {
        let a = flow_args(&StaleFlow::Endpoint {
            dst: Ipv4Addr::new(10, 43, 0, 10),
            port: 53,
            endpoint: Ipv4Addr::new(10, 42, 0, 7),
        });
        assert_eq!(
            a.join(" "),
            "-D -p udp --orig-dst 10.43.0.10 --orig-port-dst 53 --reply-src 10.42.0.7"
        );
    }
}

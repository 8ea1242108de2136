//! A straightforward, deliberately naive implementation of networking.k8s.io/v1 semantics
//! (NETPOL.md rules 1–10, 14), written independently of the compiler: it reads the
//! Kubernetes objects directly, matches selectors and ports with its own code, and answers
//! one question at a time. The property test holds the compiler to it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// One end of a connection.
#[derive(Debug, Clone, Copy)]
pub enum End<'a> {
    Pod(&'a Pod),
    /// An address that is not a pod (outside the cluster).
    External(Ipv4Addr),
    /// The pod's own node.
    Node,
}

pub struct World<'a> {
    pub namespaces: &'a [Namespace],
    pub policies: &'a [NetworkPolicy],
    pub legacy_namespace_isolation: bool,
}

fn sel_ok(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    for (k, v) in sel.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let vals = e.values.clone().unwrap_or_default();
        let have = labels.get(&e.key);
        let ok = match e.operator.as_str() {
            "In" => matches!(have, Some(v) if vals.contains(v)),
            "NotIn" => !matches!(have, Some(v) if vals.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

fn labels(p: &Pod) -> BTreeMap<String, String> {
    p.metadata.labels.clone().unwrap_or_default()
}

fn ns_of(p: &Pod) -> String {
    p.metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into())
}

fn ip_of(p: &Pod) -> Option<Ipv4Addr> {
    p.status.as_ref()?.pod_ip.as_ref()?.parse().ok()
}

fn host_net(p: &Pod) -> bool {
    p.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

impl<'a> World<'a> {
    fn ns_labels(&self, ns: &str) -> BTreeMap<String, String> {
        let mut l = self
            .namespaces
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(ns))
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default();
        l.insert("kubernetes.io/metadata.name".into(), ns.to_string());
        l
    }

    fn legacy_deny(&self, ns: &str) -> bool {
        if !self.legacy_namespace_isolation {
            return false;
        }
        let Some(n) = self
            .namespaces
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(ns))
        else {
            return false;
        };
        let Some(v) = n
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("net.beta.kubernetes.io/network-policy"))
        else {
            return false;
        };
        let j: serde_json::Value = serde_json::from_str(v).unwrap_or_default();
        j["ingress"]["isolation"] == "DefaultDeny"
    }

    fn types(np: &NetworkPolicy) -> (bool, bool) {
        let spec = np.spec.clone().unwrap_or_default();
        match spec.policy_types {
            Some(t) if !t.is_empty() => (
                t.iter().any(|x| x == "Ingress"),
                t.iter().any(|x| x == "Egress"),
            ),
            _ => (true, spec.egress.map(|e| !e.is_empty()).unwrap_or(false)),
        }
    }

    fn peer_ok(&self, peer: &NetworkPolicyPeer, policy_ns: &str, other: End) -> bool {
        if let Some(b) = &peer.ip_block {
            let ip = match other {
                End::Pod(p) => match ip_of(p) {
                    Some(ip) => ip,
                    None => return false,
                },
                End::External(ip) => ip,
                End::Node => return false,
            };
            let inside = |c: &str| -> bool {
                let Some((a, n)) = c.split_once('/') else {
                    return false;
                };
                let (Ok(a), Ok(n)) = (a.parse::<Ipv4Addr>(), n.parse::<u32>()) else {
                    return false;
                };
                let mask = if n == 0 { 0 } else { u32::MAX << (32 - n) };
                (u32::from(ip) & mask) == (u32::from(a) & mask)
            };
            return inside(&b.cidr) && !b.except.iter().flatten().any(|e| inside(e));
        }
        let End::Pod(p) = other else { return false };
        if host_net(p) {
            return false;
        }
        let ns_ok = match &peer.namespace_selector {
            None => ns_of(p) == policy_ns,
            Some(s) => sel_ok(s, &self.ns_labels(&ns_of(p))),
        };
        let pod_ok = match &peer.pod_selector {
            None => true,
            Some(s) => sel_ok(s, &labels(p)),
        };
        ns_ok && pod_ok
    }

    /// `dst` is the destination end; named ports resolve against it.
    fn port_ok(port: &NetworkPolicyPort, dst: End, n: u16, proto: &str) -> bool {
        if port.protocol.as_deref().unwrap_or("TCP") != proto {
            return false;
        }
        match &port.port {
            None => true,
            Some(IntOrString::Int(p)) => {
                let end = port.end_port.unwrap_or(*p);
                i32::from(n) >= *p && i32::from(n) <= end
            }
            Some(IntOrString::String(name)) => {
                let End::Pod(d) = dst else { return false };
                d.spec
                    .iter()
                    .flat_map(|s| s.containers.iter())
                    .flat_map(|c| c.ports.iter().flatten())
                    .any(|cp| {
                        cp.name.as_deref() == Some(name.as_str())
                            && cp.protocol.as_deref().unwrap_or("TCP") == proto
                            && cp.container_port == i32::from(n)
                    })
            }
        }
    }

    /// Whether `pod`'s side lets the connection through in one direction.
    fn side_ok(&self, pod: &Pod, egress: bool, other: End, dst: End, n: u16, proto: &str) -> bool {
        if host_net(pod) {
            return true;
        }
        let ns = ns_of(pod);
        let mut isolated = !egress && self.legacy_deny(&ns);
        let mut ok = false;
        for np in self.policies {
            if np.metadata.namespace.as_deref().unwrap_or("default") != ns {
                continue;
            }
            let spec = np.spec.clone().unwrap_or_default();
            if !sel_ok(&spec.pod_selector.clone().unwrap_or_default(), &labels(pod)) {
                continue;
            }
            let (ing, eg) = Self::types(np);
            if (egress && !eg) || (!egress && !ing) {
                continue;
            }
            isolated = true;
            let rules: Vec<(Vec<NetworkPolicyPeer>, Vec<NetworkPolicyPort>)> = if egress {
                spec.egress
                    .unwrap_or_default()
                    .into_iter()
                    .map(|r| (r.to.unwrap_or_default(), r.ports.unwrap_or_default()))
                    .collect()
            } else {
                spec.ingress
                    .unwrap_or_default()
                    .into_iter()
                    .map(|r| (r.from.unwrap_or_default(), r.ports.unwrap_or_default()))
                    .collect()
            };
            for (peers, ports) in rules {
                let p_ok = peers.is_empty() || peers.iter().any(|p| self.peer_ok(p, &ns, other));
                let port_ok =
                    ports.is_empty() || ports.iter().any(|p| Self::port_ok(p, dst, n, proto));
                if p_ok && port_ok {
                    ok = true;
                }
            }
        }
        !isolated || ok
    }

    /// Whether a new connection from `from` to `to` on `port`/`proto` ("TCP"/"UDP"/"SCTP")
    /// is allowed.
    pub fn allowed(&self, from: End, to: End, port: u16, proto: &str) -> bool {
        if let (End::Pod(a), End::Pod(b)) = (from, to)
            && std::ptr::eq(a, b)
        {
            return true;
        }
        let egress_ok = match from {
            End::Pod(p) => self.side_ok(p, true, to, to, port, proto),
            _ => true,
        };
        let ingress_ok = match (from, to) {
            (End::Node, _) => true,
            (_, End::Pod(p)) => self.side_ok(p, false, from, to, port, proto),
            _ => true,
        };
        egress_ok && ingress_ok
    }
}

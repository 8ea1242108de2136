//! `moat netpol explain`: for one connection, which policies isolate each side and which
//! rule (if any) lets it through — the question users ask when a connection is refused.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::model::{Peer, PodInfo, Policy, PortSpec, Proto, Rule, Snapshot};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideReport {
    pub pod: String,
    /// Policies selecting the pod in this direction (ns/name).
    pub isolated_by: Vec<String>,
    /// The first rule that allows the connection: "ns/name ingress[i]".
    pub allowed_by: Option<String>,
    pub allowed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub egress: Option<SideReport>,
    pub ingress: Option<SideReport>,
    pub allowed: bool,
    pub note: Option<String>,
}

fn peer_matches(s: &Snapshot, peer: &Peer, policy_ns: &str, other: &PodInfo) -> bool {
    match peer {
        Peer::Block { cidr, except } => other
            .ip
            .is_some_and(|ip| cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip))),
        Peer::Pods { pods, namespaces } => {
            !other.host_network
                && pods.matches(&other.labels)
                && match namespaces {
                    None => other.namespace == policy_ns,
                    Some(n) => s.ns_labels(&other.namespace).is_some_and(|l| n.matches(l)),
                }
        }
    }
}

fn port_matches(spec: &PortSpec, dst: &PodInfo, port: u16, proto: Proto) -> bool {
    match spec {
        PortSpec::All(p) => *p == proto,
        PortSpec::Range(p, lo, hi) => *p == proto && (*lo..=*hi).contains(&port),
        PortSpec::Named(p, n) => {
            *p == proto
                && dst
                    .ports
                    .iter()
                    .any(|np| np.name == *n && np.proto == proto && np.port == port)
        }
    }
}

fn rule_allows(
    s: &Snapshot,
    rule: &Rule,
    ns: &str,
    other: &PodInfo,
    dst: &PodInfo,
    port: u16,
    proto: Proto,
) -> bool {
    (rule.peers.is_empty() || rule.peers.iter().any(|p| peer_matches(s, p, ns, other)))
        && (rule.ports.is_empty() || rule.ports.iter().any(|p| port_matches(p, dst, port, proto)))
}

fn side(
    s: &Snapshot,
    pod: &PodInfo,
    egress: bool,
    other: &PodInfo,
    dst: &PodInfo,
    port: u16,
    proto: Proto,
) -> SideReport {
    let dir = if egress { "egress" } else { "ingress" };
    let selecting: Vec<&Policy> = s
        .policies
        .iter()
        .filter(|p| {
            p.namespace == pod.namespace && !pod.host_network && p.selector.matches(&pod.labels)
        })
        .filter(|p| {
            if egress {
                p.egress.is_some()
            } else {
                p.ingress.is_some()
            }
        })
        .collect();
    let mut allowed_by = None;
    for p in &selecting {
        let rules = if egress {
            p.egress.as_deref()
        } else {
            p.ingress.as_deref()
        }
        .unwrap_or(&[]);
        if let Some(i) = rules
            .iter()
            .position(|r| rule_allows(s, r, &p.namespace, other, dst, port, proto))
        {
            allowed_by = Some(format!("{}/{} {dir}[{i}]", p.namespace, p.name));
            break;
        }
    }
    SideReport {
        pod: format!("{}/{}", pod.namespace, pod.name),
        isolated_by: selecting
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect(),
        allowed: selecting.is_empty() || allowed_by.is_some(),
        allowed_by,
    }
}

/// Explains `from → to:port/proto` between two pods of the snapshot.
pub fn explain(s: &Snapshot, from: &PodInfo, to: &PodInfo, port: u16, proto: Proto) -> Explanation {
    if from.namespace == to.namespace && from.name == to.name {
        return Explanation {
            egress: None,
            ingress: None,
            allowed: true,
            note: Some("a pod can always reach itself".into()),
        };
    }
    let e = side(s, from, true, to, to, port, proto);
    let i = side(s, to, false, from, to, port, proto);
    Explanation {
        allowed: e.allowed && i.allowed,
        egress: Some(e),
        ingress: Some(i),
        note: None,
    }
}

/// Looks a pod up by `ns/name` (or `name` in `default`).
pub fn find_pod<'a>(s: &'a Snapshot, id: &str) -> Option<&'a PodInfo> {
    let (ns, name) = id.split_once('/').unwrap_or(("default", id));
    s.pods.iter().find(|p| p.namespace == ns && p.name == name)
}

impl Explanation {
    pub fn render(
        &self,
        from: &str,
        to: &str,
        port: u16,
        proto: Proto,
        addr: Option<Ipv4Addr>,
    ) -> String {
        let mut s = String::new();
        let verdict = if self.allowed { "ALLOWED" } else { "DENIED" };
        let _ = write!(s, "{from} -> {to}");
        if let Some(a) = addr {
            let _ = write!(s, " ({a})");
        }
        let _ = writeln!(s, " port {port}/{proto}: {verdict}");
        if let Some(n) = &self.note {
            let _ = writeln!(s, "  {n}");
        }
        for (dir, side) in [("egress", &self.egress), ("ingress", &self.ingress)] {
            let Some(r) = side else { continue };
            if r.isolated_by.is_empty() {
                let _ = writeln!(
                    s,
                    "  {dir} of {}: not isolated (no policy selects it for {dir})",
                    r.pod
                );
                continue;
            }
            let _ = writeln!(
                s,
                "  {dir} of {}: isolated by {}",
                r.pod,
                r.isolated_by.join(", ")
            );
            match &r.allowed_by {
                Some(rule) => {
                    let _ = writeln!(s, "    allowed by {rule}");
                }
                None => {
                    let _ = writeln!(
                        s,
                        "    no {dir} rule of these policies matches this peer and port: denied"
                    );
                }
            }
        }
        s
    }
}

//! The validated input of the compiler: namespaces, pods and policies reduced to what policy
//! semantics need, with every user-supplied field checked and parsed once.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

pub use moat_api::cidr::Ipv4Net as Cidr;
use moat_api::selector::Requirement;
pub use moat_api::selector::Selector;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The 2016-era namespace annotation (removed upstream in 1.7), honoured when
/// [`Options::legacy_namespace_isolation`] is on.
pub const LEGACY_ISOLATION_ANNOTATION: &str = "net.beta.kubernetes.io/network-policy";

/// A bad policy or pod field. The compile fails as a whole, so nothing half-valid is applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {field}: {message}")]
pub struct InvalidInput {
    /// `networkpolicy ns/name` or `pod ns/name`.
    pub object: String,
    /// Kubernetes-style field path, e.g. `spec.ingress[0].from[1].ipBlock.cidr`.
    pub field: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub fn parse(s: &str) -> Option<Proto> {
        match s {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            "SCTP" => Some(Proto::Sctp),
            _ => None,
        }
    }

    /// IANA protocol number (what `meta l4proto` compares).
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peer {
    /// podSelector and/or namespaceSelector. `namespaces` None = the policy's namespace.
    Pods {
        pods: Selector,
        namespaces: Option<Selector>,
    },
    Block {
        cidr: Cidr,
        except: Vec<Cidr>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortSpec {
    /// All ports of a protocol.
    All(Proto),
    Range(Proto, u16, u16),
    Named(Proto, String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Empty = all peers (external addresses too).
    pub peers: Vec<Peer>,
    /// Empty = all ports and protocols.
    pub ports: Vec<PortSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub selector: Selector,
    /// Some(rules) when the policy isolates ingress (rules may be empty = deny all).
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    pub proto: Proto,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    /// `metadata.uid` ("" when absent): tells apart a pod and its same-named successor.
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub ip: Option<Ipv4Addr>,
    pub ports: Vec<NamedPort>,
    pub host_network: bool,
    /// Whether this node enforces policy for the pod (its datapath is here).
    pub local: bool,
    /// Being deleted (`deletionTimestamp`) or in a terminal phase: its IP may already have
    /// gone to a newer pod, which then owns the IP's dispatch (see [`PodInfo::ip_rank`]).
    pub finished: bool,
}

impl PodInfo {
    /// Which of several local pods showing the same IP owns it (the greatest rank): a pod
    /// that is not finished first (the IP of a pod being torn down is free for reuse, and
    /// its successor must never inherit its rules), then by namespace, name and uid, so the
    /// choice never depends on input order.
    pub fn ip_rank(&self) -> (bool, &str, &str, &str) {
        (!self.finished, &self.namespace, &self.name, &self.uid)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NsInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub legacy_default_deny: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// Honour the legacy `net.beta.kubernetes.io/network-policy` DefaultDeny annotation.
    pub legacy_namespace_isolation: bool,
    /// This node's name; pods with another `spec.nodeName` are peers only. None = all local.
    pub node_name: Option<String>,
    /// Addresses of this node; traffic from them to local pods is never restricted.
    pub node_addrs: Vec<Ipv4Addr>,
}

/// Everything one node's ruleset depends on.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub namespaces: Vec<NsInfo>,
    pub pods: Vec<PodInfo>,
    pub policies: Vec<Policy>,
    pub node_addrs: Vec<Ipv4Addr>,
}

impl Snapshot {
    pub fn ns_labels(&self, ns: &str) -> Option<&BTreeMap<String, String>> {
        self.namespaces
            .iter()
            .find(|n| n.name == ns)
            .map(|n| &n.labels)
    }

    /// Builds and validates a snapshot from API objects. Namespaces get their
    /// `kubernetes.io/metadata.name` label as the API server sets it.
    pub fn build(
        namespaces: &[Namespace],
        pods: &[Pod],
        policies: &[NetworkPolicy],
        opts: &Options,
    ) -> Result<Snapshot, Vec<InvalidInput>> {
        let mut errs = Vec::new();
        let mut snap = Snapshot {
            node_addrs: opts.node_addrs.clone(),
            ..Default::default()
        };
        for ns in namespaces {
            snap.namespaces.push(ns_info(ns, opts));
        }
        for p in pods {
            match pod_info(p, opts) {
                Ok(pi) => snap.pods.push(pi),
                Err(e) => errs.push(e),
            }
        }
        for np in policies {
            match policy(np) {
                Ok(pol) => snap.policies.push(pol),
                Err(mut e) => errs.append(&mut e),
            }
        }
        // The legacy annotation means "every pod in the namespace is isolated for ingress".
        for ns in &snap.namespaces {
            if ns.legacy_default_deny {
                snap.policies.push(legacy_policy(&ns.name));
            }
        }
        if errs.is_empty() { Ok(snap) } else { Err(errs) }
    }
}

/// The namespace as policy semantics see it; `kubernetes.io/metadata.name` is added as the
/// API server sets it.
pub fn ns_info(ns: &Namespace, opts: &Options) -> NsInfo {
    let name = ns.metadata.name.clone().unwrap_or_default();
    let mut labels = ns.metadata.labels.clone().unwrap_or_default();
    labels.insert("kubernetes.io/metadata.name".into(), name.clone());
    let legacy = opts.legacy_namespace_isolation
        && ns
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LEGACY_ISOLATION_ANNOTATION))
            .is_some_and(|v| legacy_default_deny(v));
    NsInfo {
        name,
        labels,
        legacy_default_deny: legacy,
    }
}

/// The policy the legacy annotation stands for: every pod of the namespace isolated for
/// ingress, nothing allowed. Its name cannot clash with a real policy's (`<` is not
/// allowed in object names).
pub fn legacy_policy(namespace: &str) -> Policy {
    Policy {
        namespace: namespace.to_string(),
        name: format!("<{LEGACY_ISOLATION_ANNOTATION}>"),
        selector: Selector::default(),
        ingress: Some(vec![]),
        egress: None,
    }
}

fn legacy_default_deny(v: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(v)
        .ok()
        .and_then(|j| {
            j.get("ingress")
                .and_then(|i| i.get("isolation"))
                .and_then(|s| s.as_str())
                .map(|s| s == "DefaultDeny")
        })
        .unwrap_or(false)
}

/// Validates and reduces one pod.
pub fn pod_info(p: &Pod, opts: &Options) -> Result<PodInfo, InvalidInput> {
    let namespace = p
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = p.metadata.name.clone().unwrap_or_default();
    let object = format!("pod {namespace}/{name}");
    let spec = p.spec.as_ref();
    let ip = match p.status.as_ref().and_then(|s| s.pod_ip.as_deref()) {
        None | Some("") => None,
        Some(s) => Some(s.parse::<Ipv4Addr>().map_err(|_| InvalidInput {
            object: object.clone(),
            field: "status.podIP".into(),
            message: format!("{s:?} is not an IPv4 address"),
        })?),
    };
    let mut ports = Vec::new();
    for (ci, c) in spec
        .map(|s| s.containers.as_slice())
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        for (pi, cp) in c.ports.iter().flatten().enumerate() {
            let field = format!("spec.containers[{ci}].ports[{pi}]");
            let proto = Proto::parse(cp.protocol.as_deref().unwrap_or("TCP")).ok_or_else(|| {
                InvalidInput {
                    object: object.clone(),
                    field: format!("{field}.protocol"),
                    message: "supported values: \"TCP\", \"UDP\", \"SCTP\"".into(),
                }
            })?;
            let port = u16::try_from(cp.container_port)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| InvalidInput {
                    object: object.clone(),
                    field: format!("{field}.containerPort"),
                    message: "must be between 1 and 65535, inclusive".into(),
                })?;
            if let Some(n) = &cp.name {
                ports.push(NamedPort {
                    name: n.clone(),
                    port,
                    proto,
                });
            }
        }
    }
    let node = spec.and_then(|s| s.node_name.as_deref());
    let local = match (&opts.node_name, node) {
        (None, _) => true,
        (Some(me), Some(n)) => me == n,
        (Some(_), None) => false,
    };
    let finished = p.metadata.deletion_timestamp.is_some()
        || p.status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|ph| ph == "Succeeded" || ph == "Failed");
    Ok(PodInfo {
        namespace,
        name,
        uid: p.metadata.uid.clone().unwrap_or_default(),
        finished,
        labels: p.metadata.labels.clone().unwrap_or_default(),
        ip,
        ports,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        local,
    })
}

/// A validated selector; each bad expression is reported at its own field path.
fn selector(
    sel: &LabelSelector,
    object: &str,
    field: &str,
    errs: &mut Vec<InvalidInput>,
) -> Selector {
    // matchLabels first, as `Selector::from_label_selector` orders them.
    let mut requirements: Vec<Requirement> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| Requirement::Eq(k.clone(), v.clone()))
        .collect();
    for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
        match Requirement::from_expression(e) {
            Ok(r) => requirements.push(r),
            Err(why) => errs.push(InvalidInput {
                object: object.to_string(),
                field: format!("{field}.matchExpressions[{i}]"),
                message: why.to_string(),
            }),
        }
    }
    Selector { requirements }
}

/// IANA service name syntax, as Kubernetes validates named ports.
fn valid_port_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 15
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && n.bytes().any(|b| b.is_ascii_lowercase())
        && !n.starts_with('-')
        && !n.ends_with('-')
        && !n.contains("--")
}

fn port_spec(
    p: &NetworkPolicyPort,
    object: &str,
    field: &str,
    errs: &mut Vec<InvalidInput>,
) -> Option<PortSpec> {
    let bad = |f: &str, m: String| InvalidInput {
        object: object.to_string(),
        field: format!("{field}{f}"),
        message: m,
    };
    let proto = match Proto::parse(p.protocol.as_deref().unwrap_or("TCP")) {
        Some(pr) => pr,
        None => {
            errs.push(bad(
                ".protocol",
                "supported values: \"TCP\", \"UDP\", \"SCTP\"".into(),
            ));
            return None;
        }
    };
    let to_u16 = |v: i32, f: &str, errs: &mut Vec<InvalidInput>| {
        let r = u16::try_from(v).ok().filter(|v| *v > 0);
        if r.is_none() {
            errs.push(bad(f, "must be between 1 and 65535, inclusive".into()));
        }
        r
    };
    match (&p.port, p.end_port) {
        (None, None) => Some(PortSpec::All(proto)),
        (None, Some(_)) => {
            errs.push(bad(
                ".endPort",
                "may not be specified when `port` is not specified".into(),
            ));
            None
        }
        (Some(IntOrString::String(_)), Some(_)) => {
            errs.push(bad(
                ".endPort",
                "may not be specified when `port` is non-numeric".into(),
            ));
            None
        }
        (Some(IntOrString::String(n)), None) => {
            if valid_port_name(n) {
                Some(PortSpec::Named(proto, n.clone()))
            } else {
                errs.push(bad(
                    ".port",
                    format!("{n:?} is not a valid port name (IANA_SVC_NAME)"),
                ));
                None
            }
        }
        (Some(IntOrString::Int(lo)), end) => {
            let lo = to_u16(*lo, ".port", errs)?;
            let hi = match end {
                None => lo,
                Some(e) => {
                    let hi = to_u16(e, ".endPort", errs)?;
                    if hi < lo {
                        errs.push(bad(
                            ".endPort",
                            "must be greater than or equal to `port`".into(),
                        ));
                        return None;
                    }
                    hi
                }
            };
            Some(PortSpec::Range(proto, lo, hi))
        }
    }
}

fn peer(
    p: &NetworkPolicyPeer,
    object: &str,
    field: &str,
    errs: &mut Vec<InvalidInput>,
) -> Option<Peer> {
    if let Some(b) = &p.ip_block {
        if p.pod_selector.is_some() || p.namespace_selector.is_some() {
            errs.push(InvalidInput {
                object: object.into(),
                field: field.into(),
                message: "may not specify both ipBlock and another peer".into(),
            });
            return None;
        }
        let cidr = match moat_api::cidr::parse_network(&b.cidr) {
            Ok(c) => c,
            Err(m) => {
                errs.push(InvalidInput {
                    object: object.into(),
                    field: format!("{field}.ipBlock.cidr"),
                    message: m.to_string(),
                });
                return None;
            }
        };
        let mut except = Vec::new();
        for (i, e) in b.except.iter().flatten().enumerate() {
            let f = format!("{field}.ipBlock.except[{i}]");
            match moat_api::cidr::parse_network(e) {
                Ok(c) if cidr.contains(&c) && c != cidr => except.push(c),
                Ok(_) => errs.push(InvalidInput {
                    object: object.into(),
                    field: f,
                    message: format!("must be a strict subset of `cidr` {}", b.cidr),
                }),
                Err(m) => errs.push(InvalidInput {
                    object: object.into(),
                    field: f,
                    message: m.to_string(),
                }),
            }
        }
        return Some(Peer::Block { cidr, except });
    }
    if p.pod_selector.is_none() && p.namespace_selector.is_none() {
        errs.push(InvalidInput {
            object: object.into(),
            field: field.into(),
            message: "must specify a peer".into(),
        });
        return None;
    }
    let empty = Selector::default();
    Some(Peer::Pods {
        pods: p
            .pod_selector
            .as_ref()
            .map(|s| selector(s, object, &format!("{field}.podSelector"), errs))
            .unwrap_or_else(|| empty.clone()),
        namespaces: p
            .namespace_selector
            .as_ref()
            .map(|s| selector(s, object, &format!("{field}.namespaceSelector"), errs)),
    })
}

fn rules<'a>(
    items: impl Iterator<
        Item = (
            Option<&'a Vec<NetworkPolicyPeer>>,
            Option<&'a Vec<NetworkPolicyPort>>,
        ),
    >,
    dir: &str,
    peer_key: &str,
    object: &str,
    errs: &mut Vec<InvalidInput>,
) -> Vec<Rule> {
    items
        .enumerate()
        .map(|(i, (peers, ports))| Rule {
            peers: peers
                .into_iter()
                .flatten()
                .enumerate()
                .filter_map(|(j, p)| {
                    peer(p, object, &format!("spec.{dir}[{i}].{peer_key}[{j}]"), errs)
                })
                .collect(),
            ports: ports
                .into_iter()
                .flatten()
                .enumerate()
                .filter_map(|(j, p)| {
                    port_spec(p, object, &format!("spec.{dir}[{i}].ports[{j}]"), errs)
                })
                .collect(),
        })
        .collect()
}

/// Validates and parses one policy, applying Kubernetes' policyTypes defaulting.
pub fn policy(np: &NetworkPolicy) -> Result<Policy, Vec<InvalidInput>> {
    let namespace = np
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = np.metadata.name.clone().unwrap_or_default();
    let object = format!("networkpolicy {namespace}/{name}");
    let mut errs = Vec::new();
    let Some(spec) = np.spec.as_ref() else {
        return Err(vec![InvalidInput {
            object,
            field: "spec".into(),
            message: "Required value".into(),
        }]);
    };
    let sel = selector(
        &spec.pod_selector.clone().unwrap_or_default(),
        &object,
        "spec.podSelector",
        &mut errs,
    );
    let ingress_rules = spec.ingress.as_deref().unwrap_or(&[]);
    let egress_rules = spec.egress.as_deref().unwrap_or(&[]);
    let types: Vec<String> = match spec.policy_types.as_deref() {
        Some(t) if !t.is_empty() => t.to_vec(),
        _ => {
            let mut t = vec!["Ingress".to_string()];
            if !egress_rules.is_empty() {
                t.push("Egress".into());
            }
            t
        }
    };
    for (i, t) in types.iter().enumerate() {
        if t != "Ingress" && t != "Egress" {
            errs.push(InvalidInput {
                object: object.clone(),
                field: format!("spec.policyTypes[{i}]"),
                message: "supported values: \"Ingress\", \"Egress\"".into(),
            });
        }
    }
    let ing = rules(
        ingress_rules
            .iter()
            .map(|r| (r.from.as_ref(), r.ports.as_ref())),
        "ingress",
        "from",
        &object,
        &mut errs,
    );
    let eg = rules(
        egress_rules
            .iter()
            .map(|r| (r.to.as_ref(), r.ports.as_ref())),
        "egress",
        "to",
        &object,
        &mut errs,
    );
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(Policy {
        namespace,
        name,
        selector: sel,
        ingress: types.iter().any(|t| t == "Ingress").then_some(ing),
        egress: types.iter().any(|t| t == "Egress").then_some(eg),
    })
}

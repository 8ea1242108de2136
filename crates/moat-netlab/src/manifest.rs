//! Reading ordinary Kubernetes YAML for the lab, and running a whole lab session.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use moat_netpol::{Options, Proto, Snapshot};

use crate::{Lab, LabError, LabPod, ProbeOpts};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{source_name}: document {index}: not valid YAML")]
    Yaml {
        source_name: String,
        index: usize,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{source_name}: document {index}: {kind} is not a valid {kind}: {message}")]
    Object {
        source_name: String,
        index: usize,
        kind: String,
        message: String,
    },
    #[error(
        "{source_name}: document {index}: kind {kind:?} is not used by the lab (want Namespace, Pod, NetworkPolicy or List)"
    )]
    UnknownKind {
        source_name: String,
        index: usize,
        kind: String,
    },
    #[error("pod {pod}: no address left in 10.42.0.0/24 to assign")]
    OutOfAddresses { pod: String },
    #[error("invalid input: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<moat_netpol::InvalidInput>),
    #[error("bad --probe item {0:?} (want PORT/PROTO, e.g. 80/TCP)")]
    Probe(String),
}

/// The objects of a lab.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub policies: Vec<NetworkPolicy>,
}

impl Objects {
    /// Adds every document of a YAML stream (`---` separated; `kind: List` unwrapped).
    pub fn add_yaml(&mut self, source_name: &str, text: &str) -> Result<(), ManifestError> {
        for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let v: serde_json::Value =
                serde::Deserialize::deserialize(doc).map_err(|source| ManifestError::Yaml {
                    source_name: source_name.to_string(),
                    index,
                    source,
                })?;
            self.add_value(source_name, index, v)?;
        }
        Ok(())
    }

    fn add_value(
        &mut self,
        source_name: &str,
        index: usize,
        v: serde_json::Value,
    ) -> Result<(), ManifestError> {
        if v.is_null() {
            return Ok(());
        }
        let kind = v
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_string();
        let bad = |message: String| ManifestError::Object {
            source_name: source_name.to_string(),
            index,
            kind: kind.clone(),
            message,
        };
        match kind.as_str() {
            "Namespace" => self
                .namespaces
                .push(serde_json::from_value(v).map_err(|e| bad(e.to_string()))?),
            "Pod" => self
                .pods
                .push(serde_json::from_value(v).map_err(|e| bad(e.to_string()))?),
            "NetworkPolicy" => self
                .policies
                .push(serde_json::from_value(v).map_err(|e| bad(e.to_string()))?),
            "List" => {
                for item in v
                    .get("items")
                    .and_then(|i| i.as_array())
                    .cloned()
                    .unwrap_or_default()
                {
                    self.add_value(source_name, index, item)?;
                }
            }
            _ => {
                return Err(ManifestError::UnknownKind {
                    source_name: source_name.to_string(),
                    index,
                    kind,
                });
            }
        }
        Ok(())
    }

    /// Gives pods without `status.podIP` the next free address of 10.42.0.0/24 (from .2),
    /// defaults their namespace, and declares namespaces that pods use but no document did.
    pub fn finish(&mut self) -> Result<(), ManifestError> {
        let mut used: BTreeSet<Ipv4Addr> = self
            .pods
            .iter()
            .filter_map(|p| p.status.as_ref()?.pod_ip.as_ref()?.parse().ok())
            .collect();
        let mut next = 2u8;
        for p in &mut self.pods {
            if p.metadata.namespace.is_none() {
                p.metadata.namespace = Some("default".into());
            }
            let has_ip = p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some();
            if has_ip {
                continue;
            }
            let ip = loop {
                let cand = Ipv4Addr::new(10, 42, 0, next);
                if next == 255 {
                    return Err(ManifestError::OutOfAddresses {
                        pod: p.metadata.name.clone().unwrap_or_default(),
                    });
                }
                next += 1;
                if !used.contains(&cand) {
                    break cand;
                }
            };
            used.insert(ip);
            p.status.get_or_insert_with(Default::default).pod_ip = Some(ip.to_string());
        }
        for p in &mut self.policies {
            if p.metadata.namespace.is_none() {
                p.metadata.namespace = Some("default".into());
            }
        }
        let declared: BTreeSet<String> = self
            .namespaces
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        let mut missing: BTreeSet<String> = self
            .pods
            .iter()
            .filter_map(|p| p.metadata.namespace.clone())
            .collect();
        missing.retain(|n| !declared.contains(n));
        for n in missing {
            let mut ns = Namespace::default();
            ns.metadata.name = Some(n);
            self.namespaces.push(ns);
        }
        Ok(())
    }

    pub fn snapshot(&self, opts: &Options) -> Result<Snapshot, ManifestError> {
        Snapshot::build(&self.namespaces, &self.pods, &self.policies, opts)
            .map_err(ManifestError::Invalid)
    }
}

/// Parses `80/TCP,81/TCP,80/UDP`.
pub fn parse_probes(s: &str) -> Result<Vec<(u16, Proto)>, ManifestError> {
    s.split(',')
        .filter(|x| !x.trim().is_empty())
        .map(|item| {
            let (p, proto) = item
                .trim()
                .split_once('/')
                .ok_or_else(|| ManifestError::Probe(item.to_string()))?;
            let port: u16 = p
                .parse()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| ManifestError::Probe(item.to_string()))?;
            let proto = Proto::parse(&proto.to_ascii_uppercase())
                .ok_or_else(|| ManifestError::Probe(item.to_string()))?;
            Ok((port, proto))
        })
        .collect()
}

/// One probe result.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub protocol: String,
    pub allowed: bool,
}

/// The lab pods for a snapshot: every pod listens on its declared ports and the probe ports.
pub fn lab_pods(snap: &Snapshot, probes: &[(u16, Proto)]) -> Vec<LabPod> {
    snap.pods
        .iter()
        .filter_map(|p| {
            let mut listen: BTreeSet<(u16, Proto)> =
                p.ports.iter().map(|np| (np.port, np.proto)).collect();
            listen.extend(probes.iter().copied());
            Some(LabPod {
                id: format!("{}/{}", p.namespace, p.name),
                ip: p.ip?,
                listen: listen.into_iter().collect(),
            })
        })
        .collect()
}

/// Probes every (from, to, port) in `lab`; SCTP probes are skipped (no listener here).
pub fn truth_table(
    lab: &Lab,
    probes: &[(u16, Proto)],
    opts: ProbeOpts,
) -> Result<Vec<Verdict>, LabError> {
    let n = lab.pods().len();
    let mut list = Vec::new();
    for &(port, proto) in probes.iter().filter(|(_, p)| *p != Proto::Sctp) {
        for a in 0..n {
            for b in 0..n {
                list.push((a, b, port, proto));
            }
        }
    }
    let results = lab.probe_all(&list, opts)?;
    Ok(list
        .into_iter()
        .zip(results)
        .map(|((a, b, port, proto), allowed)| Verdict {
            from: lab.pods()[a].id.clone(),
            to: lab.pods()[b].id.clone(),
            port,
            protocol: proto.name().to_string(),
            allowed,
        })
        .collect())
}

/// Upstream e2e style: one grid per port, `.` allowed and `X` denied, rows = from.
pub fn render_table(verdicts: &[Verdict]) -> String {
    let mut out = String::new();
    let mut ports: Vec<(u16, String)> = verdicts
        .iter()
        .map(|v| (v.port, v.protocol.clone()))
        .collect();
    ports.dedup();
    let mut seen = BTreeSet::new();
    ports.retain(|p| seen.insert(p.clone()));
    let mut pods: Vec<String> = Vec::new();
    for v in verdicts {
        if !pods.contains(&v.from) {
            pods.push(v.from.clone());
        }
    }
    let w = pods.iter().map(|p| p.len()).max().unwrap_or(4).max(4);
    for (port, proto) in ports {
        let _ = writeln!(out, "{port}/{proto}");
        let _ = write!(out, "{:w$}", "");
        for p in &pods {
            let _ = write!(out, " {p:>w$}");
        }
        out.push('\n');
        for from in &pods {
            let _ = write!(out, "{from:w$}");
            for to in &pods {
                let v = verdicts.iter().find(|v| {
                    v.port == port && v.protocol == proto && &v.from == from && &v.to == to
                });
                let c = match v {
                    Some(v) if v.allowed => ".",
                    Some(_) => "X",
                    None => "?",
                };
                let _ = write!(out, " {c:>w$}");
            }
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

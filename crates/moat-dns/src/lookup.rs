//! Name resolution against a [`Zone`]: which records a question has, or why it has none.
//!
//! The rules are the Kubernetes DNS specification as CoreDNS's `kubernetes` plugin serves
//! it (see `NETWORK.md`, "Cluster DNS"). The NXDOMAIN/NODATA split matters more than it
//! looks: musl stops walking the search list at the first answer that is not NXDOMAIN, so a
//! NODATA for a name that does not exist breaks every lookup that goes through it.
//!
//! | name (relative to the zone)     | exists when                         |
//! |---------------------------------|-------------------------------------|
//! | (apex), `svc`, `pod`            | always (NODATA but for SOA at apex) |
//! | `dns-version`                   | always; TXT `1.1.0`                 |
//! | `<ns>.svc`, `<ns>.pod`          | the namespace exists                |
//! | `<svc>.<ns>.svc`                | the Service exists (headless: and has a ready endpoint) |
//! | `<ep>.<svc>.<ns>.svc`           | a ready endpoint has that hostname/dashed IP |
//! | `_<port>._<proto>.<svc>.<ns>.svc` | a named port matches (headless: on a ready endpoint) |
//! | `a-b-c-d.<ns>.pod`              | the namespace exists and the label is an address |
//!
//! Everything else under the zone is NXDOMAIN. Reverse names are answered when the address
//! is a cluster IP or a ready endpoint, and forwarded otherwise (CoreDNS's `fallthrough`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::zone::{EndpointInfo, ServiceKind, Zone};

/// TTL of every record and of negative answers (the SOA minimum), as CoreDNS's default.
pub const TTL: u32 = 5;

/// What the version record answers (the Kubernetes DNS schema version).
pub const SCHEMA_VERSION: &str = "1.1.0";

/// The result of resolving one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Not ours: the server forwards it upstream.
    Forward,
    /// In the zone, but the caches have not synced: SERVFAIL.
    NotSynced,
    /// The name does not exist (NXDOMAIN with the SOA).
    NxDomain,
    /// The name exists without records of this type (NOERROR, empty, with the SOA).
    NoData,
    /// Records for the answer section, and helpful ones for the additional section.
    Records {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    /// A chain of CNAMEs (an ExternalName) ending outside the zone: the server asks its
    /// upstream for `target` and appends the result, as CoreDNS does (stub resolvers do not
    /// follow a CNAME themselves).
    Chase { answers: Vec<Record>, target: Name },
}

impl Outcome {
    fn records(answers: Vec<Record>) -> Self {
        Self::Records {
            answers,
            additionals: Vec::new(),
        }
    }

    /// Answers if there are any, NODATA otherwise (for a name known to exist).
    fn or_nodata(answers: Vec<Record>) -> Self {
        if answers.is_empty() {
            Self::NoData
        } else {
            Self::records(answers)
        }
    }
}

/// Whether a question of type `q` asks for records of type `r`.
fn wants(q: RecordType, r: RecordType) -> bool {
    q == r || q == RecordType::ANY
}

/// Whether the name is the zone or below it.
pub(crate) fn in_zone(zone: &Zone, labels: &[Vec<u8>]) -> bool {
    let zl = zone.labels();
    labels.len() >= zl.len() && labels[labels.len() - zl.len()..] == *zl
}

/// How many CNAMEs (ExternalName services naming each other) are followed in the zone.
const MAX_CHAIN: usize = 8;

/// Resolves `qname` (as the client wrote it; answers echo its case) for `qtype`, following
/// ExternalName CNAMEs through the zone, and ending in [`Outcome::Chase`] when one leaves it.
pub(crate) fn resolve(zone: &Zone, qname: &Name, qtype: RecordType) -> Outcome {
    let first = resolve_once(zone, qname, qtype);
    if matches!(qtype, RecordType::CNAME | RecordType::ANY) {
        return first;
    }
    let Outcome::Records {
        mut answers,
        mut additionals,
    } = first
    else {
        return first;
    };
    for _ in 0..MAX_CHAIN {
        let Some(RData::CNAME(CNAME(target))) = answers.last().map(|r| &r.data) else {
            break;
        };
        let target = target.clone();
        let labels: Vec<Vec<u8>> = target.iter().map(<[u8]>::to_ascii_lowercase).collect();
        if !in_zone(zone, &labels) {
            return Outcome::Chase { answers, target };
        }
        // A target in the zone that does not resolve leaves the CNAME alone in the answer.
        let Outcome::Records {
            answers: more,
            additionals: extra,
        } = resolve_once(zone, &target, qtype)
        else {
            break;
        };
        answers.extend(more);
        additionals.extend(extra);
    }
    Outcome::Records {
        answers,
        additionals,
    }
}

fn resolve_once(zone: &Zone, qname: &Name, qtype: RecordType) -> Outcome {
    let labels: Vec<Vec<u8>> = qname.iter().map(<[u8]>::to_ascii_lowercase).collect();
    if in_zone(zone, &labels) {
        if !zone.is_synced() {
            return Outcome::NotSynced;
        }
        let rel = &labels[..labels.len() - zone.labels().len()];
        // Labels that are not UTF-8 name nothing in a cluster.
        let Some(rel) = rel
            .iter()
            .map(|l| std::str::from_utf8(l).ok())
            .collect::<Option<Vec<&str>>>()
        else {
            return Outcome::NxDomain;
        };
        return resolve_in_zone(zone, qname, qtype, &rel);
    }
    if wants(qtype, RecordType::PTR)
        && zone.is_synced()
        && let Some(ip) = reverse_ip(&labels)
    {
        let answers = ptr_records(zone, qname, &ip);
        if !answers.is_empty() {
            return Outcome::records(answers);
        }
    }
    Outcome::Forward
}

fn resolve_in_zone(zone: &Zone, qname: &Name, qtype: RecordType, rel: &[&str]) -> Outcome {
    match rel {
        [] => {
            if wants(qtype, RecordType::SOA) {
                Outcome::records(vec![soa(zone)])
            } else {
                Outcome::NoData
            }
        }
        ["dns-version"] => {
            if wants(qtype, RecordType::TXT) {
                let txt = TXT::new(vec![SCHEMA_VERSION.to_owned()]);
                Outcome::records(vec![record(qname, RData::TXT(txt))])
            } else {
                Outcome::NoData
            }
        }
        ["svc"] | ["pod"] => Outcome::NoData,
        [ns, "svc"] | [ns, "pod"] => {
            if zone.namespace_exists(ns) {
                Outcome::NoData
            } else {
                Outcome::NxDomain
            }
        }
        [svc, ns, "svc"] => service(zone, qname, qtype, ns, svc),
        [ep, svc, ns, "svc"] => endpoint(zone, qname, qtype, ns, svc, ep),
        [port, proto, svc, ns, "svc"] => srv(zone, qname, qtype, ns, svc, port, proto),
        [ip, ns, "pod"] => pod(zone, qname, qtype, ns, ip),
        _ => Outcome::NxDomain,
    }
}

fn service(zone: &Zone, qname: &Name, qtype: RecordType, ns: &str, name: &str) -> Outcome {
    let Some(svc) = zone.service(ns, name) else {
        return Outcome::NxDomain;
    };
    match &svc.kind {
        ServiceKind::ExternalName(Some(target)) => {
            // A CNAME answers every type; the client (or the server layer) follows it.
            Outcome::records(vec![record(qname, RData::CNAME(CNAME(target.clone())))])
        }
        ServiceKind::ExternalName(None) => Outcome::NoData,
        ServiceKind::ClusterIp(ips) => Outcome::or_nodata(address_records(qname, qtype, ips)),
        ServiceKind::Headless => {
            let eps = zone.ready_endpoints(ns, name);
            if eps.is_empty() {
                return Outcome::NxDomain;
            }
            let mut ips: Vec<IpAddr> = eps.iter().map(|e| e.ip).collect();
            ips.sort();
            ips.dedup();
            Outcome::or_nodata(address_records(qname, qtype, &ips))
        }
    }
}

fn endpoint(
    zone: &Zone,
    qname: &Name,
    qtype: RecordType,
    ns: &str,
    svc: &str,
    label: &str,
) -> Outcome {
    if zone.service(ns, svc).is_none() {
        return Outcome::NxDomain;
    }
    let ips: Vec<IpAddr> = zone
        .ready_endpoints(ns, svc)
        .into_iter()
        .filter(|e| e.label == label)
        .map(|e| e.ip)
        .collect();
    if ips.is_empty() {
        return Outcome::NxDomain;
    }
    Outcome::or_nodata(address_records(qname, qtype, &ips))
}

#[allow(clippy::too_many_arguments)]
fn srv(
    zone: &Zone,
    qname: &Name,
    qtype: RecordType,
    ns: &str,
    svc_name: &str,
    port: &str,
    proto: &str,
) -> Outcome {
    let (Some(port), Some(proto)) = (strip_underscore(port), strip_underscore(proto)) else {
        return Outcome::NxDomain;
    };
    let Some(svc) = zone.service(ns, svc_name) else {
        return Outcome::NxDomain;
    };
    let matches = |p: &crate::zone::NamedPort| p.name == port && p.protocol == proto;
    // (target, port, addresses of the target for the additional section)
    let mut found: Vec<(Name, u16, Vec<IpAddr>)> = Vec::new();
    match &svc.kind {
        ServiceKind::ClusterIp(ips) => {
            let Some(target) = service_name(zone, ns, svc_name) else {
                return Outcome::NxDomain;
            };
            for p in svc.ports.iter().filter(|p| matches(p)) {
                found.push((target.clone(), p.port, ips.clone()));
            }
        }
        ServiceKind::ExternalName(target) => {
            let Some(target) = target else {
                return Outcome::NxDomain;
            };
            for p in svc.ports.iter().filter(|p| matches(p)) {
                found.push((target.clone(), p.port, Vec::new()));
            }
        }
        ServiceKind::Headless => {
            // The endpoint's port (the target port) from the slice the endpoint is in.
            for slice in zone.slices_of(ns, svc_name) {
                for p in slice.ports.iter().filter(|p| matches(p)) {
                    for ep in &slice.endpoints {
                        let Some(target) = endpoint_name(zone, ns, svc_name, ep) else {
                            continue;
                        };
                        match found.iter_mut().find(|f| f.0 == target && f.1 == p.port) {
                            Some(f) if !f.2.contains(&ep.ip) => f.2.push(ep.ip),
                            Some(_) => {}
                            None => found.push((target, p.port, vec![ep.ip])),
                        }
                    }
                }
            }
        }
    }
    if found.is_empty() {
        return Outcome::NxDomain;
    }
    if !wants(qtype, RecordType::SRV) {
        return Outcome::NoData;
    }
    // Equal priority; the weight shares 100 among the targets, as CoreDNS does.
    let weight = u16::try_from(100 / found.len()).unwrap_or(0);
    let mut answers = Vec::with_capacity(found.len());
    let mut additionals = Vec::new();
    for (target, port, ips) in found {
        additionals.extend(address_records(&target, RecordType::ANY, &ips));
        answers.push(record(qname, RData::SRV(SRV::new(0, weight, port, target))));
    }
    Outcome::Records {
        answers,
        additionals,
    }
}

fn pod(zone: &Zone, qname: &Name, qtype: RecordType, ns: &str, label: &str) -> Outcome {
    if !zone.namespace_exists(ns) {
        return Outcome::NxDomain;
    }
    // `pods insecure`: the address is read from the name, not checked against a pod.
    let Some(ip) = undash(label) else {
        return Outcome::NxDomain;
    };
    Outcome::or_nodata(address_records(qname, qtype, &[ip]))
}

/// `1-2-3-4` → 1.2.3.4; an IPv6 address with `-` for `:`.
fn undash(label: &str) -> Option<IpAddr> {
    let parts: Vec<&str> = label.split('-').collect();
    if parts.len() == 4 {
        let mut octets = [0u8; 4];
        for (o, p) in octets.iter_mut().zip(&parts) {
            if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            *o = p.parse().ok()?;
        }
        return Some(IpAddr::V4(Ipv4Addr::from(octets)));
    }
    label
        .replace('-', ":")
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

fn strip_underscore(label: &str) -> Option<&str> {
    label.strip_prefix('_').filter(|s| !s.is_empty())
}

/// A and AAAA records owned by `owner` for the addresses of the asked family.
fn address_records(owner: &Name, qtype: RecordType, ips: &[IpAddr]) -> Vec<Record> {
    ips.iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(v4) if wants(qtype, RecordType::A) => Some(RData::A(A(*v4))),
            IpAddr::V6(v6) if wants(qtype, RecordType::AAAA) => Some(RData::AAAA(AAAA(*v6))),
            _ => None,
        })
        .map(|data| record(owner, data))
        .collect()
}

/// A record with the zone's TTL, class IN.
pub(crate) fn record(owner: &Name, data: RData) -> Record {
    Record::from_rdata(owner.clone(), TTL, data)
}

/// `<labels...>.<zone>.`
fn zone_name(zone: &Zone, labels: &[&str]) -> Option<Name> {
    let mut all: Vec<&[u8]> = labels.iter().map(|l| l.as_bytes()).collect();
    all.extend(zone.labels().iter().map(Vec::as_slice));
    Name::from_labels(all).ok()
}

fn service_name(zone: &Zone, ns: &str, svc: &str) -> Option<Name> {
    zone_name(zone, &[svc, ns, "svc"])
}

fn endpoint_name(zone: &Zone, ns: &str, svc: &str, ep: &EndpointInfo) -> Option<Name> {
    zone_name(zone, &[&ep.label, svc, ns, "svc"])
}

/// The zone's SOA, for the answer to an apex SOA question and the authority section of
/// negative answers (its minimum is how long resolvers cache them).
pub(crate) fn soa(zone: &Zone) -> Record {
    let domain = zone.domain().clone();
    let mname = zone_name(zone, &["ns", "dns"]).unwrap_or_else(|| domain.clone());
    let rname = zone_name(zone, &["hostmaster"]).unwrap_or_else(|| domain.clone());
    let soa = SOA::new(mname, rname, zone.serial(), 7200, 1800, 86400, TTL);
    record(&domain, RData::SOA(soa))
}

/// The address a reverse name stands for: `d.c.b.a.in-addr.arpa.` or the 32 nibbles of
/// `ip6.arpa.`; `None` for anything else (partial names included).
fn reverse_ip(labels: &[Vec<u8>]) -> Option<IpAddr> {
    match labels {
        [d, c, b, a, inaddr, arpa] if inaddr == b"in-addr" && arpa == b"arpa" => {
            let octet = |l: &Vec<u8>| -> Option<u8> {
                if l.is_empty() || l.len() > 3 || !l.iter().all(u8::is_ascii_digit) {
                    return None;
                }
                std::str::from_utf8(l).ok()?.parse().ok()
            };
            Some(IpAddr::V4(Ipv4Addr::new(
                octet(a)?,
                octet(b)?,
                octet(c)?,
                octet(d)?,
            )))
        }
        [nibbles @ .., ip6, arpa] if nibbles.len() == 32 && ip6 == b"ip6" && arpa == b"arpa" => {
            let mut value: u128 = 0;
            for l in nibbles.iter().rev() {
                let [n] = l.as_slice() else {
                    return None;
                };
                let digit = char::from(*n).to_digit(16)?;
                value = (value << 4) | u128::from(digit);
            }
            Some(IpAddr::V6(Ipv6Addr::from(value)))
        }
        _ => None,
    }
}

/// PTR records for an address: the Service for a cluster IP, `<ep>.<svc>.<ns>.svc` for an
/// endpoint, only while that Service exists.
fn ptr_records(zone: &Zone, qname: &Name, ip: &IpAddr) -> Vec<Record> {
    let Some(sources) = zone.ptr_sources(ip) else {
        return Vec::new();
    };
    let mut targets: Vec<Name> = Vec::new();
    for src in sources {
        if zone.service(&src.namespace, &src.service).is_none() {
            continue;
        }
        let target = match &src.endpoint {
            None => service_name(zone, &src.namespace, &src.service),
            Some(label) => zone_name(zone, &[label, &src.service, &src.namespace, "svc"]),
        };
        if let Some(t) = target
            && !targets.contains(&t)
        {
            targets.push(t);
        }
    }
    targets
        .into_iter()
        .map(|t| record(qname, RData::PTR(PTR(t))))
        .collect()
}

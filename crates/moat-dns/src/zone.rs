//! The cluster zone: what DNS needs from Services, EndpointSlices and Namespaces, kept as
//! small extracted records (never whole objects) with indexes that one watch event updates
//! in place (`Zone::apply`), so a change costs the size of that object, not of the cluster.
//!
//! Only ready endpoints are kept (`conditions.ready` absent counts as ready, as the API
//! documents): nothing in DNS ever names a not-ready endpoint. The reverse index records
//! where each address came from (service cluster IP, or which slice) so removing one
//! source never removes another's PTR.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use hickory_proto::rr::Name;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::error::ZoneError;

/// The label an EndpointSlice carries naming its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Namespace and name of an object.
pub(crate) type Key = (String, String);

/// A named port of a Service or an EndpointSlice (unnamed ports get no SRV record, so they
/// are not kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NamedPort {
    /// The port's name, as written in the object.
    pub name: String,
    /// `tcp`, `udp` or `sctp` (lowercase, as it appears in `_<proto>` labels).
    pub protocol: String,
    pub port: u16,
}

/// How a Service answers its own name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ServiceKind {
    /// A (and AAAA) records for its cluster IPs; empty while the IP is being allocated.
    ClusterIp(Vec<IpAddr>),
    /// `clusterIP: None`: the ready endpoints' addresses.
    Headless,
    /// `type: ExternalName`: a CNAME; `None` when the target is not a valid name.
    ExternalName(Option<Name>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServiceInfo {
    pub kind: ServiceKind,
    pub ports: Vec<NamedPort>,
}

/// One ready address of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EndpointInfo {
    pub ip: IpAddr,
    /// The first label of its per-endpoint name: the `hostname` field, else the dashed IP.
    pub label: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SliceInfo {
    /// The Service this slice belongs to (same namespace).
    pub service: String,
    pub endpoints: Vec<EndpointInfo>,
    pub ports: Vec<NamedPort>,
}

/// Where a reverse (PTR) entry comes from. `slice: None` is the Service's cluster IP.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct PtrSource {
    pub namespace: String,
    pub service: String,
    /// The endpoint label for endpoint addresses; `None` for a cluster IP.
    pub endpoint: Option<String>,
    pub slice: Option<String>,
}

/// Everything derived from the objects; compared whole by the incremental-update tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Records {
    namespaces: BTreeSet<String>,
    services: HashMap<Key, ServiceInfo>,
    /// How many Services each namespace holds: a Service implies its namespace exists even
    /// if the Namespace object has not been seen yet.
    services_per_ns: HashMap<String, usize>,
    /// Keyed by (namespace, slice name).
    slices: HashMap<Key, SliceInfo>,
    /// (namespace, service) → the names of its slices.
    slices_per_service: HashMap<Key, BTreeSet<String>>,
    ptr: HashMap<IpAddr, BTreeSet<PtrSource>>,
}

/// One watch event for the zone.
#[derive(Clone, Debug)]
pub enum Change {
    /// A Service was added or modified.
    ServiceApplied(Service),
    /// A Service was deleted (only its namespace and name are read).
    ServiceDeleted(Service),
    /// An EndpointSlice was added or modified.
    SliceApplied(EndpointSlice),
    /// An EndpointSlice was deleted (only its namespace and name are read).
    SliceDeleted(EndpointSlice),
    /// A Namespace was added or modified.
    NamespaceApplied(Namespace),
    /// A Namespace was deleted.
    NamespaceDeleted(Namespace),
}

/// The records of one cluster domain.
///
/// Equality compares the domain and the records, not the sync flag or the SOA serial.
#[derive(Clone, Debug)]
pub struct Zone {
    domain: Name,
    /// The domain's labels, lowercase, most significant last (as on the wire).
    labels: Vec<Vec<u8>>,
    records: Records,
    synced: bool,
    serial: u32,
}

impl PartialEq for Zone {
    fn eq(&self, other: &Self) -> bool {
        self.labels == other.labels && self.records == other.records
    }
}

impl Zone {
    /// The default cluster domain.
    pub const DEFAULT_DOMAIN: &'static str = "cluster.local";

    /// An empty zone for `domain` (e.g. `cluster.local`), not yet synced: in-zone names get
    /// SERVFAIL until [`Zone::mark_synced`], rather than a wrong NXDOMAIN.
    pub fn new(domain: &str) -> Result<Self, ZoneError> {
        let trimmed = domain.trim_end_matches('.');
        let invalid = || ZoneError::InvalidDomain(domain.to_owned());
        if trimmed.is_empty() {
            return Err(invalid());
        }
        let labels: Vec<Vec<u8>> = trimmed
            .split('.')
            .map(|l| l.to_ascii_lowercase().into_bytes())
            .collect();
        let valid_label = |l: &Vec<u8>| {
            !l.is_empty()
                && l.len() <= 63
                && l.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        };
        if !labels.iter().all(valid_label) {
            return Err(invalid());
        }
        let name = Name::from_labels(labels.iter().map(|l| l.as_slice())).map_err(|_| invalid())?;
        Ok(Self {
            domain: name,
            labels,
            records: Records::default(),
            synced: false,
            serial: 1,
        })
    }

    /// A synced zone built from full lists of the three kinds.
    pub fn from_snapshot(
        domain: &str,
        services: &[Service],
        slices: &[EndpointSlice],
        namespaces: &[Namespace],
    ) -> Result<Self, ZoneError> {
        let mut zone = Self::new(domain)?;
        for ns in namespaces {
            zone.apply(Change::NamespaceApplied(ns.clone()));
        }
        for svc in services {
            zone.apply(Change::ServiceApplied(svc.clone()));
        }
        for slice in slices {
            zone.apply(Change::SliceApplied(slice.clone()));
        }
        zone.serial = 1;
        zone.mark_synced();
        Ok(zone)
    }

    /// The caches behind this zone hold a full list: answer in-zone names from now on.
    pub fn mark_synced(&mut self) {
        self.synced = true;
    }

    /// Whether [`Zone::mark_synced`] was called.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// The zone's domain as a fully qualified name, lowercase.
    pub fn domain(&self) -> &Name {
        &self.domain
    }

    /// The SOA serial: bumped by every change (it only has to move; nothing transfers
    /// this zone).
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// Applies one watch event, touching only the records of that object.
    pub fn apply(&mut self, change: Change) {
        self.serial = self.serial.wrapping_add(1);
        let r = &mut self.records;
        match change {
            Change::NamespaceApplied(ns) => {
                if let Some(name) = ns.metadata.name {
                    r.namespaces.insert(name);
                }
            }
            Change::NamespaceDeleted(ns) => {
                if let Some(name) = ns.metadata.name {
                    r.namespaces.remove(&name);
                }
            }
            Change::ServiceApplied(svc) => {
                let Some(key) = key_of(&svc.metadata) else {
                    return;
                };
                r.remove_service(&key);
                let info = service_info(&svc);
                r.insert_service(key, info);
            }
            Change::ServiceDeleted(svc) => {
                if let Some(key) = key_of(&svc.metadata) {
                    r.remove_service(&key);
                }
            }
            Change::SliceApplied(slice) => {
                let Some(key) = key_of(&slice.metadata) else {
                    return;
                };
                r.remove_slice(&key);
                if let Some(info) = slice_info(&slice) {
                    r.insert_slice(key, info);
                }
            }
            Change::SliceDeleted(slice) => {
                if let Some(key) = key_of(&slice.metadata) {
                    r.remove_slice(&key);
                }
            }
        }
    }

    /// The zone's labels, lowercase, in wire order.
    pub(crate) fn labels(&self) -> &[Vec<u8>] {
        &self.labels
    }

    /// Whether a namespace exists (its object was seen, or it holds a Service).
    pub(crate) fn namespace_exists(&self, ns: &str) -> bool {
        self.records.namespaces.contains(ns) || self.records.services_per_ns.contains_key(ns)
    }

    pub(crate) fn service(&self, ns: &str, name: &str) -> Option<&ServiceInfo> {
        // The map is keyed by owned pairs; one lookup allocation per query is noise next to
        // the syscalls around it.
        self.records.services.get(&(ns.to_owned(), name.to_owned()))
    }

    /// The slices of a Service, in slice-name order.
    pub(crate) fn slices_of(&self, ns: &str, service: &str) -> Vec<&SliceInfo> {
        let Some(names) = self
            .records
            .slices_per_service
            .get(&(ns.to_owned(), service.to_owned()))
        else {
            return Vec::new();
        };
        names
            .iter()
            .filter_map(|n| self.records.slices.get(&(ns.to_owned(), n.clone())))
            .collect()
    }

    /// The ready endpoints of a Service, each (address, label) once.
    pub(crate) fn ready_endpoints(&self, ns: &str, service: &str) -> Vec<&EndpointInfo> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for slice in self.slices_of(ns, service) {
            for ep in &slice.endpoints {
                if seen.insert((ep.ip, ep.label.as_str())) {
                    out.push(ep);
                }
            }
        }
        out
    }

    /// Where an address is known from (cluster IPs and ready endpoint addresses).
    pub(crate) fn ptr_sources(&self, ip: &IpAddr) -> Option<&BTreeSet<PtrSource>> {
        self.records.ptr.get(ip)
    }
}

impl Records {
    fn insert_service(&mut self, key: Key, info: ServiceInfo) {
        if let ServiceKind::ClusterIp(ips) = &info.kind {
            for ip in ips {
                self.ptr.entry(*ip).or_default().insert(PtrSource {
                    namespace: key.0.clone(),
                    service: key.1.clone(),
                    endpoint: None,
                    slice: None,
                });
            }
        }
        *self.services_per_ns.entry(key.0.clone()).or_default() += 1;
        self.services.insert(key, info);
    }

    fn remove_service(&mut self, key: &Key) {
        let Some(old) = self.services.remove(key) else {
            return;
        };
        if let ServiceKind::ClusterIp(ips) = &old.kind {
            let src = PtrSource {
                namespace: key.0.clone(),
                service: key.1.clone(),
                endpoint: None,
                slice: None,
            };
            for ip in ips {
                self.remove_ptr(ip, &src);
            }
        }
        if let Some(n) = self.services_per_ns.get_mut(&key.0) {
            *n -= 1;
            if *n == 0 {
                self.services_per_ns.remove(&key.0);
            }
        }
    }

    fn insert_slice(&mut self, key: Key, info: SliceInfo) {
        for ep in &info.endpoints {
            self.ptr.entry(ep.ip).or_default().insert(PtrSource {
                namespace: key.0.clone(),
                service: info.service.clone(),
                endpoint: Some(ep.label.clone()),
                slice: Some(key.1.clone()),
            });
        }
        self.slices_per_service
            .entry((key.0.clone(), info.service.clone()))
            .or_default()
            .insert(key.1.clone());
        self.slices.insert(key, info);
    }

    fn remove_slice(&mut self, key: &Key) {
        let Some(old) = self.slices.remove(key) else {
            return;
        };
        for ep in &old.endpoints {
            let src = PtrSource {
                namespace: key.0.clone(),
                service: old.service.clone(),
                endpoint: Some(ep.label.clone()),
                slice: Some(key.1.clone()),
            };
            self.remove_ptr(&ep.ip, &src);
        }
        let svc_key = (key.0.clone(), old.service);
        if let Some(names) = self.slices_per_service.get_mut(&svc_key) {
            names.remove(&key.1);
            if names.is_empty() {
                self.slices_per_service.remove(&svc_key);
            }
        }
    }

    fn remove_ptr(&mut self, ip: &IpAddr, src: &PtrSource) {
        if let Some(set) = self.ptr.get_mut(ip) {
            set.remove(src);
            if set.is_empty() {
                self.ptr.remove(ip);
            }
        }
    }
}

fn key_of(meta: &ObjectMeta) -> Option<Key> {
    let name = meta.name.clone()?;
    let ns = meta
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    Some((ns, name))
}

fn named_port(
    name: Option<&String>,
    protocol: Option<&String>,
    port: Option<i32>,
) -> Option<NamedPort> {
    let name = name.filter(|n| !n.is_empty())?;
    let port = u16::try_from(port?).ok()?;
    let protocol = protocol.map_or_else(|| "tcp".to_owned(), |p| p.to_ascii_lowercase());
    Some(NamedPort {
        name: name.clone(),
        protocol,
        port,
    })
}

fn service_info(svc: &Service) -> ServiceInfo {
    let spec = svc.spec.clone().unwrap_or_default();
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| named_port(p.name.as_ref(), p.protocol.as_ref(), Some(p.port)))
        .collect();
    let kind = if spec.type_.as_deref() == Some("ExternalName") {
        let target = spec
            .external_name
            .as_deref()
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
            .filter(|n| !n.is_empty())
            .and_then(|n| Name::from_labels(n.split('.').map(str::as_bytes)).ok());
        ServiceKind::ExternalName(target)
    } else if spec.cluster_ip.as_deref() == Some("None") {
        ServiceKind::Headless
    } else {
        // clusterIPs (dual stack) when set, else the single clusterIP.
        let ips: Vec<IpAddr> = match &spec.cluster_ips {
            Some(list) if !list.is_empty() => list.iter().filter_map(|s| s.parse().ok()).collect(),
            _ => spec
                .cluster_ip
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect(),
        };
        ServiceKind::ClusterIp(ips)
    };
    ServiceInfo { kind, ports }
}

/// The first label of an endpoint's own name when it has no hostname: `10-1-2-3`, or the
/// IPv6 address with `:` replaced by `-`.
pub(crate) fn dashed(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

fn slice_info(slice: &EndpointSlice) -> Option<SliceInfo> {
    let service = slice
        .metadata
        .labels
        .as_ref()?
        .get(SERVICE_NAME_LABEL)?
        .clone();
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
        // FQDN slices are deprecated and name nothing DNS serves.
        return None;
    }
    let mut endpoints = Vec::new();
    for ep in &slice.endpoints {
        let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
        if !ready {
            continue;
        }
        for addr in &ep.addresses {
            let Ok(ip) = addr.parse::<IpAddr>() else {
                continue;
            };
            let label = ep
                .hostname
                .as_deref()
                .filter(|h| !h.is_empty())
                .map_or_else(|| dashed(&ip), str::to_ascii_lowercase);
            endpoints.push(EndpointInfo { ip, label });
        }
    }
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| named_port(p.name.as_ref(), p.protocol.as_ref(), p.port))
        .collect();
    Some(SliceInfo {
        service,
        endpoints,
        ports,
    })
}

//! The cluster DNS loop (CoreDNS's job): every node answers the cluster DNS address itself.
//! The address sits on the node's loopback device (a /32: every kernel has `lo`, not every one
//! has the dummy driver NodeLocal DNSCache uses), and DNS to it is `notrack`ed
//! so it is delivered locally, never DNATed: the A/AAAA race of parallel glibc queries through
//! conntrack (the "5-second timeouts") cannot happen, and the service proxy leaves that
//! Service alone. The zone follows watch-fed caches of Services, EndpointSlices and Namespaces
//! object by object (only what changed is decoded and applied); until they have synced,
//! in-zone names get SERVFAIL, never a wrong NXDOMAIN.
//! Other names go to the node's own resolvers (loopback and link-local ones skipped).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock, mpsc};
use std::time::Duration;

use ipnet::Ipv4Net;
use std::collections::HashMap;

use moat_client::{Api, Reflector};
use moat_dns::{Change, DnsServer, Forwarder, ServerConfig, SharedZone, Zone};
use moat_hostnet::{HostNet, Iproute2};
use moat_nft::{Nft, NftApply};
use serde_json::Value;

use crate::supervisor::{LoopError, Stop};

/// The device that holds the cluster DNS address on every node.
pub const DEV: &str = "lo";
const TABLE: &str = "moat-dns";

pub struct DnsLoop {
    pub api: Arc<dyn Api>,
    pub address: Ipv4Addr,
    pub domain: String,
    pub resolv_conf: std::path::PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum DnsSetupError {
    #[error("putting the cluster DNS address on {DEV}")]
    Link(#[source] moat_hostnet::HostNetError),
    #[error("exempting DNS to the node from conntrack")]
    Nft(#[source] moat_nft::ApplyError),
    #[error("the cluster domain")]
    Zone(#[source] moat_dns::ZoneError),
    #[error("reading the node's resolvers")]
    Forward(#[source] moat_dns::ForwardError),
    #[error("starting the DNS runtime")]
    Runtime(#[source] std::io::Error),
    #[error("serving DNS")]
    Serve(#[source] moat_dns::ServerError),
}

fn failed(e: DnsSetupError) -> LoopError {
    LoopError::Failed(Box::new(e))
}

/// The notrack rules, as one transaction replacing the table.
pub fn notrack_rules(address: Ipv4Addr) -> String {
    format!(
        "table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n  chain pre {{\n    type filter hook prerouting priority raw; policy accept;\n    ip daddr {address} udp dport 53 notrack\n    ip daddr {address} tcp dport 53 notrack\n  }}\n  chain out {{\n    type filter hook output priority raw; policy accept;\n    ip saddr {address} udp sport 53 notrack\n    ip saddr {address} tcp sport 53 notrack\n    ip daddr {address} udp dport 53 notrack\n    ip daddr {address} tcp dport 53 notrack\n  }}\n}}\n"
    )
}

#[derive(Clone, Copy)]
enum Kind {
    Namespace,
    Service,
    Slice,
}

/// The resourceVersion of every object of one kind as last applied to the zone.
#[derive(Default)]
struct Versions(HashMap<String, String>);

#[derive(Default)]
struct Seen {
    namespaces: Versions,
    services: Versions,
    slices: Versions,
    synced: bool,
}

impl Versions {
    /// The zone changes that take it from the objects last seen to `now`: new and changed
    /// objects applied, vanished ones deleted. An object that does not decode is skipped (and
    /// retried when it changes).
    fn changes(&mut self, now: &[Arc<Value>], kind: Kind) -> Vec<Change> {
        let mut out = Vec::new();
        let mut present = HashMap::with_capacity(now.len());
        for v in now {
            let key = moat_client::object_key(v);
            let rv = v["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("")
                .to_string();
            if self.0.get(&key) != Some(&rv) || rv.is_empty() {
                let decoded = match kind {
                    Kind::Namespace => {
                        serde_json::from_value((**v).clone()).map(Change::NamespaceApplied)
                    }
                    Kind::Service => {
                        serde_json::from_value((**v).clone()).map(Change::ServiceApplied)
                    }
                    Kind::Slice => serde_json::from_value((**v).clone()).map(Change::SliceApplied),
                };
                match decoded {
                    Ok(c) => out.push(c),
                    Err(e) => {
                        tracing::debug!(error = %e, key, "an object the DNS zone cannot read");
                        continue;
                    }
                }
            }
            present.insert(key, rv);
        }
        for key in self.0.keys().filter(|k| !present.contains_key(*k)) {
            let (ns, name) = key.split_once('/').unwrap_or(("", key));
            let stub = serde_json::json!({"metadata": {"namespace": ns, "name": name}});
            let gone = match kind {
                Kind::Namespace => serde_json::from_value(stub).map(Change::NamespaceDeleted),
                Kind::Service => serde_json::from_value(stub).map(Change::ServiceDeleted),
                Kind::Slice => serde_json::from_value(stub).map(Change::SliceDeleted),
            };
            if let Ok(c) = gone {
                out.push(c);
            }
        }
        self.0 = present;
        out
    }
}

impl DnsLoop {
    pub fn run(&self, stop: &Stop) -> Result<(), LoopError> {
        let host = Iproute2;
        host.ensure_addr(DEV, Ipv4Net::new(self.address, 32).unwrap_or_default())
            .map_err(|e| failed(DnsSetupError::Link(e)))?;
        Nft::default()
            .apply(&notrack_rules(self.address))
            .map_err(|e| failed(DnsSetupError::Nft(e)))?;
        let zone: SharedZone = Arc::new(RwLock::new(
            Zone::new(&self.domain).map_err(|e| failed(DnsSetupError::Zone(e)))?,
        ));
        let forwarder = Forwarder::from_resolv_conf(&self.resolv_conf, &[IpAddr::V4(self.address)])
            .map_err(|e| failed(DnsSetupError::Forward(e)))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("dns")
            .enable_all()
            .build()
            .map_err(|e| failed(DnsSetupError::Runtime(e)))?;
        let addr = SocketAddr::from((self.address, 53));
        let server = rt
            .block_on(DnsServer::bind(
                addr,
                zone.clone(),
                forwarder,
                ServerConfig::default(),
            ))
            .map_err(|e| failed(DnsSetupError::Serve(e)))?;
        tracing::info!(%addr, domain = %self.domain, "cluster DNS serving");
        let (wake_tx, wake) = mpsc::channel::<()>();
        stop.register(wake_tx.clone());
        let services =
            Reflector::spawn(self.api.clone(), "/api/v1/services", vec![wake_tx.clone()]);
        let slices = Reflector::spawn(
            self.api.clone(),
            "/apis/discovery.k8s.io/v1/endpointslices",
            vec![wake_tx.clone()],
        );
        let namespaces = Reflector::spawn(self.api.clone(), "/api/v1/namespaces", vec![wake_tx]);
        let mut seen = Seen::default();
        while !stop.is_stopped() {
            if services.synced() && slices.synced() && namespaces.synced() {
                // Only the objects whose resourceVersion moved are decoded and applied (the
                // zone's own per-object updates), under one short write lock.
                let mut changes = seen
                    .namespaces
                    .changes(&namespaces.snapshot(), Kind::Namespace);
                changes.extend(seen.services.changes(&services.snapshot(), Kind::Service));
                changes.extend(seen.slices.changes(&slices.snapshot(), Kind::Slice));
                if !changes.is_empty() || !seen.synced {
                    let mut z = zone.write().unwrap_or_else(|p| p.into_inner());
                    for c in changes {
                        z.apply(c);
                    }
                    z.mark_synced();
                    seen.synced = true;
                }
            }
            let _ = wake.recv_timeout(Duration::from_secs(30));
            // A burst of watch events becomes one update.
            std::thread::sleep(Duration::from_millis(20));
            while wake.try_recv().is_ok() {}
        }
        drop(server);
        services.stop();
        slices.stop();
        namespaces.stop();
        rt.shutdown_timeout(Duration::from_secs(2));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Namespace, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use serde_json::json;

    fn svc(ns: &str, name: &str, ip: &str, rv: &str) -> Arc<Value> {
        Arc::new(
            json!({"metadata": {"namespace": ns, "name": name, "resourceVersion": rv},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}),
        )
    }

    fn slice(ns: &str, svc: &str, ips: &[&str], rv: &str) -> Arc<Value> {
        Arc::new(
            json!({"metadata": {"namespace": ns, "name": format!("{svc}-x"), "resourceVersion": rv,
                "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4",
            "endpoints": ips.iter().map(|i| json!({"addresses": [i], "conditions": {"ready": true}})).collect::<Vec<_>>(),
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}),
        )
    }

    fn ns(name: &str, rv: &str) -> Arc<Value> {
        Arc::new(json!({"metadata": {"name": name, "resourceVersion": rv}}))
    }

    fn typed<T: serde::de::DeserializeOwned>(vs: &[Arc<Value>]) -> Vec<T> {
        vs.iter()
            .map(|v| serde_json::from_value((**v).clone()).unwrap())
            .collect()
    }

    #[test]
    fn per_object_updates_follow_the_caches_as_a_rebuild_would() {
        type Objects = Vec<Arc<Value>>;
        let steps: Vec<(Objects, Objects, Objects)> = vec![
            (
                vec![ns("a", "1"), ns("b", "2")],
                vec![
                    svc("a", "web", "10.43.0.5", "3"),
                    svc("b", "db", "None", "4"),
                ],
                vec![slice("b", "db", &["10.42.1.2"], "5")],
            ),
            // A Service changes its address, a slice grows, a namespace goes.
            (
                vec![ns("b", "2")],
                vec![
                    svc("a", "web", "10.43.0.6", "6"),
                    svc("b", "db", "None", "4"),
                ],
                vec![slice("b", "db", &["10.42.1.2", "10.42.2.3"], "7")],
            ),
            // A Service and its slice deleted, another added.
            (
                vec![ns("b", "2"), ns("c", "8")],
                vec![
                    svc("a", "web", "10.43.0.6", "6"),
                    svc("c", "api", "10.43.0.9", "9"),
                ],
                vec![],
            ),
        ];
        let mut zone = Zone::new("cluster.local").unwrap();
        let mut seen = Seen::default();
        for (nss, svcs, slices) in &steps {
            let mut changes = seen.namespaces.changes(nss, Kind::Namespace);
            changes.extend(seen.services.changes(svcs, Kind::Service));
            changes.extend(seen.slices.changes(slices, Kind::Slice));
            for c in changes {
                zone.apply(c);
            }
            let rebuilt = Zone::from_snapshot(
                "cluster.local",
                &typed::<Service>(svcs),
                &typed::<EndpointSlice>(slices),
                &typed::<Namespace>(nss),
            )
            .unwrap();
            assert_eq!(zone, rebuilt);
        }
        // Nothing moved: nothing to apply.
        let (nss, svcs, slices) = steps.last().unwrap();
        assert!(seen.namespaces.changes(nss, Kind::Namespace).is_empty());
        assert!(seen.services.changes(svcs, Kind::Service).is_empty());
        assert!(seen.slices.changes(slices, Kind::Slice).is_empty());
    }
}

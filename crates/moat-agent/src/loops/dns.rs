//! The cluster DNS loop (CoreDNS's job): every node answers the cluster DNS address itself.
//! The address sits on the node's loopback device (a /32: every kernel has `lo`, not every one
//! has the dummy driver NodeLocal DNSCache uses), and DNS to it is `notrack`ed
//! so it is delivered locally, never DNATed: the A/AAAA race of parallel glibc queries through
//! conntrack (the "5-second timeouts") cannot happen, and the service proxy leaves that
//! Service alone. The zone is rebuilt from watch-fed caches of Services, EndpointSlices and
//! Namespaces; until they have synced, in-zone names get SERVFAIL, never a wrong NXDOMAIN.
//! Other names go to the node's own resolvers (loopback and link-local ones skipped).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock, mpsc};
use std::time::Duration;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use moat_client::{Api, Reflector};
use moat_dns::{DnsServer, Forwarder, ServerConfig, SharedZone, Zone};
use moat_hostnet::{HostNet, Iproute2};
use moat_nft::{Nft, NftApply};

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
        while !stop.is_stopped() {
            if services.synced() && slices.synced() && namespaces.synced() {
                let svcs: Vec<Service> = services.items();
                let eps: Vec<EndpointSlice> = slices.items();
                let nss: Vec<Namespace> = namespaces.items();
                match Zone::from_snapshot(&self.domain, &svcs, &eps, &nss) {
                    Ok(z) => *zone.write().unwrap_or_else(|p| p.into_inner()) = z,
                    Err(e) => tracing::warn!(error = %e, "building the DNS zone"),
                }
            }
            let _ = wake.recv_timeout(Duration::from_secs(30));
            // A burst of watch events becomes one rebuild.
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

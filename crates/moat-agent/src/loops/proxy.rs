//! The service-proxy loop (kube-proxy's job, in its nftables mode): Services and
//! EndpointSlices from watch-fed caches go to `moat-proxy`, which keeps the committed ruleset
//! in memory and applies each change as one atomic `nft -f` (element-level diffs after the
//! first sync); UDP conntrack entries to endpoints that stopped serving are flushed so DNS
//! clients are not stuck on a dead backend. The cluster DNS Service is left out: every node
//! answers its address itself (the DNS loop), never through DNAT.

use std::net::Ipv4Addr;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use moat_client::{Api, Reflector};
use moat_nft::Nft;
use moat_proxy::{Conntrack, ConntrackCli, NodeFacts, Proxy, Snapshot};

use crate::supervisor::{LoopError, Stop};

pub struct ProxyLoop {
    pub api: Arc<dyn Api>,
    pub node_name: String,
    pub node_ips: Vec<Ipv4Addr>,
    pub cluster_cidr: String,
    /// The cluster DNS address, answered on the node, not proxied.
    pub cluster_dns: Option<Ipv4Addr>,
}

#[derive(Debug, thiserror::Error)]
#[error("the cluster CIDR is not an IPv4 CIDR")]
pub struct BadClusterCidr(#[source] moat_api::cidr::CidrError);

/// Bridged pod-to-pod packets must pass the IP hooks, or the reply of a Service connection
/// between two pods on one bridge skips conntrack and never gets un-NATed (kube-proxy needs
/// the same).
fn bridge_netfilter() {
    let key = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    if !std::path::Path::new(key).exists() {
        let _ = std::process::Command::new("modprobe")
            .arg("br_netfilter")
            .status();
    }
    if let Err(e) = std::fs::write(key, "1") {
        tracing::warn!(error = %e, "enabling br_netfilter: Service traffic between pods on one node may fail");
    }
}

impl ProxyLoop {
    pub fn run(&self, stop: &Stop) -> Result<(), LoopError> {
        let cidr = moat_api::cidr::parse_network(&self.cluster_cidr)
            .map_err(|e| LoopError::Failed(Box::new(BadClusterCidr(e))))?;
        bridge_netfilter();
        let node = NodeFacts {
            name: self.node_name.clone(),
            ips: self.node_ips.clone(),
            cluster_cidr: cidr,
        };
        let (wake_tx, wake) = mpsc::channel::<()>();
        stop.register(wake_tx.clone());
        let services =
            Reflector::spawn(self.api.clone(), "/api/v1/services", vec![wake_tx.clone()]);
        let slices = Reflector::spawn(
            self.api.clone(),
            "/apis/discovery.k8s.io/v1/endpointslices",
            vec![wake_tx],
        );
        let mut proxy = Proxy::new(Nft::default());
        let conntrack = ConntrackCli { netns: None };
        let mut dirty = true;
        while !stop.is_stopped() {
            if dirty && services.synced() && slices.synced() {
                let svcs: Vec<Service> = services
                    .items::<Service>()
                    .into_iter()
                    .filter(|s| {
                        let ip = s.spec.as_ref().and_then(|p| p.cluster_ip.as_deref());
                        self.cluster_dns
                            .is_none_or(|d| ip != Some(d.to_string().as_str()))
                    })
                    .collect();
                let eps: Vec<EndpointSlice> = slices.items();
                let snap = Snapshot {
                    services: &svcs,
                    slices: &eps,
                    node: &node,
                };
                match proxy.sync(&snap) {
                    Ok(r) => {
                        if r.script_bytes > 0 {
                            tracing::debug!(
                                full = r.full,
                                bytes = r.script_bytes,
                                chains = r.chains,
                                "service proxy synced"
                            );
                        }
                        if !r.stale_udp.is_empty()
                            && let Err(e) = conntrack.delete_udp(&r.stale_udp)
                        {
                            tracing::warn!(error = %e, "flushing UDP conntrack entries of removed endpoints");
                        }
                        dirty = false;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "service proxy: the kernel refused the ruleset; the previous one stays in force, retrying");
                    }
                }
            }
            let _ = wake.recv_timeout(if dirty {
                Duration::from_millis(500)
            } else {
                Duration::from_secs(30)
            });
            while wake.try_recv().is_ok() {}
            dirty = true;
        }
        services.stop();
        slices.stop();
        Ok(())
    }
}

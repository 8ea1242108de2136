//! The NetworkPolicy loop: every node runs the policy engine (`moat-netpol`) for its own pods
//! (ingress for local destinations, egress for local sources) with peers from the whole
//! cluster, fed by watch-fed caches of Pods, Namespaces and NetworkPolicies. Each change is
//! one atomic nft transaction (a diff after the first); an invalid policy changes nothing and
//! is reported. The node's own addresses (its InternalIP and its pod-network addresses) are
//! never restricted, so probes keep working under a default deny.

use std::net::Ipv4Addr;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use moat_client::{Api, Reflector};
use moat_netpol::{Engine, Options, SyncError};
use moat_nft::Nft;
use serde::de::DeserializeOwned;

use crate::supervisor::{LoopError, Stop};

pub struct NetpolLoop {
    pub api: Arc<dyn Api>,
    pub node_name: String,
    /// The node's own addresses: InternalIP, the pod bridge's gateway, the vxlan device's.
    pub node_addrs: Vec<Ipv4Addr>,
}

fn items<T: DeserializeOwned>(r: &Reflector) -> Vec<T> {
    r.snapshot()
        .iter()
        .filter_map(|v| serde_json::from_value::<T>((**v).clone()).ok())
        .collect()
}

impl NetpolLoop {
    pub fn run(&self, stop: &Stop) -> Result<(), LoopError> {
        let (wake_tx, wake) = mpsc::channel::<()>();
        stop.register(wake_tx.clone());
        let pods = Reflector::spawn(self.api.clone(), "/api/v1/pods", vec![wake_tx.clone()]);
        let namespaces = Reflector::spawn(
            self.api.clone(),
            "/api/v1/namespaces",
            vec![wake_tx.clone()],
        );
        let policies = Reflector::spawn(
            self.api.clone(),
            "/apis/networking.k8s.io/v1/networkpolicies",
            vec![wake_tx],
        );
        let opts = Options {
            legacy_namespace_isolation: false,
            node_name: Some(self.node_name.clone()),
            node_addrs: self.node_addrs.clone(),
        };
        let mut engine = Engine::new(Nft::default());
        let mut last_invalid = String::new();
        while !stop.is_stopped() {
            if pods.synced() && namespaces.synced() && policies.synced() {
                let nss: Vec<Namespace> = items(&namespaces);
                let ps: Vec<Pod> = items(&pods);
                let pols: Vec<NetworkPolicy> = items(&policies);
                match engine.sync_objects(&nss, &ps, &pols, &opts) {
                    Ok(s) => {
                        if s.script_bytes > 0 {
                            tracing::debug!(
                                full = s.full,
                                bytes = s.script_bytes,
                                "network policy synced"
                            );
                        }
                        last_invalid.clear();
                    }
                    Err(e @ SyncError::Invalid(_)) => {
                        let text = e.to_string();
                        if text != last_invalid {
                            tracing::warn!(errors = %text, "a NetworkPolicy is invalid; the rules in force are unchanged");
                            last_invalid = text;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "network policy: the kernel refused the ruleset; retrying with a full one");
                        engine.force_full();
                    }
                }
            }
            let _ = wake.recv_timeout(Duration::from_secs(30));
            while wake.try_recv().is_ok() {}
        }
        pods.stop();
        namespaces.stop();
        policies.stop();
        Ok(())
    }
}

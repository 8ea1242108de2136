//! NetworkPolicy on the node's pods: every node runs the policy engine (`moat-netpol`) for its
//! own pods (ingress for local destinations, egress for local sources) with peers from the
//! whole cluster, fed by watch-fed caches of Pods, Namespaces and NetworkPolicies. Each change
//! is one atomic nft transaction (a diff after the first); an invalid policy changes nothing
//! and is reported. The node's own addresses (its InternalIP and its pod-network addresses)
//! are never restricted, so probes keep working under a default deny.
//!
//! First-packet isolation: the pod lifecycle calls [`NetpolHooks::sandbox_ready`] once a
//! sandbox has its IP and before any container starts; the hook adds the pod, with that IP,
//! to the engine and applies the ruleset before it returns, so a selected pod never sends or
//! receives a packet its policies deny, even before the API shows its IP. A torn-down pod
//! leaves the engine at once, so a reused IP never inherits the old pod's rules.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod, PodIP, PodStatus};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use moat_client::{Api, Reflector};
use moat_netpol::{Engine, Options, SyncError};
use moat_nft::Nft;

use crate::hooks::{HookError, PodNetHooks};
use crate::supervisor::{LoopError, Stop};

/// The engine and its inputs, shared by the loop and the lifecycle hook.
pub struct Netpol {
    engine: Mutex<Engine<Nft>>,
    opts: Options,
    pods: Arc<Reflector>,
    namespaces: Arc<Reflector>,
    policies: Arc<Reflector>,
    wake: Mutex<mpsc::Receiver<()>>,
    wake_tx: Mutex<mpsc::Sender<()>>,
    /// Pods admitted by the hook whose address the API does not show yet, by uid.
    pending: Mutex<BTreeMap<String, Pod>>,
    last_invalid: Mutex<String>,
}

fn uid(p: &Pod) -> &str {
    p.metadata.uid.as_deref().unwrap_or("")
}

fn has_ip(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .is_some_and(|i| !i.is_empty())
}

impl Netpol {
    /// Starts the caches; the engine programs nothing until they have synced.
    pub fn new(api: Arc<dyn Api>, node_name: &str, node_addrs: Vec<Ipv4Addr>) -> Arc<Netpol> {
        let (tx, rx) = mpsc::channel::<()>();
        Arc::new(Netpol {
            engine: Mutex::new(Engine::new(Nft::default())),
            opts: Options {
                legacy_namespace_isolation: false,
                node_name: Some(node_name.to_string()),
                node_addrs,
            },
            pods: Reflector::spawn(api.clone(), "/api/v1/pods", vec![tx.clone()]),
            namespaces: Reflector::spawn(api.clone(), "/api/v1/namespaces", vec![tx.clone()]),
            policies: Reflector::spawn(
                api,
                "/apis/networking.k8s.io/v1/networkpolicies",
                vec![tx.clone()],
            ),
            wake: Mutex::new(rx),
            wake_tx: Mutex::new(tx),
            pending: Mutex::new(BTreeMap::new()),
            last_invalid: Mutex::new(String::new()),
        })
    }

    fn synced(&self) -> bool {
        self.pods.synced() && self.namespaces.synced() && self.policies.synced()
    }

    /// Compiles and applies the current state: the caches, with the pods the hook admitted
    /// standing in for their cached copies until the API shows their address.
    fn sync(&self) -> Result<(), SyncError> {
        let mut pods: Vec<Pod> = self.pods.items();
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.retain(|u, _| !pods.iter().any(|p| uid(p) == u && has_ip(p)));
            for (u, p) in pending.iter() {
                pods.retain(|c| uid(c) != u);
                pods.push(p.clone());
            }
        }
        let nss: Vec<Namespace> = self.namespaces.items();
        let pols: Vec<NetworkPolicy> = self.policies.items();
        let mut engine = self.engine.lock().unwrap_or_else(|p| p.into_inner());
        match engine.sync_objects(&nss, &pods, &pols, &self.opts) {
            Ok(s) => {
                if s.script_bytes > 0 {
                    tracing::debug!(
                        full = s.full,
                        bytes = s.script_bytes,
                        "network policy synced"
                    );
                }
                self.last_invalid
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
                Ok(())
            }
            Err(e @ SyncError::Invalid(_)) => {
                let text = e.to_string();
                let mut last = self.last_invalid.lock().unwrap_or_else(|p| p.into_inner());
                if *last != text {
                    tracing::warn!(errors = %text, "a NetworkPolicy is invalid; the rules in force are unchanged");
                    *last = text;
                }
                Err(e)
            }
            Err(e) => {
                engine.force_full();
                Err(e)
            }
        }
    }
}

/// The lifecycle's side: a new pod is programmed before its first container starts.
pub struct NetpolHooks(pub Arc<Netpol>);

/// How long a new pod waits for the policy caches' first list.
const SYNC_WAIT: Duration = Duration::from_secs(30);

impl PodNetHooks for NetpolHooks {
    fn sandbox_ready(&self, pod: &Pod, ip: Option<&str>) -> Result<(), HookError> {
        let refuse = |message: String| HookError {
            component: "network policy",
            message,
        };
        let start = Instant::now();
        while !self.0.synced() {
            if start.elapsed() > SYNC_WAIT {
                return Err(refuse(
                    "the Pod/Namespace/NetworkPolicy caches have not synced".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(ip) = ip.filter(|_| {
            !pod.spec
                .as_ref()
                .and_then(|s| s.host_network)
                .unwrap_or(false)
        }) {
            let mut p = pod.clone();
            let st = p.status.get_or_insert_with(PodStatus::default);
            st.pod_ip = Some(ip.to_string());
            st.pod_ips = Some(vec![PodIP { ip: ip.to_string() }]);
            self.0
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(uid(pod).to_string(), p);
        }
        match self.0.sync() {
            Ok(()) => Ok(()),
            // An invalid policy elsewhere leaves the rules in force, which were computed
            // without this pod: starting it now could let its first packets through.
            Err(e) => Err(refuse(e.to_string())),
        }
    }

    fn sandbox_gone(&self, uid: &str, _ip: Option<&str>) {
        self.0
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
        if let Err(e) = self.0.sync() {
            tracing::warn!(error = %e, uid, "network policy after a pod's teardown");
        }
    }
}

/// The loop: re-syncs on every cache change (and every 30 s, repairing drift).
pub struct NetpolLoop {
    pub netpol: Arc<Netpol>,
}

impl NetpolLoop {
    pub fn run(&self, stop: &Stop) -> Result<(), LoopError> {
        stop.register(
            self.netpol
                .wake_tx
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        );
        let wake = self.netpol.wake.lock().unwrap_or_else(|p| p.into_inner());
        while !stop.is_stopped() {
            if self.netpol.synced()
                && let Err(e) = self.netpol.sync()
                && !matches!(e, SyncError::Invalid(_))
            {
                tracing::warn!(error = %e, "network policy: the kernel refused the ruleset; retrying with a full one");
            }
            let _ = wake.recv_timeout(if self.netpol.synced() {
                Duration::from_secs(30)
            } else {
                Duration::from_millis(200)
            });
            while wake.try_recv().is_ok() {}
        }
        Ok(())
    }
}

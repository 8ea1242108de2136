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
use moat_client::{Api, EventRecorder, ObjectRef, Reflector};
use moat_netpol::{Engine, Options, SyncError};
use moat_nft::Nft;

use crate::hooks::{HookError, PodNetHooks};
use crate::supervisor::{LoopError, Stop};

/// The ConfigMap in `kube-system` with the server's NetworkPolicy settings (written by
/// `moat server` at every start from its flags).
const SETTINGS: &str = "moat-network-policy";

/// The engine and its inputs, shared by the loop and the lifecycle hook.
pub struct Netpol {
    engine: Mutex<Engine<Nft>>,
    opts: Options,
    pods: Arc<Reflector>,
    namespaces: Arc<Reflector>,
    policies: Arc<Reflector>,
    /// The server's settings (`kube-system/moat-network-policy`): the same on every node.
    settings: Arc<Reflector>,
    wake: Mutex<mpsc::Receiver<()>>,
    wake_tx: Mutex<mpsc::Sender<()>>,
    /// Pods admitted by the hook whose address the API does not show yet, by uid.
    pending: Mutex<BTreeMap<String, Pod>>,
    last_invalid: Mutex<String>,
    events: EventRecorder,
    /// The highest NetworkPolicy resourceVersion the ruleset in force was compiled from.
    applied: std::sync::atomic::AtomicU64,
    api: Arc<dyn Api>,
    node_name: String,
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
    pub fn new(
        api: Arc<dyn Api>,
        node_name: &str,
        node_addrs: Vec<Ipv4Addr>,
        events: EventRecorder,
    ) -> Arc<Netpol> {
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
                api.clone(),
                "/apis/networking.k8s.io/v1/networkpolicies",
                vec![tx.clone()],
            ),
            settings: Reflector::spawn(
                api.clone(),
                format!(
                    "/api/v1/namespaces/kube-system/configmaps?fieldSelector=metadata.name%3D{SETTINGS}"
                ),
                vec![tx.clone()],
            ),
            wake: Mutex::new(rx),
            wake_tx: Mutex::new(tx),
            pending: Mutex::new(BTreeMap::new()),
            last_invalid: Mutex::new(String::new()),
            events,
            applied: std::sync::atomic::AtomicU64::new(0),
            node_name: node_name.to_string(),
            api,
        })
    }

    fn synced(&self) -> bool {
        self.pods.synced()
            && self.namespaces.synced()
            && self.policies.synced()
            && self.settings.synced()
    }

    /// The options for this sync: the server's published settings over the node's own.
    fn options(&self) -> Options {
        let legacy = self
            .settings
            .get(&format!("kube-system/{SETTINGS}"))
            .is_some_and(|cm| cm["data"]["legacyNamespaceIsolation"] == "true");
        Options {
            legacy_namespace_isolation: legacy,
            ..self.opts.clone()
        }
    }

    /// Compiles and applies the current state: the caches, with the pods the hook admitted
    /// standing in for their cached copies until the API shows their address.
    fn sync(&self) -> Result<(), SyncError> {
        // The engine lock is taken before the inputs are read: a sync that read its inputs
        // first could apply them after a newer sync (the hook's, with a new pod) and so
        // take the new pod's isolation away while its containers start
        // (`first_packet_of_50_new_pods` found this).
        let mut engine = self.engine.lock().unwrap_or_else(|p| p.into_inner());
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
        // Only what changed since the last sync is recompiled (unchanged objects are skipped
        // by uid and resourceVersion), and the transaction touches only its elements.
        match engine.sync_objects_incremental(&nss, &pods, &pols, &self.options()) {
            Ok(s) => {
                // The watch delivers changes in revision order, so every policy at or below
                // the highest revision compiled in is in force now.
                let mark = pols
                    .iter()
                    .filter_map(|p| p.metadata.resource_version.as_deref()?.parse::<u64>().ok())
                    .max()
                    .unwrap_or(0);
                self.applied
                    .fetch_max(mark, std::sync::atomic::Ordering::AcqRel);
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
                    if let SyncError::Invalid(problems) = &e {
                        self.report_invalid(problems);
                    }
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

impl Netpol {
    /// One Warning event per invalid object (policy or pod), naming the field, each time the
    /// set of problems changes, so `kubectl get events` says why a policy is not enforced.
    fn report_invalid(&self, problems: &[moat_netpol::InvalidInput]) {
        for p in problems {
            let Some((kind, key)) = p.object.split_once(' ') else {
                continue;
            };
            let (cache, kind, api_version) = match kind {
                "networkpolicy" => (&self.policies, "NetworkPolicy", "networking.k8s.io/v1"),
                "pod" => (&self.pods, "Pod", "v1"),
                _ => continue,
            };
            let Some(obj) = cache.get(key) else { continue };
            let mut r = ObjectRef::of(&obj);
            r.kind = kind.to_string();
            r.api_version = api_version.to_string();
            self.events.record(
                &r,
                "Warning",
                "InvalidNetworkPolicy",
                &format!(
                    "{}: {}; this node keeps enforcing the rules it had before the change",
                    p.field, p.message
                ),
            );
        }
    }
}

impl Netpol {
    /// Puts the applied mark on the Node when it moved (and again every 30 s, so a
    /// re-registered Node gets it back); the status loop in the controllers reads it.
    fn publish(&self, last: Option<(u64, Instant)>) -> Option<(u64, Instant)> {
        let mark = self.applied.load(std::sync::atomic::Ordering::Acquire);
        if mark == 0
            || last.is_some_and(|(m, at)| m == mark && at.elapsed() < Duration::from_secs(30))
        {
            return last;
        }
        let patch = serde_json::json!({"metadata": {"annotations": {
            moat_api::annotations::NETPOL_APPLIED_REVISION: mark.to_string()}}});
        match self
            .api
            .merge_patch(&format!("/api/v1/nodes/{}", self.node_name), &patch)
        {
            Ok(_) => Some((mark, Instant::now())),
            Err(e) => {
                tracing::debug!(error = %e, "publishing the applied NetworkPolicy revision");
                last
            }
        }
    }
}

/// How often the loop compares its incremental ruleset with a full compile.
const SELF_CHECK: Duration = Duration::from_secs(300);

impl Netpol {
    fn self_check(&self) {
        let mut engine = self.engine.lock().unwrap_or_else(|p| p.into_inner());
        match engine.self_check() {
            Ok(None) => tracing::debug!("network policy self-check: no drift"),
            Ok(Some(drift)) => tracing::error!(
                ?drift,
                "network policy self-check found the incremental ruleset drifted from a full compile; repaired"
            ),
            Err(e) => tracing::warn!(error = %e, "network policy self-check"),
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
        let mut published: Option<(u64, Instant)> = None;
        let mut checked = Instant::now();
        while !stop.is_stopped() {
            // Now and then, a full compile checks the incremental state (about 1 s at 5,000
            // pods and 1,000 policies); a drift is a bug: logged loudly, and repaired.
            if self.netpol.synced() && checked.elapsed() > SELF_CHECK {
                checked = Instant::now();
                self.netpol.self_check();
            }
            if self.netpol.synced()
                && let Err(e) = self.netpol.sync()
                && !matches!(e, SyncError::Invalid(_))
            {
                tracing::warn!(error = %e, "network policy: the kernel refused the ruleset; retrying with a full one");
            }
            published = self.netpol.publish(published);
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

#[cfg(test)]
mod tests {
    use super::*;
    use moat_client::fake::FakeApi;
    use serde_json::json;

    fn synced(np: &Netpol) {
        let start = Instant::now();
        while !np.synced() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "caches never synced"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn the_servers_published_setting_turns_legacy_isolation_on() {
        let api = Arc::new(FakeApi::default());
        let cm = |v: &str| {
            json!({"metadata": {"name": SETTINGS, "namespace": "kube-system"},
                   "data": {"legacyNamespaceIsolation": v}})
        };
        api.insert(
            &format!("/api/v1/namespaces/kube-system/configmaps/{SETTINGS}"),
            cm("true"),
        );
        api.insert(
            "/api/v1/namespaces/kube-system/configmaps/other",
            json!({"metadata": {"name": "other", "namespace": "kube-system"},
                   "data": {"legacyNamespaceIsolation": "false"}}),
        );
        let events = EventRecorder::spawn(api.clone(), "moat-netpol", Some("n1"));
        let np = Netpol::new(api.clone(), "n1", vec![], events);
        synced(&np);
        assert!(np.options().legacy_namespace_isolation);
        assert_eq!(np.options().node_name.as_deref(), Some("n1"));
        api.insert(
            &format!("/api/v1/namespaces/kube-system/configmaps/{SETTINGS}"),
            cm("false"),
        );
        let start = Instant::now();
        while np.options().legacy_namespace_isolation {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "setting not followed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn an_invalid_policy_is_a_warning_event_on_it_once_and_changes_nothing() {
        let api = Arc::new(FakeApi::default());
        api.insert(
            "/api/v1/namespaces/a",
            json!({"metadata": {"name": "a", "uid": "ns-a"}}),
        );
        // Stored behind the API server's validation (an old snapshot, another writer).
        api.insert(
            "/apis/networking.k8s.io/v1/namespaces/a/networkpolicies/bad",
            json!({"metadata": {"name": "bad", "namespace": "a", "uid": "u-bad"},
                   "spec": {"podSelector": {},
                            "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/40"}}]}]}}),
        );
        let events = EventRecorder::spawn(api.clone(), "moat-netpol", Some("n1"));
        let np = Netpol::new(api.clone(), "n1", vec![], events);
        synced(&np);
        assert!(matches!(np.sync(), Err(SyncError::Invalid(_))));
        assert!(matches!(np.sync(), Err(SyncError::Invalid(_))));
        let start = Instant::now();
        let evs = loop {
            let evs = api.objects_under("/api/v1/namespaces/a/events");
            if !evs.is_empty() || start.elapsed() > Duration::from_secs(10) {
                break evs;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        std::thread::sleep(Duration::from_millis(200));
        let evs_later = api.objects_under("/api/v1/namespaces/a/events");
        assert_eq!(evs.len(), 1, "{evs:?}");
        assert_eq!(evs_later.len(), 1, "the same problem reported twice");
        let e = &evs[0];
        assert_eq!(e["type"], "Warning");
        assert_eq!(e["reason"], "InvalidNetworkPolicy");
        assert_eq!(e["involvedObject"]["kind"], "NetworkPolicy");
        assert_eq!(e["involvedObject"]["name"], "bad");
        assert_eq!(e["involvedObject"]["uid"], "u-bad");
        let msg = e["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains("spec.ingress[0].from[0].ipBlock.cidr"),
            "{msg}"
        );
    }
}

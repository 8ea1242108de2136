//! The control loops of `moat server` (kube-scheduler and kube-controller-manager's jobs):
//! API clients that list, watch and write through the Kubernetes API only — never the
//! store — so they could run in another process or against another API server.
//!
//! Each loop is level-triggered: it wakes on any watch event of the kinds it reads (or once
//! a second), lists current state, asks the sans-IO core for a plan (`moat-scheduler`,
//! `moat-controllers`) and applies it. A failed write is retried on the next pass.

mod cache;
mod daemonsets;
mod endpoints;
mod gc;
mod jobs;
mod netpolstatus;
mod nodes;
mod rootca;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{Value, json};

pub use moat_client::{Client, ClientError, ServerTrust};
use moat_client::{EventRecorder, ObjectRef};

pub use moat_controllers::nodes::Config as NodeLifecycleConfig;

/// Starts the scheduler and controller loops on background threads, with upstream's
/// default timings.
pub fn spawn(kubeconfig: &Path) -> Result<(), ClientError> {
    spawn_with(kubeconfig, NodeLifecycleConfig::default())
}

/// [`spawn`] with the node lifecycle timings and cluster CIDR given.
pub fn spawn_with(kubeconfig: &Path, nodes_cfg: NodeLifecycleConfig) -> Result<(), ClientError> {
    let client = Client::from_kubeconfig(kubeconfig)?;
    let events = EventRecorder::spawn(Arc::new(client.clone()), "moat-controller-manager", None);
    let c = Api { client, events };
    let (sched_tx, sched_rx) = mpsc::channel();
    let (ctrl_tx, ctrl_rx) = mpsc::channel();
    let (gc_tx, gc_rx) = mpsc::channel();
    let (ep_tx, ep_rx) = mpsc::channel();
    let (job_tx, job_rx) = mpsc::channel();
    let (ds_tx, ds_rx) = mpsc::channel();
    // The scheduler reads pods and nodes from watch-fed caches (it runs often, on large
    // collections); the caches' events wake the other loops too.
    let pod_cache = cache::spawn(
        c.clone(),
        "/api/v1/pods",
        vec![
            sched_tx.clone(),
            ctrl_tx.clone(),
            gc_tx.clone(),
            ep_tx.clone(),
            job_tx.clone(),
            ds_tx.clone(),
        ],
    );
    let node_cache = cache::spawn(
        c.clone(),
        "/api/v1/nodes",
        vec![
            sched_tx.clone(),
            ctrl_tx.clone(),
            gc_tx.clone(),
            ds_tx.clone(),
        ],
    );
    for path in ["/apis/apps/v1/deployments", "/apis/apps/v1/replicasets"] {
        spawn_watch(c.clone(), path, vec![ctrl_tx.clone(), gc_tx.clone()]);
    }
    // Listing whole collections every pass (10,000 pods twice a second) took more of the
    // server's CPU than the writes did: the garbage collector reads the scheduler's
    // watch-fed caches too.
    let caches = cache::Caches {
        pods: pod_cache,
        nodes: node_cache,
    };
    spawn_watch(
        c.clone(),
        "/api/v1/services",
        vec![gc_tx.clone(), ep_tx.clone()],
    );
    let (ca_tx, ca_rx) = mpsc::channel();
    spawn_watch(
        c.clone(),
        "/api/v1/namespaces",
        vec![gc_tx.clone(), ca_tx.clone()],
    );
    spawn_watch(c.clone(), "/api/v1/configmaps", vec![gc_tx.clone()]);
    spawn_watch(c.clone(), rootca::WATCH_PATH, vec![ca_tx]);
    for path in ["/apis/batch/v1/jobs", "/apis/batch/v1/cronjobs"] {
        spawn_watch(c.clone(), path, vec![job_tx.clone(), gc_tx.clone()]);
    }
    let jc = c.clone();
    std::thread::Builder::new()
        .name("job-controller".into())
        .spawn(move || {
            let _keep = job_tx;
            jobs::jobs_loop(jc, job_rx, moat_controllers::job::Config::default())
        })
        .map_err(io_err)?;
    spawn_watch(
        c.clone(),
        "/apis/apps/v1/daemonsets",
        vec![ds_tx.clone(), gc_tx.clone()],
    );
    let dc = c.clone();
    std::thread::Builder::new()
        .name("daemonset-controller".into())
        .spawn(move || {
            let _keep = ds_tx;
            daemonsets::daemonsets_loop(dc, ds_rx)
        })
        .map_err(io_err)?;
    // NetworkPolicy status: the policies and the nodes' published marks.
    let (np_tx, np_rx) = mpsc::channel();
    let np_cache = cache::spawn(
        c.clone(),
        "/apis/networking.k8s.io/v1/networkpolicies",
        vec![np_tx.clone()],
    );
    let (npc, np_nodes) = (
        c.clone(),
        cache::spawn(c.clone(), "/api/v1/nodes", vec![np_tx]),
    );
    std::thread::Builder::new()
        .name("netpol-status".into())
        .spawn(move || netpolstatus::netpol_status_loop(npc, np_rx, np_cache, np_nodes))
        .map_err(io_err)?;
    let (cac, kc) = (c.clone(), kubeconfig.to_path_buf());
    std::thread::Builder::new()
        .name("root-ca-publisher".into())
        .spawn(move || rootca::rootca_loop(cac, ca_rx, kc))
        .map_err(io_err)?;
    let (node_tx, node_rx) = mpsc::channel::<()>();
    // The node loop runs on its one-second resync (heartbeats age without any event).
    let (nc, ncache) = (c.clone(), caches.nodes.clone());
    std::thread::Builder::new()
        .name("node-lifecycle".into())
        .spawn(move || {
            let _keep = node_tx;
            nodes::nodes_loop(nc, node_rx, nodes_cfg, ncache)
        })
        .map_err(io_err)?;
    let epc = c.clone();
    std::thread::Builder::new()
        .name("endpoints".into())
        .spawn(move || endpoints::endpoints_loop(epc, ep_rx))
        .map_err(io_err)?;
    let (gcc, gc_caches) = (c.clone(), caches.clone());
    std::thread::Builder::new()
        .name("garbage-collector".into())
        .spawn(move || gc::gc_loop(gcc, gc_rx, gc_caches))
        .map_err(io_err)?;
    let sc = c.clone();
    std::thread::Builder::new()
        .name("scheduler".into())
        .spawn({
            let (pods, nodes) = (caches.pods.clone(), caches.nodes.clone());
            move || scheduler_loop(sc, sched_rx, pods, nodes)
        })
        .map_err(io_err)?;
    std::thread::Builder::new()
        .name("controllers".into())
        .spawn(move || controller_loop(c, ctrl_rx))
        .map_err(io_err)?;
    Ok(())
}

fn io_err(source: std::io::Error) -> ClientError {
    ClientError::Io {
        method: "spawn",
        path: String::new(),
        source,
    }
}

/// Turns watch events into wake-ups; re-watches forever.
fn spawn_watch(c: Api, path: &'static str, wake: Vec<mpsc::Sender<()>>) {
    let _ = std::thread::Builder::new()
        .name(format!("watch{path}"))
        .spawn(move || {
            loop {
                let r = c.watch(path, "0", |_| {
                    for w in &wake {
                        let _ = w.send(());
                    }
                });
                if let Err(e) = r {
                    tracing::debug!(error = %e, path, "watch ended");
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
}

/// Waits for a wake-up (or the resync period) and drains queued ones: one pass handles all.
fn wait(rx: &mpsc::Receiver<()>) -> bool {
    match rx.recv_timeout(Duration::from_secs(1)) {
        Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {
            while rx.try_recv().is_ok() {}
            true
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => false,
    }
}

/// Paces a loop: at most one pass per `gap`, wake-ups arriving meanwhile folded into the
/// next pass. Each pass lists whole collections, so under a stream of events (thousands of
/// pods being created) unpaced loops would do nothing but re-list, starving the server.
pub(crate) struct Pace {
    gap: Duration,
    last: std::time::Instant,
}

impl Pace {
    pub(crate) fn new(gap: Duration) -> Pace {
        Pace {
            gap,
            last: std::time::Instant::now() - gap,
        }
    }

    pub(crate) fn wait(&mut self, rx: &mpsc::Receiver<()>) -> bool {
        if !wait(rx) {
            return false;
        }
        let since = self.last.elapsed();
        if since < self.gap {
            std::thread::sleep(self.gap - since);
            while rx.try_recv().is_ok() {}
        }
        self.last = std::time::Instant::now();
        true
    }
}

/// Typed decodings of cached objects, kept per object key and redone only when its
/// resourceVersion changes.
struct Memo<T> {
    by_key: HashMap<String, (String, Arc<T>)>,
}

impl<T> Default for Memo<T> {
    fn default() -> Self {
        Memo {
            by_key: HashMap::new(),
        }
    }
}

impl<T: serde::de::DeserializeOwned> Memo<T> {
    /// The objects of `items` that decode as `T`, with their JSON; forgets objects gone.
    fn typed(&mut self, items: &[Arc<Value>]) -> Vec<(Arc<Value>, Arc<T>)> {
        let mut next = HashMap::with_capacity(items.len());
        let mut out = Vec::with_capacity(items.len());
        for v in items {
            let m = &v["metadata"];
            let key = format!(
                "{}/{}",
                m["namespace"].as_str().unwrap_or(""),
                m["name"].as_str().unwrap_or("")
            );
            let rv = m["resourceVersion"].as_str().unwrap_or("").to_string();
            let t = match self.by_key.remove(&key) {
                Some((old_rv, t)) if old_rv == rv && !rv.is_empty() => t,
                _ => match T::deserialize(&**v) {
                    Ok(t) => Arc::new(t),
                    Err(_) => continue,
                },
            };
            out.push((v.clone(), t.clone()));
            next.insert(key, (rv, t));
        }
        self.by_key = next;
        out
    }
}

fn typed<T: serde::de::DeserializeOwned>(v: &[Value]) -> Vec<T> {
    v.iter()
        .filter_map(|x| serde_json::from_value(x.clone()).ok())
        .collect()
}

fn now() -> String {
    moat_client::now_rfc3339()
}

/// A loop's API client with the manager's event recorder (one per manager, no global).
#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) client: Client,
    events: EventRecorder,
}

impl std::ops::Deref for Api {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

/// Creates and deletes an owner's pods as a plan says, with the events the upstream
/// controllers record: the first failed create stops the creates (the next pass retries),
/// a failed delete is an error.
fn create_and_delete_pods(
    c: &Api,
    ns: &str,
    owner: &Value,
    create: &[Pod],
    delete: &[String],
    component: &str,
) -> Result<(), moat_client::ClientError> {
    let pods_path = format!("/api/v1/namespaces/{ns}/pods");
    for p in create {
        let mut v = serde_json::to_value(p).unwrap_or_default();
        v["apiVersion"] = json!("v1");
        v["kind"] = json!("Pod");
        match c.create(&pods_path, &v) {
            Ok(created) => event(
                c,
                ns,
                owner,
                "Normal",
                "SuccessfulCreate",
                &format!(
                    "Created pod: {}",
                    created["metadata"]["name"].as_str().unwrap_or("")
                ),
                component,
            ),
            Err(e) => {
                event(
                    c,
                    ns,
                    owner,
                    "Warning",
                    "FailedCreate",
                    &e.to_string(),
                    component,
                );
                break;
            }
        }
    }
    for pn in delete {
        c.delete(&format!("{pods_path}/{pn}"))?;
        let msg = format!("Deleted pod: {pn}");
        event(c, ns, owner, "Normal", "SuccessfulDelete", &msg, component);
    }
    Ok(())
}

/// Records an event about `obj` in the background (client-go's broadcaster: a loop's write,
/// a binding or a replica, never waits for its event; a burst beyond the queue drops events,
/// never the work).
fn event(
    c: &Api,
    ns: &str,
    obj: &Value,
    type_: &str,
    reason: &str,
    message: &str,
    component: &str,
) {
    let mut r = ObjectRef::of(obj);
    r.namespace = ns.to_string();
    c.events
        .with_component(component)
        .record(&r, type_, reason, message);
}

fn active(p: &Value) -> bool {
    p["metadata"]["deletionTimestamp"].is_null()
        && !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
}

fn scheduler_loop(
    c: Api,
    rx: mpsc::Receiver<()>,
    pod_cache: std::sync::Arc<cache::Cache>,
    node_cache: std::sync::Arc<cache::Cache>,
) {
    let (mut start, mut tie) = (0usize, 0u64);
    // Last failure message per pod uid, so events are not repeated every pass.
    let mut reported: HashMap<String, String> = HashMap::new();
    // Pods bound by an earlier pass whose update the cache may not show yet: skipped, and
    // counted on their node, until it does (or a while has passed).
    let mut in_flight: HashMap<String, (String, std::time::Instant)> = HashMap::new();
    let mut pace = Pace::new(Duration::from_millis(100));
    // Typed copies of the cached objects, redone only when an object's resourceVersion
    // changes: decoding 10,000 pods on every pass cost more than scheduling them.
    let mut pod_memo = Memo::<Pod>::default();
    let mut node_memo = Memo::<Node>::default();
    while pace.wait(&rx) {
        let (nodes, pods) = (node_cache.snapshot(), pod_cache.snapshot());
        in_flight.retain(|_, (_, t)| t.elapsed() < Duration::from_secs(30));
        let mut infos: Vec<moat_scheduler::NodeInfo> = node_memo
            .typed(&nodes)
            .into_iter()
            .map(|(_, n)| moat_scheduler::NodeInfo::new((*n).clone()))
            .collect();
        let index: HashMap<String, usize> = infos
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        let mut pending = Vec::new();
        for (pv, p) in pod_memo.typed(&pods) {
            let uid = p.metadata.uid.clone().unwrap_or_default();
            let mut node = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            if node.is_empty()
                && let Some((n, _)) = in_flight.get(&uid)
            {
                node = n.clone();
            } else if !node.is_empty() {
                in_flight.remove(&uid);
            }
            if node.is_empty() {
                let ours = p
                    .spec
                    .as_ref()
                    .and_then(|s| s.scheduler_name.as_deref())
                    .is_none_or(|n| n == "default-scheduler");
                if ours && active(&pv) {
                    pending.push((pv, p));
                }
            } else if active(&pv)
                && let (Some(&i), Ok(req)) = (index.get(&node), moat_scheduler::pod_requests(&p))
            {
                infos[i].add_pod(&p, &req);
            }
        }
        let mut binds: Vec<(String, String, String, Arc<Value>)> = Vec::new();
        for (pv, p) in pending {
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            let name = p.metadata.name.clone().unwrap_or_default();
            let uid = p.metadata.uid.clone().unwrap_or_default();
            tie = tie.wrapping_add(1);
            match moat_scheduler::schedule(&p, &infos, start, tie) {
                Ok(Ok(pl)) => {
                    start = pl.next_start;
                    // Counted at once so the next decisions see it; the write happens in
                    // the batch below (a failed bind is recomputed on the next pass).
                    if let Ok(req) = moat_scheduler::pod_requests(&p) {
                        infos[pl.node].add_pod(&p, &req);
                    }
                    reported.remove(&uid);
                    in_flight.insert(
                        uid,
                        (infos[pl.node].name.clone(), std::time::Instant::now()),
                    );
                    binds.push((ns, name, infos[pl.node].name.clone(), pv.clone()));
                }
                Ok(Err(fit)) => {
                    let msg = fit.to_string();
                    if reported.get(&uid) != Some(&msg) {
                        let _ = c.merge_patch(&format!("/api/v1/namespaces/{ns}/pods/{name}/status"),
                            &json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                "message": msg, "lastTransitionTime": now()}]}}));
                        event(
                            &c,
                            &ns,
                            &pv,
                            "Warning",
                            "FailedScheduling",
                            &msg,
                            "default-scheduler",
                        );
                        reported.insert(uid, msg);
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    if reported.get(&uid) != Some(&msg) {
                        event(
                            &c,
                            &ns,
                            &pv,
                            "Warning",
                            "FailedScheduling",
                            &msg,
                            "default-scheduler",
                        );
                        reported.insert(uid, msg);
                    }
                }
            }
        }
        bind_all(&c, &binds);
    }
}

/// Writes a pass's bindings with a few concurrent requests (the API server sets the
/// PodScheduled condition as part of the binding), then records the Scheduled events.
fn bind_all(c: &Api, binds: &[(String, String, String, Arc<Value>)]) {
    const WORKERS: usize = 8;
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..WORKERS.min(binds.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((ns, name, node, pv)) = binds.get(i) else {
                        break;
                    };
                    let b = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name, "namespace": ns},
                        "target": {"kind": "Node", "name": node}});
                    match c.create(&format!("/api/v1/namespaces/{ns}/pods/{name}/binding"), &b) {
                        Ok(_) => event(
                            c,
                            ns,
                            pv,
                            "Normal",
                            "Scheduled",
                            &format!("Successfully assigned {ns}/{name} to {node}"),
                            "default-scheduler",
                        ),
                        Err(e) => tracing::debug!(error = %e, pod = %name, "binding"),
                    }
                }
            });
        }
    });
}

fn by_ns(items: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut m: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for i in items {
        m.entry(
            i["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        )
        .or_default()
        .push(i.clone());
    }
    m
}

fn controller_loop(c: Api, rx: mpsc::Receiver<()>) {
    let mut pace = Pace::new(Duration::from_millis(500));
    while pace.wait(&rx) {
        let (Ok((deps, _)), Ok((rss, _))) = (
            c.list("/apis/apps/v1/deployments"),
            c.list("/apis/apps/v1/replicasets"),
        ) else {
            continue;
        };
        // Only the pods of namespaces that have ReplicaSets can be owned or adopted; they
        // are listed fresh (not from a cache that may lag) after the ReplicaSets, so a
        // replica created by the previous pass is always seen and never created twice.
        let rs_ns = by_ns(&rss);
        let mut pod_ns = BTreeMap::new();
        let mut listed = true;
        for ns in rs_ns.keys() {
            match c.list(&format!("/api/v1/namespaces/{ns}/pods")) {
                Ok((pods, _)) => {
                    pod_ns.insert(ns.clone(), pods);
                }
                Err(_) => listed = false,
            }
        }
        if !listed {
            continue;
        }
        let empty = Vec::new();
        for dv in &deps {
            let ns = dv["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string();
            if let Err(e) = sync_deployment(
                &c,
                &ns,
                dv,
                rs_ns.get(&ns).unwrap_or(&empty),
                pod_ns.get(&ns).unwrap_or(&empty),
            ) {
                tracing::debug!(error = %e, "deployment sync");
            }
        }
        let secs = chrono::Utc::now().timestamp();
        for rv in &rss {
            let ns = rv["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string();
            if let Err(e) = sync_replicaset(&c, &ns, rv, pod_ns.get(&ns).unwrap_or(&empty), secs) {
                tracing::debug!(error = %e, "replicaset sync");
            }
        }
    }
}

fn sync_deployment(
    c: &Api,
    ns: &str,
    dv: &Value,
    rss: &[Value],
    pods: &[Value],
) -> Result<(), ClientError> {
    let Ok(d) = serde_json::from_value::<Deployment>(dv.clone()) else {
        return Ok(());
    };
    let name = d.metadata.name.clone().unwrap_or_default();
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let plan = match moat_controllers::deployment::reconcile(
        &d,
        &typed::<ReplicaSet>(rss),
        &typed::<Pod>(pods),
    ) {
        Ok(p) => p,
        Err(e) => {
            event(
                c,
                ns,
                dv,
                "Warning",
                "ReconcileError",
                &e.to_string(),
                "deployment-controller",
            );
            return Ok(());
        }
    };
    let base = format!("/apis/apps/v1/namespaces/{ns}/replicasets");
    if let Some(rs) = &plan.create {
        let v = serde_json::to_value(rs).unwrap_or_default();
        let mut v = v;
        v["apiVersion"] = json!("apps/v1");
        v["kind"] = json!("ReplicaSet");
        match c.create(&base, &v) {
            Ok(_) => {
                let replicas = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
                let rs_name = rs.metadata.name.clone().unwrap_or_default();
                event(
                    c,
                    ns,
                    dv,
                    "Normal",
                    "ScalingReplicaSet",
                    &format!("Scaled up replica set {rs_name} to {replicas}"),
                    "deployment-controller",
                );
            }
            Err(e) if e.code() == Some(409) => {}
            Err(e) => return Err(e),
        }
    }
    for op in &plan.scale {
        let mut p = json!({"spec": {"replicas": op.replicas}});
        if !op.annotations.is_empty() {
            p["metadata"] = json!({"annotations": op.annotations});
        }
        let old = rss
            .iter()
            .find(|r| r["metadata"]["name"] == op.name.as_str())
            .and_then(|r| r["spec"]["replicas"].as_i64())
            .unwrap_or(0);
        c.merge_patch(&format!("{base}/{}", op.name), &p)?;
        if old != i64::from(op.replicas) {
            let dir = if i64::from(op.replicas) > old {
                "up"
            } else {
                "down"
            };
            event(
                c,
                ns,
                dv,
                "Normal",
                "ScalingReplicaSet",
                &format!(
                    "Scaled {dir} replica set {} to {} from {old}",
                    op.name, op.replicas
                ),
                "deployment-controller",
            );
        }
    }
    for rs in &plan.delete {
        c.delete(&format!("{base}/{rs}"))?;
    }
    let dpath = format!("/apis/apps/v1/namespaces/{ns}/deployments/{name}");
    if let Some(rev) = &plan.revision
        && dv["metadata"]["annotations"][moat_controllers::deployment::REVISION].as_str()
            != Some(rev.as_str())
    {
        c.merge_patch(
            &dpath,
            &json!({"metadata": {"annotations": {moat_controllers::deployment::REVISION: rev}}}),
        )?;
    }
    let status = serde_json::to_value(&plan.status).unwrap_or_default();
    if strip_times(&status) != strip_times(&dv["status"]) {
        let mut s = status;
        stamp_conditions(&mut s);
        c.merge_patch(&format!("{dpath}/status"), &json!({"status": s}))?;
    }
    Ok(())
}

/// Conditions carry timestamps; compare without them so an unchanged status is not rewritten.
fn strip_times(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(cs) = v["conditions"].as_array_mut() {
        for c in cs {
            if let Some(o) = c.as_object_mut() {
                o.remove("lastTransitionTime");
                o.remove("lastUpdateTime");
            }
        }
    }
    if let Some(o) = v.as_object_mut() {
        o.retain(|_, x| !x.is_null());
    }
    v
}

fn stamp_conditions(v: &mut Value) {
    if let Some(cs) = v["conditions"].as_array_mut() {
        for c in cs {
            if c["lastTransitionTime"].is_null() {
                c["lastTransitionTime"] = json!(now());
            }
            if c["lastUpdateTime"].is_null() {
                c["lastUpdateTime"] = json!(now());
            }
        }
    }
}

fn sync_replicaset(
    c: &Api,
    ns: &str,
    rv: &Value,
    pods: &[Value],
    now_secs: i64,
) -> Result<(), ClientError> {
    let Ok(rs) = serde_json::from_value::<ReplicaSet>(rv.clone()) else {
        return Ok(());
    };
    let plan = moat_controllers::replicaset::reconcile(&rs, &typed::<Pod>(pods), now_secs);
    let pods_path = format!("/api/v1/namespaces/{ns}/pods");
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    for p in &plan.create {
        let mut v = serde_json::to_value(p).unwrap_or_default();
        v["apiVersion"] = json!("v1");
        v["kind"] = json!("Pod");
        match c.create(&pods_path, &v) {
            Ok(created) => {
                let pn = created["metadata"]["name"].as_str().unwrap_or("");
                event(
                    c,
                    ns,
                    rv,
                    "Normal",
                    "SuccessfulCreate",
                    &format!("Created pod: {pn}"),
                    "replicaset-controller",
                );
            }
            Err(e) => {
                event(
                    c,
                    ns,
                    rv,
                    "Warning",
                    "FailedCreate",
                    &e.to_string(),
                    "replicaset-controller",
                );
                break;
            }
        }
    }
    for name in &plan.delete {
        c.delete(&format!("{pods_path}/{name}"))?;
        event(
            c,
            ns,
            rv,
            "Normal",
            "SuccessfulDelete",
            &format!("Deleted pod: {name}"),
            "replicaset-controller",
        );
    }
    for name in &plan.adopt {
        let owner = moat_controllers::replicaset::owner_ref(&rs);
        c.merge_patch(
            &format!("{pods_path}/{name}"),
            &json!({"metadata": {"ownerReferences": [owner]}}),
        )?;
    }
    for name in &plan.release {
        // Keep references to other owners; drop ours.
        if let Some(p) = pods.iter().find(|p| p["metadata"]["name"] == name.as_str()) {
            let keep: Vec<Value> = p["metadata"]["ownerReferences"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|o| o["uid"] != uid.as_str())
                .collect();
            c.merge_patch(
                &format!("{pods_path}/{name}"),
                &json!({"metadata": {"ownerReferences": keep}}),
            )?;
        }
    }
    let status = serde_json::to_value(&plan.status).unwrap_or_default();
    if strip_times(&status) != strip_times(&rv["status"]) {
        let name = rs.metadata.name.clone().unwrap_or_default();
        c.merge_patch(
            &format!("/apis/apps/v1/namespaces/{ns}/replicasets/{name}/status"),
            &json!({"status": status}),
        )?;
    }
    Ok(())
}

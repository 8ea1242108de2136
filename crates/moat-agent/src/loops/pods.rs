//! The pods loop: keeps one worker per pod bound to this node. It reads the node's pods and
//! the RuntimeClasses from watch-fed caches, hands each pod (and its runtime handler) to its
//! worker, tells workers whose pod the API no longer has, and re-adopts the records earlier
//! runs left. It never waits for a worker: creating, probing or terminating one pod never
//! delays another.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use moat_client::{Api, EventRecorder, Reflector};

use crate::handlers::{Handler, Unresolved};
use crate::node::Node;
use crate::supervisor::{LoopError, Stop};
use crate::worker::{self, WorkerEnv, WorkerHandle};

pub struct PodsLoop {
    pub node: Arc<Node>,
    pub api: Arc<dyn Api>,
    pub events: EventRecorder,
}

/// The handler for a pod: its RuntimeClass's handler (from the cache), else the default.
pub fn handler_for(
    node: &Node,
    pod: &Pod,
    classes: &Reflector,
) -> Option<Result<Handler, Unresolved>> {
    let class = pod.spec.as_ref().and_then(|s| s.runtime_class_name.clone());
    let hname = match class {
        None => None,
        Some(c) => {
            if !classes.synced() {
                return None;
            }
            match classes.get(&format!("/{c}")) {
                Some(rc) => match rc["handler"].as_str() {
                    Some(h) => Some(h.to_string()),
                    None => return Some(Err(Unresolved::ClassWithoutHandler(c))),
                },
                None => return Some(Err(Unresolved::ClassNotFound(c))),
            }
        }
    };
    Some(
        node.cfg
            .handlers
            .get(hname.as_deref())
            .cloned()
            .map_err(Unresolved::from),
    )
}

impl PodsLoop {
    pub fn run(&self, stop: &Stop) -> Result<(), LoopError> {
        let (wake_tx, wake) = mpsc::channel::<()>();
        stop.register(wake_tx.clone());
        let name = &self.node.cfg.node_name;
        let pods = Reflector::spawn(
            self.api.clone(),
            format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{name}"),
            vec![wake_tx.clone()],
        );
        let classes = Reflector::spawn(
            self.api.clone(),
            "/apis/node.k8s.io/v1/runtimeclasses",
            vec![wake_tx.clone()],
        );
        let env = WorkerEnv {
            node: self.node.clone(),
            api: self.api.clone(),
            events: self.events.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            ended: wake_tx.clone(),
        };
        let mut workers: BTreeMap<String, WorkerHandle> = BTreeMap::new();
        for rec in self.node.records() {
            match worker::spawn(env.clone(), &rec.uid, None, Some(rec.clone())) {
                Ok(w) => {
                    workers.insert(rec.uid.clone(), w);
                }
                Err(e) => return Err(LoopError::Spawn(e)),
            }
        }
        let result = loop {
            if stop.is_stopped() {
                break Ok(());
            }
            let _ = wake.recv_timeout(Duration::from_secs(1));
            while wake.try_recv().is_ok() {}
            if stop.is_stopped() {
                break Ok(());
            }
            if let Err(e) = self.pass(&env, &pods, &classes, &mut workers) {
                break Err(e);
            }
        };
        // Workers end between rounds and leave their pods running for the next agent.
        env.stop.store(true, Ordering::Release);
        pods.stop();
        classes.stop();
        for (_, w) in std::mem::take(&mut workers) {
            w.join();
        }
        result
    }

    fn pass(
        &self,
        env: &WorkerEnv,
        pods: &Reflector,
        classes: &Reflector,
        workers: &mut BTreeMap<String, WorkerHandle>,
    ) -> Result<(), LoopError> {
        workers.retain(|_, w| !w.finished());
        if !pods.synced() {
            return Ok(());
        }
        let mut live = std::collections::BTreeSet::new();
        for v in pods.snapshot() {
            let Ok(pod) = serde_json::from_value::<Pod>((*v).clone()) else {
                continue;
            };
            let Some(uid) = pod.metadata.uid.clone() else {
                continue;
            };
            live.insert(uid.clone());
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            // A finished pod this node no longer holds (e.g. failed before its sandbox).
            if pod.metadata.deletion_timestamp.is_none()
                && matches!(phase, Some("Failed" | "Succeeded"))
                && !workers.contains_key(&uid)
            {
                continue;
            }
            let Some(handler) = handler_for(&self.node, &pod, classes) else {
                continue;
            };
            let rv = pod.metadata.resource_version.clone().unwrap_or_default();
            let key = (
                rv,
                handler
                    .as_ref()
                    .map(|h| h.name.clone())
                    .map_err(Unresolved::clone),
            );
            let pod = Arc::new(pod);
            match workers.get_mut(&uid) {
                Some(w) => {
                    if w.last.as_ref() != Some(&key) {
                        w.update(pod, handler);
                        w.last = Some(key);
                    }
                }
                None => {
                    let mut w = worker::spawn(env.clone(), &uid, Some((pod, handler)), None)
                        .map_err(LoopError::Spawn)?;
                    w.last = Some(key);
                    workers.insert(uid.clone(), w);
                }
            }
        }
        for (uid, w) in workers.iter_mut() {
            if !live.contains(uid) && !w.gone_sent {
                w.gone();
                w.gone_sent = true;
            }
        }
        Ok(())
    }
}

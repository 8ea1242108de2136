//! One worker per pod, as the kubelet has: a thread that owns the pod's state, runs the
//! lifecycle's decision rounds over the node's IO, and reports the pod's status itself. A slow
//! runtime call (a VM booting or stopping) or a pod waiting out its grace period delays only
//! its own worker; the dispatcher never waits for one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use moat_client::{Api, ClientError, EventRecorder, ObjectRef};

use crate::handlers::{Handler, Unresolved};
use crate::lifecycle::{self, Deletion, Done, Effect, Failure, Input, PodState};
use crate::node::Node;
use crate::podstate::{Phase, PodRecord};

/// At most this many decision rounds per wake-up: each round's effects (a start, a probe, a
/// kill) are looked at by the next one, so one wake-up carries a pod as far as it can go.
const ROUNDS: usize = 8;

/// (warning, reason, message)
pub type PodEvent = (bool, String, String);

/// The synchronous core of a worker (what its thread drives; unit tests drive it directly).
pub struct PodWorker {
    node: Arc<Node>,
    state: PodState,
    pod: Arc<Pod>,
    deletion: Deletion,
    handler: Result<Handler, Unresolved>,
    events: Vec<PodEvent>,
    wake_ms: i64,
    saved: Option<PodRecord>,
}

/// What a sync asks of the API.
#[derive(Debug, Default)]
pub struct Report {
    /// The status to report (`None` once the pod is gone from the node).
    pub status: Option<PodStatus>,
    /// Everything of the pod is gone from the node: finish the object's deletion.
    pub delete_object: bool,
}

/// A minimal pod object for a record whose pod the API no longer has.
fn pod_of_record(rec: &PodRecord) -> Pod {
    let mut p = Pod::default();
    p.metadata.uid = Some(rec.uid.clone());
    p.metadata.namespace = Some(rec.namespace.clone());
    p.metadata.name = Some(rec.name.clone());
    p
}

fn deletion_of(pod: &Pod) -> Deletion {
    match pod.metadata.deletion_timestamp {
        Some(_) => Deletion::Graceful(pod.metadata.deletion_grace_period_seconds.unwrap_or(30)),
        None => Deletion::None,
    }
}

impl PodWorker {
    /// A worker for `pod` (with the handler its RuntimeClass names), or for a record an
    /// earlier agent left, whose pod is not known yet.
    pub fn new(
        node: Arc<Node>,
        pod: Option<(Arc<Pod>, Result<Handler, Unresolved>)>,
        record: Option<PodRecord>,
    ) -> PodWorker {
        let (pod, handler) = match pod {
            Some((p, h)) => (Some(p), h),
            // Only a record: its sandbox exists, so no handler is needed to create one.
            None => (None, Err(Unresolved::NotYet)),
        };
        let (pod, deletion) = match (pod, &record) {
            (Some(p), _) => {
                let d = deletion_of(&p);
                (p, d)
            }
            (None, Some(r)) => (Arc::new(pod_of_record(r)), Deletion::None),
            (None, None) => (Arc::new(Pod::default()), Deletion::Gone),
        };
        PodWorker {
            node,
            saved: record.clone(),
            state: PodState {
                record,
                ..Default::default()
            },
            pod,
            deletion,
            handler,
            events: Vec::new(),
            wake_ms: 0,
        }
    }

    pub fn update(&mut self, pod: Arc<Pod>, handler: Result<Handler, Unresolved>) {
        // Deletion only moves forward: a stale update never revives a deleting pod.
        if self.deletion == Deletion::None {
            self.deletion = deletion_of(&pod);
        }
        self.pod = pod;
        self.handler = handler;
    }

    /// The API no longer has the pod.
    pub fn gone(&mut self) {
        self.deletion = Deletion::Gone;
    }

    pub fn state(&self) -> &PodState {
        &self.state
    }

    pub fn finished(&self) -> bool {
        self.state.finished
    }

    /// When the worker wants to look again (unix ms).
    pub fn wake_ms(&self) -> i64 {
        self.wake_ms
    }

    pub fn take_events(&mut self) -> Vec<PodEvent> {
        std::mem::take(&mut self.events)
    }

    /// Runs decision rounds and their effects until nothing is left to do now.
    pub fn sync(&mut self, now_ms: i64) -> Report {
        let mut report = Report::default();
        for _ in 0..ROUNDS {
            let runtime = self
                .state
                .record
                .as_ref()
                .map(|r| self.node.observe(r))
                .unwrap_or_default();
            let why = self.handler.as_ref().err().map(ToString::to_string);
            let handler = match (&self.handler, &why) {
                (Ok(h), _) => Ok(h),
                (Err(_), w) => Err(w.as_deref().unwrap_or_default()),
            };
            let input = Input {
                pod: &self.pod,
                now_ms,
                deletion: self.deletion,
                handler,
                runtime: &runtime,
            };
            let before = self.state.clone();
            let step = lifecycle::step(self.state.clone(), &input);
            self.state = step.state;
            self.wake_ms = step.wake_ms;
            let mut acted = false;
            for e in step.effects {
                match e {
                    Effect::Event {
                        warning,
                        reason,
                        message,
                    } => self.events.push((warning, reason, message)),
                    Effect::DeleteObject => report.delete_object = true,
                    e => {
                        acted = true;
                        let done = self.node.execute(&self.pod, self.state.record.as_ref(), &e);
                        if let Some(done) = done {
                            self.fold(done, now_ms);
                        }
                    }
                }
            }
            self.persist();
            // Quiescent: nothing done and nothing changed (a phase change is looked at
            // again at once: termination goes on to teardown in the same wake-up).
            if !acted && self.state == before {
                break;
            }
        }
        if !self.state.finished
            && !matches!(
                self.state.phase(),
                Phase::TearingDown { .. } | Phase::Removed
            )
        {
            report.status = Some(lifecycle::pod_status(
                &self.state,
                &self.pod,
                self.node.cfg.node_ip.as_deref(),
                now_ms,
            ));
        }
        report
    }

    /// The API deletion asked by [`Report::delete_object`] went through (or not).
    pub fn object_deleted(&mut self, res: Result<(), ClientError>, now_ms: i64) {
        if let Err(e) = &res {
            self.events.push((
                true,
                "FailedDelete".into(),
                format!("finishing the pod's deletion: {e}"),
            ));
        }
        self.fold(
            Done::ObjectDeleted(res.map_err(|e| Failure(crate::node::chain(&e)))),
            now_ms,
        );
    }

    fn fold(&mut self, done: Done, now_ms: i64) {
        let (st, evs) = lifecycle::fold(self.state.clone(), &self.pod, done, now_ms);
        self.state = st;
        for e in evs {
            if let Effect::Event {
                warning,
                reason,
                message,
            } = e
            {
                self.events.push((warning, reason, message));
            }
        }
    }

    /// Writes the record when it changed; never after teardown removed the pod dir.
    fn persist(&mut self) {
        let Some(rec) = &self.state.record else {
            return;
        };
        if rec.phase == Phase::Removed || self.saved.as_ref() == Some(rec) {
            return;
        }
        match self.node.save(rec) {
            Ok(()) => self.saved = Some(rec.clone()),
            Err(e) => tracing::warn!(error = %crate::node::chain(&e), "saving pod state"),
        }
    }
}

enum Msg {
    Update(Arc<Pod>, Result<Handler, Unresolved>),
    Gone,
}

/// The dispatcher's end of a worker thread.
pub struct WorkerHandle {
    tx: mpsc::Sender<Msg>,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// What was last sent, so unchanged pods are not re-sent every pass.
    pub(crate) last: Option<(String, Result<String, Unresolved>)>,
    pub(crate) gone_sent: bool,
}

impl WorkerHandle {
    pub fn update(&self, pod: Arc<Pod>, handler: Result<Handler, Unresolved>) {
        let _ = self.tx.send(Msg::Update(pod, handler));
    }

    pub fn gone(&self) {
        let _ = self.tx.send(Msg::Gone);
    }

    /// The pod is gone from the node (and its object deleted); the thread has ended.
    pub fn finished(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Waits for the thread to end (after `stop` was set).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Everything a worker thread needs besides its pod.
#[derive(Clone)]
pub struct WorkerEnv {
    pub node: Arc<Node>,
    pub api: Arc<dyn Api>,
    pub events: EventRecorder,
    /// Set when the agent stops: workers end between rounds and leave their pods running.
    pub stop: Arc<AtomicBool>,
    /// Wakes the dispatcher when a worker ends.
    pub ended: mpsc::Sender<()>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Starts the worker thread of one pod.
pub fn spawn(
    env: WorkerEnv,
    uid: &str,
    pod: Option<(Arc<Pod>, Result<Handler, Unresolved>)>,
    record: Option<PodRecord>,
) -> std::io::Result<WorkerHandle> {
    let (tx, rx) = mpsc::channel::<Msg>();
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let name: String = format!("pod-{uid}").chars().take(15).collect();
    let thread = std::thread::Builder::new()
        .name(name)
        .spawn(move || run(env, rx, d, pod, record))?;
    Ok(WorkerHandle {
        tx,
        done,
        thread: Some(thread),
        last: None,
        gone_sent: false,
    })
}

fn run(
    env: WorkerEnv,
    rx: mpsc::Receiver<Msg>,
    done: Arc<AtomicBool>,
    pod: Option<(Arc<Pod>, Result<Handler, Unresolved>)>,
    record: Option<PodRecord>,
) {
    let mut w = PodWorker::new(env.node.clone(), pod, record);
    let mut sent: Option<PodStatus> = None;
    let apply = |w: &mut PodWorker, m: Msg| match m {
        Msg::Update(p, h) => w.update(p, h),
        Msg::Gone => w.gone(),
    };
    // The first message (the pod and its handler) comes right after spawn, except for a
    // re-adopted record whose pod is not known yet.
    loop {
        if env.stop.load(Ordering::Acquire) {
            break;
        }
        let wait = (w.wake_ms() - now_ms()).clamp(0, 1_000);
        match rx.recv_timeout(Duration::from_millis(wait as u64)) {
            Ok(m) => apply(&mut w, m),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        while let Ok(m) = rx.try_recv() {
            apply(&mut w, m);
        }
        if env.stop.load(Ordering::Acquire) {
            break;
        }
        // Until the dispatcher has told it what the pod is, a re-adopted worker waits.
        if w.pod.spec.is_none() && w.deletion == Deletion::None {
            continue;
        }
        let report = w.sync(now_ms());
        let m = &w.pod.metadata;
        let (ns, name) = (
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        );
        let obj = ObjectRef {
            api_version: "v1".into(),
            kind: "Pod".into(),
            namespace: ns.clone(),
            name: name.clone(),
            uid: m.uid.clone().unwrap_or_default(),
        };
        for (warning, reason, message) in w.take_events() {
            let ty = if warning { "Warning" } else { "Normal" };
            env.events.record(&obj, ty, &reason, &message);
        }
        if let Some(st) = report.status
            && sent.as_ref() != Some(&st)
        {
            let p = format!("/api/v1/namespaces/{ns}/pods/{name}/status");
            match env.api.merge_patch(&p, &crate::status::patch_body(&st)) {
                Ok(_) => sent = Some(st),
                Err(e) => tracing::debug!(pod = %name, error = %e, "pod status"),
            }
        }
        if report.delete_object {
            // Cleanup is done: the object may go now.
            let res = env.api.delete(&format!(
                "/api/v1/namespaces/{ns}/pods/{name}?gracePeriodSeconds=0"
            ));
            w.object_deleted(res, now_ms());
        }
        if w.finished() {
            break;
        }
    }
    done.store(w.finished(), Ordering::Release);
    let _ = env.ended.send(());
}

#[cfg(test)]
mod tests;

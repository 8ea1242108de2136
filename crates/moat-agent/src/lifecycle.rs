//! The pod lifecycle as a sans-IO state machine: [`step`] takes a pod's state, its spec and
//! what was observed (runtime container states, deletion, the clock) and returns the new state,
//! the effects to carry out and when to look again. The results of effects come back through
//! [`fold`]. Nothing here sleeps, reads the clock or touches the host, so every decision
//! (restart back-off, init ordering, probes, termination with a deadline, teardown retries)
//! is unit-tested without root.
//!
//! Termination is a state with a deadline, never a sleep: SIGTERM, then `Terminating` until
//! the containers stop or the grace period ends (SIGKILL), then `TearingDown` until the
//! sandbox is gone, retried with back-off; only then is the pod object deleted.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, PodStatus, Probe};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use moat_api::time::{parse_rfc3339, rfc3339_from_millis as rfc3339};

use crate::handlers::Handler;
use crate::podstate::{Phase, PodRecord, Slot};
use crate::status::{self, ContainerView, PodFacts, State};

/// How long after SIGKILL the containers get to disappear before teardown goes ahead anyway
/// (the runtime delete is forceful).
const KILL_WAIT_MS: i64 = 5_000;
/// While terminating, how often the containers are looked at.
const TERMINATING_POLL_MS: i64 = 100;
/// How often a running pod's containers are looked at (exits, probes due).
const RESYNC_MS: i64 = 1_000;

/// A runtime container as observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtState {
    Created,
    Running,
    Stopped(i32),
    /// The runtime does not know it (its state root was wiped).
    Missing,
}

/// What the API says about the pod's existence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    None,
    /// `deletionTimestamp` set with this grace period (seconds).
    Graceful(i64),
    /// The object is gone from the API (or never was): stop at once, no object to delete.
    Gone,
}

/// Why a container could not be started, as the kubelet reports it in `waiting.reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFailure {
    ErrImagePull,
    CreateContainerConfigError,
    CreateContainerError,
    RunContainerError,
}

impl StartFailure {
    pub fn reason(self) -> &'static str {
        match self {
            StartFailure::ErrImagePull => "ErrImagePull",
            StartFailure::CreateContainerConfigError => "CreateContainerConfigError",
            StartFailure::CreateContainerError => "CreateContainerError",
            StartFailure::RunContainerError => "RunContainerError",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    Readiness,
    Liveness,
}

/// The per-pod state a worker keeps (the record part is persisted).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodState {
    /// The sandbox and containers; `None` until the sandbox exists.
    pub record: Option<PodRecord>,
    /// Sandbox creation failures in a row, and when the next try may start (unix ms).
    pub sandbox_errors: u32,
    pub sandbox_not_before_ms: i64,
    /// The last sandbox or handler failure, shown in the waiting message.
    pub sandbox_error: Option<String>,
    pub handler_error: Option<String>,
    /// Removed from the node and, when it still existed, the object deleted.
    pub finished: bool,
}

impl PodState {
    pub fn phase(&self) -> Phase {
        self.record.as_ref().map_or(Phase::Active, |r| r.phase)
    }
}

/// Something the worker must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    CreateSandbox(Handler),
    /// Create and start the container of this name (its next run).
    StartContainer(String),
    /// Start a container the runtime holds as created.
    StartCreated(String),
    /// Remove a stopped runtime container with its rootfs and bundle.
    Remove(String),
    Kill {
        id: String,
        signal: &'static str,
    },
    Probe {
        container: String,
        id: String,
        kind: ProbeKind,
    },
    /// Remove everything of the pod on the node (runtime, mounts, CNI, netns, dirs).
    Teardown,
    /// Finish the API deletion (grace 0): everything on the node is gone.
    DeleteObject,
    Event {
        warning: bool,
        reason: String,
        message: String,
    },
}

/// A failed effect as the state machine sees it: the error chain the IO side rendered
/// (`node::chain`). The lifecycle only reports it (events, the sandbox error) and retries;
/// it never branches on the cause, and text keeps `Done` `Clone + PartialEq` so the sans-IO
/// tests can script failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Failure(pub String);

/// What an effect gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Done {
    Sandbox(Result<Box<PodRecord>, Failure>),
    Started {
        name: String,
        result: Result<Started, (StartFailure, String)>,
    },
    Probed {
        name: String,
        kind: ProbeKind,
        ok: bool,
    },
    TornDown(Result<(), Failure>),
    ObjectDeleted(Result<(), Failure>),
}

/// A container run that was created and started.
#[derive(Debug, Clone, PartialEq)]
pub struct Started {
    pub id: String,
    pub restart_count: u32,
    pub image: String,
    pub image_id: String,
}

/// Everything `step` needs besides the state.
pub struct Input<'a> {
    pub pod: &'a Pod,
    pub now_ms: i64,
    pub deletion: Deletion,
    /// The handler the pod's RuntimeClass names (only used before the sandbox exists).
    pub handler: Result<&'a Handler, &'a str>,
    /// Observed states of the record's runtime containers.
    pub runtime: &'a BTreeMap<String, RtState>,
}

/// The result of a step.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub state: PodState,
    pub effects: Vec<Effect>,
    /// When to step again at the latest (unix ms).
    pub wake_ms: i64,
}

fn ms_of(t: Option<&str>) -> i64 {
    t.and_then(|t| parse_rfc3339(t).ok())
        .map_or(0, |t| t.as_millisecond())
}

/// Teardown retry delay: 1 s doubling up to a minute.
fn teardown_backoff_ms(attempts: u32) -> i64 {
    (1_000i64 << attempts.min(6)).min(60_000)
}

fn restart_policy(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.clone())
        .unwrap_or_else(|| "Always".into())
}

/// Init containers (in order) then app containers, each with whether it is an init container.
fn all_containers(pod: &Pod) -> Vec<(bool, &Container)> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    spec.init_containers
        .iter()
        .flatten()
        .map(|c| (true, c))
        .chain(spec.containers.iter().map(|c| (false, c)))
        .collect()
}

fn is_alive(s: Option<&RtState>) -> bool {
    matches!(s, Some(RtState::Running | RtState::Created))
}

/// One decision round.
pub fn step(mut st: PodState, inp: &Input<'_>) -> Step {
    let now = inp.now_ms;
    let mut effects = Vec::new();
    let mut wake = now + RESYNC_MS;
    let phase = st.phase();
    if st.finished {
        return Step {
            state: st,
            effects,
            wake_ms: i64::MAX,
        };
    }
    match (phase, inp.deletion) {
        (Phase::Active, Deletion::None) => active(&mut st, inp, &mut effects, &mut wake),
        (Phase::Active, Deletion::Graceful(_) | Deletion::Gone) => {
            let grace = match inp.deletion {
                Deletion::Graceful(g) => g.max(0),
                _ => 0,
            };
            match st.record.as_mut() {
                None => {
                    // Nothing of it exists on the node.
                    removed(&mut st, inp, &mut effects);
                }
                Some(rec) => {
                    for id in rec.container_ids() {
                        if is_alive(inp.runtime.get(&id)) {
                            effects.push(Effect::Kill {
                                id,
                                signal: "SIGTERM",
                            });
                        }
                    }
                    let deadline_ms = now.saturating_add(grace.saturating_mul(1000));
                    rec.phase = Phase::Terminating {
                        deadline_ms,
                        killed: false,
                    };
                    wake = now;
                }
            }
        }
        (
            Phase::Terminating {
                deadline_ms,
                killed,
            },
            _,
        ) => {
            let Some(rec) = st.record.as_mut() else {
                return Step {
                    state: st,
                    effects,
                    wake_ms: now,
                };
            };
            let alive: Vec<String> = rec
                .container_ids()
                .into_iter()
                .filter(|id| is_alive(inp.runtime.get(id)))
                .collect();
            if alive.is_empty() || (killed && now >= deadline_ms) {
                rec.phase = Phase::TearingDown {
                    attempts: 0,
                    not_before_ms: now,
                };
                wake = now;
            } else if now >= deadline_ms {
                for id in alive {
                    effects.push(Effect::Kill {
                        id,
                        signal: "SIGKILL",
                    });
                }
                rec.phase = Phase::Terminating {
                    deadline_ms: now + KILL_WAIT_MS,
                    killed: true,
                };
                wake = now + TERMINATING_POLL_MS;
            } else {
                wake = (now + TERMINATING_POLL_MS).min(deadline_ms);
            }
        }
        (Phase::TearingDown { not_before_ms, .. }, _) => {
            if now >= not_before_ms {
                effects.push(Effect::Teardown);
                wake = now + RESYNC_MS;
            } else {
                wake = not_before_ms;
            }
        }
        (Phase::Removed, _) => removed(&mut st, inp, &mut effects),
    }
    Step {
        state: st,
        effects,
        wake_ms: wake,
    }
}

/// The node holds nothing of the pod any more: finish the API deletion if there is one.
fn removed(st: &mut PodState, inp: &Input<'_>, effects: &mut Vec<Effect>) {
    match inp.deletion {
        Deletion::Gone => st.finished = true,
        // Deleting, or a pod whose sandbox never came: the object goes once nothing is left.
        _ => effects.push(Effect::DeleteObject),
    }
}

fn active(st: &mut PodState, inp: &Input<'_>, effects: &mut Vec<Effect>, wake: &mut i64) {
    let now = inp.now_ms;
    let Some(rec) = st.record.as_mut() else {
        match inp.handler {
            Err(msg) => {
                if st.handler_error.as_deref() != Some(msg) {
                    effects.push(Effect::Event {
                        warning: true,
                        reason: "FailedCreatePodSandBox".into(),
                        message: msg.to_string(),
                    });
                    st.handler_error = Some(msg.to_string());
                }
            }
            Ok(h) => {
                st.handler_error = None;
                if now >= st.sandbox_not_before_ms {
                    effects.push(Effect::CreateSandbox(h.clone()));
                } else {
                    *wake = st.sandbox_not_before_ms;
                }
            }
        }
        return;
    };
    let policy = restart_policy(inp.pod);
    let now_s = now.div_euclid(1000);
    let pod_name = rec.name.clone();
    let mut initialized = true;
    for (init, c) in all_containers(inp.pod) {
        if !initialized {
            break;
        }
        let slot = rec.containers.entry(c.name.clone()).or_default();
        if let Some(id) = slot.id.clone() {
            match inp.runtime.get(&id) {
                Some(RtState::Stopped(code)) => {
                    let code = *code;
                    let term = State::Terminated {
                        exit_code: code,
                        reason: status::exit_reason(code).into(),
                        started_at: slot.started_at.clone(),
                        finished_at: rfc3339(now),
                        container_id: format!("{}://{id}", rec.handler.handler().name),
                    };
                    slot.id = None;
                    effects.push(Effect::Remove(id));
                    let restart = if init {
                        code != 0 && policy != "Never"
                    } else {
                        status::should_restart(&policy, code)
                    };
                    if restart {
                        let delay = status::backoff(slot.restart_count).as_secs() as i64;
                        slot.not_before = Some(now_s + delay);
                        slot.last = Some(term);
                        slot.waiting = Some((
                            "CrashLoopBackOff".into(),
                            Some(format!(
                                "back-off {delay}s restarting failed container={} pod={pod_name}",
                                c.name
                            )),
                        ));
                    } else {
                        slot.done = Some(term);
                    }
                }
                Some(RtState::Created) => effects.push(Effect::StartCreated(id)),
                Some(RtState::Running) => {}
                Some(RtState::Missing) => {
                    slot.id = None;
                    slot.last = Some(State::Terminated {
                        exit_code: 255,
                        reason: "Unknown".into(),
                        started_at: slot.started_at.clone(),
                        finished_at: rfc3339(now),
                        container_id: format!("{}://{id}", rec.handler.handler().name),
                    });
                    effects.push(Effect::Remove(id));
                }
                // Not observed this round (the runtime did not answer): look again later.
                None => {}
            }
        }
        if slot.id.is_none() && slot.done.is_none() {
            match slot.not_before {
                Some(t) if now_s < t => *wake = (*wake).min(t * 1000),
                _ => effects.push(Effect::StartContainer(c.name.clone())),
            }
        }
        if let Some(id) = slot.id.clone()
            && matches!(inp.runtime.get(&id), Some(RtState::Running))
        {
            probes(slot, c, &id, now, effects, wake);
        }
        if init && !matches!(slot.done, Some(State::Terminated { exit_code: 0, .. })) {
            initialized = false;
        }
    }
}

fn probes(
    slot: &mut Slot,
    c: &Container,
    id: &str,
    now: i64,
    effects: &mut Vec<Effect>,
    wake: &mut i64,
) {
    let started = ms_of(slot.started_at.as_deref());
    if let Some(p) = &c.liveness_probe {
        if slot.liveness.failures >= threshold(p) {
            // Killed here; the next round sees it stopped and restarts it per the policy,
            // like any other exit.
            effects.push(Effect::Event {
                warning: true,
                reason: "Unhealthy".into(),
                message: format!(
                    "Liveness probe failed: container {} will be restarted",
                    c.name
                ),
            });
            effects.push(Effect::Kill {
                id: id.to_string(),
                signal: "SIGKILL",
            });
            slot.liveness = Default::default();
        } else if slot.liveness.due(p, started, now) {
            effects.push(Effect::Probe {
                container: c.name.clone(),
                id: id.to_string(),
                kind: ProbeKind::Liveness,
            });
        } else {
            *wake = (*wake).min(now + period_ms(p));
        }
    }
    if let Some(p) = &c.readiness_probe {
        if slot.probe.due(p, started, now) {
            effects.push(Effect::Probe {
                container: c.name.clone(),
                id: id.to_string(),
                kind: ProbeKind::Readiness,
            });
        } else {
            *wake = (*wake).min(now + period_ms(p));
        }
    }
}

fn threshold(p: &Probe) -> u32 {
    p.failure_threshold.unwrap_or(3).max(1) as u32
}

fn period_ms(p: &Probe) -> i64 {
    i64::from(p.period_seconds.unwrap_or(10).max(1)) * 1000
}

/// Takes an effect's result into the state; may ask for events.
pub fn fold(mut st: PodState, pod: &Pod, done: Done, now: i64) -> (PodState, Vec<Effect>) {
    let mut events = Vec::new();
    match done {
        Done::Sandbox(Ok(rec)) => {
            st.record = Some(*rec);
            st.sandbox_errors = 0;
            st.sandbox_error = None;
        }
        Done::Sandbox(Err(Failure(msg))) => {
            events.push(Effect::Event {
                warning: true,
                reason: "FailedCreatePodSandBox".into(),
                message: msg.clone(),
            });
            st.sandbox_not_before_ms =
                now + status::backoff(st.sandbox_errors).as_millis() as i64 / 10;
            st.sandbox_errors += 1;
            st.sandbox_error = Some(msg);
        }
        Done::Started { name, result } => {
            let Some(rec) = st.record.as_mut() else {
                return (st, events);
            };
            let slot = rec.containers.entry(name.clone()).or_default();
            match result {
                Ok(s) => {
                    slot.id = Some(s.id);
                    slot.restart_count = s.restart_count;
                    slot.image = s.image;
                    slot.image_id = s.image_id;
                    slot.started_at = Some(rfc3339(now));
                    slot.waiting = None;
                    slot.not_before = None;
                    slot.errors = 0;
                    slot.probe = Default::default();
                    slot.liveness = Default::default();
                }
                Err((why, msg)) => {
                    slot.waiting = Some((why.reason().into(), Some(msg.clone())));
                    slot.not_before =
                        Some(now.div_euclid(1000) + status::backoff(slot.errors).as_secs() as i64);
                    slot.errors += 1;
                    events.push(Effect::Event {
                        warning: true,
                        reason: "Failed".into(),
                        message: format!("{name}: {msg}"),
                    });
                }
            }
        }
        Done::Probed { name, kind, ok } => {
            let probe = all_containers(pod)
                .into_iter()
                .find(|(_, c)| c.name == name)
                .and_then(|(_, c)| match kind {
                    ProbeKind::Readiness => c.readiness_probe.clone(),
                    ProbeKind::Liveness => c.liveness_probe.clone(),
                });
            if let (Some(p), Some(slot)) = (
                probe,
                st.record.as_mut().and_then(|r| r.containers.get_mut(&name)),
            ) {
                match kind {
                    ProbeKind::Readiness => slot.probe.record(&p, ok, now),
                    ProbeKind::Liveness => slot.liveness.record(&p, ok, now),
                }
            }
        }
        Done::TornDown(Ok(())) => {
            if let Some(rec) = st.record.as_mut() {
                rec.phase = Phase::Removed;
            }
        }
        Done::TornDown(Err(Failure(msg))) => {
            if let Some(rec) = st.record.as_mut() {
                let attempts = match rec.phase {
                    Phase::TearingDown { attempts, .. } => attempts + 1,
                    _ => 1,
                };
                rec.phase = Phase::TearingDown {
                    attempts,
                    not_before_ms: now + teardown_backoff_ms(attempts),
                };
            }
            events.push(Effect::Event {
                warning: true,
                reason: "FailedKillPod".into(),
                message: format!("tearing down the pod sandbox (will retry): {msg}"),
            });
        }
        Done::ObjectDeleted(Ok(())) => st.finished = true,
        // Retried on the next round (the object stays until it goes).
        Done::ObjectDeleted(Err(_)) => {}
    }
    (st, events)
}

fn waiting_views(cs: &[&Container], reason: &str, msg: Option<&str>) -> Vec<ContainerView> {
    cs.iter()
        .map(|c| ContainerView {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            image_id: String::new(),
            container_id: None,
            state: State::Waiting {
                reason: reason.into(),
                message: msg.map(String::from),
            },
            last: None,
            restart_count: 0,
            probe_ready: None,
        })
        .collect()
}

/// The pod status the node reports for this state (sans-IO: `now` is an argument).
pub fn pod_status(st: &PodState, pod: &Pod, host_ip: Option<&str>, now_ms: i64) -> PodStatus {
    let now = rfc3339(now_ms);
    let now_t = status::time_of_millis(now_ms);
    let prev = pod.status.as_ref();
    let policy = restart_policy(pod);
    let all = all_containers(pod);
    let apps: Vec<&Container> = all.iter().filter(|(i, _)| !i).map(|(_, c)| *c).collect();
    let Some(rec) = st.record.as_ref() else {
        let (msg, failure) = match &st.handler_error {
            Some(m) => (None, Some(("RuntimeHandlerNotFound", m.as_str()))),
            None => (st.sandbox_error.as_deref(), None),
        };
        let views = waiting_views(&apps, "ContainerCreating", msg);
        return status::pod_status(
            &views,
            &PodFacts {
                restart_policy: &policy,
                pod_ip: None,
                host_ip,
                start_time: Some(now_t.clone()),
                previous: prev,
                now: now_t,
                failure,
            },
        );
    };
    let hname = rec.handler.handler().name;
    let mut views = Vec::new();
    let mut init_views = Vec::new();
    let mut initialized = true;
    let mut init_failed = false;
    let has_inits = all.iter().any(|(i, _)| *i);
    for (init, c) in &all {
        if !initialized {
            let mut v = waiting_views(&[c], "PodInitializing", None);
            if *init {
                init_views.append(&mut v);
            } else {
                views.append(&mut v);
            }
            continue;
        }
        let slot = rec.containers.get(&c.name).cloned().unwrap_or_default();
        let state = match (&slot.id, &slot.done, &slot.waiting) {
            (Some(_), _, _) => State::Running {
                started_at: slot.started_at.clone().unwrap_or_else(|| now.clone()),
            },
            (None, Some(d), _) => d.clone(),
            (None, None, Some((r, m))) => State::Waiting {
                reason: r.clone(),
                message: m.clone(),
            },
            (None, None, None) => State::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            },
        };
        let view = ContainerView {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            image_id: slot.image_id.clone(),
            container_id: slot.id.as_ref().map(|i| format!("{hname}://{i}")),
            state,
            last: slot.last.clone(),
            restart_count: slot.restart_count,
            probe_ready: c.readiness_probe.as_ref().map(|_| slot.probe.ready),
        };
        if *init {
            match &slot.done {
                Some(State::Terminated { exit_code: 0, .. }) => {}
                Some(State::Terminated { .. }) => {
                    initialized = false;
                    init_failed = true;
                }
                _ => initialized = false,
            }
            init_views.push(view);
        } else {
            views.push(view);
        }
    }
    let mut s = status::pod_status(
        &views,
        &PodFacts {
            restart_policy: &policy,
            pod_ip: rec.ip.as_deref(),
            host_ip,
            start_time: parse_rfc3339(&rec.start_time).ok().map(Time),
            previous: prev,
            now: now_t,
            failure: init_failed.then_some(("InitContainerFailed", "an init container failed")),
        },
    );
    if has_inits {
        s.init_container_statuses = Some(init_views.iter().map(status::container_status).collect());
        if !initialized {
            if !init_failed {
                s.phase = Some("Pending".into());
            }
            for c in s.conditions.iter_mut().flatten() {
                if c.type_ == "Initialized" {
                    c.status = "False".into();
                    c.reason = Some("ContainersNotInitialized".into());
                }
            }
        }
    }
    s
}

#[cfg(test)]
mod tests;

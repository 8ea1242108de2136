//! Pod status as the kubelet reports it, computed from what the agent observed (sans-IO):
//! container states, phase, conditions; restart decisions and CrashLoopBackOff delays.

use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use moat_api::time::{Timestamp, parse_rfc3339};
use serde_json::{Value, json};

/// First restart delay; doubled per restart up to [`BACKOFF_MAX`] (the kubelet's numbers).
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Delay before restart number `restarts + 1`.
pub fn backoff(restarts: u32) -> Duration {
    let secs = BACKOFF_INITIAL
        .as_secs()
        .saturating_mul(1u64 << restarts.min(16));
    Duration::from_secs(secs.min(BACKOFF_MAX.as_secs()))
}

/// Whether a container that exited with `exit_code` is started again under `policy`.
pub fn should_restart(policy: &str, exit_code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// A container's state as the pod records keep it (RFC 3339 text, so records stay readable
/// by `moat ps` and across agent versions); [`State::to_k8s`] makes the API's form.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum State {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: String,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        started_at: Option<String>,
        finished_at: String,
        container_id: String,
    },
}

/// A recorded RFC 3339 time as the API's `Time`; text that does not parse is left out rather
/// than sent for the API server to refuse.
fn time(s: &str) -> Option<Time> {
    parse_rfc3339(s).ok().map(Time)
}

/// Unix milliseconds as the API's `Time`, cut to whole seconds as `metav1.Time` keeps it, so a
/// status computed twice in the same second compares equal (and is not sent twice).
pub fn time_of_millis(ms: i64) -> Time {
    Time(Timestamp::from_second(ms.div_euclid(1000)).unwrap_or(Timestamp::UNIX_EPOCH))
}

impl State {
    pub fn to_k8s(&self) -> ContainerState {
        match self {
            State::Waiting { reason, message } => ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.clone()),
                    message: message.clone(),
                }),
                ..ContainerState::default()
            },
            State::Running { started_at } => ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: time(started_at),
                }),
                ..ContainerState::default()
            },
            State::Terminated {
                exit_code,
                reason,
                started_at,
                finished_at,
                container_id,
            } => ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: *exit_code,
                    reason: Some(reason.clone()),
                    started_at: started_at.as_deref().and_then(time),
                    finished_at: time(finished_at),
                    container_id: Some(container_id.clone()),
                    ..ContainerStateTerminated::default()
                }),
                ..ContainerState::default()
            },
        }
    }
}

/// Terminated reason from an exit code, as the kubelet words it.
pub fn exit_reason(code: i32) -> &'static str {
    match code {
        0 => "Completed",
        137 => "Error",
        _ => "Error",
    }
}

#[derive(Debug, Clone)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    pub image_id: String,
    /// `<handler>://<id>` of the current container, if one exists.
    pub container_id: Option<String>,
    pub state: State,
    pub last: Option<State>,
    pub restart_count: u32,
    /// The readiness probe's verdict; `None` without a probe (running means ready).
    pub probe_ready: Option<bool>,
}

impl ContainerView {
    fn ready(&self) -> bool {
        matches!(self.state, State::Running { .. }) && self.probe_ready.unwrap_or(true)
    }
}

pub struct PodFacts<'a> {
    pub restart_policy: &'a str,
    pub pod_ip: Option<&'a str>,
    pub host_ip: Option<&'a str>,
    pub start_time: Option<Time>,
    /// The previous status, to keep condition transition times stable.
    pub previous: Option<&'a PodStatus>,
    pub now: Time,
    /// A pod-level failure that fails the pod (e.g. its runtime handler does not exist):
    /// (reason, message).
    pub failure: Option<(&'a str, &'a str)>,
}

pub fn phase(views: &[ContainerView], restart_policy: &str) -> &'static str {
    let mut pending = false;
    let mut active = false;
    let mut failed = false;
    for v in views {
        match &v.state {
            State::Waiting { .. } if v.last.is_none() => pending = true,
            State::Waiting { .. } | State::Running { .. } => active = true,
            State::Terminated { exit_code, .. } => {
                if should_restart(restart_policy, *exit_code) {
                    active = true;
                } else if *exit_code != 0 {
                    failed = true;
                }
            }
        }
    }
    if views.is_empty() || pending {
        "Pending"
    } else if active {
        "Running"
    } else if failed {
        "Failed"
    } else {
        "Succeeded"
    }
}

/// One entry of `containerStatuses` / `initContainerStatuses`.
pub fn container_status(v: &ContainerView) -> ContainerStatus {
    ContainerStatus {
        name: v.name.clone(),
        image: v.image.clone(),
        image_id: v.image_id.clone(),
        container_id: v.container_id.clone(),
        ready: v.ready(),
        started: Some(matches!(v.state, State::Running { .. })),
        restart_count: i32::try_from(v.restart_count).unwrap_or(i32::MAX),
        state: Some(v.state.to_k8s()),
        // `{}` rather than absent, as the kubelet reports a container that never ended.
        last_state: Some(v.last.as_ref().map(State::to_k8s).unwrap_or_default()),
        ..ContainerStatus::default()
    }
}

/// The pod's `status` as the node computes it; [`patch_body`] makes the merge patch.
pub fn pod_status(views: &[ContainerView], f: &PodFacts<'_>) -> PodStatus {
    let all_ready = !views.is_empty() && views.iter().all(ContainerView::ready);
    let prev_cond = |t: &str| {
        f.previous
            .and_then(|p| p.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == t))
    };
    let cond = |t: &str, ok: bool, reason: Option<&str>| {
        let status = if ok { "True" } else { "False" };
        let since = prev_cond(t)
            .filter(|c| c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| f.now.clone());
        PodCondition {
            type_: t.into(),
            status: status.into(),
            last_transition_time: Some(since),
            reason: reason.filter(|_| !ok).map(String::from),
            ..PodCondition::default()
        }
    };
    let phase = if f.failure.is_some() {
        "Failed"
    } else {
        phase(views, f.restart_policy)
    };
    PodStatus {
        phase: Some(phase.into()),
        reason: f.failure.map(|x| x.0.into()),
        message: f.failure.map(|x| x.1.into()),
        conditions: Some(vec![
            cond("PodReadyToStartContainers", f.pod_ip.is_some(), None),
            cond("Initialized", true, None),
            cond("Ready", all_ready, Some("ContainersNotReady")),
            cond("ContainersReady", all_ready, Some("ContainersNotReady")),
            cond("PodScheduled", true, None),
        ]),
        host_ip: f.host_ip.map(String::from),
        host_ips: f.host_ip.map(|ip| vec![HostIP { ip: ip.into() }]),
        pod_ip: f.pod_ip.map(String::from),
        pod_ips: f.pod_ip.map(|ip| vec![PodIP { ip: ip.into() }]),
        start_time: f.start_time.clone(),
        container_statuses: Some(views.iter().map(container_status).collect()),
        ..PodStatus::default()
    }
}

/// Fields the node owns that a merge patch must null when absent, or a stale value (an old
/// pod IP, a failure reason) would stay; lists are replaced whole by the patch anyway.
const NULLED_WHEN_ABSENT: [&str; 7] = [
    "reason",
    "message",
    "hostIP",
    "hostIPs",
    "podIP",
    "podIPs",
    "startTime",
];

/// The body of the pods/status merge patch carrying `s`.
pub fn patch_body(s: &PodStatus) -> Value {
    let mut v = serde_json::to_value(s).unwrap_or_else(|_| json!({}));
    if let Some(o) = v.as_object_mut() {
        for k in NULLED_WHEN_ABSENT {
            o.entry(k).or_insert(Value::Null);
        }
    }
    json!({ "status": v })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(state: State, last: Option<State>, restarts: u32) -> ContainerView {
        ContainerView {
            name: "c".into(),
            image: "busybox".into(),
            image_id: "sha256:x".into(),
            container_id: Some("runc://id".into()),
            state,
            last,
            restart_count: restarts,
            probe_ready: None,
        }
    }

    fn term(code: i32) -> State {
        State::Terminated {
            exit_code: code,
            reason: exit_reason(code).into(),
            started_at: None,
            finished_at: T.into(),
            container_id: "runc://id".into(),
        }
    }

    fn waiting(r: &str) -> State {
        State::Waiting {
            reason: r.into(),
            message: None,
        }
    }

    #[test]
    fn backoff_doubles_from_ten_seconds_to_five_minutes() {
        let d: Vec<u64> = (0..7).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(d, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff(1000), BACKOFF_MAX);
    }

    #[test]
    fn restart_policy() {
        assert!(should_restart("Always", 0));
        assert!(should_restart("OnFailure", 1));
        assert!(!should_restart("OnFailure", 0));
        assert!(!should_restart("Never", 1));
    }

    #[test]
    fn phases() {
        let run = State::Running {
            started_at: T.into(),
        };
        assert_eq!(
            phase(&[view(waiting("ContainerCreating"), None, 0)], "Always"),
            "Pending"
        );
        assert_eq!(phase(&[view(run.clone(), None, 0)], "Always"), "Running");
        assert_eq!(
            phase(
                &[view(waiting("CrashLoopBackOff"), Some(term(1)), 2)],
                "Always"
            ),
            "Running"
        );
        assert_eq!(phase(&[view(term(0), None, 0)], "Never"), "Succeeded");
        assert_eq!(phase(&[view(term(3), None, 0)], "Never"), "Failed");
        assert_eq!(phase(&[view(term(0), None, 0)], "OnFailure"), "Succeeded");
        assert_eq!(
            phase(&[view(run, None, 0), view(term(1), None, 0)], "Never"),
            "Running"
        );
    }

    const T: &str = "2026-01-01T00:00:05Z";

    fn facts(prev: &PodStatus) -> PodFacts<'_> {
        PodFacts {
            restart_policy: "Always",
            pod_ip: Some("10.42.0.5"),
            host_ip: Some("192.0.2.1"),
            start_time: time("2026-01-01T00:00:01Z"),
            previous: Some(prev),
            now: time_of_millis(1_767_225_610_900),
            failure: None,
        }
    }

    fn ready_condition(s: &Value) -> Value {
        s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap()
            .clone()
    }

    #[test]
    fn status_object_has_ready_conditions_and_stable_transition_times() {
        let prev: PodStatus = serde_json::from_value(json!({"conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "2025-12-31T23:00:00Z"}]}))
        .unwrap();
        let f = facts(&prev);
        let run = State::Running {
            started_at: T.into(),
        };
        let s = &patch_body(&pod_status(&[view(run, None, 0)], &f))["status"];
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["podIP"], "10.42.0.5");
        assert_eq!(s["podIPs"], json!([{"ip": "10.42.0.5"}]));
        assert_eq!(s["hostIPs"], json!([{"ip": "192.0.2.1"}]));
        assert_eq!(s["startTime"], "2026-01-01T00:00:01Z");
        let ready = ready_condition(s);
        assert_eq!(ready["status"], "True");
        assert_eq!(ready["lastTransitionTime"], "2025-12-31T23:00:00Z");
        assert_eq!(ready.get("reason"), None, "a true condition has no reason");
        assert_eq!(
            s["containerStatuses"][0]["state"]["running"]["startedAt"],
            T
        );
        assert_eq!(s["containerStatuses"][0]["ready"], true);
        assert_eq!(s["containerStatuses"][0]["started"], true);
        assert_eq!(s["containerStatuses"][0]["lastState"], json!({}));
        assert_eq!(s["containerStatuses"][0]["containerID"], "runc://id");
        assert_eq!(s["containerStatuses"][0]["imageID"], "sha256:x");
        let mut unready = view(
            State::Running {
                started_at: T.into(),
            },
            None,
            0,
        );
        unready.probe_ready = Some(false);
        let s2 = &patch_body(&pod_status(&[unready], &f))["status"];
        assert_eq!(s2["containerStatuses"][0]["ready"], false);
        assert_eq!(s2["phase"], "Running");
        let ready = ready_condition(s2);
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["reason"], "ContainersNotReady");

        let s = pod_status(&[view(waiting("CrashLoopBackOff"), Some(term(1)), 3)], &f);
        let s = &patch_body(&s)["status"];
        let ready = ready_condition(s);
        assert_eq!(ready["status"], "False");
        assert_eq!(
            ready["lastTransitionTime"], "2026-01-01T00:00:10Z",
            "a changed condition moves at `now`, cut to the second"
        );
        let last = &s["containerStatuses"][0]["lastState"]["terminated"];
        assert_eq!(last["exitCode"], 1);
        assert_eq!(last["reason"], "Error");
        assert_eq!(last["finishedAt"], T);
        assert_eq!(last.get("startedAt"), None);
        assert_eq!(s["containerStatuses"][0]["restartCount"], 3);
        assert_eq!(
            s["containerStatuses"][0]["state"]["waiting"],
            json!({"reason": "CrashLoopBackOff"})
        );
    }

    #[test]
    fn the_patch_nulls_what_the_node_no_longer_has() {
        let prev = PodStatus::default();
        let mut f = facts(&prev);
        f.pod_ip = None;
        f.host_ip = None;
        let body = patch_body(&pod_status(
            &[view(waiting("ContainerCreating"), None, 0)],
            &f,
        ));
        for k in ["podIP", "podIPs", "hostIP", "hostIPs", "reason", "message"] {
            assert_eq!(body["status"][k], Value::Null, "{k}");
            assert!(body["status"].get(k).is_some(), "{k} is sent as null");
        }
        assert_eq!(body["status"]["phase"], "Pending");
        f.failure = Some(("RuntimeHandlerNotFound", "no handler kata"));
        let body = patch_body(&pod_status(&[], &f));
        assert_eq!(body["status"]["phase"], "Failed");
        assert_eq!(body["status"]["reason"], "RuntimeHandlerNotFound");
        assert_eq!(body["status"]["message"], "no handler kata");
    }

    #[test]
    fn unparseable_record_times_are_left_out() {
        let st = State::Running {
            started_at: "not a time".into(),
        };
        assert_eq!(
            serde_json::to_value(st.to_k8s()).unwrap(),
            json!({"running": {}})
        );
    }
}

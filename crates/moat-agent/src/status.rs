//! Pod status as the kubelet reports it, computed from what the agent observed (sans-IO):
//! container states, phase, conditions; restart decisions and CrashLoopBackOff delays.

use std::time::Duration;

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

impl State {
    pub fn to_json(&self) -> Value {
        match self {
            State::Waiting { reason, message } => {
                let mut w = json!({"reason": reason});
                if let Some(m) = message {
                    w["message"] = json!(m);
                }
                json!({"waiting": w})
            }
            State::Running { started_at } => json!({"running": {"startedAt": started_at}}),
            State::Terminated {
                exit_code,
                reason,
                started_at,
                finished_at,
                container_id,
            } => json!({"terminated": {
                "exitCode": exit_code,
                "reason": reason,
                "startedAt": started_at,
                "finishedAt": finished_at,
                "containerID": container_id,
            }}),
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
    pub start_time: Option<&'a str>,
    /// The previous status, to keep condition transition times stable.
    pub previous: &'a Value,
    pub now: &'a str,
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
pub fn container_status(v: &ContainerView) -> Value {
    json!({
        "name": v.name,
        "image": v.image,
        "imageID": v.image_id,
        "containerID": v.container_id,
        "ready": v.ready(),
        "started": matches!(v.state, State::Running { .. }),
        "restartCount": v.restart_count,
        "state": v.state.to_json(),
        "lastState": v.last.as_ref().map(State::to_json).unwrap_or_else(|| json!({})),
    })
}

/// The full `status` object for a pods/status merge patch (lists are replaced whole; absent
/// scalars are nulled so stale values go away).
pub fn pod_status(views: &[ContainerView], f: &PodFacts<'_>) -> Value {
    let all_ready = !views.is_empty() && views.iter().all(ContainerView::ready);
    let prev_cond = |t: &str| {
        f.previous["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == t))
            .cloned()
    };
    let cond = |t: &str, ok: bool, reason: Option<&str>| {
        let status = if ok { "True" } else { "False" };
        let since = prev_cond(t)
            .filter(|c| c["status"] == status)
            .and_then(|c| c["lastTransitionTime"].as_str().map(String::from))
            .unwrap_or_else(|| f.now.to_string());
        let mut c = json!({"type": t, "status": status, "lastProbeTime": null, "lastTransitionTime": since});
        if let (false, Some(r)) = (ok, reason) {
            c["reason"] = json!(r);
        }
        c
    };
    let phase = if f.failure.is_some() {
        "Failed"
    } else {
        phase(views, f.restart_policy)
    };
    let statuses: Vec<Value> = views.iter().map(container_status).collect();
    json!({
        "phase": phase,
        "reason": f.failure.map(|x| x.0),
        "message": f.failure.map(|x| x.1),
        "conditions": [
            cond("PodReadyToStartContainers", f.pod_ip.is_some(), None),
            cond("Initialized", true, None),
            cond("Ready", all_ready, Some("ContainersNotReady")),
            cond("ContainersReady", all_ready, Some("ContainersNotReady")),
            cond("PodScheduled", true, None),
        ],
        "hostIP": f.host_ip,
        "hostIPs": f.host_ip.map(|ip| json!([{"ip": ip}])),
        "podIP": f.pod_ip,
        "podIPs": f.pod_ip.map(|ip| json!([{"ip": ip}])),
        "startTime": f.start_time,
        "containerStatuses": statuses,
    })
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
            finished_at: "T".into(),
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
            started_at: "T".into(),
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

    #[test]
    fn status_object_has_ready_conditions_and_stable_transition_times() {
        let prev = json!({"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "OLD"}]});
        let f = PodFacts {
            restart_policy: "Always",
            pod_ip: Some("10.42.0.5"),
            host_ip: Some("192.0.2.1"),
            start_time: Some("S"),
            previous: &prev,
            now: "NOW",
            failure: None,
        };
        let run = State::Running {
            started_at: "T".into(),
        };
        let s = pod_status(&[view(run, None, 0)], &f);
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["podIP"], "10.42.0.5");
        assert_eq!(s["podIPs"], json!([{"ip": "10.42.0.5"}]));
        let ready = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "True");
        assert_eq!(ready["lastTransitionTime"], "OLD");
        assert_eq!(
            s["containerStatuses"][0]["state"]["running"]["startedAt"],
            "T"
        );
        assert_eq!(s["containerStatuses"][0]["ready"], true);
        let mut unready = view(
            State::Running {
                started_at: "T".into(),
            },
            None,
            0,
        );
        unready.probe_ready = Some(false);
        let s2 = pod_status(&[unready], &f);
        assert_eq!(s2["containerStatuses"][0]["ready"], false);
        assert_eq!(s2["phase"], "Running");
        let ready = s2["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "False");

        let s = pod_status(&[view(waiting("CrashLoopBackOff"), Some(term(1)), 3)], &f);
        let ready = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["lastTransitionTime"], "NOW");
        assert_eq!(
            s["containerStatuses"][0]["lastState"]["terminated"]["exitCode"],
            1
        );
        assert_eq!(s["containerStatuses"][0]["restartCount"], 3);
    }
}

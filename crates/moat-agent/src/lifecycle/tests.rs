//! The state machine alone: decisions from state + observations + the clock, no IO at all.

use std::collections::BTreeMap;

use serde_json::json;

use super::*;
use crate::handlers::Handlers;

const T0: i64 = 1_800_000_000_000;

fn pod(v: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "u-1"},
        "spec": v,
    }))
    .unwrap()
}

fn plain() -> Pod {
    pod(json!({"containers": [{"name": "c", "image": "busybox"}]}))
}

fn handler() -> Handler {
    Handlers::defaults(std::path::Path::new("/run/x"))
        .get(None)
        .unwrap()
        .clone()
}

fn record(slots: &[(&str, Option<&str>)]) -> PodRecord {
    let h = handler();
    PodRecord {
        uid: "u-1".into(),
        namespace: "default".into(),
        name: "web".into(),
        handler: (&h).into(),
        netns: "/run/netns/u-1".into(),
        host_network: false,
        ipc_ns: None,
        uts_ns: None,
        shm: None,
        ip: Some("10.42.0.9".into()),
        start_time: rfc3339(T0),
        containers: slots
            .iter()
            .map(|(n, id)| {
                (
                    n.to_string(),
                    Slot {
                        id: id.map(String::from),
                        started_at: Some(rfc3339(T0)),
                        ..Default::default()
                    },
                )
            })
            .collect(),
        phase: Phase::Active,
    }
}

fn run(st: PodState, p: &Pod, now: i64, deletion: Deletion, rt: &[(&str, RtState)]) -> Step {
    let h = handler();
    let runtime: BTreeMap<String, RtState> = rt.iter().map(|(i, s)| (i.to_string(), *s)).collect();
    step(
        st,
        &Input {
            pod: p,
            now_ms: now,
            deletion,
            handler: Ok(&h),
            runtime: &runtime,
        },
    )
}

fn with(rec: PodRecord) -> PodState {
    PodState {
        record: Some(rec),
        ..Default::default()
    }
}

#[test]
fn no_sandbox_yet_creates_one_and_a_failure_backs_off() {
    let p = plain();
    let s = run(PodState::default(), &p, T0, Deletion::None, &[]);
    assert_eq!(s.effects, [Effect::CreateSandbox(handler())]);
    let (st, ev) = fold(
        s.state,
        &p,
        Done::Sandbox(Err(Failure("CNI ADD: boom".into()))),
        T0,
    );
    assert!(
        matches!(&ev[..], [Effect::Event { reason, .. }] if reason == "FailedCreatePodSandBox")
    );
    let s = run(st, &p, T0 + 100, Deletion::None, &[]);
    assert!(s.effects.is_empty(), "backing off");
    assert_eq!(s.wake_ms, T0 + 1_000);
    let s = run(s.state, &p, T0 + 1_000, Deletion::None, &[]);
    assert_eq!(s.effects, [Effect::CreateSandbox(handler())]);
}

#[test]
fn exit_with_restart_policy_always_backs_off_exponentially() {
    let p = plain();
    let mut st = with(record(&[("c", Some("u-1-c-0"))]));
    st.record
        .as_mut()
        .unwrap()
        .containers
        .get_mut("c")
        .unwrap()
        .restart_count = 2;
    let s = run(
        st,
        &p,
        T0,
        Deletion::None,
        &[("u-1-c-0", RtState::Stopped(1))],
    );
    assert_eq!(s.effects, [Effect::Remove("u-1-c-0".into())]);
    let slot = &s.state.record.as_ref().unwrap().containers["c"];
    // 10 s doubled per restart: the third restart waits 40 s.
    assert_eq!(slot.not_before, Some(T0 / 1000 + 40));
    assert_eq!(slot.waiting.as_ref().unwrap().0, "CrashLoopBackOff");
    assert_eq!(
        s.wake_ms,
        T0 + 1_000,
        "polls meanwhile, at most a second apart"
    );
    let s2 = run(s.state.clone(), &p, T0 + 39_000, Deletion::None, &[]);
    assert!(s2.effects.is_empty());
    let s3 = run(s.state, &p, T0 + 40_000, Deletion::None, &[]);
    assert_eq!(s3.effects, [Effect::StartContainer("c".into())]);
}

#[test]
fn init_containers_gate_the_app_containers_in_order() {
    let p = pod(
        json!({"initContainers": [{"name": "i1", "image": "b"}, {"name": "i2", "image": "b"}],
        "containers": [{"name": "c", "image": "b"}]}),
    );
    let s = run(with(record(&[])), &p, T0, Deletion::None, &[]);
    assert_eq!(s.effects, [Effect::StartContainer("i1".into())]);
    let mut st = s.state;
    let done = |code| {
        Some(State::Terminated {
            exit_code: code,
            reason: "Completed".into(),
            started_at: None,
            finished_at: rfc3339(T0),
            container_id: String::new(),
        })
    };
    st.record
        .as_mut()
        .unwrap()
        .containers
        .get_mut("i1")
        .unwrap()
        .done = done(0);
    let s = run(st, &p, T0, Deletion::None, &[]);
    assert_eq!(s.effects, [Effect::StartContainer("i2".into())]);
    let mut st = s.state;
    st.record
        .as_mut()
        .unwrap()
        .containers
        .get_mut("i2")
        .unwrap()
        .done = done(0);
    let s = run(st, &p, T0, Deletion::None, &[]);
    assert_eq!(s.effects, [Effect::StartContainer("c".into())]);
}

#[test]
fn probes_run_when_due_and_liveness_failures_kill() {
    let p = pod(json!({"containers": [{"name": "c", "image": "b",
        "livenessProbe": {"exec": {"command": ["x"]}, "failureThreshold": 2, "periodSeconds": 5},
        "readinessProbe": {"exec": {"command": ["y"]}, "periodSeconds": 3}}]}));
    let running = [("u-1-c-0", RtState::Running)];
    let s = run(
        with(record(&[("c", Some("u-1-c-0"))])),
        &p,
        T0,
        Deletion::None,
        &running,
    );
    let kinds: Vec<ProbeKind> = s
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Probe { kind, .. } => Some(*kind),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, [ProbeKind::Liveness, ProbeKind::Readiness]);
    let mut st = s.state;
    for t in [T0, T0 + 5_000] {
        (st, _) = fold(
            st,
            &p,
            Done::Probed {
                name: "c".into(),
                kind: ProbeKind::Liveness,
                ok: false,
            },
            t,
        );
    }
    let s = run(st, &p, T0 + 5_001, Deletion::None, &running);
    assert!(s.effects.contains(&Effect::Kill {
        id: "u-1-c-0".into(),
        signal: "SIGKILL"
    }));
    assert!(
        s.effects
            .iter()
            .any(|e| matches!(e, Effect::Event { reason, .. } if reason == "Unhealthy"))
    );
}

#[test]
fn termination_is_a_deadline_not_a_sleep() {
    let p = plain();
    let alive = [("u-1-c-0", RtState::Running)];
    let s = run(
        with(record(&[("c", Some("u-1-c-0"))])),
        &p,
        T0,
        Deletion::Graceful(30),
        &alive,
    );
    assert_eq!(
        s.effects,
        [Effect::Kill {
            id: "u-1-c-0".into(),
            signal: "SIGTERM"
        }]
    );
    assert_eq!(
        s.state.phase(),
        Phase::Terminating {
            deadline_ms: T0 + 30_000,
            killed: false
        }
    );
    // Inside the grace period: nothing but another look soon.
    let s = run(s.state, &p, T0 + 10_000, Deletion::Graceful(30), &alive);
    assert!(s.effects.is_empty());
    assert_eq!(s.wake_ms, T0 + 10_100);
    // The deadline: SIGKILL, then a short wait for the process to go.
    let s = run(s.state, &p, T0 + 30_000, Deletion::Graceful(30), &alive);
    assert_eq!(
        s.effects,
        [Effect::Kill {
            id: "u-1-c-0".into(),
            signal: "SIGKILL"
        }]
    );
    // Stopped: teardown, then the object.
    let stopped = [("u-1-c-0", RtState::Stopped(137))];
    let s = run(s.state, &p, T0 + 30_200, Deletion::Graceful(30), &stopped);
    assert!(matches!(
        s.state.phase(),
        Phase::TearingDown { attempts: 0, .. }
    ));
    let s = run(s.state, &p, T0 + 30_200, Deletion::Graceful(30), &stopped);
    assert_eq!(s.effects, [Effect::Teardown]);
    let (st, _) = fold(s.state, &p, Done::TornDown(Ok(())), T0 + 30_300);
    let s = run(st, &p, T0 + 30_300, Deletion::Graceful(30), &[]);
    assert_eq!(s.effects, [Effect::DeleteObject]);
    let (st, _) = fold(s.state, &p, Done::ObjectDeleted(Ok(())), T0 + 30_300);
    assert!(st.finished);
}

#[test]
fn a_process_that_exits_on_sigterm_is_torn_down_before_the_deadline() {
    let p = plain();
    let s = run(
        with(record(&[("c", Some("u-1-c-0"))])),
        &p,
        T0,
        Deletion::Graceful(30),
        &[("u-1-c-0", RtState::Running)],
    );
    let s = run(
        s.state,
        &p,
        T0 + 200,
        Deletion::Graceful(30),
        &[("u-1-c-0", RtState::Stopped(143))],
    );
    assert!(matches!(s.state.phase(), Phase::TearingDown { .. }));
}

#[test]
fn teardown_failures_retry_with_growing_backoff_and_keep_the_object() {
    let p = plain();
    let mut st = with(record(&[]));
    st.record.as_mut().unwrap().phase = Phase::TearingDown {
        attempts: 0,
        not_before_ms: T0,
    };
    let mut last_gap = 0;
    for attempt in 1..=4 {
        let (s, ev) = fold(
            st,
            &p,
            Done::TornDown(Err(Failure("CNI DEL: busy".into()))),
            T0,
        );
        assert!(matches!(&ev[..], [Effect::Event { reason, .. }] if reason == "FailedKillPod"));
        let Phase::TearingDown {
            attempts,
            not_before_ms,
        } = s.phase()
        else {
            panic!("{:?}", s.phase())
        };
        assert_eq!(attempts, attempt);
        assert!(not_before_ms - T0 > last_gap, "back-off grows");
        last_gap = not_before_ms - T0;
        let r = run(s.clone(), &p, not_before_ms - 1, Deletion::Graceful(0), &[]);
        assert!(
            r.effects.is_empty(),
            "no object deletion, no retry before the back-off"
        );
        st = s;
    }
}

#[test]
fn a_pod_gone_from_the_api_is_stopped_at_once_and_deletes_nothing() {
    let p = plain();
    let s = run(
        with(record(&[("c", Some("u-1-c-0"))])),
        &p,
        T0,
        Deletion::Gone,
        &[("u-1-c-0", RtState::Running)],
    );
    assert!(matches!(s.state.phase(), Phase::Terminating { deadline_ms, .. } if deadline_ms == T0));
    let mut st = s.state;
    st.record.as_mut().unwrap().phase = Phase::Removed;
    let s = run(st, &p, T0, Deletion::Gone, &[]);
    assert!(s.effects.is_empty());
    assert!(s.state.finished);
    // Never had a sandbox and is deleting: the object goes at once.
    let s = run(PodState::default(), &p, T0, Deletion::Graceful(30), &[]);
    assert_eq!(s.effects, [Effect::DeleteObject]);
}

//! Job plan tests: each rule on hand-made pods, time given.

use serde_json::{Value, json};

use super::*;

const T0: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(T0 + secs).expect("time")
}

fn iso(secs: i64) -> String {
    at(secs).to_string()
}

fn job(spec: Value, status: Value) -> Job {
    let mut s = json!({"selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "j-1"}},
        "template": {"metadata": {"labels": {"batch.kubernetes.io/controller-uid": "j-1", "batch.kubernetes.io/job-name": "pi"}},
                     "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}},
        "parallelism": 1, "completions": 1, "backoffLimit": 6, "completionMode": "NonIndexed"});
    if let (Some(d), Some(src)) = (s.as_object_mut(), spec.as_object()) {
        for (k, v) in src {
            d.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(
        json!({"metadata": {"name": "pi", "namespace": "d", "uid": "j-1"},
        "spec": s, "status": status}),
    )
    .expect("job")
}

fn pod(name: &str, phase: &str, extra: Value) -> Pod {
    let mut v = json!({"metadata": {"name": name, "namespace": "d",
        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "pi", "uid": "j-1", "controller": true}]},
        "spec": {"containers": [{"name": "c"}]}, "status": {"phase": phase}});
    merge(&mut v, &extra);
    serde_json::from_value(v).expect("pod")
}

fn merge(dst: &mut Value, src: &Value) {
    match (dst, src) {
        (Value::Object(d), Value::Object(s)) => {
            for (k, v) in s {
                merge(d.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (d, s) => *d = s.clone(),
    }
}

fn indexed(name: &str, phase: &str, i: i32) -> Pod {
    pod(
        name,
        phase,
        json!({"metadata": {"annotations": {COMPLETION_INDEX: i.to_string()}}}),
    )
}

fn exited(name: &str, code: i32, finished: i64) -> Pod {
    pod(
        name,
        "Failed",
        json!({"status": {"containerStatuses": [{"name": "c", "image": "busybox", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": code, "finishedAt": iso(finished)}}}]}}),
    )
}

fn cfg() -> Config {
    Config::default()
}

fn cond<'a>(st: &'a JobStatus, ty: &str) -> Option<&'a JobCondition> {
    st.conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == ty && c.status == "True")
}

#[test]
fn runs_parallelism_pods_until_completions_succeed() {
    let j = job(json!({"completions": 5, "parallelism": 2}), json!({}));
    let plan = reconcile(&j, &[], at(0), &cfg());
    assert_eq!(plan.create.len(), 2);
    let p = &plan.create[0];
    assert_eq!(p.metadata.generate_name.as_deref(), Some("pi-"));
    assert_eq!(pods::controller_uid(p), Some("j-1"));
    let st = plan.status.expect("status");
    assert_eq!(st.start_time, Some(Time(at(0))));
    assert_eq!(st.active, Some(2), "the new pods count at once");

    // Four done, one running: nothing more (only one completion is left).
    let started = job(
        json!({"completions": 5, "parallelism": 2}),
        json!({"startTime": iso(0)}),
    );
    let mut pods: Vec<Pod> = (0..4)
        .map(|i| pod(&format!("ok{i}"), "Succeeded", json!({})))
        .collect();
    pods.push(pod("run", "Running", json!({})));
    let plan = reconcile(&started, &pods, at(30), &cfg());
    assert!(plan.create.is_empty());
    let st = plan.status.expect("status");
    assert_eq!((st.succeeded, st.active), (Some(4), Some(1)));

    // The fifth succeeds: SuccessCriteriaMet and Complete with completionTime.
    pods.pop();
    pods.push(pod("ok4", "Succeeded", json!({})));
    let plan = reconcile(&started, &pods, at(40), &cfg());
    let st = plan.status.expect("status");
    assert_eq!(
        cond(&st, "Complete").and_then(|c| c.reason.as_deref()),
        Some("CompletionsReached")
    );
    assert!(cond(&st, "SuccessCriteriaMet").is_some());
    assert_eq!(st.completion_time, Some(Time(at(40))));
    assert_eq!(st.succeeded, Some(5));
    assert_eq!(plan.events[0].reason, "Completed");
}

#[test]
fn completion_waits_for_running_pods_to_go() {
    // Completions reached while a surplus pod still runs: it is deleted first.
    let j = job(
        json!({"completions": 1, "parallelism": 2}),
        json!({"startTime": iso(0)}),
    );
    let pods = vec![
        pod("ok", "Succeeded", json!({})),
        pod("extra", "Running", json!({})),
    ];
    let plan = reconcile(&j, &pods, at(5), &cfg());
    assert_eq!(plan.delete, ["extra"]);
    let st = plan.status.expect("status");
    assert!(cond(&st, "SuccessCriteriaMet").is_some());
    assert!(cond(&st, "Complete").is_none());
}

#[test]
fn indexed_jobs_run_each_index_once_with_its_env() {
    let j = job(
        json!({"completionMode": "Indexed", "completions": 5, "parallelism": 3}),
        json!({"startTime": iso(0), "completedIndexes": "0"}),
    );
    let pods = vec![
        indexed("pi-1", "Running", 1),
        indexed("pi-2", "Succeeded", 2),
    ];
    let plan = reconcile(&j, &pods, at(1), &cfg());
    let idx: Vec<String> = plan
        .create
        .iter()
        .map(|p| p.metadata.annotations.as_ref().expect("ann")[COMPLETION_INDEX].clone())
        .collect();
    // 0 and 2 are done, 1 runs: 3 and 4 fill the two free places.
    assert_eq!(idx, ["3", "4"]);
    let p = &plan.create[0];
    assert_eq!(p.metadata.generate_name.as_deref(), Some("pi-3-"));
    assert_eq!(
        p.metadata.labels.as_ref().expect("labels")[COMPLETION_INDEX],
        "3"
    );
    let spec = p.spec.as_ref().expect("spec");
    assert_eq!(spec.hostname.as_deref(), Some("pi-3"));
    let env = &spec.containers[0].env.as_ref().expect("env")[0];
    assert_eq!(env.name, COMPLETION_INDEX_ENV);
    assert_eq!(
        env.value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("metadata.annotations['batch.kubernetes.io/job-completion-index']")
    );
    let st = plan.status.expect("status");
    assert_eq!(st.completed_indexes.as_deref(), Some("0,2"));
    assert_eq!(st.succeeded, Some(2));
}

#[test]
fn indexed_duplicates_are_deleted_and_completion_needs_every_index() {
    let j = job(
        json!({"completionMode": "Indexed", "completions": 3, "parallelism": 3}),
        json!({"startTime": iso(0)}),
    );
    let pods = vec![
        indexed("a", "Succeeded", 0),
        indexed("b", "Succeeded", 0),
        indexed("c", "Running", 1),
        indexed("d", "Running", 1),
    ];
    let plan = reconcile(&j, &pods, at(1), &cfg());
    assert_eq!(plan.delete, ["d"]);
    assert_eq!(plan.create.len(), 1, "index 2");
    assert_eq!(
        plan.status.expect("status").succeeded,
        Some(1),
        "two successes of index 0 count once"
    );
    let done = vec![
        indexed("a", "Succeeded", 0),
        indexed("c", "Succeeded", 1),
        indexed("e", "Succeeded", 2),
    ];
    let st = reconcile(&j, &done, at(9), &cfg()).status.expect("status");
    assert_eq!(st.completed_indexes.as_deref(), Some("0-2"));
    assert!(cond(&st, "Complete").is_some());
}

#[test]
fn failures_back_off_exponentially_then_hit_the_limit() {
    let j = job(json!({"backoffLimit": 2}), json!({"startTime": iso(0)}));
    // One failure at t=10: the replacement waits 10 s.
    let one = vec![exited("f1", 1, 10)];
    let plan = reconcile(&j, &one, at(15), &cfg());
    assert!(plan.create.is_empty());
    assert_eq!(plan.requeue_after, Some(5));
    assert_eq!(plan.status.expect("status").failed, Some(1));
    assert_eq!(reconcile(&j, &one, at(20), &cfg()).create.len(), 1);
    // Two failures, the last at t=40: 20 s.
    let two = vec![exited("f1", 1, 10), exited("f2", 1, 40)];
    assert_eq!(reconcile(&j, &two, at(59), &cfg()).requeue_after, Some(1));
    assert_eq!(reconcile(&j, &two, at(60), &cfg()).create.len(), 1);
    // Three failures > backoffLimit 2: Failed, BackoffLimitExceeded.
    let three = vec![
        exited("f1", 1, 10),
        exited("f2", 1, 40),
        exited("f3", 1, 90),
    ];
    let plan = reconcile(&j, &three, at(91), &cfg());
    assert!(plan.create.is_empty());
    let st = plan.status.expect("status");
    let failed = cond(&st, "Failed").expect("Failed");
    assert_eq!(failed.reason.as_deref(), Some("BackoffLimitExceeded"));
    assert_eq!(
        failed.message.as_deref(),
        Some("Job has reached the specified backoff limit")
    );
    assert!(cond(&st, "FailureTarget").is_some());
    assert!(st.completion_time.is_none());
    assert!(plan.events[0].warning);
}

#[test]
fn failing_with_pods_running_deletes_them_before_failed() {
    let j = job(
        json!({"backoffLimit": 0, "parallelism": 2, "completions": 4}),
        json!({"startTime": iso(0)}),
    );
    let pods = vec![exited("f1", 1, 10), pod("run", "Running", json!({}))];
    let plan = reconcile(&j, &pods, at(11), &cfg());
    assert_eq!(plan.delete, ["run"]);
    let st = plan.status.expect("status");
    assert!(cond(&st, "FailureTarget").is_some());
    assert!(cond(&st, "Failed").is_none());
    // Next pass, the pod gone: Failed, with the FailureTarget's reason.
    let j2 = job(
        json!({"backoffLimit": 0, "parallelism": 2, "completions": 4}),
        serde_json::to_value(&st).expect("st"),
    );
    let st = reconcile(&j2, &[exited("f1", 1, 10)], at(12), &cfg())
        .status
        .expect("status");
    assert_eq!(
        cond(&st, "Failed").and_then(|c| c.reason.as_deref()),
        Some("BackoffLimitExceeded")
    );
}

#[test]
fn pod_failure_policy_fail_job_ignore_and_count() {
    let policy = json!({"podFailurePolicy": {"rules": [
        {"action": "FailJob", "onExitCodes": {"containerName": "c", "operator": "In", "values": [42]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [42]}}]},
        "backoffLimit": 1});
    let j = job(policy, json!({"startTime": iso(0)}));
    let plan = reconcile(&j, &[exited("p", 42, 3)], at(4), &cfg());
    let st = plan.status.expect("status");
    let f = cond(&st, "Failed").expect("Failed");
    assert_eq!(f.reason.as_deref(), Some("PodFailurePolicy"));
    assert_eq!(
        f.message.as_deref(),
        Some("Container c for pod d/p failed with exit code 42 matching FailJob rule at index 0")
    );
    // A disrupted pod is ignored: not counted, replaced at once (no back-off).
    let disrupted = pod(
        "evicted",
        "Failed",
        json!({"status": {"conditions": [{"type": "DisruptionTarget", "status": "True"}]}}),
    );
    let plan = reconcile(&j, std::slice::from_ref(&disrupted), at(4), &cfg());
    assert_eq!(plan.create.len(), 1);
    assert_eq!(plan.status.expect("status").failed, Some(0));
    // Exit code 3 is counted: two of them exceed backoffLimit 1.
    let st = reconcile(&j, &[exited("a", 3, 1), exited("b", 3, 2)], at(4), &cfg())
        .status
        .expect("status");
    assert_eq!(
        cond(&st, "Failed").and_then(|c| c.reason.as_deref()),
        Some("BackoffLimitExceeded")
    );
}

#[test]
fn active_deadline_fails_the_job_and_requeues_until_then() {
    let j = job(
        json!({"activeDeadlineSeconds": 30}),
        json!({"startTime": iso(0)}),
    );
    let running = vec![pod("r", "Running", json!({}))];
    let plan = reconcile(&j, &running, at(10), &cfg());
    assert_eq!(plan.requeue_after, Some(20));
    assert!(plan.delete.is_empty());
    let plan = reconcile(&j, &running, at(30), &cfg());
    assert_eq!(plan.delete, ["r"]);
    let st = plan.status.expect("status");
    assert_eq!(
        cond(&st, "FailureTarget").and_then(|c| c.reason.as_deref()),
        Some("DeadlineExceeded")
    );
}

#[test]
fn on_failure_restarts_count_against_the_limit() {
    let mut j = job(json!({"backoffLimit": 2}), json!({"startTime": iso(0)}));
    if let Some(t) = j.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        t.restart_policy = Some("OnFailure".into());
    }
    let restarting = pod(
        "r",
        "Running",
        json!({"status": {"containerStatuses": [{"name": "c", "image": "busybox", "imageID": "", "ready": false, "restartCount": 2}]}}),
    );
    let st = reconcile(&j, &[restarting], at(5), &cfg())
        .status
        .expect("status");
    assert!(cond(&st, "FailureTarget").is_some());
}

#[test]
fn suspend_deletes_pods_and_resume_restarts_the_clock() {
    let j = job(json!({"suspend": true}), json!({"startTime": iso(0)}));
    let plan = reconcile(&j, &[pod("r", "Running", json!({}))], at(5), &cfg());
    assert_eq!(plan.delete, ["r"]);
    assert!(plan.create.is_empty());
    let st = plan.status.expect("status");
    assert_eq!(
        cond(&st, "Suspended").and_then(|c| c.reason.as_deref()),
        Some("JobSuspended")
    );
    assert!(st.start_time.is_none());
    let resumed = job(
        json!({"suspend": false}),
        serde_json::to_value(&st).expect("st"),
    );
    let plan = reconcile(&resumed, &[], at(50), &cfg());
    assert_eq!(plan.create.len(), 1);
    let st = plan.status.expect("status");
    let c = st
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Suspended")
        .expect("cond");
    assert_eq!(
        (c.status.as_str(), c.reason.as_deref()),
        ("False", Some("JobResumed"))
    );
    assert_eq!(st.start_time, Some(Time(at(50))));
}

#[test]
fn finished_jobs_are_deleted_after_their_ttl() {
    let done = json!({"startTime": iso(0), "completionTime": iso(10), "succeeded": 1,
        "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": iso(10)}]});
    let j = job(json!({"ttlSecondsAfterFinished": 5}), done.clone());
    let plan = reconcile(&j, &[pod("ok", "Succeeded", json!({}))], at(12), &cfg());
    assert!(!plan.delete_job);
    assert_eq!(plan.requeue_after, Some(3));
    assert!(
        plan.status.is_none(),
        "a finished Job's status is left alone"
    );
    assert!(reconcile(&j, &[], at(15), &cfg()).delete_job);
    let keep = job(json!({}), done);
    assert!(!reconcile(&keep, &[], at(1000), &cfg()).delete_job);
}

#[test]
fn work_queue_jobs_complete_on_first_success_once_others_stop() {
    let j = job(
        json!({"completions": null, "parallelism": 3}),
        json!({"startTime": iso(0)}),
    );
    let plan = reconcile(&j, &[], at(1), &cfg());
    assert_eq!(plan.create.len(), 3);
    let pods = vec![
        pod("a", "Succeeded", json!({})),
        pod("b", "Running", json!({})),
    ];
    let plan = reconcile(&j, &pods, at(2), &cfg());
    assert!(plan.create.is_empty());
    assert!(plan.delete.is_empty(), "the others finish on their own");
    assert!(
        cond(&plan.status.clone().expect("status"), "Complete").is_none(),
        "{:?}",
        plan.status
    );
    let st = reconcile(&j, &pods[..1], at(3), &cfg())
        .status
        .expect("status");
    assert!(cond(&st, "Complete").is_some());
}

#[test]
fn counts_never_go_down_and_others_pods_are_ignored() {
    let j = job(
        json!({"completions": 3}),
        json!({"startTime": iso(0), "succeeded": 2, "failed": 1}),
    );
    let mut theirs = pod("theirs", "Succeeded", json!({}));
    theirs.metadata.owner_references = None;
    let plan = reconcile(&j, &[theirs], at(1), &cfg());
    assert_eq!(plan.create.len(), 1);
    // Nothing changed: no status write.
    let st = plan.status.unwrap_or_else(|| j.status.clone().expect("st"));
    assert_eq!((st.succeeded, st.failed), (Some(2), Some(1)));
}

#[test]
fn index_sets_format_like_upstream() {
    let s = parse_indexes("0,2-4,7");
    assert_eq!(s.iter().copied().collect::<Vec<_>>(), [0, 2, 3, 4, 7]);
    assert_eq!(format_indexes(&s), "0,2-4,7");
    assert_eq!(format_indexes(&parse_indexes("1,2")), "1-2");
    assert_eq!(format_indexes(&BTreeSet::new()), "");
}

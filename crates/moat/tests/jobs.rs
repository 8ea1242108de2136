//! Jobs end to end through the real kubectl, the test playing the kubelet of one Node: a
//! bound pod whose command says `exit N` (N > 0) fails with that exit code, any other
//! succeeds. Covers `kubectl create job` (a protobuf body), completions/parallelism, Indexed
//! pods, backoffLimit → Failed/BackoffLimitExceeded, `kubectl wait`, ttlSecondsAfterFinished,
//! the Job table, `kubectl explain`, and 422s for bad specs and template changes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Server, eventually, now};
use serde_json::{Value, json};

/// Plays the kubelet: runs bound pods to completion instantly.
fn fake_kubelet(c: moat_manager::Client, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let _ = c.merge_patch(
                "/api/v1/nodes/k1/status",
                &json!({"status": {"conditions": [{"type": "Ready", "status": "True",
                    "lastHeartbeatTime": now(), "lastTransitionTime": now()}]}}),
            );
            if let Ok((pods, _)) = c.list("/api/v1/pods") {
                for p in pods {
                    let (ns, name) = (
                        p["metadata"]["namespace"].as_str().unwrap_or(""),
                        p["metadata"]["name"].as_str().unwrap_or(""),
                    );
                    if p["spec"]["nodeName"].as_str().is_none_or(str::is_empty) {
                        continue;
                    }
                    let path = format!("/api/v1/namespaces/{ns}/pods/{name}");
                    if p["metadata"]["deletionTimestamp"].is_string() {
                        let _ = c.delete(&format!("{path}?gracePeriodSeconds=0"));
                        continue;
                    }
                    if matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")) {
                        continue;
                    }
                    let cmd = p["spec"]["containers"][0]["command"].to_string()
                        + &p["spec"]["containers"][0]["args"].to_string();
                    let code: i64 = cmd
                        .split("exit ")
                        .nth(1)
                        .and_then(|r| r.split(|ch: char| !ch.is_ascii_digit()).next())
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    let phase = if code == 0 { "Succeeded" } else { "Failed" };
                    let cname = p["spec"]["containers"][0]["name"].clone();
                    let _ = c.merge_patch(
                        &format!("{path}/status"),
                        &json!({"status": {"phase": phase, "containerStatuses": [{"name": cname, "image": "busybox",
                            "imageID": "", "ready": false, "restartCount": 0,
                            "state": {"terminated": {"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" },
                                "startedAt": now(), "finishedAt": now()}}}]}}),
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })
}

fn pods_of(k: &common::Kubectl, job: &str) -> Vec<Value> {
    k.json(&[
        "get",
        "pods",
        "-l",
        &format!("batch.kubernetes.io/job-name={job}"),
    ])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn jobs_run_to_completion_fail_at_the_backoff_limit_and_expire() {
    let dir = tempfile::tempdir().expect("dir");
    let s = Server::start(dir.path(), &[]);
    let k = s.kubectl("33");
    let c = moat_manager::Client::from_kubeconfig(&s.dir.join("kubeconfig.yaml")).expect("client");
    c.create(
        "/api/v1/nodes",
        &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "k1"},
        "status": {"allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"}}}),
    )
    .expect("node");
    let stop = Arc::new(AtomicBool::new(false));
    let kubelet = fake_kubelet(c, stop.clone());

    // kubectl create job (sent as protobuf), then wait for Complete.
    k.ok(&[
        "create",
        "job",
        "hello",
        "--image=busybox",
        "--",
        "echo",
        "hi",
    ]);
    k.ok(&[
        "wait",
        "--for=condition=complete",
        "job/hello",
        "--timeout=60s",
    ]);
    let j = k.json(&["get", "job", "hello"]);
    assert_eq!(j["status"]["succeeded"], 1);
    assert!(j["status"]["completionTime"].is_string());
    let uid = j["metadata"]["uid"].as_str().expect("uid");
    assert_eq!(
        j["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
        uid
    );
    let pods = pods_of(&k, "hello");
    assert_eq!(pods.len(), 1);
    let l = &pods[0]["metadata"]["labels"];
    assert_eq!(
        (&l["controller-uid"], &l["job-name"]),
        (&json!(uid), &json!("hello"))
    );
    assert_eq!(pods[0]["metadata"]["ownerReferences"][0]["kind"], "Job");
    let table = k.ok(&["get", "jobs"]);
    let head: Vec<&str> = table
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    assert_eq!(head, ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"]);
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .expect("row")
        .split_whitespace()
        .collect();
    assert_eq!(&row[..3], ["hello", "Complete", "1/1"]);
    let d = k.ok(&["describe", "job", "hello"]);
    assert!(
        d.contains("0 Active (0 Ready) / 1 Succeeded / 0 Failed"),
        "{d}"
    );
    eventually("the Job's events", Duration::from_secs(30), || {
        let d = k.ok(&["describe", "job", "hello"]);
        d.contains("SuccessfulCreate") && d.contains("Completed")
    });
    assert!(k.ok(&["get", "all"]).contains("job.batch/hello"));

    // completions 5, parallelism 2; and an Indexed Job with indices 0..4.
    k.ok_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: batch/v1
kind: Job
metadata: {name: par}
spec:
  completions: 5
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox, command: ["true"]}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: idx}
spec:
  completions: 5
  parallelism: 5
  completionMode: Indexed
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox, command: ["sh", "-c", "echo $JOB_COMPLETION_INDEX"]}]
"#,
    );
    for j in ["par", "idx"] {
        k.ok(&[
            "wait",
            "--for=condition=complete",
            &format!("job/{j}"),
            "--timeout=90s",
        ]);
    }
    let par = pods_of(&k, "par");
    assert_eq!(
        par.iter()
            .filter(|p| p["status"]["phase"] == "Succeeded")
            .count(),
        5
    );
    assert_eq!(
        k.ok(&[
            "get",
            "job",
            "par",
            "-o",
            "jsonpath={.status.succeeded}/{.status.active}"
        ]),
        "5/0"
    );
    let mut idx: Vec<String> = pods_of(&k, "idx")
        .iter()
        .map(|p| {
            assert_eq!(
                p["spec"]["containers"][0]["env"][0]["name"],
                "JOB_COMPLETION_INDEX"
            );
            p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
                .as_str()
                .expect("index")
                .to_string()
        })
        .collect();
    idx.sort();
    assert_eq!(idx, ["0", "1", "2", "3", "4"]);
    assert_eq!(
        k.ok(&[
            "get",
            "job",
            "idx",
            "-o",
            "jsonpath={.status.completedIndexes}"
        ]),
        "0-4"
    );

    // A failing Job stops at backoffLimit 1: two failed pods (10 s back-off between).
    k.ok_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: batch/v1
kind: Job
metadata: {name: boom}
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox, command: ["sh", "-c", "exit 3"]}]
"#,
    );
    k.ok(&[
        "wait",
        "--for=condition=failed",
        "job/boom",
        "--timeout=120s",
    ]);
    let b = k.json(&["get", "job", "boom"]);
    let failed = b["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Failed")
        .cloned()
        .expect("Failed");
    assert_eq!(failed["reason"], "BackoffLimitExceeded");
    assert_eq!(b["status"]["failed"], 2);
    assert_eq!(pods_of(&k, "boom").len(), 2);

    // ttlSecondsAfterFinished removes the Job and its pods.
    k.ok_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: batch/v1
kind: Job
metadata: {name: short}
spec:
  ttlSecondsAfterFinished: 1
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox, command: ["true"]}]
"#,
    );
    eventually("the expired Job to go", Duration::from_secs(60), || {
        !k.run(&["get", "job", "short"]).ok
    });
    eventually("its pods to go", Duration::from_secs(60), || {
        pods_of(&k, "short").is_empty()
    });

    // Bad input: upstream's 422 with field causes, nothing stored.
    let bad = k.run_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: batch/v1
kind: Job
metadata: {name: bad}
spec:
  completionMode: Sometimes
  parallelism: -1
  template:
    spec:
      restartPolicy: Always
      containers: [{name: c, image: busybox}]
"#,
    );
    assert!(!bad.ok);
    for f in [
        "spec.completionMode: Unsupported value: \"Sometimes\"",
        "spec.parallelism: Invalid value: -1",
        "spec.template.spec.restartPolicy: Unsupported value: \"Always\"",
    ] {
        assert!(bad.stderr.contains(f), "{f} in {}", bad.stderr);
    }
    assert!(!k.run(&["get", "job", "bad"]).ok);
    let imm = k.run(&["set", "image", "job/par", "c=alpine"]);
    assert!(!imm.ok);
    assert!(
        imm.stderr
            .contains("spec.template: Invalid value: \"{...}\": field is immutable"),
        "{}",
        imm.stderr
    );
    let ex = k.ok(&["explain", "job.spec.completionMode"]);
    assert!(ex.contains("completionMode"), "{ex}");
    stop.store(true, Ordering::Relaxed);
    let _ = kubelet.join();
}

#[test]
fn cronjobs_fire_on_schedule_and_instantiate_by_hand() {
    let dir = tempfile::tempdir().expect("dir");
    let s = Server::start(dir.path(), &[]);
    let k = s.kubectl("33");
    let c = moat_manager::Client::from_kubeconfig(&s.dir.join("kubeconfig.yaml")).expect("client");
    c.create(
        "/api/v1/nodes",
        &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "k1"},
        "status": {"allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"}}}),
    )
    .expect("node");
    let stop = Arc::new(AtomicBool::new(false));
    let kubelet = fake_kubelet(c, stop.clone());

    // kubectl create cronjob (a protobuf body); one firing within a minute.
    k.ok(&[
        "create",
        "cronjob",
        "tick",
        "--image=busybox",
        "--schedule=*/1 * * * *",
        "--",
        "true",
    ]);
    let head: Vec<String> = k
        .ok(&["get", "cronjobs"])
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(
        head,
        [
            "NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST", "SCHEDULE", "AGE"
        ]
    );
    let mut fired = String::new();
    eventually("a scheduled Job", Duration::from_secs(90), || {
        let jobs = k.json(&["get", "jobs"]);
        fired = jobs["items"]
            .as_array()
            .and_then(|i| i.first())
            .and_then(|j| j["metadata"]["name"].as_str())
            .unwrap_or("")
            .to_string();
        !fired.is_empty()
    });
    let j = k.json(&["get", "job", &fired]);
    assert_eq!(j["metadata"]["ownerReferences"][0]["kind"], "CronJob");
    let minutes = fired
        .strip_prefix("tick-")
        .and_then(|m| m.parse::<i64>().ok())
        .expect("named after its minute");
    let stamp = j["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]
        .as_str()
        .expect("scheduled timestamp");
    assert!(stamp.ends_with(":00+00:00"), "{stamp}");
    assert!(minutes > 29_000_000, "{minutes}");
    k.ok(&[
        "wait",
        "--for=condition=complete",
        &format!("job/{fired}"),
        "--timeout=60s",
    ]);
    eventually("lastScheduleTime", Duration::from_secs(30), || {
        k.json(&["get", "cronjob", "tick"])["status"]["lastScheduleTime"].is_string()
    });

    // By hand: kubectl create job --from=cronjob/tick.
    k.ok(&["create", "job", "manual", "--from=cronjob/tick"]);
    k.ok(&[
        "wait",
        "--for=condition=complete",
        "job/manual",
        "--timeout=60s",
    ]);
    let m = k.json(&["get", "job", "manual"]);
    assert_eq!(
        m["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"],
        "manual"
    );
    assert_eq!(m["metadata"]["ownerReferences"][0]["name"], "tick");

    // A bad schedule and a bad time zone: 422 with field causes, nothing stored.
    let bad = k.run_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: batch/v1
kind: CronJob
metadata: {name: bad}
spec:
  schedule: "every minute"
  timeZone: Mars/Olympus
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{name: c, image: busybox}]
"#,
    );
    assert!(!bad.ok);
    assert!(
        bad.stderr.contains(
            "spec.timeZone: Invalid value: \"Mars/Olympus\": unknown time zone Mars/Olympus"
        ),
        "{}",
        bad.stderr
    );
    assert!(!k.run(&["get", "cronjob", "bad"]).ok);
    let bad = k.run(&[
        "create",
        "cronjob",
        "bad",
        "--image=busybox",
        "--schedule=61 * * * *",
    ]);
    assert!(!bad.ok);
    assert!(
        bad.stderr
            .contains("spec.schedule: Invalid value: \"61 * * * *\": unparseable schedule"),
        "{}",
        bad.stderr
    );
    // Deleting the CronJob takes its Jobs and their pods with it.
    k.ok(&["delete", "cronjob", "tick"]);
    eventually("its Jobs to go", Duration::from_secs(60), || {
        k.json(&["get", "jobs"])["items"]
            .as_array()
            .is_some_and(Vec::is_empty)
    });
    stop.store(true, Ordering::Relaxed);
    let _ = kubelet.join();
}

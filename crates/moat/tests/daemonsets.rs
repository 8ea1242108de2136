//! DaemonSets end to end through the real kubectl, the test playing the kubelets of Node
//! objects: one pod per eligible node, a tainted node skipped, a new node followed, and a
//! rolling update (`set image` + `rollout status`, `rollout restart`, `rollout history` and
//! `rollout undo` through ControllerRevisions) that never has more than one node without a
//! ready daemon pod.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Server, eventually, now};
use serde_json::{Value, json};

/// Plays the kubelets of every Node: heartbeats, bound pods Running and Ready, graceful
/// deletions confirmed.
fn fake_kubelets(c: moat_manager::Client, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut ip = 10u32;
        while !stop.load(Ordering::Relaxed) {
            if let Ok((nodes, _)) = c.list("/api/v1/nodes") {
                for n in nodes {
                    let name = n["metadata"]["name"].as_str().unwrap_or("");
                    let _ = c.merge_patch(
                        &format!("/api/v1/nodes/{name}/status"),
                        &json!({"status": {"conditions": [{"type": "Ready", "status": "True",
                            "lastHeartbeatTime": now(), "lastTransitionTime": now()}]}}),
                    );
                }
            }
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
                    } else if p["status"]["phase"] != "Running" {
                        ip += 1;
                        let _ = c.merge_patch(
                            &format!("{path}/status"),
                            &json!({"status": {"phase": "Running", "podIP": format!("10.42.0.{}", ip % 250 + 2),
                                "conditions": [{"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}]}}),
                        );
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    })
}

fn add_node(c: &moat_manager::Client, name: &str, taints: Value) {
    c.create(
        "/api/v1/nodes",
        &json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {"taints": taints},
            "status": {"allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": now()}]}}),
    )
    .expect("node");
}

/// (node, image, ready) of the DaemonSet's live pods.
fn daemon_pods(k: &common::Kubectl) -> Vec<(String, String, bool)> {
    k.json(&["get", "pods", "-l", "app=agent"])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            let ready = p["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            (
                p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
                p["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                ready,
            )
        })
        .collect()
}

fn nodes_with(pods: &[(String, String, bool)], image: &str) -> Vec<String> {
    let mut v: Vec<String> = pods
        .iter()
        .filter(|(n, i, r)| !n.is_empty() && i == image && *r)
        .map(|(n, _, _)| n.clone())
        .collect();
    v.sort();
    v
}

#[test]
fn daemonsets_follow_nodes_skip_taints_and_roll_one_node_at_a_time() {
    let dir = tempfile::tempdir().expect("dir");
    let s = Server::start(dir.path(), &[]);
    let k = s.kubectl("33");
    let c = moat_manager::Client::from_kubeconfig(&s.dir.join("kubeconfig.yaml")).expect("client");
    add_node(&c, "n1", json!([]));
    add_node(&c, "n2", json!([]));
    add_node(
        &c,
        "gpu",
        json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let kubelets = fake_kubelets(c.clone(), stop.clone());

    k.ok_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers: [{name: c, image: "busybox:1"}]
"#,
    );
    eventually("a ready pod on n1 and n2", Duration::from_secs(60), || {
        nodes_with(&daemon_pods(&k), "busybox:1") == ["n1", "n2"]
    });
    k.ok(&["rollout", "status", "ds/agent", "--timeout=60s"]);
    // The tainted node never gets one; a new node does.
    add_node(&c, "n3", json!([]));
    eventually("the new node's pod", Duration::from_secs(60), || {
        nodes_with(&daemon_pods(&k), "busybox:1") == ["n1", "n2", "n3"]
    });
    assert_eq!(daemon_pods(&k).len(), 3, "exactly one per eligible node");
    let table = k.ok(&["get", "ds", "agent"]);
    let head: Vec<&str> = table
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    assert_eq!(
        head,
        [
            "NAME",
            "DESIRED",
            "CURRENT",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "NODE",
            "SELECTOR",
            "AGE"
        ]
    );
    eventually("status 3/3", Duration::from_secs(30), || {
        let row: Vec<String> = k
            .ok(&["get", "ds", "agent", "--no-headers"])
            .split_whitespace()
            .map(String::from)
            .collect();
        row[1..6] == ["3", "3", "3", "3", "3"]
    });

    // Rolling update: at no point more than one node without a ready pod.
    let worst = Arc::new(Mutex::new(0usize));
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (worst, watching) = (worst.clone(), watching.clone());
        let kc = s.kubectl("33");
        std::thread::spawn(move || {
            while watching.load(Ordering::Relaxed) {
                let pods = daemon_pods(&kc);
                let covered = ["n1", "n2", "n3"]
                    .iter()
                    .filter(|n| pods.iter().any(|(pn, _, r)| pn == *n && *r))
                    .count();
                let mut w = worst.lock().expect("lock");
                *w = (*w).max(3 - covered);
                drop(w);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    k.ok(&["set", "image", "ds/agent", "c=busybox:2"]);
    k.ok(&["rollout", "status", "ds/agent", "--timeout=90s"]);
    eventually("every node on busybox:2", Duration::from_secs(30), || {
        let p = daemon_pods(&k);
        nodes_with(&p, "busybox:2") == ["n1", "n2", "n3"] && p.len() == 3
    });
    k.ok(&["rollout", "restart", "ds/agent"]);
    k.ok(&["rollout", "status", "ds/agent", "--timeout=90s"]);
    // History and undo through ControllerRevisions: back to busybox:2 from the restart.
    let history = k.ok(&["rollout", "history", "ds/agent"]);
    let revisions: Vec<&str> = history
        .lines()
        .skip_while(|l| !l.starts_with("REVISION"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(revisions, ["1", "2", "3"], "{history}");
    k.ok(&["set", "image", "ds/agent", "c=busybox:3"]);
    k.ok(&["rollout", "status", "ds/agent", "--timeout=90s"]);
    k.ok(&["rollout", "undo", "ds/agent"]);
    k.ok(&["rollout", "status", "ds/agent", "--timeout=90s"]);
    eventually(
        "every node back on busybox:2",
        Duration::from_secs(30),
        || {
            let p = daemon_pods(&k);
            nodes_with(&p, "busybox:2") == ["n1", "n2", "n3"] && p.len() == 3
        },
    );
    assert_eq!(
        k.ok(&[
            "get",
            "ds",
            "agent",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}"
        ]),
        "busybox:2"
    );
    watching.store(false, Ordering::Relaxed);
    let _ = watcher.join();
    let worst = *worst.lock().expect("lock");
    assert!(worst <= 1, "{worst} nodes were without a ready pod at once");

    // Bad input: upstream's 422s, and the selector is immutable.
    let bad = k.run_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: bad}
spec:
  selector: {matchLabels: {app: x}}
  updateStrategy: {type: RollingUpdate, rollingUpdate: {maxUnavailable: 0, maxSurge: 0}}
  template:
    metadata: {labels: {app: wrong}}
    spec:
      containers: [{name: c, image: busybox}]
"#,
    );
    assert!(!bad.ok);
    for f in [
        "spec.template.metadata.labels: Invalid value",
        "spec.updateStrategy.rollingUpdate.maxUnavailable: Invalid value: 0: may not be 0 when `maxSurge` is 0",
    ] {
        assert!(bad.stderr.contains(f), "{f} in {}", bad.stderr);
    }
    let imm = k.run(&[
        "patch",
        "ds",
        "agent",
        "--type=merge",
        "-p",
        r#"{"spec":{"selector":{"matchLabels":{"app":"other"}},"template":{"metadata":{"labels":{"app":"other"}}}}}"#,
    ]);
    assert!(!imm.ok);
    assert!(
        imm.stderr.contains("spec.selector") && imm.stderr.contains("field is immutable"),
        "{}",
        imm.stderr
    );
    // Deleting the DaemonSet takes its pods.
    k.ok(&["delete", "ds", "agent"]);
    eventually("the daemon pods to go", Duration::from_secs(60), || {
        daemon_pods(&k).is_empty()
    });
    stop.store(true, Ordering::Relaxed);
    let _ = kubelets.join();
}

//! Deployments end to end through kubectl: scale 2→10→3, an image change followed by
//! `kubectl rollout status` (success), `rollout history`, `rollout undo`. The test plays the
//! kubelets of two Node objects: it marks bound pods Running and Ready and confirms
//! graceful deletions.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Server, eventually, now};
use serde_json::json;

fn fake_kubelets(c: moat_manager::Client, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut ip = 10u32;
        while !stop.load(Ordering::Relaxed) {
            for n in ["k1", "k2"] {
                let _ = c.merge_patch(
                    &format!("/api/v1/nodes/{n}/status"),
                    &json!({"status": {"conditions": [{"type": "Ready", "status": "True",
                        "lastHeartbeatTime": now(), "lastTransitionTime": now()}]}}),
                );
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
                        // Containers stopped: confirm the graceful delete.
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
            std::thread::sleep(Duration::from_millis(300));
        }
    })
}

#[test]
fn scale_rollout_status_history_and_undo() {
    let dir = tempfile::tempdir().expect("dir");
    let s = Server::start(dir.path(), &[]);
    let k = s.kubectl("33");
    let c = moat_manager::Client::from_kubeconfig(&s.dir.join("kubeconfig.yaml")).expect("client");
    for n in ["k1", "k2"] {
        c.create(
            "/api/v1/nodes",
            &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n},
            "status": {"allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"}}}),
        )
        .expect("node");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let kubelets = fake_kubelets(c, stop.clone());
    let live = |image: &str| -> usize {
        k.json(&["get", "pods", "-l", "app=roll"])["items"]
            .as_array()
            .map(|i| {
                i.iter()
                    .filter(|p| {
                        p["metadata"]["deletionTimestamp"].is_null()
                            && p["spec"]["containers"][0]["image"] == image
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    k.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: roll}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: roll}}\n  template:\n    metadata: {labels: {app: roll}}\n    spec:\n      containers: [{name: c, image: \"busybox:1\"}]\n",
    );
    let status = |what: &str| {
        let out = k.ok(&["rollout", "status", "deploy/roll", "--timeout=90s"]);
        assert!(out.contains("successfully rolled out"), "{what}: {out}");
    };
    status("initial");
    assert_eq!(live("busybox:1"), 2);
    k.ok(&["scale", "deploy/roll", "--replicas=10"]);
    status("scaled to 10");
    eventually("10 ready", Duration::from_secs(60), || {
        live("busybox:1") == 10
    });
    k.ok(&["scale", "deploy/roll", "--replicas=3"]);
    status("scaled to 3");
    eventually("3 left", Duration::from_secs(60), || live("busybox:1") == 3);

    // A new image rolls out; rollout status waits for it and succeeds.
    k.ok(&["set", "image", "deploy/roll", "c=busybox:2"]);
    status("image change");
    eventually("3 new pods, no old", Duration::from_secs(60), || {
        live("busybox:2") == 3 && live("busybox:1") == 0
    });
    let h = k.ok(&["rollout", "history", "deploy/roll"]);
    assert!(h.contains('1') && h.contains('2'), "{h}");
    let d = k.json(&["get", "deploy", "roll"]);
    assert_eq!(d["status"]["updatedReplicas"], 3);
    assert_eq!(d["status"]["availableReplicas"], 3);
    assert_eq!(
        d["status"]["observedGeneration"],
        d["metadata"]["generation"]
    );

    // Undo goes back to busybox:1 as revision 3.
    let out = k.ok(&["rollout", "undo", "deploy/roll"]);
    assert!(out.contains("rolled back"), "{out}");
    status("undo");
    eventually("back on the old image", Duration::from_secs(60), || {
        live("busybox:1") == 3 && live("busybox:2") == 0
    });
    assert_eq!(
        k.json(&["get", "deploy", "roll"])["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );
    let ev = k.ok(&["describe", "deploy", "roll"]);
    assert!(ev.contains("ScalingReplicaSet"), "{ev}");
    stop.store(true, Ordering::Relaxed);
    let _ = kubelets.join();
}

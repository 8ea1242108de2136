//! Node lifecycle through the API: pod CIDRs per node, a node whose heartbeats stop goes
//! NotReady and gets the unreachable taints, and its pods are evicted after their
//! toleration and replaced on the other nodes. Timings are shortened with flags; the test
//! plays three kubelets that renew their Leases and post Ready.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Server, eventually, now};
use serde_json::json;

#[test]
fn silent_node_is_tainted_and_its_pods_move() {
    let dir = tempfile::tempdir().expect("dir");
    let s = Server::start(
        dir.path(),
        &[
            "--node-monitor-grace-period",
            "4s",
            "--default-toleration-seconds",
            "3",
        ],
    );
    let k = s.kubectl("33");
    let c = moat_manager::Client::from_kubeconfig(&s.dir.join("kubeconfig.yaml")).expect("client");
    let nodes = ["n1", "n2", "n3"];
    for n in nodes {
        c.create(
            "/api/v1/nodes",
            &json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": n, "labels": {"kubernetes.io/hostname": n}},
                "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}}}),
        )
        .expect("node");
    }
    // The kubelets: renew the Lease and post Ready while alive.
    let alive = Arc::new(Mutex::new(BTreeSet::from(nodes.map(String::from))));
    let stop = Arc::new(AtomicBool::new(false));
    let hb = {
        let (c, alive, stop) = (c.clone(), alive.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let names: Vec<String> = alive
                    .lock()
                    .map(|a| a.iter().cloned().collect())
                    .unwrap_or_default();
                let t = now();
                for n in names {
                    let lease = format!(
                        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{n}"
                    );
                    let body = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": n, "namespace": "kube-node-lease"},
                        "spec": {"holderIdentity": n, "leaseDurationSeconds": 40, "renewTime": t}});
                    if c.merge_patch(&lease, &json!({"spec": {"renewTime": t}}))
                        .is_err()
                    {
                        let _ = c.create(
                            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                            &body,
                        );
                    }
                    let _ = c.merge_patch(
                        &format!("/api/v1/nodes/{n}/status"),
                        &json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "lastHeartbeatTime": t, "lastTransitionTime": t}]}}),
                    );
                }
                std::thread::sleep(Duration::from_millis(700));
            }
        })
    };
    let long = Duration::from_secs(60);
    // Every node gets its own /24 of 10.42.0.0/16.
    eventually("pod CIDRs", long, || {
        let v = k.json(&["get", "nodes"]);
        let cidrs: BTreeSet<String> = v["items"]
            .as_array()
            .map(|i| {
                i.iter()
                    .filter_map(|n| n["spec"]["podCIDR"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        cidrs.len() == 3
            && cidrs
                .iter()
                .all(|c| c.starts_with("10.42.") && c.ends_with(".0/24"))
    });
    k.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: spread}\nspec:\n  replicas: 6\n  selector: {matchLabels: {app: spread}}\n  template:\n    metadata: {labels: {app: spread}}\n    spec:\n      containers: [{name: c, image: busybox}]\n",
    );
    let placement = || -> Vec<(String, String, bool)> {
        k.json(&["get", "pods", "-l", "app=spread"])["items"]
            .as_array()
            .map(|i| {
                i.iter()
                    .map(|p| {
                        (
                            p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                            p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
                            p["metadata"]["deletionTimestamp"].is_null(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    eventually("6 pods bound, some on n3", long, || {
        let p = placement();
        p.iter().filter(|x| x.2 && !x.1.is_empty()).count() == 6 && p.iter().any(|x| x.1 == "n3")
    });
    let on_n3: Vec<String> = placement()
        .into_iter()
        .filter(|x| x.1 == "n3")
        .map(|x| x.0)
        .collect();

    // n3's kubelet goes silent.
    alive.lock().expect("lock").remove("n3");
    eventually("n3 NotReady and tainted", long, || {
        let out = k.ok(&["get", "node", "n3"]);
        let n = k.json(&["get", "node", "n3"]);
        out.contains("NotReady")
            && n["spec"]["taints"].as_array().is_some_and(|t| {
                t.iter().any(|t| {
                    t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == "NoExecute"
                })
            })
    });
    assert!(
        k.ok(&["get", "node", "n1"]).contains(" Ready"),
        "the others stay Ready"
    );
    // After the toleration, n3's pods are evicted and replaced on n1/n2.
    eventually("pods moved off n3", long, || {
        let p = placement();
        let live: Vec<&(String, String, bool)> = p.iter().filter(|x| x.2).collect();
        live.len() == 6 && live.iter().all(|x| x.1 == "n1" || x.1 == "n2")
    });
    let p = placement();
    for name in &on_n3 {
        assert!(
            p.iter().all(|x| &x.0 != name || !x.2),
            "{name} was evicted (terminating or gone)"
        );
    }
    assert!(k.ok(&["get", "events"]).contains("TaintManagerEviction"));

    // n3 comes back: Ready again and untainted.
    alive.lock().expect("lock").insert("n3".into());
    eventually("n3 Ready, taints gone", long, || {
        let n = k.json(&["get", "node", "n3"]);
        n["spec"]["taints"].as_array().is_none_or(|t| t.is_empty())
    });
    stop.store(true, Ordering::Relaxed);
    let _ = hb.join();
}

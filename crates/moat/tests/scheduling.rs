//! Issue 3's seed scenario through real kubectl: three Node objects, an untrusted node with a
//! taint and a label, RuntimeClass `kata` carrying that nodeSelector and toleration. Pods of
//! a Deployment using the class land only there, an identical Deployment without it never
//! does, and the CRI-O annotation path lands there too. Plus FailedScheduling wording and
//! Deployment scaling through the ReplicaSet controller.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn kubectl(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let o = Command::new("/usr/lib/google-cloud-sdk/bin/kubectl.1.32")
        .arg("--kubeconfig")
        .arg(dir.join("kubeconfig.yaml"))
        .arg("--cache-dir")
        .arg(dir.join("kcache"))
        .args(args)
        .output()
        .expect("kubectl");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let (s, out, err) = kubectl(dir, args);
    assert!(s, "kubectl {args:?}: {err}");
    out
}

/// Live pods (name, node). Pods being deleted gracefully are left out: with no node agent
/// on these API-only nodes nobody finishes their termination, as on a real cluster whose
/// kubelet is gone.
fn pods(dir: &Path, selector: &str) -> Vec<(String, String)> {
    let v: serde_json::Value =
        serde_json::from_str(&ok(dir, &["get", "pods", "-l", selector, "-o", "json"]))
            .expect("json");
    v["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

const NODES: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: control-plane, labels: {kubernetes.io/hostname: control-plane}}
status: {allocatable: {cpu: "4", memory: 8Gi, pods: "110"}}
---
apiVersion: v1
kind: Node
metadata: {name: worker, labels: {kubernetes.io/hostname: worker}}
status: {allocatable: {cpu: "4", memory: 8Gi, pods: "110"}}
---
apiVersion: v1
kind: Node
metadata: {name: worker-untrusted, labels: {kubernetes.io/hostname: worker-untrusted, example.org/workload: untrusted}}
spec:
  taints: [{key: example.org/workload, value: untrusted, effect: NoSchedule}]
status: {allocatable: {cpu: "4", memory: 8Gi, pods: "110"}}
"#;

const WORKLOADS: &str = r#"
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata: {name: kata}
handler: kata
scheduling:
  nodeSelector: {example.org/workload: untrusted}
  tolerations: [{key: example.org/workload, operator: Equal, value: untrusted, effect: NoSchedule}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: nginx-untrusted}
spec:
  replicas: 3
  selector: {matchLabels: {app: nginx-untrusted}}
  template:
    metadata: {labels: {app: nginx-untrusted}}
    spec:
      runtimeClassName: kata
      containers: [{name: nginx, image: busybox}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: nginx-trusted}
spec:
  replicas: 3
  selector: {matchLabels: {app: nginx-trusted}}
  template:
    metadata: {labels: {app: nginx-trusted}}
    spec:
      containers: [{name: nginx, image: busybox}]
---
apiVersion: v1
kind: Pod
metadata:
  name: crio-untrusted
  labels: {app: crio}
  annotations: {io.kubernetes.cri-o.TrustedSandbox: "false"}
spec:
  containers: [{name: c, image: busybox}]
---
apiVersion: v1
kind: Pod
metadata: {name: nowhere, labels: {app: nowhere}}
spec:
  nodeSelector: {example.org/workload: untrusted}
  containers: [{name: c, image: busybox}]
"#;

#[test]
fn runtime_class_pods_land_only_on_the_untrusted_node() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let child = Command::new(env!("CARGO_BIN_EXE_moat"))
        .args([
            "server",
            "--disable-agent",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("server");
    let _server = Server(child);
    eventually("kubeconfig", || dir.join("kubeconfig.yaml").exists());
    std::fs::write(dir.join("nodes.yaml"), NODES).expect("write");
    std::fs::write(dir.join("work.yaml"), WORKLOADS).expect("write");
    ok(
        dir,
        &[
            "apply",
            "--validate=false",
            "-f",
            &dir.join("nodes.yaml").display().to_string(),
        ],
    );
    ok(
        dir,
        &[
            "apply",
            "--validate=false",
            "-f",
            &dir.join("work.yaml").display().to_string(),
        ],
    );

    eventually("3+3 pods bound", || {
        let u = pods(dir, "app=nginx-untrusted");
        let t = pods(dir, "app=nginx-trusted");
        u.len() == 3 && t.len() == 3 && u.iter().chain(&t).all(|(_, n)| !n.is_empty())
    });
    for (p, n) in pods(dir, "app=nginx-untrusted") {
        assert_eq!(
            n, "worker-untrusted",
            "{p} (runtimeClassName: kata) must run on the untrusted node"
        );
    }
    for (p, n) in pods(dir, "app=nginx-trusted") {
        assert_ne!(
            n, "worker-untrusted",
            "{p} (no RuntimeClass) must never run on the untrusted node"
        );
    }
    eventually("CRI-O annotated pod bound", || {
        pods(dir, "app=crio").iter().any(|(_, n)| !n.is_empty())
    });
    assert_eq!(pods(dir, "app=crio")[0].1, "worker-untrusted");
    let crio: serde_json::Value =
        serde_json::from_str(&ok(dir, &["get", "pod", "crio-untrusted", "-o", "json"]))
            .expect("json");
    assert_eq!(
        crio["spec"]["runtimeClassName"], "kata",
        "the annotation maps to the untrusted RuntimeClass"
    );

    // Selects the untrusted node without tolerating its taint: kube-scheduler's message.
    let want = "0/3 nodes are available: 1 node(s) had untolerated taint {example.org/workload: untrusted}, 2 node(s) didn't match Pod's node affinity/selector.";
    eventually("FailedScheduling on nowhere", || {
        ok(dir, &["get", "events"]).contains("FailedScheduling")
    });
    let pod: serde_json::Value =
        serde_json::from_str(&ok(dir, &["get", "pod", "nowhere", "-o", "json"])).expect("json");
    let cond = pod["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "PodScheduled"))
        .cloned()
        .expect("PodScheduled");
    assert_eq!(
        (cond["status"].as_str(), cond["message"].as_str()),
        (Some("False"), Some(want))
    );
    let ev = ok(
        dir,
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=nowhere",
            "-o",
            "json",
        ],
    );
    assert!(ev.contains(want), "{ev}");

    // A missing RuntimeClass is refused at admission, with a clear message.
    std::fs::write(dir.join("bad.yaml"), "apiVersion: v1\nkind: Pod\nmetadata: {name: bad}\nspec:\n  runtimeClassName: gvisor\n  containers: [{name: c, image: busybox}]\n").expect("write");
    let (s, _, err) = kubectl(
        dir,
        &[
            "apply",
            "--validate=false",
            "-f",
            &dir.join("bad.yaml").display().to_string(),
        ],
    );
    assert!(
        !s && err.contains("RuntimeClass \"gvisor\" not found"),
        "{err}"
    );

    // Scaling through Deployment -> ReplicaSet -> Pods: 3 -> 10 -> 3.
    ok(
        dir,
        &["scale", "deployment", "nginx-trusted", "--replicas=10"],
    );
    eventually("10 trusted pods", || {
        pods(dir, "app=nginx-trusted").len() == 10
    });
    ok(
        dir,
        &["scale", "deployment", "nginx-trusted", "--replicas=3"],
    );
    eventually("3 trusted pods", || {
        pods(dir, "app=nginx-trusted").len() == 3
    });
    // The 7 removed pods are bound to nodes, so they are deleted gracefully: Terminating
    // until their node agent confirms (none runs here).
    let terminating = ok(dir, &["get", "pods", "-l", "app=nginx-trusted"])
        .lines()
        .filter(|l| l.contains("Terminating"))
        .count();
    assert_eq!(
        terminating, 7,
        "scaled-down pods are terminating gracefully"
    );
    let d: serde_json::Value =
        serde_json::from_str(&ok(dir, &["get", "deploy", "nginx-trusted", "-o", "json"]))
            .expect("json");
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "1"
    );
    assert!(
        ok(dir, &["get", "rs"]).contains("nginx-trusted-"),
        "the Deployment owns a hashed ReplicaSet"
    );
    assert!(ok(dir, &["get", "events"]).contains("ScalingReplicaSet"));
}

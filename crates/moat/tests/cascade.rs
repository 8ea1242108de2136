//! Garbage collection and namespace deletion through kubectl: each cascade mode leaves
//! exactly the right objects.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::time::Duration;

use common::{Server, eventually};

fn deployment(name: &str, replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      containers: [{{name: c, image: busybox}}]\n"
    )
}

fn names(k: &common::Kubectl, what: &str, sel: &str, ns: &str) -> Vec<String> {
    let v = k.json(&["get", what, "-l", sel, "-n", ns]);
    v["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn cascade_modes_and_namespace_deletion() {
    let dir = tempfile::tempdir().expect("dir");
    // No nodes: pods stay unscheduled, so their deletion is immediate (no node agent to
    // wait for) and the test sees only what the garbage collector does.
    let s = Server::start(dir.path(), &[]);
    let k = s.kubectl("33");
    let long = Duration::from_secs(60);
    for name in ["orphan", "fore", "back"] {
        k.ok_stdin(&["apply", "-f", "-"], &deployment(name, 3));
        eventually(&format!("3 pods of {name}"), long, || {
            names(&k, "pods", &format!("app={name}"), "default").len() == 3
        });
    }
    let pods_before = names(&k, "pods", "app=orphan", "default");

    // Orphan: the Deployment goes; its ReplicaSet and pods stay, released.
    k.ok(&["delete", "deploy", "orphan", "--cascade=orphan"]);
    assert!(
        k.run(&["get", "deploy", "orphan"])
            .stderr
            .contains("NotFound")
    );
    let rs = names(&k, "rs", "app=orphan", "default");
    assert_eq!(rs.len(), 1, "{rs:?}");
    let rsv = k.json(&["get", "rs", &rs[0]]);
    assert!(
        rsv["metadata"]["ownerReferences"].is_null(),
        "released: {}",
        rsv["metadata"]
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        names(&k, "pods", "app=orphan", "default"),
        pods_before,
        "pods untouched"
    );

    // Foreground: kubectl returns once the Deployment is gone, which happens only after its
    // ReplicaSet and pods are.
    k.ok(&[
        "delete",
        "deploy",
        "fore",
        "--cascade=foreground",
        "--timeout=60s",
    ]);
    assert!(
        k.run(&["get", "deploy", "fore"])
            .stderr
            .contains("NotFound")
    );
    assert!(names(&k, "rs", "app=fore", "default").is_empty());
    assert!(names(&k, "pods", "app=fore", "default").is_empty());

    // Background: the Deployment goes at once, its dependents after.
    k.ok(&["delete", "deploy", "back"]);
    assert!(
        k.run(&["get", "deploy", "back"])
            .stderr
            .contains("NotFound")
    );
    eventually("background cascade", long, || {
        names(&k, "rs", "app=back", "default").is_empty()
            && names(&k, "pods", "app=back", "default").is_empty()
    });
    // The orphans are still there.
    assert_eq!(names(&k, "pods", "app=orphan", "default").len(), 3);

    // A namespace takes its contents with it, then goes.
    k.ok(&["create", "ns", "doomed"]);
    k.ok(&["create", "cm", "c", "-n", "doomed"]);
    k.ok_stdin(
        &["apply", "-n", "doomed", "-f", "-"],
        &deployment("inner", 2),
    );
    eventually("inner pods", long, || {
        names(&k, "pods", "app=inner", "doomed").len() == 2
    });
    k.ok(&["delete", "ns", "doomed", "--timeout=60s"]);
    assert!(k.run(&["get", "ns", "doomed"]).stderr.contains("NotFound"));
    let all = k.json(&["get", "pods,rs,deploy,cm", "-A"]);
    assert!(
        all["items"]
            .as_array()
            .is_some_and(|i| i.iter().all(|o| o["metadata"]["namespace"] != "doomed")),
        "nothing left of the namespace"
    );
}

//! DaemonSet plan tests on hand-made nodes and pods.

use serde_json::{Value, json};

use super::*;

fn ds(extra: Value) -> DaemonSet {
    let mut v = json!({"metadata": {"name": "agent", "namespace": "kube-system", "uid": "ds-1", "generation": 2},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
                 "template": {"metadata": {"labels": {"app": "agent"}},
                              "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}}}});
    merge(&mut v, &extra);
    serde_json::from_value(v).expect("ds")
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

fn node(name: &str, extra: Value) -> Node {
    let mut v = json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}});
    merge(&mut v, &extra);
    serde_json::from_value(v).expect("node")
}

fn pod(name: &str, node: &str, hash: &str, ready: bool) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "kube-system",
        "creationTimestamp": format!("2026-01-01T00:00:0{}Z", name.len() % 10),
        "labels": {"app": "agent", REVISION_HASH: hash},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent", "uid": "ds-1", "controller": true}]},
        "spec": {"nodeName": node, "containers": [{"name": "c"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}}))
    .expect("pod")
}

fn nodes_of(plan: &DsPlan) -> Vec<String> {
    let mut v: Vec<String> = plan.create.iter().filter_map(pod_node).collect();
    v.sort();
    v
}

#[test]
fn one_pinned_pod_per_eligible_node() {
    let d = ds(json!({"spec": {"template": {"spec": {"nodeSelector": {"role": "worker"}}}}}));
    let nodes = vec![
        node("w1", json!({"metadata": {"labels": {"role": "worker"}}})),
        node("w2", json!({"metadata": {"labels": {"role": "worker"}}})),
        node("db", json!({"metadata": {"labels": {"role": "db"}}})),
        node(
            "tainted",
            json!({"metadata": {"labels": {"role": "worker"}},
            "spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
        ),
        // Cordoned and not ready: daemon pods tolerate both.
        node(
            "cordoned",
            json!({"metadata": {"labels": {"role": "worker"}}, "spec": {"unschedulable": true,
            "taints": [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
                       {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]}}),
        ),
    ];
    let plan = reconcile(&d, &nodes, &[], &[], 0);
    assert_eq!(nodes_of(&plan), ["cordoned", "w1", "w2"]);
    assert_eq!(plan.status.desired_number_scheduled, 3);
    let p = &plan.create[0];
    let hash = current_hash(&d);
    assert_eq!(
        p.metadata.labels.as_ref().expect("labels")[REVISION_HASH],
        hash
    );
    let tols = p
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .expect("tolerations");
    assert!(
        tols.iter()
            .any(|t| t.key.as_deref() == Some("node.kubernetes.io/unreachable"))
    );
    assert_eq!(pods::controller_uid(p), Some("ds-1"));
    // A toleration for the taint makes the tainted node eligible.
    let tol = ds(
        json!({"spec": {"template": {"spec": {"nodeSelector": {"role": "worker"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}}}}),
    );
    assert_eq!(
        nodes_of(&reconcile(&tol, &nodes, &[], &[], 0)),
        ["cordoned", "tainted", "w1", "w2"]
    );
}

#[test]
fn surplus_misplaced_and_failed_pods_are_deleted() {
    let d = ds(json!({"spec": {"template": {"spec": {"nodeSelector": {"role": "worker"}}}}}));
    let h = current_hash(&d);
    let nodes = vec![
        node("w1", json!({"metadata": {"labels": {"role": "worker"}}})),
        node("db", json!({})),
    ];
    let mut failed = pod("f", "w1", &h, false);
    if let Some(s) = failed.status.as_mut() {
        s.phase = Some("Failed".into());
    }
    let pods = vec![
        pod("a", "w1", &h, true),
        pod("bbbb", "w1", &h, true),
        pod("c", "db", &h, true),
        pod("gone", "vanished", &h, true),
        failed,
    ];
    let plan = reconcile(&d, &nodes, &pods, &[], 0);
    assert_eq!(plan.delete, ["bbbb", "c", "f", "gone"]);
    assert!(plan.create.is_empty());
    assert_eq!(plan.status.number_misscheduled, 1);
    assert_eq!(plan.status.current_number_scheduled, 1);
    assert_eq!(plan.status.number_ready, 1);
}

#[test]
fn rolling_update_replaces_one_node_at_a_time() {
    let d = ds(json!({}));
    let h = current_hash(&d);
    let nodes: Vec<Node> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| node(n, json!({})))
        .collect();
    let old = |n: &str| pod(&format!("old-{n}"), n, "oldhash", true);
    // All old and available: one goes (maxUnavailable 1).
    let plan = reconcile(&d, &nodes, &[old("n1"), old("n2"), old("n3")], &[], 0);
    assert_eq!(plan.delete, ["old-n1"]);
    assert!(plan.create.is_empty());
    assert_eq!(plan.status.updated_number_scheduled, Some(0));
    // n1 has no pod (being replaced): create there, delete nothing else meanwhile.
    let plan = reconcile(&d, &nodes, &[old("n2"), old("n3")], &[], 0);
    assert_eq!(nodes_of(&plan), ["n1"]);
    assert!(plan.delete.is_empty());
    // n1's new pod not ready yet: still nothing more.
    let plan = reconcile(
        &d,
        &nodes,
        &[pod("new-n1", "n1", &h, false), old("n2"), old("n3")],
        &[],
        0,
    );
    assert!(plan.delete.is_empty());
    assert_eq!(plan.status.updated_number_scheduled, Some(1));
    // Ready: the next old one goes.
    let plan = reconcile(
        &d,
        &nodes,
        &[pod("new-n1", "n1", &h, true), old("n2"), old("n3")],
        &[],
        0,
    );
    assert_eq!(plan.delete, ["old-n2"]);
    assert_eq!(plan.status.number_available, Some(3));
    // OnDelete: old pods stay.
    let ondelete = ds(json!({"spec": {"updateStrategy": {"type": "OnDelete"}}}));
    let plan = reconcile(
        &ondelete,
        &nodes,
        &[old("n1"), old("n2"), old("n3")],
        &[],
        0,
    );
    assert!(plan.delete.is_empty());
}

#[test]
fn max_surge_starts_the_new_pod_before_stopping_the_old() {
    let d = ds(json!({"spec": {"updateStrategy": {"type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}}}));
    let h = current_hash(&d);
    let nodes: Vec<Node> = ["n1", "n2"].iter().map(|n| node(n, json!({}))).collect();
    let old = |n: &str| pod(&format!("old-{n}"), n, "oldhash", true);
    let plan = reconcile(&d, &nodes, &[old("n1"), old("n2")], &[], 0);
    assert_eq!(nodes_of(&plan), ["n1"]);
    assert!(plan.delete.is_empty());
    let both = [pod("new-n1", "n1", &h, true), old("n1"), old("n2")];
    let plan = reconcile(&d, &nodes, &both, &[], 0);
    assert_eq!(plan.delete, ["old-n1"]);
}

#[test]
fn unscheduled_pods_count_for_the_node_they_are_pinned_to() {
    let d = ds(json!({}));
    let p = pod_for(&d, "n1", &current_hash(&d));
    let mut p = p;
    p.metadata.name = Some("agent-x".into());
    let plan = reconcile(&d, &[node("n1", json!({}))], &[p], &[], 0);
    assert!(plan.create.is_empty(), "the pinned pod is n1's");
    assert_eq!(plan.status.current_number_scheduled, 1);
}

fn rev(name: &str, hash: &str, revision: i64) -> ControllerRevision {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "kube-system",
        "labels": {"app": "agent", REVISION_HASH: hash},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent", "uid": "ds-1", "controller": true}]},
        "revision": revision}))
    .expect("revision")
}

#[test]
fn templates_are_recorded_as_revisions_that_restore_them() {
    let d = ds(json!({}));
    let h = current_hash(&d);
    let plan = reconcile(&d, &[], &[], &[rev("agent-old", "old", 1)], 0);
    let r = plan.create_revision.expect("revision");
    assert_eq!(r.metadata.name, Some(format!("agent-{h}")));
    assert_eq!(r.revision, 2);
    assert_eq!(r.metadata.labels.as_ref().expect("labels")["app"], "agent");
    let data = &r.data.expect("data").0;
    assert_eq!(data["spec"]["template"]["$patch"], "replace");
    assert_eq!(
        data["spec"]["template"]["spec"]["containers"][0]["image"],
        "busybox:1"
    );
    // Back on an old template: its revision becomes the newest.
    let plan = reconcile(
        &d,
        &[],
        &[],
        &[rev(&format!("agent-{h}"), &h, 1), rev("agent-b", "b", 2)],
        0,
    );
    assert!(plan.create_revision.is_none());
    assert_eq!(plan.renumber, Some((format!("agent-{h}"), 3)));
}

#[test]
fn unused_revisions_past_the_limit_are_deleted_oldest_first() {
    let d = ds(json!({"spec": {"revisionHistoryLimit": 1}}));
    let h = current_hash(&d);
    let revs = vec![
        rev("agent-a", "a", 1),
        rev("agent-b", "b", 2),
        rev("agent-c", "c", 3),
        rev(&format!("agent-{h}"), &h, 4),
    ];
    // A pod still runs template b: it is kept.
    let pods = vec![pod("p", "n1", "b", true)];
    let plan = reconcile(&d, &[node("n1", json!({}))], &pods, &revs, 0);
    assert_eq!(plan.delete_revisions, ["agent-a"]);
    let plan = reconcile(&d, &[], &[], &revs, 0);
    assert_eq!(plan.delete_revisions, ["agent-a", "agent-b"]);
}

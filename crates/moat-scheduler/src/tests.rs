//! Scheduler filters and scores, with kube-scheduler's messages.

use serde_json::json;

use super::*;

fn node(v: serde_json::Value) -> NodeInfo {
    NodeInfo::new(serde_json::from_value(v).expect("node json"))
}

fn pod(v: serde_json::Value) -> Pod {
    serde_json::from_value(v).expect("pod json")
}

fn plain_node(name: &str) -> NodeInfo {
    node(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"}}
    }))
}

/// The seed scenario's three nodes: control plane, a trusted worker and the tainted,
/// labelled untrusted worker.
fn seed_nodes() -> Vec<NodeInfo> {
    vec![
        plain_node("control"),
        plain_node("worker"),
        node(json!({
            "metadata": {"name": "worker-untrusted",
                         "labels": {"example.org/workload": "untrusted"}},
            "spec": {"taints": [{"key": "example.org/workload", "value": "untrusted",
                                 "effect": "NoSchedule"}]},
            "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"}}
        })),
    ]
}

fn place(p: &Pod, nodes: &[NodeInfo]) -> Result<String, String> {
    match schedule(p, nodes, 0, 0).expect("readable pod") {
        Ok(pl) => Ok(nodes[pl.node].name.clone()),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn untrusted_pod_with_selector_and_toleration_lands_on_untrusted_node() {
    let p = pod(json!({
        "metadata": {"name": "kata"},
        "spec": {"containers": [{"name": "c"}],
                 "nodeSelector": {"example.org/workload": "untrusted"},
                 "tolerations": [{"key": "example.org/workload", "operator": "Equal",
                                  "value": "untrusted", "effect": "NoSchedule"}]}
    }));
    let nodes = seed_nodes();
    for tie in 0..5 {
        let got = schedule(&p, &nodes, tie as usize, tie)
            .expect("ok")
            .expect("fits");
        assert_eq!(nodes[got.node].name, "worker-untrusted");
    }
}

#[test]
fn plain_pod_never_lands_on_tainted_node() {
    let p = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}}));
    let nodes = seed_nodes();
    for tie in 0..10u64 {
        let got = schedule(&p, &nodes, tie as usize, tie)
            .expect("ok")
            .expect("fits");
        assert_ne!(nodes[got.node].name, "worker-untrusted");
    }
}

#[test]
fn fit_error_uses_kube_scheduler_wording() {
    // Selects the untrusted label but does not tolerate its taint.
    let p = pod(json!({
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c"}],
                 "nodeSelector": {"example.org/workload": "untrusted"}}
    }));
    assert_eq!(
        place(&p, &seed_nodes()),
        Err("0/3 nodes are available: 1 node(s) had untolerated taint {example.org/workload: untrusted}, 2 node(s) didn't match Pod's node affinity/selector.".to_string())
    );
    assert_eq!(
        place(&p, &[]),
        Err("no nodes available to schedule pods".to_string())
    );
}

#[test]
fn cordoned_node_is_skipped_unless_tolerated() {
    let mut nodes = vec![plain_node("a")];
    nodes[0].node.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
        unschedulable: Some(true),
        ..Default::default()
    });
    let p = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}}));
    assert_eq!(
        place(&p, &nodes),
        Err("0/1 nodes are available: 1 node(s) were unschedulable.".to_string())
    );
    let tolerant = pod(
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}],
        "tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists",
                         "effect": "NoSchedule"}]}}),
    );
    assert_eq!(place(&tolerant, &nodes), Ok("a".to_string()));
}

#[test]
fn resources_requests_overhead_and_pod_count() {
    let mut nodes = vec![plain_node("a")];
    let big = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "c", "resources": {"requests": {"cpu": "1500m", "memory": "1Gi"}}}],
        "overhead": {"cpu": "250m", "memory": "160Mi"}}}));
    let req = pod_requests(&big).expect("req");
    assert_eq!(
        req,
        Resources {
            milli_cpu: 1750,
            memory: (1 << 30) + (160 << 20),
            pods: 1
        }
    );
    assert_eq!(place(&big, &nodes), Ok("a".to_string()));
    nodes[0].add_pod(&big, &req);
    assert_eq!(
        place(&big, &nodes),
        Err("0/1 nodes are available: 1 Insufficient cpu.".to_string())
    );
    nodes[0].allocatable.pods = 1;
    let tiny = pod(json!({"metadata": {"name": "t"}, "spec": {"containers": [{"name": "c"}]}}));
    assert_eq!(
        place(&tiny, &nodes),
        Err("0/1 nodes are available: 1 Too many pods.".to_string())
    );
    nodes[0].remove_pod(&big, &req);
    assert_eq!(place(&tiny, &nodes), Ok("a".to_string()));
}

#[test]
fn init_containers_count_as_max_and_limits_default_requests() {
    let p = pod(json!({"metadata": {"name": "p"}, "spec": {
        "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "3"}}}],
        "containers": [{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Mi"}}},
                       {"name": "b", "resources": {"requests": {"cpu": "500m"}}}]}}));
    let r = pod_requests(&p).expect("req");
    assert_eq!(r.milli_cpu, 3000);
    assert_eq!(r.memory, 1 << 20);
}

#[test]
fn bad_quantity_is_a_clear_error() {
    let p = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "c", "resources": {"requests": {"cpu": "lots"}}}]}}));
    let e = schedule(&p, &seed_nodes(), 0, 0).expect_err("bad quantity");
    let msg = e.to_string();
    assert!(
        msg.contains("spec.containers[0].resources.requests[cpu]"),
        "{msg}"
    );
}

#[test]
fn node_affinity_operators() {
    let n = node(
        json!({"metadata": {"name": "n1", "labels": {"zone": "a", "gen": "5"}},
        "status": {"allocatable": {"cpu": "1", "memory": "1Gi"}}}),
    );
    let with = |exprs: serde_json::Value| {
        pod(
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": exprs}]}}}}}),
        )
    };
    let fits = |exprs| place(&with(exprs), std::slice::from_ref(&n)).is_ok();
    assert!(fits(
        json!([{"key": "zone", "operator": "In", "values": ["a", "b"]}])
    ));
    assert!(!fits(
        json!([{"key": "zone", "operator": "NotIn", "values": ["a"]}])
    ));
    assert!(fits(
        json!([{"key": "missing", "operator": "NotIn", "values": ["a"]}])
    ));
    assert!(fits(json!([{"key": "zone", "operator": "Exists"}])));
    assert!(!fits(json!([{"key": "zone", "operator": "DoesNotExist"}])));
    assert!(fits(
        json!([{"key": "gen", "operator": "Gt", "values": ["4"]}])
    ));
    assert!(!fits(
        json!([{"key": "gen", "operator": "Lt", "values": ["5"]}])
    ));
    assert!(
        !fits(json!([{"key": "zone", "operator": "Gt", "values": ["1"]}])),
        "non-numeric"
    );
    // Two expressions in one term are AND-ed.
    assert!(!fits(json!([{"key": "zone", "operator": "Exists"},
                         {"key": "gen", "operator": "Lt", "values": ["2"]}])));
    // matchFields on metadata.name
    let by_name = pod(
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In",
                                                    "values": ["other"]}]},
                                  {"matchFields": [{"key": "metadata.name", "operator": "In",
                                                    "values": ["n1"]}]}]}}}}}),
    );
    assert_eq!(
        place(&by_name, std::slice::from_ref(&n)),
        Ok("n1".to_string()),
        "terms OR"
    );
}

#[test]
fn toleration_matching_rules() {
    let taint = Taint {
        key: "k".into(),
        value: Some("v".into()),
        effect: "NoSchedule".into(),
        ..Default::default()
    };
    let tol = |v: serde_json::Value| -> Toleration { serde_json::from_value(v).expect("tol") };
    assert!(
        tolerates(&tol(json!({"operator": "Exists"})), &taint),
        "wildcard"
    );
    assert!(tolerates(
        &tol(json!({"key": "k", "operator": "Exists"})),
        &taint
    ));
    assert!(
        tolerates(&tol(json!({"key": "k", "value": "v"})), &taint),
        "Equal default"
    );
    assert!(!tolerates(&tol(json!({"key": "k", "value": "w"})), &taint));
    assert!(!tolerates(
        &tol(json!({"key": "k", "operator": "Exists", "effect": "NoExecute"})),
        &taint
    ));
    assert!(!tolerates(
        &tol(json!({"key": "other", "operator": "Exists"})),
        &taint
    ));
}

#[test]
fn prefer_no_schedule_and_preferred_affinity_steer_scores() {
    let mut nodes = vec![plain_node("a"), plain_node("b")];
    nodes[0].node.spec = Some(
        serde_json::from_value(json!({"taints": [
        {"key": "x", "effect": "PreferNoSchedule"}]}))
        .expect("spec"),
    );
    let p = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}}));
    for tie in 0..4 {
        let got = schedule(&p, &nodes, 0, tie).expect("ok").expect("fits");
        assert_eq!(nodes[got.node].name, "b", "PreferNoSchedule avoided");
    }
    let nodes = vec![plain_node("a"), plain_node("b")];
    let pref = pod(
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}],
        "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 10, "preference": {"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": ["a"]}]}}]}}}}),
    );
    for tie in 0..4 {
        let got = schedule(&pref, &nodes, 1, tie).expect("ok").expect("fits");
        assert_eq!(nodes[got.node].name, "a", "preferred affinity wins");
    }
}

#[test]
fn replicas_of_one_owner_spread_across_nodes() {
    let mut nodes = vec![plain_node("a"), plain_node("b"), plain_node("c")];
    let mut counts: HashMap<String, u32> = HashMap::new();
    let mut start = 0;
    for i in 0..9u64 {
        let p = pod(
            json!({"metadata": {"name": format!("p{i}"), "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "rs-uid",
             "controller": true}]},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "10m"}}}]}}),
        );
        let got = schedule(&p, &nodes, start, i).expect("ok").expect("fits");
        start = got.next_start;
        let req = pod_requests(&p).expect("req");
        nodes[got.node].add_pod(&p, &req);
        *counts.entry(nodes[got.node].name.clone()).or_default() += 1;
    }
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        vec![3, 3, 3],
        "{counts:?}"
    );
}

#[test]
fn sampling_bounds_work_on_large_clusters() {
    assert_eq!(feasible_nodes_to_find(50), 50);
    assert_eq!(feasible_nodes_to_find(1000), 420);
    assert_eq!(feasible_nodes_to_find(100_000), 5000);
    let nodes: Vec<NodeInfo> = (0..1000).map(|i| plain_node(&format!("n{i}"))).collect();
    let p = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}}));
    let got = schedule(&p, &nodes, 990, 0).expect("ok").expect("fits");
    assert_eq!(
        got.next_start,
        (990 + 420) % 1000,
        "start rotates by the nodes examined"
    );
}

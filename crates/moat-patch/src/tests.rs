//! Strategic merge patch cases, from the upstream behaviour they follow.

use serde_json::json;

use super::*;

fn deployment() -> serde_json::Value {
    json!({"metadata": {"name": "web", "labels": {"a": "b", "x": "y"}, "finalizers": ["f1"]},
           "spec": {"replicas": 2, "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
                    "template": {"spec": {"containers": [
                        {"name": "c", "image": "busybox:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                         "ports": [{"containerPort": 8080}, {"containerPort": 9090}]},
                        {"name": "d", "image": "busybox:1"}],
                      "tolerations": [{"key": "k", "operator": "Exists"}]}}}})
}

#[test]
fn kubectl_apply_image_change_merges_containers_by_name() {
    // Exactly what kubectl 1.32 sent for changing container d's image and the replicas.
    let patch = json!({"spec": {"replicas": 3, "template": {"spec": {
        "$setElementOrder/containers": [{"name": "c"}, {"name": "d"}],
        "containers": [{"image": "busybox:2", "name": "d"}]}}}});
    let out = strategic_merge("Deployment", &deployment(), &patch).expect("patch");
    let cs = out["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    assert_eq!(cs.len(), 2);
    assert_eq!(cs[0]["name"], "c");
    assert_eq!(
        cs[0]["image"], "busybox:1",
        "untouched container kept whole"
    );
    assert_eq!(cs[0]["env"].as_array().map(|e| e.len()), Some(2));
    assert_eq!(cs[1]["image"], "busybox:2");
    assert_eq!(out["spec"]["replicas"], 3);
}

#[test]
fn null_deletes_and_nested_keyed_lists_merge() {
    let patch = json!({"metadata": {"labels": {"x": null}},
        "spec": {"template": {"spec": {"containers": [{"name": "c",
            "env": [{"name": "B", "value": "20"}, {"name": "C", "value": "3"}],
            "$setElementOrder/env": [{"name": "A"}, {"name": "B"}, {"name": "C"}],
            "ports": [{"containerPort": 9090, "$patch": "delete"}]}]}}}});
    let out = strategic_merge("Deployment", &deployment(), &patch).expect("patch");
    assert_eq!(out["metadata"]["labels"], json!({"a": "b"}));
    let c = &out["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["env"],
        json!([{"name": "A", "value": "1"}, {"name": "B", "value": "20"}, {"name": "C", "value": "3"}])
    );
    assert_eq!(
        c["ports"],
        json!([{"containerPort": 8080}]),
        "$patch: delete removes by merge key"
    );
}

#[test]
fn atomic_lists_are_replaced_and_sets_unioned() {
    let patch = json!({"metadata": {"finalizers": ["f2"], "$deleteFromPrimitiveList/finalizers": ["f1"]},
        "spec": {"template": {"spec": {"tolerations": [{"key": "other", "operator": "Exists"}]}}}});
    let out = strategic_merge("Deployment", &deployment(), &patch).expect("patch");
    assert_eq!(out["metadata"]["finalizers"], json!(["f2"]));
    assert_eq!(
        out["spec"]["template"]["spec"]["tolerations"],
        json!([{"key": "other", "operator": "Exists"}])
    );
}

#[test]
fn retain_keys_clears_the_other_union_member() {
    // RollingUpdate -> Recreate as kubectl sends it.
    let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null}}});
    let out = strategic_merge("Deployment", &deployment(), &patch).expect("patch");
    assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
}

#[test]
fn replace_directive_and_service_ports_by_port() {
    let svc = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443}], "selector": {"app": "a", "b": "c"}}});
    let patch = json!({"spec": {"ports": [{"port": 80, "targetPort": 9000}], "selector": {"$patch": "replace", "app": "z"}}});
    let out = strategic_merge("Service", &svc, &patch).expect("patch");
    assert_eq!(
        out["spec"]["ports"],
        json!([{"port": 80, "targetPort": 9000}, {"port": 443}])
    );
    assert_eq!(out["spec"]["selector"], json!({"app": "z"}));
}

#[test]
fn bad_patches_are_errors() {
    assert!(matches!(
        strategic_merge("Pod", &json!({}), &json!([1])),
        Err(PatchError::NotObject { .. })
    ));
    let e = strategic_merge(
        "Pod",
        &json!({}),
        &json!({"spec": {"containers": [{"image": "x"}]}}),
    )
    .expect_err("no merge key");
    assert_eq!(
        e,
        PatchError::MergeItem {
            path: "spec.containers".into(),
            key: "name".into()
        }
    );
    assert!(matches!(
        strategic_merge("Pod", &json!({}), &json!({"spec": {"$patch": "explode"}})),
        Err(PatchError::Directive { .. })
    ));
}

#[test]
fn empty_patch_changes_nothing() {
    let d = deployment();
    assert_eq!(
        strategic_merge("Deployment", &d, &json!({})).expect("patch"),
        d
    );
}

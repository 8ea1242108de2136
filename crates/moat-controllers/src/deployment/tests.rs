//! Deployment controller plans: rolling update, recreate, revisions, status.

use serde_json::json;

use super::*;

fn deploy(replicas: i32, image: &str, strategy: serde_json::Value) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "d-1", "generation": 2,
                     "annotations": {"kubernetes.io/change-cause": "v", LAST_APPLIED: "{}"}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                 "strategy": strategy,
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "c", "image": image}]}}}
    }))
    .expect("deployment")
}

/// A ReplicaSet as the controller would have created it, with its status filled as if
/// the ReplicaSet controller and pods had caught up (`avail` available of `replicas`).
fn owned_rs(d: &Deployment, replicas: i32, avail: i32, revision: i64, created: &str) -> ReplicaSet {
    let plan = reconcile(d, &[], &[]).expect("plan");
    let mut rs = plan.create.expect("creates a set");
    rs.metadata.uid = Some(format!(
        "uid-{}",
        rs.metadata.name.clone().unwrap_or_default()
    ));
    rs.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        created.parse().expect("ts"),
    ));
    rs.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(REVISION.into(), revision.to_string());
    if let Some(s) = rs.spec.as_mut() {
        s.replicas = Some(replicas);
    }
    rs.status = Some(k8s_openapi::api::apps::v1::ReplicaSetStatus {
        replicas,
        ready_replicas: Some(avail),
        available_replicas: Some(avail),
        ..Default::default()
    });
    rs
}

fn scale_of(plan: &DeployPlan, name: &str) -> Option<i32> {
    plan.scale
        .iter()
        .find(|s| s.name == name)
        .map(|s| s.replicas)
}

#[test]
fn first_sync_creates_hashed_replicaset_with_revision_1() {
    let d = deploy(2, "busybox:1", json!({}));
    let plan = reconcile(&d, &[], &[]).expect("plan");
    let rs = plan.create.expect("new set");
    let hash = rs
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(POD_TEMPLATE_HASH))
        .cloned()
        .expect("hash label");
    assert_eq!(
        rs.metadata.name.as_deref(),
        Some(format!("web-{hash}").as_str())
    );
    assert!(
        hash.chars()
            .all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)),
        "{hash}"
    );
    let spec = rs.spec.expect("spec");
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(
        spec.selector
            .match_labels
            .as_ref()
            .and_then(|m| m.get(POD_TEMPLATE_HASH)),
        Some(&hash)
    );
    let ann = rs.metadata.annotations.expect("annotations");
    assert_eq!(ann.get(REVISION).map(String::as_str), Some("1"));
    assert_eq!(
        ann.get("kubernetes.io/change-cause").map(String::as_str),
        Some("v")
    );
    assert!(
        !ann.contains_key(LAST_APPLIED),
        "kubectl bookkeeping is not inherited"
    );
    assert_eq!(plan.revision.as_deref(), Some("1"));
    let st = plan.status;
    assert_eq!(st.observed_generation, Some(2));
    assert_eq!(st.unavailable_replicas, Some(2));
}

#[test]
fn template_hash_is_stable_and_sensitive() {
    let a = deploy(1, "busybox:1", json!({}))
        .spec
        .expect("spec")
        .template;
    let b = deploy(5, "busybox:1", json!({}))
        .spec
        .expect("spec")
        .template;
    let c = deploy(1, "busybox:2", json!({}))
        .spec
        .expect("spec")
        .template;
    assert_eq!(template_hash(&a, None), template_hash(&b, None));
    assert_ne!(template_hash(&a, None), template_hash(&c, None));
    assert_ne!(
        template_hash(&a, None),
        template_hash(&a, Some(1)),
        "collisionCount changes it"
    );
}

#[test]
fn scaling_without_rollout_scales_the_one_set() {
    let d1 = deploy(2, "busybox:1", json!({}));
    let rs = owned_rs(&d1, 2, 2, 1, "2026-01-01T00:00:00Z");
    let name = rs.metadata.name.clone().expect("name");
    for (want, _) in [(10, ()), (3, ())] {
        let d = deploy(want, "busybox:1", json!({}));
        let plan = reconcile(&d, std::slice::from_ref(&rs), &[]).expect("plan");
        assert!(plan.create.is_none());
        assert_eq!(scale_of(&plan, &name), Some(want));
    }
}

#[test]
fn rolling_update_respects_surge_and_unavailable() {
    // 4 replicas, maxSurge 1, maxUnavailable 0: one new pod at a time, old scaled down only
    // once the new one is available.
    let strat =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}});
    let v1 = deploy(4, "busybox:1", strat.clone());
    let v2 = deploy(4, "busybox:2", strat);
    let old = owned_rs(&v1, 4, 4, 1, "2026-01-01T00:00:00Z");
    let old_name = old.metadata.name.clone().expect("name");

    let plan = reconcile(&v2, std::slice::from_ref(&old), &[]).expect("plan");
    let new = plan.create.clone().expect("new set for new template");
    assert_eq!(
        new.spec.as_ref().and_then(|s| s.replicas),
        Some(1),
        "surge of one"
    );
    assert_eq!(
        scale_of(&plan, &old_name),
        None,
        "nothing old goes before new is available"
    );
    assert_eq!(plan.revision.as_deref(), Some("2"));

    // New set has 1 replica, not yet available: still no scale-down.
    let new1 = owned_rs(&v2, 1, 0, 2, "2026-01-02T00:00:00Z");
    let new_name = new1.metadata.name.clone().expect("name");
    let plan = reconcile(&v2, &[old.clone(), new1], &[]).expect("plan");
    assert_eq!(scale_of(&plan, &old_name), None);
    assert_eq!(
        scale_of(&plan, &new_name),
        None,
        "at max total, no more surge"
    );

    // Once it is available, one old replica goes.
    let new1 = owned_rs(&v2, 1, 1, 2, "2026-01-02T00:00:00Z");
    let plan = reconcile(&v2, &[old.clone(), new1], &[]).expect("plan");
    assert_eq!(scale_of(&plan, &old_name), Some(3));

    // Converged: old at 0, new at 4 and available ⇒ complete.
    let mut old0 = old.clone();
    if let Some(s) = old0.spec.as_mut() {
        s.replicas = Some(0);
    }
    old0.status = Some(Default::default());
    let new4 = owned_rs(&v2, 4, 4, 2, "2026-01-02T00:00:00Z");
    let plan = reconcile(&v2, &[old0, new4], &[]).expect("plan");
    assert!(
        plan.scale
            .iter()
            .all(|s| s.replicas == 4 || s.name != old_name)
    );
    let st = &plan.status;
    assert_eq!(
        (st.replicas, st.updated_replicas, st.available_replicas),
        (Some(4), Some(4), Some(4))
    );
    let progressing = st
        .conditions
        .as_ref()
        .and_then(|c| c.iter().find(|c| c.type_ == "Progressing"))
        .expect("cond");
    assert_eq!(
        progressing.reason.as_deref(),
        Some("NewReplicaSetAvailable")
    );
}

#[test]
fn unhealthy_old_replicas_are_dropped_first() {
    let strat = json!({"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}});
    let v1 = deploy(3, "busybox:1", strat.clone());
    let v2 = deploy(3, "busybox:2", strat);
    // Old set: 3 replicas, only 1 available.
    let old = owned_rs(&v1, 3, 1, 1, "2026-01-01T00:00:00Z");
    let old_name = old.metadata.name.clone().expect("name");
    let new0 = owned_rs(&v2, 0, 0, 2, "2026-01-02T00:00:00Z");
    let plan = reconcile(&v2, &[old, new0], &[]).expect("plan");
    // budget = all(3) - minAvailable(2) - newUnavailable(0) = 1 ⇒ one unhealthy goes.
    assert_eq!(scale_of(&plan, &old_name), Some(2));
}

#[test]
fn recreate_scales_old_to_zero_then_waits_for_pods() {
    let v1 = deploy(2, "busybox:1", json!({"type": "Recreate"}));
    let v2 = deploy(2, "busybox:2", json!({"type": "Recreate"}));
    let old = owned_rs(&v1, 2, 2, 1, "2026-01-01T00:00:00Z");
    let old_name = old.metadata.name.clone().expect("name");
    let plan = reconcile(&v2, std::slice::from_ref(&old), &[]).expect("plan");
    assert_eq!(scale_of(&plan, &old_name), Some(0));
    assert_eq!(
        plan.create
            .as_ref()
            .and_then(|r| r.spec.as_ref())
            .and_then(|s| s.replicas),
        Some(0)
    );

    let mut old0 = old.clone();
    if let Some(s) = old0.spec.as_mut() {
        s.replicas = Some(0);
    }
    let lingering: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": "old-pod", "ownerReferences": [{"apiVersion": "apps/v1",
            "kind": "ReplicaSet", "name": old_name, "uid": old0.metadata.uid, "controller": true}]}}))
        .expect("pod");
    let new0 = owned_rs(&v2, 0, 0, 2, "2026-01-02T00:00:00Z");
    let new_name = new0.metadata.name.clone().expect("name");
    let plan = reconcile(
        &v2,
        &[old0.clone(), new0.clone()],
        std::slice::from_ref(&lingering),
    )
    .expect("plan");
    assert_eq!(
        scale_of(&plan, &new_name),
        None,
        "waits while an old pod remains"
    );
    let plan = reconcile(&v2, &[old0, new0], &[]).expect("plan");
    assert_eq!(scale_of(&plan, &new_name), Some(2));
}

#[test]
fn rollback_reuses_old_set_with_a_new_revision() {
    let v1 = deploy(2, "busybox:1", json!({}));
    let v2 = deploy(2, "busybox:2", json!({}));
    let mut rs1 = owned_rs(&v1, 0, 0, 1, "2026-01-01T00:00:00Z");
    rs1.status = Some(Default::default());
    let rs2 = owned_rs(&v2, 2, 2, 2, "2026-01-02T00:00:00Z");
    let rs1_name = rs1.metadata.name.clone().expect("name");
    // Undo = the deployment's template goes back to v1's.
    let plan = reconcile(&v1, &[rs1, rs2], &[]).expect("plan");
    assert!(plan.create.is_none(), "the v1 set is reused");
    let op = plan
        .scale
        .iter()
        .find(|s| s.name == rs1_name)
        .expect("v1 set updated");
    assert_eq!(op.annotations.get(REVISION).map(String::as_str), Some("3"));
    assert_eq!(plan.revision.as_deref(), Some("3"));
}

#[test]
fn history_limit_deletes_oldest_empty_sets() {
    let mut d = deploy(1, "busybox:9", json!({}));
    if let Some(s) = d.spec.as_mut() {
        s.revision_history_limit = Some(2);
    }
    let mut sets = Vec::new();
    for i in 1..=4 {
        let v = deploy(1, &format!("busybox:{i}"), json!({}));
        let mut rs = owned_rs(&v, 0, 0, i, &format!("2026-01-0{i}T00:00:00Z"));
        rs.status = Some(Default::default());
        sets.push(rs);
    }
    let names: Vec<String> = sets
        .iter()
        .filter_map(|r| r.metadata.name.clone())
        .collect();
    let plan = reconcile(&d, &sets, &[]).expect("plan");
    assert_eq!(plan.delete, names[..2].to_vec());
}

#[test]
fn bad_percent_is_an_error() {
    let d = deploy(1, "x", json!({"rollingUpdate": {"maxSurge": "lots%"}}));
    let e = reconcile(&d, &[], &[]).expect_err("bad");
    assert!(e.to_string().contains("maxSurge"), "{e}");
}

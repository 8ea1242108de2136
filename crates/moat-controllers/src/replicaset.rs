//! ReplicaSet reconcile: keep `spec.replicas` active pods that match the selector, adopt
//! matching orphans, release owned pods that stopped matching, and report status.

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::pods;

/// Upstream caps pod creations per sync ("slow start" batches) at 500.
pub const BURST_REPLICAS: usize = 500;

/// What the ReplicaSet controller should write.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RsPlan {
    /// Pods to create (already carrying labels, generateName and the controller ref).
    pub create: Vec<Pod>,
    /// Names of owned pods to delete, in deletion order.
    pub delete: Vec<String>,
    /// Orphan pods to adopt (set our controller ownerReference).
    pub adopt: Vec<String>,
    /// Owned pods that no longer match the selector (remove our ownerReference).
    pub release: Vec<String>,
    /// The status to write if it differs from the current one.
    pub status: ReplicaSetStatus,
}

/// The controller ownerReference a ReplicaSet puts on its pods.
pub fn owner_ref(rs: &ReplicaSet) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "ReplicaSet".into(),
        name: rs.metadata.name.clone().unwrap_or_default(),
        uid: rs.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A new pod from the ReplicaSet's template.
pub fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let name = rs.metadata.name.clone().unwrap_or_default();
    let tmpl: PodTemplateSpec = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let meta = tmpl.metadata.unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: rs.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![owner_ref(rs)]),
            ..Default::default()
        },
        spec: tmpl.spec,
        status: None,
    }
}

/// Plans one sync of `rs` given every pod in its namespace. `now` is seconds since the
/// epoch (for minReadySeconds).
pub fn reconcile(rs: &ReplicaSet, ns_pods: &[Pod], now: i64) -> RsPlan {
    let mut plan = RsPlan::default();
    let uid = rs.metadata.uid.as_deref().unwrap_or("");
    let Some(spec) = rs.spec.as_ref() else {
        return plan;
    };
    let want = usize::try_from(spec.replicas.unwrap_or(1).max(0)).unwrap_or(0);
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let deleting = rs.metadata.deletion_timestamp.is_some();

    let mut owned: Vec<&Pod> = Vec::new();
    for p in ns_pods {
        let matches =
            moat_api::selector::label_selector_matches(&spec.selector, p.metadata.labels.as_ref());
        match pods::controller_uid(p) {
            Some(o) if o == uid => {
                if matches {
                    owned.push(p);
                } else if let Some(n) = &p.metadata.name {
                    plan.release.push(n.clone());
                }
            }
            // Orphans are adopted only while we are alive and they are not going away.
            None if matches && !deleting && p.metadata.deletion_timestamp.is_none() => {
                if let Some(n) = &p.metadata.name {
                    plan.adopt.push(n.clone());
                }
                owned.push(p);
            }
            _ => {}
        }
    }
    let mut active: Vec<&Pod> = owned
        .iter()
        .copied()
        .filter(|p| pods::is_active(p))
        .collect();

    if !deleting {
        if active.len() < want {
            let n = (want - active.len()).min(BURST_REPLICAS);
            plan.create = (0..n).map(|_| pod_from_template(rs)).collect();
        } else if active.len() > want {
            active.sort_by(|a, b| pods::deletion_order(a, b));
            plan.delete = active[..active.len() - want]
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .collect();
        }
    }

    let tmpl_labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.as_ref());
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(active.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    plan.status = ReplicaSetStatus {
        replicas: count(&|_| true),
        fully_labeled_replicas: Some(count(&|p| {
            tmpl_labels.is_none_or(|tl| {
                tl.iter()
                    .all(|(k, v)| p.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v))
            })
        })),
        ready_replicas: Some(count(&pods::is_ready)),
        available_replicas: Some(count(&|p| pods::is_available(p, min_ready, now))),
        observed_generation: rs.metadata.generation,
        conditions: rs.status.as_ref().and_then(|s| s.conditions.clone()),
        terminating_replicas: None,
    };
    plan
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rs(replicas: i32) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": "web-abc", "namespace": "default", "uid": "rs-1", "generation": 3},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web", "pod-template-hash": "abc"}},
                                  "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
        }))
        .expect("rs")
    }

    fn pod(
        name: &str,
        owner: Option<&str>,
        labels: serde_json::Value,
        extra: serde_json::Value,
    ) -> Pod {
        let mut v = json!({"metadata": {"name": name, "namespace": "default", "labels": labels},
                           "spec": {"containers": [{"name": "c"}]}});
        if let Some(o) = owner {
            v["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "x", "uid": o, "controller": true}]);
        }
        if let (Some(dst), Some(src)) = (v.as_object_mut(), extra.as_object()) {
            for (k, val) in src {
                dst.insert(k.clone(), val.clone());
            }
        }
        serde_json::from_value(v).expect("pod")
    }

    fn ready() -> serde_json::Value {
        json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
               "spec": {"nodeName": "n1", "containers": [{"name": "c"}]}})
    }

    #[test]
    fn scale_up_creates_owned_pods_from_template() {
        let plan = reconcile(&rs(3), &[], 0);
        assert_eq!(plan.create.len(), 3);
        let p = &plan.create[0];
        assert_eq!(p.metadata.generate_name.as_deref(), Some("web-abc-"));
        assert_eq!(
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app"))
                .map(String::as_str),
            Some("web")
        );
        assert_eq!(pods::controller_uid(p), Some("rs-1"));
        assert_eq!(plan.status.replicas, 0);
        assert_eq!(plan.status.observed_generation, Some(3));
    }

    #[test]
    fn scale_down_deletes_unready_and_unscheduled_first() {
        let web = json!({"app": "web"});
        let pods = vec![
            pod("ready-1", Some("rs-1"), web.clone(), ready()),
            pod("pending", Some("rs-1"), web.clone(), json!({})),
            pod("ready-2", Some("rs-1"), web.clone(), ready()),
        ];
        let plan = reconcile(&rs(1), &pods, 0);
        assert!(plan.create.is_empty());
        assert_eq!(plan.delete.len(), 2);
        assert_eq!(plan.delete[0], "pending");
        assert_eq!(plan.status.replicas, 3);
        assert_eq!(plan.status.ready_replicas, Some(2));
    }

    #[test]
    fn adopts_orphans_releases_mismatches_ignores_others() {
        let pods = vec![
            pod("orphan", None, json!({"app": "web"}), ready()),
            pod("stray", Some("rs-1"), json!({"app": "other"}), ready()),
            pod("theirs", Some("rs-2"), json!({"app": "web"}), ready()),
            pod(
                "done",
                Some("rs-1"),
                json!({"app": "web"}),
                json!({"status": {"phase": "Succeeded"}}),
            ),
        ];
        let plan = reconcile(&rs(2), &pods, 0);
        assert_eq!(plan.adopt, vec!["orphan".to_string()]);
        assert_eq!(plan.release, vec!["stray".to_string()]);
        // orphan counts; the finished pod does not, so one more is created.
        assert_eq!(plan.create.len(), 1);
        assert_eq!(plan.status.replicas, 1);
    }

    #[test]
    fn min_ready_seconds_gates_availability() {
        let mut r = rs(1);
        if let Some(s) = r.spec.as_mut() {
            s.min_ready_seconds = Some(10);
        }
        let p = pod(
            "p",
            Some("rs-1"),
            json!({"app": "web"}),
            json!({"status": {"phase": "Running",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}),
        );
        let t0 = 1_767_225_600; // 2026-01-01T00:00:00Z
        assert_eq!(
            reconcile(&r, std::slice::from_ref(&p), t0 + 5)
                .status
                .available_replicas,
            Some(0)
        );
        assert_eq!(
            reconcile(&r, std::slice::from_ref(&p), t0 + 10)
                .status
                .available_replicas,
            Some(1)
        );
    }

    #[test]
    fn deleting_replicaset_creates_nothing() {
        let mut r = rs(3);
        r.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-01-01T00:00:00Z".parse().expect("ts"),
        ));
        let plan = reconcile(
            &r,
            &[pod("orphan", None, json!({"app": "web"}), json!({}))],
            0,
        );
        assert!(plan.create.is_empty());
        assert!(plan.adopt.is_empty());
    }
}

//! The default roles every cluster starts with, as upstream's bootstrap policy defines them
//! (the subset that concerns users and moat's resources): `cluster-admin`, the aggregated
//! `admin`/`edit`/`view` with their `system:aggregate-to-*` parts, `system:discovery`,
//! `system:basic-user` and `system:public-info-viewer`, and their bindings (`cluster-admin` to
//! `system:masters`, the others to `system:authenticated`). Like kube-apiserver, a missing
//! default is created again at every start; existing ones are left as they are.

use moat_store::{Store, StoreError};
use serde_json::{Value, json};

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const READ_WRITE: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

fn urls(urls: &[&str], verbs: &[&str]) -> Value {
    json!({"nonResourceURLs": urls, "verbs": verbs})
}

fn aggregate_to(which: &str) -> Value {
    json!({"clusterRoleSelectors": [{"matchLabels": {format!("rbac.authorization.k8s.io/aggregate-to-{which}"): "true"}}]})
}

/// (name, the aggregated role it feeds, rules, aggregationRule)
type Spec = (
    &'static str,
    Option<&'static str>,
    Vec<Value>,
    Option<Value>,
);

fn cluster_role_specs() -> Vec<Spec> {
    vec![
        (
            "cluster-admin",
            None,
            vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
            None,
        ),
        ("admin", None, vec![], Some(aggregate_to("admin"))),
        ("edit", Some("admin"), vec![], Some(aggregate_to("edit"))),
        ("view", Some("edit"), vec![], Some(aggregate_to("view"))),
        (
            "system:aggregate-to-admin",
            Some("admin"),
            vec![
                rule(
                    &["authorization.k8s.io"],
                    &["localsubjectaccessreviews"],
                    &["create"],
                ),
                rule(
                    &["rbac.authorization.k8s.io"],
                    &["rolebindings", "roles"],
                    READ_WRITE,
                ),
            ],
            None,
        ),
        (
            "system:aggregate-to-edit",
            Some("edit"),
            vec![
                rule(
                    &[""],
                    &[
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                        "secrets",
                        "services/proxy",
                    ],
                    READ,
                ),
                rule(&[""], &["serviceaccounts"], &["impersonate"]),
                rule(
                    &[""],
                    &[
                        "pods",
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                    ],
                    WRITE,
                ),
                rule(&[""], &["pods/eviction"], &["create"]),
                rule(
                    &[""],
                    &[
                        "configmaps",
                        "events",
                        "persistentvolumeclaims",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "secrets",
                        "serviceaccounts",
                        "services",
                        "services/proxy",
                    ],
                    WRITE,
                ),
                rule(&[""], &["serviceaccounts/token"], &["create"]),
                rule(
                    &["apps"],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/scale",
                        "statefulsets",
                        "statefulsets/scale",
                    ],
                    WRITE,
                ),
                rule(&["autoscaling"], &["horizontalpodautoscalers"], WRITE),
                rule(&["batch"], &["cronjobs", "jobs"], WRITE),
                rule(&["policy"], &["poddisruptionbudgets"], WRITE),
                rule(
                    &["networking.k8s.io"],
                    &["ingresses", "networkpolicies"],
                    WRITE,
                ),
                rule(&["coordination.k8s.io"], &["leases"], READ_WRITE),
            ],
            None,
        ),
        (
            "system:aggregate-to-view",
            Some("view"),
            vec![
                rule(
                    &[""],
                    &[
                        "configmaps",
                        "endpoints",
                        "persistentvolumeclaims",
                        "persistentvolumeclaims/status",
                        "pods",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "serviceaccounts",
                        "services",
                        "services/status",
                    ],
                    READ,
                ),
                rule(
                    &[""],
                    &[
                        "bindings",
                        "events",
                        "limitranges",
                        "namespaces/status",
                        "pods/log",
                        "pods/status",
                        "replicationcontrollers/status",
                        "resourcequotas",
                        "resourcequotas/status",
                    ],
                    READ,
                ),
                rule(&[""], &["namespaces"], READ),
                rule(&["discovery.k8s.io"], &["endpointslices"], READ),
                rule(
                    &["apps"],
                    &[
                        "controllerrevisions",
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "statefulsets",
                        "statefulsets/scale",
                        "statefulsets/status",
                    ],
                    READ,
                ),
                rule(
                    &["autoscaling"],
                    &[
                        "horizontalpodautoscalers",
                        "horizontalpodautoscalers/status",
                    ],
                    READ,
                ),
                rule(
                    &["batch"],
                    &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
                    READ,
                ),
                rule(
                    &["policy"],
                    &["poddisruptionbudgets", "poddisruptionbudgets/status"],
                    READ,
                ),
                rule(
                    &["networking.k8s.io"],
                    &["ingresses", "ingresses/status", "networkpolicies"],
                    READ,
                ),
            ],
            None,
        ),
        (
            "system:discovery",
            None,
            vec![urls(
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
                &["get"],
            )],
            None,
        ),
        (
            "system:basic-user",
            None,
            vec![
                rule(
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    &["create"],
                ),
                rule(
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                    &["create"],
                ),
            ],
            None,
        ),
        (
            "system:public-info-viewer",
            None,
            vec![urls(
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
                &["get"],
            )],
            None,
        ),
    ]
}

fn meta(name: &str, uid: &str, now: &str) -> Value {
    json!({"name": name, "uid": uid, "creationTimestamp": now,
        "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
        "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}})
}

/// The default ClusterRoles, aggregated roles already carrying their aggregated rules (as the
/// aggregation controller would have written them).
pub fn cluster_roles(now: &str) -> Vec<Value> {
    let mut out: Vec<Value> = cluster_role_specs()
        .into_iter()
        .map(|(name, to, rules, agg)| {
            let mut m = meta(name, &uuid::Uuid::new_v4().to_string(), now);
            if let Some(to) = to {
                m["labels"][format!("rbac.authorization.k8s.io/aggregate-to-{to}")] = json!("true");
            }
            let mut o = json!({"kind": "ClusterRole", "apiVersion": "rbac.authorization.k8s.io/v1",
                "metadata": m, "rules": rules});
            if let Some(a) = agg {
                o["aggregationRule"] = a;
            }
            o
        })
        .collect();
    let aggregated = super::rbac::aggregate(&out);
    for o in &mut out {
        if o["aggregationRule"].is_object() {
            let name = o["metadata"]["name"].as_str().unwrap_or("");
            o["rules"] = serde_json::to_value(aggregated.get(name)).unwrap_or(json!([]));
        }
    }
    out
}

/// The default ClusterRoleBindings.
pub fn cluster_role_bindings(now: &str) -> Vec<Value> {
    let group =
        |g: &str| json!({"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": g});
    [
        ("cluster-admin", vec![group("system:masters")]),
        ("system:discovery", vec![group("system:authenticated")]),
        ("system:basic-user", vec![group("system:authenticated")]),
        (
            "system:public-info-viewer",
            vec![group("system:authenticated"), group("system:unauthenticated")],
        ),
    ]
    .into_iter()
    .map(|(name, subjects)| {
        json!({"kind": "ClusterRoleBinding", "apiVersion": "rbac.authorization.k8s.io/v1",
            "metadata": meta(name, &uuid::Uuid::new_v4().to_string(), now),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": subjects})
    })
    .collect()
}

/// Creates every default role and binding that is missing.
pub async fn ensure(store: &dyn Store, now: &str) -> Result<(), StoreError> {
    let objs = cluster_roles(now)
        .into_iter()
        .map(|o| ("clusterroles", o))
        .chain(
            cluster_role_bindings(now)
                .into_iter()
                .map(|o| ("clusterrolebindings", o)),
        );
    for (plural, o) in objs {
        let name = o["metadata"]["name"].as_str().unwrap_or("");
        let key = format!("/registry/{plural}.rbac.authorization.k8s.io/{name}");
        match store
            .create(&key, serde_json::to_vec(&o).unwrap_or_default())
            .await
        {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::rbac::{Decision, Snapshot};
    use crate::authz::{Attributes, User};

    #[test]
    fn view_edit_admin_nest_and_bindings_apply() {
        let roles = cluster_roles("2026-01-01T00:00:00Z");
        let rules = |n: &str| {
            roles.iter().find(|r| r["metadata"]["name"] == n).unwrap()["rules"]
                .as_array()
                .unwrap()
                .len()
        };
        assert_eq!(rules("view"), 9);
        assert_eq!(rules("edit"), 9 + 12);
        assert_eq!(rules("admin"), 9 + 12 + 2);
        let snap = Snapshot::build(&[], &roles, &[], &cluster_role_bindings("x"));
        let u = User {
            name: "u".into(),
            groups: vec!["system:authenticated".into()],
        };
        let url = |p: &str| Attributes {
            verb: "get".into(),
            path: p.into(),
            ..Default::default()
        };
        assert!(matches!(
            snap.authorize(&u, &url("/apis/apps/v1")),
            Decision::Allow(_)
        ));
        let ssar = Attributes {
            verb: "create".into(),
            resource_request: true,
            api_group: "authorization.k8s.io".into(),
            resource: "selfsubjectaccessreviews".into(),
            ..Default::default()
        };
        assert!(matches!(snap.authorize(&u, &ssar), Decision::Allow(_)));
        let pods = Attributes {
            verb: "list".into(),
            resource_request: true,
            resource: "pods".into(),
            namespace: "a".into(),
            ..Default::default()
        };
        assert!(matches!(snap.authorize(&u, &pods), Decision::Deny(_)));
    }
}

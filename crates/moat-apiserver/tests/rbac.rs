//! Authentication and RBAC through the router (in process, MemStore, the default policy and
//! the watch-fed cache): 401 without credentials except the public endpoints, 403 with
//! upstream's Status, escalation prevention with `escalate`/`bind`, aggregationRule only for
//! cluster admins, RBAC validation causes, and the self reviews.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::time::Duration;

use common::Api;
use http::{Method, StatusCode};
use moat_apiserver::authz::User;
use serde_json::{Value, json};

const RBAC: &str = "/apis/rbac.authorization.k8s.io/v1";

fn user(name: &str, groups: &[&str]) -> User {
    let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    groups.push("system:authenticated".into());
    User {
        name: name.into(),
        groups,
    }
}

fn role(name: &str, rules: Value) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": name}, "rules": rules})
}

fn binding(kind: &str, name: &str, role_kind: &str, role: &str, user: &str) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]})
}

/// Waits until `u` may `verb` `resource` in `ns` (the cache follows the store's watch).
async fn until_allowed(api: &Api, u: &User, verb: &str, group: &str, resource: &str, ns: &str) {
    let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"verb": verb, "group": group, "resource": resource, "namespace": ns}}});
    for _ in 0..200 {
        let r = api
            .request_as(
                Some(u),
                Method::POST,
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                Some(&review),
            )
            .await;
        assert_eq!(r.code, StatusCode::CREATED, "{}", r.text());
        if r.json()["status"]["allowed"] == true {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} never got {verb} {resource} in {ns}", u.name);
}

#[tokio::test]
async fn anonymous_requests_reach_only_the_public_endpoints() {
    let api = Api::with_rbac().await;
    for p in ["/healthz", "/livez", "/readyz", "/version"] {
        assert_eq!(
            api.request_as(None, Method::GET, p, None).await.code,
            StatusCode::OK,
            "{p}"
        );
    }
    for p in [
        "/api",
        "/apis",
        "/api/v1/namespaces/default/pods",
        "/openapi/v2",
    ] {
        api.request_as(None, Method::GET, p, None)
            .await
            .status(401, "Unauthorized");
    }
}

#[tokio::test]
async fn forbidden_is_upstreams_status_and_grants_follow_bindings() {
    let api = Api::with_rbac().await;
    let alice = user("alice", &["devs"]);
    // Discovery is open to every authenticated user (system:discovery).
    let r = api
        .request_as(Some(&alice), Method::GET, "/apis", None)
        .await;
    assert_eq!(r.code, StatusCode::OK);
    let r = api
        .request_as(
            Some(&alice),
            Method::GET,
            "/api/v1/namespaces/default/configmaps",
            None,
        )
        .await;
    let s = r.status(403, "Forbidden");
    assert_eq!(
        s["message"],
        "configmaps is forbidden: User \"alice\" cannot list resource \"configmaps\" in API group \"\" in the namespace \"default\""
    );
    assert_eq!(
        s["details"],
        json!({"name": "", "group": "", "kind": "configmaps"})
    );
    let r = api
        .request_as(
            Some(&alice),
            Method::POST,
            "/api/v1/namespaces/default/pods/p/portforward",
            None,
        )
        .await;
    assert_eq!(
        r.status(403, "Forbidden")["message"],
        "pods \"p\" is forbidden: User \"alice\" cannot create resource \"pods/portforward\" in API group \"\" in the namespace \"default\""
    );

    // A binding to the group, by the admin token.
    let b = binding("RoleBinding", "devs-edit", "ClusterRole", "edit", "nobody");
    let mut b = b;
    b["subjects"] = json!([{"kind": "Group", "name": "devs"}]);
    let r = api
        .post(&format!("{RBAC}/namespaces/default/rolebindings"), &b)
        .await;
    assert_eq!(r.code, StatusCode::CREATED, "{}", r.text());
    assert_eq!(
        r.json()["subjects"][0]["apiGroup"],
        "rbac.authorization.k8s.io",
        "defaulted"
    );
    until_allowed(&api, &alice, "create", "", "configmaps", "default").await;
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
    let r = api
        .request_as(Some(&alice), Method::POST, common::CMS, Some(&cm))
        .await;
    assert_eq!(r.code, StatusCode::CREATED, "{}", r.text());
    // edit has no RBAC writes and nothing cluster-scoped.
    let r = api
        .request_as(Some(&alice), Method::GET, "/api/v1/nodes", None)
        .await;
    assert_eq!(
        r.status(403, "Forbidden")["message"],
        "nodes is forbidden: User \"alice\" cannot list resource \"nodes\" in API group \"\" at the cluster scope"
    );
}

#[tokio::test]
async fn escalation_needs_the_rules_or_escalate_and_bind() {
    let api = Api::with_rbac().await;
    let bob = user("bob", &[]);
    let roles = format!("{RBAC}/namespaces/default/roles");
    let bindings = format!("{RBAC}/namespaces/default/rolebindings");
    // bob may write Roles and RoleBindings and read pods.
    let manager = role(
        "manager",
        json!([{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": ["create", "update", "get"]},
               {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]),
    );
    assert_eq!(api.post(&roles, &manager).await.code, StatusCode::CREATED);
    let b = binding("RoleBinding", "bob-manager", "Role", "manager", "bob");
    assert_eq!(api.post(&bindings, &b).await.code, StatusCode::CREATED);
    until_allowed(
        &api,
        &bob,
        "create",
        "rbac.authorization.k8s.io",
        "roles",
        "default",
    )
    .await;

    let within = role(
        "reader",
        json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]),
    );
    let r = api
        .request_as(Some(&bob), Method::POST, &roles, Some(&within))
        .await;
    assert_eq!(r.code, StatusCode::CREATED, "{}", r.text());
    let beyond = role(
        "deleter",
        json!([{"apiGroups": [""], "resources": ["pods", "secrets"], "verbs": ["list", "delete"]}]),
    );
    let r = api
        .request_as(Some(&bob), Method::POST, &roles, Some(&beyond))
        .await;
    let s = r.status(403, "Forbidden");
    assert_eq!(
        s["message"],
        "roles.rbac.authorization.k8s.io \"deleter\" is forbidden: user \"bob\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"pods\"], Verbs:[\"delete\"]}\n{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"list\" \"delete\"]}"
    );
    assert_eq!(s["details"]["kind"], "roles");
    // Updating a role to more than bob holds is refused the same way.
    let mut grown = within.clone();
    grown["rules"] = beyond["rules"].clone();
    let r = api
        .request_as(
            Some(&bob),
            Method::PUT,
            &format!("{roles}/reader"),
            Some(&grown),
        )
        .await;
    r.status(403, "Forbidden");

    // Binding: a role whose rules bob holds is fine, cluster-admin is not.
    let ok = binding("RoleBinding", "carol-reader", "Role", "reader", "carol");
    let r = api
        .request_as(Some(&bob), Method::POST, &bindings, Some(&ok))
        .await;
    assert_eq!(r.code, StatusCode::CREATED, "{}", r.text());
    let boom = binding("RoleBinding", "boom", "ClusterRole", "cluster-admin", "bob");
    let r = api
        .request_as(Some(&bob), Method::POST, &bindings, Some(&boom))
        .await;
    assert!(r.status(403, "Forbidden")["message"].as_str().unwrap().contains("is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"*\"], Resources:[\"*\"], Verbs:[\"*\"]}"));
    let missing = binding("RoleBinding", "ghost", "Role", "nope", "bob");
    api.request_as(Some(&bob), Method::POST, &bindings, Some(&missing))
        .await
        .status(404, "NotFound");

    // With `bind` on cluster-admin and `escalate` on roles, both go through.
    let more = role(
        "more",
        json!([{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "resourceNames": ["cluster-admin"], "verbs": ["bind"]},
               {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["escalate"]}]),
    );
    assert_eq!(api.post(&roles, &more).await.code, StatusCode::CREATED);
    let b = binding("RoleBinding", "bob-more", "Role", "more", "bob");
    assert_eq!(api.post(&bindings, &b).await.code, StatusCode::CREATED);
    until_allowed(
        &api,
        &bob,
        "escalate",
        "rbac.authorization.k8s.io",
        "roles",
        "default",
    )
    .await;
    let r = api
        .request_as(Some(&bob), Method::POST, &bindings, Some(&boom))
        .await;
    assert_eq!(r.code, StatusCode::CREATED, "{}", r.text());
    let r = api
        .request_as(Some(&bob), Method::POST, &roles, Some(&beyond))
        .await;
    assert_eq!(r.code, StatusCode::CREATED, "{}", r.text());
}

#[tokio::test]
async fn aggregation_rules_are_for_cluster_admins_and_aggregate() {
    let api = Api::with_rbac().await;
    let dave = user("dave", &[]);
    let crs = format!("{RBAC}/clusterroles");
    // dave may create ClusterRoles and holds everything non-RBAC in a namespace only.
    let writer = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "cr-writer"},
        "rules": [{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["create"]}]});
    assert_eq!(api.post(&crs, &writer).await.code, StatusCode::CREATED);
    let b = binding(
        "ClusterRoleBinding",
        "dave",
        "ClusterRole",
        "cr-writer",
        "dave",
    );
    assert_eq!(
        api.post(&format!("{RBAC}/clusterrolebindings"), &b)
            .await
            .code,
        StatusCode::CREATED
    );
    until_allowed(
        &api,
        &dave,
        "create",
        "rbac.authorization.k8s.io",
        "clusterroles",
        "",
    )
    .await;
    let agg = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "sneaky"},
        "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"kubernetes.io/bootstrapping": "rbac-defaults"}}]}});
    let r = api
        .request_as(Some(&dave), Method::POST, &crs, Some(&agg))
        .await;
    assert_eq!(
        r.status(403, "Forbidden")["message"],
        "clusterroles.rbac.authorization.k8s.io \"sneaky\" is forbidden: must have cluster-admin privileges to use the aggregationRule"
    );

    // A user-made role labelled into `view` extends what view's holders may do.
    let crd_view = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "widgets-view", "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
        "rules": [{"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get"]}]});
    assert_eq!(api.post(&crs, &crd_view).await.code, StatusCode::CREATED);
    let b = binding("RoleBinding", "dave-view", "ClusterRole", "view", "dave");
    assert_eq!(
        api.post(&format!("{RBAC}/namespaces/default/rolebindings"), &b)
            .await
            .code,
        StatusCode::CREATED
    );
    // Through view and through admin (view ⊂ edit ⊂ admin) alike.
    until_allowed(&api, &dave, "get", "example.com", "widgets", "default").await;
}

#[tokio::test]
async fn rbac_objects_are_validated_with_causes() {
    let api = Api::with_rbac().await;
    let bad = role("x", json!([{"resources": ["pods"]}]));
    let r = api
        .post(&format!("{RBAC}/namespaces/default/roles"), &bad)
        .await;
    let s = r.status(422, "Invalid");
    let fields: Vec<&str> = s["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["rules[0].verbs", "rules[0].apiGroups"]);
    let b = binding("ClusterRoleBinding", "x", "Role", "r", "u");
    let r = api.post(&format!("{RBAC}/clusterrolebindings"), &b).await;
    let s = r.status(422, "Invalid");
    assert_eq!(s["details"]["causes"][0]["field"], "roleRef.kind");
    // roleRef cannot change.
    let b = binding("RoleBinding", "rb", "ClusterRole", "view", "u");
    let url = format!("{RBAC}/namespaces/default/rolebindings");
    assert_eq!(api.post(&url, &b).await.code, StatusCode::CREATED);
    let r = api
        .patch(
            &format!("{url}/rb"),
            "application/merge-patch+json",
            r#"{"roleRef":{"name":"edit"}}"#,
        )
        .await;
    assert_eq!(
        r.status(422, "Invalid")["details"]["causes"][0]["field"],
        "roleRef"
    );
    // Names are path segments: `system:` names are fine.
    let mut ok = role("system:thing", json!([]));
    ok["metadata"]["name"] = json!("system:thing");
    assert_eq!(
        api.post(&format!("{RBAC}/namespaces/default/roles"), &ok)
            .await
            .code,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn self_reviews_and_impersonation() {
    let api = Api::with_rbac().await;
    let erin = user("erin", &["qa"]);
    let r = api
        .request_as(
            Some(&erin),
            Method::POST,
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            Some(&json!({})),
        )
        .await;
    assert_eq!(r.json()["status"]["userInfo"]["username"], "erin");
    let rules = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview", "spec": {"namespace": "default"}});
    let r = api
        .request_as(
            Some(&erin),
            Method::POST,
            "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
            Some(&rules),
        )
        .await;
    assert_eq!(r.code, StatusCode::CREATED);
    let v = r.json();
    assert_eq!(v["status"]["incomplete"], false);
    let resources: Vec<&Value> = v["status"]["resourceRules"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["resources"].as_array().unwrap())
        .collect();
    assert!(
        resources.contains(&&json!("selfsubjectaccessreviews"))
            && !resources.contains(&&json!("pods")),
        "{v}"
    );
    // The admin token may impersonate; erin may not.
    let r = api
        .request(
            Method::GET,
            "/api/v1/namespaces/default/pods",
            None,
            axum::body::Body::empty(),
        )
        .await;
    assert_eq!(r.code, StatusCode::OK);
    let req = http::Request::builder()
        .method(Method::GET)
        .uri("/api/v1/namespaces/default/pods")
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", common::TOKEN),
        )
        .header("Impersonate-User", "erin")
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = tower::ServiceExt::oneshot(moat_apiserver::router(api.app.clone()), req)
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::FORBIDDEN,
        "the admin acting as erin is erin"
    );
}

//! authorization.k8s.io/v1 SelfSubjectAccessReview and SelfSubjectRulesReview, sans-IO: the
//! request body and the requester in, the answered review out (what `kubectl auth can-i` and
//! `kubectl auth can-i --list` post).

use serde_json::{Value, json};

use super::rbac::{Decision, Snapshot};
use super::{Attributes, User, decide};
use crate::status::ApiError;

pub const GROUP: &str = "authorization.k8s.io";
pub const ACCESS: &str = "selfsubjectaccessreviews";
pub const RULES: &str = "selfsubjectrulesreviews";

/// authentication.k8s.io/v1 SelfSubjectReview (`kubectl auth whoami`).
pub const WHOAMI: &str = "selfsubjectreviews";

/// Which review a path posts to, if any.
pub fn which(path: &str) -> Option<&'static str> {
    let path = path.trim_end_matches('/');
    if path == "/apis/authentication.k8s.io/v1/selfsubjectreviews" {
        return Some(WHOAMI);
    }
    let rest = path.strip_prefix("/apis/authorization.k8s.io/v1/")?;
    [ACCESS, RULES].into_iter().find(|r| *r == rest)
}

/// Answers a SelfSubjectReview: the requester as the server sees them.
pub fn whoami(user: &User) -> Value {
    json!({"kind": "SelfSubjectReview", "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "status": {"userInfo": {"username": user.name, "groups": user.groups}}})
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

/// Answers a SelfSubjectAccessReview.
pub fn access_review(snap: &Snapshot, user: &User, mut body: Value) -> Result<Value, ApiError> {
    let spec = &body["spec"];
    let a = if let Some(r) = spec["resourceAttributes"].as_object() {
        let r = Value::Object(r.clone());
        Attributes {
            verb: s(&r["verb"]),
            resource_request: true,
            api_group: s(&r["group"]),
            resource: s(&r["resource"]),
            subresource: s(&r["subresource"]),
            namespace: s(&r["namespace"]),
            name: s(&r["name"]),
            path: String::new(),
        }
    } else if let Some(n) = spec["nonResourceAttributes"].as_object() {
        Attributes {
            verb: n.get("verb").map(s).unwrap_or_default(),
            path: n.get("path").map(s).unwrap_or_default(),
            ..Default::default()
        }
    } else {
        return Err(ApiError::invalid(
            "SelfSubjectAccessReview",
            "",
            vec![moat_api::Cause::new(
                "FieldValueRequired",
                "spec.resourceAttributes",
                "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
            )],
        ));
    };
    body["status"] = match decide(snap, user, &a) {
        Decision::Allow(reason) => json!({"allowed": true, "reason": reason}),
        Decision::Deny(reason) if reason.is_empty() => json!({"allowed": false}),
        Decision::Deny(reason) => json!({"allowed": false, "reason": reason}),
    };
    if body["apiVersion"].is_null() {
        body["apiVersion"] = json!("authorization.k8s.io/v1");
        body["kind"] = json!("SelfSubjectAccessReview");
    }
    body["metadata"]["creationTimestamp"] = Value::Null;
    Ok(body)
}

/// Answers a SelfSubjectRulesReview: the rules `user` holds in `spec.namespace`, split into
/// resource and non-resource rules as upstream reports them.
pub fn rules_review(snap: &Snapshot, user: &User, mut body: Value) -> Value {
    let ns = s(&body["spec"]["namespace"]);
    let rules = snap.rules_for(user, &ns);
    let mut resource_rules = Vec::new();
    let mut non_resource = Vec::new();
    for r in &rules {
        if r.non_resource_urls.is_empty() {
            resource_rules.push(json!({"verbs": r.verbs, "apiGroups": r.api_groups,
                "resources": r.resources, "resourceNames": r.resource_names}));
        } else {
            non_resource.push(json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}));
        }
    }
    body["status"] = json!({"resourceRules": resource_rules, "nonResourceRules": non_resource,
        "incomplete": false});
    if body["apiVersion"].is_null() {
        body["apiVersion"] = json!("authorization.k8s.io/v1");
        body["kind"] = json!("SelfSubjectRulesReview");
    }
    body["metadata"]["creationTimestamp"] = Value::Null;
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world() -> Snapshot {
        let cr = json!({"metadata": {"name": "view"}, "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
            {"nonResourceURLs": ["/api"], "verbs": ["get"]}]});
        let rb = json!({"metadata": {"name": "b", "namespace": "a"}, "roleRef": {"kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "User", "name": "alice"}]});
        Snapshot::build(&[], &[cr], &[rb], &[])
    }

    #[test]
    fn can_i_answers() {
        let alice = User {
            name: "alice".into(),
            groups: vec![],
        };
        let ask = |ns: &str, verb: &str| {
            let body = json!({"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
                "spec": {"resourceAttributes": {"namespace": ns, "verb": verb, "resource": "pods"}}});
            access_review(&world(), &alice, body).unwrap()["status"]["allowed"].clone()
        };
        assert_eq!(ask("a", "list"), json!(true));
        assert_eq!(ask("b", "list"), json!(false));
        assert_eq!(ask("a", "delete"), json!(false));
        assert!(access_review(&world(), &alice, json!({"spec": {}})).is_err());
    }

    #[test]
    fn whoami_names_the_user() {
        let alice = User {
            name: "alice".into(),
            groups: vec!["devs".into()],
        };
        assert_eq!(
            which("/apis/authentication.k8s.io/v1/selfsubjectreviews"),
            Some(WHOAMI)
        );
        assert_eq!(
            which("/apis/authorization.k8s.io/v1/selfsubjectrulesreviews/"),
            Some(RULES)
        );
        assert_eq!(
            which("/apis/authorization.k8s.io/v1/subjectaccessreviews"),
            None
        );
        assert_eq!(
            whoami(&alice)["status"]["userInfo"]["groups"],
            json!(["devs"])
        );
    }

    #[test]
    fn rules_are_listed_per_namespace() {
        let alice = User {
            name: "alice".into(),
            groups: vec![],
        };
        let r = rules_review(&world(), &alice, json!({"spec": {"namespace": "a"}}));
        assert_eq!(
            r["status"]["resourceRules"][0]["resources"],
            json!(["pods"])
        );
        assert_eq!(
            r["status"]["nonResourceRules"][0]["nonResourceURLs"],
            json!(["/api"])
        );
        let r = rules_review(&world(), &alice, json!({"spec": {"namespace": "b"}}));
        assert_eq!(r["status"]["resourceRules"], json!([]));
    }
}

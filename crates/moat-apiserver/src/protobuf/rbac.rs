//! Protobuf conversions of rbac.authorization.k8s.io/v1 bodies (what `kubectl create
//! role|clusterrole|rolebinding|clusterrolebinding` sends) and of the authorization.k8s.io/v1
//! self reviews `kubectl auth can-i` posts. Strict like the rest: a field not converted here
//! is a 415 naming it.

use k8s_pb::api::authorization::v1 as authz;
use k8s_pb::api::rbac::v1 as rbac;
use serde_json::{Map, Value, json};

use super::{ProtoError, label_selector, object_meta, put, rest};

fn rules(rs: Vec<rbac::PolicyRule>, at: &str) -> Result<Value, ProtoError> {
    let mut out = Vec::new();
    for (i, mut r) in rs.into_iter().enumerate() {
        let mut m = Map::new();
        put(&mut m, "verbs", json!(std::mem::take(&mut r.verbs)));
        put(
            &mut m,
            "apiGroups",
            json!(std::mem::take(&mut r.api_groups)),
        );
        put(&mut m, "resources", json!(std::mem::take(&mut r.resources)));
        put(
            &mut m,
            "resourceNames",
            json!(std::mem::take(&mut r.resource_names)),
        );
        put(
            &mut m,
            "nonResourceURLs",
            json!(std::mem::take(&mut r.non_resource_ur_ls)),
        );
        rest(&r, &format!("{at}[{i}]"))?;
        // An empty apiGroups entry ("" = core) is a value, not an absence.
        out.push(Value::Object(m));
    }
    Ok(json!(out))
}

fn binding_parts(
    subjects: Vec<rbac::Subject>,
    role_ref: Option<rbac::RoleRef>,
    o: &mut Map<String, Value>,
) -> Result<(), ProtoError> {
    let mut subs = Vec::new();
    for (i, mut s) in subjects.into_iter().enumerate() {
        let mut m = Map::new();
        put(&mut m, "kind", json!(s.kind.take()));
        // The core group is "", which must survive for ServiceAccount subjects.
        if let Some(g) = s.api_group.take() {
            m.insert("apiGroup".into(), json!(g));
        }
        put(&mut m, "name", json!(s.name.take()));
        put(&mut m, "namespace", json!(s.namespace.take()));
        rest(&s, &format!("subjects[{i}]"))?;
        subs.push(Value::Object(m));
    }
    put(o, "subjects", json!(subs));
    if let Some(mut r) = role_ref {
        let mut m = Map::new();
        put(&mut m, "apiGroup", json!(r.api_group.take()));
        put(&mut m, "kind", json!(r.kind.take()));
        put(&mut m, "name", json!(r.name.take()));
        rest(&r, "roleRef")?;
        o.insert("roleRef".into(), Value::Object(m));
    }
    Ok(())
}

pub fn role(mut r: rbac::Role) -> Result<Map<String, Value>, ProtoError> {
    let mut o = Map::new();
    o.insert(
        "metadata".into(),
        object_meta(r.metadata.take(), "metadata")?,
    );
    o.insert(
        "rules".into(),
        rules(std::mem::take(&mut r.rules), "rules")?,
    );
    rest(&r, "")?;
    Ok(o)
}

pub fn cluster_role(mut r: rbac::ClusterRole) -> Result<Map<String, Value>, ProtoError> {
    let mut o = Map::new();
    o.insert(
        "metadata".into(),
        object_meta(r.metadata.take(), "metadata")?,
    );
    o.insert(
        "rules".into(),
        rules(std::mem::take(&mut r.rules), "rules")?,
    );
    if let Some(mut a) = r.aggregation_rule.take() {
        let mut sels = Vec::new();
        for (i, s) in std::mem::take(&mut a.cluster_role_selectors)
            .into_iter()
            .enumerate()
        {
            sels.push(label_selector(
                Some(s),
                &format!("aggregationRule.clusterRoleSelectors[{i}]"),
            )?);
        }
        rest(&a, "aggregationRule")?;
        o.insert(
            "aggregationRule".into(),
            json!({"clusterRoleSelectors": sels}),
        );
    }
    rest(&r, "")?;
    Ok(o)
}

pub fn role_binding(mut b: rbac::RoleBinding) -> Result<Map<String, Value>, ProtoError> {
    let mut o = Map::new();
    o.insert(
        "metadata".into(),
        object_meta(b.metadata.take(), "metadata")?,
    );
    binding_parts(std::mem::take(&mut b.subjects), b.role_ref.take(), &mut o)?;
    rest(&b, "")?;
    Ok(o)
}

pub fn cluster_role_binding(
    mut b: rbac::ClusterRoleBinding,
) -> Result<Map<String, Value>, ProtoError> {
    let mut o = Map::new();
    o.insert(
        "metadata".into(),
        object_meta(b.metadata.take(), "metadata")?,
    );
    binding_parts(std::mem::take(&mut b.subjects), b.role_ref.take(), &mut o)?;
    rest(&b, "")?;
    Ok(o)
}

pub fn access_review(
    mut r: authz::SelfSubjectAccessReview,
) -> Result<Map<String, Value>, ProtoError> {
    let mut o = Map::new();
    o.insert(
        "metadata".into(),
        object_meta(r.metadata.take(), "metadata")?,
    );
    let mut spec = Map::new();
    if let Some(mut s) = r.spec.take() {
        if let Some(mut a) = s.resource_attributes.take() {
            let mut m = Map::new();
            put(&mut m, "namespace", json!(a.namespace.take()));
            put(&mut m, "verb", json!(a.verb.take()));
            put(&mut m, "group", json!(a.group.take()));
            put(&mut m, "version", json!(a.version.take()));
            put(&mut m, "resource", json!(a.resource.take()));
            put(&mut m, "subresource", json!(a.subresource.take()));
            put(&mut m, "name", json!(a.name.take()));
            rest(&a, "spec.resourceAttributes")?;
            spec.insert("resourceAttributes".into(), Value::Object(m));
        }
        if let Some(mut a) = s.non_resource_attributes.take() {
            let mut m = Map::new();
            put(&mut m, "path", json!(a.path.take()));
            put(&mut m, "verb", json!(a.verb.take()));
            rest(&a, "spec.nonResourceAttributes")?;
            spec.insert("nonResourceAttributes".into(), Value::Object(m));
        }
        rest(&s, "spec")?;
    }
    o.insert("spec".into(), Value::Object(spec));
    r.status = None;
    rest(&r, "")?;
    Ok(o)
}

pub fn rules_review(
    mut r: authz::SelfSubjectRulesReview,
) -> Result<Map<String, Value>, ProtoError> {
    let mut o = Map::new();
    o.insert(
        "metadata".into(),
        object_meta(r.metadata.take(), "metadata")?,
    );
    let ns = r.spec.take().and_then(|mut s| s.namespace.take());
    o.insert("spec".into(), json!({"namespace": ns.unwrap_or_default()}));
    r.status = None;
    rest(&r, "")?;
    Ok(o)
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use serde_json::json;

    use super::super::tests::{envelope, meta};
    use super::super::to_json;
    use super::*;

    #[test]
    fn bindings_keep_the_core_group_of_service_accounts() {
        let b = rbac::RoleBinding {
            metadata: meta("rb"),
            subjects: vec![
                rbac::Subject {
                    kind: Some("User".into()),
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    name: Some("alice".into()),
                    namespace: None,
                },
                rbac::Subject {
                    kind: Some("ServiceAccount".into()),
                    api_group: Some(String::new()),
                    name: Some("default".into()),
                    namespace: Some("a".into()),
                },
            ],
            role_ref: Some(rbac::RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: Some("ClusterRole".into()),
                name: Some("view".into()),
            }),
        };
        let v = to_json(&envelope(
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            b.encode_to_vec(),
        ))
        .unwrap();
        assert_eq!(v["roleRef"]["name"], "view");
        assert_eq!(
            v["subjects"][1],
            json!({"kind": "ServiceAccount", "apiGroup": "", "name": "default", "namespace": "a"})
        );
    }

    #[test]
    fn roles_and_reviews() {
        let r = rbac::Role {
            metadata: meta("r"),
            rules: vec![rbac::PolicyRule {
                verbs: vec!["get".into()],
                api_groups: vec![String::new()],
                resources: vec!["pods".into()],
                ..Default::default()
            }],
        };
        let v = to_json(&envelope(
            "rbac.authorization.k8s.io/v1",
            "Role",
            r.encode_to_vec(),
        ))
        .unwrap();
        assert_eq!(
            v["rules"],
            json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}])
        );
        let ssar = authz::SelfSubjectAccessReview {
            spec: Some(authz::SelfSubjectAccessReviewSpec {
                resource_attributes: Some(authz::ResourceAttributes {
                    namespace: Some("a".into()),
                    verb: Some("list".into()),
                    resource: Some("pods".into()),
                    ..Default::default()
                }),
                non_resource_attributes: None,
            }),
            ..Default::default()
        };
        let v = to_json(&envelope(
            "authorization.k8s.io/v1",
            "SelfSubjectAccessReview",
            ssar.encode_to_vec(),
        ))
        .unwrap();
        assert_eq!(
            v["spec"]["resourceAttributes"],
            json!({"namespace": "a", "verb": "list", "resource": "pods"})
        );
    }
}

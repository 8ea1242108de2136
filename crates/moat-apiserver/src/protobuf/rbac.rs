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

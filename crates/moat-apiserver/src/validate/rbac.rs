//! rbac.authorization.k8s.io/v1 validation with upstream's field paths and wording: rules
//! (verbs required; resource rules need apiGroups and resources; non-resource URLs only in
//! ClusterRoles and never mixed with resources), role references and subjects of bindings,
//! and the immutable `roleRef`.

use moat_api::Cause;
use serde_json::Value;

use super::{invalid, one_of, required};

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

fn non_empty(v: &Value) -> bool {
    v.as_array().is_some_and(|a| !a.is_empty())
}

fn rules(causes: &mut Vec<Cause>, obj: &Value, namespaced: bool) {
    let Some(rules) = obj["rules"].as_array() else {
        return;
    };
    for (i, r) in rules.iter().enumerate() {
        let f = |s: &str| format!("rules[{i}].{s}");
        if !non_empty(&r["verbs"]) {
            causes.push(Cause::new(
                "FieldValueRequired",
                f("verbs"),
                "Required value: verbs must contain at least one value",
            ));
        }
        if non_empty(&r["nonResourceURLs"]) {
            if namespaced {
                invalid(
                    causes,
                    &f("nonResourceURLs"),
                    &r["nonResourceURLs"],
                    "namespaced rules cannot apply to non-resource URLs",
                );
            }
            if non_empty(&r["apiGroups"]) || non_empty(&r["resources"]) {
                invalid(
                    causes,
                    &f("nonResourceURLs"),
                    &r["nonResourceURLs"],
                    "rules cannot apply to both regular resources and non-resource URLs",
                );
            }
            continue;
        }
        if !non_empty(&r["apiGroups"]) {
            causes.push(Cause::new(
                "FieldValueRequired",
                f("apiGroups"),
                "Required value: resource rules must supply at least one api group",
            ));
        }
        if !non_empty(&r["resources"]) {
            causes.push(Cause::new(
                "FieldValueRequired",
                f("resources"),
                "Required value: resource rules must supply at least one resource",
            ));
        }
    }
}

fn binding(causes: &mut Vec<Cause>, obj: &Value, cluster: bool) {
    let rr = &obj["roleRef"];
    if rr["apiGroup"].as_str() != Some(RBAC_GROUP) {
        super::unsupported(causes, "roleRef.apiGroup", &rr["apiGroup"], &[RBAC_GROUP]);
    }
    let kinds: &[&str] = if cluster {
        &["ClusterRole"]
    } else {
        &["Role", "ClusterRole"]
    };
    match rr["kind"].as_str() {
        None | Some("") => required(causes, "roleRef.kind"),
        Some(_) => one_of(causes, "roleRef.kind", &rr["kind"], kinds),
    }
    if rr["name"].as_str().is_none_or(str::is_empty) {
        required(causes, "roleRef.name");
    }
    let Some(subjects) = obj["subjects"].as_array() else {
        return;
    };
    for (i, s) in subjects.iter().enumerate() {
        let f = |x: &str| format!("subjects[{i}].{x}");
        if s["name"].as_str().is_none_or(str::is_empty) {
            required(causes, &f("name"));
        }
        match s["kind"].as_str() {
            Some("ServiceAccount") => {
                if s["apiGroup"].as_str().is_some_and(|g| !g.is_empty()) {
                    super::unsupported(causes, &f("apiGroup"), &s["apiGroup"], &[""]);
                }
                if cluster && s["namespace"].as_str().is_none_or(str::is_empty) {
                    required(causes, &f("namespace"));
                }
            }
            Some("User") | Some("Group") => {
                if s["apiGroup"].as_str() != Some(RBAC_GROUP) {
                    super::unsupported(causes, &f("apiGroup"), &s["apiGroup"], &[RBAC_GROUP]);
                }
            }
            _ => super::unsupported(
                causes,
                &f("kind"),
                &s["kind"],
                &["ServiceAccount", "User", "Group"],
            ),
        }
    }
}

/// Upstream's defaulting: subjects of kind User or Group without an apiGroup get RBAC's
/// (as `kubectl create rolebinding --user` sends them), roleRef likewise.
pub fn default_rbac(obj: &mut Value) {
    if obj["roleRef"].is_object() && obj["roleRef"]["apiGroup"].is_null() {
        obj["roleRef"]["apiGroup"] = Value::from(RBAC_GROUP);
    }
    if let Some(subjects) = obj["subjects"].as_array_mut() {
        for s in subjects {
            let kind = s["kind"].as_str().unwrap_or("");
            if (kind == "User" || kind == "Group") && s["apiGroup"].is_null() {
                s["apiGroup"] = Value::from(RBAC_GROUP);
            }
        }
    }
}

pub fn validate_rbac(causes: &mut Vec<Cause>, kind: &str, obj: &Value) {
    match kind {
        "Role" => rules(causes, obj, true),
        "ClusterRole" => rules(causes, obj, false),
        "RoleBinding" => binding(causes, obj, false),
        "ClusterRoleBinding" => binding(causes, obj, true),
        _ => {}
    }
}

pub fn validate_rbac_update(causes: &mut Vec<Cause>, old: &Value, new: &Value) {
    if old["roleRef"] != new["roleRef"] {
        invalid(causes, "roleRef", &new["roleRef"], "cannot change roleRef");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn causes(kind: &str, obj: Value) -> Vec<(String, String)> {
        let mut c = Vec::new();
        validate_rbac(&mut c, kind, &obj);
        c.into_iter().map(|c| (c.field, c.message)).collect()
    }

    #[test]
    fn rules_need_verbs_groups_and_resources() {
        let c = causes("Role", json!({"rules": [{"resources": ["pods"]}]}));
        assert_eq!(
            c,
            vec![
                (
                    "rules[0].verbs".into(),
                    "Required value: verbs must contain at least one value".into()
                ),
                (
                    "rules[0].apiGroups".into(),
                    "Required value: resource rules must supply at least one api group".into()
                ),
            ]
        );
        let ok = json!({"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]});
        assert!(causes("Role", ok).is_empty());
    }

    #[test]
    fn non_resource_urls_only_in_cluster_roles() {
        let r = json!({"rules": [{"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]});
        assert!(causes("ClusterRole", r.clone()).is_empty());
        let c = causes("Role", r);
        assert_eq!(c.len(), 1);
        assert!(
            c[0].1
                .ends_with("namespaced rules cannot apply to non-resource URLs")
        );
    }

    #[test]
    fn bindings_check_role_ref_and_subjects() {
        let mut b = json!({"roleRef": {"kind": "Role", "name": "r"},
            "subjects": [{"kind": "User", "name": "alice"}, {"kind": "Robot", "name": "x"}]});
        default_rbac(&mut b);
        let c = causes("ClusterRoleBinding", b.clone());
        let fields: Vec<&str> = c.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["roleRef.kind", "subjects[1].kind"]);
        assert!(causes("RoleBinding", b.clone()).len() == 1);
        let mut moved = b.clone();
        moved["roleRef"]["name"] = json!("other");
        let mut c = Vec::new();
        validate_rbac_update(&mut c, &b, &moved);
        assert_eq!(c[0].field, "roleRef");
    }
}

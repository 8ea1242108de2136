//! The RBAC authorizer, sans-IO: a [`Snapshot`] of the four RBAC kinds (aggregated
//! ClusterRoles already resolved) answers whether a user may do what [`Attributes`] describe,
//! with upstream's matching rules (`*` wildcards, `*/subresource`, resource names, non-resource
//! URL prefixes ending in `*`), and lists the rules a user holds in a namespace (for
//! escalation checks and SelfSubjectRulesReview).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Attributes, User};

/// One PolicyRule, as stored.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub verbs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
    #[serde(
        default,
        rename = "nonResourceURLs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub non_resource_urls: Vec<String>,
}

fn has(list: &[String], v: &str) -> bool {
    list.iter().any(|x| x == "*" || x == v)
}

impl Rule {
    /// Upstream's RuleAllows.
    pub fn allows(&self, a: &Attributes) -> bool {
        if !has(&self.verbs, &a.verb) {
            return false;
        }
        if !a.resource_request {
            return self.non_resource_urls.iter().any(|u| {
                u == "*"
                    || *u == a.path
                    || u.strip_suffix('*').is_some_and(|p| a.path.starts_with(p))
            });
        }
        has(&self.api_groups, &a.api_group)
            && self.resource_matches(&a.resource, &a.subresource)
            && (self.resource_names.is_empty() || self.resource_names.contains(&a.name))
    }

    fn resource_matches(&self, resource: &str, sub: &str) -> bool {
        self.resources.iter().any(|r| {
            if r == "*" {
                return true;
            }
            if sub.is_empty() {
                return r == resource;
            }
            r.strip_prefix(resource)
                .and_then(|t| t.strip_prefix('/'))
                .is_some_and(|t| t == sub)
                || r.strip_prefix("*/").is_some_and(|t| t == sub)
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Subject {
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RoleRef {
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct Binding {
    pub name: String,
    /// None for ClusterRoleBindings.
    pub namespace: Option<String>,
    pub role_ref: RoleRef,
    pub subjects: Vec<Subject>,
}

impl Binding {
    fn from_value(v: &Value) -> Self {
        Binding {
            name: v["metadata"]["name"].as_str().unwrap_or("").to_string(),
            namespace: v["metadata"]["namespace"].as_str().map(String::from),
            role_ref: serde_json::from_value(v["roleRef"].clone()).unwrap_or_default(),
            subjects: serde_json::from_value(v["subjects"].clone()).unwrap_or_default(),
        }
    }

    /// The subject of this binding that names `user`, described as upstream does.
    fn subject_for(&self, user: &User) -> Option<String> {
        self.subjects.iter().find_map(|s| {
            let hit = match s.kind.as_str() {
                "User" => s.name == user.name,
                "Group" => user.groups.contains(&s.name),
                "ServiceAccount" => {
                    let ns = s
                        .namespace
                        .as_deref()
                        .or(self.namespace.as_deref())
                        .unwrap_or("");
                    user.name == format!("system:serviceaccount:{ns}:{}", s.name)
                }
                _ => false,
            };
            hit.then(|| match s.kind.as_str() {
                "ServiceAccount" => format!(
                    "ServiceAccount \"{}/{}\"",
                    s.name,
                    s.namespace
                        .as_deref()
                        .or(self.namespace.as_deref())
                        .unwrap_or("")
                ),
                k => format!("{k} {:?}", s.name),
            })
        })
    }

    fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("RoleBinding \"{}/{ns}\"", self.name),
            None => format!("ClusterRoleBinding {:?}", self.name),
        }
    }
}

fn rules_of(v: &Value) -> Vec<Rule> {
    serde_json::from_value(v["rules"].clone()).unwrap_or_default()
}

/// Whether `labels` satisfy a metav1 LabelSelector (matchLabels and matchExpressions).
pub fn selector_matches(sel: &Value, labels: &Value) -> bool {
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    let by_labels = sel["matchLabels"]
        .as_object()
        .is_none_or(|m| m.iter().all(|(k, v)| label(k) == v.as_str()));
    let by_exprs = sel["matchExpressions"].as_array().is_none_or(|es| {
        es.iter().all(|e| {
            let key = e["key"].as_str().unwrap_or("");
            let values: Vec<&str> = e["values"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            match e["operator"].as_str() {
                Some("In") => label(key).is_some_and(|v| values.contains(&v)),
                Some("NotIn") => label(key).is_none_or(|v| !values.contains(&v)),
                Some("Exists") => label(key).is_some(),
                Some("DoesNotExist") => label(key).is_none(),
                _ => false,
            }
        })
    });
    by_labels && by_exprs
}

/// The effective rules of every ClusterRole: its own, or for an aggregated role (one with
/// `aggregationRule.clusterRoleSelectors`) those of every other ClusterRole a selector
/// matches, as the aggregation controller would write them; repeated until nothing changes,
/// so aggregated roles can aggregate each other (`admin` ⊇ `edit` ⊇ `view`). Deduplicated.
pub fn aggregate(cluster_roles: &[Value]) -> BTreeMap<String, Vec<Rule>> {
    let name = |v: &Value| v["metadata"]["name"].as_str().unwrap_or("").to_string();
    let mut out: BTreeMap<String, Vec<Rule>> = cluster_roles
        .iter()
        .map(|cr| (name(cr), rules_of(cr)))
        .collect();
    // Each pass can only add rules and a chain is at most as long as the role list.
    for _ in 0..=cluster_roles.len() {
        let mut changed = false;
        for cr in cluster_roles {
            let Some(sels) = cr["aggregationRule"]["clusterRoleSelectors"].as_array() else {
                continue;
            };
            let me = name(cr);
            let mut rules: Vec<Rule> = Vec::new();
            for other in cluster_roles {
                let o = name(other);
                if o == me
                    || !sels
                        .iter()
                        .any(|s| selector_matches(s, &other["metadata"]["labels"]))
                {
                    continue;
                }
                for r in out.get(&o).into_iter().flatten() {
                    if !rules.contains(r) {
                        rules.push(r.clone());
                    }
                }
            }
            if out.get(&me) != Some(&rules) {
                out.insert(me, rules);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    out
}

/// Everything the authorizer needs, rebuilt by the cache whenever an RBAC object changes.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// (namespace, name) → rules.
    roles: HashMap<(String, String), Vec<Rule>>,
    cluster_roles: BTreeMap<String, Vec<Rule>>,
    role_bindings: HashMap<String, Vec<Binding>>,
    cluster_role_bindings: Vec<Binding>,
}

/// The outcome of one authorization, with upstream's reason text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(String),
    Deny(String),
}

impl Snapshot {
    pub fn build(
        roles: &[Value],
        cluster_roles: &[Value],
        role_bindings: &[Value],
        cluster_role_bindings: &[Value],
    ) -> Snapshot {
        let mut s = Snapshot {
            cluster_roles: aggregate(cluster_roles),
            ..Default::default()
        };
        for r in roles {
            let key = (
                r["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                r["metadata"]["name"].as_str().unwrap_or("").to_string(),
            );
            s.roles.insert(key, rules_of(r));
        }
        for b in role_bindings {
            let b = Binding::from_value(b);
            let ns = b.namespace.clone().unwrap_or_default();
            s.role_bindings.entry(ns).or_default().push(b);
        }
        s.cluster_role_bindings = cluster_role_bindings
            .iter()
            .map(Binding::from_value)
            .map(|mut b| {
                b.namespace = None;
                b
            })
            .collect();
        s
    }

    /// The rules a RoleRef points at, from the binding's namespace (None when missing).
    pub fn role_ref_rules(&self, r: &RoleRef, ns: Option<&str>) -> Option<&[Rule]> {
        match (r.kind.as_str(), ns) {
            ("ClusterRole", _) => self.cluster_roles.get(&r.name).map(Vec::as_slice),
            ("Role", Some(ns)) => self
                .roles
                .get(&(ns.to_string(), r.name.clone()))
                .map(Vec::as_slice),
            _ => None,
        }
    }

    /// Calls `f` with each binding naming `user` that applies in `ns` (cluster bindings
    /// first), the subject it matched and the rules it grants, until `f` returns true.
    fn visit(&self, user: &User, ns: &str, mut f: impl FnMut(&Binding, &str, &[Rule]) -> bool) {
        let ns_bindings = if ns.is_empty() {
            None
        } else {
            self.role_bindings.get(ns)
        };
        let all = self
            .cluster_role_bindings
            .iter()
            .chain(ns_bindings.into_iter().flatten());
        for b in all {
            let Some(subject) = b.subject_for(user) else {
                continue;
            };
            let Some(rules) = self.role_ref_rules(&b.role_ref, b.namespace.as_deref()) else {
                continue;
            };
            if f(b, &subject, rules) {
                return;
            }
        }
    }

    pub fn authorize(&self, user: &User, a: &Attributes) -> Decision {
        let mut reason = None;
        self.visit(user, &a.namespace, |b, subject, rules| {
            if rules.iter().any(|r| r.allows(a)) {
                reason = Some(format!(
                    "RBAC: allowed by {} of {} {:?} to {subject}",
                    b.describe(),
                    b.role_ref.kind,
                    b.role_ref.name
                ));
                return true;
            }
            false
        });
        match reason {
            Some(r) => Decision::Allow(r),
            None => Decision::Deny(String::new()),
        }
    }

    /// Every rule `user` holds in `ns` (cluster-wide ones included), deduplicated.
    pub fn rules_for(&self, user: &User, ns: &str) -> Vec<Rule> {
        let mut out: Vec<Rule> = Vec::new();
        self.visit(user, ns, |_, _, rules| {
            for r in rules {
                if !out.contains(r) {
                    out.push(r.clone());
                }
            }
            false
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(name: &str, groups: &[&str]) -> User {
        User {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn res(verb: &str, group: &str, resource: &str, sub: &str, ns: &str, name: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            resource_request: true,
            api_group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: ns.into(),
            name: name.into(),
            path: String::new(),
        }
    }

    fn world() -> Snapshot {
        let view = json!({"metadata": {"name": "view"}, "aggregationRule": {"clusterRoleSelectors": [
            {"matchLabels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}}]}});
        let to_view = json!({"metadata": {"name": "to-view", "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
            "rules": [{"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch"]}]});
        let disco = json!({"metadata": {"name": "disco"},
            "rules": [{"nonResourceURLs": ["/api", "/api/*"], "verbs": ["get"]}]});
        let role = json!({"metadata": {"name": "cm-one", "namespace": "a"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["one"], "verbs": ["*"]}]});
        let rb = json!({"metadata": {"name": "alice-view", "namespace": "a"},
            "roleRef": {"kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "User", "name": "alice"}]});
        let rb2 = json!({"metadata": {"name": "devs-cm", "namespace": "a"},
            "roleRef": {"kind": "Role", "name": "cm-one"},
            "subjects": [{"kind": "Group", "name": "devs"}]});
        let crb = json!({"metadata": {"name": "disco"}, "roleRef": {"kind": "ClusterRole", "name": "disco"},
            "subjects": [{"kind": "Group", "name": "system:authenticated"}]});
        Snapshot::build(&[role], &[view, to_view, disco], &[rb, rb2], &[crb])
    }

    #[test]
    fn role_binding_grants_only_in_its_namespace() {
        let s = world();
        let alice = user("alice", &["system:authenticated"]);
        let d = s.authorize(&alice, &res("list", "", "pods", "", "a", ""));
        assert_eq!(
            d,
            Decision::Allow(
                "RBAC: allowed by RoleBinding \"alice-view/a\" of ClusterRole \"view\" to User \"alice\"".into()
            )
        );
        assert!(matches!(
            s.authorize(&alice, &res("list", "", "pods", "", "b", "")),
            Decision::Deny(_)
        ));
        assert!(matches!(
            s.authorize(&alice, &res("list", "", "pods", "", "", "")),
            Decision::Deny(_)
        ));
        assert!(matches!(
            s.authorize(&alice, &res("delete", "", "pods", "", "a", "x")),
            Decision::Deny(_)
        ));
        assert!(matches!(
            s.authorize(&alice, &res("get", "apps", "pods", "", "a", "x")),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn subresources_need_their_own_rule() {
        let s = world();
        let alice = user("alice", &[]);
        assert!(matches!(
            s.authorize(&alice, &res("get", "", "pods", "log", "a", "p")),
            Decision::Allow(_)
        ));
        assert!(matches!(
            s.authorize(&alice, &res("create", "", "pods", "exec", "a", "p")),
            Decision::Deny(_)
        ));
        assert!(matches!(
            s.authorize(&alice, &res("get", "", "pods", "status", "a", "p")),
            Decision::Deny(_)
        ));
        let star = Rule {
            verbs: vec!["get".into()],
            api_groups: vec!["".into()],
            resources: vec!["*/status".into()],
            ..Default::default()
        };
        assert!(star.allows(&res("get", "", "pods", "status", "a", "p")));
        assert!(!star.allows(&res("get", "", "pods", "", "a", "p")));
    }

    #[test]
    fn groups_resource_names_and_urls() {
        let s = world();
        let bob = user("bob", &["devs", "system:authenticated"]);
        assert!(matches!(
            s.authorize(&bob, &res("update", "", "configmaps", "", "a", "one")),
            Decision::Allow(_)
        ));
        assert!(matches!(
            s.authorize(&bob, &res("update", "", "configmaps", "", "a", "two")),
            Decision::Deny(_)
        ));
        // A list names no object, so a rule limited to names does not allow it.
        assert!(matches!(
            s.authorize(&bob, &res("list", "", "configmaps", "", "a", "")),
            Decision::Deny(_)
        ));
        let url = |p: &str| Attributes {
            verb: "get".into(),
            path: p.into(),
            ..Default::default()
        };
        assert!(matches!(
            s.authorize(&bob, &url("/api/v1")),
            Decision::Allow(_)
        ));
        assert!(matches!(
            s.authorize(&bob, &url("/api")),
            Decision::Allow(_)
        ));
        assert!(matches!(
            s.authorize(&bob, &url("/metrics")),
            Decision::Deny(_)
        ));
        assert!(matches!(
            s.authorize(&user("anon", &[]), &url("/api")),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn aggregation_and_rules_for() {
        let s = world();
        let alice = user("alice", &["system:authenticated"]);
        let rules = s.rules_for(&alice, "a");
        assert_eq!(rules.len(), 2, "{rules:?}");
        assert!(
            rules
                .iter()
                .any(|r| r.resources.contains(&"pods/log".to_string()))
        );
        assert_eq!(s.rules_for(&alice, "b").len(), 1);
        let sel = json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["x"]}]});
        assert!(selector_matches(&sel, &json!({"tier": "x"})));
        assert!(!selector_matches(&sel, &json!({"tier": "y"})));
        assert!(selector_matches(&json!({}), &json!({})));
    }
}

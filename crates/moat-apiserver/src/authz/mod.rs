//! Authorization: every authenticated request is turned into upstream's request attributes
//! (user, verb, API group, resource, subresource, namespace, name, or a non-resource path)
//! and checked before anything else happens, including proxying to node agents.
//!
//! Members of `system:masters` are allowed everything without looking at RBAC (upstream's
//! privileged-group authorizer, so the admin kubeconfig works even before the RBAC cache is
//! filled); everyone else is decided by [`rbac::Snapshot`], kept current by [`cache`]. A denial
//! is a 403 Status with upstream's message. [`escalation`] stops users from granting what they
//! do not hold ([`guard`] is its IO edge), [`review`] answers the self reviews, [`policy`]
//! bootstraps the default roles.

pub mod cache;
pub mod escalation;
pub mod guard;
pub mod policy;
pub mod rbac;
pub mod review;

use http::{Method, StatusCode};

use crate::status::ApiError;

pub const MASTERS: &str = "system:masters";
pub const AUTHENTICATED: &str = "system:authenticated";

/// An authenticated user, as upstream's user.Info (no uid or extra: moat has no use yet).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    pub fn is_master(&self) -> bool {
        self.groups.iter().any(|g| g == MASTERS)
    }
}

/// Upstream's authorizer.Attributes (the parts RBAC reads).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attributes {
    pub verb: String,
    pub resource_request: bool,
    pub api_group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// The request path (non-resource requests).
    pub path: String,
}

/// Subresources of a namespace path that stay on the namespace itself (upstream's
/// `namespaceSubresources`): `/api/v1/namespaces/x/status` is the status of namespace x.
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

/// Upstream's RequestInfoFactory: the attributes of a request.
pub fn request_attributes(method: &Method, path: &str, watch: bool) -> Attributes {
    let mut a = Attributes {
        path: path.to_string(),
        verb: method.as_str().to_lowercase(),
        ..Default::default()
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match parts.as_slice() {
        ["api", _version, rest @ ..] if !rest.is_empty() => rest,
        ["apis", group, _version, rest @ ..] if !rest.is_empty() => {
            a.api_group = group.to_string();
            rest
        }
        _ => return a,
    };
    a.resource_request = true;
    let mut rest: &[&str] = rest;
    if rest[0] == "namespaces" && rest.len() > 1 {
        a.namespace = rest[1].to_string();
        if rest.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&rest[2]) {
            rest = &rest[2..];
        }
    }
    a.resource = rest[0].to_string();
    a.name = rest.get(1).map(|s| s.to_string()).unwrap_or_default();
    a.subresource = rest.get(2).map(|s| s.to_string()).unwrap_or_default();
    a.verb = match *method {
        Method::GET | Method::HEAD if a.name.is_empty() && watch => "watch",
        Method::GET | Method::HEAD if a.name.is_empty() => "list",
        Method::GET | Method::HEAD => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if a.name.is_empty() => "deletecollection",
        Method::DELETE => "delete",
        _ => "",
    }
    .to_string();
    a
}

/// Upstream's forbiddenMessage.
pub fn forbidden_message(user: &User, a: &Attributes) -> String {
    if !a.resource_request {
        return format!("User {:?} cannot {} path {:?}", user.name, a.verb, a.path);
    }
    let mut resource = a.resource.clone();
    if !a.subresource.is_empty() {
        resource = format!("{resource}/{}", a.subresource);
    }
    if a.namespace.is_empty() {
        format!(
            "User {:?} cannot {} resource {resource:?} in API group {:?} at the cluster scope",
            user.name, a.verb, a.api_group
        )
    } else {
        format!(
            "User {:?} cannot {} resource {resource:?} in API group {:?} in the namespace {:?}",
            user.name, a.verb, a.api_group, a.namespace
        )
    }
}

/// A 403 as upstream's `NewForbidden(groupResource, name, err)`: `<resource>[.<group>]
/// ["<name>"] is forbidden: <why>` with details {group, kind: resource, name}.
pub fn forbidden(group: &str, resource: &str, name: &str, why: &str) -> ApiError {
    let gr = match (group, resource) {
        (_, "") => String::new(),
        ("", r) => r.to_string(),
        (g, r) => format!("{r}.{g}"),
    };
    let message = match (gr.as_str(), name) {
        ("", _) => format!("forbidden: {why}"),
        (gr, "") => format!("{gr} is forbidden: {why}"),
        (gr, n) => format!("{gr} {n:?} is forbidden: {why}"),
    };
    let mut e = ApiError::new(StatusCode::FORBIDDEN, "Forbidden", message);
    if !resource.is_empty() {
        e = e.details(group, resource, name);
    }
    e
}

/// The decision for one request: masters always, everyone else by RBAC.
pub fn decide(snap: &rbac::Snapshot, user: &User, a: &Attributes) -> rbac::Decision {
    if user.is_master() {
        return rbac::Decision::Allow(format!("allowed by the {MASTERS} group"));
    }
    snap.authorize(user, a)
}

/// Checks `a` for `user`; a denial as upstream's 403.
pub fn check(snap: &rbac::Snapshot, user: &User, a: &Attributes) -> Result<(), ApiError> {
    match decide(snap, user, a) {
        rbac::Decision::Allow(_) => Ok(()),
        rbac::Decision::Deny(reason) => {
            let mut why = forbidden_message(user, a);
            if !reason.is_empty() {
                why = format!("{why}: {reason}");
            }
            let resource = if a.resource_request {
                a.resource.as_str()
            } else {
                ""
            };
            Err(forbidden(&a.api_group, resource, &a.name, &why))
        }
    }
}

/// The checks one request needs: its own attributes and, for a GET that upgrades to a
/// stream on pods' exec/attach/portforward, `create` as well (upstream checks both since
/// kubectl switched those to WebSockets, so `get` alone cannot run commands).
pub fn request_checks(method: &Method, path: &str, watch: bool, upgrade: bool) -> Vec<Attributes> {
    let a = request_attributes(method, path, watch);
    let streams = a.resource == "pods"
        && a.api_group.is_empty()
        && matches!(a.subresource.as_str(), "exec" | "attach" | "portforward");
    let mut out = vec![a];
    if upgrade && streams && *method == Method::GET {
        let mut c = out[0].clone();
        c.verb = "create".into();
        out.push(c);
    }
    out
}

/// Escalation prevention on writes of RBAC objects, given the object about to be stored
/// (upstream's policy-based storage): a Role/ClusterRole may hold only rules its writer holds
/// (in its namespace; cluster-wide for a ClusterRole) unless they may `escalate`, and only
/// cluster admins (`escalate` on clusterroles) may set an aggregationRule; a binding may refer
/// only to a role whose rules its writer holds unless they may `bind` that role.
///
/// `stored_ref` is the referenced role's rules as read from the store, for a role written so
/// recently that the cache may not have it yet (None: look in the snapshot only).
pub fn check_grant(
    snap: &rbac::Snapshot,
    user: &User,
    resource: &str,
    ns: Option<&str>,
    obj: &serde_json::Value,
    stored_ref: Option<Vec<rbac::Rule>>,
) -> Result<(), ApiError> {
    const RBAC: &str = "rbac.authorization.k8s.io";
    if user.is_master() {
        return Ok(());
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    let ns_s = ns.unwrap_or("");
    let may = |verb: &str, res: &str, obj_name: &str| {
        let a = Attributes {
            verb: verb.into(),
            resource_request: true,
            api_group: RBAC.into(),
            resource: res.into(),
            namespace: ns_s.into(),
            name: obj_name.into(),
            ..Default::default()
        };
        matches!(snap.authorize(user, &a), rbac::Decision::Allow(_))
    };
    let requested: Vec<rbac::Rule> = match resource {
        "roles" | "clusterroles" => {
            if may("escalate", resource, name) {
                return Ok(());
            }
            if resource == "clusterroles" && obj["aggregationRule"].is_object() {
                return Err(forbidden(
                    RBAC,
                    resource,
                    name,
                    "must have cluster-admin privileges to use the aggregationRule",
                ));
            }
            serde_json::from_value(obj["rules"].clone()).unwrap_or_default()
        }
        "rolebindings" | "clusterrolebindings" => {
            let role_ref: rbac::RoleRef =
                serde_json::from_value(obj["roleRef"].clone()).unwrap_or_default();
            let ref_resource = if role_ref.kind == "Role" {
                "roles"
            } else {
                "clusterroles"
            };
            if may("bind", ref_resource, &role_ref.name) {
                return Ok(());
            }
            match snap
                .role_ref_rules(&role_ref, ns)
                .map(<[_]>::to_vec)
                .or(stored_ref)
            {
                Some(rules) => rules,
                None => {
                    let gr = format!("{ref_resource}.{RBAC}");
                    return Err(ApiError::not_found(&gr, &role_ref.name));
                }
            }
        }
        _ => return Ok(()),
    };
    let missing = escalation::missing(&snap.rules_for(user, ns_s), &requested);
    if missing.is_empty() {
        return Ok(());
    }
    Err(forbidden(
        RBAC,
        resource,
        name,
        &escalation::escalation_message(user, &missing),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(m: Method, p: &str, watch: bool) -> (String, String, String, String, String, String) {
        let a = request_attributes(&m, p, watch);
        (
            a.verb,
            a.api_group,
            a.resource,
            a.subresource,
            a.namespace,
            a.name,
        )
    }

    fn t(
        v: &str,
        g: &str,
        r: &str,
        s: &str,
        ns: &str,
        n: &str,
    ) -> (String, String, String, String, String, String) {
        (v.into(), g.into(), r.into(), s.into(), ns.into(), n.into())
    }

    #[test]
    fn request_info_as_upstream() {
        assert_eq!(
            attrs(Method::GET, "/api/v1/namespaces/a/pods", false),
            t("list", "", "pods", "", "a", "")
        );
        assert_eq!(
            attrs(Method::GET, "/api/v1/namespaces/a/pods", true),
            t("watch", "", "pods", "", "a", "")
        );
        assert_eq!(
            attrs(Method::GET, "/api/v1/pods", true),
            t("watch", "", "pods", "", "", "")
        );
        assert_eq!(
            attrs(Method::POST, "/api/v1/namespaces/a/pods/p/exec", false),
            t("create", "", "pods", "exec", "a", "p")
        );
        assert_eq!(
            attrs(Method::GET, "/api/v1/namespaces/a/pods/p/log", false),
            t("get", "", "pods", "log", "a", "p")
        );
        assert_eq!(
            attrs(
                Method::PUT,
                "/apis/apps/v1/namespaces/a/deployments/d/scale",
                false
            ),
            t("update", "apps", "deployments", "scale", "a", "d")
        );
        assert_eq!(
            attrs(
                Method::DELETE,
                "/apis/rbac.authorization.k8s.io/v1/clusterroles",
                false
            ),
            t(
                "deletecollection",
                "rbac.authorization.k8s.io",
                "clusterroles",
                "",
                "",
                ""
            )
        );
        assert_eq!(
            attrs(Method::GET, "/api/v1/namespaces/a", false),
            t("get", "", "namespaces", "", "a", "a")
        );
        assert_eq!(
            attrs(Method::PUT, "/api/v1/namespaces/a/finalize", false),
            t("update", "", "namespaces", "finalize", "a", "a")
        );
        let disco = request_attributes(&Method::GET, "/apis/apps/v1", false);
        assert!(!disco.resource_request);
        assert_eq!(disco.verb, "get");
        let ws = request_checks(
            &Method::GET,
            "/api/v1/namespaces/a/pods/p/exec",
            false,
            true,
        );
        assert_eq!(
            ws.iter().map(|a| a.verb.as_str()).collect::<Vec<_>>(),
            ["get", "create"]
        );
    }

    #[test]
    fn denials_read_like_upstream() {
        let snap = rbac::Snapshot::default();
        let u = User {
            name: "alice".into(),
            groups: vec![AUTHENTICATED.into()],
        };
        let e = check(
            &snap,
            &u,
            &request_attributes(&Method::GET, "/api/v1/namespaces/b/pods", false),
        )
        .unwrap_err();
        assert_eq!(e.code, StatusCode::FORBIDDEN);
        assert_eq!(
            e.message,
            "pods is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"b\""
        );
        assert_eq!(
            (e.kind.as_deref(), e.name.as_deref()),
            (Some("pods"), Some(""))
        );
        let e = check(
            &snap,
            &u,
            &request_attributes(&Method::POST, "/api/v1/namespaces/b/pods/p/exec", false),
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            "pods \"p\" is forbidden: User \"alice\" cannot create resource \"pods/exec\" in API group \"\" in the namespace \"b\""
        );
        let e = check(
            &snap,
            &u,
            &request_attributes(
                &Method::GET,
                "/apis/rbac.authorization.k8s.io/v1/clusterroles/x",
                false,
            ),
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            "clusterroles.rbac.authorization.k8s.io \"x\" is forbidden: User \"alice\" cannot get resource \"clusterroles\" in API group \"rbac.authorization.k8s.io\" at the cluster scope"
        );
        let e = check(
            &snap,
            &u,
            &request_attributes(&Method::GET, "/metrics", false),
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            "forbidden: User \"alice\" cannot get path \"/metrics\""
        );
        let admin = User {
            name: "system:admin".into(),
            groups: vec![MASTERS.into()],
        };
        assert!(
            check(
                &snap,
                &admin,
                &request_attributes(&Method::GET, "/metrics", false)
            )
            .is_ok()
        );
    }

    #[test]
    fn grants_are_limited_to_held_rules_unless_bind_or_escalate() {
        use serde_json::json;
        let admin_role = json!({"metadata": {"name": "cluster-admin"},
            "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]});
        let mgr = json!({"metadata": {"name": "mgr", "namespace": "a"}, "rules": [
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["rolebindings", "roles"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]});
        let rb = json!({"metadata": {"name": "m", "namespace": "a"}, "roleRef": {"kind": "Role", "name": "mgr"},
            "subjects": [{"kind": "User", "name": "u"}]});
        let snap = rbac::Snapshot::build(&[mgr], &[admin_role], &[rb], &[]);
        let u = User {
            name: "u".into(),
            groups: vec![],
        };
        let bind = |role: &str| json!({"metadata": {"name": "x"}, "roleRef": {"kind": "ClusterRole", "name": role}});
        let e = check_grant(
            &snap,
            &u,
            "rolebindings",
            Some("a"),
            &bind("cluster-admin"),
            None,
        )
        .unwrap_err();
        assert_eq!(e.code, StatusCode::FORBIDDEN);
        assert!(e.message.starts_with("rolebindings.rbac.authorization.k8s.io \"x\" is forbidden: user \"u\" (groups=[]) is attempting"), "{}", e.message);
        let e = check_grant(&snap, &u, "rolebindings", Some("a"), &bind("nope"), None).unwrap_err();
        assert_eq!(e.code, StatusCode::NOT_FOUND);
        let held = vec![rbac::Rule {
            verbs: vec!["get".into()],
            api_groups: vec!["".into()],
            resources: vec!["pods".into()],
            ..Default::default()
        }];
        assert!(
            check_grant(
                &snap,
                &u,
                "rolebindings",
                Some("a"),
                &bind("nope"),
                Some(held.clone())
            )
            .is_ok()
        );
        let role = json!({"metadata": {"name": "r"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]});
        assert!(check_grant(&snap, &u, "roles", Some("a"), &role, None).is_ok());
        // Held in a, not in b (nor cluster-wide).
        assert!(check_grant(&snap, &u, "roles", Some("b"), &role, None).is_err());
        assert!(check_grant(&snap, &u, "clusterroles", None, &role, None).is_err());
        let admin = User {
            name: "system:admin".into(),
            groups: vec![MASTERS.into()],
        };
        assert!(
            check_grant(
                &snap,
                &admin,
                "rolebindings",
                Some("a"),
                &bind("cluster-admin"),
                None
            )
            .is_ok()
        );
    }
}

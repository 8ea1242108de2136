//! The IO edge of escalation prevention: the sans-IO [`super::check_grant`] decides from the
//! cache's snapshot, and a binding's role missing from it is read from the store first, so a
//! role and its binding can be written back to back (the cache follows the store's watch and
//! may be a moment behind).

use serde_json::Value;

use super::rbac::{RoleRef, Rule};
use super::{User, check_grant};
use crate::App;
use crate::status::ApiError;

/// Checks a create or update of an RBAC object (`plural` in namespace `ns`) by `user`.
pub async fn rbac_write(
    app: &App,
    user: &User,
    plural: &str,
    ns: Option<&str>,
    obj: &Value,
) -> Result<(), ApiError> {
    if user.is_master() {
        return Ok(());
    }
    let snap = app.rbac.snapshot();
    let role_ref: RoleRef = serde_json::from_value(obj["roleRef"].clone()).unwrap_or_default();
    let mut stored: Option<Vec<Rule>> = None;
    if plural.ends_with("bindings") && snap.role_ref_rules(&role_ref, ns).is_none() {
        let key = match role_ref.kind.as_str() {
            "Role" => format!(
                "/registry/roles.rbac.authorization.k8s.io/{}/{}",
                ns.unwrap_or(""),
                role_ref.name
            ),
            _ => format!(
                "/registry/clusterroles.rbac.authorization.k8s.io/{}",
                role_ref.name
            ),
        };
        if let Some(kv) = app.store.get(&key).await? {
            let role: Value = serde_json::from_slice(&kv.value)
                .map_err(|e| ApiError::internal(format!("decoding stored {key}: {e}")))?;
            // An aggregated ClusterRole's rules are what its object carries.
            stored = serde_json::from_value(role["rules"].clone()).ok();
        }
    }
    check_grant(&snap, user, plural, ns, obj, stored)
}

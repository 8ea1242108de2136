//! Typed decoding of request objects through the k8s-openapi types: wrong JSON types are a
//! 400 (as the Go decoder's "cannot unmarshal" is), and fields the type does not have are
//! unknown fields, handled per `fieldValidation`: `Strict` rejects them, `Warn` (the
//! default) and `Ignore` drop them, `Warn` with a `Warning` header per field. Unknown
//! fields are never stored, as in Kubernetes, where objects are decoded into Go structs.

use http::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::status::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(q: Option<&str>) -> Result<FieldValidation, ApiError> {
        match q {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation parameter unsupported: {other:?}; supported values: \"Ignore\", \"Warn\", \"Strict\""
            ))),
        }
    }
}

fn roundtrip<T: DeserializeOwned + Serialize>(v: &Value) -> Result<Value, serde_json::Error> {
    let t: T = serde_json::from_value(v.clone())?;
    serde_json::to_value(t)
}

/// The object as its typed form sees it; None for kinds without a typed form here.
fn typed(kind: &str, v: &Value) -> Option<Result<Value, serde_json::Error>> {
    use k8s_openapi::api::{apps, batch, coordination, core, discovery, networking, node, rbac};
    Some(match kind {
        "Namespace" => roundtrip::<core::v1::Namespace>(v),
        "Node" => roundtrip::<core::v1::Node>(v),
        "Pod" => roundtrip::<core::v1::Pod>(v),
        "Service" => roundtrip::<core::v1::Service>(v),
        "Endpoints" => roundtrip::<core::v1::Endpoints>(v),
        "ConfigMap" => roundtrip::<core::v1::ConfigMap>(v),
        "Secret" => roundtrip::<core::v1::Secret>(v),
        "ServiceAccount" => roundtrip::<core::v1::ServiceAccount>(v),
        "Event" => roundtrip::<core::v1::Event>(v),
        "Deployment" => roundtrip::<apps::v1::Deployment>(v),
        "ReplicaSet" => roundtrip::<apps::v1::ReplicaSet>(v),
        "DaemonSet" => roundtrip::<apps::v1::DaemonSet>(v),
        "ControllerRevision" => roundtrip::<apps::v1::ControllerRevision>(v),
        "Job" => roundtrip::<batch::v1::Job>(v),
        "CronJob" => roundtrip::<batch::v1::CronJob>(v),
        "Lease" => roundtrip::<coordination::v1::Lease>(v),
        "EndpointSlice" => roundtrip::<discovery::v1::EndpointSlice>(v),
        "NetworkPolicy" => roundtrip::<networking::v1::NetworkPolicy>(v),
        "RuntimeClass" => roundtrip::<node::v1::RuntimeClass>(v),
        "Role" => roundtrip::<rbac::v1::Role>(v),
        "ClusterRole" => roundtrip::<rbac::v1::ClusterRole>(v),
        "RoleBinding" => roundtrip::<rbac::v1::RoleBinding>(v),
        "ClusterRoleBinding" => roundtrip::<rbac::v1::ClusterRoleBinding>(v),
        _ => return None,
    })
}

/// Paths of keys in `input` that `typed` lacks. Null-valued keys are not unknown (they
/// decode to "unset").
fn unknown(input: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(i), Value::Object(t)) => {
            for (k, v) in i {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match t.get(k) {
                    Some(tv) => unknown(v, tv, &p, out),
                    None if v.is_null() => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(i), Value::Array(t)) => {
            for (n, (iv, tv)) in i.iter().zip(t).enumerate() {
                unknown(iv, tv, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

fn remove_path(v: &mut Value, path: &str) {
    // Paths are built by `unknown` from keys and indexes; split them back.
    let mut cur = v;
    let mut parts: Vec<String> = Vec::new();
    for seg in path.split('.') {
        let mut s = seg;
        while let Some(i) = s.find('[') {
            if i > 0 {
                parts.push(s[..i].to_string());
            }
            let end = s[i..].find(']').map(|e| i + e).unwrap_or(s.len() - 1);
            parts.push(s[i..=end].to_string());
            s = &s[end + 1..];
        }
        if !s.is_empty() {
            parts.push(s.to_string());
        }
    }
    let Some((last, init)) = parts.split_last() else {
        return;
    };
    for p in init {
        let next = if let Some(idx) = p.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
            idx.parse::<usize>().ok().and_then(|i| cur.get_mut(i))
        } else {
            cur.get_mut(p.as_str())
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(last.as_str());
    }
}

/// Checks `obj` (a `kind` object) against its type. Returns the warnings to send; under
/// Strict an unknown field is a 400. Unknown fields are removed from `obj` otherwise.
pub fn check(
    kind: &str,
    api_version: &str,
    obj: &mut Value,
    mode: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    let Some(res) = typed(kind, obj) else {
        return Ok(vec![]);
    };
    // A missing required field is validation's to report (a 422 naming the field, as
    // upstream); the typed form cannot be built, so unknown fields are not judged then.
    if let Err(e) = &res
        && e.to_string().starts_with("missing field")
    {
        return Ok(vec![]);
    }
    let t = res.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("{kind} in version \"{api_version}\" cannot be handled as a {kind}: {e}"),
        )
    })?;
    let mut paths = Vec::new();
    unknown(obj, &t, "", &mut paths);
    if paths.is_empty() {
        return Ok(vec![]);
    }
    let msgs: Vec<String> = paths
        .iter()
        .map(|p| format!("unknown field \"{p}\""))
        .collect();
    if mode == FieldValidation::Strict {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("strict decoding error: {}", msgs.join(", ")),
        ));
    }
    for p in &paths {
        remove_path(obj, p);
    }
    Ok(if mode == FieldValidation::Warn {
        msgs
    } else {
        vec![]
    })
}

/// Adds one `Warning: 299 - "..."` header per message, as kube-apiserver does.
pub fn add_warnings(resp: &mut axum::response::Response, warnings: &[String]) {
    for w in warnings {
        let escaped = w.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(h) = http::HeaderValue::from_str(&format!("299 - \"{escaped}\"")) {
            resp.headers_mut().append(http::header::WARNING, h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deploy() -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "x"}]}}}})
    }

    #[test]
    fn known_objects_pass_unchanged() {
        let mut d = deploy();
        let before = d.clone();
        assert!(
            check("Deployment", "apps/v1", &mut d, FieldValidation::Strict)
                .expect("ok")
                .is_empty()
        );
        assert_eq!(d, before);
    }

    #[test]
    fn unknown_fields_are_named_with_their_path() {
        let mut d = deploy();
        d["spec"]["replica"] = json!(3);
        d["spec"]["template"]["spec"]["containers"][0]["imagee"] = json!("y");
        let e = check(
            "Deployment",
            "apps/v1",
            &mut d.clone(),
            FieldValidation::Strict,
        )
        .expect_err("strict");
        assert_eq!(e.code, StatusCode::BAD_REQUEST);
        assert!(
            e.message.contains("unknown field \"spec.replica\""),
            "{}",
            e.message
        );
        assert!(
            e.message
                .contains("unknown field \"spec.template.spec.containers[0].imagee\""),
            "{}",
            e.message
        );
        let w = check("Deployment", "apps/v1", &mut d, FieldValidation::Warn).expect("warn");
        assert_eq!(w.len(), 2);
        assert_eq!(d, deploy(), "unknown fields are dropped, never stored");
    }

    #[test]
    fn wrong_types_are_bad_requests() {
        let mut d = deploy();
        d["spec"]["replicas"] = json!("two");
        let e = check("Deployment", "apps/v1", &mut d, FieldValidation::Ignore).expect_err("type");
        assert!(
            e.message.contains("cannot be handled as a Deployment"),
            "{}",
            e.message
        );
    }

    #[test]
    fn missing_required_fields_are_left_to_validation() {
        let mut d = deploy();
        d["spec"]["template"]["spec"]["containers"][0]
            .as_object_mut()
            .map(|c| c.remove("name"));
        assert!(check("Deployment", "apps/v1", &mut d, FieldValidation::Strict).is_ok());
    }

    #[test]
    fn modes_parse() {
        assert_eq!(
            FieldValidation::parse(None).expect("default"),
            FieldValidation::Warn
        );
        assert!(FieldValidation::parse(Some("Loose")).is_err());
    }
}

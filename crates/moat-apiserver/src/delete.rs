//! Deletion semantics as Kubernetes' generic registry has them: DeleteOptions
//! (propagationPolicy, gracePeriodSeconds, preconditions, dryRun), the garbage collector's
//! `orphan` / `foregroundDeletion` finalizers, graceful pod deletion (the node agent finishes
//! it with a grace-0 delete once the containers are gone) and namespaces that stay
//! `Terminating` until the namespace controller empties them and clears `spec.finalizers`.
//!
//! [`plan`] is pure: it decides, from the stored object and the options, whether the delete
//! happens now or the object is only marked. The handlers do the store IO.

use chrono::{DateTime, Utc};
use http::StatusCode;
use serde_json::{Value, json};

use crate::status::ApiError;

pub const FINALIZER_ORPHAN: &str = "orphan";
pub const FINALIZER_FOREGROUND: &str = "foregroundDeletion";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    Orphan,
    Background,
    Foreground,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    /// None = the resource's default (Background for every kind moat serves).
    pub propagation: Option<Propagation>,
    pub grace_period: Option<i64>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub dry_run: bool,
}

/// Reads DeleteOptions from the query string and/or the request body (kubectl sends a body;
/// curl users send query parameters). The body wins where both are given, as upstream.
pub fn parse_options(
    q: &std::collections::HashMap<String, String>,
    body: &[u8],
) -> Result<DeleteOptions, ApiError> {
    let mut o = DeleteOptions::default();
    let bad = |field: &str, msg: String| {
        ApiError::invalid(
            "DeleteOptions",
            "",
            vec![moat_api::Cause::new("FieldValueNotSupported", field, msg)],
        )
    };
    let parse_prop = |s: &str| match s {
        "Orphan" => Ok(Propagation::Orphan),
        "Background" => Ok(Propagation::Background),
        "Foreground" => Ok(Propagation::Foreground),
        other => Err(bad(
            "propagationPolicy",
            format!(
                "Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
            ),
        )),
    };
    if let Some(p) = q.get("propagationPolicy") {
        o.propagation = Some(parse_prop(p)?);
    }
    if q.get("orphanDependents").is_some_and(|v| v == "true") {
        o.propagation = Some(Propagation::Orphan);
    }
    if let Some(g) = q.get("gracePeriodSeconds") {
        o.grace_period = Some(g.parse().map_err(|_| {
            ApiError::bad_request(format!("gracePeriodSeconds {g:?} is not an integer"))
        })?);
    }
    o.dry_run = q.get("dryRun").is_some_and(|d| d == "All");
    let trimmed = body.iter().filter(|b| !b.is_ascii_whitespace()).count();
    if trimmed > 0 {
        let v: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("the DeleteOptions body is not valid JSON: {e}"))
        })?;
        if let Some(k) = v["kind"].as_str()
            && k != "DeleteOptions"
        {
            return Err(ApiError::bad_request(format!(
                "the request body is a {k}, expected DeleteOptions"
            )));
        }
        if let Some(p) = v["propagationPolicy"].as_str() {
            o.propagation = Some(parse_prop(p)?);
        } else if v["orphanDependents"] == json!(true) {
            o.propagation = Some(Propagation::Orphan);
        } else if v["orphanDependents"] == json!(false) && o.propagation.is_none() {
            o.propagation = Some(Propagation::Background);
        }
        if let Some(g) = v.get("gracePeriodSeconds").filter(|g| !g.is_null()) {
            o.grace_period = Some(g.as_i64().ok_or_else(|| {
                bad(
                    "gracePeriodSeconds",
                    format!("Invalid value: {g}: must be an integer"),
                )
            })?);
        }
        if let Some(u) = v["preconditions"]["uid"].as_str() {
            o.precondition_uid = Some(u.to_string());
        }
        if let Some(r) = v["preconditions"]["resourceVersion"].as_str() {
            o.precondition_rv = Some(r.to_string());
        }
        if v["dryRun"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x == "All"))
        {
            o.dry_run = true;
        }
    }
    if let Some(g) = o.grace_period
        && g < 0
    {
        return Err(bad(
            "gracePeriodSeconds",
            format!("Invalid value: {g}: must be >= 0"),
        ));
    }
    Ok(o)
}

#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Remove the object from the store now.
    DeleteNow,
    /// Store this object (deletionTimestamp and/or finalizers set) instead of deleting it.
    Mark(Value),
    /// Already marked the same way: nothing to write; answer with the object.
    Unchanged,
}

fn finalizers(o: &Value) -> Vec<String> {
    o["metadata"]["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// True when a namespace still waits for its contents to be removed.
fn namespace_pending(kind: &str, o: &Value) -> bool {
    kind == "Namespace"
        && o["spec"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
}

/// True when an object marked for deletion has nothing left to wait for: no finalizers, no
/// grace period still running on a node, and (for namespaces) no namespace finalizers.
pub fn deletion_complete(kind: &str, o: &Value) -> bool {
    o["metadata"]["deletionTimestamp"].is_string()
        && finalizers(o).is_empty()
        && o["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(0)
            == 0
        && !namespace_pending(kind, o)
}

/// Decides what a DELETE does to `cur` (the stored object, with its resourceVersion).
pub fn plan(
    kind: &str,
    cur: &Value,
    opts: &DeleteOptions,
    now: DateTime<Utc>,
) -> Result<Plan, ApiError> {
    let name = cur["metadata"]["name"].as_str().unwrap_or("");
    if let Some(uid) = &opts.precondition_uid
        && cur["metadata"]["uid"].as_str() != Some(uid.as_str())
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                cur["metadata"]["uid"].as_str().unwrap_or("")
            ),
        ));
    }
    if let Some(rv) = &opts.precondition_rv
        && cur["metadata"]["resourceVersion"].as_str() != Some(rv.as_str())
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                cur["metadata"]["resourceVersion"].as_str().unwrap_or("")
            ),
        ));
    }
    let mut next = cur.clone();
    let mut fins = finalizers(cur);
    let already = cur["metadata"]["deletionTimestamp"].is_string();
    match opts.propagation {
        Some(Propagation::Orphan) => {
            fins.retain(|f| f != FINALIZER_FOREGROUND);
            if !fins.iter().any(|f| f == FINALIZER_ORPHAN) {
                fins.push(FINALIZER_ORPHAN.into());
            }
        }
        Some(Propagation::Foreground) => {
            fins.retain(|f| f != FINALIZER_ORPHAN);
            if !fins.iter().any(|f| f == FINALIZER_FOREGROUND) {
                fins.push(FINALIZER_FOREGROUND.into());
            }
        }
        Some(Propagation::Background) => {
            fins.retain(|f| f != FINALIZER_ORPHAN && f != FINALIZER_FOREGROUND)
        }
        None => {}
    }
    // Graceful deletion: only a pod running on a node has someone (its node agent) to wait
    // for; an unscheduled or finished pod goes at once, as upstream.
    let mut grace = 0;
    if kind == "Pod" {
        let bound = cur["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty());
        let finished = matches!(
            cur["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        );
        if bound && !finished {
            grace = opts.grace_period.unwrap_or_else(|| {
                cur["spec"]["terminationGracePeriodSeconds"]
                    .as_i64()
                    .unwrap_or(30)
            });
        }
    }
    let pending_ns = namespace_pending(kind, cur);
    if fins.is_empty() && grace == 0 && !pending_ns {
        return Ok(Plan::DeleteNow);
    }
    if !fins.is_empty() {
        next["metadata"]["finalizers"] = json!(fins);
    } else if let Some(m) = next["metadata"].as_object_mut() {
        m.remove("finalizers");
    }
    if kind == "Namespace" {
        next["status"]["phase"] = json!("Terminating");
    }
    if !already {
        let at = now + chrono::Duration::seconds(grace);
        next["metadata"]["deletionTimestamp"] =
            json!(moat_api::time::rfc3339_from_secs(at.timestamp()));
        next["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
    } else {
        // A second delete may only shorten a running grace period (e.g. `--force`).
        let old = cur["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(0);
        if grace < old {
            let at = now + chrono::Duration::seconds(grace);
            next["metadata"]["deletionTimestamp"] =
                json!(moat_api::time::rfc3339_from_secs(at.timestamp()));
            next["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        }
    }
    if deletion_complete(kind, &next) {
        return Ok(Plan::DeleteNow);
    }
    tracing::debug!(%kind, %name, "delete marks the object");
    if next == *cur {
        Ok(Plan::Unchanged)
    } else {
        Ok(Plan::Mark(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .expect("time")
            .with_timezone(&Utc)
    }

    fn opts(p: Option<Propagation>, g: Option<i64>) -> DeleteOptions {
        DeleteOptions {
            propagation: p,
            grace_period: g,
            ..Default::default()
        }
    }

    #[test]
    fn background_delete_of_plain_object_is_immediate() {
        let cm = json!({"metadata": {"name": "a", "uid": "u"}});
        assert_eq!(
            plan("ConfigMap", &cm, &opts(None, None), t0()).expect("plan"),
            Plan::DeleteNow
        );
        assert_eq!(
            plan(
                "ConfigMap",
                &cm,
                &opts(Some(Propagation::Background), None),
                t0()
            )
            .expect("plan"),
            Plan::DeleteNow
        );
    }

    #[test]
    fn foreground_and_orphan_add_their_finalizer_and_mark() {
        let d = json!({"metadata": {"name": "d", "finalizers": ["example.org/x"]}});
        let Plan::Mark(m) = plan(
            "Deployment",
            &d,
            &opts(Some(Propagation::Foreground), None),
            t0(),
        )
        .expect("plan") else {
            panic!("expected a mark")
        };
        assert_eq!(
            m["metadata"]["finalizers"],
            json!(["example.org/x", "foregroundDeletion"])
        );
        assert_eq!(m["metadata"]["deletionTimestamp"], "2026-01-01T00:00:00Z");
        assert_eq!(m["metadata"]["deletionGracePeriodSeconds"], 0);
        // Switching to Orphan replaces the foreground finalizer.
        let Plan::Mark(o) = plan(
            "Deployment",
            &m,
            &opts(Some(Propagation::Orphan), None),
            t0(),
        )
        .expect("plan") else {
            panic!("expected a mark")
        };
        assert_eq!(
            o["metadata"]["finalizers"],
            json!(["example.org/x", "orphan"])
        );
        // The same delete again changes nothing.
        assert_eq!(
            plan(
                "Deployment",
                &o,
                &opts(Some(Propagation::Orphan), None),
                t0()
            )
            .expect("plan"),
            Plan::Unchanged
        );
    }

    #[test]
    fn bound_pods_are_deleted_gracefully_and_forced_with_zero() {
        let p = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 45}, "status": {"phase": "Running"}});
        let Plan::Mark(m) = plan("Pod", &p, &opts(None, None), t0()).expect("plan") else {
            panic!("expected a mark")
        };
        assert_eq!(m["metadata"]["deletionGracePeriodSeconds"], 45);
        assert_eq!(m["metadata"]["deletionTimestamp"], "2026-01-01T00:00:45Z");
        // A shorter grace period shortens; the agent's final grace-0 delete removes it.
        let Plan::Mark(s) = plan("Pod", &m, &opts(None, Some(5)), t0()).expect("plan") else {
            panic!("expected a mark")
        };
        assert_eq!(s["metadata"]["deletionGracePeriodSeconds"], 5);
        assert_eq!(
            plan("Pod", &s, &opts(None, Some(60)), t0()).expect("plan"),
            Plan::Unchanged,
            "a longer grace period never extends"
        );
        assert_eq!(
            plan("Pod", &s, &opts(None, Some(0)), t0()).expect("plan"),
            Plan::DeleteNow
        );
        // Unscheduled and finished pods go at once.
        let pending = json!({"metadata": {"name": "p"}, "spec": {}});
        assert_eq!(
            plan("Pod", &pending, &opts(None, None), t0()).expect("plan"),
            Plan::DeleteNow
        );
        let done = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n"}, "status": {"phase": "Succeeded"}});
        assert_eq!(
            plan("Pod", &done, &opts(None, None), t0()).expect("plan"),
            Plan::DeleteNow
        );
    }

    #[test]
    fn namespaces_terminate_until_their_finalizers_are_cleared() {
        let ns = json!({"metadata": {"name": "x"}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
        let Plan::Mark(m) = plan("Namespace", &ns, &opts(None, None), t0()).expect("plan") else {
            panic!("expected a mark")
        };
        assert_eq!(m["status"]["phase"], "Terminating");
        assert!(!deletion_complete("Namespace", &m));
        let mut cleared = m.clone();
        cleared["spec"]["finalizers"] = json!([]);
        assert!(deletion_complete("Namespace", &cleared));
    }

    #[test]
    fn preconditions_are_checked() {
        let cm = json!({"metadata": {"name": "a", "uid": "u1", "resourceVersion": "7"}});
        let mut o = opts(None, None);
        o.precondition_uid = Some("u2".into());
        assert_eq!(
            plan("ConfigMap", &cm, &o, t0()).expect_err("uid").code,
            StatusCode::CONFLICT
        );
        o.precondition_uid = Some("u1".into());
        o.precondition_rv = Some("6".into());
        assert_eq!(
            plan("ConfigMap", &cm, &o, t0()).expect_err("rv").code,
            StatusCode::CONFLICT
        );
        o.precondition_rv = Some("7".into());
        assert_eq!(
            plan("ConfigMap", &cm, &o, t0()).expect("ok"),
            Plan::DeleteNow
        );
    }

    #[test]
    fn options_from_query_and_body() {
        let mut q = std::collections::HashMap::new();
        q.insert("propagationPolicy".to_string(), "Orphan".to_string());
        let o = parse_options(&q, b"").expect("query");
        assert_eq!(o.propagation, Some(Propagation::Orphan));
        let o = parse_options(
            &Default::default(),
            br#"{"kind":"DeleteOptions","apiVersion":"v1","propagationPolicy":"Foreground","gracePeriodSeconds":3}"#,
        )
        .expect("body");
        assert_eq!(
            (o.propagation, o.grace_period),
            (Some(Propagation::Foreground), Some(3))
        );
        assert!(
            parse_options(&Default::default(), br#"{"propagationPolicy":"Sideways"}"#).is_err()
        );
        assert!(parse_options(&Default::default(), br#"{"gracePeriodSeconds":-1}"#).is_err());
        assert!(parse_options(&Default::default(), b"{not json").is_err());
    }
}

//! Request handling: routes every path to discovery or to a resource of the registry, and
//! implements the object semantics (uid, timestamps, generation, resourceVersion from the
//! store revision, compare-and-swap updates, finalizers, watch).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures::StreamExt;
use http::{HeaderMap, Method, StatusCode, header};
use moat_api::ResourceInfo;
use moat_store::{ListOptions, StoreError, WatchEvent};
use serde_json::{Value, json};

use crate::App;
use crate::body::{apply_patch, parse_json, read_body, read_object_body};
use crate::select::{fields_match, labels_match, parse_fields, parse_labels};
use crate::status::ApiError;
use crate::table::table;

/// Silence after which a watch that allows bookmarks gets one.
const BOOKMARK_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

type Q = HashMap<String, String>;

/// What a resource path names.
#[derive(Debug)]
struct Target {
    res: &'static ResourceInfo,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
    /// Who asks: RBAC writes are checked against what this user holds (escalation).
    user: crate::authz::User,
}

mod collection;
mod deletion;
use collection::{list, selectors, watch};
use deletion::{delete, delete_collection, remove};

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let find = |plural: &str| moat_api::resource_by_plural(group, version, plural);
    match rest {
        ["namespaces", ns, plural, tail @ ..] if find(plural).is_some_and(|r| r.namespaced) => {
            let res = find(plural)?;
            Some(Target {
                res,
                ns: Some(ns.to_string()),
                name: tail.first().map(|s| s.to_string()),
                sub: tail.get(1).map(|s| s.to_string()),
                user: Default::default(),
            })
            .filter(|_| tail.len() <= 2)
        }
        [plural, tail @ ..] if tail.len() <= 2 => {
            let res = find(plural)?;
            Some(Target {
                res,
                ns: None,
                name: tail.first().map(|s| s.to_string()),
                sub: tail.get(1).map(|s| s.to_string()),
                user: Default::default(),
            })
        }
        _ => None,
    }
}

pub fn store_key(res: &ResourceInfo, ns: Option<&str>, name: &str) -> String {
    match ns {
        Some(ns) if res.namespaced => format!("/registry/{}/{ns}/{name}", res.group_resource()),
        _ => format!("/registry/{}/{name}", res.group_resource()),
    }
}

fn store_prefix(res: &ResourceInfo, ns: Option<&str>) -> String {
    match ns {
        Some(ns) if res.namespaced => format!("/registry/{}/{ns}/", res.group_resource()),
        _ => format!("/registry/{}/", res.group_resource()),
    }
}

fn decode(kv: &moat_store::KeyValue) -> Result<Value, ApiError> {
    let mut v: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("decoding stored object {}: {e}", kv.key)))?;
    v["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
    Ok(v)
}

fn encode(v: &Value) -> Vec<u8> {
    let mut v = v.clone();
    if let Some(m) = v["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

fn wants_table(h: &HeaderMap) -> bool {
    h.get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

pub(crate) fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn now() -> String {
    moat_api::time::rfc3339_from_millis(chrono::Utc::now().timestamp_millis())
}

fn gen_suffix() -> String {
    use rand::Rng;
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut r = rand::rng();
    (0..5)
        .map(|_| ALPHA[r.random_range(0..ALPHA.len())] as char)
        .collect()
}

// ---------- handlers ----------

/// Subresources some resource has; the match in [`handle`] decides which verbs each takes.
const SUBRESOURCES: &[&str] = &[
    "status",
    "scale",
    "binding",
    "finalize",
    "log",
    "exec",
    "attach",
    "portforward",
];

pub async fn handle(
    app: Arc<App>,
    user: &crate::authz::User,
    method: Method,
    path: &str,
    q: Q,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let trimmed = path.trim_end_matches('/');
    if trimmed == "/api" || trimmed == "/apis" {
        return Ok(crate::discovery::root(
            trimmed == "/apis",
            &headers,
            &app.advertise,
        ));
    }
    if let Some(list) = crate::discovery::resource_list(path) {
        return Ok(json_response(StatusCode::OK, &list));
    }
    if let Some(group) = crate::discovery::api_group(path) {
        return Ok(json_response(StatusCode::OK, &group));
    }
    let mut t = parse_path(path).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    })?;
    // A path with an unknown subresource names no resource at all (kube-apiserver: 404);
    // `/namespaces/default/nothings` parses as one, so answering 405 would mislead.
    // (Pods' ephemeralcontainers is answered below with a Status kubectl debug can read.)
    if t.sub.as_deref().is_some_and(|s| {
        let debug = s == "ephemeralcontainers" && t.res.kind == "Pod";
        !(SUBRESOURCES.contains(&s) || debug)
    }) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        ));
    }
    t.user = user.clone();
    let watching = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    match (&method, &t.name, t.sub.as_deref()) {
        (&Method::GET, None, None) if watching => watch(app, &t, &q, &headers).await,
        (&Method::GET, None, None) => list(app, &t, &q, &headers).await,
        (&Method::GET, Some(name), None) => {
            let obj = get(&app, &t, name).await?;
            if wants_table(&headers) {
                let rv = obj["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                return Ok(json_response(
                    StatusCode::OK,
                    &table(
                        t.res.kind,
                        &[obj],
                        &rv,
                        q.get("includeObject").map(String::as_str).unwrap_or(""),
                        true,
                    ),
                ));
            }
            Ok(json_response(StatusCode::OK, &obj))
        }
        (&Method::GET, Some(name), Some("status")) => {
            Ok(json_response(StatusCode::OK, &get(&app, &t, name).await?))
        }
        (&Method::GET, Some(name), Some("scale")) => Ok(json_response(
            StatusCode::OK,
            &scale_of(&get(&app, &t, name).await?),
        )),
        (&Method::POST, None, None) => create(app, &t, &q, &headers, body).await,
        (&Method::POST, Some(name), Some("binding")) => binding(app, &t, name, body).await,
        // kubectl debug reads `details.name` of a NotFound answer without checking for
        // details (a nil dereference in 1.27-1.33): answer with a full Status that is not a
        // NotFound, naming the pod, until the node agent can run ephemeral containers.
        (_, Some(name), Some("ephemeralcontainers")) if t.res.kind == "Pod" => {
            get(&app, &t, name).await?;
            Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!(
                    "ephemeral containers are not supported by moat yet: the node agent cannot start them in pod {name:?}; use `kubectl debug {name} --copy-to=NAME` or `kubectl exec`"
                ),
            )
            .details(t.res.group, t.res.plural, name))
        }
        (&Method::PUT, Some(name), sub) => {
            let body = read_object_body(&headers, body).await?;
            let manager = write_manager(&q, &headers)?;
            let kind = t.res.kind;
            update(app, &t, name, sub, &q, |cur| {
                if sub.is_some() {
                    return Ok(body.clone());
                }
                let mut n = parse_json(&body)?;
                crate::ssa::track_update(kind, Some(cur), &mut n, &manager);
                Ok(Bytes::from(serde_json::to_vec(&n).unwrap_or_default()))
            })
            .await
        }
        (&Method::PATCH, Some(name), sub) => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            if ct.starts_with("application/apply-patch") {
                return server_side_apply(app, &t, name, sub, &q, &headers, body).await;
            }
            let patch = read_body(&headers, body).await?;
            let manager = write_manager(&q, &headers)?;
            let kind = if sub == Some("scale") {
                "Scale"
            } else {
                t.res.kind
            };
            let pinned = patch_pins_resource_version(&patch);
            update(app, &t, name, sub, &q, move |cur| {
                let out = apply_patch(kind, &ct, cur, &patch)?;
                let mut n = parse_json(&out)?;
                // The patched object carries the resourceVersion it was applied to; unless
                // the patch itself named one, the write is not conditional on it and a
                // concurrent writer means re-applying to the new object (as upstream),
                // not a 409.
                if !pinned && let Some(m) = n["metadata"].as_object_mut() {
                    m.remove("resourceVersion");
                }
                if sub.is_none() {
                    crate::ssa::track_update(kind, Some(cur), &mut n, &manager);
                }
                Ok(Bytes::from(serde_json::to_vec(&n).unwrap_or_default()))
            })
            .await
        }
        (&Method::DELETE, Some(name), None) => delete(app, &t, name, &q, &headers, body).await,
        (&Method::DELETE, None, None) => delete_collection(app, &t, &q, &headers, body).await,
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} is not supported on {path}"),
        )),
    }
}

/// Whether a patch body sets `metadata.resourceVersion` (a merge or strategic patch naming
/// it, or a JSON patch touching `/metadata/resourceVersion`), making the write conditional.
fn patch_pins_resource_version(patch: &[u8]) -> bool {
    match serde_json::from_slice::<Value>(patch) {
        Ok(Value::Object(o)) => o
            .get("metadata")
            .and_then(|m| m.get("resourceVersion"))
            .and_then(Value::as_str)
            .is_some_and(|rv| !rv.is_empty()),
        Ok(Value::Array(ops)) => ops
            .iter()
            .any(|op| op["path"] == "/metadata/resourceVersion"),
        _ => false,
    }
}

async fn get(app: &App, t: &Target, name: &str) -> Result<Value, ApiError> {
    let kv = app
        .store
        .get(&store_key(t.res, t.ns.as_deref(), name))
        .await?;
    let kv = kv.ok_or_else(|| {
        ApiError::not_found(&t.res.group_resource(), name).details(t.res.group, t.res.plural, name)
    })?;
    decode(&kv)
}

/// The stored object at `key`, or the NotFound Status for `name`.
async fn get_kv(
    app: &App,
    t: &Target,
    key: &str,
    name: &str,
) -> Result<moat_store::KeyValue, ApiError> {
    app.store.get(key).await?.ok_or_else(|| {
        ApiError::not_found(&t.res.group_resource(), name).details(t.res.group, t.res.plural, name)
    })
}

async fn namespace_ok(app: &App, ns: &str, creating: bool) -> Result<(), ApiError> {
    let key = format!("/registry/namespaces/{ns}");
    match app.store.get(&key).await? {
        None => Err(ApiError::not_found("namespaces", ns).details("", "namespaces", ns)),
        Some(kv) if creating => {
            let v = decode(&kv)?;
            if v["status"]["phase"] == "Terminating"
                || v["metadata"]["deletionTimestamp"].is_string()
            {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    format!(
                        "unable to create new content in namespace {ns} because it is being terminated"
                    ),
                ));
            }
            Ok(())
        }
        Some(_) => Ok(()),
    }
}

/// The field manager of a non-apply write.
fn write_manager(q: &Q, headers: &HeaderMap) -> Result<String, ApiError> {
    let m = crate::ssa::manager_of(
        q.get("fieldManager").map(String::as_str),
        headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok()),
    );
    crate::ssa::check_manager(&m)?;
    Ok(m)
}

/// `PATCH` with `application/apply-patch+yaml`: server-side apply. Creates the object when
/// it does not exist (201), as upstream.
async fn server_side_apply(
    app: Arc<App>,
    t: &Target,
    name: &str,
    sub: Option<&str>,
    q: &Q,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if sub.is_some() {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "server-side apply to subresources is not supported by moat yet",
        ));
    }
    let raw = read_body(headers, body).await?;
    let applied: Value = serde_yaml::from_slice(&raw).map_err(|e| {
        ApiError::bad_request(format!(
            "the applied configuration is not valid YAML or JSON: {e}"
        ))
    })?;
    if !applied.is_object() {
        return Err(ApiError::bad_request(
            "the applied configuration must be an object",
        ));
    }
    let manager = match q.get("fieldManager").map(String::as_str) {
        Some(m) if !m.is_empty() => m.to_string(),
        _ => {
            return Err(ApiError::bad_request(
                "PATCH with apply-patch requires the fieldManager query parameter",
            ));
        }
    };
    crate::ssa::check_manager(&manager)?;
    let api_version = t.res.api_version();
    if applied["apiVersion"].as_str() != Some(api_version.as_str())
        || applied["kind"].as_str() != Some(t.res.kind)
    {
        return Err(ApiError::bad_request(format!(
            "the applied configuration must set apiVersion {api_version:?} and kind {:?}",
            t.res.kind
        )));
    }
    if let Some(n) = applied["metadata"]["name"].as_str()
        && n != name
    {
        return Err(ApiError::bad_request(format!(
            "the name in the applied configuration ({n}) does not match the name on the URL ({name})"
        )));
    }
    let force = q.get("force").is_some_and(|f| f == "true");
    let key = store_key(t.res, t.ns.as_deref(), name);
    let kind = t.res.kind;
    if app.store.get(&key).await?.is_none() {
        let mut obj = applied.clone();
        obj["metadata"]["name"] = json!(name);
        let obj = crate::ssa::apply(kind, &json!({}), &obj, &manager, force)
            .map_err(|c| crate::ssa::conflict_error(&c))?;
        return create_value(app, t, q, obj, None).await;
    }
    let conditional = applied["metadata"]["resourceVersion"].is_string();
    update(app, t, name, None, q, move |cur| {
        let mut merged = crate::ssa::apply(kind, cur, &applied, &manager, force)
            .map_err(|c| crate::ssa::conflict_error(&c))?;
        if !conditional && let Some(m) = merged["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        Ok(Bytes::from(serde_json::to_vec(&merged).unwrap_or_default()))
    })
    .await
}

async fn create(
    app: Arc<App>,
    t: &Target,
    q: &Q,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let raw = read_object_body(headers, body).await?;
    let obj = parse_json(&raw)?;
    let manager = write_manager(q, headers)?;
    create_value(app, t, q, obj, Some(&manager)).await
}

/// Creates `obj`; `manager` is recorded as the owner of the fields it set (None when the
/// object already carries its managedFields, from an apply).
async fn create_value(
    app: Arc<App>,
    t: &Target,
    q: &Q,
    mut obj: Value,
    manager: Option<&str>,
) -> Result<Response, ApiError> {
    let api_version = t.res.api_version();
    if let Some(k) = obj["kind"].as_str()
        && k != t.res.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({k}) does not match the expected kind ({})",
            t.res.kind
        )));
    }
    if let Some(av) = obj["apiVersion"].as_str()
        && av != api_version
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({api_version})"
        )));
    }
    obj["kind"] = json!(t.res.kind);
    obj["apiVersion"] = json!(api_version);
    let mode = crate::schema::FieldValidation::parse(q.get("fieldValidation").map(String::as_str))?;
    let warnings = crate::schema::check(t.res.kind, &api_version, &mut obj, mode)?;
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    if let Some(m) = manager {
        if let Some(meta) = obj["metadata"].as_object_mut() {
            meta.remove("managedFields");
        }
        crate::ssa::track_update(t.res.kind, None, &mut obj, m);
    }
    if t.res.namespaced {
        let ns = t.ns.clone().ok_or_else(|| {
            ApiError::bad_request(format!("{} must be created in a namespace", t.res.plural))
        })?;
        match obj["metadata"]["namespace"].as_str() {
            Some(n) if n != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => obj["metadata"]["namespace"] = json!(ns),
        }
        namespace_ok(&app, &ns, true).await?;
    } else if let Some(m) = obj["metadata"].as_object_mut() {
        m.remove("namespace");
    }
    let generate = obj["metadata"]["name"]
        .as_str()
        .is_none_or(|n| n.is_empty());
    if generate {
        let base = obj["metadata"]["generateName"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if base.is_empty() {
            return Err(ApiError::invalid(
                t.res.kind,
                "",
                vec![moat_api::Cause::new(
                    "FieldValueRequired",
                    "metadata.name",
                    "Required value: name or generateName is required",
                )],
            ));
        }
        obj["metadata"]["name"] = json!(format!("{base}{}", gen_suffix()));
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    // The uid is known before defaulting: a Job's generated selector names it.
    let uid = uuid::Uuid::new_v4().to_string();
    obj["metadata"]["uid"] = json!(uid);
    crate::validate::default_object(t.res, &mut obj);
    let causes = crate::validate::validate(t.res, &obj);
    if !causes.is_empty() {
        return Err(ApiError::invalid(t.res.kind, &name, causes).details(
            t.res.group,
            t.res.kind,
            &name,
        ));
    }
    no_escalation(&app, t, &obj).await?;
    if t.res.kind == "Pod" {
        admit_pod(&app, &mut obj).await?;
    }
    let meta = obj["metadata"]
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
    meta.insert("uid".into(), json!(uid));
    meta.insert("creationTimestamp".into(), json!(now()));
    meta.remove("resourceVersion");
    meta.remove("deletionTimestamp");
    if !obj["spec"].is_null() {
        obj["metadata"]["generation"] = json!(1);
    }
    if q.get("dryRun").is_some_and(|d| d == "All") {
        return Ok(json_response(StatusCode::CREATED, &obj));
    }
    if t.res.kind == "Service" {
        crate::alloc::allocate(&*app.store, app.service_cidr, &mut obj).await?;
    }
    let key = store_key(t.res, t.ns.as_deref(), &name);
    let created = app.store.create(&key, encode(&obj)).await;
    if created.is_err() && t.res.kind == "Service" {
        crate::alloc::release(&*app.store, &obj).await;
    }
    let kv = created.map_err(|e| match e {
        StoreError::AlreadyExists { .. } => ApiError::new(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", t.res.group_resource()),
        )
        .details(t.res.group, t.res.plural, &name),
        e => e.into(),
    })?;
    let mut resp = json_response(StatusCode::CREATED, &decode(&kv)?);
    crate::schema::add_warnings(&mut resp, &warnings);
    Ok(resp)
}

/// Escalation prevention for RBAC objects (`authz::guard`).
async fn no_escalation(app: &App, t: &Target, obj: &Value) -> Result<(), ApiError> {
    if t.res.group != "rbac.authorization.k8s.io" {
        return Ok(());
    }
    crate::authz::guard::rbac_write(app, &t.user, t.res.plural, t.ns.as_deref(), obj).await
}

async fn admit_pod(app: &App, obj: &mut Value) -> Result<(), ApiError> {
    let mut pod: k8s_openapi::api::core::v1::Pod =
        serde_json::from_value(obj.clone()).map_err(|e| {
            ApiError::bad_request(format!("the Pod in the request is not a valid Pod: {e}"))
        })?;
    let classes: Vec<k8s_openapi::api::node::v1::RuntimeClass> = app
        .store
        .list(
            "/registry/runtimeclasses.node.k8s.io/",
            ListOptions::default(),
        )
        .await?
        .items
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect();
    moat_admission::admit_pod_create(&mut pod, &app.admission, |n| {
        classes
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(n))
            .cloned()
    })
    .map_err(|r| {
        let mut e = ApiError::new(StatusCode::FORBIDDEN, "Forbidden", r.to_string());
        e.causes = vec![r.cause()];
        e
    })?;
    let admitted = serde_json::to_value(&pod).map_err(|e| ApiError::internal(e.to_string()))?;
    obj["spec"] = admitted["spec"].clone();
    Ok(())
}

fn scale_of(o: &Value) -> Value {
    // The selector's string form, expressions included (upstream's Scale does the same).
    let sel = serde_json::from_value(o["spec"]["selector"].clone())
        .ok()
        .and_then(|ls| moat_api::selector::Selector::lenient(&ls))
        .map(|s| s.to_string());
    json!({"kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": o["metadata"]["name"], "namespace": o["metadata"]["namespace"], "uid": o["metadata"]["uid"],
                     "resourceVersion": o["metadata"]["resourceVersion"], "creationTimestamp": o["metadata"]["creationTimestamp"]},
        "spec": {"replicas": o["spec"]["replicas"]},
        "status": {"replicas": o["status"]["replicas"].as_i64().unwrap_or(0), "selector": sel.unwrap_or_default()}})
}

/// Read-modify-write with compare-and-swap; `change` gets the current object (or its Scale
/// for the scale subresource) and returns the new body.
async fn update(
    app: Arc<App>,
    t: &Target,
    name: &str,
    sub: Option<&str>,
    q: &Q,
    change: impl Fn(&Value) -> Result<Bytes, ApiError>,
) -> Result<Response, ApiError> {
    let key = store_key(t.res, t.ns.as_deref(), name);
    let mode = crate::schema::FieldValidation::parse(q.get("fieldValidation").map(String::as_str))?;
    // Scale writes carry no object to record a manager in; the query names it, else the
    // name kubectl uses.
    let scale_manager = q
        .get("fieldManager")
        .cloned()
        .unwrap_or_else(|| "kubectl-scale".to_string());
    for _ in 0..5 {
        let kv = get_kv(&app, t, &key, name).await?;
        let cur = decode(&kv)?;
        let view = if sub == Some("scale") {
            scale_of(&cur)
        } else {
            cur.clone()
        };
        let new_raw = change(&view)?;
        let incoming = parse_json(&new_raw)?;
        // A resourceVersion in the body makes the write conditional on it.
        let expected = match incoming["metadata"]["resourceVersion"].as_str() {
            Some(rv) if !rv.is_empty() => rv
                .parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
            _ => kv.mod_revision,
        };
        let mut next = match sub {
            Some("scale") => {
                let mut n = cur.clone();
                n["spec"]["replicas"] = incoming["spec"]["replicas"].clone();
                crate::ssa::track_update_sub(
                    t.res.kind,
                    Some(&cur),
                    &mut n,
                    &scale_manager,
                    "scale",
                );
                n
            }
            Some("status") => {
                let mut n = cur.clone();
                n["status"] = incoming["status"].clone();
                n
            }
            Some("finalize") if t.res.kind == "Namespace" => {
                let mut n = cur.clone();
                n["spec"]["finalizers"] = incoming["spec"]["finalizers"].clone();
                n
            }
            None => {
                let mut n = incoming.clone();
                if t.res.subresources.contains(&moat_api::Subresource::Status) {
                    n["status"] = cur["status"].clone();
                }
                n
            }
            Some(other) => {
                // With details: kubectl reads `details.name` of NotFound answers.
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("subresource {other:?} not found"),
                )
                .details(t.res.group, t.res.plural, name));
            }
        };
        if next["metadata"]["name"].as_str() != Some(name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                next["metadata"]["name"]
            )));
        }
        for k in [
            "uid",
            "creationTimestamp",
            "namespace",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            next["metadata"][k] = cur["metadata"][k].clone();
        }
        if cur["metadata"]["deletionTimestamp"].is_string() {
            let old: Vec<&Value> = cur["metadata"]["finalizers"]
                .as_array()
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            if let Some(added) = next["metadata"]["finalizers"]
                .as_array()
                .and_then(|a| a.iter().find(|f| !old.contains(f)))
            {
                return Err(ApiError::invalid(
                    t.res.kind,
                    name,
                    vec![moat_api::Cause::new(
                        "FieldValueForbidden",
                        "metadata.finalizers",
                        format!(
                            "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers [{}]",
                            added.as_str().unwrap_or("")
                        ),
                    )],
                ));
            }
        }
        if let Some(m) = next["metadata"].as_object_mut() {
            m.retain(|_, v| !v.is_null());
        }
        next["kind"] = json!(t.res.kind);
        next["apiVersion"] = json!(t.res.api_version());
        let warnings = crate::schema::check(t.res.kind, &t.res.api_version(), &mut next, mode)?;
        crate::validate::default_object(t.res, &mut next);
        let mut causes = crate::validate::validate(t.res, &next);
        causes.extend(crate::validate::validate_update(t.res, &cur, &next));
        if !causes.is_empty() {
            return Err(ApiError::invalid(t.res.kind, name, causes));
        }
        no_escalation(&app, t, &next).await?;
        if t.res.kind == "Service" {
            let (old_ip, new_ip) = (&cur["spec"]["clusterIP"], &next["spec"]["clusterIP"]);
            if new_ip.is_null() || new_ip == "" {
                next["spec"]["clusterIP"] = old_ip.clone();
                next["spec"]["clusterIPs"] = cur["spec"]["clusterIPs"].clone();
            } else if new_ip != old_ip {
                return Err(ApiError::invalid(
                    "Service",
                    name,
                    vec![moat_api::Cause::new(
                        "FieldValueInvalid",
                        "spec.clusterIPs[0]",
                        "Invalid value: field is immutable",
                    )],
                ));
            }
        }
        if next["spec"] != cur["spec"] && !cur["spec"].is_null() {
            next["metadata"]["generation"] =
                json!(cur["metadata"]["generation"].as_i64().unwrap_or(1) + 1);
        }
        // Removing the last thing an object being deleted waited for completes the delete.
        if crate::delete::deletion_complete(t.res.kind, &next) {
            let o = remove(&app, t.res.kind, &key, &cur, expected).await?;
            return Ok(json_response(StatusCode::OK, &o));
        }
        if q.get("dryRun").is_some_and(|d| d == "All") {
            return Ok(json_response(StatusCode::OK, &next));
        }
        match app.store.update(&key, encode(&next), expected).await {
            Ok(kv) => {
                let o = decode(&kv)?;
                let mut resp = json_response(
                    StatusCode::OK,
                    &if sub == Some("scale") {
                        scale_of(&o)
                    } else {
                        o
                    },
                );
                crate::schema::add_warnings(&mut resp, &warnings);
                return Ok(resp);
            }
            // Only retry writes the client did not make conditional.
            Err(StoreError::Conflict { .. })
                if incoming["metadata"]["resourceVersion"]
                    .as_str()
                    .is_none_or(|s| s.is_empty()) =>
            {
                continue;
            }
            Err(e) => {
                let mut ae: ApiError = e.into();
                if ae.reason == "Conflict" {
                    ae.message = format!(
                        "Operation cannot be fulfilled on {} \"{name}\": {}",
                        t.res.group_resource(),
                        ae.message
                    );
                    ae = ae.details(t.res.group, t.res.plural, name);
                }
                return Err(ae);
            }
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "Conflict",
        "too many concurrent writers; try again",
    ))
}

async fn binding(app: Arc<App>, t: &Target, name: &str, body: Body) -> Result<Response, ApiError> {
    let b = parse_json(
        &axum::body::to_bytes(body, crate::body::MAX_BODY)
            .await
            .map_err(|_| ApiError::bad_request("body too large"))?,
    )?;
    let node = b["target"]["name"]
        .as_str()
        .ok_or_else(|| ApiError::bad_request("binding.target.name is required"))?
        .to_string();
    let key = store_key(t.res, t.ns.as_deref(), name);
    let kv = app
        .store
        .get(&key)
        .await?
        .ok_or_else(|| ApiError::not_found("pods", name))?;
    let mut pod = decode(&kv)?;
    if pod["spec"]["nodeName"]
        .as_str()
        .is_some_and(|n| !n.is_empty())
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "pod {name} is already assigned to node {:?}",
                pod["spec"]["nodeName"]
            ),
        ));
    }
    pod["spec"]["nodeName"] = json!(node);
    // As upstream, the binding also records PodScheduled=True (one write, not two).
    let mut conds: Vec<Value> = pod["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    conds.retain(|c| c["type"] != "PodScheduled");
    conds.push(
        json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null,
        "lastTransitionTime": now()}),
    );
    pod["status"]["conditions"] = json!(conds);
    app.store
        .update(&key, encode(&pod), kv.mod_revision)
        .await?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_patches_naming_a_resource_version_are_conditional() {
        assert!(patch_pins_resource_version(
            br#"{"metadata":{"resourceVersion":"7"},"spec":{}}"#
        ));
        assert!(patch_pins_resource_version(
            br#"[{"op":"test","path":"/metadata/resourceVersion","value":"7"}]"#
        ));
        assert!(!patch_pins_resource_version(br#"{"spec":{"template":{}}}"#));
        assert!(!patch_pins_resource_version(
            br#"{"metadata":{"labels":{"a":"b"}}}"#
        ));
        assert!(!patch_pins_resource_version(b"not json"));
    }

    #[test]
    fn paths_map_to_resources() {
        let t = parse_path("/api/v1/namespaces/default/pods/p/status").expect("pod status");
        assert_eq!(
            (
                t.res.kind,
                t.ns.as_deref(),
                t.name.as_deref(),
                t.sub.as_deref()
            ),
            ("Pod", Some("default"), Some("p"), Some("status"))
        );
        let t = parse_path("/api/v1/namespaces/default").expect("namespace");
        assert_eq!(
            (t.res.kind, t.name.as_deref()),
            ("Namespace", Some("default"))
        );
        let t = parse_path("/api/v1/pods").expect("all pods");
        assert_eq!((t.res.kind, t.ns), ("Pod", None));
        let t = parse_path("/apis/apps/v1/namespaces/x/deployments/d/scale").expect("scale");
        assert_eq!(t.sub.as_deref(), Some("scale"));
        assert!(parse_path("/apis/apps/v1/pods").is_none());
        assert!(parse_path("/api/v1/namespaces/x/pods/p/status/extra").is_none());
    }
}

//! Deletion: one object (DeleteOptions, preconditions, finalizers, graceful pod deletion)
//! and deletecollection.

use super::*;

pub(super) async fn delete(
    app: Arc<App>,
    t: &Target,
    name: &str,
    q: &Q,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let raw = read_body(headers, body).await?;
    let opts = crate::delete::parse_options(q, &raw)?;
    let key = store_key(t.res, t.ns.as_deref(), name);
    for _ in 0..5 {
        let kv = get_kv(&app, t, &key, name).await?;
        match delete_one(&app, t, &kv, &opts).await {
            Err(e) if e.reason == "Conflict" && opts.precondition_rv.is_none() => continue,
            r => {
                return r.map(|(code, o, removed)| {
                    let o = if removed { deleted_answer(t.res, o) } else { o };
                    json_response(code, &o)
                });
            }
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "Conflict",
        "too many concurrent writers; try again",
    ))
}

/// Applies the delete plan to one stored object: removes it (200 with the last state, and
/// true) or stores it marked (202 with the marked object).
pub(super) async fn delete_one(
    app: &App,
    t: &Target,
    kv: &moat_store::KeyValue,
    opts: &crate::delete::DeleteOptions,
) -> Result<(StatusCode, Value, bool), ApiError> {
    let cur = decode(kv)?;
    match crate::delete::plan(t.res.kind, &cur, opts, chrono::Utc::now())? {
        _ if opts.dry_run => Ok((StatusCode::OK, cur, false)),
        crate::delete::Plan::DeleteNow => {
            let o = remove(app, t.res.kind, &kv.key, &cur, kv.mod_revision).await?;
            Ok((StatusCode::OK, o, true))
        }
        crate::delete::Plan::Mark(next) => {
            let kv = app
                .store
                .update(&kv.key, encode(&next), kv.mod_revision)
                .await?;
            Ok((StatusCode::ACCEPTED, decode(&kv)?, false))
        }
        crate::delete::Plan::Unchanged => Ok((StatusCode::ACCEPTED, cur, false)),
    }
}

/// What a DELETE that removed the object answers, as kube-apiserver: the last state for the
/// kinds whose registries return it (pods, services, namespaces), a `Status` naming the
/// object for the others (client libraries decode it as a V1Status).
pub(super) fn deleted_answer(res: &moat_api::ResourceInfo, o: Value) -> Value {
    if matches!(res.kind, "Pod" | "Service" | "Namespace") {
        return o;
    }
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
        "details": {"name": o["metadata"]["name"], "group": res.group, "kind": res.plural,
                    "uid": o["metadata"]["uid"]}})
}

/// Removes an object from the store (compare-and-swap on `expected`) and releases what it
/// held (a Service's ClusterIP and NodePorts).
pub(super) async fn remove(
    app: &App,
    kind: &str,
    key: &str,
    obj: &Value,
    expected: moat_store::Revision,
) -> Result<Value, ApiError> {
    let (prev, rev) = app.store.delete(key, Some(expected)).await?;
    if kind == "Service" {
        crate::alloc::release(&*app.store, obj).await;
    }
    let mut o = decode(&prev)?;
    o["metadata"]["resourceVersion"] = json!(rev.to_string());
    Ok(o)
}

pub(super) async fn delete_collection(
    app: Arc<App>,
    t: &Target,
    q: &Q,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let raw = read_body(headers, body).await?;
    let opts = crate::delete::parse_options(q, &raw)?;
    let (ls, fs) = selectors(q)?;
    let res = app
        .store
        .list(
            &store_prefix(t.res, t.ns.as_deref()),
            ListOptions::default(),
        )
        .await?;
    let mut gone = Vec::new();
    for kv in &res.items {
        let o = decode(kv)?;
        if labels_match(&ls, &o) && fields_match(&fs, &o) {
            // An object changed or deleted concurrently is skipped, as upstream does.
            if let Ok((_, o, _)) = delete_one(&app, t, kv, &opts).await {
                gone.push(o);
            }
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": format!("{}List", t.res.kind), "apiVersion": t.res.api_version(),
        "metadata": {"resourceVersion": app.store.current_revision().await?.to_string()}, "items": gone}),
    ))
}

//! Reading collections: list (with label/field selectors, paging and tables) and watch.

use super::*;

pub(super) fn selectors(
    q: &Q,
) -> Result<
    (
        moat_api::selector::Selector,
        Vec<moat_api::selector::Requirement>,
    ),
    ApiError,
> {
    let bad = |e: crate::select::SelectorError| ApiError::bad_request(e.to_string());
    let l = parse_labels(q.get("labelSelector").map(String::as_str).unwrap_or("")).map_err(bad)?;
    let f = parse_fields(q.get("fieldSelector").map(String::as_str).unwrap_or("")).map_err(bad)?;
    Ok((l, f))
}

pub(super) async fn list(
    app: Arc<App>,
    t: &Target,
    q: &Q,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let (ls, fs) = selectors(q)?;
    let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(0);
    let (mut at, mut start_after) = (0i64, None::<String>);
    if let Some(c) = q.get("continue").filter(|c| !c.is_empty()) {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(c)
            .map_err(|_| ApiError::bad_request("invalid continue token"))?;
        let tok: Value = serde_json::from_slice(&raw)
            .map_err(|_| ApiError::bad_request("invalid continue token"))?;
        at = tok["rv"]
            .as_i64()
            .ok_or_else(|| ApiError::bad_request("invalid continue token"))?;
        start_after = tok["start"].as_str().map(String::from);
    } else if let Some(rv) = q.get("resourceVersion").and_then(|r| r.parse::<i64>().ok())
        && q.get("resourceVersionMatch").is_some_and(|m| m == "Exact")
    {
        at = rv;
    }
    let res = app.store.list(&store_prefix(t.res, t.ns.as_deref()), ListOptions { at, start_after, limit: 0 }).await.map_err(|e| match e {
        StoreError::Compacted { .. } => ApiError::new(StatusCode::GONE, "Expired", "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter."),
        e => e.into(),
    })?;
    let mut items = Vec::new();
    let mut cont = None;
    for kv in &res.items {
        let obj = decode(kv)?;
        if labels_match(&ls, &obj) && fields_match(&fs, &obj) {
            if limit > 0 && items.len() == limit {
                let last = items
                    .last()
                    .map(|(k, _): &(String, Value)| k.clone())
                    .unwrap_or_default();
                let tok = json!({"rv": res.revision, "start": last}).to_string();
                cont = Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tok));
                break;
            }
            items.push((kv.key.clone(), obj));
        }
    }
    let objs: Vec<Value> = items.into_iter().map(|(_, o)| o).collect();
    let rv = res.revision.to_string();
    if wants_table(headers) {
        let mut t = table(
            t.res.kind,
            &objs,
            &rv,
            q.get("includeObject").map(String::as_str).unwrap_or(""),
            true,
        );
        if let Some(c) = cont {
            t["metadata"]["continue"] = json!(c);
        }
        return Ok(json_response(StatusCode::OK, &t));
    }
    let mut meta = json!({"resourceVersion": rv});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": format!("{}List", t.res.kind), "apiVersion": t.res.api_version(), "metadata": meta, "items": objs}),
    ))
}

pub(super) async fn watch(
    app: Arc<App>,
    t: &Target,
    q: &Q,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let (ls, fs) = selectors(q)?;
    let as_table = wants_table(headers);
    let kind = t.res.kind;
    let prefix = store_prefix(t.res, t.ns.as_deref());
    let rv: i64 = q
        .get("resourceVersion")
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let mut timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800);
    // A server may end any watch early; clients resume from their last resourceVersion.
    if let Some(max) = app.max_watch_seconds {
        timeout = timeout.min(max);
    }
    let api_version = t.res.api_version();
    let mut last_sent = tokio::time::Instant::now();
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let encode_obj = move |o: &Value, first: bool| -> Value {
        if as_table {
            let rv = o["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("")
                .to_string();
            table(kind, std::slice::from_ref(o), &rv, "", first)
        } else {
            o.clone()
        }
    };
    // Initial state: synthetic ADDED events when no resourceVersion (or 0) was given.
    let mut initial = Vec::new();
    let from = if rv == 0 {
        let res = app.store.list(&prefix, ListOptions::default()).await?;
        for kv in &res.items {
            let o = decode(kv)?;
            if labels_match(&ls, &o) && fields_match(&fs, &o) {
                initial
                    .push(json!({"type": "ADDED", "object": encode_obj(&o, initial.is_empty())}));
            }
        }
        res.revision
    } else {
        rv
    };
    let stream = match app.store.watch(&prefix, from).await {
        Ok(s) => s,
        Err(StoreError::Compacted { .. }) => {
            // As kube-apiserver: 200, then one ERROR event carrying a 410 Expired Status.
            let e = ApiError::new(
                StatusCode::GONE,
                "Expired",
                format!("too old resource version: {rv}"),
            );
            let line = json!({"type": "ERROR", "object": e.body()}).to_string() + "\n";
            return Ok(([(header::CONTENT_TYPE, "application/json")], line).into_response());
        }
        Err(e) => return Err(e.into()),
    };
    let mut sent_first = !initial.is_empty();
    let events = stream.filter_map(move |ev| {
        let out = match ev {
            Ok(WatchEvent::Put { kv, prev }) => decode(&kv).ok().and_then(|o| {
                let now_match = labels_match(&ls, &o) && fields_match(&fs, &o);
                let was = prev
                    .as_ref()
                    .and_then(|p| decode(p).ok())
                    .map(|p| labels_match(&ls, &p) && fields_match(&fs, &p));
                let ty = match (was, now_match) {
                    // New, or newly matching the selectors: the watcher has not seen it yet.
                    (None | Some(false), true) => "ADDED",
                    (Some(true), true) => "MODIFIED",
                    (Some(true), false) => "DELETED",
                    _ => return None,
                };
                let first = !sent_first;
                sent_first = true;
                last_sent = tokio::time::Instant::now();
                Some(json!({"type": ty, "object": encode_obj(&o, first)}))
            }),
            Ok(WatchEvent::Delete { prev, revision }) => decode(&prev)
                .ok()
                .filter(|o| labels_match(&ls, o) && fields_match(&fs, o))
                .map(|mut o| {
                    o["metadata"]["resourceVersion"] = json!(revision.to_string());
                    let first = !sent_first;
                    sent_first = true;
                    last_sent = tokio::time::Instant::now();
                    json!({"type": "DELETED", "object": encode_obj(&o, first)})
                }),
            // Bookmarks at most every BOOKMARK_EVERY of silence, like kube-apiserver's
            // roughly once a minute, so a resumed watch starts from a recent revision.
            Ok(WatchEvent::Progress { revision })
                if bookmarks && last_sent.elapsed() >= BOOKMARK_EVERY =>
            {
                last_sent = tokio::time::Instant::now();
                Some(
                    json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version,
                    "metadata": {"resourceVersion": revision.to_string()}}}),
                )
            }
            Ok(WatchEvent::Progress { .. }) => None,
            Err(e) => {
                let ae: ApiError = e.into();
                Some(json!({"type": "ERROR", "object": ae.body()}))
            }
        };
        futures::future::ready(
            out.map(|v| Ok::<_, std::convert::Infallible>(Bytes::from(v.to_string() + "\n"))),
        )
    });
    let initial = futures::stream::iter(
        initial
            .into_iter()
            .map(|v| Ok::<_, std::convert::Infallible>(Bytes::from(v.to_string() + "\n"))),
    );
    let deadline = tokio::time::sleep(std::time::Duration::from_secs(timeout));
    let body = initial.chain(events).take_until(deadline);
    Ok((
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::TRANSFER_ENCODING, "chunked"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

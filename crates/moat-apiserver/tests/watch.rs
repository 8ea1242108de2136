//! Watch through the router in process (on paused time, so watch timeouts pass at once):
//! initial ADDED events, changes from a resourceVersion, selectors deciding
//! ADDED/MODIFIED/DELETED, 410 Expired as an ERROR event for a compacted resourceVersion,
//! and 400 for a bad selector.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use common::{Api, CMS};
use http::StatusCode;
use serde_json::{Value, json};

/// The events of one watch that ends by its timeout.
async fn events(api: &Api, query: &str) -> Vec<Value> {
    let r = api
        .get(&format!("{CMS}?watch=true&timeoutSeconds=1&{query}"))
        .await;
    assert_eq!(r.code, StatusCode::OK, "{}", r.text());
    r.text()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect()
}

fn summary(evs: &[Value]) -> Vec<(String, String)> {
    evs.iter()
        .filter(|e| e["type"] != "BOOKMARK")
        .map(|e| {
            (
                e["type"].as_str().unwrap_or("").to_string(),
                e["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn watch_without_a_version_starts_with_the_current_objects() {
    let api = Api::new().await;
    api.configmap("a", json!({})).await;
    api.configmap("b", json!({})).await;
    let evs = events(&api, "").await;
    assert_eq!(
        summary(&evs),
        [("ADDED".into(), "a".into()), ("ADDED".into(), "b".into())]
    );
}

#[tokio::test(start_paused = true)]
async fn watch_from_a_version_replays_changes_through_selectors() {
    let api = Api::new().await;
    let a = api.configmap("a", json!({"sel": "yes"})).await;
    let from = a["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    api.configmap("b", json!({"sel": "no"})).await;
    // b comes into the selection, a leaves it, then b is deleted.
    api.patch(
        &format!("{CMS}/b"),
        "application/merge-patch+json",
        r#"{"metadata": {"labels": {"sel": "yes"}}}"#,
    )
    .await;
    api.patch(
        &format!("{CMS}/a"),
        "application/merge-patch+json",
        r#"{"metadata": {"labels": {"sel": "no"}}}"#,
    )
    .await;
    api.delete(&format!("{CMS}/b")).await;
    let evs = events(
        &api,
        &format!("resourceVersion={from}&labelSelector=sel%3Dyes"),
    )
    .await;
    assert_eq!(
        summary(&evs),
        [
            ("ADDED".into(), "b".into()),
            ("DELETED".into(), "a".into()),
            ("DELETED".into(), "b".into()),
        ]
    );
    let all = events(&api, &format!("resourceVersion={from}")).await;
    assert_eq!(
        summary(&all)
            .iter()
            .map(|(t, _)| t.as_str())
            .collect::<Vec<_>>(),
        ["ADDED", "MODIFIED", "MODIFIED", "DELETED"]
    );
}

#[tokio::test(start_paused = true)]
async fn watch_from_a_compacted_version_is_an_expired_error_event() {
    let api = Api::new().await;
    let a = api.configmap("a", json!({})).await;
    let old = a["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    let b = api.configmap("b", json!({})).await;
    let now: i64 = b["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .parse()
        .expect("int");
    api.app.store.compact(now - 1).await.expect("compact");
    let evs = events(
        &api,
        &format!("resourceVersion={}", old.parse::<i64>().expect("int") - 1),
    )
    .await;
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0]["type"], "ERROR");
    assert_eq!(evs[0]["object"]["code"], 410);
    assert_eq!(evs[0]["object"]["reason"], "Expired");
}

#[tokio::test(start_paused = true)]
async fn watch_with_a_bad_selector_is_400() {
    let api = Api::new().await;
    api.get(&format!("{CMS}?watch=true&labelSelector=a%20in%20("))
        .await
        .status(400, "BadRequest");
    api.get(&format!("{CMS}?watch=true&fieldSelector=nope.field=1"))
        .await
        .status(400, "BadRequest");
    api.get("/api/v1/namespaces/default/widgets?watch=true")
        .await
        .status(404, "NotFound");
}

#[tokio::test(start_paused = true)]
async fn silent_watches_get_bookmarks_from_writes_elsewhere() {
    let api = std::sync::Arc::new(Api::new().await);
    api.configmap("a", json!({})).await;
    let watcher = api.clone();
    let watch = tokio::spawn(async move {
        watcher
            .get(&format!(
                "{CMS}?watch=true&timeoutSeconds=30&allowWatchBookmarks=true"
            ))
            .await
    });
    // A write to another resource soon after the watch starts is not worth a bookmark; one
    // after ten seconds of silence is.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let secrets = "/api/v1/namespaces/default/secrets";
    assert_eq!(
        api.post(secrets, &json!({"metadata": {"name": "s1"}}))
            .await
            .code,
        StatusCode::CREATED
    );
    tokio::time::sleep(std::time::Duration::from_secs(11)).await;
    let s2 = api
        .post(secrets, &json!({"metadata": {"name": "s2"}}))
        .await
        .json();
    let r = watch.await.expect("watch task");
    let evs: Vec<Value> = r
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).expect("event"))
        .collect();
    let marks: Vec<&Value> = evs.iter().filter(|e| e["type"] == "BOOKMARK").collect();
    assert_eq!(marks.len(), 1, "{evs:?}");
    assert_eq!(
        marks[0]["object"]["metadata"]["resourceVersion"],
        s2["metadata"]["resourceVersion"]
    );
}

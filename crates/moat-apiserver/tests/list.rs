//! List through the router in process: paging with limit/continue across compactions
//! (issue 18's paging bug), selectors, and the error paths (400, 404, 410).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Api, CMS};
use http::StatusCode;
use moat_apiserver::compaction;
use serde_json::{Value, json};

/// Every page of a label-selected list, following continue tokens; the items' names.
async fn pages(api: &Api, selector: &str, limit: usize) -> (Vec<String>, Vec<Value>) {
    let (mut names, mut bodies, mut cont) = (Vec::new(), Vec::new(), String::new());
    loop {
        let r = api
            .get(&format!(
                "{CMS}?labelSelector={selector}&limit={limit}&continue={cont}"
            ))
            .await;
        let v = r.json();
        assert_eq!(r.code, StatusCode::OK, "{v}");
        for i in v["items"].as_array().expect("items") {
            names.push(i["metadata"]["name"].as_str().expect("name").to_string());
        }
        cont = v["metadata"]["continue"].as_str().unwrap_or("").to_string();
        bodies.push(v);
        if cont.is_empty() {
            return (names, bodies);
        }
    }
}

async fn continue_token(api: &Api, limit: usize) -> String {
    let v = api
        .get(&format!("{CMS}?labelSelector=x=val&limit={limit}"))
        .await
        .json();
    v["metadata"]["continue"]
        .as_str()
        .expect("a continue token")
        .to_string()
}

#[tokio::test(start_paused = true)]
async fn continue_token_survives_idle_compactions_regression_issue_18() {
    let api = Api::new().await;
    for i in 0..60 {
        api.configmap(&format!("cm-{i:02}"), json!({"x": "val"}))
            .await;
    }
    let every = Duration::from_secs(5);
    let loop_task = tokio::spawn(compaction::run(api.app.store.clone(), every));
    // The first page is read while idle, then nothing is written for over two intervals:
    // kubectl's next page must still be served (the bug: 410 Expired after 20 items).
    tokio::time::sleep(Duration::from_secs(7)).await;
    let token = continue_token(&api, 20).await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let r = api
        .get(&format!(
            "{CMS}?labelSelector=x=val&limit=20&continue={token}"
        ))
        .await;
    assert_eq!(r.code, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["items"].as_array().map(Vec::len), Some(20));
    let (names, _) = pages(&api, "x=val", 20).await;
    assert_eq!(names.len(), 60, "{names:?}");
    loop_task.abort();
}

#[tokio::test(start_paused = true)]
async fn continue_token_older_than_one_interval_after_writes_is_410_expired() {
    let api = Api::new().await;
    for i in 0..30 {
        api.configmap(&format!("cm-{i:02}"), json!({"x": "val"}))
            .await;
    }
    let every = Duration::from_secs(5);
    let loop_task = tokio::spawn(compaction::run(api.app.store.clone(), every));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let token = continue_token(&api, 10).await;
    // A write after the token: compaction two ticks on drops the token's revision.
    api.configmap("later", json!({})).await;
    tokio::time::sleep(Duration::from_secs(11)).await;
    let r = api
        .get(&format!(
            "{CMS}?labelSelector=x=val&limit=10&continue={token}"
        ))
        .await;
    let s = r.status(410, "Expired");
    assert!(
        s["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("The provided continue parameter is too old")),
        "{s}"
    );
    // A fresh list still pages through everything.
    let (names, _) = pages(&api, "x=val", 10).await;
    assert_eq!(names.len(), 30);
    loop_task.abort();
}

#[tokio::test]
async fn list_pages_follow_continue_without_duplicates_and_keep_one_revision() {
    let api = Api::new().await;
    for i in 0..25 {
        let l = if i % 2 == 0 {
            json!({"x": "val"})
        } else {
            json!({"x": "other"})
        };
        api.configmap(&format!("cm-{i:02}"), l).await;
    }
    let (names, bodies) = pages(&api, "x=val", 4).await;
    let want: Vec<String> = (0..25).step_by(2).map(|i| format!("cm-{i:02}")).collect();
    assert_eq!(names, want);
    // A write between pages does not show up: every page is read at the first's revision.
    let rvs: Vec<&Value> = bodies
        .iter()
        .map(|b| &b["metadata"]["resourceVersion"])
        .collect();
    assert!(rvs.windows(2).all(|w| w[0] == w[1]), "{rvs:?}");
    assert_eq!(bodies[0]["kind"], "ConfigMapList");
}

#[tokio::test]
async fn list_error_paths() {
    let api = Api::new().await;
    api.configmap("a", json!({})).await;
    api.get(&format!("{CMS}?continue=%%%not-base64"))
        .await
        .status(400, "BadRequest");
    // base64 of a JSON document without a revision.
    api.get(&format!("{CMS}?continue=e30"))
        .await
        .status(400, "BadRequest");
    api.get(&format!("{CMS}?labelSelector=a%20in%20("))
        .await
        .status(400, "BadRequest");
    api.get(&format!("{CMS}?fieldSelector=spec.nope=1"))
        .await
        .status(400, "BadRequest");
    api.get("/api/v1/namespaces/default/nothings")
        .await
        .status(404, "NotFound");
    // resourceVersionMatch=Exact at a future revision is not served as the present.
    let r = api
        .get(&format!(
            "{CMS}?resourceVersion=999999&resourceVersionMatch=Exact"
        ))
        .await;
    assert!(
        r.code.is_client_error() || r.code.is_server_error(),
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn list_at_an_exact_compacted_revision_is_410() {
    let api = Api::new().await;
    let a = api.configmap("a", json!({})).await;
    let rv: i64 = a["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .parse()
        .expect("int");
    api.configmap("b", json!({})).await;
    let store: Arc<dyn moat_store::Store> = api.app.store.clone();
    store.compact(rv).await.expect("compact");
    api.get(&format!(
        "{CMS}?resourceVersion={rv}&resourceVersionMatch=Exact"
    ))
    .await
    .status(410, "Expired");
}

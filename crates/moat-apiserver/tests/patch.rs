//! PATCH through the router in process, every patch type: JSON merge, strategic merge, JSON
//! patch and server-side apply — and the error paths: 404, 409 (stale resourceVersion in the
//! patch, apply conflicts), 422 (a failed JSON-patch test, invalid results with causes),
//! 400 (malformed patches, apply without a field manager) and 415 (unknown patch types),
//! each leaving the object as it was.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use common::{Api, CMS};
use http::StatusCode;
use serde_json::json;

const MERGE: &str = "application/merge-patch+json";
const STRATEGIC: &str = "application/strategic-merge-patch+json";
const JSON_PATCH: &str = "application/json-patch+json";
const APPLY: &str = "application/apply-patch+yaml";
const DEPLOYS: &str = "/apis/apps/v1/namespaces/default/deployments";

async fn deployment(api: &Api) {
    let r = api
        .post(DEPLOYS, &json!({"metadata": {"name": "d"}, "spec": {"replicas": 1,
            "selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "b"}},
                         "spec": {"containers": [{"name": "c", "image": "busybox", "env": [{"name": "A", "value": "1"}]}]}}}}))
        .await;
    assert_eq!(r.code, StatusCode::CREATED, "{}", r.text());
}

#[tokio::test]
async fn each_patch_type_applies() {
    let api = Api::new().await;
    api.configmap("a", json!({"app": "x"})).await;
    let url = format!("{CMS}/a");
    let r = api
        .patch(
            &url,
            MERGE,
            r#"{"data": {"m": "1"}, "metadata": {"labels": {"app": null}}}"#,
        )
        .await;
    assert_eq!(r.code, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["data"], json!({"k": "v", "m": "1"}));
    assert!(r.json()["metadata"]["labels"].get("app").is_none());
    let r = api
        .patch(
            &url,
            JSON_PATCH,
            r#"[{"op": "add", "path": "/data/j", "value": "2"}]"#,
        )
        .await;
    assert_eq!(r.code, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["data"]["j"], "2");
    // Strategic merge merges containers by name and env by name.
    deployment(&api).await;
    let r = api
        .patch(&format!("{DEPLOYS}/d"), STRATEGIC,
            r#"{"spec": {"template": {"spec": {"containers": [{"name": "c", "env": [{"name": "B", "value": "2"}]}]}}}}"#)
        .await;
    assert_eq!(r.code, StatusCode::OK, "{}", r.text());
    let env = &r.json()["spec"]["template"]["spec"]["containers"][0]["env"];
    assert_eq!(env.as_array().map(Vec::len), Some(2), "{env}");
    let r = api
        .patch(
            &format!("{CMS}/applied?fieldManager=me"),
            APPLY,
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: applied}\ndata: {x: '1'}\n",
        )
        .await;
    assert_eq!(r.code, StatusCode::CREATED, "apply creates: {}", r.text());
}

#[tokio::test]
async fn patch_of_a_missing_object_is_404() {
    let api = Api::new().await;
    for ct in [MERGE, STRATEGIC, JSON_PATCH] {
        api.patch(&format!("{CMS}/nope"), ct, "{}")
            .await
            .status(404, "NotFound");
    }
}

#[tokio::test]
async fn stale_resource_version_in_a_patch_is_409() {
    let api = Api::new().await;
    let a = api.configmap("a", json!({})).await;
    api.patch(&format!("{CMS}/a"), MERGE, r#"{"data": {"k": "2"}}"#)
        .await;
    let stale = a["metadata"]["resourceVersion"].as_str().expect("rv");
    api.patch(
        &format!("{CMS}/a"),
        MERGE,
        &json!({"metadata": {"resourceVersion": stale}, "data": {"k": "3"}}).to_string(),
    )
    .await
    .status(409, "Conflict");
    assert_eq!(api.get(&format!("{CMS}/a")).await.json()["data"]["k"], "2");
}

#[tokio::test]
async fn apply_conflicts_are_409_unless_forced() {
    let api = Api::new().await;
    let url = format!("{CMS}/c?fieldManager=one");
    let doc = |v: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\ndata: {{x: '{v}'}}\n")
    };
    assert_eq!(
        api.patch(&url, APPLY, &doc("1")).await.code,
        StatusCode::CREATED
    );
    let s = api
        .patch(&format!("{CMS}/c?fieldManager=two"), APPLY, &doc("2"))
        .await
        .status(409, "Conflict");
    assert!(
        s["details"]["causes"][0]["field"]
            .as_str()
            .is_some_and(|f| f.contains("data")),
        "{s}"
    );
    let r = api
        .patch(
            &format!("{CMS}/c?fieldManager=two&force=true"),
            APPLY,
            &doc("2"),
        )
        .await;
    assert_eq!(r.code, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["data"]["x"], "2");
}

#[tokio::test]
async fn failed_json_patch_and_invalid_results_are_422() {
    let api = Api::new().await;
    api.configmap("a", json!({})).await;
    let before = api.get(&format!("{CMS}/a")).await.json();
    api.patch(
        &format!("{CMS}/a"),
        JSON_PATCH,
        r#"[{"op": "test", "path": "/data/k", "value": "other"}]"#,
    )
    .await
    .status(422, "Invalid");
    api.patch(
        &format!("{CMS}/a"),
        JSON_PATCH,
        r#"[{"op": "remove", "path": "/nothing/here"}]"#,
    )
    .await
    .status(422, "Invalid");
    let s = api
        .patch(
            &format!("{CMS}/a"),
            MERGE,
            r#"{"metadata": {"labels": {"bad key!": "v"}}}"#,
        )
        .await
        .status(422, "Invalid");
    assert!(
        s["details"]["causes"]
            .as_array()
            .is_some_and(|c| !c.is_empty()),
        "{s}"
    );
    assert_eq!(api.get(&format!("{CMS}/a")).await.json(), before);
}

#[tokio::test]
async fn malformed_patches_are_400() {
    let api = Api::new().await;
    api.configmap("a", json!({})).await;
    let before = api.get(&format!("{CMS}/a")).await.json();
    for ct in [MERGE, STRATEGIC, JSON_PATCH] {
        api.patch(&format!("{CMS}/a"), ct, "{not json")
            .await
            .status(400, "BadRequest");
    }
    api.patch(&format!("{CMS}/a"), JSON_PATCH, r#"{"op": "add"}"#)
        .await
        .status(400, "BadRequest");
    api.patch(
        &format!("{CMS}/a"),
        JSON_PATCH,
        r#"[{"op": "jump", "path": "/x"}]"#,
    )
    .await
    .status(400, "BadRequest");
    api.patch(
        &format!("{CMS}/a"),
        APPLY,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
    )
    .await
    .status(400, "BadRequest");
    api.patch(
        &format!("{CMS}/a?fieldManager=m"),
        APPLY,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: a}\n",
    )
    .await
    .status(400, "BadRequest");
    api.patch(&format!("{CMS}/a?fieldManager=m"), APPLY, "a: [unclosed")
        .await
        .status(400, "BadRequest");
    assert_eq!(api.get(&format!("{CMS}/a")).await.json(), before);
}

#[tokio::test]
async fn unknown_patch_types_are_415() {
    let api = Api::new().await;
    api.configmap("a", json!({})).await;
    for ct in ["application/json", "text/plain", "application/xml"] {
        api.patch(&format!("{CMS}/a"), ct, "{}")
            .await
            .status(415, "UnsupportedMediaType");
    }
}

#[tokio::test]
async fn oversized_patches_are_413() {
    let api = Api::new().await;
    api.configmap("a", json!({})).await;
    let big = format!(
        r#"{{"data": {{"k": "{}"}}}}"#,
        "x".repeat(moat_apiserver::body::MAX_BODY)
    );
    api.patch(&format!("{CMS}/a"), MERGE, &big)
        .await
        .status(413, "RequestEntityTooLarge");
}

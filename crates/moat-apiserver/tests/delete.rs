//! DELETE of one object and of collections through the router in process: immediate
//! deletes, finalizers and graceful pod deletion, preconditions (409), DeleteOptions errors
//! (400 and 422 with causes) and 404.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use axum::body::Body;
use common::{Api, CMS};
use http::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn delete_removes_and_answers_a_success_status() {
    let api = Api::new().await;
    api.configmap("a", json!({})).await;
    let r = api.delete(&format!("{CMS}/a")).await;
    assert_eq!(r.code, StatusCode::OK, "{}", r.text());
    // As kube-apiserver's registries for ConfigMaps: a Status naming the object, not the object.
    assert_eq!(r.json()["kind"], "Status", "{}", r.text());
    assert_eq!(r.json()["details"]["name"], "a");
    api.get(&format!("{CMS}/a")).await.status(404, "NotFound");
    api.delete(&format!("{CMS}/a"))
        .await
        .status(404, "NotFound");
}

#[tokio::test]
async fn finalizers_hold_the_object_until_removed() {
    let api = Api::new().await;
    let r = api
        .post(
            CMS,
            &json!({"metadata": {"name": "f", "finalizers": ["example.com/x"]}}),
        )
        .await;
    assert_eq!(r.code, StatusCode::CREATED);
    let r = api.delete(&format!("{CMS}/f")).await;
    assert_eq!(r.code, StatusCode::ACCEPTED, "{}", r.text());
    let held = api.get(&format!("{CMS}/f")).await.json();
    assert!(held["metadata"]["deletionTimestamp"].is_string());
    // No new finalizers while deleting: 422 with the field.
    let s = api
        .patch(
            &format!("{CMS}/f"),
            "application/merge-patch+json",
            r#"{"metadata": {"finalizers": ["example.com/x", "example.com/y"]}}"#,
        )
        .await
        .status(422, "Invalid");
    assert_eq!(s["details"]["causes"][0]["field"], "metadata.finalizers");
    let r = api
        .patch(
            &format!("{CMS}/f"),
            "application/merge-patch+json",
            r#"{"metadata": {"finalizers": null}}"#,
        )
        .await;
    assert_eq!(r.code, StatusCode::OK, "{}", r.text());
    api.get(&format!("{CMS}/f")).await.status(404, "NotFound");
}

#[tokio::test]
async fn failed_preconditions_are_409_and_keep_the_object() {
    let api = Api::new().await;
    let a = api.configmap("a", json!({})).await;
    let uid = a["metadata"]["uid"].as_str().expect("uid");
    let rv = a["metadata"]["resourceVersion"].as_str().expect("rv");
    let body = |pre: serde_json::Value| {
        Body::from(
            json!({"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": pre}).to_string(),
        )
    };
    api.request(
        Method::DELETE,
        &format!("{CMS}/a"),
        Some("application/json"),
        body(json!({"uid": "other"})),
    )
    .await
    .status(409, "Conflict");
    api.patch(
        &format!("{CMS}/a"),
        "application/merge-patch+json",
        r#"{"data": {"k": "2"}}"#,
    )
    .await;
    api.request(
        Method::DELETE,
        &format!("{CMS}/a"),
        Some("application/json"),
        body(json!({"resourceVersion": rv})),
    )
    .await
    .status(409, "Conflict");
    assert_eq!(api.get(&format!("{CMS}/a")).await.code, StatusCode::OK);
    let r = api
        .request(
            Method::DELETE,
            &format!("{CMS}/a"),
            Some("application/json"),
            body(json!({"uid": uid})),
        )
        .await;
    assert_eq!(r.code, StatusCode::OK, "{}", r.text());
}

#[tokio::test]
async fn bad_delete_options_are_400_or_422() {
    let api = Api::new().await;
    api.configmap("a", json!({})).await;
    let url = format!("{CMS}/a");
    api.request(Method::DELETE, &url, Some("application/json"), "{nope")
        .await
        .status(400, "BadRequest");
    api.request(
        Method::DELETE,
        &url,
        Some("application/json"),
        r#"{"kind": "Pod"}"#,
    )
    .await
    .status(400, "BadRequest");
    let s = api
        .request(
            Method::DELETE,
            &url,
            Some("application/json"),
            r#"{"propagationPolicy": "Sideways"}"#,
        )
        .await
        .status(422, "Invalid");
    assert_eq!(s["details"]["causes"][0]["field"], "propagationPolicy");
    api.delete(&format!("{url}?gracePeriodSeconds=soon"))
        .await
        .status(400, "BadRequest");
    api.delete(&format!("{url}?gracePeriodSeconds=-1"))
        .await
        .status(422, "Invalid");
    // dryRun deletes nothing.
    assert_eq!(
        api.delete(&format!("{url}?dryRun=All")).await.code,
        StatusCode::OK
    );
    assert_eq!(api.get(&url).await.code, StatusCode::OK);
}

#[tokio::test]
async fn delete_collection_by_label() {
    let api = Api::new().await;
    for (n, l) in [("a", "x"), ("b", "x"), ("c", "y")] {
        api.configmap(n, json!({"g": l})).await;
    }
    let r = api.delete(&format!("{CMS}?labelSelector=g%3Dx")).await;
    assert_eq!(r.code, StatusCode::OK, "{}", r.text());
    let left: Vec<String> = api.get(CMS).await.json()["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(left, ["c"]);
    api.delete(&format!("{CMS}?labelSelector=in%20("))
        .await
        .status(400, "BadRequest");
}

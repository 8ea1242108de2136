//! GET of one object through the router in process: found, tables, and the error paths
//! (404 for a missing object, an unknown resource or subresource; 401; 405).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use axum::body::Body;
use common::{Api, CMS};
use http::{Method, Request, StatusCode, header};
use serde_json::json;
use tower::ServiceExt;

#[tokio::test]
async fn get_returns_the_object_with_its_resource_version() {
    let api = Api::new().await;
    let created = api.configmap("a", json!({"app": "x"})).await;
    let r = api.get(&format!("{CMS}/a")).await;
    assert_eq!(r.code, StatusCode::OK);
    assert!(r.content_type.starts_with("application/json"));
    let v = r.json();
    assert_eq!(
        v["metadata"]["resourceVersion"],
        created["metadata"]["resourceVersion"]
    );
    assert_eq!(
        (v["kind"].as_str(), v["apiVersion"].as_str()),
        (Some("ConfigMap"), Some("v1"))
    );
    assert_eq!(v["data"]["k"], "v");
}

#[tokio::test]
async fn get_of_a_missing_object_is_404_with_details() {
    let api = Api::new().await;
    let s = api
        .get(&format!("{CMS}/nope"))
        .await
        .status(404, "NotFound");
    assert_eq!(s["message"], "configmaps \"nope\" not found");
    assert_eq!(s["details"]["name"], "nope");
    assert_eq!(s["details"]["kind"], "configmaps");
    // In a namespace that does not exist either.
    api.get("/api/v1/namespaces/ghost/configmaps/a")
        .await
        .status(404, "NotFound");
    // A cluster-scoped kind.
    api.get("/api/v1/nodes/n1").await.status(404, "NotFound");
}

#[tokio::test]
async fn unknown_resources_and_subresources_are_404() {
    let api = Api::new().await;
    api.configmap("a", json!({})).await;
    for path in [
        "/api/v1/namespaces/default/widgets",
        "/api/v1/namespaces/default/widgets/a",
        "/apis/nothing.example.com/v1/things",
        "/api/v1/namespaces/default/configmaps/a/sideways",
        "/api/v2/pods",
        "/healthy",
    ] {
        api.get(path).await.status(404, "NotFound");
    }
}

#[tokio::test]
async fn get_as_table_has_columns_and_rows() {
    let api = Api::new().await;
    api.configmap("a", json!({})).await;
    let req = Request::builder()
        .uri(format!("{CMS}/a"))
        .header(header::AUTHORIZATION, format!("Bearer {}", common::TOKEN))
        .header(
            header::ACCEPT,
            "application/json;as=Table;v=v1;g=meta.k8s.io",
        )
        .body(Body::empty())
        .expect("request");
    let resp = moat_apiserver::router(api.app.clone())
        .oneshot(req)
        .await
        .expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(
        &axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body"),
    )
    .expect("json");
    assert_eq!(v["kind"], "Table");
    assert_eq!(v["columnDefinitions"][0]["name"], "Name");
    assert_eq!(v["rows"][0]["cells"][0], "a");
}

#[tokio::test]
async fn requests_without_the_token_are_401_and_change_nothing() {
    let api = Api::new().await;
    for auth in [None, Some("Bearer wrong"), Some("Basic dGVzdA==")] {
        let mut b = Request::builder()
            .method(Method::POST)
            .uri(CMS)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        let body = json!({"metadata": {"name": "x"}}).to_string();
        let resp = moat_apiserver::router(api.app.clone())
            .oneshot(b.body(Body::from(body)).expect("request"))
            .await
            .expect("infallible");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
    }
    api.get(&format!("{CMS}/x")).await.status(404, "NotFound");
}

#[tokio::test]
async fn unsupported_verbs_are_405() {
    let api = Api::new().await;
    api.configmap("a", json!({})).await;
    api.request(
        Method::POST,
        &format!("{CMS}/a"),
        Some("application/json"),
        "{}",
    )
    .await
    .status(405, "MethodNotAllowed");
    api.request(Method::PUT, CMS, Some("application/json"), "{}")
        .await
        .status(405, "MethodNotAllowed");
}

//! PUT (replace) through the router in process, including the status and scale
//! subresources: compare-and-swap on resourceVersion (409 on a stale one), 404, 422 with
//! causes, 400, 415 and 413 — each leaving the stored object as it was.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use common::{Api, CMS};
use http::{Method, StatusCode};
use serde_json::{Value, json};

fn rv(v: &Value) -> String {
    v["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string()
}

#[tokio::test]
async fn put_with_the_current_resource_version_replaces() {
    let api = Api::new().await;
    let a = api.configmap("a", json!({})).await;
    let r = api
        .put(
            &format!("{CMS}/a"),
            &json!({"metadata": {"name": "a", "resourceVersion": rv(&a)}, "data": {"k": "2"}}),
        )
        .await;
    assert_eq!(r.code, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["data"]["k"], "2");
    assert!(rv(&v).parse::<i64>().unwrap() > rv(&a).parse::<i64>().unwrap());
    assert_eq!(
        v["metadata"]["uid"], a["metadata"]["uid"],
        "server fields are kept"
    );
    // Without a resourceVersion the replace is unconditional.
    let r = api
        .put(
            &format!("{CMS}/a"),
            &json!({"metadata": {"name": "a"}, "data": {"k": "3"}}),
        )
        .await;
    assert_eq!(r.code, StatusCode::OK, "{}", r.text());
}

#[tokio::test]
async fn put_with_a_stale_resource_version_is_409_conflict() {
    let api = Api::new().await;
    let a = api.configmap("a", json!({})).await;
    api.put(
        &format!("{CMS}/a"),
        &json!({"metadata": {"name": "a"}, "data": {"k": "2"}}),
    )
    .await;
    let s = api
        .put(
            &format!("{CMS}/a"),
            &json!({"metadata": {"name": "a", "resourceVersion": rv(&a)}, "data": {"k": "stale"}}),
        )
        .await
        .status(409, "Conflict");
    assert!(
        s["message"]
            .as_str()
            .is_some_and(|m| m.contains("has been modified")),
        "{s}"
    );
    assert_eq!(api.get(&format!("{CMS}/a")).await.json()["data"]["k"], "2");
    // A resourceVersion that is not a number is malformed.
    api.put(
        &format!("{CMS}/a"),
        &json!({"metadata": {"name": "a", "resourceVersion": "abc"}}),
    )
    .await
    .status(400, "BadRequest");
}

#[tokio::test]
async fn put_of_a_missing_object_is_404() {
    let api = Api::new().await;
    api.put(
        &format!("{CMS}/nope"),
        &json!({"metadata": {"name": "nope"}}),
    )
    .await
    .status(404, "NotFound");
    api.get(&format!("{CMS}/nope"))
        .await
        .status(404, "NotFound");
}

#[tokio::test]
async fn invalid_replacements_are_422_and_change_nothing() {
    let api = Api::new().await;
    api.configmap("a", json!({"app": "x"})).await;
    let before = api.get(&format!("{CMS}/a")).await.json();
    let s = api
        .put(
            &format!("{CMS}/a"),
            &json!({"metadata": {"name": "a", "labels": {"bad key!": "v"}}}),
        )
        .await
        .status(422, "Invalid");
    assert!(
        s["details"]["causes"][0]["field"]
            .as_str()
            .is_some_and(|f| f.starts_with("metadata.labels")),
        "{s}"
    );
    // A Service's clusterIP is immutable.
    let svc = "/api/v1/namespaces/default/services";
    let r = api
        .post(svc, &json!({"metadata": {"name": "s"}, "spec": {"selector": {"a": "b"}, "ports": [{"port": 80}]}}))
        .await;
    assert_eq!(r.code, StatusCode::CREATED, "{}", r.text());
    let mut changed = r.json();
    changed["spec"]["clusterIP"] = json!("10.43.99.99");
    changed["spec"]["clusterIPs"] = json!(["10.43.99.99"]);
    let s = api
        .put(&format!("{svc}/s"), &changed)
        .await
        .status(422, "Invalid");
    assert_eq!(s["details"]["causes"][0]["field"], "spec.clusterIPs[0]");
    assert_eq!(api.get(&format!("{CMS}/a")).await.json(), before);
}

#[tokio::test]
async fn name_mismatch_and_malformed_bodies_are_400() {
    let api = Api::new().await;
    api.configmap("a", json!({})).await;
    let before = api.get(&format!("{CMS}/a")).await.json();
    let r = api
        .put(&format!("{CMS}/a"), &json!({"metadata": {"name": "b"}}))
        .await;
    assert!(
        r.code == StatusCode::BAD_REQUEST || r.code == StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        r.text()
    );
    for body in ["{", "[]", "null"] {
        api.request(
            Method::PUT,
            &format!("{CMS}/a"),
            Some("application/json"),
            body.to_string(),
        )
        .await
        .status(400, "BadRequest");
    }
    api.request(
        Method::PUT,
        &format!("{CMS}/a"),
        Some("text/plain"),
        "{}".to_string(),
    )
    .await
    .status(415, "UnsupportedMediaType");
    let big = "x".repeat(moat_apiserver::body::MAX_BODY + 1);
    api.request(
        Method::PUT,
        &format!("{CMS}/a"),
        Some("application/json"),
        big,
    )
    .await
    .status(413, "RequestEntityTooLarge");
    assert_eq!(api.get(&format!("{CMS}/a")).await.json(), before);
}

#[tokio::test]
async fn status_and_scale_subresources_change_only_their_part() {
    let api = Api::new().await;
    let deps = "/apis/apps/v1/namespaces/default/deployments";
    let r = api
        .post(
            deps,
            &json!({"metadata": {"name": "d"}, "spec": {"replicas": 1,
            "selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "b"}},
                         "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}),
        )
        .await;
    assert_eq!(r.code, StatusCode::CREATED, "{}", r.text());
    let mut d = r.json();
    d["status"] = json!({"replicas": 7});
    d["spec"]["replicas"] = json!(5);
    let r = api.put(&format!("{deps}/d/status"), &d).await;
    assert_eq!(r.code, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(
        (
            v["status"]["replicas"].as_i64(),
            v["spec"]["replicas"].as_i64()
        ),
        (Some(7), Some(1))
    );
    let scale = api.get(&format!("{deps}/d/scale")).await.json();
    assert_eq!(scale["kind"], "Scale");
    let r = api
        .put(
            &format!("{deps}/d/scale"),
            &json!({"kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {"name": "d"}, "spec": {"replicas": 3}}),
        )
        .await;
    assert_eq!(r.code, StatusCode::OK, "{}", r.text());
    assert_eq!(
        api.get(&format!("{deps}/d")).await.json()["spec"]["replicas"],
        3
    );
    // The scale subresource of a kind without one, and a made-up subresource.
    api.put(&format!("{CMS}/nope/scale"), &json!({}))
        .await
        .status(404, "NotFound");
    api.put(&format!("{deps}/d/bogus"), &json!({}))
        .await
        .status(404, "NotFound");
}

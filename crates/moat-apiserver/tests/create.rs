//! POST (create) through the router in process: created objects, and the error paths — 409
//! AlreadyExists, 422 Invalid with field causes, 400 malformed or mismatched bodies, 415
//! unknown media types, 413 oversized bodies, 404 missing namespaces — each changing nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use common::{Api, CMS};
use http::{Method, StatusCode};
use serde_json::{Value, json};

/// How many ConfigMaps the store holds in `default`.
async fn count(api: &Api) -> usize {
    api.get(CMS).await.json()["items"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0)
}

#[tokio::test]
async fn create_sets_server_fields() {
    let api = Api::new().await;
    let v = api.configmap("a", json!({"app": "x"})).await;
    let m = &v["metadata"];
    assert!(m["uid"].as_str().is_some_and(|u| u.len() == 36), "{v}");
    assert!(m["creationTimestamp"].is_string());
    assert!(
        m["resourceVersion"]
            .as_str()
            .is_some_and(|r| r.parse::<i64>().is_ok())
    );
    assert_eq!(m["namespace"], "default");
    assert_eq!(m["managedFields"][0]["operation"], "Update");
}

#[tokio::test]
async fn create_of_an_existing_name_is_409_already_exists() {
    let api = Api::new().await;
    api.configmap("a", json!({})).await;
    let s = api
        .post(
            CMS,
            &json!({"metadata": {"name": "a"}, "data": {"other": "1"}}),
        )
        .await
        .status(409, "AlreadyExists");
    assert_eq!(s["details"]["name"], "a");
    let kept = api.get(&format!("{CMS}/a")).await.json();
    assert_eq!(
        kept["data"],
        json!({"k": "v"}),
        "the first object is unchanged"
    );
}

#[tokio::test]
async fn invalid_objects_are_422_with_causes_and_not_stored() {
    let api = Api::new().await;
    let cases: [(Value, &str); 3] = [
        (json!({"metadata": {"name": "Bad_Name"}}), "metadata.name"),
        (json!({"metadata": {}}), "metadata.name"),
        (
            json!({"metadata": {"name": "ok", "labels": {"bad key!": "v"}}}),
            "metadata.labels",
        ),
    ];
    for (obj, field) in cases {
        let s = api.post(CMS, &obj).await.status(422, "Invalid");
        let causes = s["details"]["causes"].as_array().expect("causes");
        assert!(
            causes.iter().any(
                |c| c["field"].as_str().is_some_and(|f| f.starts_with(field))
                    && c["reason"].is_string()
                    && c["message"].is_string()
            ),
            "{s}"
        );
    }
    // A pod without containers names the field.
    let s = api
        .post(
            "/api/v1/namespaces/default/pods",
            &json!({"metadata": {"name": "p"}, "spec": {"containers": []}}),
        )
        .await
        .status(422, "Invalid");
    assert!(
        s["message"]
            .as_str()
            .is_some_and(|m| m.contains("spec.containers")),
        "{s}"
    );
    assert_eq!(count(&api).await, 0);
}

#[tokio::test]
async fn malformed_bodies_are_400_and_not_stored() {
    let api = Api::new().await;
    for body in ["{not json", "[1,2]", "\"a string\"", ""] {
        api.request(
            Method::POST,
            CMS,
            Some("application/json"),
            body.to_string(),
        )
        .await
        .status(400, "BadRequest");
    }
    // Kind, apiVersion or namespace that do not match the URL.
    for obj in [
        json!({"kind": "Secret", "metadata": {"name": "a"}}),
        json!({"apiVersion": "apps/v1", "metadata": {"name": "a"}}),
        json!({"metadata": {"name": "a", "namespace": "kube-system"}}),
    ] {
        api.post(CMS, &obj).await.status(400, "BadRequest");
    }
    // Protobuf without the Kubernetes envelope.
    let r = api
        .request(
            Method::POST,
            CMS,
            Some("application/vnd.kubernetes.protobuf"),
            b"\x01\x02garbage".to_vec(),
        )
        .await;
    assert!(r.code.is_client_error(), "{}", r.text());
    assert_eq!(r.json()["kind"], "Status");
    assert_eq!(count(&api).await, 0);
}

#[tokio::test]
async fn unknown_media_types_are_415() {
    let api = Api::new().await;
    let body = json!({"metadata": {"name": "a"}}).to_string();
    for ct in [
        "application/x-www-form-urlencoded",
        "text/plain",
        "application/xml",
    ] {
        let s = api
            .request(Method::POST, CMS, Some(ct), body.clone())
            .await
            .status(415, "UnsupportedMediaType");
        assert!(
            s["message"]
                .as_str()
                .is_some_and(|m| m.contains("application/json")),
            "{s}"
        );
    }
    assert_eq!(count(&api).await, 0);
}

#[tokio::test]
async fn yaml_bodies_are_accepted_as_upstream() {
    let api = Api::new().await;
    let r = api
        .request(
            Method::POST,
            CMS,
            Some("application/yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: y}\ndata: {a: '1'}\n",
        )
        .await;
    assert_eq!(r.code, StatusCode::CREATED, "{}", r.text());
    assert_eq!(r.json()["data"]["a"], "1");
    api.request(Method::POST, CMS, Some("application/yaml"), "a: [unclosed")
        .await
        .status(400, "BadRequest");
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let api = Api::new().await;
    let big = "x".repeat(moat_apiserver::body::MAX_BODY + 1);
    let body = json!({"metadata": {"name": "big"}, "data": {"k": big}}).to_string();
    api.request(Method::POST, CMS, Some("application/json"), body)
        .await
        .status(413, "RequestEntityTooLarge");
    assert_eq!(count(&api).await, 0);
}

#[tokio::test]
async fn create_in_a_missing_namespace_is_404() {
    let api = Api::new().await;
    api.post(
        "/api/v1/namespaces/ghost/configmaps",
        &json!({"metadata": {"name": "a"}}),
    )
    .await
    .status(404, "NotFound");
}

#[tokio::test]
async fn generate_name_and_dry_run() {
    let api = Api::new().await;
    let r = api
        .post(CMS, &json!({"metadata": {"generateName": "gen-"}}))
        .await;
    assert_eq!(r.code, StatusCode::CREATED);
    assert!(
        r.json()["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("gen-") && n.len() == 9)
    );
    let r = api
        .post(
            &format!("{CMS}?dryRun=All"),
            &json!({"metadata": {"name": "dry"}}),
        )
        .await;
    assert_eq!(r.code, StatusCode::CREATED);
    api.get(&format!("{CMS}/dry")).await.status(404, "NotFound");
}

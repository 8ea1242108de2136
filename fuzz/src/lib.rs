//! What the fuzz targets share: the API server in process (`router()` over a fresh
//! in-memory store with the bootstrap namespaces), driven on one current-thread runtime.

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use http::{Method, Request, StatusCode, header};
use moat_apiserver::{App, alloc::ServiceCidr, router};
use moat_store::{MemStore, Store};
use serde_json::json;
use tower::ServiceExt;

pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

pub const TOKEN: &str = "fuzz";

/// A fresh API server over an empty in-memory store holding `default` and `kube-system`.
pub async fn api() -> Arc<App> {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    for ns in ["default", "kube-system"] {
        let obj = json!({"kind": "Namespace", "apiVersion": "v1",
            "metadata": {"name": ns, "uid": format!("uid-{ns}"),
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
        store
            .create(
                &format!("/registry/namespaces/{ns}"),
                serde_json::to_vec(&obj).expect("encode"),
            )
            .await
            .expect("bootstrap namespace");
    }
    Arc::new(App {
        store,
        token: TOKEN.into(),
        admission: moat_admission::Config {
            untrusted_runtime_class: "moat-vm".into(),
        },
        advertise: "127.0.0.1:6443".into(),
        service_cidr: ServiceCidr::parse("10.43.0.0/16").expect("cidr"),
        max_watch_seconds: Some(1),
        // The admin token (system:masters) is what the fuzzer sends: RBAC's cache stays empty.
        rbac: moat_apiserver::authz::cache::RbacCache::empty(),
    })
}

/// Sends one request; returns the status and body. Every answer must be a success or a
/// Kubernetes `Status` the client can read, never a 5xx for what the client sent.
pub async fn call(
    app: &Arc<App>,
    method: Method,
    uri: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (StatusCode, Vec<u8>) {
    let req = Request::builder()
        .method(method.clone())
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .expect("request");
    let resp = router(app.clone()).oneshot(req).await.expect("infallible");
    let code = resp.status();
    let raw = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body")
        .to_vec();
    if !code.is_success() {
        let s: serde_json::Value = serde_json::from_slice(&raw).unwrap_or_else(|e| {
            panic!(
                "{method} {uri}: {code} without a Status body ({e}): {}",
                String::from_utf8_lossy(&raw)
            )
        });
        assert_eq!(s["kind"], "Status", "{method} {uri}: {s}");
        assert!(
            !code.is_server_error(),
            "{method} {uri} ({content_type}): {code} for client input: {s}"
        );
    }
    (code, raw)
}

/// Where requests go: (collection path, resource kind).
pub const COLLECTIONS: &[(&str, &str)] = &[
    ("/api/v1/namespaces/default/configmaps", "ConfigMap"),
    ("/api/v1/namespaces/default/pods", "Pod"),
    ("/api/v1/namespaces/default/services", "Service"),
    ("/apis/apps/v1/namespaces/default/deployments", "Deployment"),
    (
        "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies",
        "NetworkPolicy",
    ),
    ("/api/v1/namespaces", "Namespace"),
    ("/api/v1/nodes", "Node"),
    ("/apis/batch/v1/namespaces/default/jobs", "Job"),
];

/// One valid object of each kind in [`COLLECTIONS`], named `seed`.
pub fn seed_object(kind: &str) -> serde_json::Value {
    let meta = json!({"name": "seed", "labels": {"app": "seed"}});
    let pod_spec = json!({"containers": [{"name": "c", "image": "busybox",
        "ports": [{"containerPort": 80}], "env": [{"name": "A", "value": "1"}]}]});
    match kind {
        "ConfigMap" => json!({"metadata": meta, "data": {"a": "1"}}),
        "Pod" => json!({"metadata": meta, "spec": pod_spec}),
        "Service" => json!({"metadata": meta, "spec": {"selector": {"app": "seed"},
            "ports": [{"port": 80, "targetPort": 80}]}}),
        "Deployment" => json!({"metadata": meta, "spec": {"replicas": 1,
            "selector": {"matchLabels": {"app": "seed"}},
            "template": {"metadata": {"labels": {"app": "seed"}}, "spec": pod_spec}}}),
        "NetworkPolicy" => json!({"metadata": meta, "spec": {"podSelector": {},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"a": "b"}}}]}]}}),
        "Job" => json!({"metadata": meta, "spec": {"template": {"spec": {
            "containers": [{"name": "c", "image": "busybox"}], "restartPolicy": "Never"}}}}),
        _ => json!({"metadata": meta}),
    }
}

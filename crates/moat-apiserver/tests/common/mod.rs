//! The API server in process: `router()` over the in-memory store, driven through
//! `tower::ServiceExt::oneshot`, with the namespaces a real server bootstraps.

#![allow(dead_code)]

use std::sync::Arc;

use axum::body::Body;
use http::{Method, Request, StatusCode, header};
use moat_apiserver::{App, alloc::ServiceCidr, router};
use moat_store::{MemStore, Store};
use serde_json::{Value, json};
use tower::ServiceExt;

pub const TOKEN: &str = "test-token";

pub struct Api {
    pub app: Arc<App>,
}

/// One response: status, content type and body (JSON when it parses).
#[derive(Debug)]
pub struct Resp {
    pub code: StatusCode,
    pub content_type: String,
    pub raw: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.raw).unwrap_or_else(|e| {
            panic!(
                "response is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.raw)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }

    /// Asserts a Kubernetes Status with this code and reason; returns it.
    pub fn status(&self, code: u16, reason: &str) -> Value {
        assert_eq!(self.code.as_u16(), code, "{}", self.text());
        let s = self.json();
        assert_eq!(s["kind"], "Status", "{s}");
        assert_eq!(s["status"], "Failure", "{s}");
        assert_eq!(s["code"], code, "{s}");
        assert_eq!(s["reason"], reason, "{s}");
        s
    }
}

impl Api {
    pub async fn new() -> Api {
        Self::over(Arc::new(MemStore::new())).await
    }

    pub async fn over(store: Arc<dyn Store>) -> Api {
        Self::over_with(store, moat_apiserver::authz::cache::RbacCache::empty()).await
    }

    /// With the default RBAC policy bootstrapped and a watch-fed RBAC cache, as `serve` runs.
    pub async fn with_rbac() -> Api {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        moat_apiserver::authz::policy::ensure(&*store, "2026-01-01T00:00:00Z")
            .await
            .expect("policy");
        let rbac = moat_apiserver::authz::cache::RbacCache::start(store.clone())
            .await
            .expect("rbac cache");
        Self::over_with(store, rbac).await
    }

    pub async fn over_with(
        store: Arc<dyn Store>,
        rbac: Arc<moat_apiserver::authz::cache::RbacCache>,
    ) -> Api {
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
        let app = Arc::new(App {
            store,
            token: TOKEN.into(),
            admission: moat_admission::Config {
                untrusted_runtime_class: "moat-vm".into(),
            },
            advertise: "127.0.0.1:6443".into(),
            service_cidr: ServiceCidr::parse("10.43.0.0/16").expect("cidr"),
            max_watch_seconds: None,
            rbac,
        });
        Api { app }
    }

    pub async fn request(
        &self,
        method: Method,
        uri: &str,
        content_type: Option<&str>,
        body: impl Into<Body>,
    ) -> Resp {
        let b = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
        self.send(b, content_type, body.into()).await
    }

    /// A request from `who` as a verified client certificate would identify them (None:
    /// no credentials at all).
    pub async fn request_as(
        &self,
        who: Option<&moat_apiserver::authz::User>,
        method: Method,
        uri: &str,
        body: Option<&Value>,
    ) -> Resp {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(u) = who {
            b = b.extension(moat_apiserver::authn::PeerUser(u.clone()));
        }
        let body = body.map(|v| Body::from(v.to_string())).unwrap_or_default();
        self.send(b, Some("application/json"), body).await
    }

    async fn send(
        &self,
        mut b: http::request::Builder,
        content_type: Option<&str>,
        body: Body,
    ) -> Resp {
        if let Some(ct) = content_type {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        let resp = router(self.app.clone())
            .oneshot(b.body(body).expect("request"))
            .await
            .expect("infallible");
        let code = resp.status();
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let raw = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body")
            .to_vec();
        Resp {
            code,
            content_type,
            raw,
        }
    }

    pub async fn get(&self, uri: &str) -> Resp {
        self.request(Method::GET, uri, None, Body::empty()).await
    }

    pub async fn delete(&self, uri: &str) -> Resp {
        self.request(Method::DELETE, uri, None, Body::empty()).await
    }

    pub async fn post(&self, uri: &str, body: &Value) -> Resp {
        self.request(
            Method::POST,
            uri,
            Some("application/json"),
            body.to_string(),
        )
        .await
    }

    pub async fn put(&self, uri: &str, body: &Value) -> Resp {
        self.request(Method::PUT, uri, Some("application/json"), body.to_string())
            .await
    }

    pub async fn patch(&self, uri: &str, content_type: &str, body: &str) -> Resp {
        self.request(Method::PATCH, uri, Some(content_type), body.to_string())
            .await
    }

    /// Creates ConfigMap `name` in `default`; returns the stored object.
    pub async fn configmap(&self, name: &str, labels: Value) -> Value {
        let r = self
            .post(
                "/api/v1/namespaces/default/configmaps",
                &json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}),
            )
            .await;
        assert_eq!(r.code, StatusCode::CREATED, "{}", r.text());
        r.json()
    }
}

pub const CMS: &str = "/api/v1/namespaces/default/configmaps";

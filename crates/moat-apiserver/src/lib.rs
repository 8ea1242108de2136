//! moat's Kubernetes-compatible API server.
//!
//! HTTPS (rustls; HTTP/1.1 and h2) with authentication by the admin bearer token or client
//! certificates of the cluster CA (`authn`) and RBAC authorization (`authz`); every resource of the
//! `moat-api` registry is served generically over the `moat-store` contract: objects are
//! JSON, `resourceVersion` is the store revision, updates are compare-and-swap, watches
//! stream store events. This crate is the only one that touches the store.
//!
//! Served: legacy and aggregated discovery, OpenAPI v2/v3, CRUD + list + watch with
//! label/field selectors and limit/continue, status/scale/binding/finalize subresources,
//! merge, JSON, strategic-merge and server-side-apply patches, protobuf bodies, finalizers
//! and graceful deletion, server-side Tables, Kubernetes `Status` errors, admission; and
//! `pods/log|exec|attach|portforward` proxied to the node agents (see STATUS.md).

// `ApiError` carries a Kubernetes Status (message, details, causes); it is built once per
// failed request, on a cold path, so boxing it would buy nothing but noise.
#![allow(clippy::result_large_err)]

pub mod alloc;
pub mod authn;
pub mod authz;
pub mod body;
pub mod bootstrap;
pub mod compaction;
pub mod delete;
pub mod discovery;
pub mod handlers;
pub mod openapi;
pub mod pki;
pub mod protobuf;
pub mod proxy;
pub mod schema;
pub mod select;
pub mod snapshot;
pub mod ssa;
pub mod status;
pub mod table;
pub mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use moat_store::{EmbeddedStore, Store};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;

use crate::status::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("preparing credentials")]
    Pki(#[from] pki::PkiError),
    #[error("opening the store")]
    Store(#[source] moat_store::StoreError),
    #[error("connecting to the etcd datastore at {0}")]
    Etcd(String, #[source] moat_store::StoreError),
    #[error("creating bootstrap namespace {0}")]
    Bootstrap(String, #[source] moat_store::StoreError),
    #[error("bootstrapping the cluster")]
    DefaultRuntimeClass(#[from] bootstrap::BootstrapError),
    #[error("bootstrapping the cluster")]
    NetConf(#[from] bootstrap::NetConfError),
    #[error("bootstrapping or reading the RBAC policy")]
    Rbac(#[source] moat_store::StoreError),
    #[error("building the client certificate verifier")]
    ClientVerifier(#[source] rustls::server::VerifierBuilderError),
    #[error("loading the TLS certificate")]
    Tls(#[source] rustls::Error),
    #[error("parsing {0}")]
    Pem(&'static str),
    #[error("--service-cidr {value:?} is not an IPv4 CIDR with a prefix between /8 and /30")]
    ServiceCidr {
        value: String,
        #[source]
        source: alloc::ServiceCidrError,
    },
    #[error("listening on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub datastore_endpoint: Option<String>,
    pub untrusted_runtime_class: String,
    /// Service ClusterIP range, e.g. 10.43.0.0/16.
    pub service_cidr: String,
    /// Every interval, history before the revision seen at the previous tick is compacted
    /// (as kube-apiserver's --etcd-compaction-interval); None disables it.
    pub compaction_interval: Option<std::time::Duration>,
    /// Upper bound on a watch's duration (clients resume from their last resourceVersion).
    pub max_watch_seconds: Option<u64>,
    /// The pod network's `net-conf.json` (flannel's format), published to the agents in
    /// `kube-system/kube-flannel-cfg`; None publishes nothing.
    pub net_conf: Option<String>,
    /// The cluster DNS address (inside the service CIDR): the `kube-system/kube-dns` Service
    /// is created with it.
    pub cluster_dns: Option<std::net::Ipv4Addr>,
    /// Honour the 2016 `net.beta.kubernetes.io/network-policy` DefaultDeny namespace
    /// annotation on every node (published in `kube-system/moat-network-policy`).
    pub legacy_namespace_isolation: bool,
}

pub struct App {
    pub store: Arc<dyn Store>,
    pub token: String,
    pub admission: moat_admission::Config,
    pub advertise: String,
    pub service_cidr: alloc::ServiceCidr,
    pub max_watch_seconds: Option<u64>,
    /// The RBAC objects, watch-fed ([`authz::cache::RbacCache::empty`] without a watch).
    pub rbac: Arc<authz::cache::RbacCache>,
}

async fn bootstrap(store: &dyn Store) -> Result<(), ServeError> {
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let key = format!("/registry/namespaces/{ns}");
        if store
            .get(&key)
            .await
            .map_err(|e| ServeError::Bootstrap(ns.into(), e))?
            .is_some()
        {
            continue;
        }
        let obj = json!({"kind": "Namespace", "apiVersion": "v1",
            "metadata": {"name": ns, "uid": uuid::Uuid::new_v4().to_string(),
                         "creationTimestamp": moat_api::time::rfc3339_from_millis(chrono::Utc::now().timestamp_millis()),
                         "labels": {"kubernetes.io/metadata.name": ns}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
        match store
            .create(&key, serde_json::to_vec(&obj).unwrap_or_default())
            .await
        {
            Ok(_) | Err(moat_store::StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(ServeError::Bootstrap(ns.into(), e)),
        }
    }
    Ok(())
}

async fn route(
    State(app): State<Arc<App>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    req: Request,
) -> Response {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    match path.as_str() {
        "/healthz" | "/livez" | "/readyz" => return (StatusCode::OK, "ok").into_response(),
        // Served with and without the trailing slash, as kube-apiserver does (the Python
        // client asks for `/version/`).
        "/version" | "/version/" => {
            return (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], json!({
                "major": "1", "minor": "33", "gitVersion": "v1.33.0-moat", "gitCommit": "", "gitTreeState": "clean",
                "buildDate": "", "goVersion": "", "compiler": "rustc", "platform": "linux/amd64"}).to_string()).into_response();
        }
        _ => {}
    }
    let Some(real) = authn::authenticate(&app.token, &parts.headers, &parts.extensions) else {
        return ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
            .into_response();
    };
    let snap = app.rbac.snapshot();
    let user = match authn::impersonate(&snap, real, &parts.headers) {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    // Authorization comes before anything is read, written or proxied to a node.
    let watching = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    let upgrade = parts.headers.contains_key(header::UPGRADE);
    for a in authz::request_checks(&parts.method, &path, watching, upgrade) {
        if let Err(e) = authz::check(&snap, &user, &a) {
            tracing::debug!(user = %user.name, %path, "forbidden");
            return e.into_response();
        }
    }
    if parts.method == http::Method::POST
        && let Some(which) = authz::review::which(&path)
    {
        return serve_review(&snap, &user, which, &parts.headers, body).await;
    }
    let raw_query = parts.uri.query().unwrap_or("").to_string();
    if let Some(r) = proxy::intercept(&app, &path, &raw_query, &mut parts).await {
        return r;
    }
    if parts.method == http::Method::GET
        && let Some(r) = openapi::serve(&path, &parts.headers).await
    {
        return r;
    }
    let method = parts.method.clone();
    match handlers::handle(app, &user, method.clone(), &path, q, parts.headers, body).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%method, %path, code = e.code.as_u16(), reason = e.reason, "request failed");
            e.into_response()
        }
    }
}

/// SelfSubjectAccessReview, SelfSubjectRulesReview and SelfSubjectReview (POST only;
/// nothing is stored).
async fn serve_review(
    snap: &authz::rbac::Snapshot,
    user: &authz::User,
    which: &str,
    headers: &http::HeaderMap,
    body: Body,
) -> Response {
    use authz::review;
    if which == review::WHOAMI {
        // The body asks nothing; only the requester matters.
        return handlers::json_response(StatusCode::CREATED, &review::whoami(user));
    }
    let parsed = match body::read_object_body(headers, body).await {
        Ok(b) => serde_json::from_slice::<serde_json::Value>(&b)
            .map_err(|e| ApiError::bad_request(format!("decoding the review: {e}"))),
        Err(e) => Err(e),
    };
    let answer = parsed.and_then(|v| {
        if which == review::ACCESS {
            review::access_review(snap, user, v)
        } else {
            Ok(review::rules_review(snap, user, v))
        }
    });
    match answer {
        Ok(v) => handlers::json_response(StatusCode::CREATED, &v),
        Err(e) => e.into_response(),
    }
}

/// Client certificates are optional (token clients send none) but, when sent, must chain
/// to the cluster CA, or the handshake fails.
fn client_verifier(
    ca_pem: &str,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, ServeError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let c = c.map_err(|_| ServeError::Pem("the CA certificate"))?;
        roots.add(c).map_err(ServeError::Tls)?;
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .allow_unauthenticated()
    .build()
    .map_err(ServeError::ClientVerifier)
}

pub fn router(app: Arc<App>) -> axum::Router {
    axum::Router::new().fallback(route).with_state(app)
}

/// Prepares credentials, store and kubeconfig; then serves until the process ends.
/// `ready` is told the URL once the listener is bound.
pub async fn serve(
    cfg: Config,
    ready: Option<tokio::sync::oneshot::Sender<String>>,
) -> Result<(), ServeError> {
    let mut sans = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "kubernetes".into(),
        "kubernetes.default".into(),
    ];
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        sans.push(h.trim().to_string());
    }
    if !cfg.listen.ip().is_unspecified() {
        sans.push(cfg.listen.ip().to_string());
    }
    sans.sort();
    sans.dedup();
    let service_cidr =
        alloc::ServiceCidr::parse(&cfg.service_cidr).map_err(|source| ServeError::ServiceCidr {
            value: cfg.service_cidr.clone(),
            source,
        })?;
    let creds = pki::ensure(&cfg.data_dir, &sans)?;
    let store: Arc<dyn Store> = match &cfg.datastore_endpoint {
        Some(ep) => Arc::new(
            moat_store::EtcdStore::connect(ep)
                .await
                .map_err(|e| ServeError::Etcd(ep.clone(), e))?,
        ),
        None => Arc::new(EmbeddedStore::open(&cfg.data_dir.join("db")).map_err(ServeError::Store)?),
    };
    bootstrap(&*store).await?;
    let kata = bootstrap::default_runtime_class(
        &*store,
        &uuid::Uuid::new_v4().to_string(),
        &moat_api::time::rfc3339_from_millis(chrono::Utc::now().timestamp_millis()),
    )
    .await?;
    tracing::debug!(?kata, "default RuntimeClass");
    if let Some(nc) = &cfg.net_conf {
        bootstrap::network_config(
            &*store,
            nc,
            &uuid::Uuid::new_v4().to_string(),
            &moat_api::time::rfc3339_from_millis(chrono::Utc::now().timestamp_millis()),
        )
        .await?;
    }
    bootstrap::network_policy_config(
        &*store,
        cfg.legacy_namespace_isolation,
        &uuid::Uuid::new_v4().to_string(),
        &moat_api::time::rfc3339_from_millis(chrono::Utc::now().timestamp_millis()),
    )
    .await?;
    if let Some(ip) = cfg.cluster_dns {
        bootstrap::kube_dns(
            &*store,
            ip,
            &uuid::Uuid::new_v4().to_string(),
            &moat_api::time::rfc3339_from_millis(chrono::Utc::now().timestamp_millis()),
        )
        .await?;
    }

    authz::policy::ensure(
        &*store,
        &chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
    .await
    .map_err(ServeError::Rbac)?;
    let rbac = authz::cache::RbacCache::start(store.clone())
        .await
        .map_err(ServeError::Rbac)?;

    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(creds.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|_| ServeError::Pem("the server certificate"))?;
    let key = PrivateKeyDer::from_pem_slice(creds.key_pem.as_bytes())
        .map_err(|_| ServeError::Pem("the server key"))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(ServeError::Tls)?
    .with_client_cert_verifier(client_verifier(&creds.ca_pem)?)
    .with_single_cert(certs, key)
    .map_err(ServeError::Tls)?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: cfg.listen,
        source,
    })?;
    let host = if bound.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        bound.ip().to_string()
    };
    let url = format!("https://{host}:{}", bound.port());
    pki::write_private(
        &cfg.data_dir.join("kubeconfig.yaml"),
        pki::kubeconfig(&url, &creds).as_bytes(),
        "writing the kubeconfig",
    )?;
    tracing::info!(%url, kubeconfig = %cfg.data_dir.join("kubeconfig.yaml").display(), "moat API server ready");
    let app = Arc::new(App {
        store,
        token: creds.token.clone(),
        admission: moat_admission::Config {
            untrusted_runtime_class: cfg.untrusted_runtime_class.clone(),
        },
        advertise: format!("{host}:{}", bound.port()),
        service_cidr,
        max_watch_seconds: cfg.max_watch_seconds,
        rbac,
    });
    if let Some(every) = cfg.compaction_interval {
        tokio::spawn(compaction::run(app.store.clone(), every));
    }
    openapi::warm_up();
    let svc = router(app);
    if let Some(r) = ready {
        let _ = r.send(url);
    }
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let svc = svc.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            // rustls has verified the chain to the cluster CA; the leaf names the user.
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| authn::user_from_cert(c))
                .map(authn::PeerUser);
            let hyper_svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let svc = svc.clone();
                    let peer = peer.clone();
                    async move {
                        let mut req = req.map(Body::new);
                        if let Some(p) = peer {
                            req.extensions_mut().insert(p);
                        }
                        tower::ServiceExt::oneshot(svc, req).await
                    }
                });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), hyper_svc)
                .await;
        });
    }
}

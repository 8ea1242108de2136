//! `pods/log`, `pods/exec`, `pods/attach` and `pods/portforward`, proxied to the node
//! agent's own HTTPS endpoint (the kubelet's :10250 role). The agent publishes its URL and
//! self-signed certificate on its Node as the annotations `moat.io/agent-endpoint` and
//! `moat.io/agent-cert`; the proxy pins that certificate and authenticates with the cluster
//! token. HTTP to the agent is hyper's client over that TLS connection.
//!
//! - `GET .../pods/P/log?container=C&follow=&previous=&timestamps=&tailLines=` →
//!   `GET {endpoint}/containerLogs/{ns}/{P}/{C}?...`, body streamed back.
//! - `GET|POST .../pods/P/exec?container=C&command=..` with a WebSocket or SPDY/3.1 upgrade
//!   → `GET {endpoint}/exec/{ns}/{P}/{C}?...`; after the agent's 101 both connections are
//!   upgraded (`hyper::upgrade::on`) and spliced byte for byte (the stream protocol is end
//!   to end between kubectl and agent).
//! - `pods/P/attach?container=C&stdin=..` the same way → `{endpoint}/attach/{ns}/{P}/{C}`.
//! - `pods/P/portforward` with SPDY/3.1 (`portforward.k8s.io`) or WebSocket
//!   (`SPDY/3.1+portforward.k8s.io`, SPDY tunnelled in binary messages) →
//!   `{endpoint}/portForward/{ns}/{P}`; the ports travel in the stream headers.
//!
//! The agent's errors are plain text with a status code; they come back as a Status.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;

use crate::App;
use crate::status::ApiError;

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Why the agent could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("endpoint {0} is not https")]
    NotHttps(String),
    #[error("agent certificate: {0}")]
    CertPem(rustls::pki_types::pem::Error),
    #[error("agent certificate: {0}")]
    Cert(rustls::Error),
    #[error("{0}")]
    Config(rustls::Error),
    #[error("{0}")]
    Name(rustls::pki_types::InvalidDnsNameError),
    #[error("{0}")]
    Io(std::io::Error),
}

/// Request headers passed on for an upgrade: WebSocket (kubectl 1.30+) or SPDY/3.1
/// (1.27-1.29, which repeats X-Stream-Protocol-Version once per protocol it offers).
const UPGRADE_REQUEST: &[&str] = &[
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "x-stream-protocol-version",
];

/// The agent's 101 headers passed back: the protocol it chose.
const UPGRADE_RESPONSE: &[&str] = &[
    "upgrade",
    "connection",
    "sec-websocket-accept",
    "sec-websocket-protocol",
    "x-stream-protocol-version",
];

/// `(namespace, pod, subresource)` if `path` is one of the proxied subresources.
pub fn match_path(path: &str) -> Option<(&str, &str, &str)> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        [
            "api",
            "v1",
            "namespaces",
            ns,
            "pods",
            name,
            sub @ ("log" | "exec" | "attach" | "portforward"),
        ] => Some((ns, name, sub)),
        _ => None,
    }
}

fn err(code: StatusCode, reason: &'static str, msg: impl Into<String>) -> Response {
    ApiError::new(code, reason, msg.into()).into_response()
}

async fn load(app: &App, key: &str) -> Option<Value> {
    let kv = app.store.get(key).await.ok()??;
    serde_json::from_slice(&kv.value).ok()
}

/// Handles the request if it is a proxied pod subresource; `None` lets the normal handlers
/// run.
pub async fn intercept(
    app: &Arc<App>,
    path: &str,
    raw_query: &str,
    parts: &mut http::request::Parts,
) -> Option<Response> {
    let (ns, name, sub) = match_path(path)?;
    Some(match proxy(app, ns, name, sub, raw_query, parts).await {
        Ok(r) => r,
        Err(r) => r,
    })
}

async fn proxy(
    app: &Arc<App>,
    ns: &str,
    name: &str,
    sub: &str,
    raw_query: &str,
    parts: &mut http::request::Parts,
) -> Result<Response, Response> {
    let pod = load(app, &format!("/registry/pods/{ns}/{name}"))
        .await
        .ok_or_else(|| {
            err(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("pods \"{name}\" not found"),
            )
        })?;
    let mut query: Vec<(String, String)> = form_urlencoded::parse(raw_query.as_bytes())
        .into_owned()
        .collect();
    let container = match query.iter().position(|(k, _)| k == "container") {
        // Port forwarding is to the pod's network, not to a container.
        _ if sub == "portforward" => String::new(),
        Some(i) => query.remove(i).1,
        None => {
            let names: Vec<&str> = pod["spec"]["containers"]
                .as_array()
                .map(|cs| cs.iter().filter_map(|c| c["name"].as_str()).collect())
                .unwrap_or_default();
            match names.as_slice() {
                [one] => one.to_string(),
                _ => {
                    return Err(err(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        format!(
                            "a container name must be specified for pod {name}, choose one of: {names:?}"
                        ),
                    ));
                }
            }
        }
    };
    let node_name = pod["spec"]["nodeName"].as_str().unwrap_or("");
    if node_name.is_empty() {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("pod {name} is not scheduled to a node yet"),
        ));
    }
    let node = load(app, &format!("/registry/nodes/{node_name}"))
        .await
        .unwrap_or_default();
    let ann = &node["metadata"]["annotations"];
    let (Some(endpoint), Some(cert)) = (
        ann[moat_api::annotations::AGENT_ENDPOINT].as_str(),
        ann[moat_api::annotations::AGENT_CERT].as_str(),
    ) else {
        return Err(err(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!("node {node_name} publishes no agent endpoint"),
        ));
    };
    let target = agent_target(sub, ns, name, &container, &query);
    let agent = Agent {
        node: node_name,
        endpoint,
        cert,
        token: &app.token,
    };
    forward(&agent, sub, &target, parts).await
}

/// The agent's path and query for subresource `sub` of pod `ns/name`: path segments
/// percent-encoded, the query form-encoded.
pub fn agent_target(
    sub: &str,
    ns: &str,
    name: &str,
    container: &str,
    query: &[(String, String)],
) -> String {
    let route = match sub {
        "log" => format!(
            "/containerLogs/{}/{}/{}",
            enc(ns),
            enc(name),
            enc(container)
        ),
        "portforward" => format!("/portForward/{}/{}", enc(ns), enc(name)),
        other => format!("/{other}/{}/{}/{}", enc(ns), enc(name), enc(container)),
    };
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(query)
        .finish();
    format!("{route}?{query}")
}

/// An agent endpoint to forward to.
pub struct Agent<'a> {
    /// Its node's name (for messages).
    pub node: &'a str,
    /// `https://host:port`
    pub endpoint: &'a str,
    /// Its serving certificate (PEM), the only one trusted.
    pub cert: &'a str,
    /// The bearer token it accepts.
    pub token: &'a str,
}

/// Sends `GET target` to the agent, with the client's upgrade headers for the streaming
/// subresources (`sub` other than `log`); a 101 splices the client's connection (`parts`' pending upgrade) to the agent's, a 200's
/// body is streamed back, anything else comes back as a Status.
pub async fn forward(
    agent: &Agent<'_>,
    sub: &str,
    target: &str,
    parts: &mut http::request::Parts,
) -> Result<Response, Response> {
    let (node, endpoint) = (agent.node, agent.endpoint);
    let upgrade = sub != "log";
    let tls = connect(endpoint, agent.cert).await.map_err(|e| {
        err(
            StatusCode::BAD_GATEWAY,
            "ServiceUnavailable",
            format!("connecting to the agent of node {node} at {endpoint}: {e}"),
        )
    })?;
    let talk = |e: hyper::Error| {
        err(
            StatusCode::BAD_GATEWAY,
            "ServiceUnavailable",
            format!("talking to the agent of node {node}: {e}"),
        )
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(talk)?;
    // Ends once the one request's answer is done (or its connection upgraded): the sender
    // is dropped at the end of this function.
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "agent connection");
        }
    });
    let mut req = http::Request::get(target)
        .header(header::HOST, endpoint.trim_start_matches("https://"))
        .header(header::AUTHORIZATION, format!("Bearer {}", agent.token));
    if upgrade {
        for h in UPGRADE_REQUEST {
            for v in parts.headers.get_all(*h) {
                req = req.header(*h, v);
            }
        }
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(|e| {
        err(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("the request to the agent: {e}"),
        )
    })?;
    let mut resp = sender.send_request(req).await.map_err(talk)?;
    let code = resp.status();
    if upgrade && code == StatusCode::SWITCHING_PROTOCOLS {
        let client = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or_else(|| {
                err(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("{sub} needs an HTTP/1.1 connection that can be upgraded"),
                )
            })?;
        let to_agent = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match tokio::try_join!(client, to_agent) {
                Ok((client, to_agent)) => {
                    let (mut client, mut to_agent) = (TokioIo::new(client), TokioIo::new(to_agent));
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut to_agent).await;
                }
                Err(e) => tracing::debug!(error = %e, "upgrading a proxied stream"),
            }
        });
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        for (k, v) in resp.headers() {
            if UPGRADE_RESPONSE.contains(&k.as_str()) {
                r.headers_mut().append(k.clone(), v.clone());
            }
        }
        return Ok(r);
    }
    if code != StatusCode::OK {
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let msg = String::from_utf8_lossy(&body).trim().to_string();
        let reason = match code.as_u16() {
            400 => "BadRequest",
            404 => "NotFound",
            401 | 403 => "Forbidden",
            _ => "InternalError",
        };
        return Err(err(code, reason, msg));
    }
    // Streamed as it comes (a followed log ends when its container does).
    let mut r = Response::new(Body::new(resp.into_body()));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(r)
}

async fn connect(endpoint: &str, cert_pem: &str) -> Result<Tls, ConnectError> {
    let hostport = endpoint
        .strip_prefix("https://")
        .ok_or_else(|| ConnectError::NotHttps(endpoint.to_string()))?;
    let host = match hostport.rsplit_once(':') {
        Some((h, _)) => h.trim_matches(['[', ']']),
        None => hostport,
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots
            .add(c.map_err(ConnectError::CertPem)?)
            .map_err(ConnectError::Cert)?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(ConnectError::Config)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from(host.to_string()).map_err(ConnectError::Name)?;
    let tcp = tokio::net::TcpStream::connect(hostport)
        .await
        .map_err(ConnectError::Io)?;
    let _ = tcp.set_nodelay(true);
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(ConnectError::Io)
}

/// Everything but RFC 3986's unreserved characters is escaped.
const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, COMPONENT).to_string()
}

#[cfg(test)]
mod tests;

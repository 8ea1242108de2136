//! `pods/log`, `pods/exec`, `pods/attach` and `pods/portforward`, proxied to the node
//! agent's own HTTPS endpoint (the kubelet's :10250 role). The agent publishes its URL and self-signed certificate on its Node as the
//! annotations `moat.io/agent-endpoint` and `moat.io/agent-cert`; the proxy pins that
//! certificate and authenticates with the cluster token.
//!
//! - `GET .../pods/P/log?container=C&follow=&previous=&timestamps=&tailLines=` →
//!   `GET {endpoint}/containerLogs/{ns}/{P}/{C}?...`, body streamed back.
//! - `GET|POST .../pods/P/exec?container=C&command=..` with a WebSocket or SPDY/3.1 upgrade
//!   → `GET {endpoint}/exec/{ns}/{P}/{C}?...`; after the agent's 101 the two connections are
//!   spliced byte for byte (the stream protocol is end to end between kubectl and agent).
//! - `pods/P/attach?container=C&stdin=..` the same way → `{endpoint}/attach/{ns}/{P}/{C}`.
//! - `pods/P/portforward` with SPDY/3.1 (`portforward.k8s.io`) or WebSocket
//!   (`SPDY/3.1+portforward.k8s.io`, SPDY tunnelled in binary messages) →
//!   `{endpoint}/portForward/{ns}/{P}`; the ports travel in the stream headers.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::App;
use crate::status::ApiError;

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

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
    let mut query: Vec<(String, String)> = form_pairs(raw_query);
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
        ann["moat.io/agent-endpoint"].as_str(),
        ann["moat.io/agent-cert"].as_str(),
    ) else {
        return Err(err(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!("node {node_name} publishes no agent endpoint"),
        ));
    };
    let route = match sub {
        "log" => format!(
            "/containerLogs/{}/{}/{}",
            enc(ns),
            enc(name),
            enc(&container)
        ),
        "portforward" => format!("/portForward/{}/{}", enc(ns), enc(name)),
        other => format!("/{other}/{}/{}/{}", enc(ns), enc(name), enc(&container)),
    };
    let target = format!(
        "{route}?{}",
        query
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&")
    );
    let mut tls = connect(endpoint, cert).await.map_err(|e| {
        err(
            StatusCode::BAD_GATEWAY,
            "ServiceUnavailable",
            format!("connecting to the agent of node {node_name} at {endpoint}: {e}"),
        )
    })?;
    let host = endpoint.trim_start_matches("https://");
    let mut head = format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\n",
        app.token
    );
    let upgrade = sub != "log";
    if upgrade {
        // WebSocket (kubectl 1.30+) or SPDY/3.1 (1.27-1.29, which repeats
        // X-Stream-Protocol-Version once per protocol it offers).
        for h in [
            "upgrade",
            "connection",
            "sec-websocket-key",
            "sec-websocket-version",
            "sec-websocket-protocol",
            "x-stream-protocol-version",
        ] {
            for v in parts.headers.get_all(h) {
                if let Ok(v) = v.to_str() {
                    head.push_str(&format!("{h}: {v}\r\n"));
                }
            }
        }
    } else {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let io = |e: std::io::Error| {
        err(
            StatusCode::BAD_GATEWAY,
            "ServiceUnavailable",
            format!("talking to the agent of node {node_name}: {e}"),
        )
    };
    tls.write_all(head.as_bytes()).await.map_err(io)?;
    let (code, headers) = read_head(&mut tls).await.map_err(io)?;
    if upgrade && code == 101 {
        let on_upgrade = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or_else(|| {
                err(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("{sub} needs an HTTP/1.1 connection that can be upgraded"),
                )
            })?;
        tokio::spawn(async move {
            if let Ok(up) = on_upgrade.await {
                let mut client = hyper_util::rt::TokioIo::new(up);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut tls).await;
            }
        });
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        for (k, v) in headers {
            if let (Ok(k), Ok(v)) = (
                header::HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(&v),
            ) {
                r.headers_mut().insert(k, v);
            }
        }
        return Ok(r);
    }
    if code != 200 {
        let mut body = Vec::new();
        let _ = tls.read_to_end(&mut body).await;
        let msg = String::from_utf8_lossy(&body).trim().to_string();
        let code = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
        let reason = match code.as_u16() {
            400 => "BadRequest",
            404 => "NotFound",
            401 | 403 => "Forbidden",
            _ => "InternalError",
        };
        return Err(err(code, reason, msg));
    }
    // The agent delimits the body by closing the connection: stream it as it comes.
    let stream = futures::stream::unfold(tls, |mut t| async move {
        let mut buf = vec![0u8; 16 * 1024];
        match t.read(&mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), t))
            }
        }
    });
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(r)
}

async fn connect(endpoint: &str, cert_pem: &str) -> Result<Tls, String> {
    let hostport = endpoint
        .strip_prefix("https://")
        .ok_or_else(|| format!("endpoint {endpoint} is not https"))?;
    let host = match hostport.rsplit_once(':') {
        Some((h, _)) => h.trim_matches(['[', ']']),
        None => hostport,
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots
            .add(c.map_err(|e| format!("agent certificate: {e}"))?)
            .map_err(|e| format!("agent certificate: {e}"))?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(hostport)
        .await
        .map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())
}

/// Reads a response head byte by byte (nothing after it is consumed): status and headers.
async fn read_head(t: &mut Tls) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 64 * 1024 || t.read(&mut b).await? == 0 {
            return Err(std::io::Error::other("bad response head from the agent"));
        }
        head.push(b[0]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let code = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line from the agent"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .filter(|(k, _)| {
            matches!(
                k.as_str(),
                "upgrade"
                    | "connection"
                    | "sec-websocket-accept"
                    | "sec-websocket-protocol"
                    | "x-stream-protocol-version"
            )
        })
        .collect();
    Ok((code, headers))
}

fn form_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (dec(k), dec(v))
        })
        .collect()
}

/// A form-encoded query component (`+` is a space).
fn dec(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
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
mod tests {
    use super::*;

    #[test]
    fn only_streaming_subresources_of_pods_are_proxied() {
        assert_eq!(
            match_path("/api/v1/namespaces/default/pods/web/log"),
            Some(("default", "web", "log"))
        );
        assert_eq!(
            match_path("/api/v1/namespaces/d/pods/w/exec"),
            Some(("d", "w", "exec"))
        );
        assert_eq!(
            match_path("/api/v1/namespaces/d/pods/w/portforward"),
            Some(("d", "w", "portforward"))
        );
        assert_eq!(
            match_path("/api/v1/namespaces/d/pods/w/attach"),
            Some(("d", "w", "attach"))
        );
        assert_eq!(match_path("/api/v1/namespaces/d/pods/w/status"), None);
        assert_eq!(match_path("/api/v1/namespaces/d/pods/w"), None);
    }

    #[test]
    fn query_round_trips_through_decode_and_encode() {
        let q = form_pairs("command=sh&command=-c&command=echo+a%26b&container=c");
        assert_eq!(q[2], ("command".into(), "echo a&b".into()));
        assert_eq!(enc("echo a&b"), "echo%20a%26b");
        assert_eq!(dec(&enc("x/y z%")), "x/y z%");
    }
}

//! The proxy against a fake agent: a hyper server behind TLS on loopback with its own
//! self-signed certificate, as the real agent serves.

use super::*;

use std::convert::Infallible;
use std::sync::Mutex;

use http_body_util::Full;
use hyper::body::Incoming;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
fn agent_targets_encode_so_the_agent_decodes_them_back() {
    let query: Vec<(String, String)> = [
        ("command", "sh"),
        ("command", "-c"),
        ("command", "echo a+b&c=d 100%"),
        ("stdout", "true"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let t = agent_target("exec", "d", "p", "c", &query);
    assert_eq!(
        t,
        "/exec/d/p/c?command=sh&command=-c&command=echo+a%2Bb%26c%3Dd+100%25&stdout=true"
    );
    let (_, q) = t.split_once('?').unwrap();
    let back: Vec<(String, String)> = form_urlencoded::parse(q.as_bytes()).into_owned().collect();
    assert_eq!(back, query);
    assert_eq!(
        agent_target("log", "d", "a b", "c/d", &[]),
        "/containerLogs/d/a%20b/c%2Fd?"
    );
    assert_eq!(
        agent_target("portforward", "d", "p", "", &[]),
        "/portForward/d/p?"
    );
}

/// What the fake agent saw: request targets and their Authorization headers.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

struct FakeAgent {
    endpoint: String,
    cert: String,
    seen: Seen,
}

impl FakeAgent {
    fn agent(&self) -> Agent<'_> {
        Agent {
            node: "n1",
            endpoint: &self.endpoint,
            cert: &self.cert,
            token: "tok",
        }
    }
}

fn self_signed() -> (String, rustls::ServerConfig) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![CertificateDer::from(ck.cert.der().to_vec())], key)
    .unwrap();
    (ck.cert.pem(), cfg)
}

/// Logs for `/containerLogs/...`, a WebSocket-style 101 and an echo for `/exec/...`, a 404
/// with the agent's text otherwise.
async fn fake_agent() -> FakeAgent {
    let (cert, cfg) = self_signed();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Seen::default();
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let (acceptor, seen) = (acceptor.clone(), seen2.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| answer(seen.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    FakeAgent {
        endpoint: format!("https://{addr}"),
        cert,
        seen,
    }
}

async fn answer(
    seen: Seen,
    mut req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    seen.lock().unwrap().push((req.uri().to_string(), auth));
    let path = req.uri().path().to_string();
    let mut r = hyper::Response::new(Full::new(Bytes::new()));
    if path.starts_with("/containerLogs/d/p/") {
        *r.body_mut() = Full::new(Bytes::from_static(b"one\ntwo\n"));
    } else if path.starts_with("/exec/") {
        let offered = req.headers().get("sec-websocket-protocol").cloned();
        let up = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(up) = up.await else { return };
            let (mut rd, mut wr) = tokio::io::split(TokioIo::new(up));
            let _ = tokio::io::copy(&mut rd, &mut wr).await;
        });
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = r.headers_mut();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert("sec-websocket-accept", HeaderValue::from_static("acc"));
        if let Some(p) = offered {
            h.insert("sec-websocket-protocol", p);
        }
        h.insert("x-not-passed-on", HeaderValue::from_static("1"));
    } else {
        *r.status_mut() = StatusCode::NOT_FOUND;
        *r.body_mut() = Full::new(Bytes::from_static(b"pod d/gone is not on this node\n"));
    }
    Ok(r)
}

fn parts() -> http::request::Parts {
    http::Request::get("/").body(()).unwrap().into_parts().0
}

async fn text(r: Response) -> String {
    let b = r.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(b.to_vec()).unwrap()
}

#[tokio::test]
async fn logs_stream_back_from_the_agent_with_the_token() {
    let fake = fake_agent().await;
    let target = "/containerLogs/d/p/c?follow=true&tailLines=2";
    let r = forward(&fake.agent(), "log", target, &mut parts())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[header::CONTENT_TYPE], "text/plain");
    assert_eq!(text(r).await, "one\ntwo\n");
    assert_eq!(
        fake.seen.lock().unwrap().as_slice(),
        [(target.to_string(), Some("Bearer tok".to_string()))]
    );
}

#[tokio::test]
async fn agent_errors_come_back_as_a_status() {
    let fake = fake_agent().await;
    let r = forward(
        &fake.agent(),
        "log",
        "/containerLogs/d/gone/c?",
        &mut parts(),
    )
    .await
    .unwrap_err();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let status: Value = serde_json::from_str(&text(r).await).unwrap();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "NotFound");
    assert_eq!(status["message"], "pod d/gone is not on this node");
}

#[tokio::test]
async fn an_agent_with_another_certificate_is_not_trusted() {
    let fake = fake_agent().await;
    let (other, _) = self_signed();
    let agent = Agent {
        cert: &other,
        ..fake.agent()
    };
    let r = forward(&agent, "log", "/containerLogs/d/p/c?", &mut parts())
        .await
        .unwrap_err();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let status: Value = serde_json::from_str(&text(r).await).unwrap();
    let msg = status["message"].as_str().unwrap();
    assert!(
        msg.starts_with(&format!(
            "connecting to the agent of node n1 at {}: ",
            fake.endpoint
        )),
        "{msg}"
    );
    assert!(fake.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn upgrades_splice_the_client_to_the_agent() {
    let fake = Arc::new(fake_agent().await);
    // The API server's side: a hyper server whose one route is the proxy.
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let f = fake.clone();
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let f = f.clone();
            async move {
                let (mut parts, _) = req.into_parts();
                let r = forward(&f.agent(), "exec", "/exec/d/p/c?command=cat", &mut parts).await;
                Ok::<_, Infallible>(r.unwrap_or_else(|e| e))
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(server_io), service)
            .with_upgrades()
            .await;
    });
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    let req = http::Request::get("/api/v1/namespaces/d/pods/p/exec")
        .header(header::HOST, "api")
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header("sec-websocket-key", "k")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-protocol", "v5.channel.k8s.io")
        .header("x-not-passed-on", "1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let mut r = tx.send_request(req).await.unwrap();
    assert_eq!(r.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(r.headers()["sec-websocket-protocol"], "v5.channel.k8s.io");
    assert_eq!(r.headers()["sec-websocket-accept"], "acc");
    assert_eq!(r.headers()[header::UPGRADE], "websocket");
    assert!(!r.headers().contains_key("x-not-passed-on"));
    let mut up = TokioIo::new(hyper::upgrade::on(&mut r).await.unwrap());
    up.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    up.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping");
    let seen = fake.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [(
            "/exec/d/p/c?command=cat".to_string(),
            Some("Bearer tok".to_string())
        )]
    );
}

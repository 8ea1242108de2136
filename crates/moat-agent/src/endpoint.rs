//! The agent's own HTTPS endpoint (the kubelet's :10250 role) that the API server proxies
//! `pods/log`, `pods/exec`, `pods/attach` and `pods/portforward` to:
//!
//! - `GET /containerLogs/{namespace}/{pod}/{container}?follow=&previous=&timestamps=&tailLines=`
//!   → `text/plain`, streamed until the container ends when following (see
//!   [`crate::containerlogs`]);
//! - `GET /exec/{namespace}/{pod}/{container}?command=..&command=..&stdin=&stdout=&stderr=`
//!   with `Upgrade: websocket` and `Sec-WebSocket-Protocol: v5.channel.k8s.io` (or v4), or
//!   SPDY/3.1 → Kubernetes' channel protocol (see [`crate::exec`]);
//! - `GET /attach/{namespace}/{pod}/{container}?stdin=&stdout=&stderr=`, the same protocols
//!   (see [`crate::attach`]);
//! - `GET /portForward/{namespace}/{pod}` with SPDY/3.1 or SPDY tunnelled in WebSocket, or
//!   WebSocket channels (see [`crate::portforward`]).
//!
//! Authentication: `Authorization: Bearer <token>` (the cluster's admin token for now),
//! checked before anything else. Errors are `text/plain` with their status code; the API
//! server turns them into a Status.
//!
//! HTTP/1.1 is hyper's, over tokio-rustls, on a current-thread tokio runtime owned by the
//! endpoint's thread. This module only routes: the routes are blocking functions from
//! [`crate::http::Request`] to [`Reply`], run on the runtime's blocking pool. A 101 answer's
//! session (the stream loops, which own their socket and interleave reads and writes with
//! short read timeouts) runs on a thread of its own, as a streamed body's writer does, on
//! one end of a socket pair whose other end a task splices to the connection hyper hands
//! over (`hyper::upgrade::on`).

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

pub use crate::http::Ctx;
use crate::http::{BodyWriter, Reply, Request, Session, UpgradeHeaders};

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("generating the agent's serving certificate")]
    Cert(#[source] rcgen::Error),
    #[error("TLS config for the agent endpoint")]
    Tls(#[source] rustls::Error),
    #[error("listening on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the agent endpoint's runtime")]
    Runtime(#[source] std::io::Error),
}

pub struct Endpoint {
    pub addr: SocketAddr,
    /// The self-signed serving certificate (PEM), published on the Node for the proxy.
    pub cert_pem: String,
}

/// Binds and serves on a background thread.
pub fn spawn(listen: SocketAddr, names: Vec<String>, ctx: Ctx) -> Result<Endpoint, EndpointError> {
    let ck = rcgen::generate_simple_self_signed(names).map_err(EndpointError::Cert)?;
    let cert_pem = ck.cert.pem();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(EndpointError::Tls)?
    .with_no_client_auth()
    .with_single_cert(vec![CertificateDer::from(ck.cert.der().to_vec())], key)
    .map_err(EndpointError::Tls)?;
    let listen_err = |source| EndpointError::Listen {
        addr: listen,
        source,
    };
    let l = std::net::TcpListener::bind(listen).map_err(listen_err)?;
    let addr = l.local_addr().map_err(listen_err)?;
    l.set_nonblocking(true).map_err(listen_err)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(EndpointError::Runtime)?;
    let l = {
        let _in_rt = rt.enter();
        tokio::net::TcpListener::from_std(l).map_err(listen_err)?
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let ctx = Arc::new(ctx);
    std::thread::Builder::new()
        .name("agent-endpoint".into())
        .spawn(move || rt.block_on(accept(l, acceptor, ctx)))
        .map_err(listen_err)?;
    Ok(Endpoint { addr, cert_pem })
}

async fn accept(l: tokio::net::TcpListener, tls: tokio_rustls::TlsAcceptor, ctx: Arc<Ctx>) {
    loop {
        let tcp = match l.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of fds, say: the next accept may work once a connection ends.
                tracing::debug!(error = %e, "agent endpoint accept");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (tls, ctx) = (tls.clone(), ctx.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let r = match tls.accept(tcp).await {
                Ok(s) => serve_connection(s, ctx).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = r {
                tracing::debug!(error = %e, "agent endpoint connection");
            }
        });
    }
}

/// Serves HTTP/1.1 requests (upgrades included) on one connection, TLS already done.
pub async fn serve_connection<IO>(io: IO, ctx: Arc<Ctx>) -> Result<(), hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| handle(ctx.clone(), req));
    hyper::server::conn::http1::Builder::new()
        // For hyper's default limit on reading a request head (30 s).
        .timer(hyper_util::rt::TokioTimer::new())
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

async fn handle(
    ctx: Arc<Ctx>,
    mut req: hyper::Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let r = Request::new(req.method(), req.uri(), req.headers());
    if !authorized(&r, &ctx.token) {
        return Ok(text(401, "Unauthorized\n".into()));
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    // Routes read pod records and may connect to a shim's socket: blocking work.
    let reply = tokio::task::spawn_blocking(move || route(&ctx, &r))
        .await
        .unwrap_or_else(|e| Reply::text(500, format!("internal error: {e}\n")));
    Ok(match reply {
        Reply::Text(code, body) => text(code, body),
        Reply::Upgrade { headers, session } => {
            tokio::spawn(async move {
                match on_upgrade.await {
                    Ok(up) => run_session(up, session).await,
                    Err(e) => tracing::debug!(error = %e, "agent endpoint upgrade"),
                }
            });
            switching(headers)
        }
        Reply::Body(write) => streamed(write),
    })
}

fn authorized(req: &Request, token: &str) -> bool {
    req.header("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .is_some_and(|t| !token.is_empty() && constant_eq(t.trim(), token))
}

fn constant_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The route for a request's method and decoded path segments.
fn route(ctx: &Ctx, req: &Request) -> Reply {
    let parts = req.segments();
    match (req.method.as_str(), parts.first().map(String::as_str)) {
        ("GET", Some("containerLogs")) if parts.len() == 4 => {
            crate::containerlogs::serve(ctx, req, &parts[1], &parts[2], &parts[3])
        }
        ("GET" | "POST", Some("exec")) if parts.len() == 4 => {
            crate::exec::serve(ctx, req, &parts[1], &parts[2], &parts[3])
        }
        ("GET" | "POST", Some("attach")) if parts.len() == 4 => {
            crate::attach::serve(ctx, req, &parts[1], &parts[2], &parts[3])
        }
        ("GET" | "POST", Some("portForward")) if parts.len() == 3 => {
            crate::portforward::serve(ctx, req, &parts[1], &parts[2])
        }
        _ => Reply::text(404, "not found\n"),
    }
}

fn text(code: u16, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn switching(headers: UpgradeHeaders) -> Response<Body> {
    let mut r = Response::new(Empty::new().boxed_unsync());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (k, v) in headers {
        match http::HeaderValue::from_str(&v) {
            Ok(v) => {
                r.headers_mut().append(k, v);
            }
            // The values are ours (protocol names, a base64 accept key): not expected.
            Err(_) => return text(400, format!("bad {k} header\n")),
        }
    }
    r
}

/// A `200 text/plain` whose body `write` produces on a thread of its own (a followed log
/// lasts as long as its container), chunk by chunk as it flushes; a write fails once the
/// client is gone, which ends the writer.
fn streamed(write: BodyWriter) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let writer = std::thread::Builder::new()
        .name("agent-body".into())
        .spawn(move || {
            let mut out = ChunkWriter {
                tx,
                buf: Vec::new(),
            };
            let r = write(&mut out).and_then(|()| out.flush());
            if let Err(e) = r {
                // Mid-body there is no status left to send: the body just ends, as the log's
                // end would.
                tracing::debug!(error = %e, "agent endpoint body");
            }
        });
    if let Err(e) = writer {
        return text(500, format!("starting the body's writer: {e}\n"));
    }
    let mut r = Response::new(ChunkBody(rx).boxed_unsync());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    r
}

/// Collects writes into chunks for [`ChunkBody`], sent on flush or when large.
struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

const CHUNK: usize = 16 * 1024;

impl Write for ChunkWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }
}

/// A body made of the chunks a [`ChunkWriter`] sends; it ends when the writer is dropped.
struct ChunkBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChunkBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

/// Runs `session` on a thread of its own (sessions last as long as their client wants)
/// over a socket pair spliced to the upgraded connection.
async fn run_session(up: hyper::upgrade::Upgraded, session: Session) {
    let pair = std::os::unix::net::UnixStream::pair().and_then(|(mine, theirs)| {
        theirs.set_nonblocking(true)?;
        Ok((mine, tokio::net::UnixStream::from_std(theirs)?))
    });
    let (mine, theirs) = match pair {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(error = %e, "agent endpoint session socket");
            return;
        }
    };
    let run = std::thread::Builder::new()
        .name("agent-session".into())
        .spawn(move || session(mine));
    if let Err(e) = run {
        tracing::debug!(error = %e, "agent endpoint session thread");
        return;
    }
    splice(TokioIo::new(up), theirs).await;
}

/// Copies between the client's connection and the session's socket: the client's bytes
/// until it stops sending (then the session reads EOF), the session's until it closes its
/// end, which ends the connection whatever the client still sends.
async fn splice<C>(client: C, session: tokio::net::UnixStream)
where
    C: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut from_client, mut to_client) = tokio::io::split(client);
    let (mut from_session, mut to_session) = session.into_split();
    let inbound = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_client, &mut to_session).await;
        let _ = to_session.shutdown().await;
    });
    let _ = tokio::io::copy(&mut from_session, &mut to_client).await;
    let _ = to_client.shutdown().await;
    inbound.abort();
}

#[cfg(test)]
mod tests;

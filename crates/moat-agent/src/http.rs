//! The request side shared by the endpoint's routes (logs, exec, attach, port-forward): the
//! request as a route sees it (decoded path segments and query), the [`Reply`] a route
//! gives back, the context every route gets and how a route finds its pod. HTTP itself
//! (heads, bodies, upgrades) is hyper's, in the `endpoint` module; routes depend on this
//! module, the endpoint dispatches to them.

use std::io::Write;
use std::path::PathBuf;

use crate::podstate::{PodRecord, find_pod};

#[derive(Clone)]
pub struct Ctx {
    pub token: String,
    pub run_dir: PathBuf,
    pub log_dir: PathBuf,
    /// The shim command (its `--reap` mode parents `exec -t` processes).
    pub shim: Vec<String>,
}

/// A route's end of an upgraded connection: one end of a socket pair whose other end the
/// endpoint splices to the client's (TLS, hyper-upgraded) connection. Blocking, with the
/// read timeouts the stream loops use to interleave reads and writes on one thread; the
/// session ends when the route drops it.
pub type Stream = std::os::unix::net::UnixStream;

/// A request as the routes see it: the path as sent (percent-encoded), the query decoded
/// into pairs in order (a name may repeat), the headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// From hyper's request head. Query components are form-decoded (`+` is a space, as
    /// Go's and kubectl's clients encode it); header values that are not UTF-8 are
    /// converted lossily (the routes only read ASCII ones).
    pub fn new(method: &http::Method, uri: &http::Uri, headers: &http::HeaderMap) -> Request {
        Request {
            method: method.as_str().to_string(),
            path: uri.path().to_string(),
            query: form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
            headers: headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
        }
    }

    /// The path's non-empty segments, each percent-decoded (in a path `+` is itself).
    pub fn segments(&self) -> Vec<String> {
        self.path
            .split('/')
            .filter(|p| !p.is_empty())
            .map(|p| {
                percent_encoding::percent_decode_str(p)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header, comma-separated lists split (it may be repeated).
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect()
    }

    pub fn q(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn flag(&self, name: &str) -> bool {
        matches!(self.q(name), Some("true" | "1"))
    }

    pub fn all(&self, name: &str) -> Vec<String> {
        self.query
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// A `GET` of `target` (path and query) without headers, for tests.
    #[cfg(test)]
    pub fn get(target: &str) -> Request {
        let uri: http::Uri = target.parse().expect("a request target");
        Request::new(&http::Method::GET, &uri, &http::HeaderMap::new())
    }
}

/// The headers of a `101 Switching Protocols` answer.
pub type UpgradeHeaders = Vec<(&'static str, String)>;
/// What runs a session on the upgraded connection.
pub type Session = Box<dyn FnOnce(Stream) + Send>;
/// What writes a streamed response body (blocking; a write fails once the client is gone).
pub type BodyWriter = Box<dyn FnOnce(&mut dyn Write) -> std::io::Result<()> + Send>;

/// A route's answer; the endpoint turns it into hyper's response.
pub enum Reply {
    /// A complete `text/plain` answer (the errors the API server turns into a Status).
    Text(u16, String),
    /// `101 Switching Protocols` with these headers; then `session` owns the connection.
    Upgrade {
        headers: UpgradeHeaders,
        session: Session,
    },
    /// `200` with a `text/plain` body, streamed as `write` produces it.
    Body(BodyWriter),
}

impl Reply {
    pub fn text(code: u16, body: impl Into<String>) -> Reply {
        Reply::Text(code, body.into())
    }

    /// `400 Bad Request` with `body`.
    pub fn bad(body: impl Into<String>) -> Reply {
        Reply::text(400, body)
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Text(code, body) => write!(f, "Text({code}, {body:?})"),
            Reply::Upgrade { headers, .. } => write!(f, "Upgrade({headers:?})"),
            Reply::Body(_) => f.write_str("Body"),
        }
    }
}

/// A pod's record with one container's (restart count, current id, has a previous run).
pub type Located = (PodRecord, u32, Option<String>, bool);

/// The pod's record and the named container's slot, or the answer to send.
pub fn locate(ctx: &Ctx, ns: &str, pod: &str, container: &str) -> Result<Located, Reply> {
    let rec = find_pod(&ctx.run_dir, ns, pod)
        .ok_or_else(|| Reply::text(404, format!("pod {ns}/{pod} is not on this node\n")))?;
    let slot = rec.container(container).ok_or_else(|| {
        Reply::bad(format!(
            "container {container} is not valid for pod {pod}\n"
        ))
    })?;
    Ok((rec.clone(), slot.0, slot.1, slot.2))
}

/// The `Sec-WebSocket-Accept` answer to a client's `Sec-WebSocket-Key`, with the other
/// headers of a WebSocket 101 choosing `protocol` (none: the client offered none).
pub fn websocket_headers(key: &str, protocol: Option<&str>) -> UpgradeHeaders {
    let mut h = vec![
        ("upgrade", "websocket".to_string()),
        ("connection", "Upgrade".to_string()),
        (
            "sec-websocket-accept",
            tungstenite::handshake::derive_accept_key(key.as_bytes()),
        ),
    ];
    if let Some(p) = protocol {
        h.push(("sec-websocket-protocol", p.to_string()));
    }
    h
}

/// The headers of a SPDY/3.1 101 choosing stream protocol `protocol`.
pub fn spdy_headers(protocol: &str) -> UpgradeHeaders {
    vec![
        ("connection", "Upgrade".to_string()),
        ("upgrade", "SPDY/3.1".to_string()),
        ("x-stream-protocol-version", protocol.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_path_decode_with_repeated_and_encoded_params() {
        let r = Request::get(
            "/exec/d%2Dx/we%20b/c+1?command=sh&command=-c&command=echo%20a%2Bb+hi%26bye&stdout=true&empty",
        );
        assert_eq!(r.method, "GET");
        assert_eq!(r.segments(), ["exec", "d-x", "we b", "c+1"]);
        assert_eq!(r.all("command"), ["sh", "-c", "echo a+b hi&bye"]);
        assert!(r.flag("stdout"));
        assert!(!r.flag("stdin"));
        assert_eq!(r.q("empty"), Some(""));
        let bad = Request::get("/a%2Fb%zz");
        assert_eq!(bad.segments(), ["a/b%zz"]);
    }

    #[test]
    fn repeated_and_listed_headers_are_all_seen() {
        let mut h = http::HeaderMap::new();
        h.append(
            "X-Stream-Protocol-Version",
            "v4.channel.k8s.io".parse().unwrap(),
        );
        h.append(
            "x-stream-protocol-version",
            "v3.channel.k8s.io, channel.k8s.io".parse().unwrap(),
        );
        let r = Request::new(&http::Method::POST, &"/x".parse().unwrap(), &h);
        assert_eq!(
            r.header_values("X-Stream-Protocol-Version"),
            ["v4.channel.k8s.io", "v3.channel.k8s.io", "channel.k8s.io"]
        );
        assert_eq!(
            r.header("x-stream-protocol-version"),
            Some("v4.channel.k8s.io")
        );
    }
}

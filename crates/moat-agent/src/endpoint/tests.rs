//! The endpoint's routing, in process: a hyper client against [`serve_connection`] over an
//! in-memory duplex pipe, with pod records in a temporary run dir.

use super::*;

use http_body_util::BodyExt;
use tokio::io::AsyncReadExt;

const TOKEN: &str = "s3cret";

struct Node {
    _dir: tempfile::TempDir,
    ctx: Arc<Ctx>,
}

/// A node with pod `d/p` (uid `u1`, host network) whose container `c` runs as `cid`; its
/// runtime handler is `/bin/echo`, so an exec prints the runtime's command line.
fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let ctx = Ctx {
        token: TOKEN.into(),
        run_dir: dir.path().join("run"),
        log_dir: dir.path().join("log"),
        shim: Vec::new(),
    };
    let rec: crate::podstate::PodRecord = serde_json::from_value(serde_json::json!({
        "uid": "u1", "namespace": "d", "name": "p",
        "handler": {"name": "runc", "binary": "/bin/echo", "root": "/r", "options": []},
        "netns": "/nonexistent", "host_network": true, "ip": null, "start_time": "t",
        "containers": {"c": {"id": "cid", "restart_count": 0, "image_id": "", "errors": 0}},
    }))
    .unwrap();
    crate::podstate::save(&ctx.run_dir, &rec).unwrap();
    let logs = ctx.log_dir.join("d_p_u1").join("c");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(
        logs.join("0.log"),
        "2026-01-01T00:00:01Z stdout F one\n2026-01-01T00:00:02Z stderr F two\n",
    )
    .unwrap();
    Node {
        _dir: dir,
        ctx: Arc::new(ctx),
    }
}

/// Sends one request to a fresh connection of the endpoint.
async fn send(ctx: &Arc<Ctx>, req: hyper::Request<Empty<Bytes>>) -> Response<Incoming> {
    let (client, server) = tokio::io::duplex(64 * 1024);
    tokio::spawn(serve_connection(server, ctx.clone()));
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    tx.send_request(req).await.unwrap()
}

fn get(target: &str, token: Option<&str>) -> http::request::Builder {
    let b = hyper::Request::get(target).header("host", "node");
    match token {
        Some(t) => b.header("authorization", format!("Bearer {t}")),
        None => b,
    }
}

async fn body(r: Response<Incoming>) -> String {
    let b = r.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(b.to_vec()).unwrap()
}

async fn answer(ctx: &Arc<Ctx>, b: http::request::Builder) -> (u16, String) {
    let r = send(ctx, b.body(Empty::new()).unwrap()).await;
    (r.status().as_u16(), body(r).await)
}

#[tokio::test]
async fn a_request_without_the_token_is_refused_before_routing() {
    let n = node();
    for token in [None, Some("wrong"), Some("")] {
        assert_eq!(
            answer(&n.ctx, get("/containerLogs/d/p/c", token)).await,
            (401, "Unauthorized\n".into()),
            "{token:?}"
        );
    }
    assert_eq!(
        answer(&n.ctx, get("/nowhere", None)).await,
        (401, "Unauthorized\n".into())
    );
    let basic = get("/containerLogs/d/p/c", None).header("authorization", "Basic s3cret");
    assert_eq!(answer(&n.ctx, basic).await.0, 401);
}

#[tokio::test]
async fn unknown_paths_and_methods_are_not_found() {
    let n = node();
    for target in ["/nowhere", "/exec/d/p", "/containerLogs/d/p/c/x", "/"] {
        assert_eq!(
            answer(&n.ctx, get(target, Some(TOKEN))).await,
            (404, "not found\n".into()),
            "{target}"
        );
    }
    let delete =
        hyper::Request::delete("/exec/d/p/c").header("authorization", format!("Bearer {TOKEN}"));
    assert_eq!(answer(&n.ctx, delete).await.0, 404);
}

#[tokio::test]
async fn path_segments_are_percent_decoded_before_lookup() {
    let n = node();
    assert_eq!(
        answer(&n.ctx, get("/exec/d%2Dx/p%20q/c?command=ls", Some(TOKEN))).await,
        (404, "pod d-x/p q is not on this node\n".into())
    );
    // `%70` is `p`: the same pod as `/containerLogs/d/p/c`.
    assert_eq!(
        answer(&n.ctx, get("/containerLogs/d/%70/c", Some(TOKEN))).await,
        (200, "one\ntwo\n".into())
    );
    assert_eq!(
        answer(&n.ctx, get("/containerLogs/d/p/nope", Some(TOKEN))).await,
        (400, "container nope is not valid for pod p\n".into())
    );
}

#[tokio::test]
async fn logs_answer_with_the_query_applied() {
    let n = node();
    let r = send(
        &n.ctx,
        get(
            "/containerLogs/d/p/c?timestamps=true&tailLines=1",
            Some(TOKEN),
        )
        .body(Empty::new())
        .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert_eq!(body(r).await, "2026-01-01T00:00:02Z two\n");
    assert_eq!(
        answer(
            &n.ctx,
            get("/containerLogs/d/p/c?previous=true", Some(TOKEN))
        )
        .await,
        (
            400,
            "previous terminated container \"c\" in pod \"p\" not found\n".into()
        )
    );
}

#[tokio::test]
async fn upgrades_without_a_protocol_we_speak_are_refused() {
    let n = node();
    let ws = get("/exec/d/p/c?command=ls", Some(TOKEN))
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-protocol", "channel.k8s.io");
    assert_eq!(
        answer(&n.ctx, ws).await,
        (
            400,
            "exec over WebSocket needs v5.channel.k8s.io or v4.channel.k8s.io\n".into()
        )
    );
    let spdy = get("/portForward/d/p", Some(TOKEN))
        .header("upgrade", "SPDY/3.1")
        .header("connection", "Upgrade")
        .header("x-stream-protocol-version", "v4.channel.k8s.io");
    assert_eq!(
        answer(&n.ctx, spdy).await,
        (
            400,
            "port forwarding over SPDY needs X-Stream-Protocol-Version portforward.k8s.io\n".into()
        )
    );
    let none = get("/exec/d/p/c?command=ls", Some(TOKEN));
    assert_eq!(answer(&n.ctx, none).await.0, 400);
}

#[tokio::test]
async fn spdy_port_forward_answers_the_protocol_version_it_speaks() {
    let n = node();
    let spdy = get("/portForward/d/p", Some(TOKEN))
        .header("upgrade", "SPDY/3.1")
        .header("connection", "Upgrade")
        .header("x-stream-protocol-version", "portforward.k8s.io")
        .body(Empty::new())
        .unwrap();
    let r = send(&n.ctx, spdy).await;
    assert_eq!(r.status(), 101);
    assert_eq!(r.headers()["upgrade"], "SPDY/3.1");
    assert_eq!(
        r.headers()["x-stream-protocol-version"],
        "portforward.k8s.io"
    );
}

/// The payloads of the binary messages a server sends (unmasked frames), up to its close.
fn binary_messages(mut b: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while b.len() >= 2 {
        let opcode = b[0] & 0x0f;
        let (len, at) = match b[1] & 0x7f {
            126 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 => panic!("no message this long in these tests"),
            n => (usize::from(n), 2),
        };
        if opcode == 8 {
            break;
        }
        assert_eq!(opcode, 2, "binary messages only");
        out.push(b[at..at + len].to_vec());
        b = &b[at + len..];
    }
    out
}

#[tokio::test]
async fn exec_over_websocket_runs_the_decoded_command_and_reports_its_status() {
    let n = node();
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let req = get(
        "/exec/d/p/c?command=sh&command=-c&command=echo%20a%2Bb+c&stdout=true",
        Some(TOKEN),
    )
    .header("upgrade", "websocket")
    .header("connection", "Upgrade")
    .header("sec-websocket-key", key)
    .header("sec-websocket-version", "13")
    .header(
        "sec-websocket-protocol",
        "v4.channel.k8s.io, v5.channel.k8s.io",
    )
    .body(Empty::new())
    .unwrap();
    let mut r = send(&n.ctx, req).await;
    assert_eq!(r.status(), 101);
    assert_eq!(r.headers()["sec-websocket-protocol"], "v5.channel.k8s.io");
    assert_eq!(
        r.headers()["sec-websocket-accept"],
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
        "RFC 6455's example answer"
    );
    let mut up = TokioIo::new(hyper::upgrade::on(&mut r).await.unwrap());
    // The server closes once it has sent the status and waited for our close answer,
    // which never comes: read to the end.
    let mut got = Vec::new();
    up.read_to_end(&mut got).await.unwrap();
    let msgs = binary_messages(&got);
    let out: Vec<u8> = msgs
        .iter()
        .filter(|m| m[0] == 1)
        .flat_map(|m| m[1..].to_vec())
        .collect();
    // `/bin/echo` stands in for the runtime: its arguments are what the runtime got.
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "--root /r exec cid sh -c echo a+b c\n"
    );
    let status = msgs.iter().find(|m| m[0] == 3).expect("a status message");
    let status: serde_json::Value = serde_json::from_slice(&status[1..]).unwrap();
    assert_eq!(status["status"], "Success");
}

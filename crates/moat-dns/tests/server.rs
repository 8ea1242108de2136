//! The server with a fake upstream: what it forwards (the query bytes as received, over the
//! client's transport), what it relays back, SERVFAIL when the upstream fails, and the
//! same port for UDP and TCP.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use moat_dns::{ForwardError, Transport, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Queries as the fake upstream saw them.
type Seen = Arc<Mutex<Vec<(Vec<u8>, Transport)>>>;

/// Records what it is asked; answers with the query turned into an empty response (QR and
/// RA set), or fails when `fail`.
#[derive(Clone, Default)]
struct Fake {
    seen: Seen,
    fail: bool,
}

impl Upstream for Fake {
    async fn forward(&self, query: Vec<u8>, transport: Transport) -> Result<Vec<u8>, ForwardError> {
        self.seen.lock().unwrap().push((query.clone(), transport));
        if self.fail {
            return Err(ForwardError::Timeout);
        }
        let mut resp = query;
        resp[2] |= 0x80;
        resp[3] |= 0x80;
        Ok(resp)
    }
}

fn query(name: &str) -> Vec<u8> {
    // id 0x0102, RD, one question, type A class IN.
    let mut q = vec![0x01, 0x02, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

async fn udp_ask(addr: std::net::SocketAddr, q: &[u8]) -> Vec<u8> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(q, addr).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), sock.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    buf.truncate(n);
    buf
}

async fn tcp_ask(addr: std::net::SocketAddr, q: &[u8]) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(q);
    s.write_all(&framed).await.unwrap();
    let n = s.read_u16().await.unwrap();
    let mut buf = vec![0u8; n as usize];
    s.read_exact(&mut buf).await.unwrap();
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_zone_query_is_forwarded_verbatim_and_relayed() {
    let fake = Fake::default();
    let (server, _) = start(fixture("cluster.local"), fake.clone()).await;
    let q = query("Example.COM");
    let resp = udp_ask(server.local_addr(), &q).await;
    assert_eq!(resp[..2], q[..2]);
    assert_eq!(resp[2] & 0x80, 0x80);
    assert_eq!(
        resp[12..],
        q[12..],
        "the upstream's bytes come back as they are"
    );
    let tcp = tcp_ask(server.local_addr(), &q).await;
    assert_eq!(tcp[12..], q[12..]);
    let seen = fake.seen.lock().unwrap().clone();
    assert_eq!(seen, vec![(q.clone(), Transport::Udp), (q, Transport::Tcp)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_zone_queries_never_reach_the_upstream() {
    let fake = Fake::default();
    let (server, _) = start(fixture("cluster.local"), fake.clone()).await;
    for name in [
        "web.prod.svc.cluster.local",
        "nope.prod.svc.cluster.local",
        "cluster.local",
    ] {
        let resp = udp_ask(server.local_addr(), &query(name)).await;
        assert_eq!(resp[2] & 0x04, 0x04, "authoritative: {name}");
    }
    assert!(fake.seen.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_upstream_gives_servfail() {
    let fake = Fake {
        fail: true,
        ..Fake::default()
    };
    let (server, _) = start(fixture("cluster.local"), fake).await;
    let resp = udp_ask(server.local_addr(), &query("example.com")).await;
    assert_eq!(resp[..2], [0x01, 0x02]);
    assert_eq!(resp[3] & 0x0f, 2, "SERVFAIL");
    let resp = tcp_ask(server.local_addr(), &query("example.com")).await;
    assert_eq!(resp[3] & 0x0f, 2, "SERVFAIL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connection_carries_several_queries() {
    let (server, _) = start(fixture("cluster.local"), Fake::default()).await;
    let mut s = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    for _ in 0..3 {
        let q = query("web.prod.svc.cluster.local");
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        s.write_all(&framed).await.unwrap();
        let n = s.read_u16().await.unwrap();
        let mut buf = vec![0u8; n as usize];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf[3] & 0x0f, 0);
        assert_eq!(buf[6..8], [0, 1], "one answer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_server_closes_its_port() {
    let (server, _) = start(fixture("cluster.local"), Fake::default()).await;
    let addr = server.local_addr();
    drop(server);
    // Aborted tasks release their sockets once the runtime polls them away.
    let mut closed = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(closed);
}

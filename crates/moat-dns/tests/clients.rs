//! The server asked by real clients over loopback: `dig` (BIND's resolver library) and
//! busybox `nslookup`. Out-of-zone names go to a second server standing in for the node's
//! resolver, so forwarding is tested over real sockets both ways.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use moat_dns::{Change, DnsServer, Forwarder, Zone};

/// An "upstream" resolver: our own server for the domain `upstream.test`, forwarding nothing.
async fn upstream() -> (DnsServer, SocketAddr) {
    let zone = Zone::from_snapshot(
        "upstream.test",
        &[service("ext", "api", "192.0.2.7", &[])],
        &[],
        &[namespace("ext")],
    )
    .unwrap();
    let (server, _) = start(zone, Forwarder::new(Vec::new(), Duration::from_secs(1))).await;
    let addr = server.local_addr();
    (server, addr)
}

/// The server under test for `cluster.local`, forwarding to `upstream()`.
async fn cluster() -> (DnsServer, DnsServer, SocketAddr) {
    let (up, up_addr) = upstream().await;
    let fwd = Forwarder::new(vec![up_addr], Duration::from_secs(2));
    let (server, _) = start(fixture("cluster.local"), fwd).await;
    let addr = server.local_addr();
    (server, up, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_cluster_ip_service() {
    let (_s, _u, addr) = cluster().await;
    let d = dig(addr, &["web.prod.svc.cluster.local", "A"]).await;
    assert_eq!(d.status, "NOERROR");
    assert!(d.flags.contains(&"aa".to_owned()), "{}", d.raw);
    assert_eq!(d.data(), ["10.96.0.10"]);
    assert!(
        d.answers[0].split_whitespace().nth(1) == Some("5"),
        "TTL 5: {}",
        d.raw
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_headless_service_lists_ready_endpoints() {
    let (_s, _u, addr) = cluster().await;
    let d = dig(addr, &["db.prod.svc.cluster.local", "A"]).await;
    assert_eq!(d.data(), ["10.244.2.1", "10.244.2.2"]);
    let d = dig(addr, &["db-0.db.prod.svc.cluster.local", "A"]).await;
    assert_eq!(d.data(), ["10.244.2.1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_srv_for_named_port() {
    let (_s, _u, addr) = cluster().await;
    let d = dig(addr, &["_http._tcp.web.prod.svc.cluster.local", "SRV"]).await;
    assert_eq!(d.data(), ["0 100 80 web.prod.svc.cluster.local."]);
    let d = dig(addr, &["_pg._tcp.db.prod.svc.cluster.local", "SRV"]).await;
    assert_eq!(
        d.data(),
        [
            "0 50 5432 10-244-2-2.db.prod.svc.cluster.local.",
            "0 50 5432 db-0.db.prod.svc.cluster.local."
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_ptr_for_cluster_ip_and_endpoint() {
    let (_s, _u, addr) = cluster().await;
    let d = dig(addr, &["-x", "10.96.0.10"]).await;
    assert_eq!(d.data(), ["web.prod.svc.cluster.local."]);
    let d = dig(addr, &["-x", "10.244.2.1"]).await;
    assert_eq!(d.data(), ["db-0.db.prod.svc.cluster.local."]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_nxdomain_and_nodata_differ() {
    let (_s, _u, addr) = cluster().await;
    let d = dig(addr, &["nope.prod.svc.cluster.local", "A"]).await;
    assert_eq!(d.status, "NXDOMAIN");
    assert_eq!(d.authority, 1, "SOA in authority: {}", d.raw);
    let d = dig(addr, &["web.prod.svc.cluster.local", "AAAA"]).await;
    assert_eq!(d.status, "NOERROR");
    assert!(d.answers.is_empty(), "{}", d.raw);
    assert_eq!(d.authority, 1, "SOA in authority: {}", d.raw);
    let d = dig(addr, &["quiet.svc.cluster.local", "A"]).await;
    assert_eq!(d.status, "NOERROR");
    let d = dig(addr, &["nope.svc.cluster.local", "A"]).await;
    assert_eq!(d.status, "NXDOMAIN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_truncated_over_udp_then_complete_over_tcp() {
    let (_s, _u, addr) = cluster().await;
    // Without EDNS and without retrying, 60 A records do not fit 512 bytes.
    let d = dig(
        addr,
        &["+noedns", "+ignore", "big.prod.svc.cluster.local", "A"],
    )
    .await;
    assert!(d.flags.contains(&"tc".to_owned()), "{}", d.raw);
    assert!(d.answers.is_empty());
    // dig's default retries over TCP on TC.
    let d = dig(addr, &["+noedns", "big.prod.svc.cluster.local", "A"]).await;
    assert_eq!(d.answers.len(), 60, "{}", d.raw);
    let d = dig(addr, &["+tcp", "web.prod.svc.cluster.local", "A"]).await;
    assert_eq!(d.data(), ["10.96.0.10"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_out_of_zone_names_are_forwarded_over_udp_and_tcp() {
    let (_s, _u, addr) = cluster().await;
    let d = dig(addr, &["api.ext.svc.upstream.test", "A"]).await;
    assert_eq!(d.status, "NOERROR");
    assert_eq!(d.data(), ["192.0.2.7"]);
    let d = dig(addr, &["+tcp", "api.ext.svc.upstream.test", "A"]).await;
    assert_eq!(d.data(), ["192.0.2.7"]);
    // The upstream's NXDOMAIN is relayed as it is.
    let d = dig(addr, &["nope.ext.svc.upstream.test", "A"]).await;
    assert_eq!(d.status, "NXDOMAIN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_external_name_is_followed_through_the_upstream() {
    let (up, up_addr) = upstream().await;
    let mut zone = fixture("cluster.local");
    zone.apply(Change::ServiceApplied(external(
        "prod",
        "partner",
        "api.ext.svc.upstream.test",
    )));
    let fwd = Forwarder::new(vec![up_addr], Duration::from_secs(2));
    let (server, _) = start(zone, fwd).await;
    for transport in ["+notcp", "+tcp"] {
        let d = dig(
            server.local_addr(),
            &[transport, "partner.prod.svc.cluster.local", "A"],
        )
        .await;
        assert_eq!(d.status, "NOERROR");
        assert_eq!(d.types(), ["CNAME", "A"], "{}", d.raw);
        assert_eq!(d.data(), ["192.0.2.7", "api.ext.svc.upstream.test."]);
    }
    drop(up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_servfail_without_usable_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "# systemd-resolved stub and a link-local cache: both skipped\n\
         nameserver 127.0.0.53\nnameserver 169.254.20.10\nnameserver ::1\nsearch example.org\n",
    )
    .unwrap();
    let fwd = Forwarder::from_resolv_conf(&resolv, &[]).unwrap();
    assert!(fwd.upstreams().is_empty());
    let (server, _) = start(fixture("cluster.local"), fwd).await;
    let d = dig(server.local_addr(), &["example.com", "A"]).await;
    assert_eq!(d.status, "SERVFAIL");
    // In-zone names still answer.
    let d = dig(server.local_addr(), &["web.prod.svc.cluster.local", "A"]).await;
    assert_eq!(d.data(), ["10.96.0.10"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_servfail_before_sync_then_live_updates() {
    let (up, up_addr) = upstream().await;
    let zone = Zone::new("cluster.local").unwrap();
    let (server, shared) = start(zone, Forwarder::new(vec![up_addr], Duration::from_secs(2))).await;
    let addr = server.local_addr();
    let d = dig(addr, &["web.prod.svc.cluster.local", "A"]).await;
    assert_eq!(d.status, "SERVFAIL");
    // Out-of-zone names are forwarded even before sync.
    let d = dig(addr, &["api.ext.svc.upstream.test", "A"]).await;
    assert_eq!(d.data(), ["192.0.2.7"]);
    {
        let mut z = shared.write().unwrap();
        z.apply(Change::NamespaceApplied(namespace("prod")));
        z.apply(Change::ServiceApplied(service(
            "prod",
            "web",
            "10.96.0.44",
            &[],
        )));
        z.mark_synced();
    }
    let d = dig(addr, &["web.prod.svc.cluster.local", "A"]).await;
    assert_eq!(d.data(), ["10.96.0.44"]);
    shared
        .write()
        .unwrap()
        .apply(Change::ServiceDeleted(service("prod", "web", "", &[])));
    let d = dig(addr, &["web.prod.svc.cluster.local", "A"]).await;
    assert_eq!(d.status, "NXDOMAIN");
    drop(up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_survives_garbage() {
    let (_s, _u, addr) = cluster().await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // Deterministic junk (an LCG), every length from 0 to 600, plus a few classics.
    let mut x: u32 = 0x1234_5678;
    for len in 0..600usize {
        let junk: Vec<u8> = (0..len)
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (x >> 24) as u8
            })
            .collect();
        sock.send_to(&junk, addr).await.unwrap();
    }
    sock.send_to(&[0xff; 12], addr).await.unwrap();
    sock.send_to(
        &[0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1],
        addr,
    )
    .await
    .unwrap();
    // TCP garbage too: a frame shorter than its length prefix, then a close.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut tcp, &[0x01, 0x00, 0xde, 0xad])
        .await
        .unwrap();
    drop(tcp);
    let d = dig(addr, &["web.prod.svc.cluster.local", "A"]).await;
    assert_eq!(d.data(), ["10.96.0.10"]);
    let d = dig(addr, &["+tcp", "web.prod.svc.cluster.local", "A"]).await;
    assert_eq!(d.data(), ["10.96.0.10"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busybox_nslookup_resolves_cluster_names() {
    let (_s, _u, addr) = cluster().await;
    let (ok, out) = nslookup(addr, None, "web.prod.svc.cluster.local").await;
    assert!(ok, "{out}");
    assert!(out.contains("10.96.0.10"), "{out}");
    let (ok, out) = nslookup(addr, None, "db.prod.svc.cluster.local").await;
    assert!(ok, "{out}");
    assert!(
        out.contains("10.244.2.1") && out.contains("10.244.2.2"),
        "{out}"
    );
    assert!(
        !out.contains("10.244.2.3"),
        "not-ready endpoint listed: {out}"
    );
    let (ok, out) = nslookup(addr, Some("srv"), "_pg._tcp.db.prod.svc.cluster.local").await;
    assert!(ok, "{out}");
    assert!(out.contains("db-0.db.prod.svc.cluster.local"), "{out}");
    // An address argument makes busybox ask the PTR question.
    let (ok, out) = nslookup(addr, None, "10.96.0.10").await;
    assert!(ok, "{out}");
    assert!(out.contains("web.prod.svc.cluster.local"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busybox_nslookup_tells_nxdomain_from_nodata() {
    let (_s, _u, addr) = cluster().await;
    let (ok, out) = nslookup(addr, Some("a"), "nope.prod.svc.cluster.local").await;
    assert!(!ok, "{out}");
    assert!(out.contains("NXDOMAIN"), "{out}");
    // NODATA: busybox succeeds and prints no address (only the server's own lines).
    let (ok, out) = nslookup(addr, Some("aaaa"), "web.prod.svc.cluster.local").await;
    assert!(ok, "{out}");
    assert!(!out.contains("NXDOMAIN"), "{out}");
    assert_eq!(out.matches("Address").count(), 1, "{out}");
}

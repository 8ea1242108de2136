//! Shared by the integration tests: objects from short descriptions, the fixture cluster, a
//! server on an ephemeral loopback port, and runners for `dig` and busybox `nslookup`.
#![allow(dead_code)] // each test crate uses a different part

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use moat_dns::{DnsServer, ServerConfig, SharedZone, Upstream, Zone};
use serde_json::json;

pub fn namespace(name: &str) -> Namespace {
    serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
}

fn ports_json(ports: &[(&str, &str, i32)]) -> serde_json::Value {
    ports
        .iter()
        .map(|(n, proto, port)| json!({"name": n, "protocol": proto, "port": port}))
        .collect()
}

pub fn service(ns: &str, name: &str, ip: &str, ports: &[(&str, &str, i32)]) -> Service {
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name},
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": ports_json(ports)}
    }))
    .unwrap()
}

pub fn headless(ns: &str, name: &str, ports: &[(&str, &str, i32)]) -> Service {
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name},
        "spec": {"clusterIP": "None", "ports": ports_json(ports)}
    }))
    .unwrap()
}

pub fn external(ns: &str, name: &str, target: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name},
        "spec": {"type": "ExternalName", "externalName": target}
    }))
    .unwrap()
}

/// Endpoints are (address, hostname, ready).
pub fn slice(
    ns: &str,
    name: &str,
    service: &str,
    eps: &[(&str, Option<&str>, bool)],
    ports: &[(&str, &str, i32)],
) -> EndpointSlice {
    let endpoints: Vec<serde_json::Value> = eps
        .iter()
        .map(|(ip, host, ready)| {
            let mut e = json!({"addresses": [ip], "conditions": {"ready": ready}});
            if let Some(h) = host {
                e["hostname"] = json!(h);
            }
            e
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports_json(ports)
    }))
    .unwrap()
}

/// `prod/web` 10.96.0.10 (http/TCP/80) with endpoint 10.244.1.5; `prod/db` headless
/// (pg/TCP/5432) with `db-0` 10.244.2.1, 10.244.2.2 and a not-ready 10.244.2.3; `prod/big`
/// headless with 60 endpoints 10.245.0.1–60; namespaces `prod` and `quiet`.
pub fn fixture(domain: &str) -> Zone {
    let big: Vec<String> = (1..=60).map(|i| format!("10.245.0.{i}")).collect();
    let big_eps: Vec<(&str, Option<&str>, bool)> =
        big.iter().map(|ip| (ip.as_str(), None, true)).collect();
    Zone::from_snapshot(
        domain,
        &[
            service("prod", "web", "10.96.0.10", &[("http", "TCP", 80)]),
            headless("prod", "db", &[("pg", "TCP", 5432)]),
            headless("prod", "big", &[]),
        ],
        &[
            slice(
                "prod",
                "web-1",
                "web",
                &[("10.244.1.5", None, true)],
                &[("http", "TCP", 8080)],
            ),
            slice(
                "prod",
                "db-1",
                "db",
                &[
                    ("10.244.2.1", Some("db-0"), true),
                    ("10.244.2.2", None, true),
                    ("10.244.2.3", Some("db-2"), false),
                ],
                &[("pg", "TCP", 5432)],
            ),
            slice("prod", "big-1", "big", &big_eps, &[]),
        ],
        &[namespace("prod"), namespace("quiet")],
    )
    .unwrap()
}

/// A server for `zone` on 127.0.0.1, ephemeral port.
pub async fn start<U: Upstream>(zone: Zone, upstream: U) -> (DnsServer, SharedZone) {
    let shared = Arc::new(RwLock::new(zone));
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = DnsServer::bind(addr, shared.clone(), upstream, ServerConfig::default())
        .await
        .unwrap();
    (server, shared)
}

/// What `dig` printed, read back: status, flags, answer lines, authority count.
#[derive(Debug)]
pub struct Dig {
    pub status: String,
    pub flags: Vec<String>,
    pub answers: Vec<String>,
    pub authority: usize,
    pub raw: String,
}

impl Dig {
    /// The data column of each answer line (`10.96.0.10`, `0 100 80 web...`).
    pub fn data(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .answers
            .iter()
            .map(|l| l.split_whitespace().skip(4).collect::<Vec<_>>().join(" "))
            .collect();
        v.sort();
        v
    }

    pub fn types(&self) -> Vec<String> {
        self.answers
            .iter()
            .filter_map(|l| l.split_whitespace().nth(3).map(str::to_owned))
            .collect()
    }
}

/// Runs `dig @127.0.0.1 -p PORT args...` (one try, 2 s) and parses its output.
pub async fn dig(server: SocketAddr, args: &[&str]) -> Dig {
    let out = tokio::process::Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args([
            "-p",
            &server.port().to_string(),
            "+time=2",
            "+tries=1",
            "+noall",
            "+comments",
            "+answer",
        ])
        .args(args)
        .output()
        .await
        .expect("dig must be installed (Debian package dnsutils; scripts/deps.sh installs it)");
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut status = String::new();
    let mut flags = Vec::new();
    let mut authority = 0;
    let mut answers = Vec::new();
    for line in raw.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            status = rest.split(',').next().unwrap_or_default().to_owned();
        } else if let Some(rest) = line.strip_prefix(";; flags: ") {
            let (f, counts) = rest.split_once(';').unwrap();
            flags = f.split_whitespace().map(str::to_owned).collect();
            authority = counts
                .split("AUTHORITY: ")
                .nth(1)
                .and_then(|s| s.split(',').next())
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
        } else if !line.starts_with(';') && !line.trim().is_empty() {
            answers.push(line.to_owned());
        }
    }
    assert!(
        !status.is_empty(),
        "dig got no answer: {raw}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Dig {
        status,
        flags,
        answers,
        authority,
        raw,
    }
}

/// Runs busybox's `nslookup [-type=T] NAME 127.0.0.1:PORT`: (exit success, stdout).
pub async fn nslookup(server: SocketAddr, qtype: Option<&str>, name: &str) -> (bool, String) {
    let mut cmd = tokio::process::Command::new("busybox");
    cmd.arg("nslookup");
    if let Some(t) = qtype {
        cmd.arg(format!("-type={t}"));
    }
    let out = cmd
        .arg(name)
        .arg(server.to_string())
        .output()
        .await
        .expect("busybox must be installed (Debian package busybox-static)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

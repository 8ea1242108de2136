//! Benchmark server for `bench/dns.sh`: a zone of N ClusterIP services generated in
//! process (`svc-<i>.bench.svc.cluster.local` → 10.96.<i/250>.<i%250+1>), served on
//! 127.0.0.1:PORT. Writes the same names as a hosts file (for dnsmasq) and a dnsperf query
//! file to OUTDIR, prints `ready`, and serves until killed.
//!
//! Usage: `dns-bench-server PORT N OUTDIR`
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark tool: fail loudly

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use moat_dns::{DnsServer, Forwarder, ServerConfig, Zone};

fn service(i: usize) -> (Service, String, String) {
    let name = format!("svc-{i}");
    let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
    let svc = Service {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some("bench".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.clone()),
            cluster_ips: Some(vec![ip.clone()]),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    (svc, format!("{name}.bench.svc.cluster.local"), ip)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, port, n, outdir] = args.as_slice() else {
        panic!("usage: dns-bench-server PORT N OUTDIR");
    };
    let port: u16 = port.parse().unwrap();
    let n: usize = n.parse().unwrap();
    let outdir = std::path::Path::new(outdir);

    let mut services = Vec::with_capacity(n);
    let (mut hosts, mut queries) = (String::new(), String::new());
    for i in 0..n {
        let (svc, name, ip) = service(i);
        writeln!(hosts, "{ip} {name}").unwrap();
        writeln!(queries, "{name} A").unwrap();
        services.push(svc);
    }
    std::fs::write(outdir.join("hosts"), hosts).unwrap();
    std::fs::write(outdir.join("queries"), queries).unwrap();
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some("bench".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let zone = Zone::from_snapshot(Zone::DEFAULT_DOMAIN, &services, &[], &[ns]).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let shared = Arc::new(RwLock::new(zone));
        let none = Forwarder::new(Vec::new(), Duration::from_secs(1));
        let _server = DnsServer::bind(addr, shared, none, ServerConfig::default())
            .await
            .unwrap();
        println!("ready");
        std::future::pending::<()>().await;
    });
}

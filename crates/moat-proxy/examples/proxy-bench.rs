//! Service proxy benchmark (run by `bench/proxy.sh`, needs root): sync times at 10,000
//! Services / 50,000 endpoints with the real `nft -f`, and TCP connect latency through a
//! ClusterIP with 10 vs 10,000 Services installed, and vs the pod IP directly. Everything
//! happens in network namespaces it creates (node, pod, client) and removes on exit.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a failed step aborts it

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use moat_nft::Nft;
use moat_proxy::{NodeFacts, Proxy, Snapshot, compile, plan, script};
use serde_json::json;

const SERVICES: usize = 10_000;
const EPS_PER_SERVICE: usize = 5;
const CONNECTS: usize = 150;
const ROUNDS: usize = 10;

fn run(args: &[&str]) {
    let st = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect("spawn");
    assert!(st.success(), "{args:?}");
}

struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in self.0.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn setns(ns: &str) {
    let f = File::open(format!("/run/netns/{ns}")).expect("netns");
    // SAFETY: setns on a valid namespace descriptor; it affects only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns");
}

fn svc_ip(i: usize) -> String {
    format!("10.43.{}.{}", i / 250, 1 + i % 250)
}

fn service(i: usize) -> Service {
    serde_json::from_value(json!({
        "metadata": {"namespace": "bench", "name": format!("s{i}")},
        "spec": {"clusterIP": svc_ip(i), "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}))
    .expect("service")
}

/// Service 0 is backed by the real pod; the others by addresses that exist only in rules.
fn slice(i: usize, eps: usize) -> EndpointSlice {
    let addrs: Vec<String> = if i == 0 {
        vec!["10.42.0.2".into()]
    } else {
        (0..eps)
            .map(|e| {
                let n = i * EPS_PER_SERVICE + e;
                format!("10.44.{}.{}", n / 250, 1 + n % 250)
            })
            .collect()
    };
    let endpoints: Vec<_> = addrs
        .iter()
        .map(|a| json!({"addresses": [a], "nodeName": "n1", "conditions": {"ready": true}}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"namespace": "bench", "name": format!("s{i}"),
                     "labels": {"kubernetes.io/service-name": format!("s{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints}))
    .expect("slice")
}

fn world(n: usize) -> (Vec<Service>, Vec<EndpointSlice>) {
    (
        (0..n).map(service).collect(),
        (0..n).map(|i| slice(i, EPS_PER_SERVICE)).collect(),
    )
}

/// Connect latencies (µs) from `client` to each address, interleaved so drift hits all of
/// them alike.
fn connect_latency(client: &str, addrs: &[SocketAddr]) -> Vec<Vec<f64>> {
    let client = client.to_string();
    let addrs = addrs.to_vec();
    std::thread::spawn(move || {
        setns(&client);
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); addrs.len()];
        for _ in 0..CONNECTS {
            for (i, a) in addrs.iter().enumerate() {
                let t = Instant::now();
                let s = TcpStream::connect_timeout(a, Duration::from_secs(2)).expect("connect");
                samples[i].push(t.elapsed().as_secs_f64() * 1e6);
                drop(s);
            }
        }
        samples
    })
    .join()
    .expect("client thread")
}

/// A node namespace with a pod (backend on 10.42.0.2:8080) and a client (10.42.1.2)
/// on routed veths. Returns (node, client).
fn make_node(tag: &str, guard: &mut Namespaces) -> (String, String) {
    let (node, pod, client) = (
        format!("{tag}-node"),
        format!("{tag}-pod"),
        format!("{tag}-cl"),
    );
    for ns in [&node, &pod, &client] {
        run(&["ip", "netns", "add", ns]);
        guard.0.push(ns.clone());
        run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    for (peer, nodeside, nodeip, ip, gw) in [
        (&pod, "vpod", "10.42.0.1/24", "10.42.0.2/24", "10.42.0.1"),
        (&client, "vcl", "10.42.1.1/24", "10.42.1.2/24", "10.42.1.1"),
    ] {
        run(&[
            "ip", "-n", &node, "link", "add", nodeside, "type", "veth", "peer", "name", "eth0",
            "netns", peer,
        ]);
        run(&["ip", "-n", &node, "addr", "add", nodeip, "dev", nodeside]);
        run(&["ip", "-n", &node, "link", "set", nodeside, "up"]);
        run(&["ip", "-n", peer, "addr", "add", ip, "dev", "eth0"]);
        run(&["ip", "-n", peer, "link", "set", "eth0", "up"]);
        run(&["ip", "-n", peer, "route", "add", "default", "via", gw]);
    }
    run(&[
        "ip",
        "netns",
        "exec",
        &node,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    // The backend: accepts and closes (the handshake is what we time).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        setns(&pod);
        let l = TcpListener::bind("0.0.0.0:8080").expect("bind");
        tx.send(()).expect("ready");
        for s in l.incoming() {
            drop(s);
        }
    });
    rx.recv().expect("server ready");
    (node, client)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let tag = format!("mpb{}", std::process::id());
    let mut guard = Namespaces(Vec::new());
    // Two identical nodes: one gets 10 Services, the other 10,000, so connect latency is
    // measured on both in interleaved rounds (same machine load for both).
    let (small_node, small_client) = make_node(&format!("{tag}s"), &mut guard);
    let (node, client) = make_node(&format!("{tag}b"), &mut guard);

    let facts = NodeFacts {
        name: "n1".into(),
        ips: vec!["10.42.1.1".parse().expect("ip")],
        cluster_cidr: moat_api::cidr::parse_network("10.42.0.0/16").expect("cidr"),
    };
    let nft = Nft {
        netns: Some(node.clone()),
    };
    let vip: SocketAddr = format!("{}:80", svc_ip(0)).parse().expect("vip");
    let direct: SocketAddr = "10.42.0.2:8080".parse().expect("pod");

    // 10 services.
    let (s10, e10) = world(10);
    Proxy::new(Nft {
        netns: Some(small_node.clone()),
    })
    .sync(&Snapshot {
        services: &s10,
        slices: &e10,
        node: &facts,
    })
    .expect("sync 10");

    // 10,000 services, cold: a fresh proxy does the full rewrite.
    let (mut svcs, mut slices) = world(SERVICES);
    let snap = Snapshot {
        services: &svcs,
        slices: &slices,
        node: &facts,
    };
    let t = Instant::now();
    let model = plan(&snap);
    let rules = compile(&model, &facts);
    let text = script::full(script::Base::Unknown, &rules);
    let render = t.elapsed();
    let (chains, nrules, elems) = rules.counts();
    let endpoints: usize = model.ports.values().map(|p| p.endpoints.len()).sum();
    let mut p = Proxy::new(nft.clone());
    let t = Instant::now();
    let rep = p.sync(&snap).expect("full sync");
    let full = t.elapsed();
    assert!(rep.full);

    // One endpoint removed from one service.
    slices[SERVICES / 2] = slice(SERVICES / 2, EPS_PER_SERVICE - 1);
    let t = Instant::now();
    let rep_ep = p
        .sync(&Snapshot {
            services: &svcs,
            slices: &slices,
            node: &facts,
        })
        .expect("endpoint diff");
    let one_ep = t.elapsed();

    // One service added among 10,000.
    svcs.push(service(SERVICES));
    slices.push(slice(SERVICES, EPS_PER_SERVICE));
    let t = Instant::now();
    let rep_svc = p
        .sync(&Snapshot {
            services: &svcs,
            slices: &slices,
            node: &facts,
        })
        .expect("service diff");
    let one_svc = t.elapsed();

    // Steady state: another endpoint change, well after the full sync.
    std::thread::sleep(Duration::from_secs(1));
    slices[SERVICES / 4] = slice(SERVICES / 4, EPS_PER_SERVICE - 1);
    let t = Instant::now();
    p.sync(&Snapshot {
        services: &svcs,
        slices: &slices,
        node: &facts,
    })
    .expect("endpoint diff");
    let one_ep_again = t.elapsed();

    // Where an incremental sync's time goes, sans IO.
    let snap = Snapshot {
        services: &svcs,
        slices: &slices,
        node: &facts,
    };
    let t = Instant::now();
    let m2 = plan(&snap);
    let t_plan = t.elapsed();
    let t = Instant::now();
    let r2 = compile(&m2, &facts);
    let t_compile = t.elapsed();
    let t = Instant::now();
    let d = script::diff(&rules, &r2);
    let t_diff = t.elapsed();

    // The nft round trip alone: one element added and deleted again, twice.
    let t = Instant::now();
    for verb in ["add", "delete", "add", "delete"] {
        moat_nft::NftApply::apply(
            &nft,
            &format!("{verb} element ip moat-proxy hairpin-pairs {{ 10.99.0.1 . 10.99.0.1 }}\n"),
        )
        .expect("tiny apply");
    }
    let t_nft = t.elapsed() / 4;
    let t = Instant::now();
    let noop = p.sync(&snap).expect("no-op sync");
    assert_eq!(noop.script_bytes, 0);
    let t_noop = t.elapsed();
    let t = Instant::now();
    drop(m2);
    let t_drop = t.elapsed();

    let (mut small, mut big, mut pod_ip) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        small.extend(connect_latency(&small_client, &[vip]).remove(0));
        let mut b = connect_latency(&client, &[vip, direct]);
        pod_ip.extend(b.pop().expect("direct"));
        big.extend(b.pop().expect("vip"));
    }
    let (small, big, pod_ip) = (median(small), median(big), median(pod_ip));

    println!(
        "proxy: {} services, {endpoints} endpoints -> {chains} chains, {nrules} rules, {elems} map/set elements, script {:.1} MB",
        svcs.len() - 1,
        text.len() as f64 / 1e6
    );
    println!(
        "full sync (cold, fresh process): {:.0} ms total (plan+compile+render alone {:.0} ms)",
        full.as_secs_f64() * 1e3,
        render.as_secs_f64() * 1e3
    );
    println!(
        "one endpoint removed: {:.1} ms ({} bytes of script, full={})",
        one_ep.as_secs_f64() * 1e3,
        rep_ep.script_bytes,
        rep_ep.full
    );
    println!(
        "one endpoint removed again, 1 s later: {:.1} ms",
        one_ep_again.as_secs_f64() * 1e3
    );
    println!(
        "one service added among 10k: {:.1} ms ({} bytes of script, full={}); target < 150 ms",
        one_svc.as_secs_f64() * 1e3,
        rep_svc.script_bytes,
        rep_svc.full
    );
    println!(
        "  parts at 10k: nft round trip for one element {:.1} ms; plan {:.0} ms, unchanged sync (plan + compare, no nft) {:.0} ms, model drop {:.1} ms; full compile {:.0} ms, full diff {:.0} ms ({} bytes)",
        t_nft.as_secs_f64() * 1e3,
        t_plan.as_secs_f64() * 1e3,
        t_noop.as_secs_f64() * 1e3,
        t_drop.as_secs_f64() * 1e3,
        t_compile.as_secs_f64() * 1e3,
        t_diff.as_secs_f64() * 1e3,
        d.len()
    );
    println!(
        "connect latency (median of {} in {ROUNDS} interleaved rounds): 10 svcs {:.1} us, 10k svcs {:.1} us -> ratio {:.2} (goal <= 1.1)",
        CONNECTS * ROUNDS,
        small,
        big,
        big / small
    );
    println!(
        "connect latency vs pod IP directly (10k svcs): {:.1} us vs {:.1} us -> ratio {:.2} (goal <= 1.2)",
        big,
        pod_ip,
        big / pod_ip
    );
}

//! NetworkPolicy engine benchmark (run by bench/netpol.sh; not part of the test suite).
//!
//! Prints: full compile and apply time for 1,000 policies over 5,000 pods in 100
//! namespaces; incremental sync time for one pod label change and one new pod; rule and
//! set-element counts; TCP throughput (iperf3) and connect latency between two lab pods
//! with 0 and with 1,000 policies in force, as ratios against the unfiltered run measured
//! in the same process; then the incremental engine (`incremental.rs`): time from a label
//! change, a pod add/delete and a policy add/delete to the diff script and to the kernel,
//! as ratios against the full recompile measured in the same run and against the goals.
//!
//! `NETPOL_BENCH=incremental` runs only the incremental part (no iperf/latency).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod incremental;

use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use moat_netlab::{Lab, LabPod, ProbeOpts, unique_prefix};
use moat_netpol::{Engine, NftApply, Options, Proto, Snapshot, compile, render};
use serde_json::json;

const NS: usize = 100;
const PODS_PER_NS: usize = 50;

fn pod(ns: usize, j: usize, app: usize) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"namespace": format!("n{ns}"), "name": format!("p{j}"),
                     "labels": {"app": format!("a{app}"), "tier": if j.is_multiple_of(2) { "fe" } else { "be" }}},
        "spec": {"containers": [{"name": "c", "ports": [{"name": "web", "containerPort": 8080}]}]},
        "status": {"podIP": format!("10.42.{ns}.{}", j + 2)}
    }))
    .expect("pod")
}

fn world() -> (Vec<Namespace>, Vec<Pod>, Vec<NetworkPolicy>) {
    let nss = (0..NS)
        .map(|i| serde_json::from_value(json!({"metadata": {"name": format!("n{i}"), "labels": {"team": format!("t{}", i % 10)}}})).expect("ns"))
        .collect();
    let pods = (0..NS)
        .flat_map(|i| (0..PODS_PER_NS).map(move |j| pod(i, j, j % 10)))
        .collect();
    let mut pols = Vec::new();
    for i in 0..NS {
        let ns = format!("n{i}");
        // Isolates every pod; same-namespace traffic to the benchmark ports stays allowed.
        pols.push(json!({"metadata": {"namespace": ns, "name": "base"}, "spec": {"podSelector": {},
            "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": 5201}, {"port": 7000}]}]}}));
        for k in 1..10 {
            pols.push(json!({"metadata": {"namespace": ns, "name": format!("app-{k}")}, "spec": {
                "podSelector": {"matchLabels": {"app": format!("a{k}")}},
                "policyTypes": if k % 3 == 0 { json!(["Ingress", "Egress"]) } else { json!(["Ingress"]) },
                "ingress": [
                    {"from": [{"podSelector": {"matchLabels": {"app": format!("a{}", (k + 1) % 10)}}}],
                     "ports": [{"port": 80}, {"port": 8080, "endPort": 8090}, {"port": "web"}]},
                    {"from": [{"namespaceSelector": {"matchLabels": {"team": format!("t{k}")}},
                               "podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe"]}]}}]},
                    {"from": [{"ipBlock": {"cidr": format!("192.168.{k}.0/24"), "except": [format!("192.168.{k}.0/28")]}}],
                     "ports": [{"protocol": "UDP", "port": 53}]}],
                "egress": [{"to": [{"podSelector": {"matchLabels": {"tier": "be"}}}], "ports": [{"port": 5432}]}]
            }}));
        }
    }
    let pols = pols
        .into_iter()
        .map(|v| serde_json::from_value(v).expect("np"))
        .collect();
    (nss, pods, pols)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn iperf(lab: &Lab, ns_server: &str, ns_client: &str) -> f64 {
    let mut server = Command::new("ip")
        .args([
            "netns", "exec", ns_server, "iperf3", "-s", "-1", "-p", "5201",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(300));
    let dst = lab.pods()[1].ip.to_string();
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns_client, "iperf3", "-c", &dst, "-p", "5201", "-t", "3", "-J",
        ])
        .output()
        .expect("iperf3 client");
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 json");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("bits_per_second")
        / 1e9
}

fn connect_latency(lab: &Lab, n: usize) -> f64 {
    let opts = ProbeOpts {
        timeout: Duration::from_secs(1),
        attempts: 1,
    };
    let start = Instant::now();
    for _ in 0..n {
        assert!(
            lab.probe(0, 1, 7000, Proto::Tcp, opts).expect("probe"),
            "benchmark traffic must be allowed"
        );
    }
    ms(start.elapsed()) / n as f64 * 1000.0
}

fn main() {
    let (nss, mut pods, pols) = world();
    let opts = Options::default();
    println!(
        "netpol benchmark: {} policies, {} pods, {} namespaces",
        pols.len(),
        pods.len(),
        nss.len()
    );

    let t = Instant::now();
    let snap = Snapshot::build(&nss, &pods, &pols, &opts).expect("valid");
    let t_snap = t.elapsed();
    let t = Instant::now();
    let compiled = compile(&snap);
    let t_compile = t.elapsed();
    let t = Instant::now();
    let script = render::full(&compiled);
    let t_render = t.elapsed();
    let (rules, elems) = render::counts(&compiled);
    // NETPOL_BENCH_SCRIPT=FILE keeps the full ruleset, to study nft on it by hand.
    if let Ok(path) = std::env::var("NETPOL_BENCH_SCRIPT") {
        std::fs::write(&path, &script).expect("write script");
    }
    println!(
        "validate {:.1} ms, compile {:.1} ms, render {:.1} ms ({} KiB script)",
        ms(t_snap),
        ms(t_compile),
        ms(t_render),
        script.len() / 1024
    );
    println!(
        "ruleset: {} groups, {rules} rules, {elems} set/map elements",
        compiled.groups.len()
    );

    // Two real pods: n0/p0 and n0/p1 of the synthetic cluster.
    let lab_pods: Vec<LabPod> = (0..2)
        .map(|j| LabPod {
            id: format!("n0/p{j}"),
            ip: format!("10.42.0.{}", j + 2).parse().expect("ip"),
            listen: vec![(7000, Proto::Tcp)],
        })
        .collect();
    let prefix = unique_prefix("b");
    let lab = Lab::create(&prefix, &lab_pods).expect("lab");
    let (ns0, ns1) = (format!("{prefix}p0"), format!("{prefix}p1"));
    if std::env::var("NETPOL_BENCH").is_ok_and(|v| v == "incremental") {
        incremental::run(&lab, world());
        return;
    }

    let base_tput = iperf(&lab, &ns1, &ns0);
    let base_lat = connect_latency(&lab, 300);

    let mut engine = Engine::new(lab.nft());
    let t = Instant::now();
    engine.sync(&snap).expect("full apply");
    let t_full = t.elapsed();
    println!(
        "full compile+apply (validate+compile+render+nft): {:.1} ms",
        ms(t_snap + t_compile + t_render) + ms(t_full)
    );

    // One pod's labels change.
    pods[7] = pod(0, 7, 3);
    let t = Instant::now();
    let snap2 = Snapshot::build(&nss, &pods, &pols, &opts).expect("valid");
    let st = engine.sync(&snap2).expect("label change");
    println!(
        "incremental, one pod label change: {:.1} ms ({} bytes of nft)",
        ms(t.elapsed()),
        st.script_bytes
    );
    // One new pod.
    pods.push(pod(0, PODS_PER_NS, 4));
    let t = Instant::now();
    let snap3 = Snapshot::build(&nss, &pods, &pols, &opts).expect("valid");
    let st = engine.sync(&snap3).expect("new pod");
    println!(
        "incremental, one new pod: {:.1} ms ({} bytes of nft)",
        ms(t.elapsed()),
        st.script_bytes
    );

    let pol_tput = iperf(&lab, &ns1, &ns0);
    let pol_lat = connect_latency(&lab, 300);
    println!(
        "TCP throughput: {base_tput:.2} Gbit/s unfiltered, {pol_tput:.2} Gbit/s with 1,000 policies: ratio {:.3} (goal >= 0.95)",
        pol_tput / base_tput
    );
    println!(
        "TCP connect latency: {base_lat:.0} us unfiltered, {pol_lat:.0} us with 1,000 policies: ratio {:.3} (lower is better; 1.0 = no cost)",
        pol_lat / base_lat
    );
    incremental::run(&lab, world());
    let _ = moat_netpol::apply::Nft {
        netns: Some(lab.host_netns().to_string()),
    }
    .apply("");
}

//! Datapath properties beyond the truth tables: Service DNAT happens before policy, and a
//! transaction nft rejects leaves the previous ruleset in force.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use moat_netlab::{Lab, LabPod, ProbeOpts, unique_prefix};
use moat_netpol::{Engine, NftApply, Options, Proto, Snapshot, render};
use serde_json::json;

fn root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn lab3(tag: &str) -> Lab {
    let pods: Vec<LabPod> = ["server", "allowed", "denied"]
        .iter()
        .enumerate()
        .map(|(i, n)| LabPod {
            id: format!("default/{n}"),
            ip: format!("10.42.0.{}", i + 2).parse().expect("ip"),
            listen: vec![(80, Proto::Tcp)],
        })
        .collect();
    Lab::create(&unique_prefix(tag), &pods).expect("lab")
}

fn snapshot() -> Snapshot {
    let pods: Vec<k8s_openapi::api::core::v1::Pod> = ["server", "allowed", "denied"]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            serde_json::from_value(json!({"metadata": {"namespace": "default", "name": n, "labels": {"role": n}},
                "spec": {"containers": [{"name": "c"}]}, "status": {"podIP": format!("10.42.0.{}", i + 2)}}))
            .expect("pod")
        })
        .collect();
    let pol: k8s_openapi::api::networking::v1::NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"namespace": "default", "name": "server-from-allowed"},
        "spec": {"podSelector": {"matchLabels": {"role": "server"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "allowed"}}}], "ports": [{"port": 80}]}]}}))
    .expect("np");
    Snapshot::build(&[], &pods, &[pol], &Options::default()).expect("valid")
}

#[test]
fn serial_service_connection_is_judged_by_its_backend_pod() {
    // A root-only test fails, never skips, where it cannot run.
    assert!(root(), "needs root (network namespaces, nft)");
    let lab = lab3("d");
    // A ClusterIP as kube-proxy's nftables mode would program it (priority dstnat).
    moat_netpol::apply::Nft { netns: Some(lab.host_netns().to_string()) }
        .apply("table ip svc {\n  chain pre {\n    type nat hook prerouting priority dstnat;\n    ip daddr 10.43.0.10 tcp dport 80 dnat to 10.42.0.2:80\n  }\n}\n")
        .expect("service dnat");
    let vip = "10.43.0.10".parse().expect("vip");
    let o = ProbeOpts::default();
    assert!(
        lab.probe_addr(1, vip, 80, Proto::Tcp, o).expect("probe"),
        "VIP works before any policy"
    );
    assert!(lab.probe_addr(2, vip, 80, Proto::Tcp, o).expect("probe"));
    Engine::new(lab.nft()).sync(&snapshot()).expect("policy");
    lab.flush_conntrack().expect("flush");
    assert!(
        lab.probe_addr(1, vip, 80, Proto::Tcp, o).expect("probe"),
        "allowed client reaches the backend through the VIP"
    );
    assert!(
        !lab.probe_addr(2, vip, 80, Proto::Tcp, o).expect("probe"),
        "denied client is denied through the VIP too"
    );
    assert!(
        !lab.probe(2, 0, 80, Proto::Tcp, o).expect("probe"),
        "and directly"
    );
}

#[test]
fn serial_rejected_transaction_keeps_previous_ruleset() {
    // A root-only test fails, never skips, where it cannot run.
    assert!(root(), "needs root (network namespaces, nft)");
    let lab = lab3("r");
    let mut engine = Engine::new(lab.nft());
    engine.sync(&snapshot()).expect("policy");
    let list = || moat_netlab::policy_table_listing(lab.host_netns()).expect("list");
    let before = list();
    // Valid commands first, then one the kernel refuses: nothing of it may stick.
    let bad = format!(
        "add element inet {t} self_pairs {{ 10.42.9.9 . 10.42.9.9 }}\nflush chain inet {t} forward_hook\nadd element inet {t} no_such_set {{ 10.0.0.1 }}\n",
        t = render::TABLE
    );
    let err = lab.nft().apply(&bad).expect_err("nft must reject it");
    assert!(err.to_string().contains("nft rejected"), "{err}");
    assert_eq!(list(), before, "the previous ruleset is still in force");
    let o = ProbeOpts::default();
    assert!(
        !lab.probe(2, 0, 80, Proto::Tcp, o).expect("probe"),
        "still enforced"
    );
    assert!(lab.probe(1, 0, 80, Proto::Tcp, o).expect("probe"));
}

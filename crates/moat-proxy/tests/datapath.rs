//! The proxy on real nftables: rulesets applied with `nft -f` in a namespace of our own,
//! real TCP connections through ClusterIPs and NodePorts to socat backends.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::collections::BTreeSet;
use std::io::ErrorKind;

use common::{Lab, ask_n, node_facts, service, slice};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use moat_nft::{ApplyError, Nft, NftApply};
use moat_proxy::{Conntrack, Proxy, Snapshot, SyncReport};
use serde_json::json;

fn sync<A: NftApply>(p: &mut Proxy<A>, svcs: &[Service], slices: &[EndpointSlice]) -> SyncReport {
    let n = node_facts();
    p.sync(&Snapshot {
        services: svcs,
        slices,
        node: &n,
    })
    .expect("sync")
}

fn answers(r: &[std::io::Result<String>]) -> BTreeSet<String> {
    r.iter()
        .map(|a| a.as_ref().expect("answer").clone())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn serial_cluster_ip_balances_over_both_backends_and_rejects_without_endpoints() {
    let lab = Lab::new();
    let mut p = Proxy::new(lab.nft());
    let svcs = [service("web", "10.43.0.10", json!({}))];
    let rep = sync(&mut p, &svcs, &[slice("web", &["10.42.0.2", "10.42.0.3"])]);
    assert!(rep.full);
    assert_eq!(
        answers(&ask_n(&lab.client, "10.43.0.10:80", 40)),
        set(&["p1", "p2"])
    );
    // From the node itself (output hook; off-cluster source, masqueraded).
    assert_eq!(
        answers(&ask_n(&lab.node, "10.43.0.10:80", 40)),
        set(&["p1", "p2"])
    );
    // Scale to zero: refused (TCP reset from the filter hooks), not a timeout.
    let rep = sync(&mut p, &svcs, &[slice("web", &[])]);
    assert!(!rep.full);
    for ns in [&lab.client, &lab.node] {
        for r in ask_n(ns, "10.43.0.10:80", 3) {
            assert_eq!(
                r.expect_err("refused").kind(),
                ErrorKind::ConnectionRefused,
                "{ns}"
            );
        }
    }
    // And back.
    sync(&mut p, &svcs, &[slice("web", &["10.42.0.3"])]);
    assert_eq!(
        answers(&ask_n(&lab.client, "10.43.0.10:80", 5)),
        set(&["p2"])
    );
}

#[test]
fn serial_endpoint_removal_diff_moves_traffic() {
    let lab = Lab::new();
    let mut p = Proxy::new(lab.nft());
    let svcs = [service("web", "10.43.0.10", json!({}))];
    sync(&mut p, &svcs, &[slice("web", &["10.42.0.2", "10.42.0.3"])]);
    assert_eq!(
        answers(&ask_n(&lab.client, "10.43.0.10:80", 40)),
        set(&["p1", "p2"])
    );
    let rep = sync(&mut p, &svcs, &[slice("web", &["10.42.0.2"])]);
    assert!(!rep.full, "an element-level diff");
    assert_eq!(
        answers(&ask_n(&lab.client, "10.43.0.10:80", 20)),
        set(&["p1"])
    );
    // A second service added incrementally works too.
    let two = [svcs[0].clone(), service("api", "10.43.0.11", json!({}))];
    let rep = sync(
        &mut p,
        &two,
        &[slice("web", &["10.42.0.2"]), slice("api", &["10.42.0.3"])],
    );
    assert!(!rep.full);
    assert_eq!(
        answers(&ask_n(&lab.client, "10.43.0.11:80", 5)),
        set(&["p2"])
    );
}

/// Applies through the real nft, but can be told to append a line nft rejects.
struct Breakable {
    nft: Nft,
    broken: std::cell::Cell<bool>,
}

impl NftApply for Breakable {
    fn apply(&self, script: &str) -> Result<(), ApplyError> {
        if self.broken.get() {
            self.nft.apply(&format!(
                "{script}add rule ip moat-proxy no-such-chain accept\n"
            ))
        } else {
            self.nft.apply(script)
        }
    }
}

#[test]
fn serial_rejected_transaction_leaves_the_previous_ruleset_in_force() {
    let lab = Lab::new();
    let mut p = Proxy::new(Breakable {
        nft: lab.nft(),
        broken: false.into(),
    });
    let svcs = [service("web", "10.43.0.10", json!({}))];
    sync(&mut p, &svcs, &[slice("web", &["10.42.0.2", "10.42.0.3"])]);
    let before = lab.list_table();
    p.applier().broken.set(true);
    let n = node_facts();
    let one = [slice("web", &["10.42.0.2"])];
    let err = p.sync(&Snapshot {
        services: &svcs,
        slices: &one,
        node: &n,
    });
    assert!(err.is_err(), "nft must reject the broken transaction");
    assert_eq!(
        lab.list_table(),
        before,
        "nothing of the transaction applied"
    );
    assert_eq!(
        answers(&ask_n(&lab.client, "10.43.0.10:80", 40)),
        set(&["p1", "p2"])
    );
    // The next sync is a full rewrite and succeeds.
    p.applier().broken.set(false);
    let rep = sync(&mut p, &svcs, &one);
    assert!(rep.full);
    assert_eq!(
        answers(&ask_n(&lab.client, "10.43.0.10:80", 20)),
        set(&["p1"])
    );
}

#[test]
fn serial_node_port_from_outside_reaches_the_pods_but_not_on_loopback() {
    let lab = Lab::new();
    let mut p = Proxy::new(lab.nft());
    let svcs = [service("web", "10.43.0.10", json!({"type": "NodePort"}))];
    sync(&mut p, &svcs, &[slice("web", &["10.42.0.2", "10.42.0.3"])]);
    assert_eq!(
        answers(&ask_n(&lab.ext, "192.168.77.1:30080", 40)),
        set(&["p1", "p2"])
    );
    for r in ask_n(&lab.node, "127.0.0.1:30080", 2) {
        assert_eq!(
            r.expect_err("no NodePort on loopback").kind(),
            ErrorKind::ConnectionRefused
        );
    }
    // No endpoints: the NodePort rejects too.
    sync(&mut p, &svcs, &[]);
    for r in ask_n(&lab.ext, "192.168.77.1:30080", 2) {
        assert_eq!(r.expect_err("refused").kind(), ErrorKind::ConnectionRefused);
    }
}

#[test]
fn serial_session_affinity_pins_a_client_to_one_backend() {
    let lab = Lab::new();
    let mut p = Proxy::new(lab.nft());
    let svcs = [service(
        "web",
        "10.43.0.10",
        json!({"sessionAffinity": "ClientIP"}),
    )];
    sync(&mut p, &svcs, &[slice("web", &["10.42.0.2", "10.42.0.3"])]);
    let got = answers(&ask_n(&lab.client, "10.43.0.10:80", 20));
    assert_eq!(got.len(), 1, "20 requests, one backend: {got:?}");
}

#[test]
fn serial_pod_reaches_itself_through_its_service() {
    let lab = Lab::new();
    let mut p = Proxy::new(lab.nft());
    let svcs = [service("web", "10.43.0.10", json!({}))];
    sync(&mut p, &svcs, &[slice("web", &["10.42.0.2"])]);
    // Hairpin: without masquerade the backend would answer itself directly and the
    // connection would never complete.
    assert_eq!(answers(&ask_n(&lab.p1, "10.43.0.10:80", 5)), set(&["p1"]));
    assert_eq!(answers(&ask_n(&lab.p2, "10.43.0.10:80", 5)), set(&["p1"]));
}

fn udp_entries(lab: &Lab, reply_src: &str) -> usize {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.node,
            "conntrack",
            "-L",
            "-p",
            "udp",
            "--reply-src",
            reply_src,
        ])
        .output()
        .expect("conntrack -L");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("dport=53 "))
        .count()
}

#[test]
fn serial_udp_conntrack_entries_of_a_removed_endpoint_are_deleted() {
    let lab = Lab::new();
    let mut p = Proxy::new(lab.nft());
    let svc: Service = serde_json::from_value(json!({"metadata": {"namespace": "default", "name": "dns"},
        "spec": {"clusterIP": "10.43.0.53", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}}))
    .unwrap();
    let slice = |ips: &[&str]| -> EndpointSlice {
        let eps: Vec<_> = ips
            .iter()
            .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
            .collect();
        serde_json::from_value(json!({"metadata": {"namespace": "default", "name": "dns",
            "labels": {"kubernetes.io/service-name": "dns"}}, "addressType": "IPv4",
            "ports": [{"name": "dns", "port": 8053, "protocol": "UDP"}], "endpoints": eps}))
        .unwrap()
    };
    let svcs = [svc];
    sync(&mut p, &svcs, &[slice(&["10.42.0.2", "10.42.0.3"])]);
    // 20 "clients" (source ports), each its own conntrack entry DNATed to a random endpoint.
    common::in_netns(&lab.client, || {
        for _ in 0..20 {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            s.send_to(b"q", "10.43.0.53:53").unwrap();
        }
    });
    assert!(udp_entries(&lab, "10.42.0.3") > 0, "some flows went to p2");
    assert!(udp_entries(&lab, "10.42.0.2") > 0, "some flows went to p1");
    let rep = sync(&mut p, &svcs, &[slice(&["10.42.0.2"])]);
    assert!(!rep.stale_udp.is_empty());
    moat_proxy::ConntrackCli {
        netns: Some(lab.node.clone()),
    }
    .delete_udp(&rep.stale_udp)
    .expect("conntrack -D");
    assert_eq!(
        udp_entries(&lab, "10.42.0.3"),
        0,
        "entries to the removed endpoint deleted"
    );
    assert!(
        udp_entries(&lab, "10.42.0.2") > 0,
        "entries to the remaining endpoint kept"
    );
}

#[test]
fn serial_every_feature_loads_into_real_nft_and_local_policies_route() {
    let lab = Lab::new();
    let mut p = Proxy::new(lab.nft());
    let svcs = [
        service(
            "web",
            "10.43.0.10",
            json!({"type": "NodePort", "externalTrafficPolicy": "Local", "externalIPs": ["192.168.77.50"]}),
        ),
        service(
            "api",
            "10.43.0.11",
            json!({"internalTrafficPolicy": "Local"}),
        ),
        service(
            "aff",
            "10.43.0.12",
            json!({"sessionAffinity": "ClientIP", "type": "NodePort",
            "ports": [{"name": "http", "port": 80, "nodePort": 30081}]}),
        ),
        service(
            "none",
            "10.43.0.13",
            json!({"type": "NodePort", "ports": [{"name": "http", "port": 80, "nodePort": 30082}]}),
        ),
    ];
    let slices = [
        slice("web", &["10.42.0.2", "10.42.0.3"]),
        slice("api", &["10.42.0.3"]),
        slice("aff", &["10.42.0.2"]),
    ];
    sync(&mut p, &svcs, &slices);
    // externalTrafficPolicy Local, endpoints local: outside traffic reaches them.
    assert_eq!(
        answers(&ask_n(&lab.ext, "192.168.77.1:30080", 20)),
        set(&["p1", "p2"])
    );
    assert_eq!(
        answers(&ask_n(&lab.client, "10.43.0.11:80", 5)),
        set(&["p2"])
    );
    assert_eq!(
        answers(&ask_n(&lab.client, "10.43.0.12:80", 5)),
        set(&["p1"])
    );
    for r in ask_n(&lab.ext, "192.168.77.1:30082", 2) {
        assert_eq!(r.expect_err("refused").kind(), ErrorKind::ConnectionRefused);
    }
    // Break a sync that removes services, then recover with a full rewrite that must delete
    // their chains and affinity sets after flushing the table, in one transaction.
    let mut p = Proxy::new(Breakable {
        nft: lab.nft(),
        broken: false.into(),
    });
    sync(&mut p, &svcs, &slices);
    p.applier().broken.set(true);
    let n = node_facts();
    let fewer = &svcs[..1];
    assert!(
        p.sync(&Snapshot {
            services: fewer,
            slices: &slices,
            node: &n
        })
        .is_err()
    );
    p.applier().broken.set(false);
    let rep = sync(&mut p, fewer, &slices);
    assert!(rep.full);
    assert!(
        !lab.list_table().contains("10.43.0.12"),
        "removed service gone"
    );
    assert_eq!(
        answers(&ask_n(&lab.ext, "192.168.77.1:30080", 20)),
        set(&["p1", "p2"])
    );
}

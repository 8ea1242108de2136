//! Planner, ruleset and diff tests, and the property that any history of diffs leaves the
//! same table as a fresh full render.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use moat_nft::{Recorder, is_safe_ident};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::conntrack::StaleFlow;
use crate::model::{NodeFacts, Snapshot, plan};
use crate::ruleset::{self, NO_EP_NODEPORTS, NO_EP_SERVICES, SERVICE_IPS, SERVICE_NODEPORTS};
use crate::{Proxy, Ruleset, compile, replay, script};

fn node() -> NodeFacts {
    NodeFacts {
        name: "n1".into(),
        ips: vec![Ipv4Addr::new(192, 168, 77, 1)],
        cluster_cidr: moat_api::cidr::parse_network("10.42.0.0/16").expect("cidr"),
    }
}

fn svc(name: &str, ip: &str, extra: Value) -> Service {
    let mut spec =
        json!({"clusterIP": ip, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(
        json!({"metadata": {"namespace": "default", "name": name}, "spec": spec}),
    )
    .expect("service")
}

/// (ip, ready, serving, terminating, node)
type Ep<'a> = (&'a str, bool, bool, bool, &'a str);

fn slice(svc: &str, proto: &str, eps: &[Ep<'_>]) -> EndpointSlice {
    let endpoints: Vec<Value> = eps
        .iter()
        .map(|(ip, r, s, t, n)| {
            json!({"addresses": [ip], "nodeName": n,
                   "conditions": {"ready": r, "serving": s, "terminating": t}})
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"namespace": "default", "name": format!("{svc}-{proto}"),
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": proto}],
        "endpoints": endpoints}))
    .expect("slice")
}

fn ready(ip: &str) -> Ep<'_> {
    (ip, true, true, false, "n1")
}

fn rules_of(services: &[Service], slices: &[EndpointSlice]) -> Ruleset {
    let n = node();
    compile(
        &plan(&Snapshot {
            services,
            slices,
            node: &n,
        }),
        &n,
    )
}

fn all_rules(r: &Ruleset) -> String {
    r.chains
        .values()
        .flatten()
        .cloned()
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn cluster_ip_dispatches_to_a_chain_that_balances_over_ready_endpoints() {
    let r = rules_of(
        &[svc("web", "10.43.0.10", json!({}))],
        &[slice(
            "web",
            "TCP",
            &[ready("10.42.0.2"), ready("10.42.0.3")],
        )],
    );
    let v = &r.maps[SERVICE_IPS]["10.43.0.10 . tcp . 80"];
    let chain = v.strip_prefix("goto ").expect("goto");
    let rules = &r.chains[chain];
    // Uniform pick: 1/2 for the first, the rest for the last.
    assert_eq!(
        rules[1..],
        [
            "numgen random mod 2 == 0 meta l4proto tcp dnat to 10.42.0.2:8080".to_string(),
            "meta l4proto tcp dnat to 10.42.0.3:8080".to_string(),
        ]
    );
}

#[test]
fn headless_and_external_name_services_are_not_proxied() {
    let r = rules_of(
        &[
            svc("headless", "None", json!({})),
            svc(
                "ext",
                "",
                json!({"type": "ExternalName", "externalName": "example.org"}),
            ),
        ],
        &[slice("headless", "TCP", &[ready("10.42.0.2")])],
    );
    assert!(r.chains.is_empty());
    assert!(r.maps.values().all(|m| m.is_empty()));
}

#[test]
fn service_without_endpoints_is_rejected_not_dropped() {
    let r = rules_of(
        &[svc(
            "web",
            "10.43.0.10",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}),
        )],
        &[],
    );
    assert_eq!(
        r.maps[NO_EP_SERVICES]["10.43.0.10 . tcp . 80"],
        "goto reject-chain"
    );
    assert_eq!(r.maps[NO_EP_NODEPORTS]["tcp . 30080"], "goto reject-chain");
    let full = script::full(script::Base::Unknown, &r);
    assert!(full.contains("meta l4proto tcp reject with tcp reset"));
    assert!(full.contains("reject with icmp type port-unreachable"));
    for hook in ["input", "forward", "output"] {
        assert!(
            full.contains(&format!("type filter hook {hook} priority filter - 10")),
            "{hook}"
        );
    }
}

#[test]
fn terminating_serving_endpoints_are_used_only_when_none_is_ready() {
    let term = ("10.42.0.9", false, true, true, "n1");
    let r = rules_of(
        &[svc("web", "10.43.0.10", json!({}))],
        &[slice("web", "TCP", &[ready("10.42.0.2"), term])],
    );
    assert!(!all_rules(&r).contains("10.42.0.9"));
    let r = rules_of(
        &[svc("web", "10.43.0.10", json!({}))],
        &[slice(
            "web",
            "TCP",
            &[term, ("10.42.0.8", false, false, false, "n1")],
        )],
    );
    let all = all_rules(&r);
    assert!(all.contains("dnat to 10.42.0.9:8080"), "{all}");
    assert!(!all.contains("10.42.0.8"), "not serving: never used");
}

#[test]
fn node_port_answers_on_node_addresses_only() {
    let r = rules_of(
        &[svc(
            "web",
            "10.43.0.10",
            json!({"type": "NodePort", "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}),
        )],
        &[slice("web", "TCP", &[ready("10.42.0.2")])],
    );
    assert!(r.maps[SERVICE_NODEPORTS].contains_key("tcp . 30080"));
    let ips = &r.sets[ruleset::NODE_IPS];
    assert!(ips.contains("192.168.77.1") && !ips.contains("127.0.0.1"));
    let full = script::full(script::Base::Unknown, &r);
    assert!(full.contains("ip daddr @node-ips meta l4proto . th dport vmap @service-nodeports"));
}

#[test]
fn node_port_is_ignored_on_cluster_ip_services() {
    let r = rules_of(
        &[svc(
            "web",
            "10.43.0.10",
            json!({"ports": [{"name": "http", "port": 80, "nodePort": 30080}]}),
        )],
        &[slice("web", "TCP", &[ready("10.42.0.2")])],
    );
    assert!(r.maps[SERVICE_NODEPORTS].is_empty());
}

#[test]
fn external_ips_go_through_the_external_chain_which_masquerades() {
    let r = rules_of(
        &[svc(
            "web",
            "10.43.0.10",
            json!({"externalIPs": ["203.0.113.5"]}),
        )],
        &[slice("web", "TCP", &[ready("10.42.0.2")])],
    );
    let v = &r.maps[SERVICE_IPS]["203.0.113.5 . tcp . 80"];
    let ext = v.strip_prefix("goto ").expect("goto");
    assert!(ext.starts_with("ext-"));
    assert_eq!(r.chains[ext][0], "jump mark-for-masquerade");
}

#[test]
fn hairpin_and_off_cluster_sources_are_marked_for_masquerade() {
    let r = rules_of(
        &[svc("web", "10.43.0.10", json!({}))],
        &[slice("web", "TCP", &[ready("10.42.0.2")])],
    );
    assert!(
        r.sets[ruleset::HAIRPIN].contains("10.42.0.2 . 10.42.0.2"),
        "hairpin"
    );
    let all = all_rules(&r);
    assert!(
        all.contains("ip daddr 10.43.0.10 ip saddr != @cluster-cidrs jump mark-for-masquerade"),
        "off-cluster"
    );
    let full = script::full(script::Base::Unknown, &r);
    // Masquerade only marked packets, and clear the mark after use.
    assert!(full.contains(
        "meta mark & 0x4000 == 0 return\n    meta mark set meta mark xor 0x4000\n    masquerade"
    ));
    assert!(full.contains("type nat hook postrouting priority srcnat"));
    assert!(full.contains("type nat hook prerouting priority dstnat"));
    assert!(full.contains("type nat hook output priority -100"));
}

#[test]
fn session_affinity_pins_clients_through_timeout_sets() {
    let r = rules_of(
        &[svc(
            "web",
            "10.43.0.10",
            json!({"sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}}}),
        )],
        &[slice(
            "web",
            "TCP",
            &[ready("10.42.0.2"), ready("10.42.0.3")],
        )],
    );
    assert_eq!(r.affinity.len(), 2);
    assert!(r.affinity.values().all(|t| *t == 600));
    let all = all_rules(&r);
    for set in r.affinity.keys() {
        // A client in the set goes back to its endpoint, refreshing the entry; a new
        // client is added to the set of the endpoint it drew.
        assert!(all.contains(&format!(
            "ip saddr @{set} update @{set} {{ ip saddr }} meta l4proto tcp dnat to"
        )));
        assert!(all.contains(&format!(
            "update @{set} {{ ip saddr }} meta l4proto tcp dnat to"
        )));
    }
    assert_eq!(all.matches("update @").count(), 4);
    let full = script::full(script::Base::Unknown, &r);
    assert!(full.contains("flags dynamic,timeout; timeout 600s;"));
}

#[test]
fn internal_traffic_policy_local_uses_local_endpoints_and_drops_without_them() {
    let s = svc(
        "web",
        "10.43.0.10",
        json!({"internalTrafficPolicy": "Local"}),
    );
    let r = rules_of(
        std::slice::from_ref(&s),
        &[slice(
            "web",
            "TCP",
            &[ready("10.42.0.2"), ("10.42.1.2", true, true, false, "n2")],
        )],
    );
    let chain = r.maps[SERVICE_IPS]["10.43.0.10 . tcp . 80"]
        .strip_prefix("goto ")
        .expect("goto")
        .to_string();
    assert!(chain.starts_with("local-"));
    let all = all_rules(&r);
    assert!(all.contains("10.42.0.2:8080") && !all.contains("10.42.1.2"));
    let r = rules_of(
        &[s],
        &[slice(
            "web",
            "TCP",
            &[("10.42.1.2", true, true, false, "n2")],
        )],
    );
    assert_eq!(r.maps[NO_EP_SERVICES]["10.43.0.10 . tcp . 80"], "drop");
}

#[test]
fn external_traffic_policy_local_sends_outside_traffic_to_local_endpoints_only() {
    let s = svc(
        "web",
        "10.43.0.10",
        json!({"type": "NodePort", "externalTrafficPolicy": "Local",
        "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}),
    );
    let r = rules_of(
        std::slice::from_ref(&s),
        &[slice(
            "web",
            "TCP",
            &[ready("10.42.0.2"), ("10.42.1.2", true, true, false, "n2")],
        )],
    );
    let ext = r.maps[SERVICE_NODEPORTS]["tcp . 30080"]
        .strip_prefix("goto ")
        .expect("goto")
        .to_string();
    let rules = &r.chains[&ext];
    assert!(
        rules[0].starts_with("ip saddr @cluster-cidrs goto svc-"),
        "pods short-circuit"
    );
    assert!(rules.last().expect("rule").starts_with("goto local-"));
    assert!(
        !rules.iter().any(|r| r == "jump mark-for-masquerade"),
        "source kept"
    );
    // No local endpoint: outside traffic dropped, pods still reach every endpoint.
    let r = rules_of(
        &[s],
        &[slice(
            "web",
            "TCP",
            &[("10.42.1.2", true, true, false, "n2")],
        )],
    );
    let ext_rules = &r.chains[&ext];
    assert_eq!(ext_rules.last().map(String::as_str), Some("drop"));
    assert!(r.maps[SERVICE_IPS].contains_key("10.43.0.10 . tcp . 80"));
}

#[test]
fn names_are_safe_deterministic_and_bounded() {
    let long = "a".repeat(63);
    let s = svc(&long, "10.43.0.10", json!({}));
    let r1 = rules_of(
        std::slice::from_ref(&s),
        &[slice(&long, "TCP", &[ready("10.42.0.2")])],
    );
    let r2 = rules_of(&[s], &[slice(&long, "TCP", &[ready("10.42.0.2")])]);
    assert_eq!(r1, r2);
    for name in r1.chains.keys().chain(r1.affinity.keys()) {
        assert!(is_safe_ident(name), "{name}");
    }
}

fn snap_sync(
    p: &mut Proxy<Recorder>,
    services: &[Service],
    slices: &[EndpointSlice],
) -> crate::SyncReport {
    let n = node();
    p.sync(&Snapshot {
        services,
        slices,
        node: &n,
    })
    .expect("sync")
}

fn last_script(p: &Proxy<Recorder>) -> String {
    p.applier()
        .scripts
        .lock()
        .expect("lock")
        .last()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn first_sync_is_full_then_endpoint_changes_are_element_level() {
    let mut p = Proxy::new(Recorder::default());
    let svcs = [svc("web", "10.43.0.10", json!({}))];
    let rep = snap_sync(
        &mut p,
        &svcs,
        &[slice(
            "web",
            "TCP",
            &[ready("10.42.0.2"), ready("10.42.0.3")],
        )],
    );
    assert!(rep.full);
    assert!(last_script(&p).contains("delete table ip moat-proxy"));
    let rep = snap_sync(&mut p, &svcs, &[slice("web", "TCP", &[ready("10.42.0.2")])]);
    assert!(!rep.full);
    let s = last_script(&p);
    assert!(
        !s.contains("table ip moat-proxy {") && !s.contains("flush table"),
        "{s}"
    );
    // The service chain is rewritten and the hairpin element deleted; nothing else.
    assert_eq!(
        s.lines().filter(|l| l.starts_with("flush chain")).count(),
        1,
        "{s}"
    );
    assert!(!s.contains("delete chain"), "{s}");
    assert!(
        s.contains("delete element ip moat-proxy hairpin-pairs { 10.42.0.3 . 10.42.0.3 }"),
        "{s}"
    );
    assert_eq!(s.lines().count(), 4, "{s}");
}

#[test]
fn unchanged_snapshot_sends_nothing() {
    let mut p = Proxy::new(Recorder::default());
    let svcs = [svc("web", "10.43.0.10", json!({}))];
    let slices = [slice("web", "TCP", &[ready("10.42.0.2")])];
    snap_sync(&mut p, &svcs, &slices);
    let rep = snap_sync(&mut p, &svcs, &slices);
    assert_eq!(rep.script_bytes, 0);
    assert_eq!(p.applier().scripts.lock().expect("lock").len(), 1);
}

#[test]
fn rejected_apply_keeps_committed_state_and_retries_with_a_full_rewrite() {
    let rec = Recorder::default();
    let mut p = Proxy::new(rec.clone());
    let svcs = [svc("web", "10.43.0.10", json!({}))];
    snap_sync(&mut p, &svcs, &[slice("web", "TCP", &[ready("10.42.0.2")])]);
    let before = p.committed().cloned();
    *rec.fail.lock().expect("lock") = true;
    let n = node();
    let two = [slice(
        "web",
        "TCP",
        &[ready("10.42.0.2"), ready("10.42.0.3")],
    )];
    assert!(
        p.sync(&Snapshot {
            services: &svcs,
            slices: &two,
            node: &n
        })
        .is_err()
    );
    assert_eq!(p.committed().cloned(), before);
    *rec.fail.lock().expect("lock") = false;
    let rep = snap_sync(&mut p, &svcs, &two);
    assert!(rep.full);
    let s = last_script(&p);
    assert!(s.contains("flush table ip moat-proxy"), "{s}");
}

#[test]
fn removed_udp_endpoints_are_reported_for_conntrack_cleanup() {
    let mut p = Proxy::new(Recorder::default());
    let svcs = [svc(
        "dns",
        "10.43.0.53",
        json!({"type": "NodePort",
        "ports": [{"name": "http", "port": 53, "protocol": "UDP", "nodePort": 30053}]}),
    )];
    let rep = snap_sync(
        &mut p,
        &svcs,
        &[slice(
            "dns",
            "UDP",
            &[ready("10.42.0.2"), ready("10.42.0.3")],
        )],
    );
    // First endpoints of a UDP service: entries created while it rejected are stale.
    assert_eq!(
        rep.stale_udp,
        vec![StaleFlow::Service {
            dst: Ipv4Addr::new(10, 43, 0, 53),
            port: 53
        }]
    );
    let rep = snap_sync(&mut p, &svcs, &[slice("dns", "UDP", &[ready("10.42.0.2")])]);
    let gone = Ipv4Addr::new(10, 42, 0, 3);
    assert_eq!(
        rep.stale_udp,
        vec![
            StaleFlow::Endpoint {
                dst: Ipv4Addr::new(10, 43, 0, 53),
                port: 53,
                endpoint: gone
            },
            StaleFlow::NodePort {
                port: 30053,
                endpoint: gone
            },
        ]
    );
}

#[test]
fn removed_tcp_endpoints_need_no_conntrack_cleanup() {
    let mut p = Proxy::new(Recorder::default());
    let svcs = [svc("web", "10.43.0.10", json!({}))];
    snap_sync(
        &mut p,
        &svcs,
        &[slice(
            "web",
            "TCP",
            &[ready("10.42.0.2"), ready("10.42.0.3")],
        )],
    );
    let rep = snap_sync(&mut p, &svcs, &[]);
    assert!(rep.stale_udp.is_empty());
}

/// Drops empty sets/maps so a replayed state (which never sees the fixed declarations)
/// compares with a compiled one.
fn norm(mut r: Ruleset) -> Ruleset {
    r.sets.retain(|_, s| !s.is_empty());
    r.maps.retain(|_, m| !m.is_empty());
    r
}

/// A random small world: services 0..4 with random features, endpoints from a pool.
fn world(seed: &[(u8, u8, u8)]) -> (Vec<Service>, Vec<EndpointSlice>) {
    let mut svcs = Vec::new();
    let mut slices = Vec::new();
    for (i, (feat, eps, cond)) in seed.iter().enumerate() {
        let name = format!("s{i}");
        let ip = format!("10.43.0.{}", 10 + i);
        let proto = if feat & 1 == 0 { "TCP" } else { "UDP" };
        let mut extra = json!({"ports": [{"name": "http", "port": 80 + u16::from(feat & 2), "protocol": proto,
            "nodePort": 30000 + i}]});
        let obj = extra.as_object_mut().expect("obj");
        if feat & 4 != 0 {
            obj.insert("type".into(), json!("NodePort"));
        }
        if feat & 8 != 0 {
            obj.insert("sessionAffinity".into(), json!("ClientIP"));
            obj.insert(
                "sessionAffinityConfig".into(),
                json!({"clientIP": {"timeoutSeconds": 100 + u32::from(feat & 16)}}),
            );
        }
        if feat & 32 != 0 {
            obj.insert("internalTrafficPolicy".into(), json!("Local"));
        }
        if feat & 64 != 0 {
            obj.insert("externalTrafficPolicy".into(), json!("Local"));
        }
        if feat & 128 != 0 {
            obj.insert("externalIPs".into(), json!(["203.0.113.9"]));
        }
        svcs.push(svc(&name, &ip, extra));
        let pool: Vec<(String, bool, bool, bool, &str)> = (0..5u8)
            .filter(|b| eps & (1 << b) != 0)
            .map(|b| {
                let c = (cond >> b) & 3;
                (
                    format!("10.42.0.{}", 2 + b),
                    c != 1,
                    c != 2,
                    c == 1,
                    if b % 2 == 0 { "n1" } else { "n2" },
                )
            })
            .collect();
        let refs: Vec<Ep<'_>> = pool
            .iter()
            .map(|(a, r, s, t, n)| (a.as_str(), *r, *s, *t, *n))
            .collect();
        slices.push(slice(&name, proto, &refs));
    }
    (svcs, slices)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn diffs_replayed_in_sequence_equal_the_full_render(
        steps in proptest::collection::vec((
            proptest::collection::vec((any::<u8>(), any::<u8>(), any::<u8>()), 0..4),
            any::<bool>()), 1..6),
        fail_at in proptest::option::of(0usize..6),
    ) {
        let rec = Recorder::default();
        let mut p = Proxy::new(rec.clone());
        let mut kernel = Ruleset::default();
        for (i, (seed, extra_ip)) in steps.iter().enumerate() {
            let mut n = node();
            if *extra_ip {
                n.ips.push(Ipv4Addr::new(192, 168, 77, 9));
            }
            let (svcs, slices) = world(seed);
            let snap = Snapshot { services: &svcs, slices: &slices, node: &n };
            if fail_at == Some(i) {
                *rec.fail.lock().expect("lock") = true;
                // An empty diff is not applied at all, so it cannot fail.
                let _ = p.sync(&snap);
                *rec.fail.lock().expect("lock") = false;
                continue;
            }
            let before = rec.scripts.lock().expect("lock").len();
            p.sync(&snap).expect("sync");
            for s in rec.scripts.lock().expect("lock")[before..].iter() {
                replay::apply(&mut kernel, s);
            }
            let want = compile(&plan(&snap), &n);
            prop_assert_eq!(norm(kernel.clone()), norm(want.clone()));
            prop_assert_eq!(p.committed(), Some(&want), "incremental bookkeeping");
            let mut fresh = Ruleset::default();
            replay::apply(&mut fresh, &script::full(script::Base::Unknown, &want));
            prop_assert_eq!(norm(fresh), norm(want));
        }
    }
}

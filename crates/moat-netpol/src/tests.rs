//! The compiler and engine against the reference semantics and the nft-free evaluator.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::apply::Recorder;
use crate::reference::{End, World};

fn ns(name: &str, labels: Value) -> Namespace {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).expect("ns")
}

fn pod(ns: &str, name: &str, ip: &str, labels: Value, ports: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "ports": ports}]},
        "status": {"podIP": ip}
    }))
    .expect("pod")
}

fn policy(v: Value) -> NetworkPolicy {
    serde_json::from_value(v).expect("policy")
}

fn snap(nss: &[Namespace], pods: &[Pod], pols: &[NetworkPolicy]) -> Snapshot {
    Snapshot::build(nss, pods, pols, &Options::default()).expect("valid")
}

fn ip(p: &Pod) -> Ipv4Addr {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.as_ref())
        .and_then(|s| s.parse().ok())
        .expect("ip")
}

#[test]
fn seed_scenario_default_deny_then_allow_http_client() {
    let nss = [ns("default", json!({}))];
    let pods = [
        pod(
            "default",
            "kata-1",
            "10.42.0.2",
            json!({"app": "kata"}),
            json!([{"containerPort": 8080}]),
        ),
        pod(
            "default",
            "kata-2",
            "10.42.0.3",
            json!({"app": "kata"}),
            json!([{"containerPort": 8080}]),
        ),
        pod(
            "default",
            "http-client",
            "10.42.0.4",
            json!({"run": "http-client"}),
            json!([]),
        ),
        pod(
            "default",
            "other",
            "10.42.0.5",
            json!({"run": "other"}),
            json!([]),
        ),
    ];
    let deny = policy(
        json!({"metadata": {"namespace": "default", "name": "default-deny"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
    );
    let allow = policy(
        json!({"metadata": {"namespace": "default", "name": "allow-http-client"},
        "spec": {"podSelector": {"matchLabels": {"app": "kata"}}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"run": "http-client"}}}]}]}}),
    );
    let c0 = compile(&snap(&nss, &pods, &[]));
    assert!(sim::allowed(
        &c0,
        ip(&pods[2]),
        ip(&pods[0]),
        Proto::Tcp,
        8080
    ));
    let c1 = compile(&snap(&nss, &pods, std::slice::from_ref(&deny)));
    assert!(!sim::allowed(
        &c1,
        ip(&pods[2]),
        ip(&pods[0]),
        Proto::Tcp,
        8080
    ));
    let c2 = compile(&snap(&nss, &pods, &[deny, allow]));
    assert!(sim::allowed(
        &c2,
        ip(&pods[2]),
        ip(&pods[0]),
        Proto::Tcp,
        8080
    ));
    assert!(
        sim::allowed(&c2, ip(&pods[2]), ip(&pods[1]), Proto::Udp, 53),
        "all ports"
    );
    assert!(!sim::allowed(
        &c2,
        ip(&pods[3]),
        ip(&pods[0]),
        Proto::Tcp,
        8080
    ));
    assert!(
        !sim::allowed(&c2, ip(&pods[0]), ip(&pods[2]), Proto::Tcp, 80),
        "client is default-denied too"
    );
    // Both kata pods share one group: same selecting policies.
    assert_eq!(c2.ingress.get(&ip(&pods[0])), c2.ingress.get(&ip(&pods[1])));
}

#[test]
fn bad_input_is_rejected_with_field_paths() {
    let cases = [
        (
            json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}),
            "spec.ingress[0].from[0].ipBlock.cidr",
        ),
        (
            json!({"ingress": [{"from": [{"ipBlock": {"cidr": "not-a-cidr"}}]}]}),
            "spec.ingress[0].from[0].ipBlock.cidr",
        ),
        (
            json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/24", "except": ["10.1.0.0/24"]}}]}]}),
            "spec.ingress[0].from[0].ipBlock.except[0]",
        ),
        (
            json!({"ingress": [{"ports": [{"endPort": 90}]}]}),
            "spec.ingress[0].ports[0].endPort",
        ),
        (
            json!({"ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}),
            "spec.ingress[0].ports[0].endPort",
        ),
        (
            json!({"ingress": [{"ports": [{"port": "http", "endPort": 80}]}]}),
            "spec.ingress[0].ports[0].endPort",
        ),
        (
            json!({"ingress": [{"ports": [{"port": 80, "protocol": "ICMP"}]}]}),
            "spec.ingress[0].ports[0].protocol",
        ),
        (
            json!({"egress": [{"ports": [{"port": 0}]}]}),
            "spec.egress[0].ports[0].port",
        ),
        (
            json!({"ingress": [{"ports": [{"port": "Not_A_Name"}]}]}),
            "spec.ingress[0].ports[0].port",
        ),
        (
            json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}),
            "spec.podSelector.matchExpressions[0]",
        ),
        (
            json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Near", "values": ["x"]}]}}),
            "spec.podSelector.matchExpressions[0]",
        ),
    ];
    for (spec, field) in cases {
        let mut spec = spec;
        if spec.get("podSelector").is_none() {
            spec["podSelector"] = json!({});
        }
        let p = policy(json!({"metadata": {"namespace": "default", "name": "bad"}, "spec": spec}));
        let errs = Snapshot::build(&[], &[], &[p], &Options::default()).expect_err("invalid");
        assert!(
            errs.iter().any(|e| e.field == field),
            "want {field}, got {errs:?}"
        );
        assert!(errs.iter().all(|e| e.object == "networkpolicy default/bad"));
    }
}

#[test]
fn invalid_sync_or_failed_apply_changes_nothing() {
    let rec = Recorder::default();
    let mut eng = Engine::new(rec.clone());
    let nss = [ns("default", json!({}))];
    let pods = [pod(
        "default",
        "a",
        "10.42.0.2",
        json!({"app": "a"}),
        json!([]),
    )];
    let deny = policy(
        json!({"metadata": {"namespace": "default", "name": "deny"}, "spec": {"podSelector": {}}}),
    );
    eng.sync_objects(
        &nss,
        &pods,
        std::slice::from_ref(&deny),
        &Options::default(),
    )
    .expect("first sync");
    let before = eng.current().cloned();
    let bad = policy(json!({"metadata": {"namespace": "default", "name": "bad"},
        "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "300.1.1.1/8"}}]}]}}));
    let err = eng
        .sync_objects(&nss, &pods, &[deny.clone(), bad], &Options::default())
        .expect_err("invalid");
    assert!(err.to_string().contains("ipBlock.cidr"), "{err}");
    assert_eq!(
        rec.scripts.lock().map(|s| s.len()).unwrap_or(0),
        1,
        "nothing applied"
    );
    assert_eq!(eng.current().cloned(), before);

    *rec.fail.lock().expect("lock") = true;
    let err = eng
        .sync_objects(&nss, &pods, &[], &Options::default())
        .expect_err("apply fails");
    assert!(matches!(err, SyncError::Apply(_)));
    assert_eq!(
        eng.current().cloned(),
        before,
        "state follows the kernel, which kept the old ruleset"
    );
}

#[test]
fn user_strings_never_reach_nft_text() {
    let evil = "x; flush ruleset; add table ip evil {";
    let nss = [ns("default", json!({"team": evil}))];
    let pods = [pod(
        "default",
        "a",
        "10.42.0.2",
        json!({"app": evil}),
        json!([{"name": "http", "containerPort": 80}]),
    )];
    let p = policy(
        json!({"metadata": {"namespace": "default", "name": "quote\"evil"},
        "spec": {"podSelector": {"matchLabels": {"app": evil}},
                 "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": evil}}}], "ports": [{"port": "http"}]}]}}),
    );
    let c = compile(&snap(&nss, &pods, &[p]));
    let text = render::full(&c);
    assert!(
        !text.contains("flush ruleset") && !text.contains("evil") && !text.contains("quote"),
        "{text}"
    );
    assert_eq!(c.ingress.len(), 1, "the policy still applies");
}

#[test]
fn label_change_is_an_element_only_diff() {
    let nss = [ns("default", json!({}))];
    let mk = |lbl: &str| {
        vec![
            pod(
                "default",
                "srv",
                "10.42.0.2",
                json!({"app": "srv"}),
                json!([]),
            ),
            pod(
                "default",
                "cli",
                "10.42.0.3",
                json!({"role": lbl}),
                json!([]),
            ),
        ]
    };
    let p = policy(json!({"metadata": {"namespace": "default", "name": "p"},
        "spec": {"podSelector": {"matchLabels": {"app": "srv"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}], "ports": [{"port": 80}]}]}}));
    let a = compile(&snap(&nss, &mk("client"), std::slice::from_ref(&p)));
    let b = compile(&snap(&nss, &mk("nobody"), std::slice::from_ref(&p)));
    assert_eq!(render::diff(&a, &a), "", "no change, no transaction");
    let d = render::diff(&a, &b);
    assert!(!d.is_empty());
    assert!(
        d.lines()
            .all(|l| l.starts_with("delete element") || l.starts_with("add element")),
        "{d}"
    );
    assert!(!d.contains("chain"), "{d}");
}

#[test]
fn legacy_annotation_is_opt_in() {
    let annotated: Namespace = serde_json::from_value(json!({"metadata": {"name": "test", "annotations": {
        "net.beta.kubernetes.io/network-policy": "{\"ingress\":{\"isolation\":\"DefaultDeny\"}}"}}})).expect("ns");
    let pods = [
        pod(
            "test",
            "nginx",
            "10.42.0.2",
            json!({"run": "nginx"}),
            json!([]),
        ),
        pod("test", "bb", "10.42.0.3", json!({}), json!([])),
    ];
    let off = compile(
        &Snapshot::build(
            std::slice::from_ref(&annotated),
            &pods,
            &[],
            &Options::default(),
        )
        .expect("ok"),
    );
    assert!(sim::allowed(
        &off,
        ip(&pods[1]),
        ip(&pods[0]),
        Proto::Tcp,
        80
    ));
    let opts = Options {
        legacy_namespace_isolation: true,
        ..Default::default()
    };
    let on = compile(&Snapshot::build(&[annotated], &pods, &[], &opts).expect("ok"));
    assert!(!sim::allowed(
        &on,
        ip(&pods[1]),
        ip(&pods[0]),
        Proto::Tcp,
        80
    ));
}

// ---- property test: compiled ruleset (simulated) == reference semantics ----

const LABEL_VALUES: [&str; 3] = ["a", "b", "c"];

pub(crate) fn arb_labels() -> impl Strategy<Value = Value> {
    proptest::collection::btree_map(prop_oneof![Just("k1"), Just("k2")], 0..3usize, 0..3).prop_map(
        |m| {
            json!(
                m.into_iter()
                    .map(|(k, v)| (k.to_string(), LABEL_VALUES[v]))
                    .collect::<std::collections::BTreeMap<_, _>>()
            )
        },
    )
}

pub(crate) fn arb_selector() -> impl Strategy<Value = Value> {
    (
        arb_labels(),
        proptest::collection::vec((0..2usize, 0..4usize, 0..3usize), 0..2),
    )
        .prop_map(|(ml, exprs)| {
            let ops = ["In", "NotIn", "Exists", "DoesNotExist"];
            let e: Vec<Value> = exprs
                .into_iter()
                .map(|(k, op, v)| {
                    let key = ["k1", "k2"][k];
                    match ops[op] {
                        o @ ("In" | "NotIn") => {
                            json!({"key": key, "operator": o, "values": [LABEL_VALUES[v]]})
                        }
                        o => json!({"key": key, "operator": o}),
                    }
                })
                .collect();
            json!({"matchLabels": ml, "matchExpressions": e})
        })
}

fn arb_peer() -> impl Strategy<Value = Value> {
    prop_oneof![
        arb_selector().prop_map(|s| json!({"podSelector": s})),
        arb_selector().prop_map(|s| json!({"namespaceSelector": s})),
        (arb_selector(), arb_selector()).prop_map(|(p, n)| json!({"podSelector": p, "namespaceSelector": n})),
        (0..4u32, 24..=30u8, proptest::option::of(0..8u32)).prop_map(|(base, pfx, exc)| {
            let cidr = format!("10.42.0.{}/{}", base * 4, pfx);
            match exc {
                Some(e) if pfx < 31 => json!({"ipBlock": {"cidr": format!("10.42.0.0/{}", pfx.min(28)), "except": [format!("10.42.0.{}/31", e * 2)]}}),
                _ => json!({"ipBlock": {"cidr": cidr}}),
            }
        }),
        Just(json!({"ipBlock": {"cidr": "192.0.2.0/24"}})),
    ]
}

fn arb_port() -> impl Strategy<Value = Value> {
    let proto = prop_oneof![Just("TCP"), Just("UDP")];
    prop_oneof![
        (proto.clone(), 79..83i32).prop_map(|(p, n)| json!({"protocol": p, "port": n})),
        (proto.clone(), 79..81i32, 0..3i32)
            .prop_map(|(p, n, w)| json!({"protocol": p, "port": n, "endPort": n + w})),
        (proto.clone(), prop_oneof![Just("http"), Just("dns")])
            .prop_map(|(p, n)| json!({"protocol": p, "port": n})),
        proto.prop_map(|p| json!({"protocol": p})),
        Just(json!({})),
    ]
}

fn arb_rule() -> impl Strategy<Value = Value> {
    (
        proptest::option::of(proptest::collection::vec(arb_peer(), 0..3)),
        proptest::option::of(proptest::collection::vec(arb_port(), 0..3)),
    )
        .prop_map(|(peers, ports)| {
            let mut r = json!({});
            if let Some(p) = peers {
                r["peers"] = json!(p);
            }
            if let Some(p) = ports {
                r["ports"] = json!(p);
            }
            r
        })
}

pub(crate) fn arb_policy(i: usize) -> impl Strategy<Value = Value> {
    (
        0..2usize,
        arb_selector(),
        proptest::option::of(proptest::collection::vec(arb_rule(), 0..3)),
        proptest::option::of(proptest::collection::vec(arb_rule(), 0..3)),
        0..4usize,
    )
        .prop_map(move |(ns, sel, ing, eg, types)| {
            let conv = |rules: Option<Vec<Value>>, key: &str| {
                rules.map(|rs| {
                    rs.into_iter()
                        .map(|r| {
                            let mut o = json!({});
                            if let Some(p) = r.get("peers") {
                                o[key] = p.clone();
                            }
                            if let Some(p) = r.get("ports") {
                                o["ports"] = p.clone();
                            }
                            o
                        })
                        .collect::<Vec<_>>()
                })
            };
            let mut spec = json!({"podSelector": sel});
            if let Some(i) = conv(ing, "from") {
                spec["ingress"] = json!(i);
            }
            if let Some(e) = conv(eg, "to") {
                spec["egress"] = json!(e);
            }
            match types {
                1 => spec["policyTypes"] = json!(["Ingress"]),
                2 => spec["policyTypes"] = json!(["Egress"]),
                3 => spec["policyTypes"] = json!(["Ingress", "Egress"]),
                _ => {}
            }
            let namespace = ["x", "y"][ns];
            json!({"metadata": {"namespace": namespace, "name": format!("p{i}")}, "spec": spec})
        })
}

fn arb_world() -> impl Strategy<Value = (Vec<Value>, Vec<Value>, Vec<Value>)> {
    let nss = (arb_labels(), arb_labels()).prop_map(|(a, b)| {
        vec![
            json!({"metadata": {"name": "x", "labels": a}}),
            json!({"metadata": {"name": "y", "labels": b}}),
        ]
    });
    let pods = proptest::collection::vec((0..2usize, arb_labels(), proptest::option::of(0..2usize)), 1..6).prop_map(|ps| {
        ps.into_iter().enumerate().map(|(i, (ns, labels, named))| {
            let ports = match named {
                Some(0) => json!([{"name": "http", "containerPort": 80}, {"name": "dns", "containerPort": 81, "protocol": "UDP"}]),
                Some(_) => json!([{"name": "http", "containerPort": 81}, {"name": "dns", "containerPort": 80, "protocol": "UDP"}]),
                None => json!([]),
            };
            let namespace = ["x", "y"][ns];
            json!({"metadata": {"namespace": namespace, "name": format!("p{i}"), "labels": labels},
                   "spec": {"containers": [{"name": "c", "ports": ports}]},
                   "status": {"podIP": format!("10.42.0.{}", 2 + i * 3)}})
        }).collect::<Vec<_>>()
    });
    let pols = (0..4usize).prop_flat_map(|n| (0..n).map(arb_policy).collect::<Vec<_>>());
    (nss, pods, pols)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]
    #[test]
    fn compiled_ruleset_agrees_with_reference((nss, pods, pols) in arb_world()) {
        let nss: Vec<Namespace> = nss.into_iter().map(|v| serde_json::from_value(v).expect("ns")).collect();
        let pods: Vec<Pod> = pods.into_iter().map(|v| serde_json::from_value(v).expect("pod")).collect();
        let pols: Vec<NetworkPolicy> = pols.into_iter().map(|v| serde_json::from_value(v).expect("np")).collect();
        let snap = match Snapshot::build(&nss, &pods, &pols, &Options::default()) {
            Ok(s) => s,
            // Generated invalid input (e.g. except outside cidr) is covered elsewhere.
            Err(_) => return Ok(()),
        };
        let c = compile(&snap);
        let world = World { namespaces: &nss, policies: &pols, legacy_namespace_isolation: false };
        let external: Ipv4Addr = "192.0.2.7".parse().expect("ip");
        for a in &pods {
            for b in &pods {
                for proto in [Proto::Tcp, Proto::Udp] {
                    for port in 79..=82u16 {
                        let want = world.allowed(End::Pod(a), End::Pod(b), port, proto.name());
                        let got = sim::allowed(&c, ip(a), ip(b), proto, port);
                        prop_assert_eq!(got, want, "{:?}/{:?} -> {:?}/{:?} {}/{}", a.metadata.namespace, a.metadata.name, b.metadata.namespace, b.metadata.name, port, proto);
                    }
                }
            }
            for port in [80u16, 81] {
                let want_in = world.allowed(End::External(external), End::Pod(a), port, "TCP");
                prop_assert_eq!(sim::allowed(&c, external, ip(a), Proto::Tcp, port), want_in, "external -> {:?}", a.metadata.name);
                let want_out = world.allowed(End::Pod(a), End::External(external), port, "TCP");
                prop_assert_eq!(sim::allowed(&c, ip(a), external, Proto::Tcp, port), want_out, "{:?} -> external", a.metadata.name);
            }
        }
    }
}

#[test]
fn a_reused_address_belongs_to_the_live_pod() {
    let nss = [ns("default", json!({}))];
    // "zz-old" sorts after "new": only its deletion makes it lose the address.
    let mut old = pod(
        "default",
        "zz-old",
        "10.42.0.9",
        json!({"app": "old"}),
        json!([]),
    );
    old.metadata.deletion_timestamp = serde_json::from_value(json!("2026-01-01T00:00:00Z")).ok();
    let new = pod(
        "default",
        "new",
        "10.42.0.9",
        json!({"app": "new"}),
        json!([]),
    );
    let deny_new = policy(
        json!({"metadata": {"namespace": "default", "name": "deny-new"},
        "spec": {"podSelector": {"matchLabels": {"app": "new"}}}}),
    );
    for pods in [[old.clone(), new.clone()], [new.clone(), old.clone()]] {
        let c = compile(&snap(&nss, &pods, std::slice::from_ref(&deny_new)));
        assert!(
            c.ingress
                .contains_key(&"10.42.0.9".parse::<Ipv4Addr>().expect("ip")),
            "the new pod's isolation holds whatever the order"
        );
    }
    let live_old = pod(
        "default",
        "zz-old",
        "10.42.0.9",
        json!({"app": "old"}),
        json!([]),
    );
    let c = compile(&snap(&nss, &[new, live_old], &[deny_new]));
    assert!(
        c.ingress.is_empty(),
        "two live claimants: the greater name owns it"
    );
}

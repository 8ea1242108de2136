//! Incremental compilation against the full compiler: random histories of namespace, pod
//! and policy changes on a small topology. After every sync the incremental ruleset must
//! equal `compile` of the final objects, the transaction must be exactly the diff between
//! the two whole rulesets, and the same changes fed straight to a [`State`] must give a
//! [`Delta`] that takes the previous ruleset to the new one.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::State;
use crate::apply::Recorder;
use crate::model::{self, Options, Snapshot};
use crate::tests::{arb_labels, arb_policy};
use crate::{Engine, Held, SyncError, compile, render};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const POD_SLOTS: usize = 8;
const POLICY_SLOTS: usize = 5;

#[derive(Debug, Clone)]
enum Op {
    Namespace {
        idx: usize,
        labels: Value,
        legacy: bool,
    },
    DeleteNamespace(usize),
    Pod {
        slot: usize,
        ns: usize,
        labels: Value,
        ip: Option<usize>,
        named: Option<usize>,
        local: bool,
        host: bool,
        finished: bool,
        new_uid: bool,
    },
    /// The agent's stand-in for a pod whose address the API does not show yet: the same
    /// resourceVersion, another `status.podIP`.
    PodIpOnly {
        slot: usize,
        ip: Option<usize>,
    },
    DeletePod(usize),
    Policy {
        slot: usize,
        spec: Value,
    },
    InvalidPolicy(usize),
    DeletePolicy(usize),
    /// Flips `Options::legacy_namespace_isolation` (a whole rebuild).
    ToggleLegacy,
    /// The next apply fails.
    FailNextApply,
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..3usize, arb_labels(), prop::bool::weighted(0.3))
            .prop_map(|(idx, labels, legacy)| Op::Namespace { idx, labels, legacy }),
        1 => (0..3usize).prop_map(Op::DeleteNamespace),
        8 => (
            0..POD_SLOTS,
            0..3usize,
            arb_labels(),
            prop::option::weighted(0.85, 0..6usize),
            prop::option::of(0..2usize),
            prop::bool::weighted(0.8),
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.15),
            prop::bool::weighted(0.15),
        )
            .prop_map(|(slot, ns, labels, ip, named, local, host, finished, new_uid)| Op::Pod {
                slot, ns, labels, ip, named, local, host, finished, new_uid,
            }),
        2 => (0..POD_SLOTS, prop::option::of(0..6usize))
            .prop_map(|(slot, ip)| Op::PodIpOnly { slot, ip }),
        2 => (0..POD_SLOTS).prop_map(Op::DeletePod),
        6 => (0..POLICY_SLOTS)
            .prop_flat_map(|slot| arb_policy(slot).prop_map(move |spec| Op::Policy { slot, spec })),
        1 => (0..POLICY_SLOTS).prop_map(Op::InvalidPolicy),
        2 => (0..POLICY_SLOTS).prop_map(Op::DeletePolicy),
        1 => Just(Op::ToggleLegacy),
        1 => Just(Op::FailNextApply),
    ]
}

/// The objects as the API would hold them.
#[derive(Default)]
struct World {
    namespaces: BTreeMap<usize, Value>,
    pods: BTreeMap<usize, Value>,
    policies: BTreeMap<usize, Value>,
    rv: u64,
    uids: u64,
    opts: Options,
    fail_next: bool,
}

impl World {
    fn next_rv(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Namespace {
                idx,
                labels,
                legacy,
            } => {
                let rv = self.next_rv();
                let mut v = json!({"metadata": {"name": NAMESPACES[*idx], "uid": format!("ns-{idx}"),
                    "resourceVersion": rv, "labels": labels}});
                if *legacy {
                    v["metadata"]["annotations"] = json!({model::LEGACY_ISOLATION_ANNOTATION:
                        "{\"ingress\":{\"isolation\":\"DefaultDeny\"}}"});
                }
                self.namespaces.insert(*idx, v);
            }
            Op::DeleteNamespace(idx) => {
                self.namespaces.remove(idx);
            }
            Op::Pod {
                slot,
                ns,
                labels,
                ip,
                named,
                local,
                host,
                finished,
                new_uid,
            } => {
                let rv = self.next_rv();
                let old_uid = self.pods.get(slot).map(|p| p["metadata"]["uid"].clone());
                let uid = match old_uid {
                    Some(u) if !new_uid => u,
                    _ => {
                        self.uids += 1;
                        json!(format!("pod-{}", self.uids))
                    }
                };
                let ports = match named {
                    Some(0) => {
                        json!([{"name": "http", "containerPort": 80}, {"name": "dns", "containerPort": 81, "protocol": "UDP"}])
                    }
                    Some(_) => {
                        json!([{"name": "http", "containerPort": 81}, {"name": "dns", "containerPort": 80, "protocol": "UDP"}])
                    }
                    None => json!([]),
                };
                let mut v = json!({
                    "metadata": {"namespace": NAMESPACES[*ns], "name": format!("p{slot}"), "uid": uid,
                                 "resourceVersion": rv, "labels": labels},
                    "spec": {"nodeName": if *local { "me" } else { "other" }, "hostNetwork": host,
                             "containers": [{"name": "c", "ports": ports}]},
                    "status": {}
                });
                if let Some(i) = ip {
                    v["status"]["podIP"] = json!(format!("10.42.0.{}", 2 + i * 3));
                }
                if *finished {
                    v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
                }
                self.pods.insert(*slot, v);
            }
            Op::PodIpOnly { slot, ip } => {
                if let Some(p) = self.pods.get_mut(slot) {
                    p["status"]["podIP"] = match ip {
                        Some(i) => json!(format!("10.42.0.{}", 2 + i * 3)),
                        None => Value::Null,
                    };
                }
            }
            Op::DeletePod(slot) => {
                self.pods.remove(slot);
            }
            Op::Policy { slot, spec } => {
                let rv = self.next_rv();
                let mut v = spec.clone();
                let ns = v["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("x")
                    .to_string();
                v["metadata"]["uid"] = json!(format!("pol-{slot}-{ns}"));
                v["metadata"]["resourceVersion"] = json!(rv);
                self.policies.insert(*slot, v);
            }
            Op::InvalidPolicy(slot) => {
                let rv = self.next_rv();
                self.policies.insert(*slot, json!({
                    "metadata": {"namespace": "x", "name": format!("p{slot}"), "uid": format!("pol-{slot}-x"), "resourceVersion": rv},
                    "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "300.1.1.1/8"}}]}]}
                }));
            }
            Op::DeletePolicy(slot) => {
                self.policies.remove(slot);
            }
            Op::ToggleLegacy => {
                self.opts.legacy_namespace_isolation = !self.opts.legacy_namespace_isolation;
            }
            Op::FailNextApply => self.fail_next = true,
        }
    }

    /// The lists in map order, or reversed: the result must not depend on order.
    fn objects(&self, reverse: bool) -> (Vec<Namespace>, Vec<Pod>, Vec<NetworkPolicy>) {
        fn list<T: k8s_openapi::serde::de::DeserializeOwned>(
            m: &BTreeMap<usize, Value>,
            rev: bool,
        ) -> Vec<T> {
            let mut v: Vec<T> = m
                .values()
                .map(|v| serde_json::from_value(v.clone()).expect("object"))
                .collect();
            if rev {
                v.reverse();
            }
            v
        }
        (
            list(&self.namespaces, reverse),
            list(&self.pods, reverse),
            list(&self.policies, reverse),
        )
    }
}

/// Feeds one op straight to a `State` (valid input only), as the API-level path would.
fn feed(state: &mut State, world: &World, op: &Op, before: &World) {
    let opts = &world.opts;
    match op {
        Op::Namespace { idx, .. } => {
            let ns: Namespace = serde_json::from_value(world.namespaces[idx].clone()).expect("ns");
            state.upsert_namespace(model::ns_info(&ns, opts));
        }
        Op::DeleteNamespace(idx) => state.delete_namespace(NAMESPACES[*idx]),
        Op::Pod { slot, .. } | Op::PodIpOnly { slot, .. } | Op::DeletePod(slot) => {
            if let Some(old) = before.pods.get(slot) {
                let old: Pod = serde_json::from_value(old.clone()).expect("pod");
                let m = &old.metadata;
                state.delete_pod(
                    m.namespace.as_deref().unwrap_or(""),
                    m.name.as_deref().unwrap_or(""),
                    m.uid.as_deref().unwrap_or(""),
                );
            }
            if let Some(new) = world.pods.get(slot) {
                let new: Pod = serde_json::from_value(new.clone()).expect("pod");
                state.upsert_pod(model::pod_info(&new, opts).expect("valid pod"));
            }
        }
        Op::Policy { slot, .. } | Op::InvalidPolicy(slot) | Op::DeletePolicy(slot) => {
            if let Some(old) = before.policies.get(slot) {
                state.delete_policy(
                    old["metadata"]["namespace"].as_str().unwrap_or(""),
                    old["metadata"]["name"].as_str().unwrap_or(""),
                );
            }
            if let Some(new) = world.policies.get(slot) {
                let np: NetworkPolicy = serde_json::from_value(new.clone()).expect("np");
                if let Ok(p) = model::policy(&np) {
                    state.upsert_policy(p);
                }
            }
        }
        Op::ToggleLegacy => {
            for v in world.namespaces.values() {
                let ns: Namespace = serde_json::from_value(v.clone()).expect("ns");
                state.upsert_namespace(model::ns_info(&ns, opts));
            }
        }
        Op::FailNextApply => {}
    }
}

fn clone_world(w: &World) -> World {
    World {
        namespaces: w.namespaces.clone(),
        pods: w.pods.clone(),
        policies: w.policies.clone(),
        rv: w.rv,
        uids: w.uids,
        opts: w.opts.clone(),
        fail_next: w.fail_next,
    }
}

/// A populated start: every namespace, a pod in every slot, a few policies.
fn arb_start() -> impl Strategy<Value = Vec<Op>> {
    let nss = proptest::collection::vec((arb_labels(), prop::bool::weighted(0.2)), 3);
    let pods = proptest::collection::vec(arb_op(), POD_SLOTS);
    let pols = (0..POLICY_SLOTS).prop_flat_map(|n| {
        (0..n)
            .map(|slot| arb_policy(slot).prop_map(move |spec| Op::Policy { slot, spec }))
            .collect::<Vec<_>>()
    });
    (nss, pods, pols).prop_map(|(nss, pods, pols)| {
        let mut ops: Vec<Op> = nss
            .into_iter()
            .enumerate()
            .map(|(idx, (labels, legacy))| Op::Namespace {
                idx,
                labels,
                legacy,
            })
            .collect();
        // Whatever was drawn, make it a pod in slot i.
        ops.extend(pods.into_iter().enumerate().map(|(i, op)| match op {
            Op::Pod {
                ns,
                labels,
                ip,
                named,
                local,
                host,
                finished,
                new_uid,
                ..
            } => Op::Pod {
                slot: i,
                ns,
                labels,
                ip,
                named,
                local,
                host,
                finished,
                new_uid,
            },
            _ => Op::Pod {
                slot: i,
                ns: i % 3,
                labels: json!({"k1": "a"}),
                ip: Some(i % 6),
                named: None,
                local: true,
                host: false,
                finished: false,
                new_uid: false,
            },
        }));
        ops.extend(pols);
        ops
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]
    #[test]
    fn incremental_equals_full_compile(start in arb_start(), steps in proptest::collection::vec(
        (proptest::collection::vec(arb_op(), 1..3), any::<bool>()), 1..25))
    {
        let steps: Vec<(Vec<Op>, bool)> = std::iter::once((start, false)).chain(steps).collect();
        let rec = Recorder::default();
        let mut engine = Engine::new(rec.clone());
        let mut world = World {
            opts: Options { node_name: Some("me".into()), node_addrs: vec!["10.42.0.1".parse().expect("ip")], ..Options::default() },
            ..World::default()
        };
        let mut state = State::new(&world.opts.node_addrs);
        let mut state_prev = state.compiled().clone();
        for (ops, reverse) in &steps {
            for op in ops {
                let before = clone_world(&world);
                world.apply(op);
                feed(&mut state, &world, op, &before);
            }
            let (nss, pods, pols) = world.objects(*reverse);
            let want = Snapshot::build(&nss, &pods, &pols, &world.opts);
            let prev = engine.current().cloned();
            let sent = rec.scripts.lock().expect("lock").len();
            let fail = std::mem::take(&mut world.fail_next);
            *rec.fail.lock().expect("lock") = fail;
            let got = engine.sync_objects_incremental(&nss, &pods, &pols, &world.opts);
            *rec.fail.lock().expect("lock") = false;
            match want {
                Err(errs) => {
                    // Invalid input changes nothing and says what Snapshot::build says.
                    match got {
                        Err(SyncError::Invalid(e)) => prop_assert_eq!(e, errs),
                        other => prop_assert!(false, "want Invalid, got {:?}", other.map(|_| ())),
                    }
                    prop_assert_eq!(engine.current().cloned(), prev);
                    prop_assert_eq!(rec.scripts.lock().expect("lock").len(), sent);
                }
                Ok(snap) => {
                    let full = compile(&snap);
                    if fail {
                        match &got {
                            Err(SyncError::Apply(_)) => {
                                // Either known to be in doubt, or (a whole rebuild that
                                // failed) still what the kernel held before.
                                let cur = engine.current();
                                prop_assert!(cur.is_none() || cur == prev.as_ref());
                                continue;
                            }
                            // Nothing to send, nothing to fail.
                            other => {
                                prop_assert!(other.is_ok());
                                prop_assert_eq!(prev.as_ref(), Some(&full));
                            }
                        }
                    }
                    let stats = match got {
                        Ok(s) => s,
                        Err(e) => return Err(TestCaseError::fail(format!("sync: {e}"))),
                    };
                    prop_assert_eq!(engine.current(), Some(&full));
                    let scripts = rec.scripts.lock().expect("lock").clone();
                    let script = if scripts.len() > sent { scripts[scripts.len() - 1].clone() } else { String::new() };
                    match &prev {
                        Some(p) if !stats.full => prop_assert_eq!(script, render::diff(p, &full)),
                        _ => prop_assert_eq!(script, render::full(&full)),
                    }
                    prop_assert_eq!(engine.self_check().expect("check"), None);
                    // The State API straight: its delta takes the old ruleset to the new.
                    let delta = state.flush();
                    prop_assert_eq!(state.compiled(), &full);
                    let mut applied = state_prev.clone();
                    delta.apply_to(&mut applied);
                    prop_assert_eq!(&applied, &full);
                    prop_assert_eq!(delta.script(), render::diff(&state_prev, &full));
                    state_prev = full;
                }
            }
        }
    }
}

#[test]
fn self_check_finds_and_repairs_drift() {
    let rec = Recorder::default();
    let mut engine = Engine::new(rec.clone());
    let nss: Vec<Namespace> =
        vec![serde_json::from_value(json!({"metadata": {"name": "default"}})).expect("ns")];
    let pods: Vec<Pod> = (0..3)
        .map(|i| {
            serde_json::from_value(json!({
                "metadata": {"namespace": "default", "name": format!("p{i}"), "labels": {"app": "a"}},
                "spec": {"containers": [{"name": "c"}]},
                "status": {"podIP": format!("10.42.0.{}", i + 2)}
            }))
            .expect("pod")
        })
        .collect();
    let pols: Vec<NetworkPolicy> = vec![
        serde_json::from_value(json!({"metadata": {"namespace": "default", "name": "deny"},
            "spec": {"podSelector": {}}}))
        .expect("np"),
    ];
    let opts = Options::default();
    engine
        .sync_objects_incremental(&nss, &pods, &pols, &opts)
        .expect("first");
    assert_eq!(engine.self_check().expect("check"), None, "no drift");
    let want = engine.current().cloned().expect("applied");
    // Corrupt the state as a bookkeeping bug would.
    if let Held::Tracked(t, _) = &mut engine.held {
        t.state.out.ingress.clear();
    }
    let sent = rec.scripts.lock().expect("lock").len();
    let drift = engine.self_check().expect("check").expect("drift found");
    assert_eq!(drift.map_entries, 3, "{drift:?}");
    assert_eq!(drift.groups, 0, "{drift:?}");
    assert_eq!(engine.current(), Some(&want), "repaired");
    let scripts = rec.scripts.lock().expect("lock").clone();
    assert_eq!(scripts.len(), sent + 1, "one repairing transaction");
    assert!(
        scripts[sent].starts_with("add element inet moat_netpol ingress"),
        "{}",
        scripts[sent]
    );
    assert_eq!(
        engine.self_check().expect("check"),
        None,
        "clean after repair"
    );
    // And incremental syncs carry on from the repaired state.
    engine
        .sync_objects_incremental(&nss, &pods[..2], &pols, &opts)
        .expect("delete one pod");
    let full = compile(&Snapshot::build(&nss, &pods[..2], &pols, &opts).expect("valid"));
    assert_eq!(engine.current(), Some(&full));
}

/// `bench/netpol_live.sh`'s label change: a policy on this node's pod admits peers from every
/// namespace by label; a peer on another node (bound to a node without an agent, address set
/// through its status) loses the label. The peer set must shrink.
#[test]
fn a_remote_peers_label_change_updates_the_peer_sets() {
    let nss: Vec<Namespace> = ["default", "load"]
        .iter()
        .map(|n| {
            serde_json::from_value(
                json!({"metadata": {"name": n, "uid": format!("ns-{n}"), "resourceVersion": "1"}}),
            )
            .unwrap()
        })
        .collect();
    let pod = |ns: &str, name: &str, node: &str, ip: &str, labels: Value, rv: &str| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name, "uid": format!("u-{name}"), "resourceVersion": rv, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
        }))
        .unwrap()
    };
    let policy: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"namespace": "default", "name": "bench", "uid": "u-bench", "resourceVersion": "5"},
        "spec": {"podSelector": {"matchLabels": {"app": "bench"}},
                 "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "peer"}}}]}]}
    }))
    .unwrap();
    let opts = Options {
        node_name: Some("n1".into()),
        ..Default::default()
    };
    let local = pod(
        "default",
        "bench-1",
        "n1",
        "10.42.0.5",
        json!({"app": "bench"}),
        "2",
    );
    let before = pod(
        "load",
        "peer-0",
        "ghost",
        "10.42.255.2",
        json!({"role": "peer"}),
        "3",
    );
    let after = pod(
        "load",
        "peer-0",
        "ghost",
        "10.42.255.2",
        json!({"role": "other"}),
        "7",
    );
    let mut engine = Engine::new(Recorder::default());
    // The pods first, the policy later (the bench's order): the new policy's peers come from
    // the pods already known. The peer is created without an address, which its status gets
    // next.
    let mut bare: Pod = before.clone();
    bare.status = None;
    bare.metadata.resource_version = Some("2".into());
    engine
        .sync_objects_incremental(&nss, &[local.clone(), bare], &[], &opts)
        .unwrap();
    engine
        .sync_objects_incremental(&nss, &[local.clone(), before.clone()], &[], &opts)
        .unwrap();
    engine
        .sync_objects_incremental(
            &nss,
            &[local.clone(), before.clone()],
            std::slice::from_ref(&policy),
            &opts,
        )
        .unwrap();
    let with_peer = compile(
        &Snapshot::build(
            &nss,
            &[local.clone(), before],
            std::slice::from_ref(&policy),
            &opts,
        )
        .unwrap(),
    );
    assert_eq!(
        engine.current(),
        Some(&with_peer),
        "a new policy missed an existing peer"
    );
    let stats = engine
        .sync_objects_incremental(
            &nss,
            &[local.clone(), after.clone()],
            std::slice::from_ref(&policy),
            &opts,
        )
        .unwrap();
    let full = compile(&Snapshot::build(&nss, &[local, after], &[policy], &opts).unwrap());
    assert_eq!(engine.current(), Some(&full), "incremental != full compile");
    assert!(
        stats.script_bytes > 0,
        "the label change changed nothing in the kernel"
    );
}

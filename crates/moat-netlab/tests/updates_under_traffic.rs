//! 1,000 successive policy and label changes while probes run: every probe's verdict must
//! be one that a ruleset in force during that probe gives (no leak window: nft applies each
//! update as one atomic transaction), and the final kernel ruleset must equal a fresh full
//! compile of the final state.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use moat_netlab::{Lab, LabPod, ProbeOpts, unique_prefix};
use moat_netpol::{Compiled, Engine, NftApply, Options, Proto, Snapshot, compile, render, sim};
use rand::{Rng, SeedableRng};
use serde_json::json;

const PODS: [&str; 4] = ["server-1", "server-2", "client-1", "client-2"];

fn pod(i: usize, role: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"namespace": "u", "name": PODS[i], "labels": {"role": role, "idx": i.to_string()}},
        "spec": {"containers": [{"name": "c", "ports": [{"name": "web", "containerPort": 80}]}]},
        "status": {"podIP": format!("10.42.0.{}", i + 2)}
    }))
    .expect("pod")
}

fn policy_pool() -> Vec<NetworkPolicy> {
    let p = |name: &str, spec: serde_json::Value| -> NetworkPolicy {
        serde_json::from_value(json!({"metadata": {"namespace": "u", "name": name}, "spec": spec}))
            .expect("np")
    };
    vec![
        p(
            "deny-servers",
            json!({"podSelector": {"matchLabels": {"role": "server"}}}),
        ),
        p(
            "clients-to-servers-80",
            json!({"podSelector": {"matchLabels": {"role": "server"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}], "ports": [{"port": "web"}]}]}),
        ),
        p(
            "idx0-any",
            json!({"podSelector": {"matchLabels": {"role": "server"}},
            "ingress": [{"from": [{"podSelector": {"matchExpressions": [{"key": "idx", "operator": "In", "values": ["0", "3"]}]}}]}]}),
        ),
        p(
            "clients-no-egress",
            json!({"podSelector": {"matchLabels": {"role": "client"}}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.42.0.0/30"}}], "ports": [{"port": 81}]}]}),
        ),
    ]
}

struct Probe {
    start: Instant,
    end: Instant,
    from: usize,
    to: usize,
    port: u16,
    allowed: bool,
}

fn nft_list(ns: &str) -> String {
    moat_netlab::policy_table_listing(ns).expect("nft list")
}

#[test]
fn serial_updates_under_traffic_have_no_leak_window() {
    // A root-only test fails, never skips, where it cannot run.
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root (network namespaces, nft)"
    );
    let nss: Vec<Namespace> =
        vec![serde_json::from_value(json!({"metadata": {"name": "u"}})).expect("ns")];
    let pool = policy_pool();
    let lab_pods: Vec<LabPod> = (0..4)
        .map(|i| LabPod {
            id: format!("u/{}", PODS[i]),
            ip: format!("10.42.0.{}", i + 2).parse().expect("ip"),
            listen: vec![(80, Proto::Tcp), (81, Proto::Tcp)],
        })
        .collect();
    let prefix = unique_prefix("u");
    let lab = Lab::create(&prefix, &lab_pods).expect("lab");
    let mut engine = Engine::new(lab.nft());
    let opts = Options::default();

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut roles = ["server", "server", "client", "client"].map(String::from);
    let mut active = vec![true, false, false, false];
    let snap_of = |roles: &[String; 4], active: &[bool]| -> Snapshot {
        let pods: Vec<Pod> = (0..4).map(|i| pod(i, &roles[i])).collect();
        let pols: Vec<NetworkPolicy> = pool
            .iter()
            .zip(active)
            .filter(|(_, a)| **a)
            .map(|(p, _)| p.clone())
            .collect();
        Snapshot::build(&nss, &pods, &pols, &opts).expect("valid")
    };

    // (apply started, apply finished, compiled state)
    let mut states: Vec<(Instant, Instant, Compiled)> = Vec::new();
    let s0 = snap_of(&roles, &active);
    let t = Instant::now();
    engine.sync(&s0).expect("initial");
    states.push((t, Instant::now(), compile(&s0)));

    let probes: Mutex<Vec<Probe>> = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let pairs: Vec<(usize, usize, u16)> = vec![
        (2, 0, 80),
        (3, 0, 80),
        (2, 1, 81),
        (3, 1, 80),
        (0, 2, 81),
        (1, 0, 80),
    ];
    let popts = ProbeOpts {
        timeout: Duration::from_millis(150),
        attempts: 1,
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let list: Vec<(usize, usize, u16, Proto)> = pairs
                    .iter()
                    .map(|&(a, b, p)| (a, b, p, Proto::Tcp))
                    .collect();
                let start = Instant::now();
                let res = lab.probe_all(&list, popts).expect("probe");
                let end = Instant::now();
                let mut v = probes.lock().expect("lock");
                for ((a, b, port, _), allowed) in list.into_iter().zip(res) {
                    v.push(Probe {
                        start,
                        end,
                        from: a,
                        to: b,
                        port,
                        allowed,
                    });
                }
            }
        });
        for _ in 0..1000 {
            if rng.random_bool(0.5) {
                let i = rng.random_range(0..4);
                roles[i] = if roles[i] == "server" {
                    "client".into()
                } else {
                    "server".into()
                };
            } else {
                let j = rng.random_range(0..pool.len());
                active[j] = !active[j];
            }
            let snap = snap_of(&roles, &active);
            let t = Instant::now();
            engine.sync(&snap).expect("update");
            states.push((t, Instant::now(), compile(&snap)));
        }
        stop.store(true, Ordering::Relaxed);
    });

    let probes = probes.into_inner().expect("lock");
    assert!(
        probes.len() > 100,
        "the prober ran ({} probes)",
        probes.len()
    );
    let ip = |i: usize| lab_pods[i].ip;
    let mut violations = Vec::new();
    let mut saw_allow = false;
    let mut saw_deny = false;
    for p in &probes {
        // State k can be in force from when its apply started until the next apply finished.
        let possible = states.iter().enumerate().filter(|(k, (started, _, _))| {
            let until = states.get(k + 1).map(|n| n.1);
            *started <= p.end && until.is_none_or(|u| u >= p.start)
        });
        let mut ok = false;
        for (_, (_, _, c)) in possible {
            if sim::allowed(c, ip(p.from), ip(p.to), Proto::Tcp, p.port) == p.allowed {
                ok = true;
                break;
            }
        }
        saw_allow |= p.allowed;
        saw_deny |= !p.allowed;
        if !ok {
            violations.push(format!(
                "{} -> {} :{} observed {}",
                PODS[p.from], PODS[p.to], p.port, p.allowed
            ));
        }
    }
    assert!(
        violations.is_empty(),
        "{} verdicts no ruleset in force allowed:\n{}",
        violations.len(),
        violations.join("\n")
    );
    assert!(
        saw_allow && saw_deny,
        "the changes must flip verdicts for the test to mean anything"
    );

    // Incremental history == fresh compile, in the kernel.
    let last = states.last().map(|s| s.2.clone()).expect("states");
    let scratch = format!("{prefix}s");
    assert!(
        std::process::Command::new("ip")
            .args(["netns", "add", &scratch])
            .status()
            .expect("ip")
            .success()
    );
    let res = moat_netpol::apply::Nft {
        netns: Some(scratch.clone()),
    }
    .apply(&render::full(&last))
    .map(|()| nft_list(&scratch));
    let here = nft_list(lab.host_netns());
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", &scratch])
        .status();
    assert_eq!(
        here,
        res.expect("fresh apply"),
        "incremental ruleset == fresh full compile"
    );
    assert!(engine.current() == Some(&last));
}

//! Runs every lab case on real packets: the upstream e2e NetworkPolicy cases and the seed
//! scenarios. One lab per topology; its policy state moves from case to case through the
//! incremental engine (`Engine::sync_objects_incremental`, as the node agent calls it), and
//! after the last case the kernel's ruleset must equal a fresh full compile of the same
//! state applied in a new namespace.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use moat_netlab::cases::{Case, load_dir};
use moat_netlab::manifest::{Objects, lab_pods, render_table, truth_table};
use moat_netlab::{Lab, ProbeOpts, cleanup_prefix, unique_prefix};
use moat_netpol::{Engine, NftApply, Options, Proto, compile, render, sim};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn cases_dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("cases")
        .join(sub)
}

fn objects(paths: &[&Path]) -> Objects {
    let mut o = Objects::default();
    for p in paths {
        let text = std::fs::read_to_string(p).expect("read manifest");
        o.add_yaml(&p.display().to_string(), &text)
            .expect("parse manifest");
    }
    o.finish().expect("finish");
    o
}

fn nft_list(ns: &str) -> String {
    moat_netlab::policy_table_listing(ns).expect("nft list")
}

fn run_group(topology: &Path, cases: &[Case]) -> Vec<String> {
    let mut failures = Vec::new();
    let topo = objects(&[topology]);
    let mut probes: Vec<(u16, Proto)> = cases.iter().flat_map(|c| c.probes.clone()).collect();
    probes.sort();
    probes.dedup();
    let base = topo.snapshot(&Options::default()).expect("topology valid");
    let prefix = unique_prefix("c");
    let lab = Lab::create(&prefix, &lab_pods(&base, &probes)).expect("lab");
    let mut engine = Engine::new(lab.nft());
    let opts = ProbeOpts::default();
    let mut last = None;
    for case in cases {
        let o = objects(&[topology, &case.path]);
        let nopts = Options {
            legacy_namespace_isolation: case.legacy,
            node_addrs: vec![moat_netlab::LAB_GATEWAY],
            ..Default::default()
        };
        let snap = o.snapshot(&nopts).expect("case valid");
        // The agent's path: whole object lists in, only the changes recompiled.
        engine
            .sync_objects_incremental(&o.namespaces, &o.pods, &o.policies, &nopts)
            .expect("apply");
        assert_eq!(
            engine.current(),
            Some(&compile(&snap)),
            "case {}: incremental == full compile",
            case.name
        );
        lab.flush_conntrack().expect("flush conntrack");
        let table = truth_table(&lab, &case.probes, opts).expect("probe");
        let compiled = compile(&snap);
        let mut wrong = Vec::new();
        for v in &table {
            let proto = Proto::parse(&v.protocol).expect("proto");
            let want = case.expect(&v.from, &v.to, v.port, proto);
            if v.allowed != want {
                wrong.push(format!(
                    "{} -> {} {}/{}: got {} want {}",
                    v.from, v.to, v.port, v.protocol, v.allowed, want
                ));
            }
            // The nft-free evaluator must agree with real packets too.
            let ip = |id: &str| {
                lab.pods()
                    .iter()
                    .find(|p| p.id == id)
                    .map(|p| p.ip)
                    .expect("pod ip")
            };
            let simulated = sim::allowed(&compiled, ip(&v.from), ip(&v.to), proto, v.port);
            if simulated != v.allowed {
                wrong.push(format!(
                    "sim disagrees with packets: {} -> {} {}/{}",
                    v.from, v.to, v.port, v.protocol
                ));
            }
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "case {}:\n  {}\n{}",
                case.name,
                wrong.join("\n  "),
                render_table(&table)
            ));
        }
        last = Some(compiled);
    }
    // Incremental history == fresh full compile, in the kernel.
    if let Some(c) = last {
        let scratch = format!("{prefix}s");
        let st = std::process::Command::new("ip")
            .args(["netns", "add", &scratch])
            .status()
            .expect("ip");
        assert!(st.success());
        let fresh = moat_netpol::apply::Nft {
            netns: Some(scratch.clone()),
        };
        let res = fresh.apply(&render::full(&c)).map(|()| nft_list(&scratch));
        let a = nft_list(lab.host_netns());
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &scratch])
            .status();
        let b = res.expect("full apply in a fresh namespace");
        if a != b {
            failures.push(format!("{}: incremental ruleset differs from a fresh compile:\n--- incremental\n{a}\n--- fresh\n{b}", topology.display()));
        }
    }
    drop(lab);
    assert_eq!(
        cleanup_prefix(&prefix),
        0,
        "the lab removed all its namespaces"
    );
    failures
}

fn run_dir(sub: &str) {
    // A root-only test fails, never skips, where it cannot run.
    assert!(is_root(), "needs root (network namespaces, nft)");
    let cases = load_dir(&cases_dir(sub)).expect("cases");
    assert!(!cases.is_empty());
    let mut groups: BTreeMap<PathBuf, Vec<Case>> = BTreeMap::new();
    for c in cases {
        groups.entry(c.topology.clone()).or_default().push(c);
    }
    let mut failures = Vec::new();
    for (topo, cs) in &groups {
        failures.extend(run_group(topo, cs));
    }
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn serial_upstream_e2e_cases_on_real_packets() {
    run_dir("e2e");
}

#[test]
fn serial_seed_scenarios_on_real_packets() {
    run_dir("seed");
}

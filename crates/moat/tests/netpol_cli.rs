//! `moat netpol` driven as a user would: the real binary, real namespaces and packets.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn moat() -> Command {
    Command::new(env!("CARGO_BIN_EXE_moat"))
}

fn cases() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../moat-netlab/cases")
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Lab namespaces of a given moat process (they are named `mlabl<pid>x...`).
fn lab_netns_of(pid: u32) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with(&format!("mlabl{pid}x")))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn serial_lab_json_output_matches_seed_scenario() {
    // A root-only test fails, never skips, where it cannot run.
    assert!(is_root(), "needs root (network namespaces, nft)");
    let seed = cases().join("seed");
    let out = moat()
        .args([
            "netpol", "lab", "--probe", "8080/TCP", "--output", "json", "-f",
        ])
        .arg(seed.join("kata-topology.yaml"))
        .arg("-f")
        .arg(seed.join("kata-2-allow-http-client.yaml"))
        .output()
        .expect("run moat");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 16, "4 pods x 4 pods x 1 port");
    let verdict = |from: &str, to: &str| {
        lines
            .iter()
            .find(|v| v["from"] == from && v["to"] == to)
            .map(|v| {
                (
                    v["allowed"].as_bool(),
                    v["port"].as_u64(),
                    v["protocol"].as_str().map(String::from),
                )
            })
            .expect("row")
    };
    assert_eq!(
        verdict("default/http-client", "default/test-kata-1"),
        (Some(true), Some(8080), Some("TCP".into()))
    );
    assert_eq!(
        verdict("default/other", "default/test-kata-1").0,
        Some(false)
    );
    assert_eq!(
        verdict("default/test-kata-1", "default/http-client").0,
        Some(false)
    );
}

#[test]
fn serial_lab_cleans_up_on_ctrl_c() {
    // A root-only test fails, never skips, where it cannot run.
    assert!(is_root(), "needs root (network namespaces, nft)");
    let e2e = cases().join("e2e");
    // A long per-probe timeout keeps the lab alive long enough to interrupt it.
    let mut child = moat()
        .args(["netpol", "lab", "--timeout-ms", "3000", "-f"])
        .arg(e2e.join("topology.yaml"))
        .arg("-f")
        .arg(e2e.join("02-default-deny-all.yaml"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let start = Instant::now();
    while lab_netns_of(pid).len() < 10 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "lab never came up"
        );
        assert!(
            child.try_wait().expect("wait").is_none(),
            "moat exited early"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(130));
    assert!(
        lab_netns_of(pid).is_empty(),
        "left behind: {:?}",
        lab_netns_of(pid)
    );
}

#[test]
fn explain_names_the_isolating_policy_and_the_allowing_rule() {
    let e2e = cases().join("e2e");
    let run = |from: &str| {
        moat()
            .args([
                "netpol", "explain", "--port", "80/TCP", "--to", "x/a", "--from", from, "-f",
            ])
            .arg(e2e.join("topology.yaml"))
            .arg("-f")
            .arg(e2e.join("10-podselector-and-namespaceselector.yaml"))
            .output()
            .expect("run")
    };
    let denied = run("y/c");
    assert_eq!(denied.status.code(), Some(1));
    let text = String::from_utf8_lossy(&denied.stdout);
    assert!(
        text.contains("DENIED") && text.contains("isolated by x/and"),
        "{text}"
    );
    let allowed = run("y/b");
    assert_eq!(allowed.status.code(), Some(0));
    let text = String::from_utf8_lossy(&allowed.stdout);
    assert!(
        text.contains("ALLOWED") && text.contains("allowed by x/and ingress[0]"),
        "{text}"
    );
}

#[test]
fn bad_policy_is_refused_before_anything_is_built() {
    let dir = tempfile::tempdir().expect("tmp");
    let f = dir.path().join("bad.yaml");
    std::fs::write(
        &f,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/40}}]\n    ports: [{endPort: 90}]\n",
    )
    .expect("write");
    let out = moat()
        .args(["netpol", "lab", "-f"])
        .arg(&f)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.ingress[0].from[0].ipBlock.cidr"),
        "{err}"
    );
    assert!(err.contains("spec.ingress[0].ports[0].endPort"), "{err}");

    std::fs::write(
        &f,
        "kind: Deployment\napiVersion: apps/v1\nmetadata: {name: x}\n",
    )
    .expect("write");
    let out = moat()
        .args(["netpol", "lab", "-f"])
        .arg(&f)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("kind \"Deployment\" is not used by the lab")
    );
}

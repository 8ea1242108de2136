//! Runs the real binary against a temporary --root.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_moat-runtime"))
}

#[test]
fn state_of_unknown_container_fails_and_logs_json() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.json");
    let out = bin()
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--log")
        .arg(&log)
        .args(["--log-format", "json", "state", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let line = std::fs::read_to_string(&log).unwrap();
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(v["level"], "error");
    assert!(v["msg"].as_str().unwrap().contains("nope"), "{v}");
}

#[test]
fn list_and_state_read_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let store = moat_runtime::state::StateStore::new(&root);
    // A process standing for the container (its command line names the id, as a shim's does).
    // `read` is a builtin: no child process outlives the kill below.
    let mut stand_in = std::process::Command::new("sh")
        .args(["-c", "read x", "c1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = stand_in.id() as i32;
    store
        .create(&moat_runtime::state::State {
            oci_version: moat_runtime::state::OCI_VERSION.into(),
            id: "c1".into(),
            status: moat_runtime::state::Status::Created,
            pid: Some(pid),
            bundle: "/bundle".into(),
            annotations: Default::default(),
        })
        .unwrap();
    let out = bin()
        .arg("--root")
        .arg(&root)
        .args(["list", "--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["id"], "c1");
    let out = bin()
        .arg("--root")
        .arg(&root)
        .args(["state", "c1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "created");
    assert_eq!(v["pid"], pid);
    // Once that process is gone the container reads as stopped, as runc reports a dead init.
    stand_in.kill().unwrap();
    stand_in.wait().unwrap();
    let out = bin()
        .arg("--root")
        .arg(&root)
        .args(["state", "c1"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "stopped");
}

#[test]
fn env_reports_config_and_a_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("runtime.toml");
    std::fs::write(&cfg, "[hypervisor]\naccel = \"tcg\"\nvcpus = 2\n").unwrap();
    let out = bin().arg("--config").arg(&cfg).arg("env").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["config"]["hypervisor"]["vcpus"], 2);
    assert_eq!(v["accel"]["accel"], "tcg");
    // A bad config is a clear error, not silent defaults.
    std::fs::write(&cfg, "[hypervisor]\nvcpus = 0\n").unwrap();
    let out = bin().arg("--config").arg(&cfg).arg("env").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("vcpus"));
}

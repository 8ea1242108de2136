//! Jobs and DaemonSets with real pods: `moat server --agent` in a network namespace of the test's own (no
//! route out; removed with everything under it), pods under runc with the busybox image of
//! scripts/busybox-image.sh, driven by the real kubectl. `kubectl create job` completes and
//! `kubectl logs job/NAME` prints its output; an Indexed Job of 5 completions, 2 at a time,
//! ends with 5 succeeded pods whose output shows indices 0–4 (JOB_COMPLETION_INDEX through
//! the downward API); a failing Job stops at its backoffLimit with Failed /
//! BackoffLimitExceeded and the container's exit code; ttlSecondsAfterFinished removes a Job
//! and its pods. And the CI use case: a `runtimeClassName: kata` Job whose pods run in
//! microVMs (moat-runtime under TCG with the guest assets of scripts/guest-assets.sh). A
//! DaemonSet's pod lands on the agent's node through the scheduler (pinned by node
//! affinity) and `kubectl rollout restart` replaces it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const KUBECTL: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.33";
/// Tagged (not `latest`) so the default pull policy is IfNotPresent: nothing is pulled.
const IMAGE: &str = "localhost/busybox:1";

fn run(cmd: &mut Command) -> (bool, String, String) {
    let o = cmd.output().expect("run command");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn moat() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_moat"))
}

struct Lab {
    ns: String,
    dir: tempfile::TempDir,
    server: Option<Child>,
}

impl Lab {
    fn new() -> Lab {
        let ns = format!("moat-jobs-{}", std::process::id());
        let (ok, _, err) = run(Command::new("ip").args(["netns", "add", &ns]));
        assert!(ok, "ip netns add (this test needs root): {err}");
        let lab = Lab {
            ns,
            dir: tempfile::tempdir().expect("tempdir"),
            server: None,
        };
        let (ok, _, err) = run(lab.in_ns("ip").args(["link", "set", "lo", "up"]));
        assert!(ok, "lo up: {err}");
        lab
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn in_ns(&self, prog: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns)).arg(prog);
        c
    }

    fn start(&mut self) {
        self.start_with(&[]);
    }

    fn start_with(&mut self, extra: &[&str]) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/busybox-image.sh");
        let (ok, _, err) = run(Command::new("bash").arg(script).arg(self.path("img")));
        assert!(ok, "busybox-image.sh: {err}");
        let (ok, _, err) = run(Command::new(moat())
            .args(["image", "--root"])
            .arg(self.path("images"))
            .arg("import")
            .arg(self.path("img/busybox.oci.tar"))
            .args(["--name", IMAGE]));
        assert!(ok, "image import: {err}");
        std::fs::create_dir_all(self.path("cni-conf")).expect("cni dir");
        let log = std::fs::File::create(self.path("server.log")).expect("log");
        let child = self
            .in_ns(moat().to_str().expect("utf-8 path"))
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(self.dir.path())
            .args([
                "--agent",
                "--node-name",
                "jobs-node",
                "--pod-cidr",
                "10.42.78.0/24",
            ])
            .args(["--agent-listen", "127.0.0.1:0", "--run-dir"])
            .arg(self.path("run"))
            .arg("--log-dir")
            .arg(self.path("logs"))
            .arg("--image-root")
            .arg(self.path("images"))
            .arg("--cni-conf-dir")
            .arg(self.path("cni-conf"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start moat server");
        self.server = Some(child);
        self.wait("kubeconfig", 30, || self.path("kubeconfig.yaml").exists());
    }

    fn wait(&self, what: &str, secs: u64, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while !f() {
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "timed out waiting for {what}; server log:\n{}",
                std::fs::read_to_string(self.path("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        use std::io::Write;
        let mut ch = self
            .in_ns(KUBECTL)
            .arg("--kubeconfig")
            .arg(self.path("kubeconfig.yaml"))
            .arg("--cache-dir")
            .arg(self.path("kcache"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        if let Some(mut si) = ch.stdin.take() {
            let _ = si.write_all(stdin.unwrap_or("").as_bytes());
        }
        let o = ch.wait_with_output().expect("kubectl output");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kubectl(args, None);
        assert!(ok, "kubectl {args:?}: {err}");
        out
    }

    fn apply(&self, manifest: &str) {
        let (ok, _, err) = self.kubectl(&["apply", "-f", "-"], Some(manifest));
        assert!(ok, "apply: {err}");
    }

    fn pods_of(&self, job: &str) -> Vec<Value> {
        let out = self.ok(&[
            "get",
            "pods",
            "-l",
            &format!("job-name={job}"),
            "-o",
            "json",
        ]);
        serde_json::from_str::<Value>(&out).expect("json")["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn runtime_root(&self) -> PathBuf {
        self.path("run/runtime/runc")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let (_, list, _) = run(Command::new("runc")
            .arg("--root")
            .arg(self.runtime_root())
            .args(["list", "-q"]));
        for id in list.lines().filter(|l| !l.is_empty()) {
            let _ = run(Command::new("runc")
                .arg("--root")
                .arg(self.runtime_root())
                .args(["delete", "--force", id]));
        }
        let root = self.dir.path().display().to_string();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(String::from))
            .filter(|m| m.starts_with(&root))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = run(Command::new("umount").args(["-l", &m]));
        }
        let _ = run(Command::new("ip").args(["netns", "del", &self.ns]));
    }
}

fn job(name: &str, extra_spec: &str, command: &str) -> String {
    format!(
        r#"
apiVersion: batch/v1
kind: Job
metadata: {{name: {name}}}
spec:
{extra_spec}
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: {IMAGE}
        command: ["sh", "-c", {command:?}]
"#
    )
}

#[test]
fn serial_jobs_run_real_pods_to_completion_and_failure() {
    let mut lab = Lab::new();
    lab.start();

    // kubectl create job, wait, logs job/NAME.
    lab.ok(&[
        "create",
        "job",
        "hello",
        &format!("--image={IMAGE}"),
        "--",
        "echo",
        "hello from a job",
    ]);
    lab.ok(&[
        "wait",
        "--for=condition=complete",
        "job/hello",
        "--timeout=120s",
    ]);
    assert_eq!(lab.ok(&["logs", "job/hello"]).trim(), "hello from a job");

    // Indexed, 5 completions, 2 at a time: each pod prints its index.
    lab.apply(&job(
        "idx",
        "  completions: 5\n  parallelism: 2\n  completionMode: Indexed",
        "echo index=$JOB_COMPLETION_INDEX",
    ));
    lab.ok(&[
        "wait",
        "--for=condition=complete",
        "job/idx",
        "--timeout=180s",
    ]);
    let pods = lab.pods_of("idx");
    assert_eq!(pods.len(), 5);
    let mut seen: Vec<String> = pods
        .iter()
        .map(|p| {
            assert_eq!(p["status"]["phase"], "Succeeded");
            let name = p["metadata"]["name"].as_str().expect("name");
            lab.ok(&["logs", name]).trim().to_string()
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        ["index=0", "index=1", "index=2", "index=3", "index=4"]
    );
    let st = lab.ok(&[
        "get",
        "job",
        "idx",
        "-o",
        "jsonpath={.status.succeeded} {.status.completedIndexes}",
    ]);
    assert_eq!(st, "5 0-4");

    // A failing Job: backoffLimit 1 means two failed pods, then Failed.
    lab.apply(&job("boom", "  backoffLimit: 1", "echo failing; exit 3"));
    lab.ok(&[
        "wait",
        "--for=condition=failed",
        "job/boom",
        "--timeout=120s",
    ]);
    let out = lab.ok(&["get", "job", "boom", "-o", "json"]);
    let b: Value = serde_json::from_str(&out).expect("json");
    let failed = b["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Failed"))
        .cloned()
        .expect("Failed condition");
    assert_eq!(failed["reason"], "BackoffLimitExceeded");
    assert_eq!(b["status"]["failed"], 2);
    let pods = lab.pods_of("boom");
    assert_eq!(pods.len(), 2);
    for p in &pods {
        assert_eq!(p["status"]["phase"], "Failed");
        assert_eq!(
            p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
            3
        );
    }

    // ttlSecondsAfterFinished: the Job and its pods go.
    lab.apply(&job("short", "  ttlSecondsAfterFinished: 2", "true"));
    lab.wait("the expired Job to go", 120, || {
        !lab.kubectl(&["get", "job", "short"], None).0
    });
    lab.wait("its pods to go", 120, || lab.pods_of("short").is_empty());
}

/// `kata` RuntimeClass handler: moat-runtime (TCG, the installed guest assets) behind a
/// wrapper naming its config; VMs left by a failed run are deleted on drop.
struct Kata {
    runtime: PathBuf,
    root: PathBuf,
    config: PathBuf,
    handlers: PathBuf,
}

impl Kata {
    fn new(lab: &Lab) -> Kata {
        let root = lab.path("kata-root");
        let f = common::lab::kata_files(lab.dir.path(), Some(&root));
        let (runtime, config, handlers) = (f.runtime, f.config, f.handlers);
        Kata {
            runtime,
            root,
            config,
            handlers,
        }
    }
}

impl Drop for Kata {
    fn drop(&mut self) {
        let ids = Command::new(&self.runtime)
            .arg("--root")
            .arg(&self.root)
            .args(["list", "-q"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for id in ids.lines().filter(|l| !l.is_empty()) {
            let _ = Command::new(&self.runtime)
                .arg("--root")
                .arg(&self.root)
                .arg("--config")
                .arg(&self.config)
                .args(["delete", "--force", id])
                .output();
        }
    }
}

#[test]
fn serial_jobs_kata_job_runs_its_pods_in_vms_and_completes() {
    let mut lab = Lab::new();
    let kata = Kata::new(&lab);
    lab.start_with(&["--runtime-config", kata.handlers.to_str().expect("utf-8")]);
    lab.apply(
        "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata: {name: kata}\nhandler: kata\n",
    );
    // A VM boots its own kernel with moat-runtime's command line: /proc/cmdline tells where
    // a pod ran (a runc pod would see the host's).
    let host_cmdline = std::fs::read_to_string("/proc/cmdline").expect("cmdline");
    lab.apply(
        &job(
            "ci",
            "  completions: 2\n  parallelism: 2",
            "echo cmdline=$(cat /proc/cmdline)",
        )
        .replace(
            "      restartPolicy: Never",
            "      restartPolicy: Never\n      runtimeClassName: kata",
        ),
    );
    lab.ok(&[
        "wait",
        "--for=condition=complete",
        "job/ci",
        "--timeout=300s",
    ]);
    let pods = lab.pods_of("ci");
    assert_eq!(pods.len(), 2);
    for p in &pods {
        assert_eq!(p["spec"]["runtimeClassName"], "kata");
        assert_eq!(p["status"]["phase"], "Succeeded");
        let name = p["metadata"]["name"].as_str().expect("name");
        let out = lab.ok(&["logs", name]);
        let cmdline = out.trim().strip_prefix("cmdline=").expect("cmdline line");
        assert!(!cmdline.is_empty());
        assert_ne!(cmdline, host_cmdline.trim(), "the pod ran in a VM");
    }
    // The VMs are gone once the pods are: deleting the Job takes them.
    lab.ok(&[
        "delete",
        "job",
        "ci",
        "--cascade=foreground",
        "--timeout=120s",
    ]);
    let left = Command::new(&kata.runtime)
        .arg("--root")
        .arg(&kata.root)
        .args(["list", "-q"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    assert_eq!(left, "", "no VM sandbox left");
}

#[test]
fn serial_workloads_daemonset_runs_on_the_node_and_restarts() {
    let mut lab = Lab::new();
    lab.start();
    lab.apply(&format!(
        r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: agent}}
spec:
  selector: {{matchLabels: {{app: agent}}}}
  template:
    metadata: {{labels: {{app: agent}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: {IMAGE}
        command: ["sh", "-c", "echo on $(hostname); trap 'exit 0' TERM; sleep 3600 & wait"]
"#
    ));
    lab.ok(&["rollout", "status", "ds/agent", "--timeout=120s"]);
    let running = |lab: &Lab| -> Vec<(String, String)> {
        let out = lab.ok(&["get", "pods", "-l", "app=agent", "-o", "json"]);
        serde_json::from_str::<Value>(&out).expect("json")["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|p| {
                p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
            })
            .map(|p| {
                (
                    p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                    p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    let first = running(&lab);
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].1, "jobs-node");
    let logs = lab.ok(&["logs", "ds/agent"]);
    assert_eq!(logs.trim(), format!("on {}", first[0].0));
    lab.ok(&["rollout", "restart", "ds/agent"]);
    lab.ok(&["rollout", "status", "ds/agent", "--timeout=120s"]);
    lab.wait("the replacement pod", 60, || {
        let now = running(&lab);
        now.len() == 1 && now[0].0 != first[0].0
    });
    lab.ok(&[
        "delete",
        "ds",
        "agent",
        "--cascade=foreground",
        "--timeout=120s",
    ]);
    lab.wait("the daemon pods to go", 60, || running(&lab).is_empty());
}

//! A `moat cluster` of the test's own: created under a short temporary root with its own
//! image store (busybox imported), driven with the real kubectl through the kubeconfig
//! `create` writes, and deleted on drop, even when the test fails.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::lab::{KUBECTL, moat_bin, run};

pub struct Cluster {
    pub root: tempfile::TempDir,
    pub name: String,
    pub deleted: bool,
}

/// What the host's root network namespace holds: interfaces with addresses, every route
/// table, the nft ruleset.
pub fn host_state() -> String {
    let mut out = String::new();
    for argv in [
        &["ip", "-br", "addr"][..],
        &["ip", "route", "show", "table", "all"],
        &["nft", "list", "ruleset"],
    ] {
        let (ok, o, e) = run(Command::new(argv[0]).args(&argv[1..]));
        assert!(ok, "{argv:?}: {e}");
        out.push_str(&o);
    }
    out
}

impl Cluster {
    pub fn root_path(&self) -> PathBuf {
        self.root.path().to_path_buf()
    }

    pub fn moat(&self, args: &[&str]) -> (bool, String, String) {
        run(Command::new(moat_bin())
            .arg("cluster")
            .arg("--root")
            .arg(self.root.path())
            .args(args))
    }

    /// A root with busybox imported into its image store, and no cluster yet.
    pub fn prepare(name: &str) -> Cluster {
        let root = tempfile::Builder::new()
            .prefix("mc")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let c = Cluster {
            root,
            name: name.to_string(),
            deleted: false,
        };
        let img = c.root.path().join("img");
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../scripts/busybox-image.sh"
        );
        let (ok, _, err) = run(Command::new("bash").arg(script).arg(&img));
        assert!(ok, "busybox-image.sh: {err}");
        let (ok, _, err) = run(Command::new(moat_bin())
            .args(["image", "--root"])
            .arg(c.images())
            .arg("import")
            .arg(img.join("busybox.oci.tar"))
            .args(["--name", "localhost/busybox:latest"]));
        assert!(ok, "image import: {err}");
        c
    }

    pub fn images(&self) -> PathBuf {
        self.root.path().join("images")
    }

    pub fn create(name: &str, backend: &str, nodes: usize, extra: &[&str]) -> Cluster {
        Cluster::prepare(name).start(backend, nodes, extra)
    }

    /// `moat cluster create` in a prepared root (which may hold files the flags name).
    pub fn start(self, backend: &str, nodes: usize, extra: &[&str]) -> Cluster {
        let c = self;
        let name = c.name.clone();
        let name = name.as_str();
        let n = nodes.to_string();
        let images = c.images().display().to_string();
        let mut args = vec![
            "create",
            "--name",
            name,
            "--nodes",
            &n,
            "--backend",
            backend,
            "--image-root",
            &images,
        ];
        args.extend_from_slice(extra);
        let (ok, out, err) = c.moat(&args);
        assert!(ok, "moat cluster create: {out}\n{err}");
        assert!(out.contains("KUBECONFIG="), "{out}");
        c
    }

    pub fn node(&self, i: usize) -> String {
        format!("{}-{i}", self.name)
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.root.path().join(&self.name).join("kubeconfig.yaml")
    }

    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        let mut c = Command::new(KUBECTL);
        c.arg("--kubeconfig").arg(self.kubeconfig()).args(args);
        match stdin {
            None => run(&mut c),
            Some(s) => {
                use std::io::Write;
                let mut child = c
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("kubectl");
                child
                    .stdin
                    .take()
                    .expect("stdin")
                    .write_all(s.as_bytes())
                    .expect("write");
                let o = child.wait_with_output().expect("kubectl");
                (
                    o.status.success(),
                    String::from_utf8_lossy(&o.stdout).into_owned(),
                    String::from_utf8_lossy(&o.stderr).into_owned(),
                )
            }
        }
    }

    pub fn apply(&self, yaml: &str) {
        let (ok, out, err) = self.kubectl(&["apply", "-f", "-"], Some(yaml));
        assert!(ok, "apply: {out}{err}\n{yaml}");
    }

    /// Runs `argv` in node `i`'s network namespace through `moat cluster exec`.
    pub fn exec(&self, i: usize, argv: &[&str]) -> (bool, String, String) {
        let node = self.node(i);
        let mut args = vec!["exec", "--name", &self.name, &node, "--"];
        args.extend_from_slice(argv);
        self.moat(&args)
    }

    pub fn wait(&self, what: &str, secs: u64, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while !f() {
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "timed out waiting for {what}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The tail of every node's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(self.root.path().join(&self.name))
            .into_iter()
            .flatten()
            .flatten()
        {
            let log = e.path().join("node.log");
            if let Ok(t) = std::fs::read_to_string(&log) {
                let lines: Vec<&str> = t.lines().collect();
                let tail = lines[lines.len().saturating_sub(15)..].join("\n");
                out.push_str(&format!("--- {}\n{tail}\n", log.display()));
            }
        }
        out
    }

    pub fn pod(&self, name: &str) -> Option<Value> {
        self.pod_in("default", name)
    }

    pub fn pod_in(&self, ns: &str, name: &str) -> Option<Value> {
        let (ok, out, _) = self.kubectl(&["-n", ns, "get", "pod", name, "-o", "json"], None);
        if !ok {
            return None;
        }
        serde_json::from_str(&out).ok()
    }

    /// Waits for the pod to run and returns its IP.
    pub fn running_ip(&self, name: &str) -> String {
        self.running_ip_in("default", name)
    }

    pub fn running_ip_in(&self, ns: &str, name: &str) -> String {
        let mut ip = String::new();
        self.wait(&format!("pod {ns}/{name} running"), 90, || {
            if let Some(p) = self.pod_in(ns, name)
                && p["status"]["phase"] == "Running"
                && let Some(i) = p["status"]["podIP"].as_str()
            {
                ip = i.to_string();
                return true;
            }
            false
        });
        ip
    }

    /// [`Cluster::running_ip`] with a limit of `secs` (a VM boots under TCG).
    pub fn running_ip_within(&self, name: &str, secs: u64) -> String {
        let mut ip = String::new();
        self.wait(&format!("pod {name} running"), secs, || {
            if let Some(p) = self.pod(name)
                && p["status"]["phase"] == "Running"
                && let Some(i) = p["status"]["podIP"].as_str()
            {
                ip = i.to_string();
                return true;
            }
            false
        });
        ip
    }

    /// `kubectl exec POD -- timeout 10 wget -qO- URL` (busybox's own `wget -T` crashes in
    /// this build, so the deadline is `timeout`'s).
    pub fn fetch_from(&self, pod: &str, url: &str) -> (bool, String, String) {
        self.kubectl(
            &["exec", pod, "--", "timeout", "10", "wget", "-qO-", url],
            None,
        )
    }

    /// QEMU processes whose command line names `dir` (a node's run dir, say).
    pub fn qemus_under(&self, dir: &std::path::Path) -> usize {
        let dir = dir.display().to_string();
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                let c = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                let c = String::from_utf8_lossy(&c);
                c.contains("qemu-system") && c.contains(&dir)
            })
            .count()
    }

    pub fn delete(&mut self) {
        if self.deleted {
            return;
        }
        let (ok, out, err) = self.moat(&["delete", "--name", &self.name]);
        assert!(ok, "moat cluster delete: {out}{err}");
        self.deleted = true;
    }

    /// What the cluster could leave behind: its namespaces, mounts under its root, cgroup
    /// directories in any hierarchy, processes whose command line names its root (QEMU
    /// among them).
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let prefix = format!("moat-{}-", self.name);
        for e in std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
        {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&prefix) {
                left.push(format!("netns {n}"));
            }
        }
        // Node dirs hold the runtimes' state (runc's and moat-runtime's roots, the VMs'
        // sockets and shared dirs): delete removes the whole cluster directory.
        let dir = self.root.path().join(&self.name);
        if dir.exists() {
            left.push(format!("directory {}", dir.display()));
        }
        let root = self.root.path().display().to_string();
        for l in std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
        {
            if let Some(m) = l.split(' ').nth(4)
                && m.starts_with(&root)
            {
                left.push(format!("mount {m}"));
            }
        }
        let cg = format!("moat-cluster-{}", self.name);
        for e in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.path().join(&cg).exists() {
                left.push(format!("cgroup {}", e.path().join(&cg).display()));
            }
        }
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&root) {
                left.push(format!("process {cmd}"));
            }
        }
        left
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.deleted {
            let _ = self.moat(&["delete", "--name", &self.name]);
        }
    }
}

/// A `kata` runtime handler for every node of a cluster: the moat-runtime built beside the
/// test's moat, under TCG, with the guest assets scripts/guest-assets.sh built, behind a
/// wrapper naming its config; all three files under `dir` (the cluster's root, so whatever
/// names them is counted by [`Cluster::leftovers`]). No `root`: each node keeps its VMs'
/// state under its own run dir. Returns the `--runtime-config` file. Panics (the test fails)
/// when the assets or the binary are missing.
pub fn kata_handler(dir: &std::path::Path) -> PathBuf {
    super::lab::kata_files(dir, None).handlers
}

/// Holds `/tmp/moat-serial.lock` exclusively until dropped: tests that make namespaces run
/// one at a time across every process on the machine, not only within one nextest run.
pub fn serial_lock() -> nix::fcntl::Flock<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open("/tmp/moat-serial.lock")
        .expect("open /tmp/moat-serial.lock");
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("flock /tmp/moat-serial.lock")
}

/// A pod pinned to `node` serving HTTP on 8080 (`/` its name, `/cgi-bin/ip` the caller's
/// address as the pod sees it).
pub fn web_pod(name: &str, node: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: web}}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: localhost/busybox:latest
    imagePullPolicy: IfNotPresent
    command:
    - sh
    - -c
    - |
      mkdir -p /www/cgi-bin
      printf '#!/bin/sh\necho Content-Type: text/plain\necho\necho $REMOTE_ADDR\n' > /www/cgi-bin/ip
      chmod +x /www/cgi-bin/ip
      hostname > /www/index.html
      exec httpd -f -p 8080 -h /www
"#
    )
}

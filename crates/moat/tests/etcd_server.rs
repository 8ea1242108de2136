//! `moat server --datastore-endpoint` on a real etcd (Debian's etcd-server, started by each
//! test on loopback ports of its own): what only an external datastore brings — history
//! compacted by etcd, etcd restarting under a running server, two servers on one etcd.
//! The full kubectl scenario and kill -9 of the server on etcd are in server_kubectl.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Kubectl, Server, eventually};
use moat_store::etcd::LocalEtcd;

fn rv(v: &serde_json::Value) -> i64 {
    v["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("resourceVersion")
}

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web, labels: {app: web}}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: busybox, command: [sleep, '3600']}]
";

/// `kubectl wait --for=delete` runs an informer: it lists, watches, and re-lists when its
/// watch fails or expires, which is what every controller does.
struct Waiter {
    child: Child,
    log: Arc<Mutex<String>>,
    reader: std::thread::JoinHandle<()>,
}

impl Waiter {
    /// Starts the wait and returns once its informer is watching.
    fn start(k: &Kubectl, what: &str) -> Waiter {
        let mut child = k
            .cmd()
            .args(["wait", "--for=delete", what, "--timeout=120s", "-v=6"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl wait");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap_or_else(|p| p.into_inner());
                l.push_str(&line);
                l.push('\n');
            }
        });
        let w = Waiter { child, log, reader };
        eventually("kubectl wait is watching", Duration::from_secs(30), || {
            w.log()
                .lines()
                .any(|l| l.contains("watch=true") && l.contains("200 OK"))
        });
        w
    }

    fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits for kubectl to report the deletion; returns its request log.
    fn condition_met(self) -> String {
        let out = self.child.wait_with_output().expect("wait output");
        let _ = self.reader.join();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert!(
            out.status.success() && stdout.contains("condition met"),
            "{stdout}\n{log}"
        );
        log
    }
}

fn no_panic(s: &Server) {
    let log = std::fs::read_to_string(s.dir.join("server.log")).unwrap_or_default();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn watch_after_etcd_compaction_gets_410_and_kubectl_recovers() {
    let etcd_dir = tempfile::tempdir().expect("tmp");
    let etcd = LocalEtcd::start(etcd_dir.path()).expect("start etcd");
    let dir = tempfile::tempdir().expect("tmp");
    let s = Server::start(
        dir.path(),
        &[
            "--datastore-endpoint",
            &etcd.url,
            "--disable-controllers",
            "--compaction-interval",
            "1s",
            "--max-watch-seconds",
            "2",
        ],
    );
    let k = s.kubectl("32");
    k.ok(&["create", "cm", "a"]);
    let old = rv(&k.json(&["get", "cm", "a"])).to_string();
    let waiter = Waiter::start(&k, "cm/a");
    // Writes move etcd's revision on; the server's compaction loop compacts etcd behind
    // them.
    let watch_old = format!("/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={old}");
    for i in 0..20 {
        k.ok(&["create", "cm", &format!("x{i}")]);
        std::thread::sleep(Duration::from_millis(150));
    }
    eventually(
        "etcd compacted past the old revision",
        Duration::from_secs(30),
        || {
            let raw = k.ok(&["get", "--raw", &watch_old]);
            raw.contains("\"type\":\"ERROR\"") && raw.contains("\"code\":410")
        },
    );
    let list_old = format!(
        "/api/v1/namespaces/default/configmaps?resourceVersion={old}&resourceVersionMatch=Exact"
    );
    let o = k.run(&["get", "--raw", &list_old]);
    assert!(
        !o.ok && (o.stderr.contains("Expired") || o.stderr.contains("410")),
        "a list at a compacted revision is 410 Expired: {}",
        o.stderr
    );
    k.ok(&["delete", "cm", "a"]);
    let log = waiter.condition_met();
    let requests: Vec<&str> = log.lines().filter(|l| l.contains("/configmaps")).collect();
    assert!(
        requests
            .iter()
            .any(|l| l.contains("watch=true") && !l.contains(&format!("resourceVersion={old}&"))),
        "the informer watched again from a newer revision: {requests:#?}"
    );
    no_panic(&s);
}

#[test]
fn server_rides_out_an_etcd_restart() {
    let etcd_dir = tempfile::tempdir().expect("tmp");
    let mut etcd = LocalEtcd::start(etcd_dir.path()).expect("start etcd");
    let dir = tempfile::tempdir().expect("tmp");
    let mut s = Server::start(
        dir.path(),
        &[
            "--datastore-endpoint",
            &etcd.url,
            "--disable-controllers",
            "--max-watch-seconds",
            "5",
        ],
    );
    let k = s.kubectl("32");
    k.ok(&["create", "cm", "a", "--from-literal=k=v"]);
    k.ok_stdin(&["apply", "--validate=false", "-f", "-"], DEPLOYMENT);
    let cm = k.json(&["get", "cm", "a"]);
    let deploy = k.json(&["get", "deploy", "web"]);
    let waiter = Waiter::start(&k, "cm/a");

    etcd.stop();
    let err = k.fails(&["get", "cm", "a"]);
    assert!(err.contains("storage"), "a clear storage error: {err}");
    assert!(
        k.fails(&["create", "cm", "b"]).contains("storage"),
        "writes fail while etcd is down"
    );
    etcd.restart().expect("restart etcd");

    eventually(
        "the server reaches etcd again",
        Duration::from_secs(30),
        || k.run(&["get", "cm", "a"]).ok,
    );
    assert_eq!(
        k.json(&["get", "cm", "a"]),
        cm,
        "same object, same resourceVersion"
    );
    assert_eq!(k.json(&["get", "deploy", "web"]), deploy);
    k.ok(&["create", "cm", "b"]);
    assert!(
        rv(&k.json(&["get", "cm", "b"])) > rv(&deploy),
        "revisions continue above the old ones"
    );
    // The failed create while etcd was down stored nothing: b was created just now.
    k.ok(&["delete", "cm", "a"]);
    waiter.condition_met();

    // And a restart of the server itself finds everything in etcd.
    s.restart();
    let k = s.kubectl("32");
    assert!(k.run(&["get", "cm", "a"]).stderr.contains("NotFound"));
    assert_eq!(k.json(&["get", "deploy", "web"]), deploy);
    k.ok_stdin(
        &["apply", "--validate=false", "-f", "-"],
        &DEPLOYMENT.replace("replicas: 2", "replicas: 3"),
    );
    assert_eq!(k.json(&["get", "deploy", "web"])["spec"]["replicas"], 3);
    k.ok(&["delete", "deploy", "web"]);
    no_panic(&s);
}

#[test]
fn two_servers_on_one_etcd_see_each_others_writes() {
    let etcd_dir = tempfile::tempdir().expect("tmp");
    let etcd = LocalEtcd::start(etcd_dir.path()).expect("start etcd");
    let (da, db) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let a = Server::start(
        da.path(),
        &["--datastore-endpoint", &etcd.url, "--disable-controllers"],
    );
    let b = Server::start(
        db.path(),
        &[
            "--datastore-endpoint",
            &etcd.url,
            "--disable-controllers",
            "--max-watch-seconds",
            "25",
        ],
    );
    let (ka, kb) = (a.kubectl("32"), b.kubectl("33"));
    ka.ok(&["create", "cm", "shared", "--from-literal=k=v"]);
    let via_a = ka.json(&["get", "cm", "shared"]);
    assert_eq!(
        kb.json(&["get", "cm", "shared"]),
        via_a,
        "one store behind both"
    );
    let waiter = Waiter::start(&kb, "cm/shared");

    // A watch on B that sees no change under its prefix still learns, through etcd's
    // progress notifications, how far the store has moved (a bookmark) — here from a write
    // through A elsewhere.
    let bookmark_watch = kb
        .cmd()
        .args([
            "get",
            "--raw",
            &format!(
                "/api/v1/namespaces/default/configmaps?watch=1&allowWatchBookmarks=true&resourceVersion={}",
                rv(&via_a)
            ),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("raw watch");
    std::thread::sleep(Duration::from_secs(1));
    ka.ok(&["create", "cm", "elsewhere", "-n", "kube-system"]);
    let elsewhere = rv(&ka.json(&["get", "cm", "elsewhere", "-n", "kube-system"]));
    let out = bookmark_watch.wait_with_output().expect("watch output");
    let lines = String::from_utf8_lossy(&out.stdout).into_owned();
    let bookmark = lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["type"] == "BOOKMARK")
        .unwrap_or_else(|| {
            panic!(
                "no bookmark in 25 s of watch: {lines}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(
        rv(&bookmark["object"]) >= elsewhere,
        "the bookmark covers the write elsewhere: {bookmark}"
    );
    assert!(
        !lines.contains("\"ADDED\""),
        "nothing changed under the prefix: {lines}"
    );

    ka.ok(&["delete", "cm", "shared"]);
    waiter.condition_met();
    assert!(kb.run(&["get", "cm", "shared"]).stderr.contains("NotFound"));
    no_panic(&a);
    no_panic(&b);
}

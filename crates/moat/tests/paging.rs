//! Issue 18's paging bug, with the real kubectl on the embedded store and on a real etcd:
//! after the store sat idle through compactions, every multi-page list failed on its second
//! page (`Error from server (Expired): The provided continue parameter is too old...`), so
//! `kubectl get` of more than 500 objects listed 500. The compaction now keeps the revision
//! seen one interval ago readable, as kube-apiserver's does.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::time::Duration;

use common::{Kubectl, Server, eventually};
use moat_store::etcd::LocalEtcd;

const OBJECTS: usize = 1500;
/// Short, so "idle past two compactions" is seconds; the flag is the server's own.
const INTERVAL_SECS: u64 = 1;

/// Creates the objects with kubectl, in batches that fit kubectl's client-side rate-limit
/// burst (300), run side by side; client-side validation off, as it costs more CPU than
/// the create itself and is not what is tested.
fn many_configmaps(k: &Kubectl) {
    use std::io::Write;
    const BATCH: usize = 250;
    let children: Vec<_> = (0..OBJECTS)
        .step_by(BATCH)
        .map(|from| {
            let docs: String = (from..(from + BATCH).min(OBJECTS))
                .map(|i| {
                    format!(
                        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm-{i:04}, labels: {{x: val}}}}\ndata: {{i: '{i}'}}\n---\n"
                    )
                })
                .collect();
            let mut c = k
                .cmd()
                .args(["create", "--validate=false", "-o", "name", "-f", "-"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("kubectl create");
            c.stdin
                .take()
                .expect("stdin")
                .write_all(docs.as_bytes())
                .expect("write stdin");
            c
        })
        .collect();
    let mut created = 0;
    for c in children {
        let o = c.wait_with_output().expect("kubectl create");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        created += String::from_utf8_lossy(&o.stdout).lines().count();
    }
    assert_eq!(created, OBJECTS);
}

fn idle_past_two_compactions() {
    std::thread::sleep(Duration::from_secs(INTERVAL_SECS * 2 + 2));
}

/// The first page of the selected list and its continue token, read with kubectl.
fn first_page_token(k: &Kubectl) -> String {
    let raw = k.ok(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/configmaps?labelSelector=x%3Dval&limit=500",
    ]);
    let v: serde_json::Value = serde_json::from_str(&raw).expect("list json");
    assert_eq!(v["items"].as_array().map(Vec::len), Some(500));
    v["metadata"]["continue"]
        .as_str()
        .filter(|c| !c.is_empty())
        .expect("a continue token")
        .to_string()
}

fn continue_with(k: &Kubectl, token: &str) -> common::Out {
    k.run(&[
        "get",
        "--raw",
        &format!(
            "/api/v1/namespaces/default/configmaps?labelSelector=x%3Dval&limit=500&continue={token}"
        ),
    ])
}

fn paging_scenario(s: &Server) {
    let k = s.kubectl("33");
    many_configmaps(&k);
    idle_past_two_compactions();
    // kubectl's default chunk size is 500: three pages, all read after the idle time.
    let o = k.run(&["get", "cm", "-l", "x=val", "-o", "name", "-v=6"]);
    assert!(o.ok, "{}", o.stderr);
    assert_eq!(o.stdout.lines().count(), OBJECTS, "{}", o.stderr);
    let pages: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| l.contains("/configmaps?") && l.contains("limit=500"))
        .collect();
    assert_eq!(pages.len(), 3, "three 500-item pages: {pages:#?}");
    assert!(
        pages[1..].iter().all(|l| l.contains("continue=")),
        "{pages:#?}"
    );
    // A token issued on an idle store survives the idle compactions after it.
    let token = first_page_token(&k);
    idle_past_two_compactions();
    let o = continue_with(&k, &token);
    assert!(o.ok, "an idle store keeps the token: {}", o.stderr);

    // Once writes move the revision on, a token older than one interval is 410 Expired with
    // kube-apiserver's message, as kubectl prints it.
    // Each check writes: etcd keeps its compaction revision itself readable, so a token
    // expires there once the compaction point passes it, which takes two writes.
    let mut writes = 0;
    eventually(
        "the old token to expire",
        Duration::from_secs(INTERVAL_SECS * 10 + 20),
        || {
            k.ok(&["create", "cm", &format!("later-{writes}")]);
            writes += 1;
            !continue_with(&k, &token).ok
        },
    );
    let o = continue_with(&k, &token);
    assert!(
        o.stderr.contains(
            "Error from server (Expired): The provided continue parameter is too old to display a consistent list result"
        ),
        "{}",
        o.stderr
    );
    // A fresh list still lists everything.
    let o = k.run(&["get", "cm", "-l", "x=val", "-o", "name"]);
    assert!(o.ok, "{}", o.stderr);
    assert_eq!(o.stdout.lines().count(), OBJECTS);
}

#[test]
fn kubectl_lists_every_page_after_idle_compactions_regression_issue_18() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = Server::start(
        dir.path(),
        &[
            "--disable-controllers",
            "--compaction-interval",
            &format!("{INTERVAL_SECS}s"),
        ],
    );
    paging_scenario(&s);
}

#[test]
fn kubectl_lists_every_page_after_idle_compactions_on_etcd_regression_issue_18() {
    let etcd_dir = tempfile::tempdir().expect("tmp");
    let etcd = LocalEtcd::start(etcd_dir.path()).expect("start etcd (Debian etcd-server)");
    let dir = tempfile::tempdir().expect("tmp");
    let s = Server::start(
        dir.path(),
        &[
            "--datastore-endpoint",
            &etcd.url,
            "--disable-controllers",
            "--compaction-interval",
            &format!("{INTERVAL_SECS}s"),
        ],
    );
    paging_scenario(&s);
}

//! The conformance suite on the in-memory and embedded backends, plus what only a durable
//! backend must show: restart, kill -9, snapshot/restore.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;

use moat_store::{EmbeddedStore, ListOptions, MemStore, Store, conformance};

#[tokio::test]
async fn mem_store_conforms() {
    conformance::run_all(Arc::new(MemStore::new())).await;
}

#[tokio::test]
async fn embedded_store_conforms() {
    let dir = tempfile::tempdir().expect("tmp");
    conformance::run_all(Arc::new(EmbeddedStore::open(dir.path()).expect("open"))).await;
}

#[tokio::test]
async fn embedded_store_survives_restart_with_history() {
    let dir = tempfile::tempdir().expect("tmp");
    let (a, b) = {
        let s = EmbeddedStore::open(dir.path()).expect("open");
        let a = s.create("/r/a", b"1".to_vec()).await.expect("create");
        let b = s
            .update("/r/a", b"2".to_vec(), a.mod_revision)
            .await
            .expect("update");
        s.create("/r/b", b"x".to_vec()).await.expect("create");
        s.delete("/r/b", None).await.expect("delete");
        (a, b)
    };
    let s = EmbeddedStore::open(dir.path()).expect("reopen");
    assert_eq!(
        s.get("/r/a").await.expect("get").expect("a").mod_revision,
        b.mod_revision
    );
    assert!(s.get("/r/b").await.expect("get").is_none());
    let past = s
        .list(
            "/r/",
            ListOptions {
                at: a.mod_revision,
                ..Default::default()
            },
        )
        .await
        .expect("list");
    assert_eq!(past.items[0].value, b"1", "history survives a restart");
    let c = s.create("/r/c", vec![]).await.expect("create");
    assert_eq!(
        c.mod_revision,
        b.mod_revision + 3,
        "revisions continue, never reused"
    );
}

/// Child mode of the crash test: write keys forever, printing each acknowledged revision.
#[tokio::test]
async fn crash_child_entry() {
    let Ok(dir) = std::env::var("MOAT_STORE_CRASH_CHILD") else {
        return;
    };
    let s = EmbeddedStore::open(std::path::Path::new(&dir)).expect("open");
    let mut out = std::io::stdout();
    for i in 0.. {
        let kv = s
            .create(&format!("/crash/{i:08}"), vec![7; 512])
            .await
            .expect("create");
        writeln!(out, "acked {} {}", kv.key, kv.mod_revision).expect("stdout");
        out.flush().expect("flush");
    }
}

#[tokio::test]
async fn embedded_store_loses_nothing_acknowledged_on_kill_9() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--exact",
            "crash_child_entry",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("MOAT_STORE_CRASH_CHILD", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let mut acked = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    while acked.len() < 300 {
        let line = lines.next().expect("child output").expect("line");
        if let Some(rest) = line.strip_prefix("acked ") {
            let (k, r) = rest.split_once(' ').expect("fields");
            acked.push((k.to_string(), r.parse::<i64>().expect("rev")));
        }
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let s = EmbeddedStore::open(dir.path()).expect("reopen after kill -9");
    for (k, r) in &acked {
        let kv = s
            .get(k)
            .await
            .expect("get")
            .unwrap_or_else(|| panic!("acknowledged {k} lost"));
        assert_eq!(kv.mod_revision, *r);
    }
    let revs: Vec<i64> = acked.iter().map(|(_, r)| *r).collect();
    assert!(
        revs.windows(2).all(|w| w[0] < w[1]),
        "acknowledged revisions increase"
    );
    let cur = s.current_revision().await.expect("rev");
    assert!(
        cur >= *revs.last().expect("some"),
        "the store's revision never goes back"
    );
    let next = s.create("/after", vec![]).await.expect("write after crash");
    assert_eq!(next.mod_revision, cur + 1);
}

#[tokio::test]
async fn snapshot_save_and_restore() {
    let dir = tempfile::tempdir().expect("tmp");
    let snap = dir.path().join("snap.redb");
    let data = dir.path().join("data");
    {
        let s = EmbeddedStore::open(&data).expect("open");
        s.create("/s/a", b"before".to_vec()).await.expect("create");
        s.snapshot_save(&snap).await.expect("save");
        s.create("/s/b", b"after".to_vec()).await.expect("create");
        let err = EmbeddedStore::snapshot_restore(&snap, &data).expect_err("refuses while open");
        assert!(err.to_string().contains("backend failed"), "{err}");
    }
    EmbeddedStore::snapshot_restore(&snap, &data).expect("restore");
    let s = EmbeddedStore::open(&data).expect("open restored");
    assert_eq!(
        s.get("/s/a").await.expect("get").expect("a").value,
        b"before"
    );
    assert!(
        s.get("/s/b").await.expect("get").is_none(),
        "state is the snapshot's"
    );
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, b"not a store").expect("write");
    drop(s);
    assert!(
        EmbeddedStore::snapshot_restore(&garbage, &data).is_err(),
        "a bad snapshot is refused"
    );
    let s = EmbeddedStore::open(&data).expect("still opens");
    assert!(
        s.get("/s/a").await.expect("get").is_some(),
        "and the store is unchanged"
    );
}

/// Group commit: writes that arrive together share a commit, and must still get
/// consecutive revisions in the order they were applied, conflicts decided against the
/// writes batched before them, watchers told in order, and all of it on disk after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_store_concurrent_writes_commit_in_revision_order() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().expect("tmp");
    let s = Arc::new(EmbeddedStore::open(dir.path()).expect("open"));
    let base = s.create("/g/shared", b"0".to_vec()).await.expect("create");
    let mut watch = s.watch("/g/", base.mod_revision).await.expect("watch");
    let mut tasks = Vec::new();
    for i in 0..300 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            if i % 3 == 0 {
                // Every one of these races for the same expected revision: one wins.
                s.update("/g/shared", format!("{i}").into_bytes(), base.mod_revision)
                    .await
                    .map(|kv| kv.mod_revision)
            } else {
                s.create(&format!("/g/k{i:03}"), vec![b'x'; 64])
                    .await
                    .map(|kv| kv.mod_revision)
            }
        }));
    }
    let mut revs = Vec::new();
    let mut conflicts = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(r) => revs.push(r),
            Err(moat_store::StoreError::Conflict { .. }) => conflicts += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(conflicts, 99, "exactly one of 100 racing updates wins");
    revs.sort();
    let want: Vec<i64> = (base.mod_revision + 1..=base.mod_revision + 201).collect();
    assert_eq!(revs, want, "201 writes, consecutive revisions, no gaps");
    let mut seen = Vec::new();
    while seen.len() < 201 {
        let e = tokio::time::timeout(std::time::Duration::from_secs(10), watch.next())
            .await
            .expect("watch delivers every write")
            .expect("stream open")
            .expect("event");
        if !matches!(e, moat_store::WatchEvent::Progress { .. }) {
            seen.push(e.revision());
        }
    }
    assert_eq!(seen, want, "watchers see the writes in revision order");
    drop(watch);
    drop(s);
    let s = EmbeddedStore::open(dir.path()).expect("reopen");
    let l = s.list("/g/", ListOptions::default()).await.expect("list");
    assert_eq!(l.items.len(), 201);
    assert_eq!(l.revision, base.mod_revision + 201);
}

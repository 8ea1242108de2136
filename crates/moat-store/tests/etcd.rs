//! The conformance suite against a real etcd (Debian's etcd-server), started by the test on
//! loopback ports of its own, with its data in a temp dir; killed on drop.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use moat_store::etcd::LocalEtcd;
use moat_store::{EtcdStore, ListOptions, Store, StoreError, WatchEvent, conformance};

async fn connect(url: &str) -> EtcdStore {
    let start = Instant::now();
    loop {
        match EtcdStore::connect(url).await {
            Ok(s) => return s,
            Err(e) if start.elapsed() > Duration::from_secs(20) => panic!("connect: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test]
async fn etcd_store_conforms() {
    let dir = tempfile::tempdir().expect("tmp");
    let etcd = LocalEtcd::start(dir.path()).expect("start etcd (Debian etcd-server)");
    let s = connect(&etcd.url).await;
    conformance::run_all(Arc::new(s)).await;
}

#[tokio::test]
async fn etcd_store_reports_compaction_and_unreachable_endpoints() {
    let dir = tempfile::tempdir().expect("tmp");
    let etcd = LocalEtcd::start(dir.path()).expect("start etcd");
    let s = connect(&etcd.url).await;
    assert_eq!(
        s.oldest_revision().await.expect("oldest"),
        1,
        "nothing compacted yet"
    );
    let a = s.create("/x/a", b"1".to_vec()).await.expect("create");
    let b = s
        .update("/x/a", b"2".to_vec(), a.mod_revision)
        .await
        .expect("update");
    s.compact(b.mod_revision).await.expect("compact");
    assert_eq!(
        s.oldest_revision().await.expect("oldest"),
        b.mod_revision + 1
    );
    drop(etcd);
    let e = match EtcdStore::connect("http://127.0.0.1:1").await {
        Ok(_) => panic!("nothing listens on port 1"),
        Err(e) => e,
    };
    assert!(e.to_string().contains("connect"), "{e}");
}

/// Regression: a list of more than one gRPC message's worth of objects (10,000 ConfigMaps
/// in the API benchmark) failed with "store backend failed during list". A watch replaying
/// them has the same problem: etcd batches up to 1,000 revisions into one response.
#[tokio::test]
async fn etcd_store_lists_and_replays_beyond_one_grpc_message() {
    let dir = tempfile::tempdir().expect("tmp");
    let etcd = LocalEtcd::start(dir.path()).expect("start etcd");
    let s = connect(&etcd.url).await;
    let start = s.current_revision().await.expect("rev");
    let value = vec![b'x'; 5000];
    for i in 0..1200 {
        s.create(&format!("/big/{i:05}"), value.clone())
            .await
            .expect("create");
    }
    let all = s.list("/big/", Default::default()).await.expect("list all");
    assert_eq!(all.items.len(), 1200, "6 MB in one list");
    assert!(!all.more);
    let some = s
        .list(
            "/big/",
            moat_store::ListOptions {
                limit: 700,
                ..Default::default()
            },
        )
        .await
        .expect("list some");
    assert_eq!((some.items.len(), some.more), (700, true));
    assert_eq!(some.items[699].key, "/big/00699");
    let mut w = s.watch("/big/", start).await.expect("watch");
    let mut i = 0;
    while i < 1200 {
        let e = tokio::time::timeout(Duration::from_secs(20), w.next())
            .await
            .expect("replay in time")
            .expect("stream open")
            .unwrap_or_else(|e| panic!("replayed event {i}: {e}"));
        match e {
            WatchEvent::Put { kv, .. } => assert_eq!(kv.key, format!("/big/{i:05}")),
            WatchEvent::Progress { .. } => continue,
            other => panic!("unexpected {other:?}"),
        }
        i += 1;
    }
}

/// etcd compares a missing key's mod_revision as 0, and a key before a prefix sorts before
/// it: neither may leak through the contract.
#[tokio::test]
async fn etcd_store_cas_on_missing_keys_and_foreign_start_after() {
    let dir = tempfile::tempdir().expect("tmp");
    let etcd = LocalEtcd::start(dir.path()).expect("start etcd");
    let s = connect(&etcd.url).await;
    let before = s.current_revision().await.expect("rev");
    assert!(
        matches!(
            s.update("/m/none", b"x".to_vec(), 0).await,
            Err(StoreError::NotFound { .. })
        ),
        "an update expecting revision 0 must not create the key"
    );
    assert!(matches!(
        s.delete("/m/none", Some(0)).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(s.get("/m/none").await.expect("get").is_none());
    assert_eq!(s.current_revision().await.expect("rev"), before);
    s.create("/a", b"outside".to_vec()).await.expect("create");
    s.create("/m/k", b"inside".to_vec()).await.expect("create");
    let l = s
        .list(
            "/m/",
            ListOptions {
                start_after: Some("/".into()),
                ..Default::default()
            },
        )
        .await
        .expect("list");
    assert_eq!(
        l.items.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(),
        ["/m/k"]
    );
}

/// The errors carry etcd's real numbers, which etcd's messages leave out.
#[tokio::test]
async fn etcd_store_revision_errors_carry_the_compaction_point_and_current_revision() {
    let dir = tempfile::tempdir().expect("tmp");
    let etcd = LocalEtcd::start(dir.path()).expect("start etcd");
    let s = connect(&etcd.url).await;
    let mut revs = Vec::new();
    for i in 0..40 {
        revs.push(
            s.create(&format!("/e/{i:02}"), vec![])
                .await
                .expect("create")
                .mod_revision,
        );
    }
    s.compact(revs[30]).await.expect("compact");
    match s
        .list(
            "/e/",
            ListOptions {
                at: revs[3],
                ..Default::default()
            },
        )
        .await
    {
        Err(StoreError::Compacted {
            requested,
            compacted,
        }) => assert_eq!((requested, compacted), (revs[3], revs[30])),
        other => panic!("want Compacted, got {other:?}"),
    }
    match s.watch("/e/", revs[10]).await {
        Err(StoreError::Compacted { compacted, .. }) => assert_eq!(compacted, revs[30]),
        Err(e) => panic!("want Compacted, got {e}"),
        Ok(_) => panic!("want Compacted, got a watch"),
    }
    assert!(
        matches!(
            s.compact(revs[20]).await,
            Err(StoreError::Compacted { compacted, .. }) if compacted == revs[30]
        ),
        "compacting behind the compaction point"
    );
    assert_eq!(s.oldest_revision().await.expect("oldest"), revs[30] + 1);
    let now = s.current_revision().await.expect("rev");
    match s
        .list(
            "/e/",
            ListOptions {
                at: now + 5,
                ..Default::default()
            },
        )
        .await
    {
        Err(StoreError::FutureRevision { requested, current }) => {
            assert_eq!((requested, current), (now + 5, now))
        }
        other => panic!("want FutureRevision, got {other:?}"),
    }
}

/// Writes elsewhere reach a quiet watch as progress (watch bookmarks), repeated while
/// nothing changes, never behind an event it already delivered.
#[tokio::test]
async fn etcd_store_quiet_watch_gets_progress() {
    let dir = tempfile::tempdir().expect("tmp");
    let etcd = LocalEtcd::start(dir.path()).expect("start etcd");
    let s = connect(&etcd.url).await;
    let mine = s.create("/quiet/a", vec![]).await.expect("create");
    // From a past revision: the watch starts unsynced (replaying), then catches up.
    let mut w = s
        .watch("/quiet/", mine.mod_revision - 1)
        .await
        .expect("watch");
    let other = s.create("/loud/a", vec![]).await.expect("create");
    let mut last = 0;
    // Notifications repeat while nothing changes: consumers may wait for a later one.
    let mut progress_after_other = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = tokio::time::timeout(left, w.next())
            .await
            .expect("two progress notifications within 30 s (etcd notifies every 5 s)")
            .expect("stream open")
            .expect("event");
        assert!(e.revision() >= last, "{e:?} went back from {last}");
        last = e.revision();
        match e {
            WatchEvent::Put { kv, .. } => assert_eq!(kv.mod_revision, mine.mod_revision),
            WatchEvent::Progress { revision } if revision >= other.mod_revision => {
                progress_after_other += 1;
                if progress_after_other == 2 {
                    break;
                }
            }
            WatchEvent::Progress { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// etcd going away ends watches with an error (the API server's clients re-watch), and
/// the same store works again once etcd is back, with nothing lost.
#[tokio::test]
async fn etcd_store_recovers_after_etcd_restarts() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut etcd = LocalEtcd::start(dir.path()).expect("start etcd");
    let s = connect(&etcd.url).await;
    let a = s.create("/r/a", b"1".to_vec()).await.expect("create");
    let mut w = s.watch("/r/", a.mod_revision).await.expect("watch");
    etcd.restart().expect("restart etcd");
    let end = tokio::time::timeout(Duration::from_secs(30), w.next())
        .await
        .expect("the watch notices etcd went away");
    assert!(
        matches!(end, None | Some(Err(StoreError::Backend { .. }))),
        "{end:?}"
    );
    let start = Instant::now();
    let got = loop {
        match s.get("/r/a").await {
            Ok(v) => break v,
            Err(e) if start.elapsed() > Duration::from_secs(30) => panic!("no reconnect: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    assert_eq!(got.expect("kept").mod_revision, a.mod_revision);
    let b = s
        .update("/r/a", b"2".to_vec(), a.mod_revision)
        .await
        .expect("update after restart");
    assert_eq!(b.mod_revision, a.mod_revision + 1, "revisions continue");
    let mut w = s.watch("/r/", a.mod_revision).await.expect("re-watch");
    let e = tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("replay")
        .expect("open")
        .expect("event");
    assert_eq!(e.revision(), b.mod_revision);
}

/// A hung etcd (frozen, connections open) makes requests fail after the deadline naming the
/// operation, and watches end, instead of hanging the API server's handlers and watchers;
/// requests work again once it answers.
#[tokio::test]
async fn etcd_store_requests_time_out_when_etcd_hangs() {
    let dir = tempfile::tempdir().expect("tmp");
    let etcd = LocalEtcd::start(dir.path()).expect("start etcd");
    let s = connect(&etcd.url)
        .await
        .with_request_timeout(Duration::from_secs(1));
    let a = s.create("/h/a", b"1".to_vec()).await.expect("create");
    let mut w = s.watch("/h/", 0).await.expect("watch");
    etcd.pause().expect("SIGSTOP etcd");
    let r = tokio::time::timeout(Duration::from_secs(20), s.get("/h/a"))
        .await
        .expect("the store's deadline ends the request, not this one");
    let r2 = tokio::time::timeout(
        Duration::from_secs(20),
        s.update("/h/a", b"2".to_vec(), a.mod_revision),
    )
    .await
    .expect("deadline");
    // HTTP/2 keep-alive (15 s + 10 s) finds the silent connection dead and ends the watch.
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match w.next().await {
                Some(Ok(WatchEvent::Progress { .. })) => continue,
                other => return other,
            }
        }
    })
    .await;
    etcd.resume().expect("SIGCONT etcd");
    match ended {
        Ok(None | Some(Err(StoreError::Backend { .. }))) => {}
        other => panic!("want the watch ended by keep-alive, got {other:?}"),
    }
    match r {
        Err(StoreError::Backend { op: "get", source }) => {
            assert!(source.to_string().contains("did not answer"), "{source}")
        }
        other => panic!("want a get timeout, got {other:?}"),
    }
    assert!(
        matches!(r2, Err(StoreError::Backend { op: "update", .. })),
        "{r2:?}"
    );
    let start = Instant::now();
    let got = loop {
        match s.get("/h/a").await {
            Ok(v) => break v.expect("a"),
            Err(e) if start.elapsed() > Duration::from_secs(20) => panic!("after resume: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    // The timed-out update may or may not have reached etcd before it froze; either way the
    // store is consistent and usable.
    assert!(got.mod_revision >= a.mod_revision);
    s.update("/h/a", b"3".to_vec(), got.mod_revision)
        .await
        .expect("update after resume");
}

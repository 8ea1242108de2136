//! The behaviour every backend must show, as one suite each backend's tests run
//! (`run_all(&store)` on an empty store). Panics with a message naming the failed check.
// A test suite kept in the library so every backend's tests (and etcd's, in another
// crate) run the same contract: failing loudly is its job.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;

use futures::StreamExt;

use crate::{ListOptions, Store, StoreError, WatchEvent};

async fn next_event(w: &mut crate::WatchStream) -> WatchEvent {
    loop {
        let e = tokio::time::timeout(std::time::Duration::from_secs(10), w.next())
            .await
            .expect("watch event within 10s")
            .expect("watch stream open")
            .expect("watch event ok");
        if !matches!(e, WatchEvent::Progress { .. }) {
            return e;
        }
    }
}

/// Runs every check against an empty store.
pub async fn run_all(s: Arc<dyn Store>) {
    crud_and_revisions(&*s).await;
    list_pagination_and_history(&*s).await;
    watch_replay_then_live(&*s).await;
    concurrent_writers(s.clone()).await;
    compaction(&*s).await;
    paging_survives_compaction_below_its_revision(&*s).await;
}

/// create/get/update/delete with CAS; every write bumps the revision by exactly one.
pub async fn crud_and_revisions(s: &dyn Store) {
    let r0 = s.current_revision().await.expect("rev");
    let a = s.create("/c/a", b"1".to_vec()).await.expect("create");
    assert_eq!(a.mod_revision, r0 + 1, "create bumps revision by one");
    assert_eq!(a.create_revision, a.mod_revision);
    assert!(
        matches!(
            s.create("/c/a", b"x".to_vec()).await,
            Err(StoreError::AlreadyExists { .. })
        ),
        "duplicate create"
    );
    let got = s.get("/c/a").await.expect("get").expect("present");
    assert_eq!(got.value, b"1");
    assert!(s.get("/c/missing").await.expect("get").is_none());
    let b = s
        .update("/c/a", b"2".to_vec(), a.mod_revision)
        .await
        .expect("update");
    assert_eq!(b.mod_revision, a.mod_revision + 1);
    assert_eq!(
        b.create_revision, a.create_revision,
        "update keeps create_revision"
    );
    match s.update("/c/a", b"3".to_vec(), a.mod_revision).await {
        Err(StoreError::Conflict {
            expected, actual, ..
        }) => assert_eq!((expected, actual), (a.mod_revision, b.mod_revision)),
        other => panic!("stale update must conflict, got {other:?}"),
    }
    assert!(matches!(
        s.update("/c/missing", vec![], 1).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(
        matches!(
            s.delete("/c/a", Some(a.mod_revision)).await,
            Err(StoreError::Conflict { .. })
        ),
        "stale delete"
    );
    let (prev, rev) = s
        .delete("/c/a", Some(b.mod_revision))
        .await
        .expect("delete");
    assert_eq!(prev.value, b"2");
    assert_eq!(rev, b.mod_revision + 1);
    assert!(matches!(
        s.delete("/c/a", None).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(
        s.current_revision().await.expect("rev"),
        rev,
        "failed writes do not bump"
    );
    let again = s.create("/c/a", b"new".to_vec()).await.expect("recreate");
    assert_eq!(
        again.create_revision,
        rev + 1,
        "a recreated key starts a new life"
    );
}

/// Prefix lists in key order, limit/start_after paging, and lists at past revisions.
pub async fn list_pagination_and_history(s: &dyn Store) {
    let mut revs = Vec::new();
    for i in 0..5 {
        revs.push(
            s.create(&format!("/l/k{i}"), vec![i])
                .await
                .expect("create")
                .mod_revision,
        );
    }
    s.create("/l2/other", vec![9]).await.expect("create");
    let all = s.list("/l/", ListOptions::default()).await.expect("list");
    assert_eq!(
        all.items.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(),
        ["/l/k0", "/l/k1", "/l/k2", "/l/k3", "/l/k4"]
    );
    assert!(!all.more);
    let p1 = s
        .list(
            "/l/",
            ListOptions {
                limit: 2,
                at: all.revision,
                ..Default::default()
            },
        )
        .await
        .expect("page 1");
    assert_eq!(p1.items.len(), 2);
    assert!(p1.more);
    let p2 = s
        .list(
            "/l/",
            ListOptions {
                limit: 10,
                at: p1.revision,
                start_after: Some(p1.items[1].key.clone()),
            },
        )
        .await
        .expect("page 2");
    assert_eq!(p2.items.len(), 3);
    assert!(!p2.more);
    // Change things, then read the past.
    let k1 = s.get("/l/k1").await.expect("get").expect("k1");
    s.update("/l/k1", b"changed".to_vec(), k1.mod_revision)
        .await
        .expect("update");
    s.delete("/l/k2", None).await.expect("delete");
    s.create("/l/k5", vec![5]).await.expect("create");
    let past = s
        .list(
            "/l/",
            ListOptions {
                at: all.revision,
                ..Default::default()
            },
        )
        .await
        .expect("list at past revision");
    assert_eq!(past.revision, all.revision);
    assert_eq!(
        past.items, all.items,
        "a list at a past revision sees exactly that past"
    );
    let mid = s
        .list(
            "/l/",
            ListOptions {
                at: revs[2],
                ..Default::default()
            },
        )
        .await
        .expect("list mid");
    assert_eq!(mid.items.len(), 3, "only k0..k2 existed at revs[2]");
    let now = s.current_revision().await.expect("rev");
    assert!(matches!(
        s.list(
            "/l/",
            ListOptions {
                at: now + 100,
                ..Default::default()
            }
        )
        .await,
        Err(StoreError::FutureRevision { .. })
    ));
}

/// A watch from a past revision replays exactly the later events under the prefix, then
/// continues live, with no gap and no duplicate.
pub async fn watch_replay_then_live(s: &dyn Store) {
    let start = s.current_revision().await.expect("rev");
    let a = s.create("/w/a", b"1".to_vec()).await.expect("create");
    s.create("/wx/not-under-prefix", b"1".to_vec())
        .await
        .expect("create");
    let a2 = s
        .update("/w/a", b"2".to_vec(), a.mod_revision)
        .await
        .expect("update");
    let mut w = s.watch("/w/", start).await.expect("watch");
    let mut live_from_now = s.watch("/w/", 0).await.expect("watch now");
    let b = s.create("/w/b", b"1".to_vec()).await.expect("create");
    let (_, del_rev) = s.delete("/w/a", None).await.expect("delete");
    let want = [a.mod_revision, a2.mod_revision, b.mod_revision, del_rev];
    for r in want {
        let e = next_event(&mut w).await;
        assert_eq!(
            e.revision(),
            r,
            "replay then live, in order, no gap or duplicate"
        );
    }
    match next_event(&mut live_from_now).await {
        WatchEvent::Put { kv, prev: None } => {
            assert_eq!(kv.key, "/w/b", "after=0 watches from now")
        }
        other => panic!("want the create of /w/b, got {other:?}"),
    }
    match next_event(&mut live_from_now).await {
        WatchEvent::Delete { prev, revision } => {
            assert_eq!(prev.key, "/w/a");
            assert_eq!(prev.value, b"2");
            assert_eq!(revision, del_rev);
        }
        other => panic!("want the delete of /w/a, got {other:?}"),
    }
}

/// Many concurrent writers: every acknowledged write is present exactly once and all
/// revisions are distinct.
pub async fn concurrent_writers(s: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for t in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..25 {
                revs.push(
                    s.create(&format!("/cc/{t}/{i}"), vec![t, i])
                        .await
                        .expect("create")
                        .mod_revision,
                );
            }
            revs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "no two writes share a revision");
    let list = s.list("/cc/", ListOptions::default()).await.expect("list");
    assert_eq!(list.items.len(), 200, "every acknowledged write is there");
    // Concurrent CAS on one key: exactly one wins per round.
    let k = s.create("/cas", vec![0]).await.expect("create");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = s.clone();
        let exp = k.mod_revision;
        tasks.push(tokio::spawn(async move {
            s.update("/cas", vec![1], exp).await.is_ok()
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += usize::from(t.await.expect("task"));
    }
    assert_eq!(wins, 1, "exactly one CAS wins");
}

/// Compaction: old revisions answer Compacted for list and watch; current data stays.
pub async fn compaction(s: &dyn Store) {
    let a = s.create("/cp/a", b"1".to_vec()).await.expect("create");
    let a2 = s
        .update("/cp/a", b"2".to_vec(), a.mod_revision)
        .await
        .expect("update");
    s.compact(a2.mod_revision).await.expect("compact");
    assert!(s.oldest_revision().await.expect("oldest") > a2.mod_revision);
    assert!(matches!(
        s.list(
            "/cp/",
            ListOptions {
                at: a.mod_revision,
                ..Default::default()
            }
        )
        .await,
        Err(StoreError::Compacted { .. })
    ));
    assert!(
        matches!(
            s.watch("/cp/", a.mod_revision - 1).await,
            Err(StoreError::Compacted { .. })
        ),
        "watch from a compacted revision"
    );
    assert_eq!(
        s.get("/cp/a").await.expect("get").expect("kept").value,
        b"2",
        "current values survive compaction"
    );
    let b = s
        .create("/cp/b", b"1".to_vec())
        .await
        .expect("create after compaction");
    let mut w = s
        .watch("/cp/", a2.mod_revision)
        .await
        .expect("watch from the compaction point");
    assert_eq!(next_event(&mut w).await.revision(), b.mod_revision);
}

/// A paged list reads every page at its first page's revision `r`; compacting up to
/// `r - 1` (what the API server's periodic compaction does to a revision seen one tick
/// ago) leaves the remaining pages readable, and compacting past `r` expires them (issue 18:
/// continue tokens expired on an idle store). etcd keeps its compaction revision itself
/// readable, so "past" is checked one write later.
pub async fn paging_survives_compaction_below_its_revision(s: &dyn Store) {
    for k in ["a", "b", "c", "d"] {
        s.create(&format!("/pg/{k}"), k.as_bytes().to_vec())
            .await
            .expect("create");
    }
    let first = s
        .list(
            "/pg/",
            ListOptions {
                limit: 2,
                ..Default::default()
            },
        )
        .await
        .expect("first page");
    assert!(first.more, "the first page is cut short");
    let r = first.revision;
    let rest = |at| ListOptions {
        at,
        start_after: first.items.last().map(|kv| kv.key.clone()),
        limit: 2,
    };
    s.compact(r - 1)
        .await
        .expect("compact below the page's revision");
    let second = s
        .list("/pg/", rest(r))
        .await
        .expect("second page after compaction");
    let keys: Vec<&str> = second.items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(
        keys,
        ["/pg/c", "/pg/d"],
        "the rest of the list at the first page's revision"
    );
    assert_eq!(second.revision, r);
    let e = s
        .create("/pg/e", b"e".to_vec())
        .await
        .expect("a later write");
    s.compact(e.mod_revision)
        .await
        .expect("compact past the page's revision");
    assert!(
        matches!(
            s.list("/pg/", rest(r)).await,
            Err(StoreError::Compacted { .. })
        ),
        "a continue at a compacted revision is Compacted"
    );
}

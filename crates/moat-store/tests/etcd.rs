//! The conformance suite against a real etcd (Debian's etcd-server), started by the test on
//! loopback ports of its own, with its data in a temp dir; killed on drop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moat_store::etcd::LocalEtcd;
use moat_store::{EtcdStore, Store, conformance};

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
/// in the API benchmark) failed with "store backend failed during list".
#[tokio::test]
async fn etcd_store_lists_beyond_one_grpc_message() {
    let dir = tempfile::tempdir().expect("tmp");
    let etcd = LocalEtcd::start(dir.path()).expect("start etcd");
    let s = connect(&etcd.url).await;
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
}

//! A watch-fed copy of one collection (what client-go calls an informer): list once, then
//! apply watch events; re-list when the watch ends or fails (410 included). Loops that run
//! often on large collections read this instead of listing over HTTP every pass.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::Client;

#[derive(Default)]
pub(crate) struct Cache {
    items: Mutex<BTreeMap<String, Arc<Value>>>,
    /// Set once the first list has been loaded: before that an empty cache means "not
    /// known yet", not "none exist" (client-go's HasSynced).
    synced: std::sync::atomic::AtomicBool,
}

fn key(v: &Value) -> String {
    format!(
        "{}/{}",
        v["metadata"]["namespace"].as_str().unwrap_or(""),
        v["metadata"]["name"].as_str().unwrap_or("")
    )
}

impl Cache {
    pub(crate) fn synced(&self) -> bool {
        self.synced.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The items as they are now. Shared, not copied: a pass over 10,000 pods must not
    /// start by cloning them all.
    pub(crate) fn snapshot(&self) -> Vec<Arc<Value>> {
        self.items
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}

/// The collections the loops share, each fed by one list+watch.
#[derive(Clone)]
pub(crate) struct Caches {
    pub pods: Arc<Cache>,
    pub nodes: Arc<Cache>,
}

impl Caches {
    pub(crate) fn synced(&self) -> bool {
        self.pods.synced() && self.nodes.synced()
    }

    /// The cache that holds the collection at `path` (a cluster-wide list path), if any.
    pub(crate) fn for_path(&self, path: &str) -> Option<&Arc<Cache>> {
        match path {
            "/api/v1/pods" => Some(&self.pods),
            "/api/v1/nodes" => Some(&self.nodes),
            _ => None,
        }
    }
}

/// Starts the list+watch thread for `path`; every change wakes `wake`.
pub(crate) fn spawn(c: Client, path: &'static str, wake: Vec<mpsc::Sender<()>>) -> Arc<Cache> {
    let cache = Arc::new(Cache::default());
    let out = cache.clone();
    let _ = std::thread::Builder::new()
        .name(format!("cache{path}"))
        .spawn(move || {
            let notify = || {
                for w in &wake {
                    let _ = w.send(());
                }
            };
            loop {
                let (items, rv) = match c.list(path) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::debug!(error = %e, path, "cache list");
                        std::thread::sleep(Duration::from_millis(500));
                        continue;
                    }
                };
                if let Ok(mut m) = cache.items.lock() {
                    *m = items.into_iter().map(|v| (key(&v), Arc::new(v))).collect();
                }
                cache
                    .synced
                    .store(true, std::sync::atomic::Ordering::Release);
                notify();
                let r = c.watch(path, &rv, |e| {
                    let o = &e["object"];
                    let Ok(mut m) = cache.items.lock() else {
                        return;
                    };
                    match e["type"].as_str() {
                        Some("ADDED" | "MODIFIED") => {
                            m.insert(key(o), Arc::new(o.clone()));
                        }
                        Some("DELETED") => {
                            m.remove(&key(o));
                        }
                        _ => return,
                    }
                    drop(m);
                    notify();
                });
                if let Err(e) = r {
                    tracing::debug!(error = %e, path, "cache watch");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        });
    out
}

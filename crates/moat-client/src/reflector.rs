//! A watch-fed copy of one collection (what client-go calls an informer): list once, then
//! apply watch events; re-list when the watch ends or fails (410 included). Loops that run
//! often read this instead of listing over HTTP every pass.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::Api;

#[derive(Default)]
pub struct Reflector {
    items: Mutex<BTreeMap<String, Arc<Value>>>,
    /// Set once the first list has been loaded: before that an empty cache means "not
    /// known yet", not "none exist" (client-go's HasSynced).
    synced: AtomicBool,
    stop: AtomicBool,
}

/// `namespace/name` of an object (`/name` for cluster-scoped ones).
pub fn key(v: &Value) -> String {
    format!(
        "{}/{}",
        v["metadata"]["namespace"].as_str().unwrap_or(""),
        v["metadata"]["name"].as_str().unwrap_or("")
    )
}

impl Reflector {
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// The items as they are now. Shared, not copied: a pass over 10,000 pods must not
    /// start by cloning them all.
    pub fn snapshot(&self) -> Vec<Arc<Value>> {
        self.items
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The item `namespace/name` (`/name` when cluster-scoped).
    /// The cached objects decoded as `T` (an object that does not decode is skipped: the
    /// API server validated it against the same type).
    pub fn items<T: serde::de::DeserializeOwned>(&self) -> Vec<T> {
        self.snapshot()
            .iter()
            .filter_map(|v| serde_json::from_value::<T>((**v).clone()).ok())
            .collect()
    }

    pub fn get(&self, key: &str) -> Option<Arc<Value>> {
        self.items.lock().ok().and_then(|m| m.get(key).cloned())
    }

    /// Ends the feeding thread after its current watch (it is also ended by the process).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    fn replace(&self, items: Vec<Value>) {
        if let Ok(mut m) = self.items.lock() {
            *m = items.into_iter().map(|v| (key(&v), Arc::new(v))).collect();
        }
        self.synced.store(true, Ordering::Release);
    }

    /// Applies one watch event; whether it changed the copy.
    fn apply(&self, e: &Value) -> bool {
        let o = &e["object"];
        let Ok(mut m) = self.items.lock() else {
            return false;
        };
        match e["type"].as_str() {
            Some("ADDED" | "MODIFIED") => {
                m.insert(key(o), Arc::new(o.clone()));
                true
            }
            Some("DELETED") => m.remove(&key(o)).is_some(),
            _ => false,
        }
    }

    /// Starts the list+watch thread for `path` (a list path, with selectors if any); every
    /// change wakes each of `wake`.
    pub fn spawn(
        api: Arc<dyn Api>,
        path: impl Into<String>,
        wake: Vec<mpsc::Sender<()>>,
    ) -> Arc<Reflector> {
        let path = path.into();
        let r = Arc::new(Reflector::default());
        let out = r.clone();
        let name: String = format!("reflector{path}").chars().take(15).collect();
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            let notify = || {
                for w in &wake {
                    let _ = w.send(());
                }
            };
            while !r.stop.load(Ordering::Acquire) {
                let (items, rv) = match api.list(&path) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::debug!(error = %e, path, "reflector list");
                        std::thread::sleep(Duration::from_millis(500));
                        continue;
                    }
                };
                r.replace(items);
                notify();
                let res = api.watch(&path, &rv, &mut |e| {
                    if r.apply(e) {
                        notify();
                    }
                });
                if let Err(e) = res {
                    tracing::debug!(error = %e, path, "reflector watch");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "starting a reflector thread");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeApi;
    use serde_json::json;

    #[test]
    fn reflector_lists_then_applies_watch_events_and_wakes() {
        let api = Arc::new(FakeApi::default());
        api.create(
            "/api/v1/namespaces/a/pods",
            &json!({"metadata": {"name": "p1", "namespace": "a"}}),
        )
        .unwrap();
        api.push_watch_events(vec![
            json!({"type": "ADDED", "object": {"metadata": {"name": "p2", "namespace": "a"}}}),
            json!({"type": "DELETED", "object": {"metadata": {"name": "p1", "namespace": "a"}}}),
            json!({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}),
        ]);
        let (tx, rx) = mpsc::channel();
        let r = Reflector::spawn(api.clone(), "/api/v1/pods", vec![tx]);
        // The list and two changes wake it; the bookmark does not.
        for _ in 0..3 {
            rx.recv_timeout(Duration::from_secs(5)).expect("a wake-up");
        }
        r.stop();
        assert!(r.synced());
        assert!(r.get("a/p2").is_some());
        assert!(r.get("a/p1").is_none());
    }
}

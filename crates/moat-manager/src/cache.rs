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
    items: Mutex<BTreeMap<String, Value>>,
}

fn key(v: &Value) -> String {
    format!(
        "{}/{}",
        v["metadata"]["namespace"].as_str().unwrap_or(""),
        v["metadata"]["name"].as_str().unwrap_or("")
    )
}

impl Cache {
    pub(crate) fn snapshot(&self) -> Vec<Value> {
        self.items
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
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
                    *m = items.iter().map(|v| (key(v), v.clone())).collect();
                }
                notify();
                let r = c.watch(path, &rv, |e| {
                    let o = &e["object"];
                    let Ok(mut m) = cache.items.lock() else {
                        return;
                    };
                    match e["type"].as_str() {
                        Some("ADDED" | "MODIFIED") => {
                            m.insert(key(o), o.clone());
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

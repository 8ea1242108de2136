//! The RBAC cache: the four RBAC collections read from the store once, then kept current by
//! store watches (re-listed after a watch ends or fails), with an [`rbac::Snapshot`] rebuilt
//! on every change. Requests only clone an `Arc` of the current snapshot.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use moat_store::{ListOptions, Revision, Store, StoreError, WatchEvent};
use serde_json::Value;

use super::rbac::{RoleRef, Rule, Snapshot};

/// Index of the ClusterRoles in [`PREFIXES`].
const CLUSTER_ROLES: usize = 1;

/// Store prefixes, in the order [`Snapshot::build`] takes them.
const PREFIXES: [&str; 4] = [
    "/registry/roles.rbac.authorization.k8s.io/",
    "/registry/clusterroles.rbac.authorization.k8s.io/",
    "/registry/rolebindings.rbac.authorization.k8s.io/",
    "/registry/clusterrolebindings.rbac.authorization.k8s.io/",
];

#[derive(Default)]
pub struct RbacCache {
    snap: RwLock<Arc<Snapshot>>,
    /// Store key → object, per prefix.
    objects: Mutex<[BTreeMap<String, Value>; 4]>,
}

impl RbacCache {
    /// A cache that knows no RBAC objects (only `system:masters` is allowed anything); for
    /// servers built without a store watch, such as in-process tests.
    pub fn empty() -> Arc<RbacCache> {
        Arc::new(RbacCache::default())
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.snap.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn rebuild(&self, objects: &[BTreeMap<String, Value>; 4]) {
        let v = |i: usize| objects[i].values().cloned().collect::<Vec<_>>();
        let snap = Arc::new(Snapshot::build(&v(0), &v(1), &v(2), &v(3)));
        match self.snap.write() {
            Ok(mut s) => *s = snap,
            Err(poisoned) => *poisoned.into_inner() = snap,
        }
    }

    fn with_objects(&self, f: impl FnOnce(&mut [BTreeMap<String, Value>; 4])) {
        let mut guard = match self.objects.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard);
        self.rebuild(&guard);
    }

    fn with_objects_ro(&self, f: impl FnOnce(&[BTreeMap<String, Value>; 4])) {
        let guard = match self.objects.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&guard);
    }

    async fn relist(&self, store: &dyn Store, i: usize) -> Result<Revision, StoreError> {
        let res = store.list(PREFIXES[i], ListOptions::default()).await?;
        let fresh: BTreeMap<String, Value> = res
            .items
            .iter()
            .filter_map(|kv| Some((kv.key.clone(), serde_json::from_slice(&kv.value).ok()?)))
            .collect();
        self.with_objects(|o| o[i] = fresh);
        Ok(res.revision)
    }

    /// Lists the four collections (so the first request already sees them), then follows
    /// each with a watch task for the life of the process.
    pub async fn start(store: Arc<dyn Store>) -> Result<Arc<RbacCache>, StoreError> {
        let cache = Arc::new(RbacCache::default());
        for i in 0..PREFIXES.len() {
            let rev = cache.relist(&*store, i).await?;
            tokio::spawn(follow(cache.clone(), store.clone(), i, rev));
        }
        write_aggregated(&*store, &cache).await;
        Ok(cache)
    }
}

/// The aggregation controller's job: an aggregated ClusterRole's stored rules are kept equal
/// to the union the authorizer computes, so `kubectl describe clusterrole view` shows what
/// `view` grants once another role is labelled into it. A conflicting write is skipped: the
/// write that caused it comes back as an event and this runs again.
async fn write_aggregated(store: &dyn Store, cache: &RbacCache) {
    let snap = cache.snapshot();
    let mut stale: Vec<(String, Vec<Rule>)> = Vec::new();
    cache.with_objects_ro(|o| {
        for (key, v) in &o[CLUSTER_ROLES] {
            if !v["aggregationRule"].is_object() {
                continue;
            }
            let r = RoleRef {
                kind: "ClusterRole".into(),
                name: v["metadata"]["name"].as_str().unwrap_or("").to_string(),
            };
            let want = snap.role_ref_rules(&r, None).unwrap_or(&[]);
            let have: Vec<Rule> = serde_json::from_value(v["rules"].clone()).unwrap_or_default();
            if have != want {
                stale.push((key.clone(), want.to_vec()));
            }
        }
    });
    for (key, rules) in stale {
        let Ok(Some(kv)) = store.get(&key).await else {
            continue;
        };
        let Ok(mut v) = serde_json::from_slice::<Value>(&kv.value) else {
            continue;
        };
        v["rules"] = serde_json::to_value(&rules).unwrap_or_default();
        if let Err(e) = store
            .update(
                &key,
                serde_json::to_vec(&v).unwrap_or_default(),
                kv.mod_revision,
            )
            .await
        {
            tracing::debug!(error = %e, %key, "aggregated ClusterRole not written");
        }
    }
}

async fn follow(cache: Arc<RbacCache>, store: Arc<dyn Store>, i: usize, mut rev: Revision) {
    loop {
        match store.watch(PREFIXES[i], rev).await {
            Ok(mut events) => {
                while let Some(ev) = events.next().await {
                    let Ok(ev) = ev else { break };
                    rev = ev.revision();
                    match ev {
                        WatchEvent::Put { kv, .. } => {
                            if let Ok(v) = serde_json::from_slice::<Value>(&kv.value) {
                                cache.with_objects(|o| {
                                    o[i].insert(kv.key.clone(), v);
                                });
                            }
                        }
                        WatchEvent::Delete { prev, .. } => cache.with_objects(|o| {
                            o[i].remove(&prev.key);
                        }),
                        WatchEvent::Progress { .. } => {}
                    }
                    if i == CLUSTER_ROLES {
                        write_aggregated(&*store, &cache).await;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, prefix = PREFIXES[i], "RBAC watch failed"),
        }
        // The watch ended (compaction, store restart): list again from the current state.
        tokio::time::sleep(Duration::from_millis(500)).await;
        match cache.relist(&*store, i).await {
            Ok(r) => rev = r,
            Err(e) => tracing::warn!(error = %e, prefix = PREFIXES[i], "RBAC relist failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::{Attributes, User};
    use serde_json::json;

    #[tokio::test]
    async fn follows_creates_and_deletes() {
        let store: Arc<dyn Store> = Arc::new(moat_store::MemStore::new());
        let cr = json!({"metadata": {"name": "r"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]});
        store
            .create(
                &format!("{}r", PREFIXES[1]),
                serde_json::to_vec(&cr).unwrap(),
            )
            .await
            .unwrap();
        let cache = RbacCache::start(store.clone()).await.unwrap();
        let u = User {
            name: "u".into(),
            groups: vec![],
        };
        let a = Attributes {
            verb: "list".into(),
            resource_request: true,
            resource: "pods".into(),
            namespace: "a".into(),
            ..Default::default()
        };
        assert!(matches!(
            cache.snapshot().authorize(&u, &a),
            super::super::rbac::Decision::Deny(_)
        ));
        let crb = json!({"metadata": {"name": "b"}, "roleRef": {"kind": "ClusterRole", "name": "r"},
            "subjects": [{"kind": "User", "name": "u"}]});
        let key = format!("{}b", PREFIXES[3]);
        store
            .create(&key, serde_json::to_vec(&crb).unwrap())
            .await
            .unwrap();
        let allowed = |c: &RbacCache| {
            matches!(
                c.snapshot().authorize(&u, &a),
                super::super::rbac::Decision::Allow(_)
            )
        };
        for _ in 0..100 {
            if allowed(&cache) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(allowed(&cache));
        store.delete(&key, None).await.unwrap();
        for _ in 0..100 {
            if !allowed(&cache) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!allowed(&cache));
    }

    #[tokio::test]
    async fn aggregated_rules_are_written_back() {
        let store: Arc<dyn Store> = Arc::new(moat_store::MemStore::new());
        let agg = json!({"metadata": {"name": "agg"}, "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"to": "agg"}}]}});
        let key = format!("{}agg", PREFIXES[1]);
        store
            .create(&key, serde_json::to_vec(&agg).unwrap())
            .await
            .unwrap();
        let _cache = RbacCache::start(store.clone()).await.unwrap();
        let part = json!({"metadata": {"name": "part", "labels": {"to": "agg"}},
            "rules": [{"apiGroups": ["x"], "resources": ["ys"], "verbs": ["get"]}]});
        store
            .create(
                &format!("{}part", PREFIXES[1]),
                serde_json::to_vec(&part).unwrap(),
            )
            .await
            .unwrap();
        let mut rules = Value::Null;
        for _ in 0..100 {
            let kv = store.get(&key).await.unwrap().unwrap();
            rules = serde_json::from_slice::<Value>(&kv.value).unwrap()["rules"].clone();
            if rules.is_array() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            rules,
            json!([{"verbs": ["get"], "apiGroups": ["x"], "resources": ["ys"]}])
        );
    }
}

//! The garbage collector and namespace controller loop: lists what can own or be owned,
//! applies `moat_controllers::gc` plans through the API.

use std::sync::mpsc;
use std::time::Duration;

use moat_api::{RESOURCES, ResourceInfo};
use moat_controllers::gc::{Action, NAMESPACE_FINALIZER, NamespaceAction, Obj};
use serde_json::{Value, json};

use crate::{Api, ClientError};

fn base(r: &ResourceInfo) -> String {
    if r.group.is_empty() {
        format!("/api/{}", r.version)
    } else {
        format!("/apis/{}/{}", r.group, r.version)
    }
}

fn item_path(r: &ResourceInfo, v: &Value) -> String {
    let name = v["metadata"]["name"].as_str().unwrap_or("");
    match v["metadata"]["namespace"].as_str() {
        Some(ns) if r.namespaced => format!("{}/namespaces/{ns}/{}/{name}", base(r), r.plural),
        _ => format!("{}/{}/{name}", base(r), r.plural),
    }
}

/// Runs passes on wake-ups, at most one every `MIN_GAP` (a pass lists every kind).
pub(crate) fn gc_loop(c: Api, rx: mpsc::Receiver<()>, caches: crate::cache::Caches) {
    // A pass lists every kind: at most one every two seconds.
    let mut pace = crate::Pace::new(Duration::from_secs(2));
    while pace.wait(&rx) {
        if let Err(e) = pass(&c, &caches) {
            tracing::debug!(error = %e, "garbage collection pass");
        }
    }
}

fn pass(c: &Api, caches: &crate::cache::Caches) -> Result<(), ClientError> {
    let (namespaces, _) = c.list("/api/v1/namespaces")?;
    let terminating: Vec<String> = namespaces
        .iter()
        .filter(|n| {
            n["metadata"]["deletionTimestamp"].is_string()
                && n["spec"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| x == NAMESPACE_FINALIZER))
        })
        .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    if !caches.synced() {
        return Ok(());
    }
    let mut objs = collect(c, Some(caches), !terminating.is_empty())?;
    // Owners being deleted with the orphan or foreground finalizer lose it once no
    // dependent is left that the finalizer protects: that decision needs every dependent,
    // including one created a moment ago, so it is made on fresh lists.
    if objs.iter().any(|o| {
        o.deleting
            && o.finalizers
                .iter()
                .any(|f| f == moat_controllers::gc::ORPHAN || f == moat_controllers::gc::FOREGROUND)
    }) {
        objs = collect(c, None, !terminating.is_empty())?;
    }
    let by_path: std::collections::HashMap<&str, &Obj> =
        objs.iter().map(|o| (o.path.as_str(), o)).collect();
    let known: std::collections::HashSet<&str> = objs.iter().map(|o| o.uid.as_str()).collect();
    for a in moat_controllers::gc::plan(&objs) {
        // The plan read caches, which can lag: an owner created a moment ago may be missing
        // from them while its new dependent is not. Absence is confirmed by a live read
        // before anything is deleted or disowned because of it (as kube-controller-manager's
        // collector does).
        let a = match a {
            Action::Delete {
                path,
                propagation: "Background",
            } => {
                let o = by_path.get(path.as_str());
                if o.is_some_and(|o| o.owners.iter().any(|r| owner_exists(c, o, r))) {
                    continue;
                }
                Action::Delete {
                    path,
                    propagation: "Background",
                }
            }
            Action::RemoveOwnerRefs { path, uids } => {
                let o = by_path.get(path.as_str());
                let uids: Vec<String> = uids
                    .into_iter()
                    .filter(|u| {
                        known.contains(u.as_str())
                            || !o.is_some_and(|o| {
                                o.owners
                                    .iter()
                                    .any(|r| &r.uid == u && owner_exists(c, o, r))
                            })
                    })
                    .collect();
                if uids.is_empty() {
                    continue;
                }
                Action::RemoveOwnerRefs { path, uids }
            }
            other => other,
        };
        let r = match &a {
            Action::Delete { path, propagation } => c.delete_with(path, propagation),
            Action::RemoveOwnerRefs { path, uids } => edit(c, path, |o| {
                let keep: Vec<Value> = o["metadata"]["ownerReferences"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|r| !uids.iter().any(|u| r["uid"] == u.as_str()))
                    .collect();
                json!({"metadata": {"ownerReferences": if keep.is_empty() { Value::Null } else { json!(keep) }}})
            }),
            Action::RemoveFinalizer { path, finalizer } => edit(c, path, |o| {
                let keep: Vec<Value> = o["metadata"]["finalizers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|f| f != finalizer)
                    .collect();
                json!({"metadata": {"finalizers": if keep.is_empty() { Value::Null } else { json!(keep) }}})
            }),
        };
        if let Err(e) = r {
            tracing::debug!(error = %e, action = ?a, "garbage collector action");
        }
    }
    if terminating.is_empty() {
        return Ok(());
    }
    let contents: Vec<Obj> = objs.into_iter().filter(|o| o.namespace.is_some()).collect();
    for a in moat_controllers::gc::plan_namespaces(&terminating, &contents) {
        let r = match &a {
            NamespaceAction::Delete { path } => c.delete_with(path, "Background"),
            NamespaceAction::Finalize { namespace } => finalize(c, namespace),
        };
        if let Err(e) = r {
            tracing::debug!(error = %e, action = ?a, "namespace controller action");
        }
    }
    Ok(())
}

/// Every object that can own or be owned, read from `caches` where they hold the kind and
/// listed otherwise (events only when a namespace is being deleted: they own nothing).
fn collect(
    c: &Api,
    caches: Option<&crate::cache::Caches>,
    with_events: bool,
) -> Result<Vec<Obj>, ClientError> {
    let mut objs = Vec::new();
    for r in RESOURCES {
        if r.kind == "Event" && !with_events {
            continue;
        }
        let path = format!("{}/{}", base(r), r.plural);
        match caches.and_then(|cs| cs.for_path(&path)) {
            Some(cache) => objs.extend(
                cache
                    .snapshot()
                    .iter()
                    .map(|v| Obj::from_json(item_path(r, v), v)),
            ),
            None => objs.extend(
                c.list(&path)?
                    .0
                    .iter()
                    .map(|v| Obj::from_json(item_path(r, v), v)),
            ),
        }
    }
    Ok(objs)
}

/// Whether the owner `r` of `dependent` exists right now (a live GET; same uid). Unknown
/// kinds and failed reads count as existing: acting on a guess could delete live objects.
fn owner_exists(c: &Api, dependent: &Obj, r: &moat_controllers::gc::OwnerRef) -> bool {
    let (group, version) = match r.api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", r.api_version.as_str()),
    };
    let Some(info) = RESOURCES
        .iter()
        .find(|i| i.kind == r.kind && i.group == group && i.version == version)
    else {
        return true;
    };
    let path = match (&dependent.namespace, info.namespaced) {
        (Some(ns), true) => format!("{}/namespaces/{ns}/{}/{}", base(info), info.plural, r.name),
        (None, true) => return true,
        (_, false) => format!("{}/{}/{}", base(info), info.plural, r.name),
    };
    match c.get(&path) {
        Ok(v) => v["metadata"]["uid"] == r.uid.as_str(),
        Err(ClientError::Api { code: 404, .. }) => false,
        Err(_) => true,
    }
}

/// Merge-patches `path` with what `change` computes from the current object, conditional
/// on its resourceVersion (a concurrent writer makes the patch fail; the next pass redoes it).
fn edit(c: &Api, path: &str, change: impl Fn(&Value) -> Value) -> Result<(), ClientError> {
    let cur = c.get(path)?;
    let mut patch = change(&cur);
    patch["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"].clone();
    c.merge_patch(path, &patch).map(|_| ())
}

fn finalize(c: &Api, ns: &str) -> Result<(), ClientError> {
    let path = format!("/api/v1/namespaces/{ns}");
    let mut cur = c.get(&path)?;
    let keep: Vec<Value> = cur["spec"]["finalizers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|f| f != NAMESPACE_FINALIZER)
        .collect();
    cur["spec"]["finalizers"] = json!(keep);
    c.put(&format!("{path}/finalize"), &cur).map(|_| ())
}

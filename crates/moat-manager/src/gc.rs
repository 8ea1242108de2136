//! The garbage collector and namespace controller loop: lists what can own or be owned,
//! applies `moat_controllers::gc` plans through the API.

use std::sync::mpsc;
use std::time::Duration;

use moat_api::{RESOURCES, ResourceInfo};
use moat_controllers::gc::{Action, NAMESPACE_FINALIZER, NamespaceAction, Obj};
use serde_json::{Value, json};

use crate::{Client, ClientError};

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
pub(crate) fn gc_loop(c: Client, rx: mpsc::Receiver<()>) {
    // A pass lists every kind: at most one every two seconds.
    let mut pace = crate::Pace::new(Duration::from_secs(2));
    while pace.wait(&rx) {
        if let Err(e) = pass(&c) {
            tracing::debug!(error = %e, "garbage collection pass");
        }
    }
}

fn pass(c: &Client) -> Result<(), ClientError> {
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
    let mut objs = Vec::new();
    for r in RESOURCES {
        // Events own nothing and are owned by nothing; they only matter when their
        // namespace goes.
        if r.kind == "Event" && terminating.is_empty() {
            continue;
        }
        let (items, _) = c.list(&format!("{}/{}", base(r), r.plural))?;
        objs.extend(items.iter().map(|v| Obj::from_json(item_path(r, v), v)));
    }
    for a in moat_controllers::gc::plan(&objs) {
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

/// Merge-patches `path` with what `change` computes from the current object, conditional
/// on its resourceVersion (a concurrent writer makes the patch fail; the next pass redoes it).
fn edit(c: &Client, path: &str, change: impl Fn(&Value) -> Value) -> Result<(), ClientError> {
    let cur = c.get(path)?;
    let mut patch = change(&cur);
    patch["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"].clone();
    c.merge_patch(path, &patch).map(|_| ())
}

fn finalize(c: &Client, ns: &str) -> Result<(), ClientError> {
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

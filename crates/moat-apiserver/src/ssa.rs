//! Server-side apply and field ownership (`metadata.managedFields`, FieldsV1).
//!
//! Every write records which manager set which fields: an apply replaces its manager's
//! `Apply` entry with the fields of the applied configuration; other writes add the fields
//! they changed to their manager's `Update` entry and take them from everyone else. An
//! apply that would change a field another manager owns is a 409 with a
//! `FieldManagerConflict` cause per field, unless forced. Fields a manager applied before
//! and no longer applies are removed, unless another manager owns them too.
//!
//! List identity follows the merge keys moat-patch has for strategic merge patch (the same
//! upstream metadata); lists without keys are atomic. No crate implements this, so it is
//! written here. Sans-IO: objects in, objects out.

use std::collections::{BTreeMap, BTreeSet};

use http::StatusCode;
use moat_patch::ListKind;
use serde_json::{Map, Value, json};

use crate::status::ApiError;

/// One step of a field path, as FieldsV1 spells it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pe {
    /// `f:name`: an object field.
    F(String),
    /// `k:{"name":"c"}`: the item of an associative list with these key values.
    K(String),
    /// `v:"x"`: an item of a set-like list of scalars.
    V(String),
    /// `.`: the list item itself (so an item whose fields all moved still has an owner).
    Dot,
}

pub type Path = Vec<Pe>;
pub type FieldSet = BTreeSet<Path>;

/// Server-owned or identity fields that nobody "manages".
fn ignored(path: &[&str]) -> bool {
    matches!(
        path,
        ["apiVersion"]
            | ["kind"]
            | ["status", ..]
            | ["metadata", "name"]
            | ["metadata", "namespace"]
            | ["metadata", "uid"]
            | ["metadata", "resourceVersion"]
            | ["metadata", "generation"]
            | ["metadata", "creationTimestamp"]
            | ["metadata", "deletionTimestamp"]
            | ["metadata", "deletionGracePeriodSeconds"]
            | ["metadata", "managedFields"]
            | ["metadata", "selfLink"]
    )
}

fn key_of(item: &Value, key: &str) -> Option<String> {
    let k = item.get(key)?;
    Some(json!({ key: k }).to_string())
}

/// The leaf fields `v` sets.
pub fn fields(kind: &str, v: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    walk(kind, v, &mut vec![], &mut vec![], &mut out);
    out
}

fn walk(kind: &str, v: &Value, names: &mut Vec<String>, path: &mut Path, out: &mut FieldSet) {
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    if ignored(&name_refs) {
        return;
    }
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, c) in m {
                names.push(k.clone());
                path.push(Pe::F(k.clone()));
                walk(kind, c, names, path, out);
                path.pop();
                names.pop();
            }
        }
        Value::Array(items) if !items.is_empty() => match moat_patch::list_kind(kind, &name_refs) {
            ListKind::MergeBy(key) if items.iter().all(|i| key_of(i, key).is_some()) => {
                for item in items {
                    let Some(k) = key_of(item, key) else { continue };
                    path.push(Pe::K(k));
                    let mut dot = path.clone();
                    dot.push(Pe::Dot);
                    out.insert(dot);
                    walk(kind, item, names, path, out);
                    path.pop();
                }
            }
            ListKind::Set if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
                for item in items {
                    let mut p = path.clone();
                    p.push(Pe::V(item.to_string()));
                    out.insert(p);
                }
            }
            _ => {
                out.insert(path.clone());
            }
        },
        _ => {
            out.insert(path.clone());
        }
    }
}

/// The value at `path`, if any. A `Dot` step names the item it follows.
pub fn get<'a>(v: &'a Value, path: &[Pe]) -> Option<&'a Value> {
    let mut cur = v;
    for pe in path {
        cur = match pe {
            Pe::F(f) => cur.get(f)?,
            Pe::K(k) => {
                let want: Map<String, Value> = serde_json::from_str(k).ok()?;
                cur.as_array()?
                    .iter()
                    .find(|i| want.iter().all(|(kk, kv)| i.get(kk) == Some(kv)))?
            }
            Pe::V(x) => {
                let want: Value = serde_json::from_str(x).ok()?;
                cur.as_array()?.iter().find(|i| **i == want)?
            }
            Pe::Dot => cur,
        };
    }
    Some(cur)
}

/// Removes the field or list item at `path` (a trailing `Dot` removes the item).
fn remove(v: &mut Value, path: &[Pe]) {
    let path = match path.last() {
        Some(Pe::Dot) => &path[..path.len() - 1],
        _ => path,
    };
    let Some((last, init)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for pe in init {
        let next = match pe {
            Pe::F(f) => cur.get_mut(f),
            Pe::K(k) => {
                let Ok(want) = serde_json::from_str::<Map<String, Value>>(k) else {
                    return;
                };
                cur.as_array_mut().and_then(|a| {
                    a.iter_mut()
                        .find(|i| want.iter().all(|(kk, kv)| i.get(kk) == Some(kv)))
                })
            }
            Pe::V(_) | Pe::Dot => None,
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match last {
        Pe::F(f) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(f);
            }
        }
        Pe::K(k) => {
            if let (Ok(want), Some(a)) = (
                serde_json::from_str::<Map<String, Value>>(k),
                cur.as_array_mut(),
            ) {
                a.retain(|i| !want.iter().all(|(kk, kv)| i.get(kk) == Some(kv)));
            }
        }
        Pe::V(x) => {
            if let (Ok(want), Some(a)) = (serde_json::from_str::<Value>(x), cur.as_array_mut()) {
                a.retain(|i| *i != want);
            }
        }
        Pe::Dot => {}
    }
}

fn pe_key(pe: &Pe) -> String {
    match pe {
        Pe::F(f) => format!("f:{f}"),
        Pe::K(k) => format!("k:{k}"),
        Pe::V(v) => format!("v:{v}"),
        Pe::Dot => ".".into(),
    }
}

/// FieldsV1 JSON for a set.
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Value::Object(Map::new());
    for path in set {
        let mut cur = &mut root;
        for pe in path {
            let k = pe_key(pe);
            let Some(m) = cur.as_object_mut() else { break };
            cur = m.entry(k).or_insert_with(|| json!({}));
        }
    }
    root
}

/// The set a FieldsV1 tree describes (every `{}` leaf is a field).
pub fn from_fields_v1(v: &Value) -> FieldSet {
    fn go(v: &Value, path: &mut Path, out: &mut FieldSet) {
        let Some(m) = v.as_object() else { return };
        if m.is_empty() && !path.is_empty() {
            out.insert(path.clone());
            return;
        }
        for (k, c) in m {
            let pe = if k == "." {
                Pe::Dot
            } else if let Some(f) = k.strip_prefix("f:") {
                Pe::F(f.into())
            } else if let Some(x) = k.strip_prefix("k:") {
                Pe::K(x.into())
            } else if let Some(x) = k.strip_prefix("v:") {
                Pe::V(x.into())
            } else {
                continue;
            };
            path.push(pe);
            go(c, path, out);
            path.pop();
        }
    }
    let mut out = FieldSet::new();
    go(v, &mut vec![], &mut out);
    out
}

fn path_string(p: &[Pe]) -> String {
    let mut s = String::new();
    for pe in p {
        match pe {
            Pe::F(f) => {
                s.push('.');
                s.push_str(f);
            }
            Pe::K(k) => s.push_str(&format!("[{}]", k.trim_matches(|c| c == '{' || c == '}'))),
            Pe::V(v) => s.push_str(&format!("[={v}]")),
            Pe::Dot => {}
        }
    }
    s
}

#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    /// "" for the main resource, "scale" for writes through the scale subresource.
    subresource: String,
    api_version: String,
    time: String,
    set: FieldSet,
}

fn entries(obj: &Value) -> Vec<Entry> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| Entry {
                    manager: e["manager"].as_str().unwrap_or("").to_string(),
                    operation: e["operation"].as_str().unwrap_or("Update").to_string(),
                    subresource: e["subresource"].as_str().unwrap_or("").to_string(),
                    api_version: e["apiVersion"].as_str().unwrap_or("").to_string(),
                    time: e["time"].as_str().unwrap_or("").to_string(),
                    set: from_fields_v1(&e["fieldsV1"]),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn store_entries(obj: &mut Value, es: &[Entry]) {
    let list: Vec<Value> = es
        .iter()
        .filter(|e| !e.set.is_empty())
        .map(|e| {
            let mut v = json!({"manager": e.manager, "operation": e.operation, "apiVersion": e.api_version,
                "time": e.time, "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(&e.set)});
            if !e.subresource.is_empty() {
                v["subresource"] = json!(e.subresource);
            }
            v
        })
        .collect();
    if let Some(m) = obj["metadata"].as_object_mut() {
        if list.is_empty() {
            m.remove("managedFields");
        } else {
            m.insert("managedFields".into(), json!(list));
        }
    }
}

/// Paths whose value differs between `old` and `new` (added, changed or removed), among
/// the fields either sets.
fn changed(kind: &str, old: &Value, new: &Value) -> FieldSet {
    let a = fields(kind, old);
    let b = fields(kind, new);
    a.union(&b)
        .filter(|p| get(old, p) != get(new, p))
        .cloned()
        .collect()
}

fn now() -> String {
    moat_api::time::rfc3339_from_millis(chrono::Utc::now().timestamp_millis())
}

/// Records a non-apply write by `manager`: it now owns what it changed, and nobody else
/// does. `new` keeps the managedFields of `old` (clients cannot rewrite ownership by
/// sending managedFields back, e.g. from `kubectl edit`).
pub fn track_update(kind: &str, old: Option<&Value>, new: &mut Value, manager: &str) {
    track_update_sub(kind, old, new, manager, "")
}

/// [`track_update`] for a write through a subresource (`scale`).
pub fn track_update_sub(
    kind: &str,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: &str,
) {
    let empty = json!({});
    let old = old.unwrap_or(&empty);
    let mut es = entries(old);
    let diff = changed(kind, old, new);
    if diff.is_empty() {
        store_entries(new, &es);
        return;
    }
    for e in &mut es {
        e.set.retain(|p| !diff.contains(p));
    }
    // Removed fields belong to nobody; fields that now hold a value belong to the writer.
    let owned: FieldSet = diff.into_iter().filter(|p| get(new, p).is_some()).collect();
    let av = new["apiVersion"].as_str().unwrap_or("").to_string();
    match es
        .iter_mut()
        .find(|e| e.manager == manager && e.operation == "Update" && e.subresource == subresource)
    {
        Some(e) => {
            e.set.extend(owned);
            e.time = now();
            e.api_version = av;
        }
        None => es.push(Entry {
            manager: manager.to_string(),
            operation: "Update".into(),
            subresource: subresource.to_string(),
            api_version: av,
            time: now(),
            set: owned,
        }),
    }
    store_entries(new, &es);
}

/// A conflict of an apply with another manager's field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    pub api_version: String,
    pub field: String,
}

pub fn conflict_error(cs: &[Conflict]) -> ApiError {
    let n = cs.len();
    let lines: Vec<String> = cs
        .iter()
        .map(|c| {
            format!(
                "conflict with \"{}\" using {}: {}",
                c.manager, c.api_version, c.field
            )
        })
        .collect();
    let msg = if n == 1 {
        format!("Apply failed with 1 conflict: {}", lines[0])
    } else {
        format!("Apply failed with {n} conflicts: {}", lines.join("\n"))
    };
    let mut e = ApiError::new(StatusCode::CONFLICT, "Conflict", msg);
    e.causes = cs
        .iter()
        .map(|c| {
            moat_api::Cause::new(
                "FieldManagerConflict",
                c.field.clone(),
                format!("conflict with \"{}\" using {}", c.manager, c.api_version),
            )
        })
        .collect();
    e
}

/// Applies `applied` (the manager's whole intent) to `live`. Returns the new object with
/// managedFields updated, or the conflicts.
pub fn apply(
    kind: &str,
    live: &Value,
    applied: &Value,
    manager: &str,
    force: bool,
) -> Result<Value, Vec<Conflict>> {
    let mut es = entries(live);
    let new_set = fields(kind, applied);
    let prev_set = es
        .iter()
        .find(|e| e.manager == manager && e.operation == "Apply")
        .map(|e| e.set.clone())
        .unwrap_or_default();
    let mut conflicts = Vec::new();
    for e in es.iter_mut().filter(|e| e.manager != manager) {
        let mut taken = Vec::new();
        for p in e.set.intersection(&new_set) {
            if matches!(p.last(), Some(Pe::Dot)) {
                continue;
            }
            if get(live, p) != get(applied, p) {
                if force {
                    taken.push(p.clone());
                } else {
                    conflicts.push(Conflict {
                        manager: e.manager.clone(),
                        api_version: e.api_version.clone(),
                        field: path_string(p),
                    });
                }
            }
        }
        for p in taken {
            e.set.remove(&p);
        }
    }
    if !conflicts.is_empty() {
        return Err(conflicts);
    }
    // Fields this manager applied before and no longer does go away, unless someone else
    // owns them too.
    let others: FieldSet = es
        .iter()
        .filter(|e| !(e.manager == manager && e.operation == "Apply"))
        .flat_map(|e| e.set.iter().cloned())
        .collect();
    let mut out = live.clone();
    let gone: Vec<&Path> = prev_set
        .difference(&new_set)
        .filter(|p| !others.contains(*p))
        .collect();
    // Whole list items first: an item goes when nothing of it is owned by anyone any more.
    let mut removed_items: Vec<&[Pe]> = Vec::new();
    for p in gone.iter().filter(|p| matches!(p.last(), Some(Pe::Dot))) {
        let item = &p[..p.len() - 1];
        let still = others
            .iter()
            .chain(new_set.iter())
            .any(|o| o.len() > item.len() && o[..item.len()] == *item);
        if !still {
            removed_items.push(item);
        }
    }
    removed_items.sort_by_key(|i| std::cmp::Reverse(i.len()));
    for item in &removed_items {
        remove(&mut out, item);
    }
    for p in gone.iter().filter(|p| !matches!(p.last(), Some(Pe::Dot))) {
        if removed_items
            .iter()
            .any(|i| p.len() > i.len() && p[..i.len()] == **i)
        {
            continue;
        }
        // The key field of a list item that stays is its identity: it stays too.
        if let [.., Pe::K(k), Pe::F(f)] = p.as_slice()
            && serde_json::from_str::<Map<String, Value>>(k).is_ok_and(|m| m.contains_key(f))
        {
            continue;
        }
        remove(&mut out, p);
    }
    let mut patch = applied.clone();
    if let Some(m) = patch["metadata"].as_object_mut() {
        m.remove("managedFields");
        m.remove("resourceVersion");
    }
    let mut merged = moat_patch::strategic_merge(kind, &out, &patch).map_err(|e| {
        vec![Conflict {
            manager: String::new(),
            api_version: String::new(),
            field: format!("(the applied configuration cannot be merged: {e})"),
        }]
    })?;
    es.retain(|e| !(e.manager == manager && e.operation == "Apply"));
    es.push(Entry {
        manager: manager.to_string(),
        operation: "Apply".into(),
        subresource: String::new(),
        api_version: applied["apiVersion"].as_str().unwrap_or("").to_string(),
        time: now(),
        set: new_set,
    });
    store_entries(&mut merged, &es);
    Ok(merged)
}

/// The manager of a non-apply write: `?fieldManager=`, else the client's user agent up
/// to the first '/', as kube-apiserver derives it.
pub fn manager_of(q: Option<&str>, user_agent: Option<&str>) -> String {
    match q {
        Some(m) if !m.is_empty() => m.to_string(),
        _ => user_agent
            .and_then(|ua| ua.split('/').next())
            .filter(|s| !s.is_empty())
            .unwrap_or("unknown")
            .to_string(),
    }
}

/// Validates a fieldManager value (at most 128 printable characters, as upstream).
pub fn check_manager(m: &str) -> Result<(), ApiError> {
    if m.len() > 128 || m.chars().any(|c| c.is_control()) {
        return Err(ApiError::bad_request(format!(
            "fieldManager {m:?} is invalid: must be at most 128 printable characters"
        )));
    }
    Ok(())
}

/// Entries by manager, for tests and debugging.
pub fn owners(obj: &Value) -> BTreeMap<String, Vec<String>> {
    entries(obj)
        .into_iter()
        .map(|e| {
            (
                format!("{}/{}", e.manager, e.operation),
                e.set.iter().map(|p| path_string(p)).collect(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"app": "d"}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "d"}},
              "template": {"metadata": {"labels": {"app": "d"}},
                "spec": {"containers": [{"name": "c", "image": image}]}}}})
    }

    #[test]
    fn fields_v1_round_trips_and_uses_keys() {
        let f = fields("Deployment", &deploy(1, "x"));
        let v1 = to_fields_v1(&f);
        assert!(
            v1["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"]["f:image"]
                .is_object(),
            "{v1}"
        );
        assert!(
            v1["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"]["."]
                .is_object()
        );
        assert!(
            v1["f:metadata"].get("f:name").is_none(),
            "identity is not managed"
        );
        assert_eq!(from_fields_v1(&v1), f);
    }

    #[test]
    fn apply_creates_ownership_and_reapply_is_stable() {
        let live = apply("Deployment", &json!({}), &deploy(2, "x"), "kubectl", false)
            .expect("first apply");
        assert_eq!(live["spec"]["replicas"], 2);
        let again = apply("Deployment", &live, &deploy(2, "x"), "kubectl", false).expect("again");
        assert_eq!(again["spec"], live["spec"]);
        assert!(owners(&again).contains_key("kubectl/Apply"));
    }

    #[test]
    fn conflicting_update_is_reported_and_force_takes_over() {
        let live =
            apply("Deployment", &json!({}), &deploy(2, "x"), "kubectl", false).expect("apply");
        // Someone scales with a plain update.
        let mut scaled = live.clone();
        scaled["spec"]["replicas"] = json!(5);
        track_update("Deployment", Some(&live), &mut scaled, "kubectl-scale");
        let o = owners(&scaled);
        assert_eq!(
            o["kubectl-scale/Update"],
            vec![".spec.replicas".to_string()]
        );
        assert!(!o["kubectl/Apply"].contains(&".spec.replicas".to_string()));
        // Re-applying replicas 2 conflicts with the scaler.
        let cs =
            apply("Deployment", &scaled, &deploy(2, "x"), "kubectl", false).expect_err("conflict");
        assert_eq!(
            cs,
            vec![Conflict {
                manager: "kubectl-scale".into(),
                api_version: "apps/v1".into(),
                field: ".spec.replicas".into()
            }]
        );
        let e = conflict_error(&cs);
        assert_eq!(e.code, StatusCode::CONFLICT);
        assert_eq!(e.causes[0].reason, "FieldManagerConflict");
        // Applying the same value as the other owner is shared ownership, not a conflict.
        let shared =
            apply("Deployment", &scaled, &deploy(5, "x"), "kubectl", false).expect("same value");
        assert_eq!(shared["spec"]["replicas"], 5);
        // Forcing takes the field.
        let forced = apply("Deployment", &scaled, &deploy(2, "x"), "kubectl", true).expect("force");
        assert_eq!(forced["spec"]["replicas"], 2);
        assert!(!owners(&forced).contains_key("kubectl-scale/Update"));
    }

    #[test]
    fn fields_dropped_from_the_applied_config_are_removed_unless_shared() {
        let mut cfg = deploy(1, "x");
        cfg["metadata"]["labels"]["tier"] = json!("web");
        if let Some(c) = cfg["spec"]["template"]["spec"]["containers"].as_array_mut() {
            c.push(json!({"name": "side", "image": "y"}));
        }
        let live = apply("Deployment", &json!({}), &cfg, "kubectl", false).expect("apply");
        assert_eq!(
            live["spec"]["template"]["spec"]["containers"]
                .as_array()
                .map(Vec::len),
            Some(2)
        );
        // A controller also manages an annotation; the applier never touched it.
        let mut annotated = live.clone();
        annotated["metadata"]["annotations"] = json!({"example.org/x": "1"});
        track_update("Deployment", Some(&live), &mut annotated, "controller");
        let next =
            apply("Deployment", &annotated, &deploy(1, "x"), "kubectl", false).expect("shrink");
        assert!(next["metadata"]["labels"].get("tier").is_none(), "{next}");
        assert_eq!(
            next["spec"]["template"]["spec"]["containers"],
            json!([{"name": "c", "image": "x"}])
        );
        assert_eq!(next["metadata"]["annotations"]["example.org/x"], "1");
    }

    #[test]
    fn managers_come_from_the_query_or_user_agent() {
        assert_eq!(
            manager_of(Some("kubectl-edit"), Some("kubectl/v1.33")),
            "kubectl-edit"
        );
        assert_eq!(
            manager_of(None, Some("kubectl/v1.33.0 (linux/amd64)")),
            "kubectl"
        );
        assert_eq!(manager_of(None, None), "unknown");
        assert!(check_manager(&"x".repeat(129)).is_err());
    }
}

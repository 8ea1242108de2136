//! Strategic merge patch: the patch format `kubectl apply` (client-side), `kubectl edit` and
//! `kubectl patch --type strategic` send. Maps merge recursively; `null` deletes; lists merge
//! by a per-field merge key, union as sets, or are replaced whole, as the upstream Go struct
//! tags (`patchStrategy`/`patchMergeKey`) declare; the directives `$patch`, `$retainKeys`,
//! `$setElementOrder/<field>` and `$deleteFromPrimitiveList/<field>` are honoured.
//!
//! Written here because no Rust crate implements strategic merge patch. The merge-key table
//! is data ([`list_kind`]) taken from the upstream API types for the kinds moat serves.

use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatchError {
    #[error("{path}: the patch must be a JSON object")]
    NotObject { path: String },
    #[error("{path}: list items of a merge list must be objects with the merge key {key:?}")]
    MergeItem { path: String, key: String },
    #[error("{path}: unknown $patch directive {directive:?}")]
    Directive { path: String, directive: String },
}

/// How a list field merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    /// Replaced whole by the patch.
    Atomic,
    /// Objects merged by the value of this key.
    MergeBy(&'static str),
    /// Primitive values unioned (e.g. finalizers).
    Set,
}

/// Where a PodSpec sits inside each kind that embeds one.
fn pod_spec_depth(kind: &str) -> &'static [&'static str] {
    match kind {
        "Pod" => &["spec"],
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job" | "PodTemplate" => {
            &["spec", "template", "spec"]
        }
        "CronJob" => &["spec", "jobTemplate", "spec", "template", "spec"],
        _ => &[],
    }
}

/// The merge behaviour of the list at `path` (field names from the object root; list
/// indices left out) in an object of `kind`.
pub fn list_kind(kind: &str, path: &[&str]) -> ListKind {
    use ListKind::*;
    // Object metadata, in any kind.
    match path {
        ["metadata", "finalizers"] => return Set,
        ["metadata", "ownerReferences"] => return MergeBy("uid"),
        ["status", "conditions"] => return MergeBy("type"),
        _ => {}
    }
    let ps = pod_spec_depth(kind);
    if !ps.is_empty() && path.len() > ps.len() && path[..ps.len()] == *ps {
        let rest = &path[ps.len()..];
        return match rest {
            ["containers" | "initContainers" | "ephemeralContainers"] => MergeBy("name"),
            ["volumes" | "imagePullSecrets" | "schedulingGates" | "resourceClaims"] => {
                MergeBy("name")
            }
            ["hostAliases"] => MergeBy("ip"),
            ["topologySpreadConstraints"] => MergeBy("topologyKey"),
            [
                "containers" | "initContainers" | "ephemeralContainers",
                "env",
            ] => MergeBy("name"),
            [
                "containers" | "initContainers" | "ephemeralContainers",
                "ports",
            ] => MergeBy("containerPort"),
            [
                "containers" | "initContainers" | "ephemeralContainers",
                "volumeMounts",
            ] => MergeBy("mountPath"),
            [
                "containers" | "initContainers" | "ephemeralContainers",
                "volumeDevices",
            ] => MergeBy("devicePath"),
            [
                "containers" | "initContainers" | "ephemeralContainers",
                "resizePolicy",
            ] => MergeBy("resourceName"),
            _ => Atomic,
        };
    }
    match (kind, path) {
        ("Service", ["spec", "ports"]) => MergeBy("port"),
        ("Node", ["status", "addresses"]) => MergeBy("type"),
        ("Pod", ["status", "containerStatuses" | "initContainerStatuses"]) => Atomic,
        _ => Atomic,
    }
}

/// Applies `patch` to `original` for an object of `kind`.
pub fn strategic_merge(kind: &str, original: &Value, patch: &Value) -> Result<Value, PatchError> {
    let Value::Object(p) = patch else {
        return Err(PatchError::NotObject { path: ".".into() });
    };
    let mut out = original.clone();
    if !out.is_object() {
        out = Value::Object(Map::new());
    }
    merge_map(kind, &mut out, p, &mut Vec::new())?;
    Ok(out)
}

const SET_ORDER: &str = "$setElementOrder/";
const DELETE_PRIMITIVE: &str = "$deleteFromPrimitiveList/";

fn path_str(path: &[String]) -> String {
    if path.is_empty() {
        ".".into()
    } else {
        path.join(".")
    }
}

/// Removes directive keys from a value that is inserted as new (no original to merge with).
fn strip(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|x| x.get("$patch").is_none())
                .map(strip)
                .collect(),
        ),
        other => other.clone(),
    }
}

fn merge_map(
    kind: &str,
    target: &mut Value,
    patch: &Map<String, Value>,
    path: &mut Vec<String>,
) -> Result<(), PatchError> {
    if let Some(d) = patch.get("$patch") {
        match d.as_str() {
            Some("replace") => {
                *target = strip(&Value::Object(patch.clone()));
                return Ok(());
            }
            Some("merge") => {}
            Some("delete") => {
                *target = Value::Object(Map::new());
                return Ok(());
            }
            _ => {
                return Err(PatchError::Directive {
                    path: path_str(path),
                    directive: d.to_string(),
                });
            }
        }
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let mut orders: Vec<(String, Vec<Value>)> = Vec::new();
    for (k, v) in patch {
        if k == "$patch" || k == "$retainKeys" {
            continue;
        }
        if let Some(field) = k.strip_prefix(SET_ORDER) {
            orders.push((field.to_string(), v.as_array().cloned().unwrap_or_default()));
            continue;
        }
        if let Some(field) = k.strip_prefix(DELETE_PRIMITIVE) {
            if let (Some(list), Some(del)) = (
                target.get_mut(field).and_then(|l| l.as_array_mut()),
                v.as_array(),
            ) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        let Some(obj) = target.as_object_mut() else {
            continue;
        };
        path.push(k.clone());
        match v {
            Value::Null => {
                obj.remove(k);
            }
            Value::Object(pm) if pm.get("$patch").and_then(|d| d.as_str()) == Some("delete") => {
                obj.remove(k);
            }
            Value::Object(pm) => {
                let slot = obj.entry(k.clone()).or_insert(Value::Object(Map::new()));
                merge_map(kind, slot, pm, path)?;
            }
            Value::Array(items) => {
                let names: Vec<&str> = path.iter().map(String::as_str).collect();
                let lk = list_kind(kind, &names);
                let cur = obj.get(k).and_then(|c| c.as_array()).cloned();
                let merged = merge_list(kind, lk, cur.unwrap_or_default(), items, path)?;
                obj.insert(k.clone(), Value::Array(merged));
            }
            scalar => {
                obj.insert(k.clone(), scalar.clone());
            }
        }
        path.pop();
    }
    for (field, order) in orders {
        path.push(field.clone());
        let names: Vec<&str> = path.iter().map(String::as_str).collect();
        let lk = list_kind(kind, &names);
        path.pop();
        if let Some(list) = target.get_mut(&field).and_then(|l| l.as_array_mut()) {
            reorder(list, &order, lk);
        }
    }
    if let Some(keep) = patch.get("$retainKeys").and_then(|r| r.as_array()) {
        let keep: Vec<&str> = keep.iter().filter_map(|k| k.as_str()).collect();
        if let Some(obj) = target.as_object_mut() {
            obj.retain(|k, _| keep.contains(&k.as_str()));
        }
    }
    Ok(())
}

fn key_of<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_object().and_then(|o| o.get(key))
}

fn merge_list(
    kind: &str,
    lk: ListKind,
    mut cur: Vec<Value>,
    items: &[Value],
    path: &mut Vec<String>,
) -> Result<Vec<Value>, PatchError> {
    match lk {
        ListKind::Atomic => Ok(items.iter().map(strip).collect()),
        ListKind::Set => {
            for i in items {
                if !cur.contains(i) {
                    cur.push(i.clone());
                }
            }
            Ok(cur)
        }
        ListKind::MergeBy(key) => {
            if items
                .iter()
                .any(|i| i.get("$patch").and_then(|d| d.as_str()) == Some("replace"))
            {
                return Ok(items
                    .iter()
                    .filter(|i| i.get("$patch").is_none())
                    .map(strip)
                    .collect());
            }
            for item in items {
                let Some(m) = item.as_object() else {
                    return Err(PatchError::MergeItem {
                        path: path_str(path),
                        key: key.into(),
                    });
                };
                let Some(kv) = m.get(key) else {
                    return Err(PatchError::MergeItem {
                        path: path_str(path),
                        key: key.into(),
                    });
                };
                let pos = cur.iter().position(|c| key_of(c, key) == Some(kv));
                if m.get("$patch").and_then(|d| d.as_str()) == Some("delete") {
                    if let Some(p) = pos {
                        cur.remove(p);
                    }
                    continue;
                }
                match pos {
                    Some(p) => merge_map(kind, &mut cur[p], m, path)?,
                    None => cur.push(strip(item)),
                }
            }
            Ok(cur)
        }
    }
}

/// Orders `list` as `$setElementOrder` says; elements it does not name keep their relative
/// order after the named ones.
fn reorder(list: &mut Vec<Value>, order: &[Value], lk: ListKind) {
    let ident = |v: &Value| -> Option<Value> {
        match lk {
            ListKind::MergeBy(k) => key_of(v, k).cloned(),
            _ => Some(v.clone()),
        }
    };
    let wanted: Vec<Value> = order
        .iter()
        .filter_map(|o| ident(o).or_else(|| Some(o.clone())))
        .collect();
    let mut named: Vec<(usize, Value)> = Vec::new();
    let mut rest = Vec::new();
    for v in list.drain(..) {
        match ident(&v).and_then(|id| wanted.iter().position(|w| *w == id)) {
            Some(i) => named.push((i, v)),
            None => rest.push(v),
        }
    }
    named.sort_by_key(|(i, _)| *i);
    list.extend(named.into_iter().map(|(_, v)| v));
    list.extend(rest);
}

#[cfg(test)]
mod tests;

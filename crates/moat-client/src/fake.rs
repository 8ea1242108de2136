//! An in-memory API server for unit tests of the loops' API side: objects live at their
//! paths, writes bump a resourceVersion, every call is recorded, and failures can be
//! scripted per method and path prefix.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{Value, json};

use crate::{Api, ClientError};

/// One recorded call.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub method: &'static str,
    pub path: String,
    pub body: Option<Value>,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    calls: Vec<Call>,
    /// (method, path prefix, status code, times left)
    failures: Vec<(&'static str, String, u16, usize)>,
    watch_events: Vec<Value>,
    rv: u64,
    generated: u64,
}

#[derive(Default)]
pub struct FakeApi {
    state: Mutex<State>,
}

fn api_error(method: &'static str, path: &str, code: u16, reason: &str) -> ClientError {
    ClientError::Api {
        method,
        path: path.to_string(),
        code,
        reason: reason.to_string(),
        message: format!("fake: {reason}"),
    }
}

/// `/api/v1/pods` also lists `/api/v1/namespaces/*/pods/*`.
fn in_collection(collection: &str, obj_path: &str) -> bool {
    if let Some(name) = obj_path
        .strip_prefix(collection)
        .and_then(|r| r.strip_prefix('/'))
    {
        return !name.is_empty() && !name.contains('/');
    }
    let (Some((prefix, plural)), true) = (collection.rsplit_once('/'), !collection.is_empty())
    else {
        return false;
    };
    let Some(rest) = obj_path.strip_prefix(&format!("{prefix}/namespaces/")) else {
        return false;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    parts.len() == 3 && parts[1] == plural
}

/// The selectors the loops send: the field selectors `spec.nodeName=X` and `metadata.name=X`, and label selectors
/// (moat-api's, as the API server reads them; one that does not parse matches nothing, where
/// the server would answer 400). Only the `=` the callers percent-encode is decoded.
fn matches_selector(query: &str, obj: &Value) -> bool {
    query.split('&').all(|kv| {
        if let Some(sel) = kv.strip_prefix("labelSelector=") {
            return moat_api::selector::Selector::parse(&sel.replace("%3D", "="))
                .is_ok_and(|s| s.matches_json(&obj["metadata"]["labels"]));
        }
        let Some(sel) = kv.strip_prefix("fieldSelector=") else {
            return true;
        };
        let sel = sel.replace("%3D", "=");
        match sel.split_once('=') {
            Some(("spec.nodeName", v)) => obj["spec"]["nodeName"].as_str() == Some(v),
            Some(("metadata.name", v)) => obj["metadata"]["name"].as_str() == Some(v),
            _ => true,
        }
    })
}

impl FakeApi {
    /// The next `times` calls of `method` on a path starting with `prefix` fail with `code`.
    pub fn fail(&self, method: &'static str, prefix: &str, code: u16, times: usize) {
        self.lock()
            .failures
            .push((method, prefix.into(), code, times));
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The object at `path`, if any.
    pub fn object(&self, path: &str) -> Option<Value> {
        self.lock().objects.get(path).cloned()
    }

    /// Puts an object at `path` as it is (test setup; not recorded as a call).
    pub fn insert(&self, path: &str, obj: Value) {
        self.lock().objects.insert(path.into(), obj);
    }

    /// The objects directly under collection `collection`.
    pub fn objects_under(&self, collection: &str) -> Vec<Value> {
        self.lock()
            .objects
            .iter()
            .filter(|(p, _)| in_collection(collection, p))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Events the next `watch` delivers before it returns.
    pub fn push_watch_events(&self, events: Vec<Value>) {
        self.lock().watch_events.extend(events);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the call and answers a scripted failure if one matches.
    fn enter(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<std::sync::MutexGuard<'_, State>, ClientError> {
        let mut s = self.lock();
        s.calls.push(Call {
            method,
            path: path.into(),
            body: body.cloned(),
        });
        if let Some(f) = s
            .failures
            .iter_mut()
            .find(|f| f.0 == method && path.starts_with(&f.1) && f.3 > 0)
        {
            f.3 -= 1;
            let code = f.2;
            return Err(api_error(method, path, code, "ScriptedFailure"));
        }
        Ok(s)
    }
}

fn bump(s: &mut State, obj: &mut Value) {
    s.rv += 1;
    obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
}

/// The object a subresource path (`.../status`) writes to.
fn target(s: &State, path: &str) -> String {
    if !s.objects.contains_key(path)
        && let Some(base) = path.strip_suffix("/status")
        && s.objects.contains_key(base)
    {
        return base.to_string();
    }
    path.to_string()
}

impl Api for FakeApi {
    fn get(&self, path: &str) -> Result<Value, ClientError> {
        let s = self.enter("GET", path, None)?;
        s.objects
            .get(path)
            .cloned()
            .ok_or_else(|| api_error("GET", path, 404, "NotFound"))
    }

    fn list(&self, path: &str) -> Result<(Vec<Value>, String), ClientError> {
        let s = self.enter("LIST", path, None)?;
        let (collection, query) = path.split_once('?').unwrap_or((path, ""));
        let items = s
            .objects
            .iter()
            .filter(|(p, o)| in_collection(collection, p) && matches_selector(query, o))
            .map(|(_, v)| v.clone())
            .collect();
        Ok((items, s.rv.to_string()))
    }

    fn create(&self, path: &str, obj: &Value) -> Result<Value, ClientError> {
        let mut s = self.enter("POST", path, Some(obj))?;
        let mut obj = obj.clone();
        let name = match (
            obj["metadata"]["name"].as_str(),
            obj["metadata"]["generateName"].as_str(),
        ) {
            (Some(n), _) => n.to_string(),
            (None, Some(g)) => {
                s.generated += 1;
                format!("{g}{:05}", s.generated)
            }
            (None, None) => return Err(api_error("POST", path, 422, "Invalid")),
        };
        obj["metadata"]["name"] = json!(name);
        let at = format!("{path}/{name}");
        if s.objects.contains_key(&at) {
            return Err(api_error("POST", path, 409, "AlreadyExists"));
        }
        bump(&mut s, &mut obj);
        s.objects.insert(at, obj.clone());
        Ok(obj)
    }

    fn merge_patch(&self, path: &str, patch: &Value) -> Result<Value, ClientError> {
        let mut s = self.enter("PATCH", path, Some(patch))?;
        let at = target(&s, path);
        let Some(mut obj) = s.objects.get(&at).cloned() else {
            return Err(api_error("PATCH", path, 404, "NotFound"));
        };
        json_patch::merge(&mut obj, patch);
        bump(&mut s, &mut obj);
        s.objects.insert(at, obj.clone());
        Ok(obj)
    }

    fn delete(&self, path: &str) -> Result<(), ClientError> {
        let path_only = path.split_once('?').map_or(path, |(p, _)| p);
        let mut s = self.enter("DELETE", path, None)?;
        s.objects.remove(path_only);
        Ok(())
    }

    fn watch(&self, path: &str, _rv: &str, f: &mut dyn FnMut(&Value)) -> Result<(), ClientError> {
        let events = std::mem::take(&mut self.enter("WATCH", path, None)?.watch_events);
        for e in &events {
            f(e);
        }
        // A real watch blocks; the fake's stream ends, and the caller re-lists after a pause.
        std::thread::sleep(std::time::Duration::from_millis(50));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_keeps_objects_at_their_paths_and_scripts_failures() {
        let api = FakeApi::default();
        let n = api
            .create(
                "/api/v1/nodes",
                &json!({"metadata": {"name": "n1"}, "spec": {}}),
            )
            .unwrap();
        assert_eq!(n["metadata"]["resourceVersion"], "1");
        let e = api.create("/api/v1/nodes", &json!({"metadata": {"name": "n1"}}));
        assert_eq!(e.unwrap_err().code(), Some(409));
        api.merge_patch(
            "/api/v1/nodes/n1/status",
            &json!({"status": {"phase": "x"}}),
        )
        .unwrap();
        assert_eq!(
            api.object("/api/v1/nodes/n1").unwrap()["status"]["phase"],
            "x"
        );
        api.create(
            "/api/v1/namespaces/a/pods",
            &json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}}),
        )
        .unwrap();
        let (pods, _) = api
            .list("/api/v1/pods?fieldSelector=spec.nodeName%3Dn1")
            .unwrap();
        assert_eq!(pods.len(), 1);
        let (pods, _) = api
            .list("/api/v1/pods?fieldSelector=spec.nodeName%3Dn2")
            .unwrap();
        assert!(pods.is_empty());
        api.create(
            "/api/v1/namespaces/a/pods",
            &json!({"metadata": {"name": "q", "labels": {"app": "web"}}}),
        )
        .unwrap();
        let names = |q: &str| -> Vec<Value> {
            let (items, _) = api.list(&format!("/api/v1/pods?{q}")).unwrap();
            items
                .iter()
                .map(|o| o["metadata"]["name"].clone())
                .collect()
        };
        assert_eq!(names("labelSelector=app%3Dweb"), [json!("q")]);
        assert_eq!(names("labelSelector=!app"), [json!("p")]);
        assert!(names("labelSelector=app%3Ddb").is_empty());
        api.fail("GET", "/api/v1/nodes", 500, 1);
        assert_eq!(api.get("/api/v1/nodes/n1").unwrap_err().code(), Some(500));
        assert!(api.get("/api/v1/nodes/n1").is_ok());
        api.delete("/api/v1/namespaces/a/pods/p?gracePeriodSeconds=0")
            .unwrap();
        assert_eq!(
            api.get("/api/v1/namespaces/a/pods/p").unwrap_err().code(),
            Some(404)
        );
    }
}

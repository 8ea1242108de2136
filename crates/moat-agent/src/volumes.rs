//! ConfigMaps and Secrets a pod consumes (volumes and container env), read through the API:
//! [`PodObjects`] is the narrow trait, [`ApiObjects`] its implementation over [`Api`], and
//! [`volume_files`] turns an object into a volume's files (sans-IO).

use std::sync::Arc;

use k8s_openapi::api::core::v1::Volume;
use moat_client::Api;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{kind} name {name:?} is not a valid object name")]
    BadName { kind: &'static str, name: String },
    #[error("reading {kind} {namespace}/{name}")]
    Api {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<moat_client::ClientError>,
    },
    #[error("{what} key {key}: not base64")]
    Base64 {
        what: &'static str,
        key: String,
        #[source]
        source: base64::DecodeError,
    },
    #[error("key {0} not found")]
    MissingKey(String),
    #[error("volume file {0:?} escapes the volume")]
    Escapes(String),
    #[error("{kind} {name} not found")]
    NotFound { kind: &'static str, name: String },
}

/// The kinds a pod may consume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    ConfigMap,
    Secret,
}

impl ObjectKind {
    pub fn plural(self) -> &'static str {
        match self {
            ObjectKind::ConfigMap => "configmaps",
            ObjectKind::Secret => "secrets",
        }
    }
}

/// Reads the objects a pod consumes.
pub trait PodObjects: Send + Sync {
    /// The object, or `None` when it does not exist.
    fn get(&self, ns: &str, kind: ObjectKind, name: &str) -> Result<Option<Value>, VolumeError>;
}

/// [`PodObjects`] through the API.
pub struct ApiObjects(pub Arc<dyn Api>);

impl PodObjects for ApiObjects {
    fn get(&self, ns: &str, kind: ObjectKind, name: &str) -> Result<Option<Value>, VolumeError> {
        // Object names are DNS subdomains; anything else must not shape the request path.
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        {
            return Err(VolumeError::BadName {
                kind: kind.plural(),
                name: name.into(),
            });
        }
        match self
            .0
            .get(&format!("/api/v1/namespaces/{ns}/{}/{name}", kind.plural()))
        {
            Ok(obj) => Ok(Some(obj)),
            Err(e) if e.code() == Some(404) => Ok(None),
            Err(source) => Err(VolumeError::Api {
                kind: kind.plural(),
                namespace: ns.into(),
                name: name.into(),
                source: Box::new(source),
            }),
        }
    }
}

/// The files of a configMap or secret volume (empty for other volume types).
pub fn files_of(
    objects: &dyn PodObjects,
    ns: &str,
    v: &Volume,
) -> Result<Vec<(String, Vec<u8>)>, VolumeError> {
    let (kind, name, optional) = match (&v.config_map, &v.secret) {
        (Some(cm), _) => (ObjectKind::ConfigMap, cm.name.clone(), cm.optional),
        (_, Some(s)) => (
            ObjectKind::Secret,
            s.secret_name.clone().unwrap_or_default(),
            s.optional,
        ),
        _ => return Ok(Vec::new()),
    };
    match objects.get(ns, kind, &name)? {
        Some(obj) => volume_files(v, &obj),
        None if optional.unwrap_or(false) => Ok(Vec::new()),
        None => Err(VolumeError::NotFound {
            kind: kind.plural(),
            name,
        }),
    }
}

/// Files of a configMap/secret volume from the object's data (secrets are base64), limited
/// to `items` when given. Keys must be plain file names.
pub fn volume_files(v: &Volume, obj: &Value) -> Result<Vec<(String, Vec<u8>)>, VolumeError> {
    use base64::Engine as _;
    let mut files = Vec::new();
    let (items, secret) = match (&v.config_map, &v.secret) {
        (Some(cm), _) => (cm.items.clone(), false),
        (_, Some(sec)) => (sec.items.clone(), true),
        _ => return Ok(files),
    };
    let b64 = |what, key: &str, t: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(t)
            .map_err(|source| VolumeError::Base64 {
                what,
                key: key.into(),
                source,
            })
    };
    let decode = |key: &str, text: Option<&str>, bin: Option<&str>| match (text, bin) {
        (Some(t), _) if !secret => Ok(t.as_bytes().to_vec()),
        (Some(t), _) => b64("secret", key, t),
        (None, Some(b)) => b64("binaryData", key, b),
        (None, None) => Err(VolumeError::MissingKey(key.into())),
    };
    let data = &obj["data"];
    let bin = &obj["binaryData"];
    match items {
        Some(items) => {
            for it in items {
                let d = decode(&it.key, data[&it.key].as_str(), bin[&it.key].as_str())?;
                files.push((it.path.clone(), d));
            }
        }
        None => {
            for src in [data, bin] {
                for (k, _) in src.as_object().into_iter().flatten() {
                    files.push((k.clone(), decode(k, data[k].as_str(), bin[k].as_str())?));
                }
            }
        }
    }
    for (name, _) in &files {
        if name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
            || name.starts_with('/')
        {
            return Err(VolumeError::Escapes(name.clone()));
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn configmap_and_secret_volume_files() {
        let vol = |v: Value| -> Volume { serde_json::from_value(v).unwrap() };
        let cm = vol(json!({"name": "c", "configMap": {"name": "x"}}));
        let files = volume_files(
            &cm,
            &json!({"data": {"a": "1", "b": "2"}, "binaryData": {"c": "Mw=="}}),
        )
        .unwrap();
        assert_eq!(
            files,
            [
                ("a".into(), b"1".to_vec()),
                ("b".into(), b"2".to_vec()),
                ("c".into(), b"3".to_vec())
            ]
        );
        let sec = vol(
            json!({"name": "s", "secret": {"secretName": "x", "items": [{"key": "t", "path": "dir/tok"}]}}),
        );
        let files = volume_files(&sec, &json!({"data": {"t": "c2VjcmV0", "u": "eA=="}})).unwrap();
        assert_eq!(files, [("dir/tok".into(), b"secret".to_vec())]);
        let bad = vol(
            json!({"name": "s", "configMap": {"name": "x", "items": [{"key": "a", "path": "../../etc/x"}]}}),
        );
        assert!(volume_files(&bad, &json!({"data": {"a": "1"}})).is_err());
        let missing = vol(
            json!({"name": "s", "configMap": {"name": "x", "items": [{"key": "zz", "path": "z"}]}}),
        );
        assert!(volume_files(&missing, &json!({"data": {}})).is_err());
    }

    #[test]
    fn objects_are_read_through_the_api_and_bad_names_never_shape_a_path() {
        let api = Arc::new(moat_client::fake::FakeApi::default());
        api.insert(
            "/api/v1/namespaces/a/configmaps/cfg",
            json!({"data": {"k": "v"}}),
        );
        let o = ApiObjects(api.clone());
        assert!(o.get("a", ObjectKind::ConfigMap, "cfg").unwrap().is_some());
        assert!(o.get("a", ObjectKind::Secret, "none").unwrap().is_none());
        assert!(o.get("a", ObjectKind::Secret, "../x").is_err());
        assert_eq!(api.calls().len(), 2, "the bad name made no request");
        let v: Volume = serde_json::from_value(
            json!({"name": "s", "secret": {"secretName": "none", "optional": true}}),
        )
        .unwrap();
        assert!(files_of(&o, "a", &v).unwrap().is_empty());
    }
}

//! OCI state records kept under the runtime root (`--root`, one directory per container).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const OCI_VERSION: &str = "1.0.2";
pub const DEFAULT_ROOT: &str = "/run/moat-runtime";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("invalid container id {0:?}: use 1-1024 of [A-Za-z0-9_.-], not starting with '.'")]
    InvalidId(String),
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("{step} {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("decoding state file {path}")]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Stopped,
}

/// The OCI runtime-spec state document, as printed by `state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub oci_version: String,
    pub id: String,
    pub status: Status,
    /// Host pid representing the container; absent once stopped (as runc reports 0/absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    pub bundle: PathBuf,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Ids become directory names, so path separators and `..` must never get through.
pub fn validate_id(id: &str) -> Result<(), StateError> {
    if moat_vm_proto::valid_id(id) {
        Ok(())
    } else {
        Err(StateError::InvalidId(id.to_string()))
    }
}

pub struct StateStore {
    root: PathBuf,
}

impl StateStore {
    pub fn new(root: impl Into<PathBuf>) -> StateStore {
        StateStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn dir(&self, id: &str) -> Result<PathBuf, StateError> {
        validate_id(id)?;
        Ok(self.root.join(id))
    }

    fn io(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StateError {
        let path = path.to_path_buf();
        move |source| StateError::Io { step, path, source }
    }

    /// Records a new container; fails if the id is taken (runc: "container already exists").
    pub fn create(&self, st: &State) -> Result<(), StateError> {
        let dir = self.dir(&st.id)?;
        std::fs::create_dir_all(&self.root).map_err(Self::io("creating root", &self.root))?;
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(StateError::Exists(st.id.clone()));
            }
            Err(e) => return Err(Self::io("creating state dir", &dir)(e)),
        }
        self.save(st)
    }

    /// Atomic replace so a concurrent `state` never reads a half-written file.
    pub fn save(&self, st: &State) -> Result<(), StateError> {
        let dir = self.dir(&st.id)?;
        if !dir.is_dir() {
            return Err(StateError::NotFound(st.id.clone()));
        }
        let tmp = dir.join("state.json.tmp");
        let path = dir.join("state.json");
        let body = serde_json::to_vec(st).map_err(|source| StateError::Decode {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&tmp, body).map_err(Self::io("writing state", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(Self::io("renaming state", &path))
    }

    pub fn load(&self, id: &str) -> Result<State, StateError> {
        let path = self.dir(id)?.join("state.json");
        let body = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::NotFound(id.to_string()));
            }
            Err(e) => return Err(Self::io("reading state", &path)(e)),
        };
        serde_json::from_slice(&body).map_err(|source| StateError::Decode { path, source })
    }

    /// All containers, sorted by id; directories without a readable state are skipped because
    /// they are in the middle of `create` or `delete`.
    pub fn list(&self) -> Result<Vec<State>, StateError> {
        let rd = match std::fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Self::io("listing root", &self.root)(e)),
        };
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent.map_err(Self::io("listing root", &self.root))?;
            let Some(id) = ent.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if validate_id(&id).is_err() {
                continue;
            }
            match self.load(&id) {
                Ok(st) => out.push(st),
                Err(StateError::NotFound(_)) | Err(StateError::Decode { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        let dir = self.dir(id)?;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StateError::NotFound(id.to_string()))
            }
            Err(e) => Err(Self::io("removing state dir", &dir)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(id: &str, status: Status) -> State {
        State {
            oci_version: OCI_VERSION.into(),
            id: id.into(),
            status,
            pid: Some(42),
            bundle: PathBuf::from("/b"),
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn ids_that_escape_the_root_are_rejected() {
        for bad in ["", "..", ".x", "a/b", "../x", "a b", "x\0"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
        for good in ["abc", "a.b-c_d", "0123456789abcdef"] {
            validate_id(good).unwrap();
        }
    }

    #[test]
    fn create_load_list_remove_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::new(dir.path().join("root"));
        assert!(s.list().unwrap().is_empty());
        s.create(&st("b", Status::Created)).unwrap();
        s.create(&st("a", Status::Created)).unwrap();
        assert!(matches!(
            s.create(&st("a", Status::Created)),
            Err(StateError::Exists(_))
        ));
        let mut a = s.load("a").unwrap();
        a.status = Status::Stopped;
        a.pid = None;
        s.save(&a).unwrap();
        let ids: Vec<_> = s.list().unwrap().into_iter().map(|x| x.id).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(s.load("a").unwrap().status, Status::Stopped);
        s.remove("a").unwrap();
        assert!(matches!(s.load("a"), Err(StateError::NotFound(_))));
        assert!(matches!(s.remove("a"), Err(StateError::NotFound(_))));
    }

    #[test]
    fn state_json_uses_oci_field_names() {
        let v = serde_json::to_value(st("a", Status::Running)).unwrap();
        assert_eq!(v["ociVersion"], OCI_VERSION);
        assert_eq!(v["status"], "running");
        assert_eq!(v["pid"], 42);
        assert!(v.get("annotations").is_none());
    }
}

//! What the agent persists per pod (`<run_dir>/pods/<uid>/state.json`), so a restarted agent
//! re-adopts running pods and continues a termination where the last one left it.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::handlers::Handler;
use crate::status::State;

/// One container slot of a pod.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Slot {
    /// The runtime container currently existing for this slot.
    pub(crate) id: Option<String>,
    pub(crate) restart_count: u32,
    pub(crate) started_at: Option<String>,
    pub(crate) image_id: String,
    /// The image as the pod spec names it (for `moat ps`).
    #[serde(default)]
    pub(crate) image: String,
    pub(crate) last: Option<State>,
    /// Final state when the policy does not restart it.
    pub(crate) done: Option<State>,
    /// Unix seconds before which it is not started again (CrashLoopBackOff).
    pub(crate) not_before: Option<i64>,
    pub(crate) waiting: Option<(String, Option<String>)>,
    /// Create/start failures in a row, for their own backoff.
    pub(crate) errors: u32,
    /// Readiness probe state of the current container.
    #[serde(default)]
    pub(crate) probe: crate::probe::ProbeState,
    /// Liveness probe state of the current container.
    #[serde(default)]
    pub(crate) liveness: crate::probe::ProbeState,
}

/// Where a pod is in its life on this node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    #[default]
    Active,
    /// SIGTERM sent; SIGKILL at `deadline_ms` (unix ms) for what still runs.
    Terminating { deadline_ms: i64, killed: bool },
    /// Containers stopped; sandbox teardown (runtime delete, unmounts, CNI DEL, netns)
    /// until it succeeds, retried with back-off.
    TearingDown { attempts: u32, not_before_ms: i64 },
    /// Everything on the node is gone.
    Removed,
}

/// A pod's sandbox and containers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodRecord {
    pub uid: String,
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) handler: HandlerRef,
    pub(crate) netns: PathBuf,
    pub(crate) host_network: bool,
    /// The pod's IPC and UTS namespace files and /dev/shm tmpfs (`None`: the host's, or a
    /// record from before pods shared them).
    #[serde(default)]
    pub(crate) ipc_ns: Option<PathBuf>,
    #[serde(default)]
    pub(crate) uts_ns: Option<PathBuf>,
    #[serde(default)]
    pub(crate) shm: Option<PathBuf>,
    pub(crate) ip: Option<String>,
    pub(crate) start_time: String,
    pub(crate) containers: BTreeMap<String, Slot>,
    #[serde(default)]
    pub(crate) phase: Phase,
}

/// The handler a pod's sandbox was made with (a handler config may change while it runs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct HandlerRef {
    name: String,
    binary: PathBuf,
    root: PathBuf,
    options: Vec<String>,
}

impl From<&Handler> for HandlerRef {
    fn from(h: &Handler) -> Self {
        HandlerRef {
            name: h.name.clone(),
            binary: h.binary.clone(),
            root: h.root.clone(),
            options: h.options.clone(),
        }
    }
}

impl HandlerRef {
    pub(crate) fn handler(&self) -> Handler {
        Handler {
            name: self.name.clone(),
            binary: self.binary.clone(),
            root: self.root.clone(),
            options: self.options.clone(),
        }
    }
}

impl PodRecord {
    /// (restart count, current runtime container id, has a previous run) of a container.
    pub fn container(&self, name: &str) -> Option<(u32, Option<String>, bool)> {
        self.containers
            .get(name)
            .map(|s| (s.restart_count, s.id.clone(), s.last.is_some()))
    }

    pub fn bundle(&self, run_dir: &Path, id: &str) -> PathBuf {
        run_dir
            .join("pods")
            .join(&self.uid)
            .join("containers")
            .join(id)
    }

    pub fn handler(&self) -> Handler {
        self.handler.handler()
    }

    /// Runtime container ids that currently exist.
    pub(crate) fn container_ids(&self) -> Vec<String> {
        self.containers
            .values()
            .filter_map(|s| s.id.clone())
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{step} {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding the pod record")]
    Encode(#[source] serde_json::Error),
}

/// `<run_dir>/pods/<uid>`
pub(crate) fn pod_dir(run_dir: &Path, uid: &str) -> PathBuf {
    run_dir.join("pods").join(uid)
}

/// Writes the record atomically: a temp file renamed over the old one, so an agent killed at
/// any point leaves the old record or the new one, never a torn one. No fsync: records live in
/// the run dir (tmpfs), which a reboot empties together with the pods it describes, so
/// surviving a power loss would only describe pods that no longer exist; an fsync per pod
/// step cost more than the rest of a pod start on a disk-backed run dir.
pub(crate) fn save(run_dir: &Path, rt: &PodRecord) -> Result<(), RecordError> {
    let dir = pod_dir(run_dir, &rt.uid);
    let io = |step, path: &Path| {
        let path = path.to_path_buf();
        move |source| RecordError::Io { step, path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    let p = dir.join("state.json");
    let tmp = dir.join("state.json.tmp");
    let data = serde_json::to_vec(rt).map_err(RecordError::Encode)?;
    let mut f = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
    f.write_all(&data).map_err(io("writing", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, &p).map_err(io("renaming into", &p))?;
    Ok(())
}

/// The record of pod `uid`, if one was saved and is readable.
pub(crate) fn load(run_dir: &Path, uid: &str) -> Option<PodRecord> {
    let b = std::fs::read(pod_dir(run_dir, uid).join("state.json")).ok()?;
    serde_json::from_slice(&b).ok()
}

/// Every pod record persisted under `<run_dir>/pods/` (unreadable ones are skipped).
pub fn records(run_dir: &Path) -> Vec<PodRecord> {
    let Ok(rd) = std::fs::read_dir(run_dir.join("pods")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| std::fs::read(e.path().join("state.json")).ok())
        .filter_map(|b| serde_json::from_slice::<PodRecord>(&b).ok())
        .collect()
}

/// The persisted record of pod `ns/name` on this node.
pub fn find_pod(run_dir: &Path, ns: &str, name: &str) -> Option<PodRecord> {
    records(run_dir)
        .into_iter()
        .find(|r| r.namespace == ns && r.name == name)
}

/// Usable as one path component (a uid, a volume or container id).
pub(crate) fn safe_component(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_written_before_phases_existed_still_load() {
        let old = r#"{"uid":"u","namespace":"n","name":"p","handler":{"name":"runc","binary":"runc","root":"/r","options":[]},"netns":"/x","host_network":false,"ip":null,"start_time":"t","containers":{}}"#;
        let r: PodRecord = serde_json::from_str(old).unwrap();
        assert_eq!(r.phase, Phase::Active);
        let d = tempfile::tempdir().unwrap();
        save(d.path(), &r).unwrap();
        assert_eq!(load(d.path(), "u"), Some(r));
        assert!(!pod_dir(d.path(), "u").join("state.json.tmp").exists());
    }
}

//! The OCI runtime edge: create/start/state/kill/delete through a handler's binary (any
//! runtime with runc's command line: runc, crun, a wrapper, moat-runtime). `create` goes
//! through the shim ([`crate::shim`]), which stays with the container to keep its logs and
//! exit code, so neither depends on the agent staying alive.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::handlers::Handler;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{handler} {command} {id}: starting {binary}")]
    Spawn {
        handler: String,
        command: &'static str,
        id: String,
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{handler} {command} {id}: {message}")]
    Failed {
        handler: String,
        command: &'static str,
        id: String,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Stopped,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    pub status: Status,
    pub pid: i64,
    /// For stopped containers: the exit code the shim recorded (128+signal when killed);
    /// `None` if no shim saw it end (e.g. the machine's shim was killed too).
    pub exit_code: Option<i32>,
}

pub trait Runtime: Send + Sync {
    /// Creates the container (not started) with stdout/stderr going to `log` in CRI format;
    /// returns its init pid.
    fn create(&self, h: &Handler, id: &str, bundle: &Path, log: &Path)
    -> Result<u32, RuntimeError>;
    fn start(&self, h: &Handler, id: &str) -> Result<(), RuntimeError>;
    /// `None` when the runtime does not know the container.
    fn state(
        &self,
        h: &Handler,
        id: &str,
        bundle: &Path,
    ) -> Result<Option<ContainerState>, RuntimeError>;
    fn kill(&self, h: &Handler, id: &str, signal: &str) -> Result<(), RuntimeError>;
    /// Removes the container's runtime state (forcefully); unknown ids are not an error.
    fn delete(&self, h: &Handler, id: &str) -> Result<(), RuntimeError>;
    /// Runs `cmd` in the container (an exec probe); whether it exited 0.
    fn exec_ok(&self, h: &Handler, id: &str, cmd: &[String]) -> bool;
}

pub use crate::shim::EXIT_FILE;

pub struct OciRuntime {
    /// The shim command (e.g. `[/usr/bin/moat, agent, shim]`).
    pub shim: Vec<String>,
}

fn not_found(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("does not exist") || s.contains("not found") || s.contains("no such")
}

impl OciRuntime {
    fn cmd(h: &Handler) -> Command {
        let mut c = Command::new(&h.binary);
        c.args(&h.options).arg("--root").arg(&h.root);
        c.stdin(Stdio::null());
        c
    }

    fn run(
        h: &Handler,
        command: &'static str,
        id: &str,
        args: &[&str],
    ) -> Result<(bool, String, String), RuntimeError> {
        let out = Self::cmd(h)
            .arg(command)
            .args(args)
            .output()
            .map_err(|source| RuntimeError::Spawn {
                handler: h.name.clone(),
                command,
                id: id.into(),
                binary: h.binary.clone(),
                source,
            })?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }

    fn failed(h: &Handler, command: &'static str, id: &str, message: String) -> RuntimeError {
        RuntimeError::Failed {
            handler: h.name.clone(),
            command,
            id: id.into(),
            message,
        }
    }
}

impl Runtime for OciRuntime {
    fn create(
        &self,
        h: &Handler,
        id: &str,
        bundle: &Path,
        log: &Path,
    ) -> Result<u32, RuntimeError> {
        let (first, rest) = self
            .shim
            .split_first()
            .ok_or_else(|| Self::failed(h, "create", id, "no shim command configured".into()))?;
        let mut c = Command::new(first);
        c.args(rest);
        c.args(
            crate::shim::ShimArgs {
                runtime: h.binary.clone(),
                root: h.root.clone(),
                options: h.options.clone(),
                id: id.into(),
                bundle: bundle.into(),
                log: log.into(),
            }
            .to_args(),
        );
        use std::os::unix::process::CommandExt;
        // Its own process group: a Ctrl-C or kill of the agent's group must not reach it.
        c.process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = c.spawn().map_err(|source| RuntimeError::Spawn {
            handler: h.name.clone(),
            command: "create",
            id: id.into(),
            binary: first.into(),
            source,
        })?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        // The shim lives on with the container; reap it whenever it ends.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        let line = line.trim();
        if let Some(pid) = line.strip_prefix("ok ") {
            return pid
                .parse()
                .map_err(|_| Self::failed(h, "create", id, format!("shim said {line:?}")));
        }
        let msg = line.strip_prefix("error ").unwrap_or(if line.is_empty() {
            "the shim exited without an answer"
        } else {
            line
        });
        Err(Self::failed(h, "create", id, msg.to_string()))
    }

    fn start(&self, h: &Handler, id: &str) -> Result<(), RuntimeError> {
        let (ok, _, err) = Self::run(h, "start", id, &[id])?;
        if ok {
            Ok(())
        } else {
            Err(Self::failed(h, "start", id, err))
        }
    }

    fn state(
        &self,
        h: &Handler,
        id: &str,
        bundle: &Path,
    ) -> Result<Option<ContainerState>, RuntimeError> {
        #[derive(Deserialize)]
        struct S {
            status: String,
            #[serde(default)]
            pid: i64,
        }
        // Fast path: the shim records the exit in the bundle and the init pid is known, so a
        // live container needs no runtime exec per pass (which dominates with many pods).
        // Anything less certain asks the runtime.
        if let Some(st) = shim_view(bundle) {
            return Ok(Some(st));
        }
        let (ok, out, err) = Self::run(h, "state", id, &[id])?;
        if !ok {
            if not_found(&err) {
                return Ok(None);
            }
            return Err(Self::failed(h, "state", id, err));
        }
        let s: S = serde_json::from_str(&out)
            .map_err(|e| Self::failed(h, "state", id, format!("unparsable state {out:?}: {e}")))?;
        let status = match s.status.as_str() {
            "created" => Status::Created,
            "running" => Status::Running,
            "stopped" => Status::Stopped,
            _ => Status::Other,
        };
        let mut exit_code = None;
        if status == Status::Stopped {
            // The shim writes the code right after reaping; give it a moment.
            let until = Instant::now() + Duration::from_secs(2);
            loop {
                if let Ok(t) = std::fs::read_to_string(bundle.join(EXIT_FILE))
                    && let Ok(c) = t.trim().parse()
                {
                    exit_code = Some(c);
                    break;
                }
                if Instant::now() > until {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(Some(ContainerState {
            status,
            pid: s.pid,
            exit_code,
        }))
    }

    fn kill(&self, h: &Handler, id: &str, signal: &str) -> Result<(), RuntimeError> {
        let (ok, _, err) = Self::run(h, "kill", id, &[id, signal])?;
        if ok {
            Ok(())
        } else {
            Err(Self::failed(h, "kill", id, err))
        }
    }

    fn delete(&self, h: &Handler, id: &str) -> Result<(), RuntimeError> {
        let (ok, _, err) = Self::run(h, "delete", id, &["--force", id])?;
        if ok || not_found(&err) {
            Ok(())
        } else {
            Err(Self::failed(h, "delete", id, err))
        }
    }

    fn exec_ok(&self, h: &Handler, id: &str, cmd: &[String]) -> bool {
        Self::cmd(h)
            .arg("exec")
            .arg(id)
            .args(cmd)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|st| st.success())
    }
}

/// What the shim's files say: stopped with a code, or running (init pid alive and still the
/// same process: its start time matches the one recorded at creation, if any).
fn shim_view(bundle: &Path) -> Option<ContainerState> {
    if let Some(code) = std::fs::read_to_string(bundle.join(EXIT_FILE))
        .ok()
        .and_then(|t| t.trim().parse().ok())
    {
        return Some(ContainerState {
            status: Status::Stopped,
            pid: 0,
            exit_code: Some(code),
        });
    }
    let pid: i64 = std::fs::read_to_string(bundle.join("init.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let started = std::fs::read_to_string(bundle.join(STARTED_FILE)).ok()?;
    // The container has been started (not just created) and its init still runs.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    (proc_start_time(&stat)? == started.trim()).then_some(ContainerState {
        status: Status::Running,
        pid,
        exit_code: None,
    })
}

/// Field 22 (starttime) of /proc/<pid>/stat; the command name (field 2) may hold spaces.
fn proc_start_time(stat: &str) -> Option<&str> {
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)
}

/// Written by the agent after a successful start: the init's start time, to tell it apart
/// from a later process reusing the pid.
pub const STARTED_FILE: &str = "started";

/// Records that the container in `bundle` was started (for the fast state path).
pub fn mark_started(bundle: &Path, pid: u32) {
    if let Some(t) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .as_deref()
        .and_then(proc_start_time)
    {
        let _ = std::fs::write(bundle.join(STARTED_FILE), t);
    }
}

/// Recording fake: keeps container states in memory; tests script exits and failures.
#[derive(Default)]
pub struct RecordingRuntime {
    pub calls: Mutex<Vec<String>>,
    pub states: Mutex<BTreeMap<String, ContainerState>>,
    /// Handler name → create error message (e.g. to act like crun on hybrid cgroups).
    pub fail_create: Mutex<BTreeMap<String, String>>,
    /// Containers whose process ignores SIGTERM (only SIGKILL stops them).
    pub ignore_term: Mutex<std::collections::BTreeSet<String>>,
    /// Container ids whose exec probes succeed.
    pub exec_ok: Mutex<std::collections::BTreeSet<String>>,
}

impl RecordingRuntime {
    fn record(&self, s: String) {
        if let Ok(mut c) = self.calls.lock() {
            c.push(s);
        }
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Makes container `id` exit with `code`.
    pub fn exit(&self, id: &str, code: i32) {
        if let Ok(mut s) = self.states.lock()
            && let Some(st) = s.get_mut(id)
        {
            st.status = Status::Stopped;
            st.exit_code = Some(code);
        }
    }
}

impl Runtime for RecordingRuntime {
    fn create(
        &self,
        h: &Handler,
        id: &str,
        bundle: &Path,
        _log: &Path,
    ) -> Result<u32, RuntimeError> {
        self.record(format!("{} create {id} {}", h.name, bundle.display()));
        if let Some(m) = self
            .fail_create
            .lock()
            .ok()
            .and_then(|f| f.get(&h.name).cloned())
        {
            return Err(OciRuntime::failed(h, "create", id, m));
        }
        let mut s = self
            .states
            .lock()
            .map_err(|_| OciRuntime::failed(h, "create", id, "poisoned".into()))?;
        let pid = 1000 + s.len() as u32;
        s.insert(
            id.into(),
            ContainerState {
                status: Status::Created,
                pid: pid.into(),
                exit_code: None,
            },
        );
        Ok(pid)
    }

    fn start(&self, h: &Handler, id: &str) -> Result<(), RuntimeError> {
        self.record(format!("{} start {id}", h.name));
        match self
            .states
            .lock()
            .ok()
            .and_then(|mut s| s.get_mut(id).map(|st| st.status = Status::Running))
        {
            Some(()) => Ok(()),
            None => Err(OciRuntime::failed(h, "start", id, "does not exist".into())),
        }
    }

    fn state(
        &self,
        h: &Handler,
        id: &str,
        _b: &Path,
    ) -> Result<Option<ContainerState>, RuntimeError> {
        self.record(format!("{} state {id}", h.name));
        Ok(self.states.lock().ok().and_then(|s| s.get(id).cloned()))
    }

    fn kill(&self, h: &Handler, id: &str, signal: &str) -> Result<(), RuntimeError> {
        self.record(format!("{} kill {id} {signal}", h.name));
        let ignored = signal != "SIGKILL" && self.ignore_term.lock().is_ok_and(|s| s.contains(id));
        if !ignored {
            self.exit(id, if signal == "SIGKILL" { 137 } else { 143 });
        }
        Ok(())
    }

    fn delete(&self, h: &Handler, id: &str) -> Result<(), RuntimeError> {
        self.record(format!("{} delete {id}", h.name));
        if let Ok(mut s) = self.states.lock() {
            s.remove(id);
        }
        Ok(())
    }

    fn exec_ok(&self, h: &Handler, id: &str, cmd: &[String]) -> bool {
        self.record(format!("{} exec {id} {}", h.name, cmd.join(" ")));
        self.exec_ok.lock().is_ok_and(|s| s.contains(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_field_22_even_with_spaces_in_the_name() {
        let stat = "42 (a b) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(proc_start_time(stat), Some("987654"));
    }

    #[test]
    fn shim_files_answer_state_without_the_runtime() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(shim_view(d.path()), None);
        // Our own process stands in for a started container init.
        let me = std::process::id();
        std::fs::write(d.path().join("init.pid"), me.to_string()).unwrap();
        assert_eq!(
            shim_view(d.path()),
            None,
            "not started yet: ask the runtime"
        );
        mark_started(d.path(), me);
        assert_eq!(shim_view(d.path()).map(|s| s.status), Some(Status::Running));
        std::fs::write(d.path().join(STARTED_FILE), "1").unwrap();
        assert_eq!(
            shim_view(d.path()),
            None,
            "a reused pid is not the container"
        );
        std::fs::write(d.path().join(EXIT_FILE), "3\n").unwrap();
        let st = shim_view(d.path()).unwrap();
        assert_eq!((st.status, st.exit_code), (Status::Stopped, Some(3)));
    }
}

//! The cluster's host interaction behind one narrow trait: running a command, starting a
//! long-lived process inside a cgroup (and optionally a network namespace), and the cgroup
//! and mount operations delete needs. [`RealHost`] does it; [`Recording`] records it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::ClusterError;

pub trait Host {
    /// Runs `argv`, failing with its stderr when it exits non-zero.
    fn run(&self, argv: &[&str]) -> Result<String, ClusterError>;
    /// Starts `argv` detached (own session), first joining the cgroup whose `cgroup.procs` is
    /// given, inside the network namespace `netns` if any; output to `log`.
    fn spawn(
        &self,
        cgroup_procs: &Path,
        netns: Option<&str>,
        argv: &[String],
        log: &Path,
    ) -> Result<u32, ClusterError>;
}

/// The tracking cgroup hierarchy: cgroup v2's, mounted at /sys/fs/cgroup on a pure v2 host and
/// at /sys/fs/cgroup/unified on a hybrid one. Only its membership is used (and cgroup.kill).
pub fn cgroup_root() -> PathBuf {
    let unified = Path::new("/sys/fs/cgroup/unified");
    if unified.join("cgroup.procs").exists() {
        unified.to_path_buf()
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

pub struct RealHost;

impl Host for RealHost {
    fn run(&self, argv: &[&str]) -> Result<String, ClusterError> {
        let cmd = argv.join(" ");
        let (prog, args) = argv.split_first().ok_or_else(|| ClusterError::Command {
            cmd: cmd.clone(),
            stderr: "empty command".into(),
        })?;
        let out = Command::new(prog)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| ClusterError::Spawn {
                cmd: cmd.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(ClusterError::Command {
                cmd,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn spawn(
        &self,
        cgroup_procs: &Path,
        netns: Option<&str>,
        argv: &[String],
        log: &Path,
    ) -> Result<u32, ClusterError> {
        use std::os::unix::process::CommandExt;
        let cmd = argv.join(" ");
        let err = |source| ClusterError::Spawn {
            cmd: cmd.clone(),
            source,
        };
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(err)?;
        let out2 = out.try_clone().map_err(err)?;
        // The shell joins the cgroup before it execs the node, so nothing the node ever
        // starts (shims, QEMU, containers) escapes the cluster's cgroup.
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#"echo $$ > "$1" && shift && exec "$@""#)
            .arg("sh")
            .arg(cgroup_procs);
        if let Some(ns) = netns {
            c.arg("nsenter")
                .arg(format!("--net=/run/netns/{ns}"))
                .arg("--");
        }
        c.args(argv).stdin(Stdio::null()).stdout(out).stderr(out2);
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent; it only
        // detaches the child from the caller's session so the node outlives `create`.
        unsafe {
            c.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        let child = c.spawn().map_err(err)?;
        Ok(child.id())
    }
}

/// Records commands and spawns, answering every command with an empty success (or a failure
/// for a command containing `fail_on`).
#[derive(Default, Clone)]
pub struct Recording {
    pub log: Arc<Mutex<Vec<String>>>,
    pub fail_on: Option<String>,
}

impl Host for Recording {
    fn run(&self, argv: &[&str]) -> Result<String, ClusterError> {
        let cmd = argv.join(" ");
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(cmd.clone());
        if self
            .fail_on
            .as_ref()
            .is_some_and(|f| cmd.contains(f.as_str()))
        {
            return Err(ClusterError::Command {
                cmd,
                stderr: "injected".into(),
            });
        }
        Ok(String::new())
    }

    fn spawn(
        &self,
        cgroup_procs: &Path,
        netns: Option<&str>,
        argv: &[String],
        _log: &Path,
    ) -> Result<u32, ClusterError> {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!(
                "spawn [{}] {} {}",
                cgroup_procs.display(),
                netns.unwrap_or("-"),
                argv.join(" ")
            ));
        Ok(1)
    }
}

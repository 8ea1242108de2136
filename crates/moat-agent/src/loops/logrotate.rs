//! Container log rotation: every interval, the logs of running containers (from the pod
//! records) that reached the policy's size are rotated. Only renames and creates files; the
//! shim follows its log path by inode, so no signal or IPC to shims is needed.

use std::path::PathBuf;

use crate::config::AgentConfig;
use crate::supervisor::{LoopError, Stop};

/// The current log file of every running container on the node.
pub fn running_logs(cfg: &AgentConfig) -> Vec<PathBuf> {
    crate::podstate::records(&cfg.run_dir)
        .iter()
        .flat_map(|r| {
            r.containers
                .iter()
                .filter(|(_, s)| s.id.is_some())
                .map(|(c, s)| {
                    crate::logs::log_path(
                        &cfg.log_dir,
                        &r.namespace,
                        &r.name,
                        &r.uid,
                        c,
                        s.restart_count,
                    )
                })
        })
        .collect()
}

/// One rotation pass.
pub fn rotate(cfg: &AgentConfig) {
    let now = chrono::Utc::now();
    for log in running_logs(cfg) {
        match crate::logrotate::rotate_if_needed(&log, &cfg.log_policy, now) {
            Ok(true) => tracing::debug!(log = %log.display(), "rotated a container log"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %crate::node::chain(&e), "log rotation"),
        }
    }
}

pub struct LogRotateLoop {
    pub cfg: AgentConfig,
}

impl LogRotateLoop {
    pub fn run(&self, stop: &Stop) -> Result<(), LoopError> {
        while !stop.is_stopped() {
            stop.sleep(self.cfg.log_monitor_interval);
            rotate(&self.cfg);
        }
        Ok(())
    }
}

//! Where rulesets meet the kernel: the narrow `NftApply` trait, the real `nft -f -`
//! implementation (optionally inside a named network namespace), and a recording fake.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("running nft (netns {netns:?})")]
    Spawn {
        netns: Option<String>,
        #[source]
        source: std::io::Error,
    },
    /// nft rejected the transaction; nothing was changed (nft transactions are atomic).
    #[error("nft rejected the transaction: {stderr}")]
    Rejected { stderr: String },
    #[error("fake applier told to fail")]
    Injected,
}

pub trait NftApply {
    /// Applies one transaction atomically: all of it or none of it.
    fn apply(&self, script: &str) -> Result<(), ApplyError>;
}

/// Runs `nft -f -`, inside `ip netns exec <netns>` when a namespace is given.
#[derive(Debug, Clone, Default)]
pub struct Nft {
    pub netns: Option<String>,
}

impl NftApply for Nft {
    fn apply(&self, script: &str) -> Result<(), ApplyError> {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "nft", "-f", "-"]);
                c
            }
            None => {
                let mut c = Command::new("nft");
                c.args(["-f", "-"]);
                c
            }
        };
        let spawn_err = |source| ApplyError::Spawn {
            netns: self.netns.clone(),
            source,
        };
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(script.as_bytes()).map_err(spawn_err)?;
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(ApplyError::Rejected {
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }
}

/// Records every script; can be told to reject the next ones.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    pub scripts: Arc<Mutex<Vec<String>>>,
    pub fail: Arc<Mutex<bool>>,
}

impl NftApply for Recorder {
    fn apply(&self, script: &str) -> Result<(), ApplyError> {
        if self.fail.lock().map(|f| *f).unwrap_or(false) {
            return Err(ApplyError::Injected);
        }
        if let Ok(mut v) = self.scripts.lock() {
            v.push(script.to_string());
        }
        Ok(())
    }
}

//! A minimal QMP client (QEMU's JSON monitor) for the VM factory: connect, negotiate, run a
//! command and wait for its answer, skipping asynchronous events. Written here: the few
//! calls needed do not justify a dependency, and no maintained blocking QMP crate exists.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("connecting to QEMU's monitor {0}")]
    Connect(String, #[source] std::io::Error),
    #[error("talking to QEMU's monitor ({0})")]
    Io(&'static str, #[source] std::io::Error),
    #[error("QEMU refused {command}: {desc}")]
    Refused { command: String, desc: String },
    #[error("QEMU's monitor closed")]
    Closed,
}

pub struct Qmp {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Qmp {
    /// Connects (QEMU creates the socket as it starts: retried until `timeout`) and leaves
    /// capabilities negotiation mode.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let deadline = Instant::now() + timeout;
        let s = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    return Err(QmpError::Connect(path.display().to_string(), e));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        };
        let w = s.try_clone().map_err(|e| QmpError::Io("duplicating", e))?;
        let mut q = Qmp {
            r: BufReader::new(s),
            w,
        };
        q.line()?; // the greeting
        q.cmd("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    fn line(&mut self) -> Result<Value, QmpError> {
        let mut l = String::new();
        if self
            .r
            .read_line(&mut l)
            .map_err(|e| QmpError::Io("reading", e))?
            == 0
        {
            return Err(QmpError::Closed);
        }
        serde_json::from_str(&l)
            .map_err(|e| QmpError::Io("parsing", std::io::Error::other(e.to_string())))
    }

    /// Runs `command`; its `return` value, or its error as [`QmpError::Refused`].
    pub fn cmd(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        let mut req = serde_json::to_vec(&json!({"execute": command, "arguments": arguments}))
            .map_err(|e| QmpError::Io("encoding", std::io::Error::other(e.to_string())))?;
        req.push(b'\n');
        self.w
            .write_all(&req)
            .map_err(|e| QmpError::Io("writing", e))?;
        loop {
            let v = self.line()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(QmpError::Refused {
                    command: command.to_string(),
                    desc: e["desc"].as_str().unwrap_or("").to_string(),
                });
            }
            // An event: not the answer.
        }
    }
}

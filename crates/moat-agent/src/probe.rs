//! Readiness probes (httpGet, tcpSocket, exec) as the kubelet runs them: a probe is due every
//! `periodSeconds` after `initialDelaySeconds`; `successThreshold` passes in a row make the
//! container ready, `failureThreshold` failures in a row make it unready. The bookkeeping is
//! sans-IO; the network checks dial the pod IP from the node through a [`ProbeDialer`] (real:
//! [`NetDialer`]; scripted: [`fake::FakeDialer`]).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeState {
    pub ready: bool,
    pub successes: u32,
    pub failures: u32,
    /// Unix milliseconds of the last run.
    pub last_ms: Option<i64>,
}

impl ProbeState {
    /// Whether the probe should run at `now_ms` for a container started at `started_ms`.
    pub fn due(&self, p: &Probe, started_ms: i64, now_ms: i64) -> bool {
        let delay = i64::from(p.initial_delay_seconds.unwrap_or(0)) * 1000;
        let period = i64::from(p.period_seconds.unwrap_or(10).max(1)) * 1000;
        now_ms >= started_ms + delay && self.last_ms.is_none_or(|l| now_ms - l >= period)
    }

    pub fn record(&mut self, p: &Probe, ok: bool, now_ms: i64) {
        self.last_ms = Some(now_ms);
        if ok {
            self.failures = 0;
            self.successes += 1;
            if self.successes >= p.success_threshold.unwrap_or(1).max(1) as u32 {
                self.ready = true;
            }
        } else {
            self.successes = 0;
            self.failures += 1;
            if self.failures >= p.failure_threshold.unwrap_or(3).max(1) as u32 {
                self.ready = false;
            }
        }
    }
}

fn port(c: &Container, p: &IntOrString) -> Option<u16> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name))
            .and_then(|cp| u16::try_from(cp.container_port).ok()),
    }
}

/// How probes reach a pod: a TCP connect, or one HTTP GET answered with a status code. The
/// real [`NetDialer`] dials the pod IP from the agent's own network namespace, where CNI routes
/// the pod network (as the kubelet does); [`fake::FakeDialer`] answers from a script.
pub trait ProbeDialer: Send + Sync {
    /// Opens a TCP connection to `addr` (and closes it again).
    fn tcp(&self, addr: SocketAddr, timeout: Duration) -> Result<(), DialError>;
    /// `GET path` on `addr` over HTTP/1.0; the status code of the answer.
    fn http_get(&self, addr: SocketAddr, path: &str, timeout: Duration) -> Result<u16, DialError>;
}

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("connecting to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("talking HTTP to {addr}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr} did not answer with an HTTP status line")]
    NotHttp { addr: SocketAddr },
}

/// Dials from the calling thread's network namespace with std sockets.
pub struct NetDialer;

impl ProbeDialer for NetDialer {
    fn tcp(&self, addr: SocketAddr, timeout: Duration) -> Result<(), DialError> {
        TcpStream::connect_timeout(&addr, timeout)
            .map(drop)
            .map_err(|source| DialError::Connect { addr, source })
    }

    fn http_get(&self, addr: SocketAddr, path: &str, timeout: Duration) -> Result<u16, DialError> {
        let mut s = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|source| DialError::Connect { addr, source })?;
        let io = |source| DialError::Io { addr, source };
        s.set_read_timeout(Some(timeout)).map_err(io)?;
        s.set_write_timeout(Some(timeout)).map_err(io)?;
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.33\r\n\r\n"
        )
        .map_err(io)?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).map_err(io)?;
        status_code(&head).ok_or(DialError::NotHttp { addr })
    }
}

/// Runs one probe; `exec` runs a command in the container and says whether it exited 0.
pub fn run(
    p: &Probe,
    c: &Container,
    pod_ip: Option<&str>,
    exec: &dyn Fn(&[String]) -> bool,
    dialer: &dyn ProbeDialer,
) -> bool {
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(e) = &p.exec {
        return exec(e.command.as_deref().unwrap_or(&[]));
    }
    let addr = |host: Option<&str>, port: Option<u16>| -> Option<SocketAddr> {
        format!("{}:{}", host.filter(|h| !h.is_empty()).or(pod_ip)?, port?)
            .parse()
            .ok()
    };
    if let Some(t) = &p.tcp_socket {
        let Some(a) = addr(t.host.as_deref(), port(c, &t.port)) else {
            return false;
        };
        return match dialer.tcp(a, timeout) {
            Ok(()) => true,
            Err(e) => failed(c, &e),
        };
    }
    if let Some(h) = &p.http_get {
        // HTTPS probes are not supported yet: they fail rather than pass unchecked.
        if h.scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"))
        {
            return false;
        }
        let Some(a) = addr(h.host.as_deref(), port(c, &h.port)) else {
            return false;
        };
        let path = h
            .path
            .as_deref()
            .filter(|p| p.starts_with('/'))
            .unwrap_or("/");
        return match dialer.http_get(a, path, timeout) {
            Ok(code) => status_passes(code),
            Err(e) => failed(c, &e),
        };
    }
    false
}

/// Logs why a probe of `c` could not reach it; always `false` (the probe failed).
fn failed(c: &Container, e: &DialError) -> bool {
    tracing::debug!(container = %c.name, error = %crate::errors::chain(e), "probe");
    false
}

/// `HTTP/1.x NNN` → NNN.
fn status_code(head: &[u8]) -> Option<u16> {
    std::str::from_utf8(head)
        .ok()
        .filter(|h| h.starts_with("HTTP/"))
        .and_then(|h| h.get(9..12))
        .and_then(|c| c.parse::<u16>().ok())
}

/// 200..=399 passes, as for the kubelet.
fn status_passes(code: u16) -> bool {
    (200..400).contains(&code)
}

/// A scripted [`ProbeDialer`] that records what it was asked.
pub mod fake {
    use std::collections::HashMap;
    use std::io::ErrorKind;
    use std::net::SocketAddr;
    use std::sync::Mutex;
    use std::time::Duration;

    use super::{DialError, ProbeDialer};

    /// What answers at an address; an address without a script refuses connections.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Reply {
        Refused,
        /// The connection (or the answer) does not come within the timeout.
        TimedOut,
        /// Something accepts connections but does not speak HTTP.
        Accepts,
        /// An HTTP server answering with this status code.
        Http(u16),
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Call {
        Tcp {
            addr: SocketAddr,
            timeout: Duration,
        },
        HttpGet {
            addr: SocketAddr,
            path: String,
            timeout: Duration,
        },
    }

    #[derive(Default)]
    pub struct FakeDialer {
        replies: Mutex<HashMap<SocketAddr, Reply>>,
        calls: Mutex<Vec<Call>>,
    }

    impl FakeDialer {
        pub fn reply(&self, addr: SocketAddr, r: Reply) {
            self.replies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(addr, r);
        }

        pub fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
        }

        fn answer(&self, addr: SocketAddr, call: Call) -> Reply {
            self.calls
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(call);
            let r = self.replies.lock().unwrap_or_else(|e| e.into_inner());
            r.get(&addr).copied().unwrap_or(Reply::Refused)
        }
    }

    fn connect(addr: SocketAddr, kind: ErrorKind) -> DialError {
        DialError::Connect {
            addr,
            source: kind.into(),
        }
    }

    impl ProbeDialer for FakeDialer {
        fn tcp(&self, addr: SocketAddr, timeout: Duration) -> Result<(), DialError> {
            match self.answer(addr, Call::Tcp { addr, timeout }) {
                Reply::Refused => Err(connect(addr, ErrorKind::ConnectionRefused)),
                Reply::TimedOut => Err(connect(addr, ErrorKind::TimedOut)),
                Reply::Accepts | Reply::Http(_) => Ok(()),
            }
        }

        fn http_get(
            &self,
            addr: SocketAddr,
            path: &str,
            timeout: Duration,
        ) -> Result<u16, DialError> {
            let call = Call::HttpGet {
                addr,
                path: path.into(),
                timeout,
            };
            match self.answer(addr, call) {
                Reply::Refused => Err(connect(addr, ErrorKind::ConnectionRefused)),
                Reply::TimedOut => Err(DialError::Io {
                    addr,
                    source: ErrorKind::WouldBlock.into(),
                }),
                Reply::Accepts => Err(DialError::NotHttp { addr }),
                Reply::Http(code) => Ok(code),
            }
        }
    }
}

#[cfg(test)]
mod tests;

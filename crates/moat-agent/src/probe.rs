//! Readiness probes (httpGet, tcpSocket, exec) as the kubelet runs them: a probe is due every
//! `periodSeconds` after `initialDelaySeconds`; `successThreshold` passes in a row make the
//! container ready, `failureThreshold` failures in a row make it unready. The bookkeeping is
//! sans-IO; the network checks dial the pod IP from the node.

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

/// Runs one probe; `exec` runs a command in the container and says whether it exited 0.
pub fn run(
    p: &Probe,
    c: &Container,
    pod_ip: Option<&str>,
    exec: &dyn Fn(&[String]) -> bool,
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
        return addr(t.host.as_deref(), port(c, &t.port))
            .is_some_and(|a| TcpStream::connect_timeout(&a, timeout).is_ok());
    }
    if let Some(h) = &p.http_get {
        if h.scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"))
        {
            return false;
        }
        let Some(a) = addr(h.host.as_deref(), port(c, &h.port)) else {
            return false;
        };
        let Ok(mut s) = TcpStream::connect_timeout(&a, timeout) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(timeout));
        let _ = s.set_write_timeout(Some(timeout));
        let path = h
            .path
            .as_deref()
            .filter(|p| p.starts_with('/'))
            .unwrap_or("/");
        if write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: {a}\r\nUser-Agent: kube-probe/1.33\r\n\r\n"
        )
        .is_err()
        {
            return false;
        }
        let mut head = [0u8; 12];
        return s.read_exact(&mut head).is_ok() && status_ok(&head);
    }
    false
}

/// `HTTP/1.x NNN`: 200..=399 passes, as for the kubelet.
fn status_ok(head: &[u8]) -> bool {
    std::str::from_utf8(head)
        .ok()
        .and_then(|h| h.get(9..12))
        .and_then(|c| c.parse::<u16>().ok())
        .is_some_and(|c| (200..400).contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(v: serde_json::Value) -> Probe {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn thresholds_and_periods() {
        let p = probe(
            serde_json::json!({"periodSeconds": 2, "initialDelaySeconds": 1, "failureThreshold": 2, "successThreshold": 1}),
        );
        let mut s = ProbeState::default();
        assert!(!s.due(&p, 0, 500));
        assert!(s.due(&p, 0, 1000));
        s.record(&p, true, 1000);
        assert!(s.ready);
        assert!(!s.due(&p, 0, 2000));
        assert!(s.due(&p, 0, 3000));
        s.record(&p, false, 3000);
        assert!(s.ready, "one failure is under the threshold");
        s.record(&p, false, 5000);
        assert!(!s.ready);
    }

    #[test]
    fn http_status_ranges() {
        assert!(status_ok(b"HTTP/1.0 200"));
        assert!(status_ok(b"HTTP/1.1 302"));
        assert!(!status_ok(b"HTTP/1.0 404"));
        assert!(!status_ok(b"garbage"));
    }

    /// A listener answering one HTTP request with `status`.
    fn http_server(status: &'static str) -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut req = Vec::new();
                let mut b = [0u8; 1];
                while !req.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
                    req.push(b[0]);
                }
                let _ = write!(s, "HTTP/1.0 {status}\r\n\r\n");
            }
        });
        port
    }

    #[test]
    fn tcp_http_and_exec_probes() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp_port = l.local_addr().unwrap().port();
        let c: Container = serde_json::from_value(
            serde_json::json!({"name": "c", "ports": [{"name": "web", "containerPort": tcp_port}]}),
        )
        .unwrap();
        let tcp = probe(serde_json::json!({"tcpSocket": {"port": "web"}}));
        assert!(run(&tcp, &c, Some("127.0.0.1"), &|_| false));
        drop(l);
        assert!(
            !run(&tcp, &c, Some("127.0.0.1"), &|_| true),
            "nothing listens any more"
        );
        let ok = http_server("200 OK");
        let http = probe(serde_json::json!({"httpGet": {"port": ok, "path": "/healthz"}}));
        assert!(run(&http, &c, Some("127.0.0.1"), &|_| false));
        let bad = http_server("503 Service Unavailable");
        let http = probe(serde_json::json!({"httpGet": {"port": bad}}));
        assert!(!run(&http, &c, Some("127.0.0.1"), &|_| true));
        let exec = probe(serde_json::json!({"exec": {"command": ["true"]}}));
        assert!(run(&exec, &c, None, &|cmd| cmd == ["true"]));
        assert!(!run(&exec, &c, None, &|_| false));
    }
}

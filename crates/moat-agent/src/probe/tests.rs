//! Probe bookkeeping and the probe logic over a scripted dialer; the real dialer against
//! loopback listeners.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;

use super::fake::{Call, FakeDialer, Reply};
use super::*;

fn probe(v: serde_json::Value) -> Probe {
    serde_json::from_value(v).unwrap()
}

fn container(port: u16) -> Container {
    serde_json::from_value(json!({"name": "c", "ports": [{"name": "web", "containerPort": port}]}))
        .unwrap()
}

const POD_IP: &str = "10.42.0.7";

fn at(port: u16) -> SocketAddr {
    format!("{POD_IP}:{port}").parse().unwrap()
}

fn no_exec(_: &[String]) -> bool {
    panic!("not an exec probe")
}

#[test]
fn thresholds_and_periods() {
    let p = probe(
        json!({"periodSeconds": 2, "initialDelaySeconds": 1, "failureThreshold": 2, "successThreshold": 1}),
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
fn tcp_probe_dials_the_named_port_on_the_pod_ip_with_the_timeout() {
    let d = FakeDialer::default();
    let c = container(8080);
    let p = probe(json!({"tcpSocket": {"port": "web"}, "timeoutSeconds": 3}));
    assert!(
        !run(&p, &c, Some(POD_IP), &no_exec, &d),
        "a refused port fails"
    );
    d.reply(at(8080), Reply::Accepts);
    assert!(run(&p, &c, Some(POD_IP), &no_exec, &d));
    d.reply(at(8080), Reply::TimedOut);
    assert!(!run(&p, &c, Some(POD_IP), &no_exec, &d), "a timeout fails");
    let want = Call::Tcp {
        addr: at(8080),
        timeout: Duration::from_secs(3),
    };
    assert_eq!(d.calls(), vec![want.clone(), want.clone(), want]);
}

#[test]
fn probes_without_an_address_fail_without_dialing() {
    let d = FakeDialer::default();
    let c = container(8080);
    let tcp = probe(json!({"tcpSocket": {"port": 80}}));
    assert!(!run(&tcp, &c, None, &no_exec, &d), "no pod IP yet");
    let unknown = probe(json!({"tcpSocket": {"port": "nope"}}));
    assert!(
        !run(&unknown, &c, Some(POD_IP), &no_exec, &d),
        "no such port name"
    );
    let https = probe(json!({"httpGet": {"port": 443, "scheme": "HTTPS"}}));
    assert!(!run(&https, &c, Some(POD_IP), &no_exec, &d));
    assert_eq!(d.calls(), vec![]);
}

#[test]
fn http_probe_passes_on_200_to_399_like_the_kubelet() {
    let d = FakeDialer::default();
    let c = container(8080);
    let p = probe(json!({"httpGet": {"port": "web", "path": "/healthz"}}));
    for (code, pass) in [
        (100, false),
        (199, false),
        (200, true),
        (204, true),
        (302, true),
        (399, true),
        (400, false),
        (404, false),
        (503, false),
    ] {
        d.reply(at(8080), Reply::Http(code));
        assert_eq!(run(&p, &c, Some(POD_IP), &no_exec, &d), pass, "{code}");
    }
    d.reply(at(8080), Reply::Accepts);
    assert!(!run(&p, &c, Some(POD_IP), &no_exec, &d), "not HTTP");
    d.reply(at(8080), Reply::TimedOut);
    assert!(
        !run(&p, &c, Some(POD_IP), &no_exec, &d),
        "no answer in time"
    );
    assert_eq!(
        d.calls()[0],
        Call::HttpGet {
            addr: at(8080),
            path: "/healthz".into(),
            timeout: Duration::from_secs(1),
        },
        "timeoutSeconds defaults to 1"
    );
}

#[test]
fn http_probe_host_and_path_defaults() {
    let d = FakeDialer::default();
    let c = container(8080);
    let other: SocketAddr = "192.0.2.9:81".parse().unwrap();
    d.reply(other, Reply::Http(200));
    let p = probe(json!({"httpGet": {"port": 81, "host": "192.0.2.9", "path": "healthz"}}));
    assert!(
        run(&p, &c, Some(POD_IP), &no_exec, &d),
        "host overrides the pod IP"
    );
    let p = probe(json!({"httpGet": {"port": 8080}}));
    assert!(!run(&p, &c, Some(POD_IP), &no_exec, &d), "refused");
    let paths: Vec<String> = d
        .calls()
        .into_iter()
        .map(|c| match c {
            Call::HttpGet { path, .. } => path,
            Call::Tcp { .. } => panic!("a TCP dial for an HTTP probe"),
        })
        .collect();
    assert_eq!(
        paths,
        ["/", "/"],
        "a path without its slash is not sent as is"
    );
}

#[test]
fn failure_and_success_thresholds_over_probe_results() {
    let d = FakeDialer::default();
    let c = container(8080);
    let p =
        probe(json!({"tcpSocket": {"port": 8080}, "failureThreshold": 3, "successThreshold": 2}));
    let mut s = ProbeState::default();
    let mut step = |reply, now| {
        d.reply(at(8080), reply);
        s.record(&p, run(&p, &c, Some(POD_IP), &no_exec, &d), now);
        s.ready
    };
    assert!(
        !step(Reply::Accepts, 0),
        "one success is under the threshold of 2"
    );
    assert!(step(Reply::Accepts, 10_000));
    assert!(step(Reply::Refused, 20_000));
    assert!(
        step(Reply::TimedOut, 30_000),
        "two failures are under the threshold of 3"
    );
    assert!(!step(Reply::Refused, 40_000));
    assert!(!step(Reply::Accepts, 50_000));
    assert!(step(Reply::Accepts, 60_000));
}

#[test]
fn exec_probes_use_the_exec_hook() {
    let d = FakeDialer::default();
    let c = container(8080);
    let exec = probe(json!({"exec": {"command": ["true"]}}));
    assert!(run(&exec, &c, None, &|cmd| cmd == ["true"], &d));
    assert!(!run(&exec, &c, None, &|_| false, &d));
    assert_eq!(d.calls(), vec![]);
}

#[test]
fn status_lines() {
    assert_eq!(status_code(b"HTTP/1.0 200"), Some(200));
    assert_eq!(status_code(b"HTTP/1.1 302"), Some(302));
    assert_eq!(status_code(b"garbage here"), None);
    assert_eq!(status_code(b"HTTP/1.1 2x0"), None);
}

/// A loopback listener answering one HTTP request with `status`.
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
fn the_real_dialer_on_loopback() {
    let d = NetDialer;
    let t = Duration::from_secs(5);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open = l.local_addr().unwrap();
    assert!(d.tcp(open, t).is_ok());
    drop(l);
    assert!(
        matches!(d.tcp(open, t), Err(DialError::Connect { .. })),
        "nothing listens any more"
    );
    let ok: SocketAddr = format!("127.0.0.1:{}", http_server("200 OK"))
        .parse()
        .unwrap();
    assert_eq!(d.http_get(ok, "/healthz", t).unwrap(), 200);
    let bad: SocketAddr = format!("127.0.0.1:{}", http_server("503 Service Unavailable"))
        .parse()
        .unwrap();
    assert_eq!(d.http_get(bad, "/", t).unwrap(), 503);
    let p = probe(json!({"httpGet": {"port": "web"}}));
    let c = container(http_server("503 Service Unavailable"));
    assert!(!run(&p, &c, Some("127.0.0.1"), &no_exec, &d));
    let c = container(http_server("204 No Content"));
    assert!(run(&p, &c, Some("127.0.0.1"), &no_exec, &d));
}

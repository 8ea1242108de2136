//! A throwaway node for the proxy's real-nft tests: network namespaces of its own, torn
//! down by a Drop guard, under the workspace-wide serial lock.
//!
//! ```text
//!  p1 10.42.0.2 ─┐                       ┌─ client 10.42.1.2 (pod on another link)
//!  p2 10.42.0.3 ─┴ br0 10.42.0.1 [node] ─┤
//!                                         └─ ext 192.168.77.2 (outside; 10.43/16 routed here)
//! ```
//! The node routes 10.43.0.0/16 to `ext`, which does not forward, so un-DNATed Service traffic is routed
//! (and reaches the forward hook) but never leaves the namespaces. Nothing touches the root
//! network namespace: every link is created inside the node namespace.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test code

use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Holds `/tmp/moat-serial.lock` exclusively for the test's duration.
pub struct SerialLock(File);

pub fn serial_lock() -> SerialLock {
    let f = File::create("/tmp/moat-serial.lock").expect("lock file");
    // SAFETY: flock on a descriptor we own; released when the File is dropped.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock");
    SerialLock(f)
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(uid, 0, "these tests need root (network namespaces, nft)");
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn output(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub struct Lab {
    pub node: String,
    pub p1: String,
    pub p2: String,
    pub client: String,
    pub ext: String,
    servers: Vec<Child>,
    _lock: SerialLock,
}

impl Lab {
    /// Builds the namespaces and starts a TCP server on port 8080 in each pod namespace
    /// that answers with its pod name.
    pub fn new() -> Lab {
        require_root();
        let lock = serial_lock();
        let tag = format!(
            "mp{}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let name = |s: &str| format!("{tag}-{s}");
        let mut lab = Lab {
            node: name("node"),
            p1: name("p1"),
            p2: name("p2"),
            client: name("cl"),
            ext: name("ext"),
            servers: Vec::new(),
            _lock: lock,
        };
        // Created one by one so Drop removes whatever got created if a step fails.
        for ns in [&lab.node, &lab.p1, &lab.p2, &lab.client, &lab.ext] {
            run(&["ip", "netns", "add", ns]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let n = lab.node.clone();
        let nx = |args: &[&str]| {
            let mut v = vec!["ip", "-n", n.as_str()];
            v.extend_from_slice(args);
            run(&v);
        };
        nx(&["link", "add", "br0", "type", "bridge"]);
        nx(&["addr", "add", "10.42.0.1/24", "dev", "br0"]);
        nx(&["link", "set", "br0", "up"]);
        for (ns, nodeside, ip, gw, bridged) in [
            (&lab.p1, "vp1", "10.42.0.2/24", "10.42.0.1", true),
            (&lab.p2, "vp2", "10.42.0.3/24", "10.42.0.1", true),
            (&lab.client, "vcl", "10.42.1.2/24", "10.42.1.1", false),
            (&lab.ext, "vex", "192.168.77.2/24", "", false),
        ] {
            nx(&[
                "link", "add", nodeside, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ]);
            if bridged {
                nx(&["link", "set", nodeside, "master", "br0"]);
                // As moat-cni's conflist (`hairpinMode: true`): with br_netfilter on, a
                // pod's packet DNATed back to the same pod is bridged out of the port it
                // came in on, which a bridge only does in hairpin mode.
                nx(&[
                    "link",
                    "set",
                    nodeside,
                    "type",
                    "bridge_slave",
                    "hairpin",
                    "on",
                ]);
            } else if ns == &lab.client {
                nx(&["addr", "add", "10.42.1.1/24", "dev", nodeside]);
            } else {
                nx(&["addr", "add", "192.168.77.1/24", "dev", nodeside]);
            }
            nx(&["link", "set", nodeside, "up"]);
            run(&["ip", "-n", ns, "addr", "add", ip, "dev", "eth0"]);
            run(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
            if !gw.is_empty() {
                run(&["ip", "-n", ns, "route", "add", "default", "via", gw]);
            }
        }
        // Service addresses route to the `ext` namespace, which does not forward: un-DNATed
        // Service traffic reaches the forward/output hooks like on a real node and goes
        // nowhere else.
        nx(&["route", "add", "10.43.0.0/16", "via", "192.168.77.2"]);
        run(&[
            "ip",
            "netns",
            "exec",
            &n,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        for (ns, answer) in [(lab.p1.clone(), "p1"), (lab.p2.clone(), "p2")] {
            let child = Command::new("ip")
                .args(["netns", "exec", &ns, "socat"])
                .arg("TCP-LISTEN:8080,fork,reuseaddr")
                .arg(format!("SYSTEM:echo {answer}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("socat");
            lab.servers.push(child);
        }
        // Wait until both servers listen (a direct connection answers).
        for (ns, ip) in [(&lab.p1, "10.42.0.2"), (&lab.p2, "10.42.0.3")] {
            let addr: SocketAddr = format!("{ip}:8080").parse().unwrap();
            let ok = (0..100).any(|_| {
                let r = in_netns(ns, move || ask(addr));
                if r.is_err() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                r.is_ok()
            });
            assert!(ok, "server in {ns} did not start");
        }
        lab
    }

    pub fn nft(&self) -> moat_nft::Nft {
        moat_nft::Nft {
            netns: Some(self.node.clone()),
        }
    }

    pub fn list_table(&self) -> String {
        output(&[
            "ip",
            "netns",
            "exec",
            &self.node,
            "nft",
            "list",
            "table",
            "ip",
            "moat-proxy",
        ])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.ext, &self.client, &self.p2, &self.p1, &self.node] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Runs `f` on a thread that has joined network namespace `ns` (setns affects only the
/// calling thread, so the test's other threads stay where they are).
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let f_ns = File::open(&path).expect("netns file");
        // SAFETY: setns on a valid namespace descriptor; it changes only this thread.
        let rc = unsafe { libc::setns(f_ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}");
        f()
    })
    .join()
    .expect("netns thread")
}

/// Connects, reads the one-line answer.
pub fn ask(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    Ok(buf.trim().to_string())
}

/// `n` requests from namespace `ns`; the answers (or errors) in order.
pub fn ask_n(ns: &str, addr: &str, n: usize) -> Vec<std::io::Result<String>> {
    let addr: SocketAddr = addr.parse().expect("addr");
    in_netns(ns, move || (0..n).map(|_| ask(addr)).collect())
}

pub fn node_facts() -> moat_proxy::NodeFacts {
    moat_proxy::NodeFacts {
        name: "n1".into(),
        ips: vec!["192.168.77.1".parse().unwrap()],
        cluster_cidr: "10.42.0.0/16".parse().unwrap(),
    }
}

/// A TCP service `default/NAME` on `ip:80` (→ 8080) with `extra` merged into its spec.
pub fn service(
    name: &str,
    ip: &str,
    extra: serde_json::Value,
) -> k8s_openapi::api::core::v1::Service {
    let mut spec = serde_json::json!({"clusterIP": ip,
        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}]});
    for (k, v) in extra.as_object().unwrap() {
        spec.as_object_mut().unwrap().insert(k.clone(), v.clone());
    }
    serde_json::from_value(
        serde_json::json!({"metadata": {"namespace": "default", "name": name}, "spec": spec}),
    )
    .unwrap()
}

/// A slice of ready endpoints on this node for `default/NAME`, port 8080.
pub fn slice(name: &str, ips: &[&str]) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    let eps: Vec<serde_json::Value> = ips
        .iter()
        .map(|ip| serde_json::json!({"addresses": [ip], "nodeName": "n1", "conditions": {"ready": true}}))
        .collect();
    serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": "default", "name": name, "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps}))
    .unwrap()
}

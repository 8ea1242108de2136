//! Service ClusterIP / NodePort allocation through the real API: unique across 1,000 creates
//! (sequential and concurrent) and a kill -9 restart, explicit IPs honoured or refused,
//! released on delete.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use moat_manager::Client;
use serde_json::json;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &Path) -> (Server, Client) {
    let _ = std::fs::remove_file(dir.join("kubeconfig.yaml"));
    let child = Command::new(env!("CARGO_BIN_EXE_moat"))
        .args([
            "server",
            "--disable-agent",
            "--disable-controllers",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("server");
    let t = Instant::now();
    while !dir.join("kubeconfig.yaml").exists() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (
        Server(child),
        Client::from_kubeconfig(&dir.join("kubeconfig.yaml")).expect("client"),
    )
}

fn svc(name: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut v = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}});
    if let (Some(spec), Some(e)) = (v["spec"].as_object_mut(), extra.as_object()) {
        for (k, x) in e {
            spec.insert(k.clone(), x.clone());
        }
    }
    v
}

const SVCS: &str = "/api/v1/namespaces/default/services";

fn ip_of(v: &serde_json::Value) -> Ipv4Addr {
    v["spec"]["clusterIP"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("clusterIP")
}

#[test]
fn cluster_ips_are_unique_across_concurrency_and_restart() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (mut server, c) = start(tmp.path());
    let mut ips: HashSet<Ipv4Addr> = HashSet::new();
    for i in 0..300 {
        let ip = ip_of(
            &c.create(SVCS, &svc(&format!("s{i}"), json!({})))
                .expect("create"),
        );
        assert!(ips.insert(ip), "duplicate IP {ip}");
    }
    let got: Vec<Ipv4Addr> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|t| {
                let c = c.clone();
                s.spawn(move || {
                    (0..50)
                        .map(|i| {
                            ip_of(
                                &c.create(SVCS, &svc(&format!("c{t}-{i}"), json!({})))
                                    .expect("create"),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter()
            .flat_map(|h| h.join().expect("thread"))
            .collect()
    });
    for ip in got {
        assert!(ips.insert(ip), "concurrent creates got the same IP {ip}");
    }
    // kill -9 and restart: allocations are durable.
    let _ = server.0.kill();
    let _ = server.0.wait();
    drop(server);
    let (_server, c) = start(tmp.path());
    for i in 0..300 {
        let ip = ip_of(
            &c.create(SVCS, &svc(&format!("r{i}"), json!({})))
                .expect("create"),
        );
        assert!(ips.insert(ip), "IP {ip} reused after restart");
    }
    assert_eq!(ips.len(), 1000);
    let range = Ipv4Addr::new(10, 43, 0, 0);
    for ip in &ips {
        assert_eq!(
            u32::from(*ip) >> 16,
            u32::from(range) >> 16,
            "{ip} outside 10.43.0.0/16"
        );
        assert_ne!(
            *ip,
            Ipv4Addr::new(10, 43, 0, 1),
            "first address is reserved"
        );
    }

    // Explicit IP: honoured, then refused for a second Service, released on delete.
    let want = "10.43.200.200";
    let a = c
        .create(SVCS, &svc("explicit", json!({"clusterIP": want})))
        .expect("explicit");
    assert_eq!(a["spec"]["clusterIP"], want);
    let e = c
        .create(SVCS, &svc("explicit-2", json!({"clusterIP": want})))
        .expect_err("taken");
    assert_eq!(e.code(), Some(422));
    assert!(
        e.to_string().contains("provided IP is already allocated"),
        "{e}"
    );
    let e = c
        .create(SVCS, &svc("outside", json!({"clusterIP": "192.168.1.1"})))
        .expect_err("outside");
    assert!(e.to_string().contains("not in the valid range"), "{e}");
    c.delete(&format!("{SVCS}/explicit")).expect("delete");
    assert_eq!(
        c.create(SVCS, &svc("explicit-3", json!({"clusterIP": want})))
            .expect("reuse after delete")["spec"]["clusterIP"],
        want
    );
    let e = c
        .merge_patch(
            &format!("{SVCS}/explicit-3"),
            &json!({"spec": {"clusterIP": "10.43.9.9"}}),
        )
        .expect_err("immutable");
    assert!(e.to_string().contains("immutable"), "{e}");

    // NodePorts.
    let np = c.create(SVCS, &svc("np", json!({"type": "NodePort", "ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443, "nodePort": 30443}]}))).expect("nodeport");
    let p0 = np["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .expect("allocated");
    assert!((30000..=32767).contains(&p0));
    assert_eq!(np["spec"]["ports"][1]["nodePort"], 30443);
    let e = c
        .create(
            SVCS,
            &svc(
                "np2",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30443}]}),
            ),
        )
        .expect_err("port taken");
    assert!(
        e.to_string().contains("provided port is already allocated"),
        "{e}"
    );
    assert!(
        c.get(&format!("{SVCS}/np2")).is_err(),
        "a refused Service is not stored"
    );

    // kubectl shows the address.
    let out = Command::new("/usr/lib/google-cloud-sdk/bin/kubectl.1.32")
        .arg("--kubeconfig")
        .arg(tmp.path().join("kubeconfig.yaml"))
        .arg("--cache-dir")
        .arg(tmp.path().join("kc"))
        .args(["get", "svc", "explicit-3"])
        .output()
        .expect("kubectl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("CLUSTER-IP") && text.contains(want) && text.contains("80/TCP"),
        "{text}"
    );
}

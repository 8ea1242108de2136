//! `moat cluster` end to end, once per backend, with the real kubectl, kernel and runc: pods
//! pinned to each of three nodes reach each other across every pair by pod IP over TCP and
//! UDP and see each other's pod IPs; nodes reach remote pods; host-gw is one hop; vxlan
//! has flannel's device and crosses with a 1400-byte DF ping; egress is masqueraded to the
//! node's address and pod ↔ pod is not; node leave/join and an agent's kill -9 + restart;
//! bad input; and the host's root namespace is the same before and after, with nothing left.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::cluster::{Cluster, host_state, web_pod};
use common::lab::{moat_bin, run};

/// Three web pods, one per node; returns their IPs by node index.
fn web_pods(c: &Cluster) -> BTreeMap<usize, String> {
    for i in 1..=3 {
        c.apply(&web_pod(&format!("web{i}"), &c.node(i)));
    }
    (1..=3)
        .map(|i| (i, c.running_ip(&format!("web{i}"))))
        .collect()
}

/// The network namespace of pod `web{i}` on node `i` (the agent's `<run dir>/netns/<uid>`).
fn pod_netns(c: &Cluster, i: usize) -> std::path::PathBuf {
    let uid = c.pod(&format!("web{i}")).unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    c.root
        .path()
        .join(&c.name)
        .join(c.node(i))
        .join("run/netns")
        .join(uid)
}

/// Every ordered pair of pods talks over TCP (and the receiver sees the sender's pod IP) and
/// UDP (the receiver sees the sender's pod IP: no masquerade between pods).
fn every_pair(c: &Cluster, ips: &BTreeMap<usize, String>) {
    for (&i, src) in ips {
        for (&j, dst) in ips {
            if i == j {
                continue;
            }
            let url = format!("http://{dst}:8080/cgi-bin/ip");
            let (ok, out, err) = c.kubectl(
                &[
                    "exec",
                    &format!("web{i}"),
                    "--",
                    "timeout",
                    "10",
                    "wget",
                    "-qO-",
                    &url,
                ],
                None,
            );
            assert!(ok, "web{i} -> web{j} over TCP: {err}\n{}", c.logs());
            // busybox httpd listens on IPv6 and reports IPv4 peers v4-mapped.
            let seen = out
                .trim()
                .trim_start_matches("[::ffff:")
                .trim_end_matches(']');
            assert_eq!(seen, src, "web{j} saw web{i} as {out:?}, not its pod IP");
            // busybox's nc has no UDP here: the datagram leaves the sender pod's own network
            // namespace (Python inside it) and the receiver pod's namespace reports the
            // source address it arrived with.
            let port = format!("900{i}");
            let recv = Command::new("nsenter")
                .arg(format!("--net={}", pod_netns(c, j).display()))
                .args([
                    "python3",
                    "-c",
                    &format!(
                        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('{dst}',{port}))\ns.settimeout(20)\nd,a=s.recvfrom(100)\nprint(a[0],d.decode())"
                    ),
                ])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("UDP receiver");
            std::thread::sleep(std::time::Duration::from_millis(300));
            let msg = format!("udp-from-web{i}");
            for _ in 0..5 {
                let (ok, _, err) = run(Command::new("nsenter")
                    .arg(format!("--net={}", pod_netns(c, i).display()))
                    .args([
                        "python3",
                        "-c",
                        &format!(
                            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.sendto(b'{msg}',('{dst}',{port}))"
                        ),
                    ]));
                assert!(ok, "web{i} -> web{j} over UDP: {err}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let out = recv.wait_with_output().expect("UDP receiver");
            let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
            assert_eq!(got, format!("{src} {msg}"), "UDP web{i} -> web{j}");
        }
    }
}

fn node_reaches_remote_pod(c: &Cluster, ips: &BTreeMap<usize, String>) {
    let (ok, out, err) = c.exec(
        1,
        &[
            "timeout",
            "10",
            "busybox",
            "wget",
            "-qO-",
            &format!("http://{}:8080/", ips[&3]),
        ],
    );
    assert!(ok, "node 1 -> web3: {err}");
    assert_eq!(out.trim(), "web3");
}

/// A listener "outside the cluster" (the underlay's router namespace) sees pod traffic from
/// the node's address.
fn egress_is_masqueraded(c: &Cluster) {
    let dir = c.root.path().join("outside");
    std::fs::create_dir_all(dir.join("cgi-bin")).unwrap();
    std::fs::write(
        dir.join("cgi-bin/ip"),
        "#!/bin/sh\necho Content-Type: text/plain\necho\necho $REMOTE_ADDR\n",
    )
    .unwrap();
    let (ok, _, err) = run(Command::new("chmod").arg("+x").arg(dir.join("cgi-bin/ip")));
    assert!(ok, "{err}");
    let ul = format!("moat-{}-ul", c.name);
    let mut httpd = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ul,
            "busybox",
            "httpd",
            "-f",
            "-p",
            "172.30.0.254:8081",
            "-h",
        ])
        .arg(&dir)
        .spawn()
        .expect("outside httpd");
    let mut seen = String::new();
    c.wait("the outside listener", 20, || {
        let (ok, out, _) = c.kubectl(
            &[
                "exec",
                "web2",
                "--",
                "timeout",
                "5",
                "wget",
                "-qO-",
                "http://172.30.0.254:8081/cgi-bin/ip",
            ],
            None,
        );
        seen = out.trim().to_string();
        ok
    });
    let _ = httpd.kill();
    let _ = httpd.wait();
    let seen = seen.trim_start_matches("[::ffff:").trim_end_matches(']');
    assert_eq!(
        seen, "172.30.0.12",
        "egress from web2 not masqueraded to node 2's address"
    );
}

fn assert_clean(mut c: Cluster, before: &str) {
    c.delete();
    assert_eq!(
        c.leftovers(),
        Vec::<String>::new(),
        "left behind after delete"
    );
    assert_eq!(
        host_state(),
        before,
        "the host's root network namespace changed"
    );
}

#[test]
fn serial_cluster_host_gw() {
    let before = host_state();
    let c = Cluster::create("hg", "host-gw", 3, &["--untrusted-nodes", "1"]);
    // Journey 3's untrusted worker: the last node is labelled and tainted.
    let (_, n3, _) = c.kubectl(&["get", "node", &c.node(3), "-o", "json"], None);
    let n3: serde_json::Value = serde_json::from_str(&n3).unwrap();
    assert_eq!(
        n3["metadata"]["labels"]["example.org/workload"],
        "untrusted"
    );
    assert_eq!(n3["spec"]["taints"][0]["effect"], "NoSchedule", "{n3}");
    let (_, n2, _) = c.kubectl(&["get", "node", &c.node(2), "-o", "json"], None);
    assert!(!n2.contains("example.org/workload"), "{n2}");
    // The kubeconfig `create` wrote is what `moat cluster kubeconfig` prints.
    let (ok, kc, err) = c.moat(&["kubeconfig", "--name", "hg"]);
    assert!(ok && kc.contains("server: https://127.0.0.1:"), "{kc}{err}");
    assert_eq!(kc, std::fs::read_to_string(c.kubeconfig()).unwrap());
    let ips = web_pods(&c);
    every_pair(&c, &ips);
    node_reaches_remote_pod(&c, &ips);
    // Journey 5: one hop, node 3's underlay address.
    let (ok, out, err) = c.exec(
        1,
        &[
            "busybox",
            "traceroute",
            "-n",
            "-w",
            "1",
            "-q",
            "1",
            &ips[&3],
        ],
    );
    assert!(ok, "traceroute: {err}");
    let hops: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with("traceroute"))
        .collect();
    assert_eq!(hops.len(), 2, "{out}");
    assert!(
        hops[0].contains("172.30.0.13"),
        "first hop is not node 3: {out}"
    );
    assert!(hops[1].contains(&ips[&3]), "{out}");
    egress_is_masqueraded(&c);

    // A Node whose podCIDR is outside the cluster CIDR: reported by name, never routed.
    c.apply(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: ghost\n  annotations: {flannel.alpha.coreos.com/public-ip: 172.30.0.99}\nspec: {podCIDR: 10.99.0.0/24}\n",
    );
    c.wait("the PodCIDROutsideClusterCIDR event", 30, || {
        let (_, out, _) = c.kubectl(
            &[
                "get",
                "events",
                "-n",
                "default",
                "--field-selector",
                "involvedObject.name=ghost",
                "-o",
                "json",
            ],
            None,
        );
        out.contains("PodCIDROutsideClusterCIDR") && out.contains("10.99.0.0/24")
    });
    let (_, routes, _) = c.exec(1, &["ip", "route"]);
    assert!(!routes.contains("10.99.0.0"), "{routes}");
    let (ok, _, err) = c.kubectl(&["delete", "node", "ghost"], None);
    assert!(ok, "{err}");

    // The same name again is refused, and the cluster is unharmed.
    let images = c.images().display().to_string();
    let (ok, _, err) = c.moat(&[
        "create",
        "--name",
        "hg",
        "--nodes",
        "1",
        "--image-root",
        &images,
    ]);
    assert!(!ok && err.contains("exists"), "{err}");
    node_reaches_remote_pod(&c, &ips);
    let (ok, out, _) = c.moat(&["list"]);
    assert!(ok && out.contains("hg\t3 nodes\thost-gw"), "{out}");
    assert_clean(c, &before);
}

#[test]
fn serial_cluster_vxlan() {
    let before = host_state();
    let c = Cluster::create("vx", "vxlan", 3, &[]);
    let (ok, link, err) = c.exec(1, &["ip", "-d", "link", "show", "flannel.1"]);
    assert!(ok, "{err}");
    assert!(
        link.contains("vxlan id 1 ") && link.contains("dstport 8472"),
        "{link}"
    );
    assert!(
        link.contains("mtu 1450") && link.contains("nolearning"),
        "{link}"
    );
    // Peers are programmed by node 1's pod-network loop as their annotations arrive, which
    // may trail `create` (nodes Ready) by a moment.
    c.wait("one FDB entry per peer on node 1", 20, || {
        let (_, fdb, _) = c.exec(1, &["bridge", "fdb", "show", "dev", "flannel.1"]);
        fdb.lines().filter(|l| l.contains(" dst ")).count() == 2
    });
    let (_, node2, _) = c.kubectl(&["get", "node", &c.node(2), "-o", "json"], None);
    assert!(
        node2.contains("\"flannel.alpha.coreos.com/backend-type\": \"vxlan\""),
        "{node2}"
    );
    assert!(node2.contains("VtepMAC"), "{node2}");

    let ips = web_pods(&c);
    every_pair(&c, &ips);
    node_reaches_remote_pod(&c, &ips);
    // 1400 bytes of IP packet (1372 of ICMP payload), don't fragment, through the tunnel.
    let (ok, out, err) = c.exec(
        1,
        &[
            "ping", "-M", "do", "-s", "1372", "-c", "1", "-W", "3", &ips[&3],
        ],
    );
    assert!(ok, "1400-byte DF ping over vxlan: {out}{err}");
    let (_, env, _) = c.exec(
        1,
        &[
            "cat",
            &format!("{}/vx/vx-1/run/flannel/subnet.env", c.root.path().display()),
        ],
    );
    assert!(
        env.contains("FLANNEL_MTU=1450") && env.contains("FLANNEL_NETWORK=10.42.0.0/16"),
        "{env}"
    );

    // A running TCP stream from node 1 to node 2 survives node 2's agent being killed -9 and
    // restarted, and no route, FDB entry or neighbour changes on any node.
    c.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: sink}}\nspec:\n  nodeName: {}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: localhost/busybox:latest\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, 'sleep 100000 | nc -l -p 7000']\n",
        c.node(2)
    ));
    let sink = c.running_ip("sink");
    c.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: source}}\nspec:\n  nodeName: {}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: localhost/busybox:latest\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, 'i=0; while true; do echo $i; i=$((i+1)); usleep 100000; done | nc {sink} 7000']\n",
        c.node(1)
    ));
    c.running_ip("source");
    let lines = |c: &Cluster| {
        let (_, out, _) = c.kubectl(&["logs", "sink"], None);
        out.lines().count()
    };
    c.wait("the stream to flow", 30, || lines(&c) > 10);
    let tables = |c: &Cluster| -> Vec<String> {
        (1..=3)
            .flat_map(|i| {
                [
                    c.exec(i, &["ip", "route"]).1,
                    c.exec(i, &["bridge", "fdb", "show", "dev", "flannel.1"]).1,
                    c.exec(
                        i,
                        &[
                            "ip",
                            "neigh",
                            "show",
                            "dev",
                            "flannel.1",
                            "nud",
                            "permanent",
                        ],
                    )
                    .1,
                    c.exec(i, &["ip", "-d", "link", "show", "flannel.1"])
                        .1
                        .lines()
                        .take(2)
                        .collect::<Vec<_>>()
                        .join("\n"),
                ]
            })
            .collect()
    };
    let t0 = tables(&c);
    let pid = std::fs::read_to_string(c.root.path().join("vx/vx-2/pid")).unwrap();
    let (ok, _, err) = run(Command::new("kill").args(["-9", pid.trim()]));
    assert!(ok, "{err}");
    let (ok, out, err) = c.moat(&["start", "--name", "vx", &c.node(2)]);
    assert!(ok && out.contains("started"), "{out}{err}");
    let log = c.root.path().join("vx/vx-2/node.log");
    c.wait("node 2's agent to set up its network again", 60, || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("pod network ready")
            .count()
            >= 2
    });
    let n = lines(&c);
    c.wait("the stream to go on", 30, || lines(&c) > n + 20);
    assert_eq!(tables(&c), t0, "a restart changed the kernel's tables");
    for p in ["sink", "source"] {
        let pod = c.pod(p).unwrap();
        assert_eq!(
            pod["status"]["containerStatuses"][0]["restartCount"], 0,
            "{p} restarted: the stream broke"
        );
    }
    let (_, log_text, _) = c.kubectl(&["logs", "sink"], None);
    let nums: Vec<u64> = log_text
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert!(
        nums.windows(2).all(|w| w[1] == w[0] + 1),
        "the stream has a gap"
    );

    // Node leave / join: node 3 stopped and its Node deleted -> its routes, FDB entry and
    // neighbour go from node 1; started again -> back.
    let sub3 = format!("{}.0", ips[&3].rsplit_once('.').unwrap().0);
    let pid3 = std::fs::read_to_string(c.root.path().join("vx/vx-3/pid")).unwrap();
    let (ok, _, err) = run(Command::new("kill").args(["-9", pid3.trim()]));
    assert!(ok, "{err}");
    let (ok, _, err) = c.kubectl(&["delete", "node", &c.node(3)], None);
    assert!(ok, "{err}");
    let has_peer3 = |c: &Cluster| {
        let (_, r, _) = c.exec(1, &["ip", "route"]);
        let (_, f, _) = c.exec(1, &["bridge", "fdb", "show", "dev", "flannel.1"]);
        let (_, n, _) = c.exec(1, &["ip", "neigh", "show", "dev", "flannel.1"]);
        (
            r.contains(&sub3),
            f.contains("172.30.0.13"),
            n.contains(&sub3),
        )
    };
    c.wait("node 3's entries to go from node 1", 10, || {
        has_peer3(&c) == (false, false, false)
    });
    let (ok, out, err) = c.moat(&["start", "--name", "vx", &c.node(3)]);
    assert!(ok, "{out}{err}");
    c.wait("node 3's entries to come back on node 1", 60, || {
        has_peer3(&c) == (true, true, true)
    });
    assert_clean(c, &before);
}

#[test]
fn serial_cluster_bad_input_makes_nothing() {
    let c = Cluster::prepare("bad");
    let images = c.images().display().to_string();
    for (args, want) in [
        (vec!["--cluster-cidr", "10.43.0.0/16"], "overlaps"),
        (vec!["--backend", "udp"], "unknown flannel backend"),
        (vec!["--nodes", "0"], "1 to 50 nodes"),
        (
            vec!["--untrusted-nodes", "4"],
            "more than the cluster's 3 nodes",
        ),
        (
            vec!["--runtime-config", "/nonexistent/runtimes.toml"],
            "--runtime-config /nonexistent/runtimes.toml",
        ),
    ] {
        let mut a = vec!["create", "--name", "bad", "--image-root", &images];
        a.extend(args.iter().copied());
        let (ok, _, err) = c.moat(&a);
        assert!(!ok && err.contains(want), "{args:?}: {err}");
        assert!(!c.root.path().join("bad").exists(), "{args:?} left files");
        assert_eq!(c.leftovers(), Vec::<String>::new());
    }
    let (ok, _, err) = c.moat(&["create", "--name", "Bad_Name", "--image-root", &images]);
    assert!(!ok && err.contains("must be 1-12 characters"), "{err}");
    let (ok, _, err) = c.moat(&["delete", "--name", "nope"]);
    assert!(!ok && err.contains("no cluster \"nope\""), "{err}");
    // The server refuses overlapping CIDRs and an unknown backend before it makes anything.
    let data = c.root.path().join("server");
    for (flag, value, want) in [
        (
            "--cluster-cidr",
            "10.43.0.0/16",
            "overlaps the service CIDR",
        ),
        ("--flannel-backend", "udp", "unknown flannel backend"),
        (
            "--node-cidr-mask-size",
            "8",
            "does not fit the cluster CIDR",
        ),
    ] {
        let (ok, _, err) = run(Command::new(moat_bin())
            .args([
                "server",
                "--disable-agent",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(&data)
            .args([flag, value]));
        assert!(!ok && err.contains(want), "{flag} {value}: {err}");
        assert!(
            !data.exists(),
            "{flag} {value}: the server made its data dir"
        );
    }
}

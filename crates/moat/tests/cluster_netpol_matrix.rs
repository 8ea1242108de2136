//! The upstream e2e NetworkPolicy matrix on a live 3-node `moat cluster` (issue 15, must
//! show 1): namespaces x/y/z with pods a/b/c spread so every namespace has a pod on every
//! node, each pod serving 80 and 81 over TCP and UDP; the repo's e2e cases
//! (`crates/moat-netlab/cases/e2e`) applied one after another through kubectl, with the
//! updates and deletions between cases, and every cell of every truth table checked on real
//! packets sent from inside the pods' network namespaces across the pod network.
//!
//! The listeners and probes are the lab's probers (`moat_netlab::Probers`) attached to the
//! agent's netns files of the real pods: the packets cross the pods' veths, the nodes'
//! bridges, vxlan and every node's nft rules exactly as a container's would. The ipBlock
//! cases name lab addresses; they are mapped onto the live ones (y/b's /32, and the pod
//! subnet /24 onto the cluster CIDR, which likewise holds every pod).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use moat_netlab::cases::load_dir;
use moat_netlab::manifest::Objects;
use moat_netlab::{LabPod, ProbeOpts, Probers};
use moat_netpol::{NftApply, Options, Proto, Snapshot};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../moat-netlab/cases/e2e")
}

fn objects(path: &Path) -> Objects {
    let mut o = Objects::default();
    let text = std::fs::read_to_string(path).expect("read manifest");
    o.add_yaml(&path.display().to_string(), &text)
        .expect("parse manifest");
    o
}

fn apply(c: &Cluster, yaml: &str) {
    c.apply(yaml);
}

/// Must show 5: with x isolated (only y may come in), node 2's agent is killed -9 and
/// restarted while probes run the whole time: no denied probe ever succeeds (the rules stay
/// in the kernel and the new agent replaces them atomically), and the allowed ones still
/// succeed after the restart.
fn agent_kill_under_default_deny(c: &Cluster, probers: &Probers) {
    apply(
        c,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: default-deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n",
    );
    apply(
        c,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-y, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}]}]\n",
    );
    let pods = probers.pods();
    let want = |a: usize, b: usize| {
        let (from, to) = (&pods[a].id, &pods[b].id);
        a == b || !to.starts_with("x/") || from.starts_with("y/")
    };
    let mut list = Vec::new();
    for a in 0..pods.len() {
        for b in 0..pods.len() {
            list.push((a, b, 80, Proto::Tcp));
        }
    }
    let opts = ProbeOpts {
        timeout: Duration::from_millis(300),
        attempts: 2,
    };
    let table_ok = || {
        let got = probers.probe_all(&list, opts).expect("probe");
        list.iter()
            .zip(&got)
            .all(|(&(a, b, _, _), &ok)| ok == want(a, b))
    };
    c.wait("x isolated but for y", 30, table_ok);

    let stop = std::sync::atomic::AtomicBool::new(false);
    let (leaks, rounds) = std::thread::scope(|s| {
        let prober = s.spawn(|| {
            let mut leaks = Vec::new();
            let mut rounds: Vec<usize> = Vec::new(); // allowed probes that failed, per round
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let got = probers.probe_all(&list, opts).expect("probe");
                let mut failed_allowed = 0;
                for (&(a, b, _, _), &ok) in list.iter().zip(&got) {
                    match (want(a, b), ok) {
                        (false, true) => leaks.push(format!("{} -> {}", pods[a].id, pods[b].id)),
                        (true, false) => failed_allowed += 1,
                        _ => {}
                    }
                }
                rounds.push(failed_allowed);
            }
            (leaks, rounds)
        });
        std::thread::sleep(Duration::from_secs(2));
        let dir = c.root.path().join(&c.name).join(c.node(2));
        let pid = std::fs::read_to_string(dir.join("pid")).unwrap();
        let (ok, _, err) =
            common::lab::run(std::process::Command::new("kill").args(["-9", pid.trim()]));
        assert!(ok, "{err}");
        // The agent is gone: its rules stay in force.
        std::thread::sleep(Duration::from_secs(3));
        let (ok, out, err) = c.moat(&["start", "--name", &c.name, &c.node(2)]);
        assert!(ok && out.contains("started"), "{out}{err}");
        c.wait("node 2's agent to program its pods again", 60, || {
            std::fs::read_to_string(dir.join("node.log"))
                .unwrap_or_default()
                .matches("pod network ready")
                .count()
                >= 2
        });
        std::thread::sleep(Duration::from_secs(5));
        stop.store(true, std::sync::atomic::Ordering::Release);
        prober.join().expect("prober thread")
    });
    assert!(
        leaks.is_empty(),
        "denied probes succeeded around the agent's restart: {leaks:?}"
    );
    assert!(rounds.len() >= 5, "too few probe rounds: {rounds:?}");
    assert_eq!(
        rounds.last(),
        Some(&0),
        "allowed probes did not resume after the restart: {rounds:?}"
    );
    for p in ["default-deny", "allow-y"] {
        let (ok, _, err) = c.kubectl(&["-n", "x", "delete", "networkpolicy", p], None);
        assert!(ok, "{err}");
    }
}

/// Must show 3: with a deny policy in force, 50 new selected pods (and 5 unselected ones
/// beside them) are started on nodes 2 and 3 while a prober on node 1 hammers every free
/// address of those nodes' subnets: no connection to a selected pod ever succeeds, from its
/// first moment; each unselected pod is reached (the hammer does see new pods). The pods
/// answer the probers' TCP protocol (`ok` on connect) with busybox nc.
fn first_packet_of_50_new_pods(c: &Cluster, probers: &Probers) {
    apply(
        c,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: fp-deny, namespace: x}\nspec:\n  podSelector: {matchLabels: {fp: 'yes'}}\n  policyTypes: [Ingress]\n",
    );
    // The policy is in every node's cache before any selected pod exists.
    std::thread::sleep(Duration::from_secs(2));
    let known: BTreeSet<std::net::Ipv4Addr> = probers.pods().iter().map(|p| p.ip).collect();
    let mut targets = Vec::new();
    for i in [2, 3] {
        let (ok, cidr, err) = c.kubectl(
            &["get", "node", &c.node(i), "-o", "jsonpath={.spec.podCIDR}"],
            None,
        );
        assert!(ok, "{err}");
        let base: std::net::Ipv4Addr = cidr.trim().split('/').next().unwrap().parse().unwrap();
        let o = base.octets();
        for last in 2..=80u8 {
            let ip = std::net::Ipv4Addr::new(o[0], o[1], o[2], last);
            if !known.contains(&ip) {
                targets.push((ip, 80, Proto::Tcp));
            }
        }
    }
    let from = probers.pods().iter().position(|p| p.id == "x/a").unwrap();
    let mut docs = Vec::new();
    for i in 0..55 {
        let fp = if i < 50 { "yes" } else { "no" };
        docs.push(format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: fp{i}, namespace: x, labels: {{fp: '{fp}'}}}}\nspec:\n  nodeName: {}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: localhost/busybox:latest\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, 'while true; do echo ok | nc -l -p 80; done']\n",
            c.node(2 + i % 2)
        ));
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    let opts = ProbeOpts {
        timeout: Duration::from_millis(200),
        attempts: 1,
    };
    let hits = std::thread::scope(|s| {
        let hammer = s.spawn(|| {
            let mut hits: BTreeSet<std::net::Ipv4Addr> = BTreeSet::new();
            let mut rounds = 0;
            while !stop.load(std::sync::atomic::Ordering::Acquire) || rounds < 3 {
                let got = probers.probe_addrs(from, &targets, opts).expect("probe");
                for (t, ok) in targets.iter().zip(got) {
                    if ok {
                        hits.insert(t.0);
                    }
                }
                rounds += 1;
            }
            hits
        });
        c.apply(&docs.join("---\n"));
        c.wait("the 55 new pods to run", 300, || {
            let (_, out, _) = c.kubectl(
                &[
                    "-n",
                    "x",
                    "get",
                    "pods",
                    "-l",
                    "fp",
                    "-o",
                    "jsonpath={range .items[*]}{.status.phase}{\"\\n\"}{end}",
                ],
                None,
            );
            out.lines().filter(|l| *l == "Running").count() == 55
        });
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, std::sync::atomic::Ordering::Release);
        hammer.join().expect("hammer thread")
    });
    let mut leaked = Vec::new();
    let mut unselected_missed = Vec::new();
    for i in 0..55 {
        let pod = c.pod_in("x", &format!("fp{i}")).unwrap();
        let ip: std::net::Ipv4Addr = pod["status"]["podIP"].as_str().unwrap().parse().unwrap();
        assert!(
            targets.iter().any(|t| t.0 == ip),
            "fp{i}'s address {ip} is outside the hammered range"
        );
        match (i < 50, hits.contains(&ip)) {
            (true, true) => leaked.push(format!("fp{i} ({ip})")),
            (false, false) => unselected_missed.push(format!("fp{i} ({ip})")),
            _ => {}
        }
    }
    assert!(
        leaked.is_empty(),
        "selected pods answered a denied connection: {leaked:?}"
    );
    assert!(
        unselected_missed.is_empty(),
        "the hammer never reached these unselected pods: {unselected_missed:?}"
    );
}

/// The objects of the live cluster, typed.
fn live_objects(c: &Cluster) -> (Vec<Namespace>, Vec<Pod>, Vec<NetworkPolicy>) {
    fn list<T: serde::de::DeserializeOwned>(c: &Cluster, what: &str) -> Vec<T> {
        let (ok, out, err) = c.kubectl(&["get", what, "-A", "-o", "json"], None);
        assert!(ok, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| serde_json::from_value(i.clone()).unwrap())
            .collect()
    }
    (
        list(c, "namespaces"),
        list(c, "pods"),
        list(c, "networkpolicies"),
    )
}

/// Must show 4: 200 policy and pod-label changes through kubectl while probes run across
/// the nodes. Every probe's verdict must be one that a state in force around it gives (a
/// state is in force from when its change was sent until the next one's was answered, plus
/// the nodes' convergence allowance); afterwards every node's ruleset equals a fresh full
/// compile of the cluster, for that node, applied in a scratch namespace.
fn updates_under_traffic(c: &Cluster, probers: &Probers) {
    const LAG: Duration = Duration::from_secs(1);
    let pods = probers.pods();
    let yb = pods.iter().find(|p| p.id == "y/b").unwrap().ip;
    let pool: Vec<(&str, String)> = vec![
        ("deny-servers", "podSelector: {matchLabels: {role: server}}".to_string()),
        ("clients-to-servers-80", "podSelector: {matchLabels: {role: server}}\n  ingress: [{from: [{podSelector: {matchLabels: {role: client}}}], ports: [{port: 80}]}]".to_string()),
        ("any-ns-clients-81", "podSelector: {matchLabels: {role: server}}\n  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {role: client}}}], ports: [{port: 81}]}]".to_string()),
        ("clients-egress-yb-81", format!("podSelector: {{matchLabels: {{role: client}}}}\n  policyTypes: [Egress]\n  egress: [{{to: [{{ipBlock: {{cidr: {yb}/32}}}}], ports: [{{port: 81}}]}}]")),
    ];
    let labelled = ["x/a", "x/b", "x/c", "y/a"];
    let mut roles = ["server", "server", "client", "client"].map(String::from);
    let mut active = [false; 4];
    let set_role = |i: usize, role: &str| {
        let (ns, name) = labelled[i].split_once('/').unwrap();
        let (ok, _, err) = c.kubectl(
            &[
                "-n",
                ns,
                "label",
                "pod",
                name,
                &format!("role={role}"),
                "--overwrite",
            ],
            None,
        );
        assert!(ok, "{err}");
    };
    let set_policy = |j: usize, on: bool| {
        let (name, spec) = &pool[j];
        if on {
            c.apply(&format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: x}}\nspec:\n  {spec}\n"
            ));
        } else {
            let (ok, _, err) = c.kubectl(&["-n", "x", "delete", "networkpolicy", name], None);
            assert!(ok, "{err}");
        }
    };
    for (i, r) in roles.iter().enumerate() {
        set_role(i, r);
    }
    // The verdicts of a state, from a fresh compile of the live objects with that state.
    let (nss, live_pods, _) = live_objects(c);
    let compile_state = |roles: &[String; 4], active: &[bool; 4]| -> moat_netpol::Compiled {
        let mut ps = live_pods.clone();
        for p in &mut ps {
            let id = format!(
                "{}/{}",
                p.metadata.namespace.as_deref().unwrap(),
                p.metadata.name.as_deref().unwrap()
            );
            if let Some(i) = labelled.iter().position(|l| *l == id) {
                p.metadata
                    .labels
                    .get_or_insert_with(Default::default)
                    .insert("role".into(), roles[i].clone());
            }
        }
        let pols: Vec<NetworkPolicy> = pool
            .iter()
            .zip(active)
            .filter(|(_, on)| **on)
            .map(|((name, spec), _)| {
                let y = format!("metadata: {{name: {name}, namespace: x}}\nspec:\n  {spec}\n");
                serde_yaml_ng(&y)
            })
            .collect();
        let snap = Snapshot::build(&nss, &ps, &pols, &Options::default()).expect("valid state");
        moat_netpol::compile(&snap)
    };
    let mut states: Vec<(Instant, Instant, moat_netpol::Compiled)> = Vec::new();
    std::thread::sleep(Duration::from_secs(2));
    states.push((
        Instant::now(),
        Instant::now(),
        compile_state(&roles, &active),
    ));

    let mut list = Vec::new();
    for a in 0..pods.len() {
        for b in 0..pods.len() {
            if a != b {
                list.push((a, b, 80, Proto::Tcp));
                list.push((a, b, 81, Proto::Tcp));
            }
        }
    }
    let popts = ProbeOpts {
        timeout: Duration::from_millis(500),
        attempts: 1,
    };
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut rng = rand::rngs::StdRng::seed_from_u64(15);
    let rounds = std::thread::scope(|s| {
        let prober = s.spawn(|| {
            let mut rounds = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let start = Instant::now();
                let got = probers.probe_all(&list, popts).expect("probe");
                rounds.push((start, Instant::now(), got));
            }
            rounds
        });
        for _ in 0..200 {
            let t = Instant::now();
            if rng.random_bool(0.5) {
                let i = rng.random_range(0..4);
                roles[i] = if roles[i] == "server" {
                    "client"
                } else {
                    "server"
                }
                .into();
                set_role(i, &roles[i].clone());
            } else {
                let j = rng.random_range(0..pool.len());
                active[j] = !active[j];
                set_policy(j, active[j]);
            }
            states.push((t, Instant::now(), compile_state(&roles, &active)));
            std::thread::sleep(Duration::from_millis(150));
        }
        std::thread::sleep(LAG * 2);
        stop.store(true, std::sync::atomic::Ordering::Release);
        prober.join().expect("prober thread")
    });
    assert!(rounds.len() > 50, "only {} probe rounds", rounds.len());
    let mut violations = Vec::new();
    let (mut saw_allow, mut saw_deny) = (false, false);
    for (start, end, got) in &rounds {
        let possible: Vec<&moat_netpol::Compiled> = states
            .iter()
            .enumerate()
            .filter(|(k, (sent, _, _))| {
                let until = states.get(k + 1).map(|n| n.1 + LAG);
                *sent <= *end && until.is_none_or(|u| u >= *start)
            })
            .map(|(_, s)| &s.2)
            .collect();
        for (&(a, b, port, proto), &ok) in list.iter().zip(got) {
            saw_allow |= ok;
            saw_deny |= !ok;
            if !possible
                .iter()
                .any(|c| moat_netpol::sim::allowed(c, pods[a].ip, pods[b].ip, proto, port) == ok)
            {
                violations.push(format!(
                    "{} -> {} :{port} observed {ok}",
                    pods[a].id, pods[b].id
                ));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "{} verdicts no state in force gives:\n{}",
        violations.len(),
        violations.join("\n")
    );
    assert!(saw_allow && saw_deny, "the changes never flipped a verdict");

    // Every node's ruleset (a history of 200 diffs) == a fresh full compile for that node.
    let (nss, live_pods, pols) = live_objects(c);
    for i in 1..=3 {
        let node = c.node(i);
        let (ok, cidr, err) = c.kubectl(
            &["get", "node", &node, "-o", "jsonpath={.spec.podCIDR}"],
            None,
        );
        assert!(ok, "{err}");
        let net: ipnet::Ipv4Net = cidr.trim().parse().unwrap();
        let node_ip: std::net::Ipv4Addr = format!("172.30.0.1{i}").parse().unwrap();
        let gw = std::net::Ipv4Addr::from(u32::from(net.network()) + 1);
        let opts = Options {
            node_name: Some(node.clone()),
            node_addrs: vec![node_ip, net.network(), gw],
            ..Default::default()
        };
        let snap = Snapshot::build(&nss, &live_pods, &pols, &opts).expect("valid");
        let fresh = moat_netpol::render::full(&moat_netpol::compile(&snap));
        let scratch = format!("mnpscratch{}", std::process::id());
        let (ok, _, err) =
            common::lab::run(std::process::Command::new("ip").args(["netns", "add", &scratch]));
        assert!(ok, "{err}");
        let res = moat_netpol::apply::Nft {
            netns: Some(scratch.clone()),
        }
        .apply(&fresh)
        .map(|()| moat_netlab::policy_table_listing(&scratch));
        let _ = common::lab::run(std::process::Command::new("ip").args(["netns", "del", &scratch]));
        let here =
            moat_netlab::policy_table_listing(&format!("moat-{node}")).expect("node ruleset");
        assert_eq!(
            here,
            res.expect("fresh apply").expect("fresh listing"),
            "node {node}: the ruleset after 200 changes differs from a fresh full compile"
        );
    }
    for (j, on) in active.iter().enumerate() {
        if *on {
            set_policy(j, false);
        }
    }
}

fn serde_yaml_ng(y: &str) -> NetworkPolicy {
    let mut o = Objects::default();
    o.add_yaml(
        "state",
        &format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n{y}"),
    )
    .expect("policy yaml");
    o.policies.pop().expect("one policy")
}

fn kubectl_json(c: &Cluster, args: &[&str], obj: &Value) {
    let (ok, _, err) = c.kubectl(args, Some(&obj.to_string()));
    assert!(ok, "kubectl {args:?}: {err}\n{obj}");
}

#[test]
fn serial_cluster_upstream_e2e_matrix_on_live_pods() {
    let c = Cluster::create("npm", "vxlan", 3, &[]);
    let topo = objects(&e2e_dir().join("topology.yaml"));
    for ns in &topo.namespaces {
        kubectl_json(
            &c,
            &["apply", "-f", "-"],
            &serde_json::to_value(ns).unwrap(),
        );
    }
    // Every namespace has a pod on every node, and same-named pods are on different nodes.
    let nss = ["x", "y", "z"];
    let mut ids = Vec::new();
    for p in &topo.pods {
        let ns = p.metadata.namespace.clone().unwrap();
        let name = p.metadata.name.clone().unwrap();
        let node = (nss.iter().position(|n| *n == ns).unwrap()
            + ["a", "b", "c"].iter().position(|n| *n == name).unwrap())
            % 3
            + 1;
        let mut v = serde_json::to_value(p).unwrap();
        v["spec"]["nodeName"] = json!(c.node(node));
        v["spec"]["terminationGracePeriodSeconds"] = json!(1);
        let ctr = &mut v["spec"]["containers"][0];
        ctr["image"] = json!("localhost/busybox:latest");
        ctr["imagePullPolicy"] = json!("IfNotPresent");
        ctr["command"] = json!(["sleep", "100000"]);
        kubectl_json(&c, &["apply", "-f", "-"], &v);
        ids.push((ns, name, node));
    }
    // The probers: the lab's listeners and probes, inside each real pod's network namespace.
    let mut pods = Vec::new();
    let mut paths = Vec::new();
    for (ns, name, node) in &ids {
        let ip = c.running_ip_in(ns, name);
        let uid = c.pod_in(ns, name).unwrap()["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_string();
        pods.push(LabPod {
            id: format!("{ns}/{name}"),
            ip: ip.parse().unwrap(),
            listen: vec![
                (80, Proto::Tcp),
                (81, Proto::Tcp),
                (80, Proto::Udp),
                (81, Proto::Udp),
            ],
        });
        paths.push(
            c.root
                .path()
                .join(&c.name)
                .join(c.node(*node))
                .join("run/netns")
                .join(uid),
        );
    }
    let attach: Vec<(LabPod, &Path)> = pods
        .iter()
        .cloned()
        .zip(paths.iter().map(PathBuf::as_path))
        .collect();
    let probers = Probers::attach(&attach).expect("probers in the pods' namespaces");
    let yb = pods.iter().find(|p| p.id == "y/b").unwrap().ip;

    let cases = load_dir(&e2e_dir()).expect("cases");
    assert!(cases.len() >= 44, "only {} cases", cases.len());
    let opts = ProbeOpts {
        timeout: Duration::from_millis(400),
        attempts: 2,
    };
    let mut applied: BTreeSet<(String, String)> = BTreeSet::new();
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for case in cases.iter().filter(|c| !c.legacy) {
        let started = Instant::now();
        // This case's policies go in (updating same-named ones), the previous case's others
        // are deleted: the transitions upstream's e2e makes between its tests.
        let mut now: BTreeSet<(String, String)> = BTreeSet::new();
        for pol in &objects(&case.path).policies {
            let text = serde_json::to_string(pol)
                .unwrap()
                .replace("10.42.0.6/32", &format!("{yb}/32"))
                .replace("10.42.0.0/24", "10.42.0.0/16");
            let v: Value = serde_json::from_str(&text).unwrap();
            kubectl_json(&c, &["apply", "-f", "-"], &v);
            now.insert((
                pol.metadata.namespace.clone().unwrap(),
                pol.metadata.name.clone().unwrap(),
            ));
        }
        for (ns, name) in applied.difference(&now) {
            let (ok, _, err) = c.kubectl(&["-n", ns, "delete", "networkpolicy", name], None);
            assert!(ok, "{err}");
        }
        applied = now;
        // Converged when a whole table matches; every node must have programmed its part.
        let mut list = Vec::new();
        for &(port, proto) in case.probes.iter().filter(|(_, p)| *p != Proto::Sctp) {
            for a in 0..pods.len() {
                for b in 0..pods.len() {
                    list.push((a, b, port, proto));
                }
            }
        }
        let mut rounds = 0;
        let wrong = loop {
            rounds += 1;
            // New flows only: an old allowed UDP flow must not answer for a new verdict.
            for i in 1..=3 {
                c.exec(i, &["conntrack", "-F"]);
            }
            let got = probers.probe_all(&list, opts).expect("probe");
            let wrong: Vec<String> = list
                .iter()
                .zip(&got)
                .filter_map(|(&(a, b, port, proto), &allowed)| {
                    let (from, to) = (&pods[a].id, &pods[b].id);
                    let want = case.expect(from, to, port, proto);
                    (allowed != want).then(|| {
                        format!(
                            "{from} -> {to} {port}/{}: got {allowed} want {want}",
                            proto.name()
                        )
                    })
                })
                .collect();
            if wrong.is_empty() || started.elapsed() > Duration::from_secs(30) {
                break wrong;
            }
            std::thread::sleep(Duration::from_millis(300));
        };
        report.push(format!(
            "{}: {} cells, {} round(s), {:.1}s",
            case.name,
            list.len(),
            rounds,
            started.elapsed().as_secs_f64()
        ));
        if !wrong.is_empty() {
            failures.push(format!(
                "{} ({} wrong cells):\n  {}",
                case.name,
                wrong.len(),
                wrong.join("\n  ")
            ));
        }
    }
    eprintln!("{}", report.join("\n"));
    for (ns, name) in &applied {
        let (ok, _, err) = c.kubectl(&["-n", ns, "delete", "networkpolicy", name], None);
        assert!(ok, "{err}");
    }
    updates_under_traffic(&c, &probers);
    agent_kill_under_default_deny(&c, &probers);
    first_packet_of_50_new_pods(&c, &probers);
    drop(probers);
    let mut c = c;
    c.delete();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(c.leftovers(), Vec::<String>::new());
}

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
use moat_netlab::cases::load_dir;
use moat_netlab::manifest::Objects;
use moat_netlab::{LabPod, ProbeOpts, Probers};
use moat_netpol::Proto;
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
    drop(probers);
    let mut c = c;
    c.delete();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(c.leftovers(), Vec::<String>::new());
}

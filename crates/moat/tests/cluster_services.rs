//! Services that route and names that resolve, on a 3-node `moat cluster` with the real
//! kubectl, nftables and DNS clients: a ClusterIP answers from both backends, from a node and
//! from a pod on another node; a NodePort from another node; session affinity; hairpin;
//! a readiness failure takes a pod out and its recovery back in; scaling 3 -> 1 leaves only
//! the remaining pod answering; scaling to zero refuses at once and scaling back answers; journey 4's names resolve from a
//! busybox pod on every node (headless, SRV, NXDOMAIN); the DNS server answers on every node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::cluster::Cluster;

const APP: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: test}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: localhost/busybox:latest
        imagePullPolicy: IfNotPresent
        command: ["sh", "-c", "hostname > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: nginx, namespace: test}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-np, namespace: test}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: sticky, namespace: test}
spec:
  selector: {app: web}
  sessionAffinity: ClientIP
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-headless, namespace: test}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 8080}]
"#;

fn client(name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: test}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: localhost/busybox:latest\n    imagePullPolicy: IfNotPresent\n    command: [sleep, '100000']\n"
    )
}

fn pod_exec(c: &Cluster, pod: &str, argv: &[&str]) -> (bool, String, String) {
    let mut a = vec!["-n", "test", "exec", pod, "--"];
    a.extend_from_slice(argv);
    c.kubectl(&a, None)
}

/// The names answering `url` over `n` requests from `pod`.
fn names_from_pod(c: &Cluster, pod: &str, url: &str, n: usize) -> BTreeSet<String> {
    let script = format!("for i in $(seq {n}); do timeout 5 wget -qO- {url}; done");
    let (ok, out, err) = pod_exec(c, pod, &["sh", "-c", &script]);
    assert!(ok, "{pod} -> {url}: {err}");
    out.lines().map(str::to_string).collect()
}

/// What `n` requests to `url` from `pod` got: each answer's body, or `FAILED`.
fn answers(c: &Cluster, pod: &str, url: &str, n: usize) -> BTreeSet<String> {
    let script = format!(
        "for i in $(seq {n}); do timeout 5 wget -qO- {url} 2>/dev/null || echo FAILED; done"
    );
    let (_, out, _) = pod_exec(c, pod, &["sh", "-c", &script]);
    out.lines().map(str::to_string).collect()
}

fn ready_backends(c: &Cluster) -> usize {
    let (_, out, _) = c.kubectl(
        &[
            "-n",
            "test",
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=nginx",
            "-o",
            "json",
        ],
        None,
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    v["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
                .filter(|e| e["conditions"]["ready"] == true)
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn serial_cluster_services_and_dns() {
    let c = Cluster::create("sv", "vxlan", 3, &[]);
    let (ok, _, err) = c.kubectl(&["create", "namespace", "test"], None);
    assert!(ok, "{err}");
    c.apply(APP);
    c.apply(&client("client3", &c.node(3)));
    c.apply(&client("client1", &c.node(1)));
    c.running_ip_in("test", "client3");
    c.running_ip_in("test", "client1");
    c.wait("two ready backends", 90, || ready_backends(&c) == 2);
    let (_, pods, _) = c.kubectl(
        &["-n", "test", "get", "pods", "-l", "app=web", "-o", "json"],
        None,
    );
    let pods: serde_json::Value = serde_json::from_str(&pods).unwrap();
    let names: BTreeSet<String> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 2);
    let (_, ip, _) = c.kubectl(
        &[
            "-n",
            "test",
            "get",
            "svc",
            "nginx",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
        None,
    );

    // Journey 2: 20 requests to the ClusterIP from a node return both pods; from a pod too.
    let script = format!("for i in $(seq 20); do timeout 5 busybox wget -qO- http://{ip}/; done");
    let (ok, out, err) = c.exec(2, &["sh", "-c", &script]);
    assert!(ok, "node 2 -> ClusterIP: {err}\n{}", c.logs());
    let from_node: BTreeSet<String> = out.lines().map(str::to_string).collect();
    assert_eq!(from_node, names, "ClusterIP from node 2");
    assert_eq!(
        names_from_pod(&c, "client3", &format!("http://{ip}/"), 20),
        names,
        "ClusterIP from a pod"
    );
    // A NodePort on node 3's address, from node 1.
    let (ok, out, err) = c.exec(
        1,
        &[
            "sh",
            "-c",
            "for i in $(seq 20); do timeout 5 busybox wget -qO- http://172.30.0.13:30080/; done",
        ],
    );
    assert!(ok, "NodePort: {err}");
    let from_np: BTreeSet<String> = out.lines().map(str::to_string).collect();
    assert_eq!(from_np, names, "NodePort from another node");
    // Session affinity: one backend for 20 requests.
    let sticky = names_from_pod(&c, "client3", "http://sticky.test/", 20);
    assert_eq!(
        sticky.len(),
        1,
        "ClientIP affinity spread requests: {sticky:?}"
    );
    // Hairpin: a backend reaching itself through its Service.
    let me = names.iter().next().unwrap().clone();
    let (ok, out, err) = pod_exec(
        &c,
        &me,
        &[
            "sh",
            "-c",
            "for i in $(seq 10); do timeout 5 wget -qO- http://nginx/; done",
        ],
    );
    assert!(
        ok && out.lines().count() == 10,
        "hairpin from {me}: {out}{err}"
    );

    // Journey 4: names from busybox pods on two nodes.
    for pod in ["client3", "client1"] {
        for name in ["nginx", "nginx.test", "nginx.test.svc.cluster.local"] {
            let got = names_from_pod(&c, pod, &format!("http://{name}/"), 4);
            assert!(
                !got.is_empty() && got.is_subset(&names),
                "{pod}: {name}: {got:?}"
            );
        }
        let (ok, out, err) = pod_exec(&c, pod, &["nslookup", "missing.test.svc.cluster.local"]);
        assert!(
            !ok && format!("{out}{err}").contains("NXDOMAIN"),
            "{pod}: {out}{err}"
        );
        let (ok, out, err) = pod_exec(
            &c,
            pod,
            &["nslookup", "web-headless.test.svc.cluster.local"],
        );
        assert!(ok, "{pod}: headless: {err}");
        let ips: Vec<String> = pods["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["status"]["podIP"].as_str().unwrap().to_string())
            .collect();
        for i in &ips {
            assert!(out.contains(i), "headless answer lacks {i}: {out}");
        }
        let (ok, out, err) = pod_exec(
            &c,
            pod,
            &[
                "nslookup",
                "-type=SRV",
                "_http._tcp.nginx.test.svc.cluster.local",
            ],
        );
        assert!(
            ok && out.contains("nginx.test.svc.cluster.local") && out.contains(" 80 "),
            "{pod}: SRV: {out}{err}"
        );
    }
    // The DNS server answers on every node, with a real client.
    for i in 1..=3 {
        let (ok, out, err) = c.exec(
            i,
            &[
                "dig",
                "+short",
                "@10.43.0.10",
                "nginx.test.svc.cluster.local",
            ],
        );
        assert!(ok && out.trim() == ip, "node {i}: {out}{err}");
    }

    // A readiness failure takes a pod out of the Service, and its recovery puts it back.
    let url = format!("http://{ip}/");
    let mut it = names.iter();
    let (sick, well) = (it.next().unwrap().clone(), it.next().unwrap().clone());
    let (ok, _, err) = pod_exec(&c, &sick, &["rm", "/tmp/index.html"]);
    assert!(ok, "{err}");
    c.wait("the failing pod out of the endpoints", 30, || {
        ready_backends(&c) == 1
    });
    c.wait("only the ready pod to answer", 10, || {
        answers(&c, "client3", &url, 20) == BTreeSet::from([well.clone()])
    });
    let (ok, _, err) = pod_exec(&c, &sick, &["sh", "-c", "hostname > /tmp/index.html"]);
    assert!(ok, "{err}");
    c.wait("the recovered pod back", 30, || ready_backends(&c) == 2);
    c.wait("both pods to answer again", 10, || {
        answers(&c, "client3", &url, 20) == names
    });

    // Scaling 3 -> 1: the removed pods get no new connection once their endpoints go.
    let (ok, _, err) = c.kubectl(&["-n", "test", "scale", "deploy/web", "--replicas=3"], None);
    assert!(ok, "{err}");
    c.wait("three ready backends", 90, || ready_backends(&c) == 3);
    c.wait("three pods answering", 20, || {
        answers(&c, "client3", &url, 30).len() == 3
    });
    let (ok, _, err) = c.kubectl(&["-n", "test", "scale", "deploy/web", "--replicas=1"], None);
    assert!(ok, "{err}");
    c.wait("one ready backend", 60, || ready_backends(&c) == 1);
    let (_, left, _) = c.kubectl(
        &[
            "-n",
            "test",
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=nginx",
            "-o",
            "jsonpath={.items[*].endpoints[?(@.conditions.ready==true)].targetRef.name}",
        ],
        None,
    );
    let left = left.trim().to_string();
    c.wait("only the remaining pod to answer", 10, || {
        answers(&c, "client3", &url, 20) == BTreeSet::from([left.clone()])
    });

    // Scaling: to 0 refuses at once (a reset, not a timeout), back to 1 answers.
    let (ok, _, err) = c.kubectl(&["-n", "test", "scale", "deploy/web", "--replicas=0"], None);
    assert!(ok, "{err}");
    c.wait("no ready backend", 60, || ready_backends(&c) == 0);
    c.wait("connection refused", 10, || {
        let (ok, out, err) = pod_exec(
            &c,
            "client3",
            &["timeout", "5", "wget", "-qO-", &format!("http://{ip}/")],
        );
        !ok && format!("{out}{err}").contains("refused")
    });
    let (ok, _, err) = c.kubectl(&["-n", "test", "scale", "deploy/web", "--replicas=1"], None);
    assert!(ok, "{err}");
    c.wait("an answer again", 90, || {
        let (ok, out, _) = pod_exec(
            &c,
            "client3",
            &["timeout", "5", "wget", "-qO-", &format!("http://{ip}/")],
        );
        ok && !out.trim().is_empty()
    });
    let mut c = c;
    c.delete();
    assert_eq!(c.leftovers(), Vec::<String>::new());
}

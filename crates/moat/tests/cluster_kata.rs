//! A microVM pod and a runc pod on different nodes of one `moat cluster` (vxlan), with the
//! real kubectl, kernel, runc, moat-runtime and QEMU (TCG): the `kata` RuntimeClass puts the
//! pod in a VM on a `moat agent` node (its `kubectl exec` answers from our guest kernel), the
//! two pods fetch from each other by pod IP over HTTP and each receiver sees the sender's own
//! pod IP; journey 2 (the CRI-O-annotated `test-kata` Deployment in VMs, its Service and
//! NodePort, DNS, `default-deny` and `allow-http-client`) across the nodes; deleting the cluster leaves no VM, process, namespace, mount, cgroup or file
//! behind and the host's root network namespace as it was. Fails, never skips, without root,
//! the guest assets or moat-runtime.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::{Cluster, host_state, kata_handler, serial_lock, web_pod};

/// What busybox httpd reports as the peer (`[::ffff:a.b.c.d]`: it listens on IPv6), as IPv4.
fn peer(out: &str) -> &str {
    out.trim()
        .trim_start_matches("[::ffff:")
        .trim_end_matches(']')
}

/// `src` fetches `/cgi-bin/ip` from `dst_ip` until it answers (a VM's httpd may start a
/// moment after the pod is Running) and returns what the server saw as the caller.
fn fetch_ip(c: &Cluster, src: &str, dst_ip: &str) -> String {
    let url = format!("http://{dst_ip}:8080/cgi-bin/ip");
    let mut seen = String::new();
    c.wait(&format!("{src} to fetch {url}"), 180, || {
        let (ok, out, err) = c.fetch_from(src, &url);
        if !ok {
            eprintln!("{src} -> {url}: {err}");
        }
        seen = peer(&out).to_string();
        ok && !seen.is_empty()
    });
    seen
}

#[test]
fn serial_cluster_kata_and_runc_across_nodes() {
    let _lock = serial_lock();
    let before = host_state();
    let c = Cluster::prepare("katax");
    let handlers = kata_handler(&c.root_path());
    let handlers = handlers.display().to_string();
    let c = c.start("vxlan", 2, &["--runtime-config", &handlers]);
    c.apply(
        "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata: {name: kata}\nhandler: kata\n",
    );
    // The VM on node 2 (a `moat agent`), the runc pod on node 1 (the server's own agent).
    let vm_node = c.node(2);
    c.apply(
        &web_pod("vm", &vm_node)
            .replace("  containers:", "  runtimeClassName: kata\n  containers:"),
    );
    c.apply(&web_pod("ctr", &c.node(1)));
    let ctr_ip = c.running_ip_within("ctr", 180);
    let vm_ip = c.running_ip_within("vm", 180);
    // Each pod's address is from its own node's podCIDR (a /24 here).
    for (ip, i) in [(&vm_ip, 2), (&ctr_ip, 1)] {
        let (ok, node, err) = c.kubectl(&["get", "node", &c.node(i), "-o", "json"], None);
        assert!(ok, "{err}");
        let node: serde_json::Value = serde_json::from_str(&node).unwrap();
        let cidr = node["spec"]["podCIDR"].as_str().unwrap_or_default();
        let net = cidr.trim_end_matches(".0/24");
        assert!(
            cidr.ends_with(".0/24") && ip.starts_with(&format!("{net}.")),
            "pod IP {ip} is not in {}'s podCIDR {cidr:?}",
            c.node(i)
        );
    }

    // It is a VM, on node 2 only: one QEMU whose command line names node 2's run dir, none
    // for node 1, and the pod's processes answer from our guest kernel, not the host's.
    let node_run = |i: usize| c.root_path().join(&c.name).join(c.node(i)).join("run");
    assert_eq!(c.qemus_under(&node_run(2)), 1, "one VM on {vm_node}");
    assert_eq!(c.qemus_under(&node_run(1)), 0, "no VM on the runc node");
    let assets = std::env::var_os("MOAT_VM_ASSETS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/var/lib/moat-runtime/assets".into());
    let stamp = std::fs::read_to_string(assets.join("stamp-moat")).expect("stamp-moat");
    let guest = stamp.lines().next().unwrap_or_default().trim().to_string();
    assert!(!guest.is_empty(), "no kernel release in stamp-moat");
    let (ok, out, err) = c.kubectl(&["exec", "vm", "--", "uname", "-r"], None);
    assert!(ok, "exec into the VM pod: {err}");
    assert_eq!(out.trim(), guest, "kubectl exec vm runs in the guest");
    let (ok, out, err) = c.kubectl(&["exec", "ctr", "--", "uname", "-r"], None);
    assert!(ok, "exec into the runc pod: {err}");
    assert_ne!(out.trim(), guest, "the runc pod shares the host's kernel");

    // Both ways across the vxlan, by pod IP, each receiver seeing the sender's pod IP (no
    // masquerade between pods, whether the pod is a VM or not).
    assert_eq!(
        fetch_ip(&c, "ctr", &vm_ip),
        ctr_ip,
        "the VM pod saw the runc pod as someone else"
    );
    assert_eq!(
        fetch_ip(&c, "vm", &ctr_ip),
        vm_ip,
        "the runc pod saw the VM pod as someone else"
    );
    // And each serves its own page: the answers come from the pods named.
    let (ok, out, err) = c.fetch_from("ctr", &format!("http://{vm_ip}:8080/"));
    assert!(ok, "ctr -> vm /: {err}");
    assert_eq!(out.trim(), "vm");
    let (ok, out, err) = c.fetch_from("vm", &format!("http://{ctr_ip}:8080/"));
    assert!(ok, "vm -> ctr /: {err}");
    assert_eq!(out.trim(), "ctr");

    // Node 2's agent killed -9 and started again from the cluster's records: the VM lives on
    // untouched and still answers both ways, and the agent came back with the same handler
    // file (a new VM pod starts there; the default handler's binary is not this build's).
    let pid = std::fs::read_to_string(c.root_path().join(&c.name).join(&vm_node).join("pid"))
        .expect("node 2's pid");
    let (ok, _, err) =
        common::lab::run(std::process::Command::new("kill").args(["-9", pid.trim()]));
    assert!(ok, "{err}");
    let (ok, out, err) = c.moat(&["start", "--name", &c.name, &vm_node]);
    assert!(ok && out.contains("started"), "{out}{err}");
    let log = c.root_path().join(&c.name).join(&vm_node).join("node.log");
    c.wait("node 2's agent to come back", 120, || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("pod network ready")
            .count()
            >= 2
    });
    assert_eq!(fetch_ip(&c, "ctr", &vm_ip), ctr_ip, "after the restart");
    assert_eq!(fetch_ip(&c, "vm", &ctr_ip), vm_ip, "after the restart");
    assert_eq!(
        c.qemus_under(&node_run(2)),
        1,
        "the same one VM on {vm_node}"
    );
    let vm = c.pod("vm").unwrap();
    assert_eq!(
        vm["status"]["containerStatuses"][0]["restartCount"], 0,
        "the VM pod restarted"
    );
    c.apply(
        &web_pod("vm2", &vm_node)
            .replace("  containers:", "  runtimeClassName: kata\n  containers:"),
    );
    let vm2_ip = c.running_ip_within("vm2", 180);
    let (ok, out, err) = c.kubectl(&["exec", "vm2", "--", "uname", "-r"], None);
    assert!(ok, "exec into vm2: {err}");
    assert_eq!(out.trim(), guest, "vm2 runs in a guest");
    assert_eq!(c.qemus_under(&node_run(2)), 2, "a second VM on {vm_node}");
    assert_eq!(fetch_ip(&c, "vm2", &vm_ip), vm2_ip, "VM to VM on one node");

    // Journey 2 as SCENARIOS.md writes it, across nodes: a Deployment `test-kata` whose pods
    // carry the CRI-O annotation `io.kubernetes.cri-o.TrustedSandbox: "false"` (no
    // runtimeClassName: the server gives them the untrusted class), each in a VM; its Service
    // (a NodePort here) answers a runc pod on the other node from both VMs, by name through
    // the cluster DNS, and answers on the VM node's address from node 1; a VM pod resolves
    // and reaches it too.
    let (ok, _, err) = c.kubectl(&["delete", "pod", "vm2"], None);
    assert!(ok, "{err}");
    let web = web_pod("x", &vm_node);
    let script = web.split_once("    - |\n").unwrap().1;
    c.apply(&format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: test-kata}}\nspec:\n  replicas: 2\n  selector: {{matchLabels: {{app: kata}}}}\n  template:\n    metadata:\n      labels: {{app: kata}}\n      annotations: {{io.kubernetes.cri-o.TrustedSandbox: \"false\"}}\n    spec:\n      nodeSelector: {{kubernetes.io/hostname: {vm_node}}}\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: web\n        image: localhost/busybox:latest\n        imagePullPolicy: IfNotPresent\n        ports: [{{containerPort: 8080}}]\n        command:\n        - sh\n        - -c\n        - |\n{}",
        script
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    ));
    let names = |c: &Cluster| -> Vec<String> {
        let (_, out, _) = c.kubectl(
            &[
                "get",
                "pods",
                "-l",
                "app=kata",
                "-o",
                "jsonpath={range .items[?(@.status.phase==\"Running\")]}{.metadata.name}{\"\\n\"}{end}",
            ],
            None,
        );
        out.lines().map(str::to_string).collect()
    };
    c.wait("the two test-kata pods to run", 240, || {
        names(&c).len() == 2
    });
    let kata_pods = names(&c);
    let mut kata_ips = Vec::new();
    for p in &kata_pods {
        let pod = c.pod(p).unwrap();
        assert_eq!(
            pod["spec"]["runtimeClassName"], "kata",
            "{p}: the annotation did not choose the untrusted class"
        );
        kata_ips.push(c.running_ip_within(p, 180));
    }
    c.wait("a VM per test-kata pod", 60, || {
        c.qemus_under(&node_run(2)) == 3
    });
    c.apply("apiVersion: v1\nkind: Service\nmetadata: {name: test-kata}\nspec:\n  type: NodePort\n  selector: {app: kata}\n  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30081}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: test-kata-headless}\nspec:\n  clusterIP: None\n  selector: {app: kata}\n  ports: [{port: 80, targetPort: 8080}]\n");
    let want: std::collections::BTreeSet<String> = kata_pods.iter().cloned().collect();
    let mut seen = std::collections::BTreeSet::new();
    c.wait("both VMs behind the Service", 90, || {
        let (ok, out, _) = c.fetch_from("ctr", "http://test-kata/");
        if ok {
            seen.insert(out.trim().to_string());
        }
        seen == want
    });
    let vm_node_ip = format!("172.30.0.1{}", 2);
    let (ok, out, err) = c.exec(
        1,
        &[
            "sh",
            "-c",
            &format!(
                "for i in $(seq 20); do timeout 5 busybox wget -qO- http://{vm_node_ip}:30081/; done"
            ),
        ],
    );
    assert!(ok, "NodePort onto the VM pods: {err}");
    let from_np: std::collections::BTreeSet<String> = out.lines().map(str::to_string).collect();
    assert_eq!(
        from_np, want,
        "the NodePort on the VM node reaches both VMs"
    );
    // 20 requests to the ClusterIP from a node (node 1's own namespace) reach both VMs.
    let (ok, cluster_ip, err) = c.kubectl(
        &[
            "get",
            "svc",
            "test-kata",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
        None,
    );
    assert!(ok, "{err}");
    let (ok, out, err) = c.exec(
        1,
        &[
            "sh",
            "-c",
            &format!(
                "for i in $(seq 20); do timeout 5 busybox wget -qO- http://{}/; done",
                cluster_ip.trim()
            ),
        ],
    );
    assert!(ok, "ClusterIP from node 1: {err}");
    let from_node: std::collections::BTreeSet<String> = out.lines().map(str::to_string).collect();
    assert_eq!(
        from_node, want,
        "the ClusterIP from a node reaches both VMs"
    );
    // Journey 4's names from inside a VM pod (the guest's resolv.conf points at the cluster
    // DNS): short, namespaced and full names, NXDOMAIN, a headless Service, SRV.
    for name in [
        "test-kata",
        "test-kata.default",
        "test-kata.default.svc.cluster.local",
    ] {
        let (ok, out, err) = c.fetch_from("vm", &format!("http://{name}/"));
        assert!(
            ok && kata_pods.contains(&out.trim().to_string()),
            "{name} from a VM pod: {out}{err}"
        );
    }
    let (ok, out, err) = c.kubectl(
        &[
            "exec",
            "vm",
            "--",
            "nslookup",
            "missing.default.svc.cluster.local",
        ],
        None,
    );
    assert!(
        !ok && format!("{out}{err}").contains("NXDOMAIN"),
        "NXDOMAIN in a VM pod: {out}{err}"
    );
    let (ok, out, err) = c.kubectl(
        &[
            "exec",
            "vm",
            "--",
            "nslookup",
            "test-kata-headless.default.svc.cluster.local",
        ],
        None,
    );
    assert!(ok, "headless from a VM pod: {err}");
    for ip in &kata_ips {
        assert!(
            out.contains(ip.as_str()),
            "headless answer lacks {ip}: {out}"
        );
    }
    let (ok, out, err) = c.kubectl(
        &[
            "exec",
            "vm",
            "--",
            "nslookup",
            "-type=SRV",
            "_http._tcp.test-kata.default.svc.cluster.local",
        ],
        None,
    );
    assert!(
        ok && out.contains("test-kata.default.svc.cluster.local") && out.contains(" 80 "),
        "SRV from a VM pod: {out}{err}"
    );

    // The journey's policies, for VM pods as for runc pods: `default-deny` stops
    // `http-client` (a runc pod on the other node) by pod IP and through the Service;
    // `allow-http-client` lets exactly it back in; `ctr`, without the label, stays out.
    c.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: http-client, labels: {{run: http-client}}}}\nspec:\n  nodeName: {}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: localhost/busybox:latest\n    imagePullPolicy: IfNotPresent\n    command: [sleep, '100000']\n",
        c.node(1)
    ));
    c.running_ip_within("http-client", 120);
    let reaches = |c: &Cluster, from: &str| -> bool {
        c.fetch_from(from, "http://test-kata/").0
            && kata_ips
                .iter()
                .all(|ip| c.fetch_from(from, &format!("http://{ip}:8080/")).0)
    };
    let refused = |c: &Cluster, from: &str| -> bool {
        !c.fetch_from(from, "http://test-kata/").0
            && kata_ips
                .iter()
                .all(|ip| !c.fetch_from(from, &format!("http://{ip}:8080/")).0)
    };
    c.wait("http-client to reach the Service and both pods", 60, || {
        reaches(&c, "http-client")
    });
    c.apply("kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {namespace: default, name: default-deny}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n");
    c.wait("default-deny to stop http-client", 30, || {
        refused(&c, "http-client")
    });
    assert!(refused(&c, "ctr"), "default-deny let ctr in");
    c.apply("kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {namespace: default, name: allow-http-client}\nspec:\n  podSelector: {matchLabels: {app: kata}}\n  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {run: http-client}}\n");
    c.wait("allow-http-client to let it back in", 30, || {
        reaches(&c, "http-client")
    });
    assert!(refused(&c, "ctr"), "a pod without the label got in");
    for p in ["default-deny", "allow-http-client"] {
        let (ok, _, err) = c.kubectl(&["delete", "networkpolicy", p], None);
        assert!(ok, "{err}");
    }
    c.wait("ctr -> the VMs again", 30, || reaches(&c, "ctr"));

    let mut c = c;
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

/// A Deployment whose pods hold a `curl` (sleeping busybox) and an `nginx` (busybox httpd on
/// 80, serving the pod's name) container.
fn two_container_deployment(name: &str, domain: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: 1\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}, domain: {domain}}}}}\n    spec:\n{extra_spec}      terminationGracePeriodSeconds: 1\n      containers:\n      - {{name: curl, image: localhost/busybox:latest, imagePullPolicy: IfNotPresent, command: [sleep, '100000']}}\n      - {{name: nginx, image: localhost/busybox:latest, imagePullPolicy: IfNotPresent, command: [sh, -c, 'hostname > /tmp/index.html; exec httpd -f -p 80 -h /tmp']}}\n"
    )
}

/// Journey 3 on three nodes: node 3 is the untrusted worker (labelled and tainted
/// `example.org/workload=untrusted`), RuntimeClass `kata` carries the matching nodeSelector
/// and toleration; `nginx-untrusted` (curl + nginx in one pod) lands only there, one VM per
/// pod holding both containers, three VMs at 3 replicas; `nginx-trusted` runs as runc pods on
/// node 2. Without policy trusted and untrusted pods reach each other both ways; the policy
/// separating the two domains blocks exactly the cross-domain cells.
#[test]
fn serial_cluster_journey_3_untrusted_node_and_domain_policy() {
    let _lock = serial_lock();
    let c = Cluster::prepare("kj3");
    let handlers = kata_handler(&c.root_path()).display().to_string();
    let c = c.start(
        "vxlan",
        3,
        &["--runtime-config", &handlers, "--untrusted-nodes", "1"],
    );
    let untrusted = c.node(3);
    c.apply("apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata: {name: kata}\nhandler: kata\nscheduling:\n  nodeSelector: {example.org/workload: untrusted}\n  tolerations: [{key: example.org/workload, operator: Equal, value: untrusted, effect: NoSchedule}]\n");
    c.apply(&two_container_deployment(
        "nginx-untrusted",
        "untrusted",
        "      runtimeClassName: kata\n",
    ));
    c.apply(&two_container_deployment(
        "nginx-trusted",
        "trusted",
        &format!(
            "      nodeSelector: {{kubernetes.io/hostname: {}}}\n",
            c.node(2)
        ),
    ));
    let running = |c: &Cluster, app: &str| -> Vec<(String, String, String)> {
        let (_, out, _) = c.kubectl(
            &[
                "get",
                "pods",
                "-l",
                &format!("app={app}"),
                "-o",
                "jsonpath={range .items[?(@.status.phase==\"Running\")]}{.metadata.name} {.spec.nodeName} {.status.podIP}{\"\\n\"}{end}",
            ],
            None,
        );
        out.lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                Some((w.next()?.into(), w.next()?.into(), w.next()?.into()))
            })
            .collect()
    };
    c.wait("one untrusted and one trusted pod", 240, || {
        running(&c, "nginx-untrusted").len() == 1 && running(&c, "nginx-trusted").len() == 1
    });
    let node_run = |i: usize| c.root_path().join(&c.name).join(c.node(i)).join("run");
    let (ok, _, err) = c.kubectl(&["scale", "deploy/nginx-untrusted", "--replicas=3"], None);
    assert!(ok, "{err}");
    c.wait("three untrusted pods", 300, || {
        running(&c, "nginx-untrusted").len() == 3
    });
    c.wait("three VMs on the untrusted node", 60, || {
        c.qemus_under(&node_run(3)) == 3
    });
    assert_eq!(c.qemus_under(&node_run(1)), 0, "a VM on node 1");
    assert_eq!(c.qemus_under(&node_run(2)), 0, "a VM on node 2");
    let untrusted_pods = running(&c, "nginx-untrusted");
    let trusted_pods = running(&c, "nginx-trusted");
    for (name, node, _) in &untrusted_pods {
        assert_eq!(node, &untrusted, "{name} is not on the untrusted node");
        // Both containers in one VM: curl reaches nginx on the VM's own loopback.
        let (ok, out, err) = c.kubectl(
            &[
                "exec",
                name,
                "-c",
                "curl",
                "--",
                "wget",
                "-qO-",
                "http://127.0.0.1/",
            ],
            None,
        );
        assert!(
            ok && out.trim() == name,
            "{name}: curl -> nginx: {out}{err}"
        );
    }
    assert_eq!(trusted_pods[0].1, c.node(2), "the trusted pod's node");

    let all: Vec<&(String, String, String)> = untrusted_pods.iter().chain(&trusted_pods).collect();
    let domain = |name: &str| {
        if name.starts_with("nginx-untrusted") {
            "untrusted"
        } else {
            "trusted"
        }
    };
    let reaches = |c: &Cluster, from: &str, ip: &str| {
        let (ok, _, _) = c.kubectl(
            &[
                "exec",
                from,
                "-c",
                "curl",
                "--",
                "timeout",
                "3",
                "wget",
                "-qO-",
                &format!("http://{ip}/"),
            ],
            None,
        );
        ok
    };
    // Every ordered pair of distinct pods; want(a, b) says whether a reaches b.
    let table = |c: &Cluster, want: &dyn Fn(&str, &str) -> bool| -> Vec<String> {
        let mut wrong = Vec::new();
        for (a, _, _) in &all {
            for (b, _, ip) in &all {
                if a == b {
                    continue;
                }
                let got = reaches(c, a, ip);
                if got != want(a, b) {
                    wrong.push(format!("{a} -> {b}: got {got}"));
                }
            }
        }
        wrong
    };
    let mut wrong = Vec::new();
    c.wait("every pod to reach every other without policy", 120, || {
        wrong = table(&c, &|_, _| true);
        wrong.is_empty()
    });
    for d in ["untrusted", "trusted"] {
        c.apply(&format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {d}-only}}\nspec:\n  podSelector: {{matchLabels: {{domain: {d}}}}}\n  policyTypes: [Ingress]\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{domain: {d}}}}}}}]}}]\n"
        ));
    }
    c.wait("the domains separated, exactly", 60, || {
        wrong = table(&c, &|a, b| domain(a) == domain(b));
        wrong.is_empty()
    });
    assert!(wrong.is_empty(), "{wrong:?}");
    let mut c = c;
    c.delete();
    assert_eq!(
        c.leftovers(),
        Vec::<String>::new(),
        "left behind after delete"
    );
}

//! NetworkPolicy on live pods across a 3-node `moat cluster`: journey 2's default-deny stops
//! a client on another node (by pod IP and through the Service's ClusterIP, judged by the
//! backend after DNAT), an allow rule by pod label lets exactly the labelled client in from
//! another node (the source pod IP survives the vxlan crossing), the server's own node still
//! probes it (it stays Ready), and deleting the policies restores access.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::Cluster;

fn pod(name: &str, node: &str, labels: &str, serve: bool) -> String {
    let cmd = if serve {
        "[sh, -c, 'hostname > /tmp/index.html; exec httpd -f -p 8080 -h /tmp']"
    } else {
        "[sleep, '100000']"
    };
    let probe = if serve {
        "\n    readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}"
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: np, labels: {labels}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: localhost/busybox:latest\n    imagePullPolicy: IfNotPresent\n    command: {cmd}{probe}\n"
    )
}

fn reaches(c: &Cluster, from: &str, url: &str) -> bool {
    let (ok, out, _) = c.kubectl(
        &[
            "-n", "np", "exec", from, "--", "timeout", "3", "wget", "-qO-", url,
        ],
        None,
    );
    ok && out.trim() == "srv"
}

#[test]
fn serial_cluster_network_policy_live() {
    let c = Cluster::create("np", "vxlan", 3, &[]);
    let (ok, _, err) = c.kubectl(&["create", "namespace", "np"], None);
    assert!(ok, "{err}");
    c.apply(&pod("srv", &c.node(2), "{app: srv}", true));
    c.apply(&pod("client", &c.node(1), "{role: client}", false));
    c.apply(&pod("other", &c.node(3), "{role: other}", false));
    c.apply("apiVersion: v1\nkind: Service\nmetadata: {name: srv, namespace: np}\nspec:\n  selector: {app: srv}\n  ports: [{port: 80, targetPort: 8080}]\n");
    let srv = c.running_ip_in("np", "srv");
    c.running_ip_in("np", "client");
    c.running_ip_in("np", "other");
    let by_ip = format!("http://{srv}:8080/");
    let by_svc = "http://srv.np.svc.cluster.local/".to_string();
    c.wait("both clients to reach srv", 60, || {
        reaches(&c, "client", &by_ip)
            && reaches(&c, "other", &by_ip)
            && reaches(&c, "other", &by_svc)
    });

    c.apply("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: default-deny, namespace: np}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n");
    c.wait("default-deny to stop both clients", 20, || {
        !reaches(&c, "client", &by_ip) && !reaches(&c, "other", &by_ip)
    });
    assert!(
        !reaches(&c, "other", &by_svc),
        "the Service path bypassed the policy"
    );
    // Every node reports it programmed: the controllers annotate the policy (which `kubectl
    // describe networkpolicy` shows) and record a `Programmed` event.
    c.wait("default-deny reported programmed on all nodes", 30, || {
        let (_, out, _) = c.kubectl(
            &["-n", "np", "describe", "networkpolicy", "default-deny"],
            None,
        );
        out.contains("netpol.moat.io/status: generation 1 programmed on all 3 Ready nodes")
    });
    let (ok, out, err) = c.kubectl(
        &[
            "-n",
            "np",
            "get",
            "events",
            "--field-selector",
            "involvedObject.kind=NetworkPolicy,involvedObject.name=default-deny,reason=Programmed",
            "-o",
            "jsonpath={.items[*].message}",
        ],
        None,
    );
    assert!(
        ok && out.contains("Generation 1 is enforced on all 3 Ready nodes"),
        "{out}{err}"
    );
    // The server's node still probes it: it stays Ready under default deny.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let p = c.pod_in("np", "srv").unwrap();
    let ready = p["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["type"] == "Ready" && k["status"] == "True");
    assert!(ready, "srv lost readiness under default deny: {p}");

    c.apply("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-clients, namespace: np}\nspec:\n  podSelector: {matchLabels: {app: srv}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {role: client}}}]\n    ports: [{port: 8080}]\n");
    c.wait("the labelled client on node 1 to get in", 20, || {
        reaches(&c, "client", &by_ip)
    });
    assert!(
        reaches(&c, "client", &by_svc),
        "allowed client through the Service"
    );
    assert!(
        !reaches(&c, "other", &by_ip),
        "the unlabelled client got in"
    );
    assert!(
        !reaches(&c, "other", &by_svc),
        "the unlabelled client got in through the Service"
    );

    for p in ["default-deny", "allow-clients"] {
        let (ok, _, err) = c.kubectl(&["-n", "np", "delete", "networkpolicy", p], None);
        assert!(ok, "{err}");
    }
    c.wait("access to come back", 20, || reaches(&c, "other", &by_ip));
    // The 2016 DefaultDeny annotation means nothing unless the server was started with
    // --legacy-namespace-isolation (upstream removed it).
    let (ok, _, err) = c.kubectl(
        &[
            "annotate",
            "namespace",
            "np",
            r#"net.beta.kubernetes.io/network-policy={"ingress":{"isolation":"DefaultDeny"}}"#,
        ],
        None,
    );
    assert!(ok, "{err}");
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(
        reaches(&c, "other", &by_ip),
        "the legacy annotation isolated a namespace without --legacy-namespace-isolation"
    );

    // First-packet isolation: a pod whose egress is denied never gets a packet out, even the
    // very first, sent as its container starts (before the API shows its IP); an unselected
    // twin gets through at once.
    c.apply("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: locked-egress, namespace: np}\nspec:\n  podSelector: {matchLabels: {role: locked}}\n  policyTypes: [Egress]\n");
    for (name, role) in [("eager", "locked"), ("free", "open")] {
        c.apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: np, labels: {{role: {role}}}}}\nspec:\n  nodeName: {}\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: localhost/busybox:latest\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, 'if timeout 3 wget -qO- {by_ip} >/dev/null; then echo REACHED; else echo DENIED; fi; sleep 100000']\n",
            c.node(1)
        ));
    }
    let verdict = |pod: &str| {
        let mut v = String::new();
        c.wait(&format!("{pod}'s first attempt"), 60, || {
            let (_, out, _) = c.kubectl(&["-n", "np", "logs", pod], None);
            // `timeout` may say "Terminated" before the verdict line.
            v = out
                .lines()
                .map(str::trim)
                .find(|l| *l == "REACHED" || *l == "DENIED")
                .unwrap_or("")
                .to_string();
            !v.is_empty()
        });
        v
    };
    assert_eq!(verdict("free"), "REACHED");
    assert_eq!(
        verdict("eager"),
        "DENIED",
        "a denied pod's first packets got out"
    );
    let mut c = c;
    c.delete();
    assert_eq!(c.leftovers(), Vec::<String>::new());
}

fn web(name: &str, node: &str, labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: test, labels: {labels}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: localhost/busybox:latest\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, 'echo nginx > /tmp/index.html; exec httpd -f -p 80 -h /tmp']\n    readinessProbe: {{httpGet: {{path: /, port: 80}}, periodSeconds: 1}}\n"
    )
}

fn client(name: &str, node: &str, labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: test, labels: {labels}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: localhost/busybox:latest\n    imagePullPolicy: IfNotPresent\n    command: [sleep, '100000']\n"
    )
}

/// `wget nginx` (the Service, by its short name through the cluster DNS) from a pod.
fn wget_nginx(c: &Cluster, from: &str) -> bool {
    let (ok, out, _) = c.kubectl(
        &[
            "-n",
            "test",
            "exec",
            from,
            "--",
            "timeout",
            "3",
            "wget",
            "-qO-",
            "http://nginx/",
        ],
        None,
    );
    ok && out.trim() == "nginx"
}

/// `moat netpol explain` against the live cluster: (allowed, its report).
fn explain(c: &Cluster, from: &str, to: &str) -> (bool, String) {
    let (ok, out, err) = common::lab::run(
        std::process::Command::new(common::lab::moat_bin())
            .args(["netpol", "explain", "--kubeconfig"])
            .arg(c.kubeconfig())
            .args(["--from", from, "--to", to, "--port", "80/TCP"]),
    );
    // Exit 1 is a deny; anything on stderr is a failure to explain.
    assert!(err.trim().is_empty(), "explain: {err}");
    (ok, out)
}

/// Journey 4 on a host-gw cluster started with `--legacy-namespace-isolation`: the 2016
/// namespace annotation isolates the namespace on every node, `access-nginx` lets exactly the
/// `access=true` pods reach nginx by its Service name from other nodes, and `moat netpol
/// explain` reads the live cluster and names the policies on each side.
#[test]
fn serial_cluster_legacy_namespace_isolation_host_gw_and_live_explain() {
    let c = Cluster::create(
        "npl",
        "host-gw",
        3,
        &["--server-arg=--legacy-namespace-isolation"],
    );
    let (ok, out, err) = c.kubectl(
        &[
            "-n",
            "kube-system",
            "get",
            "configmap",
            "moat-network-policy",
            "-o",
            "jsonpath={.data.legacyNamespaceIsolation}",
        ],
        None,
    );
    assert!(ok && out.trim() == "true", "{out} {err}");
    let (ok, _, err) = c.kubectl(&["create", "namespace", "test"], None);
    assert!(ok, "{err}");
    c.apply(&web("nginx", &c.node(2), "{run: nginx}"));
    c.apply(&client("busybox", &c.node(1), "{access: 'true'}"));
    c.apply(&client("stranger", &c.node(3), "{role: none}"));
    c.apply("apiVersion: v1\nkind: Service\nmetadata: {name: nginx, namespace: test}\nspec:\n  selector: {run: nginx}\n  ports: [{port: 80}]\n");
    for p in ["nginx", "busybox", "stranger"] {
        c.running_ip_in("test", p);
    }
    c.wait("both clients to reach nginx", 60, || {
        wget_nginx(&c, "busybox") && wget_nginx(&c, "stranger")
    });
    let (allowed, report) = explain(&c, "test/stranger", "test/nginx");
    assert!(allowed, "explain denies before any isolation:\n{report}");

    let (ok, _, err) = c.kubectl(
        &[
            "annotate",
            "namespace",
            "test",
            r#"net.beta.kubernetes.io/network-policy={"ingress":{"isolation":"DefaultDeny"}}"#,
        ],
        None,
    );
    assert!(ok, "{err}");
    c.wait("the annotation to isolate the namespace", 20, || {
        !wget_nginx(&c, "busybox") && !wget_nginx(&c, "stranger")
    });

    c.apply("kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: access-nginx, namespace: test}\nspec:\n  podSelector: {matchLabels: {run: nginx}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {access: 'true'}}}]\n");
    c.wait("access=true to get in", 20, || wget_nginx(&c, "busybox"));
    assert!(
        !wget_nginx(&c, "stranger"),
        "a pod without access=true got in"
    );

    let (allowed, report) = explain(&c, "test/busybox", "test/nginx");
    assert!(allowed, "{report}");
    assert!(report.contains("access-nginx"), "{report}");
    let (allowed, report) = explain(&c, "test/stranger", "test/nginx");
    assert!(!allowed, "{report}");
    assert!(report.contains("access-nginx"), "{report}");
    let (_, out, err) = common::lab::run(
        std::process::Command::new(common::lab::moat_bin())
            .args(["netpol", "explain", "--kubeconfig"])
            .arg(c.kubeconfig())
            .args([
                "--from",
                "test/nobody",
                "--to",
                "test/nginx",
                "--port",
                "80/TCP",
            ]),
    );
    assert!(
        err.contains("no pod test/nobody"),
        "an unknown pod: {out} {err}"
    );

    // Without the annotation, access-nginx alone still isolates nginx.
    let (ok, _, err) = c.kubectl(
        &[
            "annotate",
            "namespace",
            "test",
            "net.beta.kubernetes.io/network-policy-",
        ],
        None,
    );
    assert!(ok, "{err}");
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(wget_nginx(&c, "busybox"));
    assert!(!wget_nginx(&c, "stranger"));
    let (ok, _, err) = c.kubectl(
        &["-n", "test", "delete", "networkpolicy", "access-nginx"],
        None,
    );
    assert!(ok, "{err}");
    c.wait("the stranger to get in again", 20, || {
        wget_nginx(&c, "stranger")
    });
    let mut c = c;
    c.delete();
    assert_eq!(c.leftovers(), Vec::<String>::new());
}

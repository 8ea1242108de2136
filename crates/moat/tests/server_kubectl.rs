//! `moat server` driven by the real kubectl (1.27, 1.32, 1.33): objects round-trip, patches,
//! scale, watch, clear errors that change nothing, and durability across kill -9.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::Server;
use moat_store::etcd::LocalEtcd;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write manifest");
    p.display().to_string()
}

fn scenario(version: &str, server_args: &[&str]) {
    let dir = tempfile::tempdir().expect("tmp");
    let s = Server::start(dir.path(), server_args);
    let k = s.kubectl(version);
    let ns = k.ok(&["get", "ns"]);
    for n in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(ns.contains(n), "{ns}");
    }
    assert!(
        ns.starts_with("NAME"),
        "server-side table with headers: {ns}"
    );

    let cm = write(
        dir.path(),
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: demo, labels: {app: web}}\ndata: {a: \"1\"}\n",
    );
    assert!(
        k.ok(&["apply", "--validate=false", "-f", &cm])
            .contains("configmap/demo created")
    );
    let obj = k.json(&["get", "cm", "demo"]);
    assert_eq!(obj["data"]["a"], "1");
    assert!(obj["metadata"]["uid"].is_string() && obj["metadata"]["creationTimestamp"].is_string());
    let rv1: i64 = obj["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .parse()
        .expect("int");

    k.ok(&["label", "cm", "demo", "tier=fe"]);
    k.ok(&["annotate", "--overwrite", "cm", "demo", "note=x"]);
    k.ok(&[
        "patch",
        "cm",
        "demo",
        "--type",
        "merge",
        "-p",
        "{\"data\":{\"b\":\"2\"}}",
    ]);
    k.ok(&[
        "patch",
        "cm",
        "demo",
        "--type",
        "json",
        "-p",
        "[{\"op\":\"replace\",\"path\":\"/data/a\",\"value\":\"9\"}]",
    ]);
    let obj = k.json(&["get", "cm", "demo"]);
    assert_eq!(obj["metadata"]["labels"]["tier"], "fe");
    assert_eq!(obj["metadata"]["annotations"]["note"], "x");
    assert_eq!(
        (obj["data"]["a"].as_str(), obj["data"]["b"].as_str()),
        (Some("9"), Some("2"))
    );
    let rv2: i64 = obj["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .parse()
        .expect("int");
    assert!(rv2 > rv1, "resourceVersion grows with each write");
    assert!(
        k.ok(&["get", "cm", "-l", "tier=fe", "--show-labels"])
            .contains("tier=fe")
    );
    assert!(!k.ok(&["get", "cm", "-l", "tier=be"]).contains("demo"));
    assert!(
        k.ok(&["get", "cm", "-A"]).contains("default"),
        "NAMESPACE column with -A"
    );
    assert!(
        k.ok(&["get", "cm", "demo", "-o", "yaml"])
            .contains("name: demo")
    );

    // Namespaced objects need their namespace; annotate a namespace (legacy policy switch).
    k.ok(&[
        "annotate",
        "--overwrite",
        "ns",
        "default",
        "net.beta.kubernetes.io/network-policy={\"ingress\":{\"isolation\":\"DefaultDeny\"}}",
    ]);
    assert!(k.json(&["get", "ns", "default"])["metadata"]["annotations"]["net.beta.kubernetes.io/network-policy"].is_string());

    let deploy = write(
        dir.path(),
        "d.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: test-kata}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: kata}}\n  template:\n    metadata:\n      labels: {app: kata}\n      annotations: {io.kubernetes.cri-o.TrustedSandbox: \"false\"}\n    spec:\n      containers: [{name: c, image: busybox, ports: [{containerPort: 8080}]}]\n",
    );
    k.ok(&["apply", "--validate=false", "-f", &deploy]);
    assert!(
        k.ok(&["apply", "--validate=false", "-f", &deploy])
            .contains("unchanged"),
        "re-apply is a no-op"
    );
    // A modified apply is a strategic merge patch: one container's image, one env var added.
    let modified = std::fs::read_to_string(&deploy).expect("read").replace(
        "containers: [{name: c, image: busybox, ports: [{containerPort: 8080}]}]",
        "containers: [{name: c, image: busybox:2, ports: [{containerPort: 8080}], env: [{name: MODE, value: untrusted}]}]",
    );
    let deploy2 = write(dir.path(), "d2.yaml", &modified);
    assert!(
        k.ok(&["apply", "--validate=false", "-f", &deploy2])
            .contains("configured")
    );
    let d = k.json(&["get", "deploy", "test-kata"]);
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        (c["image"].as_str(), c["env"][0]["value"].as_str()),
        (Some("busybox:2"), Some("untrusted"))
    );
    assert_eq!(
        c["ports"][0]["containerPort"], 8080,
        "unchanged list items survive the merge"
    );
    k.ok(&["patch", "deploy", "test-kata", "--type", "strategic", "-p", "{\"spec\":{\"template\":{\"spec\":{\"containers\":[{\"name\":\"c\",\"image\":\"busybox:3\"}]}}}}"]);
    assert_eq!(
        k.json(&["get", "deploy", "test-kata"])["spec"]["template"]["spec"]["containers"][0]["image"],
        "busybox:3"
    );
    k.ok(&["scale", "deployment", "test-kata", "--replicas=3"]);
    let d = k.json(&["get", "deploy", "test-kata"]);
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(
        d["metadata"]["generation"], 4,
        "each spec change bumps generation (apply, patch, scale)"
    );
    assert!(
        k.ok(&["get", "deploy", "-o", "wide"]).contains("busybox"),
        "wide columns"
    );

    // The seed's manifests in one multi-document apply: RuntimeClass, Service and the two
    // NetworkPolicies (the Deployment above carries the CRI-O annotation).
    let seed = write(
        dir.path(),
        "seed.yaml",
        "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata: {name: kata}\nhandler: kata\n---\n\
apiVersion: v1\nkind: Service\nmetadata: {name: test-kata}\nspec:\n  selector: {app: kata}\n  ports: [{port: 80, targetPort: 8080}]\n---\n\
kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {namespace: default, name: default-deny}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n---\n\
kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {namespace: default, name: allow-http-client}\nspec:\n  podSelector: {matchLabels: {app: kata}}\n  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {run: http-client}}\n",
    );
    let out = k.ok(&["apply", "--validate=false", "-f", &seed]);
    for o in [
        // The server made a `kata` class on its first start; the seed's apply takes it over.
        "runtimeclass.node.k8s.io/kata configured",
        "service/test-kata created",
        "networkpolicy.networking.k8s.io/default-deny created",
        "networkpolicy.networking.k8s.io/allow-http-client created",
    ] {
        assert!(out.contains(o), "{out}");
    }
    let again = k.ok(&["apply", "--validate=false", "-f", &seed]);
    assert_eq!(again.matches("unchanged").count(), 4, "{again}");
    assert!(k.ok(&["get", "netpol"]).contains("allow-http-client"));
    assert!(
        k.ok(&["get", "svc", "test-kata", "-o", "wide"])
            .contains("app=kata")
    );
    assert!(k.ok(&["get", "runtimeclass"]).contains("kata"));
    let desc = k.ok(&["describe", "netpol", "allow-http-client"]);
    assert!(desc.contains("run=http-client"), "{desc}");
    let desc = k.ok(&["describe", "deploy", "test-kata"]);
    assert!(
        desc.contains("busybox") && desc.contains("Replicas:"),
        "{desc}"
    );

    // Generators (protobuf bodies), run and expose.
    k.ok(&["create", "namespace", "gen"]);
    k.ok(&[
        "create",
        "configmap",
        "gen-cm",
        "-n",
        "gen",
        "--from-literal=k=v",
    ]);
    assert_eq!(
        k.json(&["get", "cm", "gen-cm", "-n", "gen"])["data"]["k"],
        "v"
    );
    k.ok(&[
        "run",
        "http-client",
        "-n",
        "gen",
        "--image=busybox",
        "--",
        "sleep",
        "3600",
    ]);
    assert_eq!(
        k.json(&["get", "pod", "http-client", "-n", "gen"])["metadata"]["labels"]["run"],
        "http-client"
    );
    k.ok(&["expose", "pod", "http-client", "-n", "gen", "--port=80"]);
    assert!(k.ok(&["get", "svc", "-n", "gen"]).contains("http-client"));
    // wait --for=delete returns once the object is gone.
    let mut waiter = k
        .cmd()
        .args([
            "wait",
            "--for=delete",
            "cm/gen-cm",
            "-n",
            "gen",
            "--timeout=60s",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("wait");
    std::thread::sleep(Duration::from_millis(500));
    k.ok(&["delete", "cm", "gen-cm", "-n", "gen"]);
    let st = waiter.wait().expect("wait exits");
    assert!(st.success(), "kubectl wait --for=delete");

    // Watch prints later changes.
    let mut w = k
        .cmd()
        .args(["get", "cm", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("watch");
    let mut lines = BufReader::new(w.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("header").expect("line");
    assert!(first.starts_with("NAME"), "{first}");
    k.ok(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/configmaps",
        "-f",
        &write(
            dir.path(),
            "w.json",
            "{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"later\"}}",
        ),
    ]);
    let mut saw = false;
    for l in lines.by_ref().take(5) {
        if l.expect("line").starts_with("later") {
            saw = true;
            break;
        }
    }
    let _ = w.kill();
    let _ = w.wait();
    assert!(saw, "get -w printed the object created later");

    // Bad input: clear errors, nothing changes.
    let before = k.ok(&["get", "cm", "-o", "json"]);
    let raw = |name: &str, body: &str| write(dir.path(), name, body);
    let e = k.fails(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/configmaps",
        "-f",
        &raw(
            "bad1.json",
            "{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"Bad_Name\"}}",
        ),
    ]);
    assert!(e.contains("is invalid") && e.contains("RFC 1123"), "{e}");
    let e = k.fails(&["create", "--raw", "/api/v1/namespaces/default/configmaps", "-f", &raw("bad2.json", "{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"ok\",\"labels\":{\"k\":\"bad value\"}}}")]);
    assert!(e.contains("metadata.labels"), "{e}");
    let e = k.fails(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/configmaps",
        "-f",
        &raw(
            "bad3.json",
            "{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"demo\"}}",
        ),
    ]);
    assert!(e.contains("already exists"), "{e}");
    let e = k.fails(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/configmaps",
        "-f",
        &raw(
            "bad4.json",
            "{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":\"x\"}}",
        ),
    ]);
    assert!(e.contains("does not match the expected kind"), "{e}");
    let e = k.fails(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/configmaps",
        "-f",
        &raw("bad5.json", "{not json"),
    ]);
    assert!(e.contains("not valid JSON"), "{e}");
    let big = format!(
        "{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"big\"}},\"data\":{{\"x\":\"{}\"}}}}",
        "a".repeat(4 << 20)
    );
    let e = k.fails(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/configmaps",
        "-f",
        &raw("bad6.json", &big),
    ]);
    assert!(
        e.contains("larger than the limit") || e.contains("too large"),
        "{e}"
    );
    let e = k.fails(&[
        "create",
        "--raw",
        "/api/v1/namespaces/nope/configmaps",
        "-f",
        &raw(
            "bad7.json",
            "{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"x\"}}",
        ),
    ]);
    assert!(e.contains("namespaces \"nope\" not found"), "{e}");
    let stale = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: demo, namespace: default, resourceVersion: \"{rv1}\"}}\ndata: {{a: stale}}\n"
    );
    let e = k.fails(&[
        "replace",
        "--validate=false",
        "-f",
        &write(dir.path(), "stale.yaml", &stale),
    ]);
    assert!(e.contains("the object has been modified"), "{e}");
    let e = k.fails(&["get", "ns", "--token", "wrong-token"]);
    assert!(
        e.contains("Unauthorized")
            || e.contains("unauthorized")
            || e.contains("provide credentials"),
        "{e}"
    );
    let after = k.ok(&["get", "cm", "-o", "json"]);
    let strip = |s: &str| -> serde_json::Value {
        let mut v: serde_json::Value = serde_json::from_str(s).expect("json");
        v["metadata"] = serde_json::Value::Null;
        v
    };
    assert_eq!(strip(&before), strip(&after), "bad input changed nothing");

    // delete, then it is gone.
    assert!(k.ok(&["delete", "cm", "later"]).contains("deleted"));
    assert!(k.fails(&["get", "cm", "later"]).contains("NotFound"));
}

#[test]
fn kubectl_1_32_against_moat_server() {
    scenario("32", &[]);
}

#[test]
fn kubectl_1_27_against_moat_server() {
    scenario("27", &[]);
}

#[test]
fn kubectl_1_33_against_moat_server() {
    scenario("33", &[]);
}

/// The same scenario with etcd (Debian's etcd-server, on loopback) as the datastore.
#[test]
fn kubectl_1_32_against_moat_server_on_etcd() {
    let etcd_dir = tempfile::tempdir().expect("tmp");
    let etcd = LocalEtcd::start(etcd_dir.path()).expect("start etcd");
    scenario("32", &["--datastore-endpoint", &etcd.url]);
}

#[test]
fn kata_runtime_class_is_made_once_and_then_belongs_to_the_user() {
    kata_runtime_class_once(&[]);
}

#[test]
fn kata_runtime_class_is_made_once_on_etcd() {
    let etcd_dir = tempfile::tempdir().expect("tmp");
    let etcd = LocalEtcd::start(etcd_dir.path()).expect("start etcd");
    kata_runtime_class_once(&["--datastore-endpoint", &etcd.url]);
}

/// Issue 16: a fresh cluster has Kata's RuntimeClass; after its first start the class is the
/// user's: an edit and a deletion both survive restarts.
fn kata_runtime_class_once(server_args: &[&str]) {
    let dir = tempfile::tempdir().expect("tmp");
    let mut s = Server::start(dir.path(), server_args);
    let k = s.kubectl("32");
    let rc = k.json(&["get", "runtimeclass", "kata"]);
    assert_eq!(rc["handler"], "kata", "{rc}");
    assert_eq!(rc["overhead"]["podFixed"]["memory"], "160Mi", "{rc}");
    assert_eq!(rc["overhead"]["podFixed"]["cpu"], "250m", "{rc}");

    // kubectl edit, with an editor that changes the memory overhead.
    let edit = k
        .cmd()
        .env("KUBE_EDITOR", "sed -i s/160Mi/300Mi/")
        .args(["edit", "runtimeclass", "kata"])
        .output()
        .expect("kubectl edit");
    assert!(
        edit.status.success(),
        "{}",
        String::from_utf8_lossy(&edit.stderr)
    );
    s.restart();
    let k = s.kubectl("32");
    let rc = k.json(&["get", "runtimeclass", "kata"]);
    assert_eq!(
        rc["overhead"]["podFixed"]["memory"], "300Mi",
        "the edit survives a restart: {rc}"
    );

    k.ok(&["delete", "runtimeclass", "kata"]);
    s.restart();
    let k = s.kubectl("32");
    let err = k.fails(&["get", "runtimeclass", "kata"]);
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );
    s.restart();
    let k = s.kubectl("32");
    assert!(
        !k.ok(&["get", "runtimeclass", "-o", "name"])
            .contains("kata"),
        "a deleted class stays deleted"
    );
}

#[test]
fn objects_survive_kill_9_with_monotonic_resource_versions() {
    survive_kill_9(&[]);
}

#[test]
fn objects_survive_kill_9_on_etcd() {
    let etcd_dir = tempfile::tempdir().expect("tmp");
    let etcd = LocalEtcd::start(etcd_dir.path()).expect("start etcd");
    survive_kill_9(&["--datastore-endpoint", &etcd.url]);
}

fn survive_kill_9(server_args: &[&str]) {
    let dir = tempfile::tempdir().expect("tmp");
    let mut s = Server::start(dir.path(), server_args);
    let k = s.kubectl("32");
    let cm = write(
        dir.path(),
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: keep}\ndata: {a: \"1\"}\n",
    );
    k.ok(&["apply", "--validate=false", "-f", &cm]);
    let before = k.json(&["get", "cm", "keep"]);
    s.restart();
    let k = s.kubectl("32");
    let after = k.json(&["get", "cm", "keep"]);
    assert_eq!(
        after, before,
        "same object, same resourceVersion after kill -9 and restart"
    );
    k.ok(&["label", "cm", "keep", "x=y"]);
    let rv = |v: &serde_json::Value| {
        v["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse::<i64>().ok())
            .expect("rv")
    };
    assert!(
        rv(&k.json(&["get", "cm", "keep"])) > rv(&before),
        "new writes continue above old revisions"
    );
}

//! API semantics kubectl depends on, driven by the real kubectl: protobuf bodies of the
//! `create` generators, server-side apply, field validation, delete options, aggregated
//! discovery, and 410 recovery after compaction.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::time::Duration;

use common::{Server, eventually};

const DEPLOY: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: web, labels: {app: web, tier: front}}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: c, image: "busybox:1"}]
"#;

#[test]
fn protobuf_bodies_of_create_generators() {
    for minor in ["27", "33"] {
        let dir = tempfile::tempdir().expect("dir");
        let s = Server::start(dir.path(), &["--disable-controllers"]);
        let k = s.kubectl(minor);
        k.ok(&["create", "namespace", "pb"]);
        k.ok(&["create", "configmap", "c", "-n", "pb", "--from-literal=a=b"]);
        k.ok(&[
            "create",
            "secret",
            "generic",
            "s",
            "-n",
            "pb",
            "--from-literal=p=q",
        ]);
        k.ok(&["create", "serviceaccount", "sa", "-n", "pb"]);
        k.ok(&[
            "create",
            "deployment",
            "web",
            "-n",
            "pb",
            "--image=busybox:1",
            "--replicas=3",
            "--port=8080",
            "--",
            "httpd",
            "-f",
            "-p",
            "8080",
        ]);
        k.ok(&[
            "create",
            "service",
            "clusterip",
            "web",
            "-n",
            "pb",
            "--tcp=80:8080",
        ]);
        k.ok(&[
            "create",
            "service",
            "nodeport",
            "np",
            "-n",
            "pb",
            "--tcp=80:8080",
        ]);
        k.ok(&[
            "expose",
            "deployment",
            "web",
            "-n",
            "pb",
            "--name=web2",
            "--port=81",
            "--target-port=8080",
        ]);

        assert_eq!(k.json(&["get", "cm", "c", "-n", "pb"])["data"]["a"], "b");
        // Secret data is base64 on the wire both ways.
        assert_eq!(
            k.json(&["get", "secret", "s", "-n", "pb"])["data"]["p"],
            "cQ=="
        );
        assert_eq!(
            k.json(&["get", "secret", "s", "-n", "pb"])["type"],
            "Opaque"
        );
        let d = k.json(&["get", "deploy", "web", "-n", "pb"]);
        assert_eq!(d["spec"]["replicas"], 3, "minor {minor}");
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], "busybox:1");
        assert_eq!(
            c["command"],
            serde_json::json!(["httpd", "-f", "-p", "8080"])
        );
        assert_eq!(c["ports"][0]["containerPort"], 8080);
        // Server defaults apply to protobuf-created objects like to JSON ones.
        assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
        let svc = k.json(&["get", "svc", "web", "-n", "pb"]);
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
        assert!(
            svc["spec"]["clusterIP"]
                .as_str()
                .is_some_and(|ip| ip.starts_with("10.43."))
        );
        let np = k.json(&["get", "svc", "np", "-n", "pb"]);
        let port = np["spec"]["ports"][0]["nodePort"]
            .as_u64()
            .expect("nodePort");
        assert!((30000..=32767).contains(&port));
        assert_eq!(
            k.json(&["get", "svc", "web2", "-n", "pb"])["spec"]["selector"]["app"],
            "web"
        );
        assert!(k.ok(&["get", "sa", "-n", "pb"]).contains("sa"));
    }
}

#[test]
fn server_side_apply_owns_fields_and_reports_conflicts() {
    let dir = tempfile::tempdir().expect("dir");
    let s = Server::start(dir.path(), &["--disable-controllers"]);
    for minor in ["27", "33"] {
        let k = s.kubectl(minor);
        let ns = format!("ssa{minor}");
        k.ok(&["create", "ns", &ns]);
        let apply = |extra: &[&str], cfg: &str| {
            let mut a = vec![
                "apply",
                "--server-side",
                "--validate=false",
                "-n",
                &ns,
                "-f",
                "-",
            ];
            a.extend_from_slice(extra);
            k.run_stdin(&a, cfg)
        };
        let o = apply(&[], DEPLOY);
        assert!(
            o.ok && o.stdout.contains("serverside-applied"),
            "{}",
            o.stderr
        );
        let d = k.json(&["get", "deploy", "web", "-n", &ns, "--show-managed-fields"]);
        let mf = d["metadata"]["managedFields"]
            .as_array()
            .expect("managedFields");
        assert!(
            mf.iter().any(|e| e["manager"] == "kubectl"
                && e["operation"] == "Apply"
                && e["fieldsV1"]["f:spec"]["f:replicas"].is_object()),
            "{mf:?}"
        );
        // Another manager takes spec.replicas; re-applying 2 conflicts and changes nothing.
        k.ok(&["scale", "deploy", "web", "-n", &ns, "--replicas=4"]);
        let o = apply(&[], DEPLOY);
        assert!(!o.ok, "conflicting apply must fail");
        assert!(
            o.stderr.contains("conflict with \"kubectl-scale\""),
            "{}",
            o.stderr
        );
        assert!(o.stderr.contains(".spec.replicas"), "{}", o.stderr);
        assert_eq!(
            k.json(&["get", "deploy", "web", "-n", &ns])["spec"]["replicas"],
            4
        );
        // Forcing takes the field over.
        assert!(apply(&["--force-conflicts"], DEPLOY).ok);
        assert_eq!(
            k.json(&["get", "deploy", "web", "-n", &ns])["spec"]["replicas"],
            2
        );
        // A field dropped from the applied configuration is removed; others' stay.
        k.ok(&[
            "annotate",
            "deploy",
            "web",
            "-n",
            &ns,
            "example.org/owner=team",
        ]);
        let o = apply(&[], &DEPLOY.replace(", tier: front", ""));
        assert!(o.ok, "{}", o.stderr);
        let d = k.json(&["get", "deploy", "web", "-n", &ns]);
        assert!(d["metadata"]["labels"].get("tier").is_none(), "{d}");
        assert_eq!(d["metadata"]["annotations"]["example.org/owner"], "team");
        // Apply creates what does not exist yet.
        let o = apply(&[], &DEPLOY.replace("name: web,", "name: web-b,"));
        assert!(o.ok, "{}", o.stderr);
        assert!(k.ok(&["get", "deploy", "-n", &ns]).contains("web-b"));
    }
}

#[test]
fn field_validation_strict_warn_ignore() {
    let dir = tempfile::tempdir().expect("dir");
    let s = Server::start(dir.path(), &["--disable-controllers"]);
    let k = s.kubectl("33");
    let cm = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"v"},"data":{"a":"1"},"dataa":{"x":"y"}}"#;
    let path = "/api/v1/namespaces/default/configmaps";
    let o = k.run_stdin(
        &[
            "create",
            "--raw",
            &format!("{path}?fieldValidation=Strict"),
            "-f",
            "-",
        ],
        cm,
    );
    assert!(!o.ok);
    assert!(
        o.stderr
            .contains("strict decoding error: unknown field \\\"dataa\\\"")
            || o.stderr.contains("unknown field \"dataa\""),
        "{}",
        o.stderr
    );
    assert!(
        k.run(&["get", "cm", "v"]).stderr.contains("NotFound"),
        "a rejected object is not stored"
    );
    // Warn (the default): created, the unknown field dropped, a warning printed by kubectl.
    let o = k.run_stdin(&["create", "--raw", path, "-f", "-"], cm);
    assert!(o.ok, "{}", o.stderr);
    assert!(
        o.stderr.contains("unknown field \"dataa\""),
        "kubectl shows the warning: {}",
        o.stderr
    );
    let got = k.json(&["get", "cm", "v"]);
    assert_eq!(got["data"]["a"], "1");
    assert!(
        got.get("dataa").is_none(),
        "unknown fields are never stored"
    );
    // Wrong JSON types are a 400, also under Ignore.
    let bad = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"t"},"spec":{"replicas":"two"}}"#;
    let o = k.run_stdin(
        &[
            "create",
            "--raw",
            "/apis/apps/v1/namespaces/default/deployments?fieldValidation=Ignore",
            "-f",
            "-",
        ],
        bad,
    );
    assert!(
        !o.ok && o.stderr.contains("cannot be handled as a Deployment"),
        "{}",
        o.stderr
    );
    // Missing required fields are a 422 naming them.
    let o = k.run_stdin(
        &["create", "--validate=false", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c}]\n",
    );
    assert!(
        !o.ok
            && o.stderr
                .contains("spec.containers[0].image: Required value"),
        "{}",
        o.stderr
    );
}

#[test]
fn delete_options_follow_kubernetes() {
    let dir = tempfile::tempdir().expect("dir");
    // No controllers: what the API server itself does is visible.
    let s = Server::start(dir.path(), &["--disable-controllers"]);
    let k = s.kubectl("33");
    k.ok_stdin(&["apply", "--validate=false", "-f", "-"], DEPLOY);
    k.ok(&[
        "delete",
        "deploy",
        "web",
        "--cascade=foreground",
        "--wait=false",
    ]);
    let d = k.json(&["get", "deploy", "web"]);
    assert!(d["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(
        d["metadata"]["finalizers"],
        serde_json::json!(["foregroundDeletion"])
    );
    // Switching to orphan swaps the garbage collector's finalizer.
    k.ok(&[
        "delete",
        "deploy",
        "web",
        "--cascade=orphan",
        "--wait=false",
    ]);
    assert_eq!(
        k.json(&["get", "deploy", "web"])["metadata"]["finalizers"],
        serde_json::json!(["orphan"])
    );
    // Removing the last finalizer completes the delete.
    k.ok(&[
        "patch",
        "deploy",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    assert!(k.run(&["get", "deploy", "web"]).stderr.contains("NotFound"));
    // New finalizers cannot be added to an object being deleted.
    k.ok(&["create", "cm", "f"]);
    k.ok(&[
        "patch",
        "cm",
        "f",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.org/a"]}}"#,
    ]);
    k.ok(&["delete", "cm", "f", "--wait=false"]);
    let e = k.fails(&[
        "patch",
        "cm",
        "f",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.org/a","example.org/b"]}}"#,
    ]);
    assert!(e.contains("no new finalizers can be added"), "{e}");

    // A pod bound to a node is deleted gracefully: Terminating until the node agent (here
    // the test) confirms with a zero grace period.
    k.ok_stdin(
        &["create", "--validate=false", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  nodeName: n1\n  terminationGracePeriodSeconds: 20\n  containers: [{name: c, image: busybox}]\n",
    );
    k.ok(&["delete", "pod", "p", "--wait=false"]);
    let p = k.json(&["get", "pod", "p"]);
    assert_eq!(p["metadata"]["deletionGracePeriodSeconds"], 20);
    assert!(k.ok(&["get", "pod", "p"]).contains("Terminating"));
    k.ok(&["delete", "pod", "p", "--grace-period=0", "--force"]);
    assert!(k.run(&["get", "pod", "p"]).stderr.contains("NotFound"));

    // A namespace stays Terminating until its finalizers are cleared through /finalize.
    k.ok(&["create", "ns", "gone"]);
    k.ok(&["delete", "ns", "gone", "--wait=false"]);
    assert_eq!(
        k.json(&["get", "ns", "gone"])["status"]["phase"],
        "Terminating"
    );
    let e = k.fails(&["create", "cm", "x", "-n", "gone"]);
    assert!(e.contains("being terminated"), "{e}");
    let mut ns = k.json(&["get", "ns", "gone"]);
    ns["spec"]["finalizers"] = serde_json::json!([]);
    k.ok_stdin(
        &[
            "replace",
            "--raw",
            "/api/v1/namespaces/gone/finalize",
            "-f",
            "-",
        ],
        &ns.to_string(),
    );
    assert!(k.run(&["get", "ns", "gone"]).stderr.contains("NotFound"));
}

#[test]
fn discovery_is_aggregated_for_every_kubectl() {
    let dir = tempfile::tempdir().expect("dir");
    let s = Server::start(dir.path(), &["--disable-controllers"]);
    for minor in ["27", "32", "33"] {
        let k = s.kubectl(minor);
        let o = k.run(&["get", "deploy,po,netpol,runtimeclass", "-A", "-v=6"]);
        assert!(o.ok, "{}", o.stderr);
        // Aggregated discovery answers /api and /apis; no per-group-version requests.
        assert!(o.stderr.contains("/apis?timeout"), "{minor}: {}", o.stderr);
        assert!(
            !o.stderr.contains("/apis/apps/v1?timeout"),
            "{minor} walked the groups: {}",
            o.stderr
        );
    }
}

#[test]
fn watch_after_compaction_gets_410_and_kubectl_recovers() {
    let dir = tempfile::tempdir().expect("dir");
    // Short compaction and watch lifetimes stand in for hours of a busy cluster.
    let s = Server::start(
        dir.path(),
        &[
            "--disable-controllers",
            "--compaction-interval",
            "1s",
            "--max-watch-seconds",
            "2",
        ],
    );
    let k = s.kubectl("33");
    k.ok(&["create", "cm", "a"]);
    let rv = k.json(&["get", "cm", "a"])["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    let waiter = k
        .cmd()
        .args(["wait", "--for=delete", "cm/a", "--timeout=90s", "-v=6"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl wait");
    // Writes elsewhere move the revision on; compaction drops the history behind them.
    for i in 0..30 {
        k.ok(&["create", "cm", &format!("x{i}")]);
        std::thread::sleep(Duration::from_millis(150));
    }
    let raw = k.ok(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}"),
    ]);
    assert!(
        raw.contains("\"type\":\"ERROR\"")
            && raw.contains("\"code\":410")
            && raw.contains("Expired"),
        "{raw}"
    );
    k.ok(&["delete", "cm", "a"]);
    let out = waiter.wait_with_output().expect("wait output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("condition met"),
        "{stdout}\n{stderr}"
    );
    // The reflector's watch from the old revision was refused, so it listed again and
    // watched from the newer revision of that list.
    let requests: Vec<&str> = stderr.lines().filter(|l| l.contains("url=")).collect();
    let first_watch = requests
        .iter()
        .position(|l| l.contains("watch=true"))
        .expect("a watch");
    assert!(
        requests[first_watch..]
            .iter()
            .any(|l| !l.contains("watch=true") && l.contains("configmaps?")),
        "no re-list after the expired watch: {requests:#?}"
    );
    assert!(
        requests
            .iter()
            .any(|l| l.contains("watch=true") && !l.contains(&format!("resourceVersion={rv}&"))),
        "never watched from a newer revision: {requests:#?}"
    );
    eventually("no error in the server log", Duration::from_secs(1), || {
        !std::fs::read_to_string(s.dir.join("server.log"))
            .unwrap_or_default()
            .contains("panicked")
    });
}

//! OpenAPI as kubectl uses it: `explain` from real schemas, validation delegated to the
//! server (`fieldValidation=Strict`), and client-side apply computing its strategic merge
//! patches from the served schemas' merge keys — for kubectl 1.27 (OpenAPI v2 protobuf),
//! 1.32 and 1.33 (OpenAPI v3).

mod common;

use common::Server;

const TWO_CONTAINERS: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: two}
spec:
  replicas: 1
  selector: {matchLabels: {app: two}}
  template:
    metadata: {labels: {app: two}}
    spec:
      containers:
      - {name: web, image: "busybox:1", ports: [{containerPort: 8080}, {containerPort: 9090}]}
      - {name: side, image: "busybox:1", env: [{name: A, value: "1"}]}
"#;

#[test]
fn kubectl_explain_validate_and_apply_with_served_openapi() {
    let dir = tempfile::tempdir().expect("dir");
    let s = Server::start(dir.path(), &["--disable-controllers"]);
    for minor in ["27", "32", "33"] {
        let k = s.kubectl(minor);
        let ns = format!("o{minor}");
        k.ok(&["create", "ns", &ns]);
        let e = k.ok(&["explain", "networkpolicy.spec"]);
        for want in ["NetworkPolicySpec", "podSelector", "policyTypes", "ingress"] {
            assert!(e.contains(want), "{minor}: explain lacks {want}: {e}");
        }
        let e = k.ok(&["explain", "pods.spec.containers.ports"]);
        assert!(e.contains("containerPort"), "{minor}: {e}");
        let e = k.ok(&["explain", "deployment.spec.strategy"]);
        assert!(e.contains("rollingUpdate"), "{minor}: {e}");

        // apply with validation on (the default): no --validate=false anywhere.
        let o = k.run_stdin(&["apply", "-n", &ns, "-f", "-"], TWO_CONTAINERS);
        assert!(
            o.ok && o.stdout.contains("created"),
            "{minor}: {}",
            o.stderr
        );
        let o = k.run_stdin(&["apply", "-n", &ns, "-f", "-"], TWO_CONTAINERS);
        assert!(
            o.stdout.contains("unchanged"),
            "{minor}: {}{}",
            o.stdout,
            o.stderr
        );
        // Someone else adds an env var to the web container (not in the applied config).
        k.ok(&[
            "patch", "deploy", "two", "-n", &ns, "--type=strategic", "-p",
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","env":[{"name":"OOB","value":"kept"}]}]}}}}"#,
        ]);
        // Change one container's image and drop one port: the patch kubectl computes from
        // the served merge keys touches just that; both containers and the out-of-band env
        // var stay (an atomic list replacement would have dropped it).
        let changed = TWO_CONTAINERS
            .replace(
                "{name: web, image: \"busybox:1\", ports: [{containerPort: 8080}, {containerPort: 9090}]}",
                "{name: web, image: \"busybox:2\", ports: [{containerPort: 8080}]}",
            );
        let o = k.run_stdin(&["apply", "-n", &ns, "-f", "-"], &changed);
        assert!(
            o.ok && o.stdout.contains("configured"),
            "{minor}: {}",
            o.stderr
        );
        let d = k.json(&["get", "deploy", "two", "-n", &ns]);
        let cs = &d["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs.as_array().map(Vec::len), Some(2), "{minor}: {cs}");
        assert_eq!(cs[0]["image"], "busybox:2");
        assert_eq!(
            cs[0]["ports"].as_array().map(Vec::len),
            Some(1),
            "{minor}: {cs}"
        );
        assert_eq!(cs[1]["env"][0]["value"], "1");
        assert_eq!(cs[0]["env"][0]["value"], "kept", "{minor}: {cs}");

        // An unknown field is refused (the server validates strictly for kubectl).
        let bad = TWO_CONTAINERS.replace("replicas: 1", "replicas: 1\n  replicaz: 3");
        let o = k.run_stdin(&["apply", "-n", &ns, "-f", "-"], &bad);
        assert!(!o.ok, "{minor}: unknown field accepted");
        assert!(
            o.stderr.contains("unknown field \"spec.replicaz\""),
            "{minor}: {}",
            o.stderr
        );
        assert!(
            k.json(&["get", "deploy", "two", "-n", &ns])["spec"]
                .get("replicaz")
                .is_none(),
            "nothing stored"
        );
    }
}

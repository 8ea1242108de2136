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

/// Seed-style objects: a Deployment with the untrusted-sandbox annotation, its Service and
/// a NetworkPolicy, applied together.
const SEED: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: web, labels: {app: web}}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
      annotations: {io.kubernetes.cri-o.TrustedSandbox: "false"}
    spec:
      runtimeClassName: kata
      containers:
      - name: web
        image: busybox:1
        ports: [{containerPort: 8080, name: http}]
        volumeMounts: [{name: data, mountPath: /data}]
      volumes: [{name: data, emptyDir: {}}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-http-client}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
    ports: [{protocol: TCP, port: 8080}]
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
        let e = k.ok(&["explain", "pods.spec.containers"]);
        for want in ["image", "ports", "volumeMounts", "livenessProbe"] {
            assert!(e.contains(want), "{minor}: explain lacks {want}: {e}");
        }
        let e = k.ok(&["explain", "pods.spec.containers.ports"]);
        assert!(e.contains("containerPort"), "{minor}: {e}");
        let e = k.ok(&["explain", "deployment.spec.strategy"]);
        assert!(e.contains("rollingUpdate"), "{minor}: {e}");
        if minor == "27" {
            // The OpenAPI v2 protobuf document, read through kube-openapi's proto models.
            let e = k.ok(&[
                "explain",
                "--output=plaintext-openapiv2",
                "networkpolicy.spec",
            ]);
            for want in ["NetworkPolicySpec", "podSelector", "policyTypes"] {
                assert!(e.contains(want), "v2 explain lacks {want}: {e}");
            }
            let e = k.ok(&[
                "explain",
                "--output=plaintext-openapiv2",
                "pods.spec.containers",
            ]);
            assert!(e.contains("volumeMounts"), "v2 explain: {e}");
        }

        // The seed objects, validation on; the re-apply changes nothing.
        let o = k.run_stdin(&["apply", "-n", &ns, "-f", "-"], SEED);
        assert!(o.ok, "{minor}: {}", o.stderr);
        for want in [
            "deployment.apps/web created",
            "service/web created",
            "networkpolicy.networking.k8s.io/allow-http-client created",
        ] {
            assert!(o.stdout.contains(want), "{minor}: {}", o.stdout);
        }
        let o = k.run_stdin(&["apply", "-n", &ns, "-f", "-"], SEED);
        assert!(o.ok, "{minor}: {}", o.stderr);
        assert_eq!(
            o.stdout.matches("unchanged").count(),
            3,
            "{minor}: {}",
            o.stdout
        );
        // Switching the rollout strategy works only if kubectl sends `$retainKeys` (from
        // the served schema), so that the defaulted rollingUpdate goes with the old type.
        let recreate = SEED.replace(
            "  replicas: 2\n",
            "  replicas: 2\n  strategy: {type: Recreate}\n",
        );
        let o = k.run_stdin(&["apply", "-n", &ns, "-f", "-"], &recreate);
        assert!(
            o.ok && o.stdout.contains("deployment.apps/web configured"),
            "{minor}: {}{}",
            o.stdout,
            o.stderr
        );
        let d = k.json(&["get", "deploy", "web", "-n", &ns]);
        assert_eq!(
            d["spec"]["strategy"],
            serde_json::json!({"type": "Recreate"}),
            "{minor}"
        );
        assert_eq!(
            d["spec"]["template"]["metadata"]["annotations"]["io.kubernetes.cri-o.TrustedSandbox"],
            "false"
        );

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

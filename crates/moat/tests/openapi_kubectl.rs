//! OpenAPI as kubectl uses it: `explain` from real schemas, validation delegated to the
//! server (`fieldValidation=Strict`), and client-side apply computing its strategic merge
//! patches from the served schemas' merge keys — for every kubectl from 1.27 to 1.33. 1.27 and
//! 1.28 compute those patches from the OpenAPI v2 protobuf, 1.29+ from the v3 documents
//! (removing the patch extensions from either one makes the re-apply below report
//! `configured` for that range), so both documents are exercised.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

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
    for minor in ["27", "28", "29", "30", "31", "32", "33"] {
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
        if minor == "27" || minor == "28" {
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

/// `curl` of `path` on the server with `headers` (and the admin token if `auth`): (status,
/// response head, body).
fn curl(s: &Server, path: &str, headers: &[&str], auth: bool) -> (u16, String, Vec<u8>) {
    let cfg = std::fs::read_to_string(s.dir.join("kubeconfig.yaml")).expect("kubeconfig");
    let field = |k: &str| {
        cfg.lines()
            .find_map(|l| l.trim().strip_prefix(k))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {k} in kubeconfig"))
    };
    let mut c = std::process::Command::new("curl");
    c.args(["-sk", "-D", "/dev/stderr", "-o", "-"]);
    if auth {
        c.args(["-H", &format!("Authorization: Bearer {}", field("token:"))]);
    }
    for h in headers {
        c.args(["-H", h]);
    }
    let o = c
        .arg(format!("{}{path}", field("server:")))
        .output()
        .expect("run curl");
    let head = String::from_utf8_lossy(&o.stderr).to_string();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head}"));
    (code, head, o.stdout)
}

/// The value of response header `name` (case-insensitive) in a response head.
fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

#[test]
fn openapi_caching_headers_and_content_negotiation() {
    let dir = tempfile::tempdir().expect("dir");
    let s = Server::start(dir.path(), &["--disable-controllers"]);
    let proto = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

    // kubectl 1.27 asks with the `@` form and must get the `.` form back.
    let (code, head, body) = curl(
        &s,
        "/openapi/v2",
        &["Accept: application/com.github.proto-openapi.spec.v2@v1.0+protobuf"],
        true,
    );
    assert_eq!(code, 200, "{head}");
    assert_eq!(header(&head, "content-type").as_deref(), Some(proto));
    assert_eq!(header(&head, "vary").as_deref(), Some("Accept"));
    assert!(!body.starts_with(b"{"), "protobuf expected");
    let pb_etag = header(&head, "etag").expect("etag");
    let (code, _, body) = curl(
        &s,
        "/openapi/v2",
        &[
            &format!("If-None-Match: {pb_etag}"),
            "Accept: application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
        ],
        true,
    );
    assert_eq!(code, 304);
    assert!(body.is_empty());

    let (code, head, body) = curl(&s, "/openapi/v2", &["Accept: application/json"], true);
    assert_eq!(code, 200);
    assert_eq!(
        header(&head, "content-type").as_deref(),
        Some("application/json")
    );
    let v2: serde_json::Value = serde_json::from_slice(&body).expect("v2 json");
    assert_eq!(v2["swagger"], "2.0");
    // A JSON representation's validator must not validate a protobuf request.
    let json_etag = header(&head, "etag").expect("etag");
    assert_ne!(json_etag, pb_etag);
    let (code, _, body) = curl(
        &s,
        "/openapi/v2",
        &[
            &format!("If-None-Match: {json_etag}"),
            "Accept: application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
        ],
        true,
    );
    assert_eq!(code, 200);
    assert!(!body.is_empty());

    let (code, _, body) = curl(&s, "/openapi/v3", &[], true);
    assert_eq!(code, 200);
    let root: serde_json::Value = serde_json::from_slice(&body).expect("root json");
    let url = root["paths"]["apis/networking.k8s.io/v1"]["serverRelativeURL"]
        .as_str()
        .expect("networking in the v3 root")
        .to_string();
    let (code, head, body) = curl(&s, &url, &[], true);
    assert_eq!(code, 200);
    assert_eq!(
        header(&head, "cache-control").as_deref(),
        Some("public, immutable")
    );
    let doc: serde_json::Value = serde_json::from_slice(&body).expect("v3 json");
    assert!(doc["components"]["schemas"]["io.k8s.api.networking.v1.NetworkPolicy"].is_object());

    let (code, _, _) = curl(&s, "/openapi/v3/apis/batch/v1", &[], true);
    assert_eq!(code, 200, "batch/v1 is served");
    let (code, _, _) = curl(&s, "/openapi/v3/apis/storage.k8s.io/v1", &[], true);
    assert_eq!(code, 404, "a group moat does not serve");
    let (code, _, _) = curl(&s, "/openapi/v2", &[], false);
    assert_eq!(code, 401);
}

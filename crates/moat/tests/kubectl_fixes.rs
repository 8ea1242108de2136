//! What a new user met with kubectl 1.33 and a client library (issue 19), fixed and held by
//! the real kubectl 1.27 and 1.33: Secret `stringData` written into `data` on every write
//! path, `/version/`, the `kube-root-ca.crt` ConfigMap in every namespace, and
//! `kubectl debug` answered with a Status instead of crashing kubectl.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::time::Duration;

use base64::Engine;
use common::{Server, eventually};

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

const SECRET: &str = r#"apiVersion: v1
kind: Secret
metadata: {name: s}
data: {both: ZnJvbS1kYXRh, plain: cGxhaW4=}
stringData: {both: from-string-data, user: admin}
"#;

#[test]
fn secret_string_data_is_merged_into_data_and_never_stored() {
    for minor in ["27", "33"] {
        let dir = tempfile::tempdir().expect("dir");
        let s = Server::start(dir.path(), &["--disable-controllers"]);
        let k = s.kubectl(minor);
        // Client-side apply (create, then a strategic-merge patch).
        k.ok_stdin(&["apply", "-f", "-"], SECRET);
        let v = k.json(&["get", "secret", "s"]);
        assert_eq!(v.get("stringData"), None, "{minor}: stringData stored: {v}");
        assert_eq!(v["data"]["user"], b64("admin"), "{minor}: {v}");
        assert_eq!(
            v["data"]["both"],
            b64("from-string-data"),
            "stringData wins"
        );
        assert_eq!(v["data"]["plain"], b64("plain"));
        assert_eq!(v["type"], "Opaque");
        let changed = SECRET.replace("user: admin", "user: root");
        k.ok_stdin(&["apply", "-f", "-"], &changed);
        let v = k.json(&["get", "secret", "s"]);
        assert_eq!(v["data"]["user"], b64("root"), "{minor}: apply update: {v}");
        assert_eq!(v.get("stringData"), None);
        // Merge patch and replace.
        k.ok(&[
            "patch",
            "secret",
            "s",
            "--type",
            "merge",
            "-p",
            r#"{"stringData":{"patched":"yes"}}"#,
        ]);
        let mut v = k.json(&["get", "secret", "s"]);
        assert_eq!(v["data"]["patched"], b64("yes"), "{minor}: patch: {v}");
        assert_eq!(v.get("stringData"), None);
        v["stringData"] = serde_json::json!({"replaced": "too"});
        k.ok_stdin(&["replace", "-f", "-"], &v.to_string());
        let v = k.json(&["get", "secret", "s"]);
        assert_eq!(v["data"]["replaced"], b64("too"), "{minor}: replace: {v}");
        assert_eq!(v.get("stringData"), None);
        // Server-side apply, creating and then updating.
        let ssa = "apiVersion: v1\nkind: Secret\nmetadata: {name: ssa}\nstringData: {k: first}\n";
        k.ok_stdin(&["apply", "--server-side", "-f", "-"], ssa);
        k.ok_stdin(
            &["apply", "--server-side", "-f", "-"],
            &ssa.replace("first", "second"),
        );
        let v = k.json(&["get", "secret", "ssa"]);
        assert_eq!(
            v["data"]["k"],
            b64("second"),
            "{minor}: server-side apply: {v}"
        );
        assert_eq!(v.get("stringData"), None);
        // A bad key is refused whichever field it came in, and nothing is stored.
        let bad = "apiVersion: v1\nkind: Secret\nmetadata: {name: bad}\nstringData: {\"a b\": x}\n";
        let err = k.run_stdin(&["apply", "-f", "-"], bad);
        assert!(
            !err.ok && err.stderr.contains("data[a b]"),
            "{}",
            err.stderr
        );
        assert!(!k.run(&["get", "secret", "bad"]).ok);
    }
}

#[test]
fn version_is_served_with_a_trailing_slash() {
    let dir = tempfile::tempdir().expect("dir");
    let s = Server::start(dir.path(), &["--disable-controllers"]);
    let k = s.kubectl("33");
    for path in ["/version", "/version/"] {
        let v: serde_json::Value =
            serde_json::from_str(&k.ok(&["get", "--raw", path])).expect("json");
        assert_eq!(v["major"], "1", "{path}: {v}");
        assert!(
            v["gitVersion"]
                .as_str()
                .is_some_and(|g| g.starts_with("v1."))
        );
    }
}

#[test]
fn every_namespace_gets_kube_root_ca_and_it_is_kept_current() {
    let dir = tempfile::tempdir().expect("dir");
    let s = Server::start(dir.path(), &[]);
    let k = s.kubectl("33");
    let ca = std::fs::read_to_string(dir.path().join("ca.crt")).expect("server CA");
    assert!(ca.contains("BEGIN CERTIFICATE"));
    let published = |ns: &str| {
        let o = k.run(&[
            "get",
            "configmap",
            "kube-root-ca.crt",
            "-n",
            ns,
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ]);
        o.ok && o.stdout == ca
    };
    for ns in ["default", "kube-system", "kube-public"] {
        eventually(
            &format!("kube-root-ca.crt in {ns}"),
            Duration::from_secs(20),
            || published(ns),
        );
    }
    k.ok(&["create", "namespace", "fresh"]);
    eventually(
        "kube-root-ca.crt in a new namespace",
        Duration::from_secs(20),
        || published("fresh"),
    );
    let v = k.json(&["get", "configmap", "kube-root-ca.crt", "-n", "fresh"]);
    assert!(
        v["metadata"]["annotations"]["kubernetes.io/description"]
            .as_str()
            .is_some_and(|d| d.contains("kube-apiserver")),
        "{v}"
    );
    // Tampered with: put back; deleted: recreated.
    k.ok(&[
        "patch",
        "configmap",
        "kube-root-ca.crt",
        "-n",
        "fresh",
        "--type",
        "merge",
        "-p",
        r#"{"data":{"ca.crt":"tampered","extra":"x"}}"#,
    ]);
    eventually("the tampered CA restored", Duration::from_secs(20), || {
        let v = k.json(&["get", "configmap", "kube-root-ca.crt", "-n", "fresh"]);
        v["data"] == serde_json::json!({"ca.crt": ca})
    });
    k.ok(&["delete", "configmap", "kube-root-ca.crt", "-n", "fresh"]);
    eventually("the deleted CA recreated", Duration::from_secs(20), || {
        published("fresh")
    });
    // A namespace being deleted is emptied and goes, the publisher does not hold it up.
    k.ok(&["delete", "namespace", "fresh", "--timeout=60s"]);
    assert!(!k.run(&["get", "namespace", "fresh"]).ok);
}

#[test]
fn kubectl_debug_gets_a_status_instead_of_crashing() {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, image: busybox}]\n";
    for minor in ["27", "33"] {
        let dir = tempfile::tempdir().expect("dir");
        let s = Server::start(dir.path(), &["--disable-controllers"]);
        let k = s.kubectl(minor);
        k.ok_stdin(&["apply", "-f", "-"], pod);
        let o = k.run(&["debug", "p", "--image=busybox", "--", "true"]);
        assert!(!o.ok, "{minor}: debug should fail: {}", o.stdout);
        assert!(
            !o.stderr.contains("panic") && o.stderr.contains("ephemeral containers"),
            "{minor}: {}",
            o.stderr
        );
        // Nothing was changed on the pod.
        let v = k.json(&["get", "pod", "p"]);
        assert!(v["spec"]["ephemeralContainers"].is_null(), "{v}");
        // A missing pod is still a plain NotFound.
        let e = k.fails(&["debug", "nope", "--image=busybox", "--", "true"]);
        assert!(e.contains("not found") && !e.contains("panic"), "{e}");
    }
}

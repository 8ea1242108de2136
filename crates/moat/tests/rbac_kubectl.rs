//! Users and RBAC with the real kubectl (1.33): a user certificate from `moat certs user`
//! bound to `view` in namespace `a` reads there and is refused elsewhere with upstream's
//! 403 wording (list, watch, logs, exec: refused before anything is proxied, so no node is
//! needed), `kubectl auth can-i [--list] [--as]` answers from the same rules, a user who may
//! create RoleBindings cannot bind `cluster-admin`, and a certificate from another CA is
//! refused during the TLS handshake.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Kubectl, Server, eventually};

const KUBECTL: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.33";

fn kubectl_with(kubeconfig: &Path) -> Kubectl {
    Kubectl {
        bin: KUBECTL.into(),
        kubeconfig: kubeconfig.to_path_buf(),
        cache: tempfile::tempdir().expect("cache"),
    }
}

/// `moat certs user NAME --group ...` against the server's data dir.
fn user(s: &Server, name: &str, groups: &[&str]) -> Kubectl {
    let out = s.dir.join("users");
    let mut c = Command::new(env!("CARGO_BIN_EXE_moat"));
    c.args(["certs", "user", name, "--out"])
        .arg(&out)
        .arg("--data-dir")
        .arg(&s.dir);
    for g in groups {
        c.args(["--group", g]);
    }
    let o = c.output().expect("moat certs user");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let path = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert_eq!(Path::new(&path), out.join(format!("{name}.kubeconfig")));
    kubectl_with(Path::new(&path))
}

fn forbidden(ns: &str, verb: &str, resource: &str, name: &str) -> String {
    let what = if name.is_empty() {
        resource.split('/').next().unwrap_or(resource).to_string()
    } else {
        format!(
            "{} \"{name}\"",
            resource.split('/').next().unwrap_or(resource)
        )
    };
    format!(
        "Error from server (Forbidden): {what} is forbidden: User \"alice\" cannot {verb} resource \"{resource}\" in API group \"\" in the namespace \"{ns}\""
    )
}

/// The first column (`pods`, `deployments.apps/scale`) of `kubectl auth can-i --list` rows
/// granting `verbs`.
fn listed(out: &str, verbs: &str) -> BTreeSet<String> {
    out.lines()
        .skip(1)
        .filter(|l| l.trim_end().ends_with(verbs))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|r| !r.starts_with('['))
        .map(String::from)
        .collect()
}

/// What the `view` ClusterRole's rules name, in `kubectl auth can-i --list`'s spelling.
fn view_resources(admin: &Kubectl) -> BTreeSet<String> {
    let view = admin.json(&["get", "clusterrole", "view"]);
    let mut out = BTreeSet::new();
    for r in view["rules"].as_array().expect("rules") {
        assert_eq!(r["verbs"], serde_json::json!(["get", "list", "watch"]));
        for g in r["apiGroups"].as_array().unwrap() {
            for res in r["resources"].as_array().unwrap() {
                let (g, res) = (g.as_str().unwrap(), res.as_str().unwrap());
                let (base, sub) = match res.split_once('/') {
                    Some((b, s)) => (b, format!("/{s}")),
                    None => (res, String::new()),
                };
                out.insert(match g {
                    "" => format!("{base}{sub}"),
                    g => format!("{base}.{g}{sub}"),
                });
            }
        }
    }
    out
}

#[test]
fn user_certificates_are_limited_to_what_rolebindings_grant() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = Server::start(dir.path(), &[]);
    let admin = s.kubectl("33");
    for ns in ["a", "b"] {
        admin.ok(&["create", "namespace", ns]);
        // Pending pods (no agent): enough for the refusals, which come before any proxying.
        admin.ok(&["run", "p", "--image=busybox", "-n", ns]);
    }
    let alice = user(&s, "alice", &["devs"]);

    let me = alice.ok(&["auth", "whoami"]);
    assert!(
        me.contains("alice") && me.contains("[devs system:authenticated]"),
        "{me}"
    );
    // Authenticated but granted nothing yet.
    assert!(
        alice
            .fails(&["get", "pods", "-n", "a"])
            .contains(&forbidden("a", "list", "pods", ""))
    );

    admin.ok(&[
        "create",
        "rolebinding",
        "alice-view",
        "--clusterrole=view",
        "--user=alice",
        "-n",
        "a",
    ]);
    let table = admin.ok(&["get", "rolebinding", "alice-view", "-n", "a", "-o", "wide"]);
    assert!(
        table.contains("ClusterRole/view") && table.contains("alice"),
        "{table}"
    );
    eventually(
        "the binding reaches the authorizer",
        Duration::from_secs(10),
        || alice.run(&["get", "pods", "-n", "a"]).ok,
    );
    assert!(alice.ok(&["get", "pods", "-n", "a"]).contains("p "));
    assert!(
        alice
            .ok(&["get", "pod", "p", "-n", "a", "-o", "name"])
            .contains("pod/p")
    );

    // Namespace b: list, watch, get, logs and exec are all refused with upstream's wording.
    let e = alice.fails(&["get", "pods", "-n", "b"]);
    assert!(e.contains(&forbidden("b", "list", "pods", "")), "{e}");
    let e = alice.fails(&["get", "pods", "-n", "b", "--watch"]);
    assert!(e.contains(&forbidden("b", "list", "pods", "")), "{e}");
    let e = alice.fails(&["get", "--raw", "/api/v1/namespaces/b/pods?watch=true"]);
    assert!(
        e.contains("cannot watch resource \\\"pods\\\"")
            || e.contains("cannot watch resource \"pods\""),
        "{e}"
    );
    let e = alice.fails(&["logs", "p", "-n", "b"]);
    assert!(e.contains(&forbidden("b", "get", "pods", "p")), "{e}");
    let e = alice.fails(&["get", "--raw", "/api/v1/namespaces/b/pods/p/log"]);
    assert!(
        e.contains("cannot get resource \\\"pods/log\\\"")
            || e.contains("cannot get resource \"pods/log\""),
        "{e}"
    );
    let e = alice.fails(&["exec", "p", "-n", "b", "--", "true"]);
    assert!(e.contains(&forbidden("b", "get", "pods", "p")), "{e}");
    // In a, view reads pods but does not run commands in them: pods/exec is refused itself.
    let e = alice.fails(&["exec", "p", "-n", "a", "--", "true"]);
    assert!(
        e.contains("Error from server (Forbidden): pods \"p\" is forbidden: User \"alice\" cannot"),
        "{e}"
    );
    assert!(
        e.contains("resource \"pods/exec\" in API group \"\" in the namespace \"a\""),
        "{e}"
    );
    // Watches in a are allowed (ended by the server after a second).
    alice.ok(&[
        "get",
        "--raw",
        "/api/v1/namespaces/a/pods?watch=true&timeoutSeconds=1",
    ]);
    // Writes are not in view.
    let e = alice.fails(&["delete", "pod", "p", "-n", "a"]);
    assert!(e.contains(&forbidden("a", "delete", "pods", "p")), "{e}");

    // kubectl auth can-i, for oneself and (as admin) for alice.
    assert_eq!(
        alice
            .ok(&["auth", "can-i", "list", "pods", "-n", "a"])
            .trim(),
        "yes"
    );
    let no = alice.run(&["auth", "can-i", "list", "pods", "-n", "b"]);
    assert_eq!((no.ok, no.stdout.trim()), (false, "no"));
    let no = alice.run(&["auth", "can-i", "create", "pods/exec", "-n", "a"]);
    assert_eq!((no.ok, no.stdout.trim()), (false, "no"));
    let in_a = admin.ok(&["auth", "can-i", "--list", "--as", "alice", "-n", "a"]);
    let expected = view_resources(&admin);
    assert!(expected.contains("pods") && expected.contains("pods/log"));
    assert_eq!(listed(&in_a, "[get list watch]"), expected, "{in_a}");
    assert!(listed(&in_a, "[create]").contains("selfsubjectaccessreviews.authorization.k8s.io"));
    assert_eq!(alice.ok(&["auth", "can-i", "--list", "-n", "a"]), in_a);
    let in_b = admin.ok(&["auth", "can-i", "--list", "--as", "alice", "-n", "b"]);
    assert!(listed(&in_b, "[get list watch]").is_empty(), "{in_b}");
    // Only those allowed to impersonate may.
    let e = alice.fails(&["get", "pods", "-n", "a", "--as", "bob"]);
    assert!(e.contains("users \"bob\" is forbidden: User \"alice\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"), "{e}");

    // Escalation: a Role allowing RoleBinding writes does not let alice bind cluster-admin,
    // nor create roles beyond what she holds; binding view (which she holds in a) works.
    admin.ok(&[
        "create",
        "role",
        "rb-maker",
        "-n",
        "a",
        "--verb=create,get,list",
        "--resource=rolebindings",
    ]);
    admin.ok(&[
        "create",
        "rolebinding",
        "alice-rb",
        "--role=rb-maker",
        "--user=alice",
        "-n",
        "a",
    ]);
    eventually(
        "alice may create rolebindings",
        Duration::from_secs(10),
        || {
            alice
                .ok(&["auth", "can-i", "create", "rolebindings", "-n", "a"])
                .trim()
                == "yes"
        },
    );
    let e = alice.fails(&[
        "create",
        "rolebinding",
        "boom",
        "--clusterrole=cluster-admin",
        "--user=alice",
        "-n",
        "a",
    ]);
    assert!(e.contains("rolebindings.rbac.authorization.k8s.io \"boom\" is forbidden: user \"alice\" (groups=[\"devs\" \"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"*\"], Resources:[\"*\"], Verbs:[\"*\"]}"), "{e}");
    assert!(
        admin
            .run(&["get", "rolebinding", "boom", "-n", "a"])
            .stderr
            .contains("NotFound")
    );
    alice.ok(&[
        "create",
        "rolebinding",
        "bob-view",
        "--clusterrole=view",
        "--user=bob",
        "-n",
        "a",
    ]);
    let e = alice.fails(&[
        "create",
        "rolebinding",
        "bob-view",
        "--clusterrole=view",
        "--user=bob",
        "-n",
        "b",
    ]);
    assert!(e.contains("cannot create resource \"rolebindings\" in API group \"rbac.authorization.k8s.io\" in the namespace \"b\""), "{e}");

    // A certificate from another CA (same CN as the real CA, another key) never gets a request
    // in: the handshake fails.
    let other = tempfile::tempdir().expect("other ca");
    moat_apiserver::pki::ensure(other.path(), &["localhost".into()]).expect("other CA");
    let creds = moat_apiserver::pki::user_certificate(
        other.path(),
        "mallory",
        &["system:masters".into()],
        1,
    )
    .expect("mallory");
    let url = moat_apiserver::pki::server_url(&s.dir).expect("url");
    let ca = std::fs::read_to_string(s.dir.join("ca.crt")).expect("ca");
    let kc = other.path().join("mallory.kubeconfig");
    std::fs::write(
        &kc,
        moat_apiserver::pki::user_kubeconfig(&url, &ca, "mallory", &creds),
    )
    .expect("write");
    let mallory = kubectl_with(&kc);
    let e = mallory.fails(&["get", "pods", "-A"]);
    assert!(e.contains("tls:"), "{e}");
    assert!(!e.contains("Forbidden"), "{e}");
    // The admin kubeconfig is unaffected.
    assert!(admin.ok(&["get", "pods", "-A"]).contains("p "));
}

//! Per-pod workers on a real node (issue: a pod waited out other pods' grace periods): pods
//! whose process ignores SIGTERM are deleted at once with a 30 s grace period, and a pod
//! created right after runs while every one of them is still terminating; they honour their
//! grace period, then all go together. Once with runc pods, once with VM pods.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::time::{Duration, Instant};

use common::lab::*;

const GRACE: u64 = 30;

/// `n` pods labelled `grp=slow` whose PID 1 ignores SIGTERM (a namespace's init gets no
/// default signal handling: `sleep` as PID 1 only dies of SIGKILL).
fn slow_pods(node: &str, n: usize, class: Option<&str>) -> String {
    (0..n)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: slow-{i}, labels: {{grp: slow}}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: {GRACE}\n{}  containers:\n  - name: c\n    image: localhost/busybox:latest\n    imagePullPolicy: IfNotPresent\n    command: [\"sleep\", \"3600\"]\n",
                class.map(|c| format!("  runtimeClassName: {c}\n")).unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

fn count(lab: &Lab, selector: &str) -> usize {
    let (ok, out, err) = lab.kubectl(&["get", "pods", "-l", selector, "-o", "name"], None);
    assert!(ok, "kubectl get pods: {err}");
    out.lines().filter(|l| !l.is_empty()).count()
}

fn all_running(lab: &Lab, selector: &str, n: usize) -> bool {
    let (ok, out, _) = lab.kubectl(
        &[
            "get",
            "pods",
            "-l",
            selector,
            "-o",
            "jsonpath={.items[*].status.phase}",
        ],
        None,
    );
    ok && out.split_whitespace().filter(|p| *p == "Running").count() == n
}

/// Deletes the slow pods at once, creates a fresh pod, and checks that the fresh pod runs
/// while all slow pods still exist, that they honour the grace period, and that they all go.
fn delete_slow_then_start_fresh(lab: &Lab, n: usize) {
    let (ok, _, err) = lab.kubectl(&["delete", "pods", "-l", "grp=slow", "--wait=false"], None);
    assert!(ok, "delete: {err}");
    let deleted = Instant::now();
    apply(
        lab,
        &POD.replace("NAME", "fresh").replace("NODE", &lab.node),
    );
    lab.wait("the fresh pod Running", 60, || {
        lab.pod("fresh")
            .is_some_and(|p| p["status"]["phase"] == "Running")
    });
    let ran_after = deleted.elapsed();
    // The decisive check: the fresh pod ran before any of the terminating pods was gone, so
    // it waited for none of them.
    assert_eq!(
        count(lab, "grp=slow"),
        n,
        "the fresh pod ran after {ran_after:?}, while all {n} slow pods still terminate"
    );
    eprintln!("fresh pod Running {ran_after:?} after deleting {n} pods");
    // They ignore SIGTERM: still there well inside the grace period...
    while deleted.elapsed() < Duration::from_secs(GRACE - 10) {
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        count(lab, "grp=slow"),
        n,
        "SIGTERM is ignored: the grace period holds"
    );
    // ...and all killed and torn down once it ends.
    lab.wait("the slow pods gone", GRACE + 30, || {
        count(lab, "grp=slow") == 0
    });
    eprintln!("{n} pods gone {:?} after their deletion", deleted.elapsed());
}

#[test]
fn serial_workers_a_new_pod_runs_while_20_pods_wait_out_their_grace_period() {
    let mut lab = Lab::new("wrk");
    lab.import_busybox();
    lab.start(&[]);
    apply(&lab, &slow_pods(&lab.node, 20, None));
    lab.wait("20 slow pods Running", 120, || {
        all_running(&lab, "grp=slow", 20)
    });
    delete_slow_then_start_fresh(&lab, 20);
    let (_, uid) = running_ip(&lab, "fresh");
    delete_and_check_clean(&lab, "fresh", &uid);
}

#[test]
fn serial_workers_a_new_pod_runs_while_5_vm_pods_wait_out_their_grace_period() {
    let mut lab = Lab::new("wrkvm");
    lab.import_busybox();
    let kata = Kata::new(&lab);
    lab.start(&["--runtime-config", kata.handlers.to_str().expect("utf-8")]);
    apply(
        &lab,
        "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata: {name: kata}\nhandler: kata\n",
    );
    apply(&lab, &slow_pods(&lab.node, 5, Some("kata")));
    lab.wait("5 VM pods Running", 180, || {
        all_running(&lab, "grp=slow", 5)
    });
    assert_eq!(kata.qemus(), 5, "one VM per pod");
    delete_slow_then_start_fresh(&lab, 5);
    lab.wait("the VMs stopped with their pods", 30, || kata.qemus() == 0);
}

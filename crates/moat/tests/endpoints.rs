//! Endpoints and EndpointSlices follow pod readiness, through kubectl. The test plays the
//! node agent: it sets pod IPs and Ready conditions through pods/status.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::time::Duration;

use common::{Server, eventually};

const MANIFESTS: &str = r#"apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-a, labels: {app: web}}
spec:
  nodeName: n1
  containers: [{name: c, image: busybox, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-b, labels: {app: web}}
spec:
  nodeName: n1
  containers: [{name: c, image: busybox, ports: [{name: http, containerPort: 8080}]}]
"#;

fn set_status(k: &common::Kubectl, pod: &str, ip: &str, ready: bool) {
    let st = if ready { "True" } else { "False" };
    k.ok(&[
        "patch", "pod", pod, "--subresource=status", "--type=merge", "-p",
        &format!(r#"{{"status":{{"phase":"Running","podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}],"conditions":[{{"type":"Ready","status":"{st}"}}]}}}}"#),
    ]);
}

#[test]
fn endpoints_and_slices_follow_readiness() {
    let dir = tempfile::tempdir().expect("dir");
    let s = Server::start(dir.path(), &[]);
    let k = s.kubectl("33");
    k.ok_stdin(&["apply", "-f", "-"], MANIFESTS);
    let long = Duration::from_secs(30);
    let ep = |k: &common::Kubectl| k.json(&["get", "endpoints", "web"]);
    let ips = |v: &serde_json::Value, field: &str| -> Vec<String> {
        v["subsets"]
            .as_array()
            .map(|ss| {
                ss.iter()
                    .flat_map(|s| s[field].as_array().cloned().unwrap_or_default())
                    .filter_map(|a| a["ip"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    set_status(&k, "web-a", "10.42.0.10", true);
    set_status(&k, "web-b", "10.42.0.11", false);
    eventually("one ready, one not", long, || {
        k.run(&["get", "endpoints", "web"]).ok
            && ips(&ep(&k), "addresses") == ["10.42.0.10"]
            && ips(&ep(&k), "notReadyAddresses") == ["10.42.0.11"]
    });
    // The named target port resolved to the container port.
    assert_eq!(ep(&k)["subsets"][0]["ports"][0]["port"], 8080);
    assert!(
        k.ok(&["get", "endpoints", "web"])
            .contains("10.42.0.10:8080")
    );
    let slices = || {
        k.json(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
        ])
    };
    eventually("a slice with both pods", long, || {
        slices()["items"][0]["endpoints"].as_array().map(Vec::len) == Some(2)
    });

    // b becomes ready, a stops being ready.
    set_status(&k, "web-b", "10.42.0.11", true);
    set_status(&k, "web-a", "10.42.0.10", false);
    eventually("readiness flipped", long, || {
        ips(&ep(&k), "addresses") == ["10.42.0.11"]
            && ips(&ep(&k), "notReadyAddresses") == ["10.42.0.10"]
    });
    let sl = slices();
    let ready: Vec<bool> = sl["items"][0]["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| e["conditions"]["ready"].as_bool().unwrap_or(true))
        .collect();
    assert_eq!(ready.iter().filter(|r| **r).count(), 1, "{sl}");

    // A pod being deleted leaves Endpoints; deleting the Service removes both objects.
    k.ok(&["delete", "pod", "web-b", "--wait=false"]);
    eventually("terminating pod out of endpoints", long, || {
        ips(&ep(&k), "addresses").is_empty()
    });
    k.ok(&["delete", "svc", "web"]);
    eventually("endpoints and slices gone", long, || {
        !k.run(&["get", "endpoints", "web"]).ok
            && slices()["items"].as_array().is_some_and(|i| i.is_empty())
    });
}

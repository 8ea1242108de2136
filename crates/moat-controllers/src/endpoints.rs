//! The Endpoints and EndpointSlice controllers, as a pure function from a Service and the
//! pods of its namespace to the objects that should exist.
//!
//! As upstream: only Services with a selector are managed; pods match by labels, need an IP
//! and are not finished; a pod is ready when its `Ready` condition is True and it is not
//! being deleted. Named target ports are resolved per pod against its container ports, so
//! pods exposing a name on different numbers land in different subsets/slices.

use std::collections::BTreeMap;

use serde_json::{Value, json};

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

/// The desired Endpoints and EndpointSlices of one Service (None: not managed).
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub endpoints: Value,
    pub slices: Vec<Value>,
}

fn selector_matches(sel: &serde_json::Map<String, Value>, labels: &Value) -> bool {
    sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn ready(p: &Value) -> bool {
    p["metadata"]["deletionTimestamp"].is_null()
        && p["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// The container port a target port names on this pod.
fn resolve(target: &Value, port: &Value, pod: &Value) -> Option<i64> {
    match target {
        Value::Number(n) => n.as_i64(),
        Value::String(name) => pod["spec"]["containers"]
            .as_array()?
            .iter()
            .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
            .find(|p| p["name"] == name.as_str())
            .and_then(|p| p["containerPort"].as_i64()),
        // Defaulting sets targetPort = port; be safe if it did not.
        _ => port.as_i64(),
    }
}

pub fn desired(svc: &Value, pods: &[Value]) -> Option<Desired> {
    let sel = svc["spec"]["selector"]
        .as_object()
        .filter(|s| !s.is_empty())?;
    let name = svc["metadata"]["name"].as_str()?;
    let ns = svc["metadata"]["namespace"].as_str()?;
    let ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
    // Port set (resolved numbers per service port) → member pods.
    let mut groups: BTreeMap<Vec<i64>, Vec<&Value>> = BTreeMap::new();
    for p in pods {
        if p["metadata"]["namespace"] != ns
            || !selector_matches(sel, &p["metadata"]["labels"])
            || p["status"]["podIP"].as_str().is_none_or(str::is_empty)
            || matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
        {
            continue;
        }
        let resolved: Option<Vec<i64>> = ports
            .iter()
            .map(|sp| resolve(&sp["targetPort"], &sp["port"], p))
            .collect();
        if let Some(r) = resolved {
            groups.entry(r).or_default().push(p);
        }
    }
    let port_list = |nums: &[i64]| -> Vec<Value> {
        ports
            .iter()
            .zip(nums)
            .map(|(sp, n)| {
                let mut v =
                    json!({"port": n, "protocol": sp["protocol"].as_str().unwrap_or("TCP")});
                if let Some(pn) = sp["name"].as_str().filter(|s| !s.is_empty()) {
                    v["name"] = json!(pn);
                }
                v
            })
            .collect()
    };
    let target_ref = |p: &Value| json!({"kind": "Pod", "namespace": ns, "name": p["metadata"]["name"], "uid": p["metadata"]["uid"]});
    let mut subsets = Vec::new();
    let mut slices = Vec::new();
    for (i, (nums, members)) in groups.iter().enumerate() {
        let mut members = members.clone();
        members.sort_by(|a, b| {
            a["status"]["podIP"]
                .as_str()
                .cmp(&b["status"]["podIP"].as_str())
        });
        let addr = |p: &Value| {
            let mut a = json!({"ip": p["status"]["podIP"], "targetRef": target_ref(p)});
            if let Some(n) = p["spec"]["nodeName"].as_str() {
                a["nodeName"] = json!(n);
            }
            a
        };
        // Terminating pods leave Endpoints (upstream keeps them only in slices).
        let live: Vec<&&Value> = members
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .collect();
        let ready_addrs: Vec<Value> = live.iter().filter(|p| ready(p)).map(|p| addr(p)).collect();
        let not_ready: Vec<Value> = live.iter().filter(|p| !ready(p)).map(|p| addr(p)).collect();
        if !live.is_empty() {
            let mut s = json!({"ports": port_list(nums)});
            if !ready_addrs.is_empty() {
                s["addresses"] = json!(ready_addrs);
            }
            if !not_ready.is_empty() {
                s["notReadyAddresses"] = json!(not_ready);
            }
            subsets.push(s);
        }
        let eps: Vec<Value> = members
            .iter()
            .map(|p| {
                let terminating = !p["metadata"]["deletionTimestamp"].is_null();
                let serving = p["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
                let mut e = json!({"addresses": [p["status"]["podIP"]],
                    "conditions": {"ready": ready(p), "serving": serving, "terminating": terminating},
                    "targetRef": target_ref(p)});
                if let Some(n) = p["spec"]["nodeName"].as_str() {
                    e["nodeName"] = json!(n);
                }
                e
            })
            .collect();
        slices.push(slice(svc, name, ns, i, eps, port_list(nums)));
    }
    if slices.is_empty() {
        // An empty slice still says "no endpoints" to its readers (and carries the ports).
        let nums: Vec<i64> = ports
            .iter()
            .filter_map(|sp| sp["targetPort"].as_i64().or(sp["port"].as_i64()))
            .collect();
        slices.push(slice(svc, name, ns, 0, vec![], port_list(&nums)));
    }
    let mut endpoints = json!({"apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": name, "namespace": ns,
                     "labels": svc["metadata"]["labels"].as_object().cloned().unwrap_or_default()}});
    if !subsets.is_empty() {
        endpoints["subsets"] = json!(subsets);
    }
    Some(Desired { endpoints, slices })
}

fn slice(svc: &Value, name: &str, ns: &str, i: usize, eps: Vec<Value>, ports: Vec<Value>) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{name}-{i}"), "namespace": ns,
            "labels": {SERVICE_NAME_LABEL: name, MANAGED_BY_LABEL: MANAGED_BY},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name,
                "uid": svc["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}]},
        "addressType": "IPv4", "endpoints": eps, "ports": ports})
}

/// Whether an existing object already says what `want` says (the fields this controller
/// owns), so no write is needed.
pub fn same(kind: &str, have: &Value, want: &Value) -> bool {
    match kind {
        "Endpoints" => have["subsets"] == want["subsets"],
        _ => {
            have["endpoints"] == want["endpoints"]
                && have["ports"] == want["ports"]
                && have["metadata"]["labels"] == want["metadata"]["labels"]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(target: Value) -> Value {
        json!({"metadata": {"name": "web", "namespace": "d", "uid": "s1"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": target, "protocol": "TCP"}]}})
    }

    fn pod(name: &str, ip: &str, ready: bool, port_name_num: i64) -> Value {
        json!({"metadata": {"name": name, "namespace": "d", "uid": name, "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": port_name_num}]}]},
            "status": {"podIP": ip, "phase": "Running",
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
    }

    #[test]
    fn ready_and_not_ready_addresses() {
        let d = desired(
            &svc(json!(8080)),
            &[
                pod("b", "10.42.0.3", false, 8080),
                pod("a", "10.42.0.2", true, 8080),
            ],
        )
        .expect("managed");
        let s = &d.endpoints["subsets"][0];
        assert_eq!(s["addresses"][0]["ip"], "10.42.0.2");
        assert_eq!(s["notReadyAddresses"][0]["ip"], "10.42.0.3");
        assert_eq!(
            s["ports"],
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}])
        );
        let sl = &d.slices[0];
        assert_eq!(sl["metadata"]["labels"][SERVICE_NAME_LABEL], "web");
        assert_eq!(sl["endpoints"][0]["conditions"]["ready"], true);
        assert_eq!(sl["endpoints"][1]["conditions"]["ready"], false);
        assert_eq!(sl["metadata"]["ownerReferences"][0]["uid"], "s1");
    }

    #[test]
    fn named_target_ports_resolve_per_pod() {
        let d = desired(
            &svc(json!("http")),
            &[
                pod("a", "10.42.0.2", true, 8080),
                pod("b", "10.42.0.3", true, 9090),
            ],
        )
        .expect("managed");
        let subsets = d.endpoints["subsets"].as_array().expect("subsets");
        assert_eq!(subsets.len(), 2, "two port sets");
        assert_eq!(d.slices.len(), 2);
        let ports: Vec<&Value> = subsets.iter().map(|s| &s["ports"][0]["port"]).collect();
        assert_eq!(ports, vec![&json!(8080), &json!(9090)]);
    }

    #[test]
    fn unmatched_unaddressed_finished_and_terminating_pods() {
        let mut other = pod("o", "10.42.0.9", true, 8080);
        other["metadata"]["labels"]["app"] = json!("db");
        let mut noip = pod("n", "", true, 8080);
        noip["status"]["podIP"] = Value::Null;
        let mut done = pod("f", "10.42.0.7", true, 8080);
        done["status"]["phase"] = json!("Succeeded");
        let mut term = pod("t", "10.42.0.8", true, 8080);
        term["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        let d = desired(&svc(json!(8080)), &[other, noip, done, term]).expect("managed");
        assert!(d.endpoints.get("subsets").is_none(), "{}", d.endpoints);
        let eps = d.slices[0]["endpoints"].as_array().expect("eps");
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0]["conditions"]["terminating"], true);
        assert_eq!(eps[0]["conditions"]["ready"], false);
    }

    #[test]
    fn services_without_selectors_are_not_managed() {
        let mut s = svc(json!(80));
        s["spec"]["selector"] = Value::Null;
        assert!(desired(&s, &[]).is_none());
        let d = desired(&svc(json!(80)), &[]).expect("managed");
        assert_eq!(
            d.slices.len(),
            1,
            "an empty slice for a service without pods"
        );
    }
}

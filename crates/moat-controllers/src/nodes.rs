//! The node lifecycle controller, as a plan: pod CIDR assignment, the Ready condition from
//! heartbeats (Lease renewals or status updates), the `node.kubernetes.io/unreachable` and
//! `not-ready` taints, and eviction of pods from NoExecute-tainted nodes once their
//! toleration runs out.

use std::collections::{HashMap, HashSet};

use moat_api::cidr::Ipv4Net;

use serde_json::{Value, json};

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";

/// k3s's default pod network.
const DEFAULT_CLUSTER_CIDR: Ipv4Net =
    Ipv4Net::new_assert(std::net::Ipv4Addr::new(10, 42, 0, 0), 16);

#[derive(Debug, Clone)]
pub struct Config {
    /// Seconds without a heartbeat after which a node is unreachable (upstream: 40).
    pub grace_secs: i64,
    /// tolerationSeconds for pods without a toleration for the taint (upstream's
    /// DefaultTolerationSeconds admission adds 300 to every pod).
    pub default_toleration_secs: i64,
    /// The cluster's pod network and the per-node prefix length.
    pub cluster_cidr: Ipv4Net,
    pub node_prefix: u8,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grace_secs: 40,
            default_toleration_secs: 300,
            cluster_cidr: DEFAULT_CLUSTER_CIDR,
            node_prefix: 24,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeAction {
    SetPodCidr {
        node: String,
        cidr: String,
    },
    /// Set the Ready condition to Unknown (no heartbeat within the grace period).
    MarkUnknown {
        node: String,
    },
    /// Replace the node's taints with this list.
    SetTaints {
        node: String,
        taints: Vec<Value>,
    },
    /// Delete the pod (NoExecute taint not tolerated, or tolerated for less than it lasted).
    Evict {
        namespace: String,
        pod: String,
        taint: String,
    },
}

fn secs(t: &Value) -> Option<i64> {
    moat_api::time::parse_rfc3339(t.as_str()?)
        .ok()
        .map(|d| d.as_second())
}

fn ready_condition(n: &Value) -> Option<&Value> {
    n["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
}

/// The latest sign of life of a node: its Lease's renewTime, its Ready condition's
/// heartbeat, or (never heard of) its creation.
fn last_heartbeat(node: &Value, leases: &HashMap<&str, &Value>) -> i64 {
    let name = node["metadata"]["name"].as_str().unwrap_or("");
    let lease = leases.get(name).and_then(|l| secs(&l["spec"]["renewTime"]));
    let status = ready_condition(node).and_then(|c| secs(&c["lastHeartbeatTime"]));
    let created = secs(&node["metadata"]["creationTimestamp"]).unwrap_or(0);
    lease.into_iter().chain(status).fold(created, i64::max)
}

fn tolerates_for(pod: &Value, key: &str) -> Option<Option<i64>> {
    pod["spec"]["tolerations"].as_array()?.iter().find_map(|t| {
        let key_ok = match t["operator"].as_str() {
            Some("Exists") => t["key"].as_str().is_none_or(|k| k.is_empty() || k == key),
            _ => t["key"] == key,
        };
        let effect_ok = t["effect"]
            .as_str()
            .is_none_or(|e| e.is_empty() || e == "NoExecute");
        (key_ok && effect_ok).then(|| t["tolerationSeconds"].as_i64())
    })
}

pub fn plan(
    nodes: &[Value],
    leases: &[Value],
    pods: &[Value],
    now: i64,
    cfg: &Config,
) -> Vec<NodeAction> {
    let mut out = Vec::new();
    // Pod CIDRs: the first free /node_prefix blocks of the cluster CIDR, in name order.
    // By name and by value: a pass looks at every node, and 1,000 nodes each scanning the
    // lists made the pass quadratic.
    let used: HashSet<String> = nodes
        .iter()
        .filter_map(|n| n["spec"]["podCIDR"].as_str().map(str::to_string))
        .collect();
    let leases: HashMap<&str, &Value> = leases
        .iter()
        .filter_map(|l| l["metadata"]["name"].as_str().map(|n| (n, l)))
        .collect();
    // None when the node prefix is shorter than the cluster's: no blocks to hand out.
    let mut blocks = cfg
        .cluster_cidr
        .subnets(cfg.node_prefix)
        .into_iter()
        .flatten();
    let mut unassigned: Vec<&Value> = nodes
        .iter()
        .filter(|n| n["spec"]["podCIDR"].as_str().is_none_or(str::is_empty))
        .collect();
    unassigned.sort_by_key(|n| n["metadata"]["name"].as_str().unwrap_or("").to_string());
    for n in unassigned {
        if let Some(cidr) = blocks
            .by_ref()
            .map(|b| b.to_string())
            .find(|c| !used.contains(c))
        {
            out.push(NodeAction::SetPodCidr {
                node: n["metadata"]["name"].as_str().unwrap_or("").to_string(),
                cidr,
            });
        }
    }

    for n in nodes {
        let name = n["metadata"]["name"].as_str().unwrap_or("").to_string();
        let stale = now - last_heartbeat(n, &leases) > cfg.grace_secs;
        let ready = ready_condition(n).map(|c| c["status"].as_str().unwrap_or(""));
        if stale && ready != Some("Unknown") {
            out.push(NodeAction::MarkUnknown { node: name.clone() });
        }
        // Which taint the node should carry: unreachable when silent, not-ready when it
        // reports NotReady, none when Ready.
        let want: Option<&str> = if stale || ready == Some("Unknown") {
            Some(UNREACHABLE)
        } else if ready == Some("False") {
            Some(NOT_READY)
        } else {
            None
        };
        let taints: Vec<Value> = n["spec"]["taints"].as_array().cloned().unwrap_or_default();
        let ours = |t: &Value| t["key"] == UNREACHABLE || t["key"] == NOT_READY;
        let mut next_taints: Vec<Value> = taints.iter().filter(|t| !ours(t)).cloned().collect();
        if let Some(key) = want {
            for effect in ["NoSchedule", "NoExecute"] {
                let existing = taints
                    .iter()
                    .find(|t| t["key"] == key && t["effect"] == effect)
                    .cloned();
                next_taints.push(existing.unwrap_or_else(|| {
                    let mut t = json!({"key": key, "effect": effect});
                    if effect == "NoExecute" {
                        t["timeAdded"] = json!(moat_api::time::rfc3339_from_secs(now));
                    }
                    t
                }));
            }
        }
        if next_taints != taints {
            out.push(NodeAction::SetTaints {
                node: name.clone(),
                taints: next_taints.clone(),
            });
        }
        // Evictions for the NoExecute taints as they stand (the current ones, so a taint
        // added this pass starts its clock now).
        for t in taints
            .iter()
            .filter(|t| ours(t) && t["effect"] == "NoExecute" && next_taints.contains(t))
        {
            let key = t["key"].as_str().unwrap_or("");
            let added = secs(&t["timeAdded"]).unwrap_or(now);
            for p in pods.iter().filter(|p| {
                p["spec"]["nodeName"] == name.as_str()
                    && p["metadata"]["deletionTimestamp"].is_null()
            }) {
                let limit = match tolerates_for(p, key) {
                    Some(None) => continue,
                    Some(Some(s)) => s,
                    None => cfg.default_toleration_secs,
                };
                if now >= added + limit {
                    out.push(NodeAction::Evict {
                        namespace: p["metadata"]["namespace"]
                            .as_str()
                            .unwrap_or("")
                            .to_string(),
                        pod: p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                        taint: key.to_string(),
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000;

    fn ts(s: i64) -> String {
        moat_api::time::rfc3339_from_secs(s)
    }

    fn node(name: &str, ready: &str, cidr: Option<&str>) -> Value {
        let mut n = json!({"metadata": {"name": name, "creationTimestamp": ts(T0 - 1000)},
            "spec": {}, "status": {"conditions": [{"type": "Ready", "status": ready, "lastHeartbeatTime": ts(T0 - 1000)}]}});
        if let Some(c) = cidr {
            n["spec"]["podCIDR"] = json!(c);
        }
        n
    }

    fn lease(name: &str, renew: i64) -> Value {
        json!({"metadata": {"name": name}, "spec": {"renewTime": ts(renew)}})
    }

    fn cfg() -> Config {
        Config {
            grace_secs: 40,
            default_toleration_secs: 300,
            ..Default::default()
        }
    }

    #[test]
    fn pod_cidrs_are_unique_and_skip_taken_blocks() {
        let nodes = [
            node("b", "True", None),
            node("a", "True", Some("10.42.0.0/24")),
            node("c", "True", None),
        ];
        let leases = [lease("a", T0), lease("b", T0), lease("c", T0)];
        let a = plan(&nodes, &leases, &[], T0, &cfg());
        assert_eq!(
            a,
            vec![
                NodeAction::SetPodCidr {
                    node: "b".into(),
                    cidr: "10.42.1.0/24".into()
                },
                NodeAction::SetPodCidr {
                    node: "c".into(),
                    cidr: "10.42.2.0/24".into()
                },
            ]
        );
    }

    #[test]
    fn silent_nodes_become_unknown_and_tainted_then_pods_are_evicted() {
        let n = node("a", "True", Some("10.42.0.0/24"));
        let leases = [lease("a", T0 - 41)];
        let a = plan(std::slice::from_ref(&n), &leases, &[], T0, &cfg());
        assert!(a.contains(&NodeAction::MarkUnknown { node: "a".into() }));
        let taints = a
            .iter()
            .find_map(|x| match x {
                NodeAction::SetTaints { taints, .. } => Some(taints.clone()),
                _ => None,
            })
            .expect("taints");
        assert_eq!(taints.len(), 2);
        assert_eq!(taints[1]["timeAdded"], ts(T0));

        // Next: the node carries the taint; pods go per their toleration.
        let mut tainted = n.clone();
        tainted["spec"]["taints"] = json!(taints);
        tainted["status"]["conditions"][0]["status"] = json!("Unknown");
        let pod = |name: &str, tol: Value| json!({"metadata": {"name": name, "namespace": "d"}, "spec": {"nodeName": "a", "tolerations": tol}});
        let pods = [
            pod("default", json!([])),
            pod(
                "short",
                json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]),
            ),
            pod("forever", json!([{"operator": "Exists"}])),
        ];
        let evicted = |now: i64| -> Vec<String> {
            plan(std::slice::from_ref(&tainted), &leases, &pods, now, &cfg())
                .into_iter()
                .filter_map(|x| match x {
                    NodeAction::Evict { pod, .. } => Some(pod),
                    _ => None,
                })
                .collect()
        };
        assert!(evicted(T0 + 1).is_empty());
        assert_eq!(evicted(T0 + 5), vec!["short".to_string()]);
        assert_eq!(
            evicted(T0 + 300),
            vec!["default".to_string(), "short".to_string()]
        );
    }

    #[test]
    fn a_node_heard_from_again_loses_the_taint() {
        let mut n = node("a", "True", Some("10.42.0.0/24"));
        n["spec"]["taints"] = json!([{"key": UNREACHABLE, "effect": "NoSchedule"}, {"key": "example.org/x", "effect": "NoSchedule"}]);
        let a = plan(&[n], &[lease("a", T0)], &[], T0, &cfg());
        assert_eq!(
            a,
            vec![NodeAction::SetTaints {
                node: "a".into(),
                taints: vec![json!({"key": "example.org/x", "effect": "NoSchedule"})]
            }]
        );
        // A node reporting NotReady gets the not-ready taint.
        let n = node("b", "False", Some("10.42.1.0/24"));
        let a = plan(&[n], &[lease("b", T0)], &[], T0, &cfg());
        assert!(
            matches!(&a[0], NodeAction::SetTaints { taints, .. } if taints[0]["key"] == NOT_READY)
        );
    }
}

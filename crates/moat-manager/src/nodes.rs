//! The node lifecycle controller loop: applies `moat_controllers::nodes` plans (pod CIDRs,
//! Ready=Unknown, taints, evictions) through the API.

use std::sync::mpsc;

use moat_controllers::nodes::{Config, NodeAction};
use serde_json::{Value, json};

use crate::{Api, ClientError};

pub(crate) fn nodes_loop(
    c: Api,
    rx: mpsc::Receiver<()>,
    cfg: Config,
    node_cache: std::sync::Arc<crate::cache::Cache>,
) {
    while crate::wait(&rx) {
        if !node_cache.synced() {
            continue;
        }
        if let Err(e) = pass(&c, &cfg, &node_cache) {
            tracing::debug!(error = %e, "node lifecycle pass");
        }
    }
}

fn pass(c: &Api, cfg: &Config, node_cache: &crate::cache::Cache) -> Result<(), ClientError> {
    // From the watch-fed cache (1,000 nodes listed every second cost more than the loop);
    // a write based on a stale copy fails its resourceVersion check and is redone.
    let nodes: Vec<Value> = node_cache
        .snapshot()
        .iter()
        .map(|n| (**n).clone())
        .collect();
    if nodes.is_empty() {
        return Ok(());
    }
    let (leases, _) = c.list("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases")?;
    // Pods matter only for evictions, i.e. once a node carries one of our NoExecute taints.
    let tainted = nodes.iter().any(|n| {
        n["spec"]["taints"].as_array().is_some_and(|ts| {
            ts.iter().any(|t| {
                t["key"] == moat_controllers::nodes::UNREACHABLE
                    || t["key"] == moat_controllers::nodes::NOT_READY
            })
        })
    });
    let pods = if tainted {
        c.list("/api/v1/pods")?.0
    } else {
        Vec::new()
    };
    let now = chrono::Utc::now().timestamp();
    for a in moat_controllers::nodes::plan(&nodes, &leases, &pods, now, cfg) {
        let r = match &a {
            NodeAction::SetPodCidr { node, cidr } => c
                .merge_patch(
                    &format!("/api/v1/nodes/{node}"),
                    &json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}}),
                )
                .map(|_| ()),
            NodeAction::MarkUnknown { node } => mark_unknown(c, &nodes, node),
            NodeAction::SetTaints { node, taints } => {
                let rv = nodes
                    .iter()
                    .find(|n| n["metadata"]["name"] == node.as_str())
                    .map(|n| n["metadata"]["resourceVersion"].clone())
                    .unwrap_or(Value::Null);
                c.merge_patch(
                    &format!("/api/v1/nodes/{node}"),
                    &json!({"metadata": {"resourceVersion": rv}, "spec": {"taints": taints}}),
                )
                .map(|_| ())
            }
            NodeAction::Evict {
                namespace,
                pod,
                taint,
            } => {
                let r = c.delete(&format!("/api/v1/namespaces/{namespace}/pods/{pod}"));
                if r.is_ok()
                    && let Some(p) = pods.iter().find(|p| {
                        p["metadata"]["name"] == pod.as_str()
                            && p["metadata"]["namespace"] == namespace.as_str()
                    })
                {
                    crate::event(
                        c,
                        namespace,
                        p,
                        "Normal",
                        "TaintManagerEviction",
                        &format!("Marking for deletion Pod {namespace}/{pod} (taint {taint})"),
                        "taint-eviction-controller",
                    );
                }
                r
            }
        };
        if let Err(e) = r {
            tracing::debug!(error = %e, action = ?a, "node lifecycle action");
        }
    }
    Ok(())
}

fn mark_unknown(c: &Api, nodes: &[Value], node: &str) -> Result<(), ClientError> {
    let Some(n) = nodes.iter().find(|n| n["metadata"]["name"] == node) else {
        return Ok(());
    };
    let now = moat_client::now_rfc3339();
    let mut conds: Vec<Value> = n["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let unknown = |old: Option<&Value>| {
        json!({"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
            "message": "Kubelet stopped posting node status.",
            "lastHeartbeatTime": old.map(|o| o["lastHeartbeatTime"].clone()).unwrap_or(Value::Null),
            "lastTransitionTime": now})
    };
    match conds.iter_mut().find(|c| c["type"] == "Ready") {
        Some(c) => *c = unknown(Some(&c.clone())),
        None => conds.push(unknown(None)),
    }
    // Conditional on the copy the decision was made from: a status the kubelet posted
    // since then wins, and the next pass decides again.
    c.merge_patch(
        &format!("/api/v1/nodes/{node}/status"),
        &json!({"metadata": {"resourceVersion": n["metadata"]["resourceVersion"]},
                "status": {"conditions": conds}}),
    )
    .map(|_| ())
}

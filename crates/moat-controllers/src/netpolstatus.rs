//! Which nodes enforce a NetworkPolicy yet. Every node agent publishes on its Node the
//! highest NetworkPolicy resourceVersion its ruleset was compiled from
//! ([`APPLIED_ANNOTATION`]; the watch delivers changes in revision order, so every policy
//! at or below it is in force on that node). This plan compares each policy's revision with
//! the Ready nodes' marks and, once all of them have it, writes the policy's
//! [`STATUS_ANNOTATION`] (which `kubectl describe networkpolicy` shows) and asks for a
//! `Programmed` event. The annotation names the generation, so a spec change is reported
//! again; writing it bumps the policy's revision, but the text then already matches, so the
//! plan settles after one write per generation.
//!
//! NetworkPolicy has no status in `networking.k8s.io/v1` (the alpha `status.conditions`
//! field was removed in 1.28), hence an annotation and an event.

use serde_json::Value;

pub use moat_api::annotations::{
    NETPOL_APPLIED_REVISION as APPLIED_ANNOTATION, NETPOL_STATUS as STATUS_ANNOTATION,
};

/// One policy whose status changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub namespace: String,
    pub name: String,
    /// The new annotation value.
    pub status: String,
    /// The message of the `Programmed` event.
    pub message: String,
}

fn ready(node: &Value) -> bool {
    node["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

fn revision(obj: &Value) -> Option<u64> {
    obj["metadata"]["resourceVersion"].as_str()?.parse().ok()
}

fn applied(node: &Value) -> u64 {
    node["metadata"]["annotations"][APPLIED_ANNOTATION]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The status annotation for a policy generation in force on `nodes` nodes.
pub fn status_text(generation: i64, nodes: usize) -> String {
    let s = if nodes == 1 { "" } else { "s" };
    format!("generation {generation} programmed on all {nodes} Ready node{s}")
}

/// The policies that every Ready node now enforces and whose annotation does not say so.
/// No Ready node: nothing (nobody could have programmed anything).
pub fn plan(policies: &[Value], nodes: &[Value]) -> Vec<Update> {
    let marks: Vec<u64> = nodes.iter().filter(|n| ready(n)).map(applied).collect();
    if marks.is_empty() {
        return Vec::new();
    }
    let low = marks.iter().copied().min().unwrap_or(0);
    let mut out = Vec::new();
    for p in policies {
        if p["metadata"]["deletionTimestamp"].is_string() {
            continue;
        }
        let Some(rv) = revision(p) else { continue };
        let generation = p["metadata"]["generation"].as_i64().unwrap_or(1);
        let text = status_text(generation, marks.len());
        if rv > low || p["metadata"]["annotations"][STATUS_ANNOTATION] == text.as_str() {
            continue;
        }
        out.push(Update {
            namespace: p["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            name: p["metadata"]["name"].as_str().unwrap_or("").to_string(),
            message: format!(
                "Generation {generation} is enforced on all {} Ready nodes",
                marks.len()
            ),
            status: text,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, ready: bool, mark: Option<&str>) -> Value {
        let mut n = json!({"metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"Unknown"}}]}});
        if let Some(m) = mark {
            n["metadata"]["annotations"] = json!({APPLIED_ANNOTATION: m});
        }
        n
    }

    fn policy(name: &str, rv: &str, generation: i64, status: Option<&str>) -> Value {
        let mut p = json!({"metadata": {"name": name, "namespace": "a",
            "resourceVersion": rv, "generation": generation}});
        if let Some(s) = status {
            p["metadata"]["annotations"] = json!({STATUS_ANNOTATION: s});
        }
        p
    }

    #[test]
    fn a_policy_is_reported_once_every_ready_node_has_its_revision() {
        let pols = [policy("p", "10", 1, None)];
        // One Ready node is behind: nothing yet.
        let nodes = [node("n1", true, Some("12")), node("n2", true, Some("9"))];
        assert!(plan(&pols, &nodes).is_empty());
        // A node that is not Ready does not hold it back.
        let nodes = [
            node("n1", true, Some("12")),
            node("n2", true, Some("10")),
            node("n3", false, None),
        ];
        let u = plan(&pols, &nodes);
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].status, "generation 1 programmed on all 2 Ready nodes");
        assert_eq!((u[0].namespace.as_str(), u[0].name.as_str()), ("a", "p"));
        // Written (its revision moved past the marks): the same text is not written again.
        let pols = [policy("p", "13", 1, Some(&u[0].status))];
        assert!(plan(&pols, &nodes).is_empty());
    }

    #[test]
    fn a_new_generation_is_reported_again_and_a_node_without_the_loop_holds_it_back() {
        let nodes = [node("n1", true, Some("20")), node("n2", true, Some("20"))];
        let old = status_text(1, 2);
        let u = plan(&[policy("p", "20", 2, Some(&old))], &nodes);
        assert_eq!(u[0].status, status_text(2, 2));
        // A Ready node that publishes nothing (its netpol loop is off) enforces nothing.
        let nodes = [node("n1", true, Some("20")), node("n2", true, None)];
        assert!(plan(&[policy("p", "20", 2, Some(&old))], &nodes).is_empty());
        assert!(plan(&[policy("p", "20", 2, None)], &[]).is_empty());
    }

    #[test]
    fn terminating_and_malformed_policies_are_left_alone() {
        let nodes = [node("n1", true, Some("50"))];
        let mut gone = policy("p", "10", 1, None);
        gone["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        let odd = json!({"metadata": {"name": "q", "namespace": "a", "resourceVersion": "x"}});
        assert!(plan(&[gone, odd], &nodes).is_empty());
        assert_eq!(
            status_text(3, 1),
            "generation 3 programmed on all 1 Ready node"
        );
    }
}

//! The NetworkPolicy status loop: policies and Nodes (with the marks each agent publishes)
//! from watch-fed caches in, the annotations and `Programmed` events
//! `moat_controllers::netpolstatus::plan` asks for out.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use moat_controllers::netpolstatus::{STATUS_ANNOTATION, plan};
use serde_json::json;

use crate::Api;
use crate::cache::Cache;

pub(crate) fn netpol_status_loop(
    c: Api,
    rx: mpsc::Receiver<()>,
    policies: Arc<Cache>,
    nodes: Arc<Cache>,
) {
    let mut pace = crate::Pace::new(Duration::from_millis(200));
    while pace.wait(&rx) {
        if !policies.synced() || !nodes.synced() {
            continue;
        }
        let pols: Vec<serde_json::Value> =
            policies.snapshot().iter().map(|v| (**v).clone()).collect();
        let ns: Vec<serde_json::Value> = nodes.snapshot().iter().map(|v| (**v).clone()).collect();
        for u in plan(&pols, &ns) {
            let path = format!(
                "/apis/networking.k8s.io/v1/namespaces/{}/networkpolicies/{}",
                u.namespace, u.name
            );
            match c.merge_patch(
                &path,
                &json!({"metadata": {"annotations": {STATUS_ANNOTATION: u.status}}}),
            ) {
                Ok(obj) => crate::event(
                    &c,
                    &u.namespace,
                    &obj,
                    "Normal",
                    "Programmed",
                    &u.message,
                    "moat-netpol-status",
                ),
                // Deleted meanwhile, or a conflict: the next pass recomputes.
                Err(e) => tracing::debug!(error = %e, policy = %u.name, "NetworkPolicy status"),
            }
        }
    }
}

//! The DaemonSet controller loop: lists DaemonSets, the nodes, and the pods and
//! ControllerRevisions of their namespaces (fresh, so a pod created by the previous pass is
//! never created twice) and applies `moat_controllers::daemonset` plans through the API.

use std::sync::mpsc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{Value, json};

use crate::{Api, ClientError, by_ns, create_and_delete_pods, strip_times, typed};

const COMPONENT: &str = "daemonset-controller";

pub(crate) fn daemonsets_loop(c: Api, rx: mpsc::Receiver<()>) {
    let mut pace = crate::Pace::new(Duration::from_millis(300));
    while pace.wait(&rx) {
        if let Err(e) = pass(&c) {
            tracing::debug!(error = %e, "daemonset controller pass");
        }
    }
}

fn pass(c: &Api) -> Result<(), ClientError> {
    let (dss, _) = c.list("/apis/apps/v1/daemonsets")?;
    if dss.is_empty() {
        return Ok(());
    }
    let (nodes, _) = c.list("/api/v1/nodes")?;
    let nodes = typed::<Node>(&nodes);
    let now = chrono::Utc::now().timestamp();
    for (ns, dss) in by_ns(&dss) {
        let (pods, _) = c.list(&format!("/api/v1/namespaces/{ns}/pods"))?;
        let pods = typed::<Pod>(&pods);
        let (revs, _) = c.list(&format!(
            "/apis/apps/v1/namespaces/{ns}/controllerrevisions"
        ))?;
        let revs = typed::<ControllerRevision>(&revs);
        for dv in &dss {
            let Ok(ds) = serde_json::from_value::<DaemonSet>(dv.clone()) else {
                continue;
            };
            let plan = moat_controllers::daemonset::reconcile(&ds, &nodes, &pods, &revs, now);
            if let Err(e) = apply(c, &ns, dv, &plan) {
                tracing::debug!(error = %e, daemonset = ?ds.metadata.name, "daemonset sync");
            }
        }
    }
    Ok(())
}

fn apply(
    c: &Api,
    ns: &str,
    dv: &Value,
    plan: &moat_controllers::daemonset::DsPlan,
) -> Result<(), ClientError> {
    let revs_path = format!("/apis/apps/v1/namespaces/{ns}/controllerrevisions");
    if let Some(r) = &plan.create_revision {
        let mut v = serde_json::to_value(r).unwrap_or_default();
        v["apiVersion"] = json!("apps/v1");
        v["kind"] = json!("ControllerRevision");
        match c.create(&revs_path, &v) {
            Ok(_) => {}
            Err(e) if e.code() == Some(409) => {}
            Err(e) => return Err(e),
        }
    }
    if let Some((name, revision)) = &plan.renumber {
        c.merge_patch(
            &format!("{revs_path}/{name}"),
            &json!({"revision": revision}),
        )?;
    }
    for name in &plan.delete_revisions {
        c.delete(&format!("{revs_path}/{name}"))?;
    }
    create_and_delete_pods(c, ns, dv, &plan.create, &plan.delete, COMPONENT)?;
    let status = serde_json::to_value(&plan.status).unwrap_or_default();
    if strip_times(&status) != strip_times(&dv["status"]) {
        let name = dv["metadata"]["name"].as_str().unwrap_or("");
        c.merge_patch(
            &format!("/apis/apps/v1/namespaces/{ns}/daemonsets/{name}/status"),
            &json!({"status": status}),
        )?;
    }
    Ok(())
}

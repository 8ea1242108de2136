//! The Job and CronJob controller loop: lists Jobs and the pods of their namespaces (fresh,
//! after the Jobs, so a pod created by the previous pass is always seen and never created
//! twice), applies `moat_controllers::job` plans, then CronJobs against the Jobs listed,
//! applying `moat_controllers::cronjob` plans; records upstream's events. The one-second
//! resync is the CronJob clock's resolution.

use std::sync::mpsc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Pod;
use moat_controllers::job::{Config, JobPlan};
use serde_json::{Value, json};

use crate::{Api, ClientError, by_ns, create_and_delete_pods, event, typed};

const COMPONENT: &str = "job-controller";
const CRON_COMPONENT: &str = "cronjob-controller";

pub(crate) fn jobs_loop(c: Api, rx: mpsc::Receiver<()>, cfg: Config) {
    let mut pace = crate::Pace::new(Duration::from_millis(300));
    while pace.wait(&rx) {
        if let Err(e) = pass(&c, &cfg) {
            tracing::debug!(error = %e, "job controller pass");
        }
    }
}

fn pass(c: &Api, cfg: &Config) -> Result<(), ClientError> {
    let (jobs, _) = c.list("/apis/batch/v1/jobs")?;
    let by = by_ns(&jobs);
    let result = sync_jobs(c, cfg, by.clone());
    let (crons, _) = c.list("/apis/batch/v1/cronjobs")?;
    let now = jiff::Timestamp::now();
    for (ns, cjs) in by_ns(&crons) {
        let ns_jobs = typed::<Job>(by.get(&ns).map(Vec::as_slice).unwrap_or(&[]));
        for cv in &cjs {
            let Ok(cj) = serde_json::from_value::<CronJob>(cv.clone()) else {
                continue;
            };
            let plan = moat_controllers::cronjob::reconcile(&cj, &ns_jobs, now);
            if let Err(e) = apply_cron(c, &ns, cv, &plan) {
                tracing::debug!(error = %e, cronjob = ?cj.metadata.name, "cronjob sync");
            }
        }
    }
    result
}

fn apply_cron(
    c: &Api,
    ns: &str,
    cv: &Value,
    plan: &moat_controllers::cronjob::CronPlan,
) -> Result<(), ClientError> {
    let name = cv["metadata"]["name"].as_str().unwrap_or("");
    let jobs_path = format!("/apis/batch/v1/namespaces/{ns}/jobs");
    for j in &plan.delete {
        c.delete_with(&format!("{jobs_path}/{j}"), "Background")?;
    }
    if let Some(j) = &plan.create {
        let mut v = serde_json::to_value(j).unwrap_or_default();
        v["apiVersion"] = json!("batch/v1");
        v["kind"] = json!("Job");
        match c.create(&jobs_path, &v) {
            Ok(_) => {}
            // Created by an earlier pass whose status write did not land.
            Err(e) if e.code() == Some(409) => {}
            Err(e) => {
                event(
                    c,
                    ns,
                    cv,
                    "Warning",
                    "FailedCreate",
                    &format!("Error creating job: {e}"),
                    CRON_COMPONENT,
                );
                return Err(e);
            }
        }
    }
    if let Some(st) = &plan.status {
        let new = serde_json::to_value(st).unwrap_or_default();
        c.merge_patch(
            &format!("/apis/batch/v1/namespaces/{ns}/cronjobs/{name}/status"),
            &json!({"status": status_patch(&cv["status"], &new)}),
        )?;
    }
    for e in &plan.events {
        let ty = if e.warning { "Warning" } else { "Normal" };
        event(c, ns, cv, ty, e.reason, &e.message, CRON_COMPONENT);
    }
    Ok(())
}

fn sync_jobs(
    c: &Api,
    cfg: &Config,
    by: std::collections::BTreeMap<String, Vec<Value>>,
) -> Result<(), ClientError> {
    for (ns, jobs) in by {
        // Finished Jobs whose TTL is not set need nothing: skip listing for them.
        if jobs.iter().all(|j| {
            serde_json::from_value::<Job>(j.clone()).is_ok_and(|j| {
                moat_controllers::job::finished(&j)
                    && j.spec
                        .as_ref()
                        .is_none_or(|s| s.ttl_seconds_after_finished.is_none())
            })
        }) {
            continue;
        }
        let (pods, _) = c.list(&format!("/api/v1/namespaces/{ns}/pods"))?;
        let pods = typed::<Pod>(&pods);
        let now = jiff::Timestamp::now();
        let work: Vec<(&Value, JobPlan)> = jobs
            .iter()
            .filter_map(|jv| {
                let job = serde_json::from_value::<Job>(jv.clone()).ok()?;
                let plan = moat_controllers::job::reconcile(&job, &pods, now, cfg);
                (plan != JobPlan::default() && !plan_is_only_requeue(&plan)).then_some((jv, plan))
            })
            .collect();
        apply_all(c, &ns, &work);
    }
    Ok(())
}

fn plan_is_only_requeue(p: &JobPlan) -> bool {
    p.create.is_empty()
        && p.delete.is_empty()
        && p.status.is_none()
        && !p.delete_job
        && p.events.is_empty()
}

/// Applies the plans of a pass with a few concurrent writers (upstream runs five Job
/// syncs at once): one after the other, a burst of Jobs waited on each other's writes.
fn apply_all(c: &Api, ns: &str, work: &[(&Value, JobPlan)]) {
    const WORKERS: usize = 8;
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..WORKERS.min(work.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((jv, plan)) = work.get(i) else {
                        break;
                    };
                    if let Err(e) = apply(c, ns, jv, plan) {
                        tracing::debug!(error = %e, job = ?jv["metadata"]["name"], "job sync");
                    }
                }
            });
        }
    });
}

/// A merge patch turning `old` into `new` at the top level of a status: keys `new` lacks
/// are nulled (a merge patch otherwise leaves them, e.g. startTime cleared on suspend).
fn status_patch(old: &Value, new: &Value) -> Value {
    let mut p = new.clone();
    if let (Some(o), Some(pm)) = (old.as_object(), p.as_object_mut()) {
        for k in o.keys() {
            pm.entry(k.clone()).or_insert(Value::Null);
        }
    }
    p
}

fn apply(c: &Api, ns: &str, jv: &Value, plan: &JobPlan) -> Result<(), ClientError> {
    let name = jv["metadata"]["name"].as_str().unwrap_or("");
    let job_path = format!("/apis/batch/v1/namespaces/{ns}/jobs/{name}");
    if plan.delete_job {
        // The pods go with it: the garbage collector follows their ownerReferences.
        return c.delete_with(&job_path, "Background");
    }
    create_and_delete_pods(c, ns, jv, &plan.create, &plan.delete, COMPONENT)?;
    if let Some(st) = &plan.status {
        let new = serde_json::to_value(st).unwrap_or_default();
        c.merge_patch(
            &format!("{job_path}/status"),
            &json!({"status": status_patch(&jv["status"], &new)}),
        )?;
    }
    for e in &plan.events {
        let ty = if e.warning { "Warning" } else { "Normal" };
        event(c, ns, jv, ty, e.reason, &e.message, COMPONENT);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_patches_null_what_the_new_status_dropped() {
        let p = status_patch(
            &json!({"startTime": "t", "active": 1}),
            &json!({"active": 0}),
        );
        assert_eq!(p, json!({"active": 0, "startTime": null}));
    }
}

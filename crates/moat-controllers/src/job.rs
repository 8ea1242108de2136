//! Job reconcile, as upstream's Job controller decides it: run pods from the template until
//! `completions` succeed (NonIndexed: any pods; Indexed: one success per index
//! `0..completions`), at most `parallelism` at a time; replace failed pods after an
//! exponential back-off until more than `backoffLimit` have failed; apply
//! `podFailurePolicy` rules (FailJob / Ignore / Count) to each failed pod; fail at
//! `activeDeadlineSeconds`; stop and resume on `suspend`; delete the finished Job after
//! `ttlSecondsAfterFinished`. Terminal conditions are written in two steps as upstream does
//! since 1.31: `SuccessCriteriaMet`/`FailureTarget` when decided, `Complete`/`Failed` once no
//! pod of the Job is still running.
//!
//! Simplification (documented in STATUS.md): upstream tracks finished pods with the
//! `batch.kubernetes.io/job-tracking` finalizer and `status.uncountedTerminatedPods`, so a
//! finished pod deleted before it was counted is still counted. Here the counts are taken
//! from the pods that exist, never lowered below what the status already records, and
//! completed indexes are unioned with `status.completedIndexes`; a pod deleted by someone
//! else before any pass saw it finish is not counted. No pod carries a finalizer.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

use crate::pods;

/// The completion index of a pod of an Indexed Job (annotation, and label since 1.28).
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// The environment variable carrying it in every container.
pub const COMPLETION_INDEX_ENV: &str = "JOB_COMPLETION_INDEX";

/// Back-off between pod failures: `base * 2^(failures-1)`, at most `max` (upstream's
/// DefaultJobPodFailureBackOff and MaxJobPodFailureBackOff).
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub backoff_base_secs: i64,
    pub backoff_max_secs: i64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            backoff_base_secs: 10,
            backoff_max_secs: 600,
        }
    }
}

/// An event the controller records on the Job.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// What the Job controller should write.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobPlan {
    /// Pods to create (labels, annotations, controller ref, index env already set).
    pub create: Vec<Pod>,
    /// Names of the Job's pods to delete.
    pub delete: Vec<String>,
    /// The status to write if it differs from the stored one.
    pub status: Option<JobStatus>,
    /// The finished Job's TTL has passed: delete it (its pods go with it, by the GC).
    pub delete_job: bool,
    /// Come back after this many seconds even if nothing changes (back-off, deadline, TTL).
    pub requeue_after: Option<i64>,
    pub events: Vec<Event>,
}

/// The controller ownerReference a Job puts on its pods.
pub fn owner_ref(job: &Job) -> OwnerReference {
    OwnerReference {
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        name: job.metadata.name.clone().unwrap_or_default(),
        uid: job.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn has_condition(st: &JobStatus, ty: &str) -> Option<JobCondition> {
    st.conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == ty && c.status == "True")
        .cloned()
}

/// Whether the Job has finished (Complete or Failed is True).
pub fn finished(job: &Job) -> bool {
    job.status.as_ref().is_some_and(|s| {
        has_condition(s, "Complete").is_some() || has_condition(s, "Failed").is_some()
    })
}

fn condition(ty: &str, status: &str, reason: &str, message: &str, now: Timestamp) -> JobCondition {
    JobCondition {
        type_: ty.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// Sets condition `c` (replacing one of its type; keeping the old times when nothing but
/// the times changed, so a status is not rewritten every pass).
fn set_condition(st: &mut JobStatus, c: JobCondition) {
    let cs = st.conditions.get_or_insert_with(Vec::new);
    match cs.iter_mut().find(|x| x.type_ == c.type_) {
        Some(old) if old.status == c.status && old.reason == c.reason => {}
        Some(old) => *old = c,
        None => cs.push(c),
    }
}

fn index_of(p: &Pod) -> Option<i32> {
    let from = |m: Option<&BTreeMap<String, String>>| {
        m.and_then(|m| m.get(COMPLETION_INDEX))
            .and_then(|v| v.parse::<i32>().ok())
    };
    from(p.metadata.annotations.as_ref()).or_else(|| from(p.metadata.labels.as_ref()))
}

/// Parses `status.completedIndexes` ("1,3-5,7").
pub fn parse_indexes(s: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(n) = part.parse() {
                    out.insert(n);
                }
            }
        }
    }
    out
}

/// Formats indexes as upstream does: ascending, any run of consecutive indexes as `a-b`.
pub fn format_indexes(set: &BTreeSet<i32>) -> String {
    let mut parts = Vec::new();
    let mut it = set.iter().copied().peekable();
    while let Some(start) = it.next() {
        let mut end = start;
        while it.peek() == Some(&(end + 1)) {
            end += 1;
            it.next();
        }
        parts.push(if end == start {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    parts.join(",")
}

/// A new pod from the Job's template; `index` for Indexed Jobs.
pub fn pod_from_template(job: &Job, index: Option<i32>) -> Pod {
    let name = job.metadata.name.clone().unwrap_or_default();
    let tmpl = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let meta = tmpl.metadata.unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    let mut spec = tmpl.spec.unwrap_or_default();
    let generate_name = match index {
        Some(i) => {
            labels.insert(COMPLETION_INDEX.into(), i.to_string());
            annotations.insert(COMPLETION_INDEX.into(), i.to_string());
            if spec.hostname.is_none() {
                spec.hostname = Some(format!("{name}-{i}"));
            }
            let env = EnvVar {
                name: COMPLETION_INDEX_ENV.into(),
                value: None,
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        api_version: Some("v1".into()),
                        field_path: format!("metadata.annotations['{COMPLETION_INDEX}']"),
                    }),
                    ..Default::default()
                }),
            };
            for c in spec
                .containers
                .iter_mut()
                .chain(spec.init_containers.iter_mut().flatten())
            {
                let envs = c.env.get_or_insert_with(Vec::new);
                if !envs.iter().any(|e| e.name == COMPLETION_INDEX_ENV) {
                    // First, so the template's own variables can refer to it.
                    envs.insert(0, env.clone());
                }
            }
            format!("{name}-{i}-")
        }
        None => format!("{name}-"),
    };
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name),
            namespace: job.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            finalizers: meta.finalizers,
            owner_references: Some(vec![owner_ref(job)]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

fn phase(p: &Pod) -> Option<&str> {
    p.status.as_ref().and_then(|s| s.phase.as_deref())
}

/// When a failed pod failed: its last container's finish, else when it was last changed.
fn failed_at(p: &Pod) -> Option<Timestamp> {
    let st = p.status.as_ref()?;
    let finish = st
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max();
    finish.or_else(|| {
        st.conditions
            .iter()
            .flatten()
            .filter_map(|c| c.last_transition_time.as_ref().map(|t| t.0))
            .max()
    })
}

/// What `podFailurePolicy` says about a failed pod.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    /// Fail the Job with this message.
    FailJob(String),
    Ignore,
    Count,
}

fn judge(job: &Job, p: &Pod) -> Verdict {
    let Some(pfp) = job
        .spec
        .as_ref()
        .and_then(|s| s.pod_failure_policy.as_ref())
    else {
        return Verdict::Count;
    };
    let ns = p.metadata.namespace.as_deref().unwrap_or("");
    let pn = p.metadata.name.as_deref().unwrap_or("");
    let st = p.status.clone().unwrap_or_default();
    let statuses: Vec<_> = st
        .init_container_statuses
        .iter()
        .flatten()
        .chain(st.container_statuses.iter().flatten())
        .collect();
    for (i, r) in pfp.rules.iter().enumerate() {
        let mut matched: Option<String> = None;
        if let Some(ec) = &r.on_exit_codes {
            for cs in &statuses {
                if ec.container_name.as_deref().is_some_and(|n| n != cs.name) {
                    continue;
                }
                let Some(code) = cs
                    .state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .map(|t| t.exit_code)
                else {
                    continue;
                };
                // Exit code 0 is success: never matched (upstream skips it for NotIn).
                if code == 0 {
                    continue;
                }
                let inside = ec.values.contains(&code);
                if (ec.operator == "In") == inside {
                    matched = Some(format!(
                        "Container {} for pod {ns}/{pn} failed with exit code {code} matching {} rule at index {i}",
                        cs.name, r.action
                    ));
                    break;
                }
            }
        }
        for pc in r.on_pod_conditions.iter().flatten() {
            if st
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == pc.type_ && c.status == pc.status)
            {
                matched = Some(format!(
                    "Pod {ns}/{pn} has condition {} matching {} rule at index {i}",
                    pc.type_, r.action
                ));
            }
        }
        if let Some(m) = matched {
            return match r.action.as_str() {
                "FailJob" => Verdict::FailJob(m),
                "Ignore" => Verdict::Ignore,
                _ => Verdict::Count,
            };
        }
    }
    Verdict::Count
}

/// Plans one sync of `job` given the pods of its namespace, at `now`.
pub fn reconcile(job: &Job, ns_pods: &[Pod], now: Timestamp, cfg: &Config) -> JobPlan {
    let mut plan = JobPlan::default();
    let Some(spec) = job.spec.as_ref() else {
        return plan;
    };
    if job.metadata.deletion_timestamp.is_some() {
        return plan;
    }
    let uid = job.metadata.uid.as_deref().unwrap_or("");
    let owned: Vec<&Pod> = ns_pods
        .iter()
        .filter(|p| pods::controller_uid(p) == Some(uid))
        .collect();
    let old = job.status.clone().unwrap_or_default();
    let mut st = old.clone();
    let active: Vec<&Pod> = owned
        .iter()
        .copied()
        .filter(|p| pods::is_active(p))
        .collect();
    let terminating = owned
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_some()
                && !matches!(phase(p), Some("Succeeded" | "Failed"))
        })
        .count();
    let delete_active = |plan: &mut JobPlan| {
        plan.delete
            .extend(active.iter().filter_map(|p| p.metadata.name.clone()));
    };

    // A finished Job only waits for its TTL.
    if finished(job) {
        delete_active(&mut plan);
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            let done = old
                .completion_time
                .as_ref()
                .map(|t| t.0)
                .or_else(|| {
                    old.conditions
                        .iter()
                        .flatten()
                        .find(|c| {
                            (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True"
                        })
                        .and_then(|c| c.last_transition_time.as_ref().map(|t| t.0))
                })
                .unwrap_or(now);
            let left = done.as_second() + i64::from(ttl) - now.as_second();
            if left <= 0 {
                plan.delete_job = true;
            } else {
                plan.requeue_after = Some(left);
            }
        }
        return plan;
    }

    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let completions = spec.completions;
    let parallelism = spec.parallelism.unwrap_or(1).max(0);

    // Count finished pods.
    let mut fail_job: Option<String> = None;
    let mut failed_pods = 0i32;
    let mut last_failure: Option<Timestamp> = None;
    let mut succeeded_pods = 0i32;
    let mut done_indexes = parse_indexes(old.completed_indexes.as_deref().unwrap_or(""));
    for p in &owned {
        match phase(p) {
            Some("Succeeded") => {
                succeeded_pods += 1;
                if indexed
                    && let Some(i) = index_of(p)
                    && completions.is_some_and(|c| i >= 0 && i < c)
                {
                    done_indexes.insert(i);
                }
            }
            Some("Failed") => match judge(job, p) {
                Verdict::FailJob(m) => {
                    failed_pods += 1;
                    fail_job.get_or_insert(m);
                }
                Verdict::Ignore => {}
                Verdict::Count => {
                    failed_pods += 1;
                    last_failure = last_failure.max(failed_at(p));
                }
            },
            _ => {}
        }
    }
    let succeeded = if indexed {
        i32::try_from(done_indexes.len()).unwrap_or(i32::MAX)
    } else {
        succeeded_pods.max(old.succeeded.unwrap_or(0))
    };
    let failed = failed_pods.max(old.failed.unwrap_or(0));
    st.succeeded = Some(succeeded);
    st.failed = Some(failed);
    if indexed {
        st.completed_indexes = Some(format_indexes(&done_indexes));
    }
    st.active = Some(i32::try_from(active.len()).unwrap_or(i32::MAX));
    st.ready = Some(
        i32::try_from(active.iter().filter(|p| pods::is_ready(p)).count()).unwrap_or(i32::MAX),
    );
    st.terminating = Some(i32::try_from(terminating).unwrap_or(i32::MAX));
    st.uncounted_terminated_pods = Some(UncountedTerminatedPods::default());

    // A decision already taken (the interim conditions) stands.
    let failure_target = has_condition(&old, "FailureTarget");
    let success_met = has_condition(&old, "SuccessCriteriaMet");
    let mut failure: Option<(&'static str, String)> = failure_target.map(|c| {
        let reason = match c.reason.as_deref() {
            Some("BackoffLimitExceeded") => "BackoffLimitExceeded",
            Some("DeadlineExceeded") => "DeadlineExceeded",
            _ => "PodFailurePolicy",
        };
        (reason, c.message.unwrap_or_default())
    });
    let suspended = spec.suspend == Some(true);
    if failure.is_none() && success_met.is_none() {
        let on_failure = spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            == Some("OnFailure");
        // Under OnFailure the kubelet restarts containers in place: their restarts count
        // against the limit (upstream's pastBackoffLimitOnFailure).
        let restarts: i32 = active
            .iter()
            .filter_map(|p| p.status.as_ref())
            .flat_map(|s| {
                s.init_container_statuses
                    .iter()
                    .flatten()
                    .chain(s.container_statuses.iter().flatten())
            })
            .map(|c| c.restart_count)
            .sum();
        let limit = spec.backoff_limit.unwrap_or(6);
        let past_on_failure = on_failure
            && if limit == 0 {
                restarts > 0
            } else {
                restarts >= limit
            };
        if let Some(m) = fail_job {
            failure = Some(("PodFailurePolicy", m));
        } else if failed > limit || past_on_failure {
            failure = Some((
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit".into(),
            ));
        } else if let (Some(ads), Some(start), false) = (
            spec.active_deadline_seconds,
            old.start_time.as_ref(),
            suspended,
        ) {
            let left = start.0.as_second() + ads - now.as_second();
            if left <= 0 {
                failure = Some((
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline".into(),
                ));
            } else {
                plan.requeue_after = Some(left);
            }
        }
    }

    if let Some((reason, message)) = failure {
        delete_active(&mut plan);
        set_condition(
            &mut st,
            condition("FailureTarget", "True", reason, &message, now),
        );
        if active.is_empty() && terminating == 0 {
            set_condition(&mut st, condition("Failed", "True", reason, &message, now));
            plan.events.push(Event {
                warning: true,
                reason,
                message,
            });
        }
        plan.status = Some(st).filter(|s| *s != old);
        return plan;
    }

    let complete = success_met.is_some()
        || match (indexed, completions) {
            (_, Some(c)) => succeeded >= c,
            // Work-queue Jobs: one success and nothing else running.
            (false, None) => succeeded > 0 && active.is_empty(),
            (true, None) => false,
        };
    if complete {
        delete_active(&mut plan);
        let (reason, message) = (
            "CompletionsReached",
            "Reached expected number of succeeded pods",
        );
        set_condition(
            &mut st,
            condition("SuccessCriteriaMet", "True", reason, message, now),
        );
        if active.is_empty() && terminating == 0 {
            set_condition(&mut st, condition("Complete", "True", reason, message, now));
            st.completion_time = Some(Time(now));
            plan.events.push(Event {
                warning: false,
                reason: "Completed",
                message: "Job completed".into(),
            });
        }
        plan.status = Some(st).filter(|s| *s != old);
        return plan;
    }

    if suspended {
        delete_active(&mut plan);
        if has_condition(&old, "Suspended").is_none() {
            set_condition(
                &mut st,
                condition("Suspended", "True", "JobSuspended", "Job suspended", now),
            );
            // The deadline counts from the last resume.
            st.start_time = None;
            plan.events.push(Event {
                warning: false,
                reason: "Suspended",
                message: "Job suspended".into(),
            });
        }
        plan.status = Some(st).filter(|s| *s != old);
        return plan;
    }
    if has_condition(&old, "Suspended").is_some() {
        set_condition(
            &mut st,
            condition("Suspended", "False", "JobResumed", "Job resumed", now),
        );
        plan.events.push(Event {
            warning: false,
            reason: "Resumed",
            message: "Job resumed".into(),
        });
    }
    if st.start_time.is_none() {
        st.start_time = Some(Time(now));
        if let Some(ads) = spec.active_deadline_seconds {
            plan.requeue_after = Some(ads);
        }
    }

    // Pods to run. Under podReplacementPolicy Failed a terminating pod still holds its
    // place until it is gone.
    let holding = if spec.pod_replacement_policy.as_deref() == Some("Failed") {
        terminating
    } else {
        0
    };
    let running = active.len() + holding;
    let mut want_new: Vec<Option<i32>> = Vec::new();
    if indexed {
        let c = completions.unwrap_or(0);
        let mut seen: BTreeSet<i32> = BTreeSet::new();
        let mut dup: Vec<&Pod> = Vec::new();
        for p in &active {
            match index_of(p) {
                Some(i) if i >= 0 && i < c && !done_indexes.contains(&i) && seen.insert(i) => {}
                _ => dup.push(p),
            }
        }
        plan.delete
            .extend(dup.iter().filter_map(|p| p.metadata.name.clone()));
        let busy = running - dup.len();
        let room = usize::try_from(parallelism)
            .unwrap_or(0)
            .saturating_sub(busy);
        want_new = (0..c)
            .filter(|i| !done_indexes.contains(i) && !seen.contains(i))
            .take(room)
            .map(Some)
            .collect();
    } else {
        let want = match completions {
            Some(c) => (c - succeeded).clamp(0, parallelism),
            None if succeeded > 0 => 0,
            None => parallelism,
        };
        let want = usize::try_from(want).unwrap_or(0);
        if running < want {
            want_new = vec![None; want - running];
        } else if active.len() > want && (completions.is_some() || succeeded == 0) {
            // (A work-queue Job with a success lets its other pods finish on their own.)
            let mut extra = active.clone();
            extra.sort_by(|a, b| pods::deletion_order(a, b));
            plan.delete.extend(
                extra[..active.len() - want]
                    .iter()
                    .filter_map(|p| p.metadata.name.clone()),
            );
        }
    }
    if !want_new.is_empty() && failed_pods > 0 {
        // Exponential back-off after failures, from the latest one.
        let exp = u32::try_from(failed_pods - 1).unwrap_or(0).min(30);
        let delay = cfg
            .backoff_base_secs
            .saturating_mul(1i64 << exp)
            .min(cfg.backoff_max_secs);
        let ready_at = last_failure.map_or(0, |t| t.as_second()) + delay;
        if ready_at > now.as_second() {
            let wait = ready_at - now.as_second();
            plan.requeue_after = Some(plan.requeue_after.map_or(wait, |r| r.min(wait)));
            want_new.clear();
        }
    }
    plan.create = want_new
        .into_iter()
        .map(|i| pod_from_template(job, i))
        .collect();
    // Counted as active at once, as upstream does (one status write instead of two).
    let deleted = plan
        .delete
        .iter()
        .filter(|n| active.iter().any(|p| p.metadata.name.as_ref() == Some(*n)))
        .count();
    st.active = Some(
        i32::try_from(active.len() + plan.create.len() - deleted.min(active.len()))
            .unwrap_or(i32::MAX),
    );
    plan.status = Some(st).filter(|s| *s != old);
    plan
}

#[cfg(test)]
mod tests;

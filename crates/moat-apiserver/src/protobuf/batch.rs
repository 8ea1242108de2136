//! Protobuf conversions of batch/v1 bodies: the Job of `kubectl create job` (also
//! `--from=cronjob/NAME`, which carries an ownerReference and the CronJob's defaulted
//! template) and the CronJob of `kubectl create cronjob`. Strict like the rest: a field not
//! converted here is a 415 naming it.

use k8s_pb::api::batch::v1 as batch;
use serde_json::{Map, Value, json};

use super::{ProtoError, label_selector, object_meta, pod_template, put, rest};

fn job_spec(s: Option<batch::JobSpec>, at: &str) -> Result<Value, ProtoError> {
    let Some(mut s) = s else {
        return Ok(Value::Null);
    };
    let mut sm = Map::new();
    put(&mut sm, "parallelism", json!(s.parallelism.take()));
    put(&mut sm, "completions", json!(s.completions.take()));
    put(
        &mut sm,
        "activeDeadlineSeconds",
        json!(s.active_deadline_seconds.take()),
    );
    put(&mut sm, "backoffLimit", json!(s.backoff_limit.take()));
    put(
        &mut sm,
        "backoffLimitPerIndex",
        json!(s.backoff_limit_per_index.take()),
    );
    put(
        &mut sm,
        "maxFailedIndexes",
        json!(s.max_failed_indexes.take()),
    );
    put(
        &mut sm,
        "selector",
        label_selector(s.selector.take(), &format!("{at}.selector"))?,
    );
    put(&mut sm, "manualSelector", json!(s.manual_selector.take()));
    put(
        &mut sm,
        "template",
        pod_template(s.template.take(), &format!("{at}.template"))?,
    );
    put(
        &mut sm,
        "ttlSecondsAfterFinished",
        json!(s.ttl_seconds_after_finished.take()),
    );
    put(&mut sm, "completionMode", json!(s.completion_mode.take()));
    put(&mut sm, "suspend", json!(s.suspend.take()));
    put(
        &mut sm,
        "podReplacementPolicy",
        json!(s.pod_replacement_policy.take()),
    );
    put(&mut sm, "managedBy", json!(s.managed_by.take()));
    rest(&s, at)?;
    Ok(Value::Object(sm))
}

pub(super) fn job(mut j: batch::Job) -> Result<Map<String, Value>, ProtoError> {
    let mut o = Map::new();
    o.insert("metadata".into(), object_meta(j.metadata.take(), "Job")?);
    put(&mut o, "spec", job_spec(j.spec.take(), "Job.spec")?);
    j.status = None;
    rest(&j, "Job")?;
    Ok(o)
}

pub(super) fn cron_job(mut c: batch::CronJob) -> Result<Map<String, Value>, ProtoError> {
    let mut o = Map::new();
    o.insert(
        "metadata".into(),
        object_meta(c.metadata.take(), "CronJob")?,
    );
    if let Some(mut s) = c.spec.take() {
        let mut sm = Map::new();
        put(&mut sm, "schedule", json!(s.schedule.take()));
        put(&mut sm, "timeZone", json!(s.time_zone.take()));
        put(
            &mut sm,
            "startingDeadlineSeconds",
            json!(s.starting_deadline_seconds.take()),
        );
        put(
            &mut sm,
            "concurrencyPolicy",
            json!(s.concurrency_policy.take()),
        );
        put(&mut sm, "suspend", json!(s.suspend.take()));
        if let Some(mut t) = s.job_template.take() {
            let mut tm = Map::new();
            let at = "CronJob.spec.jobTemplate";
            put(&mut tm, "metadata", object_meta(t.metadata.take(), at)?);
            put(
                &mut tm,
                "spec",
                job_spec(t.spec.take(), &format!("{at}.spec"))?,
            );
            rest(&t, at)?;
            sm.insert("jobTemplate".into(), Value::Object(tm));
        }
        put(
            &mut sm,
            "successfulJobsHistoryLimit",
            json!(s.successful_jobs_history_limit.take()),
        );
        put(
            &mut sm,
            "failedJobsHistoryLimit",
            json!(s.failed_jobs_history_limit.take()),
        );
        rest(&s, "CronJob.spec")?;
        o.insert("spec".into(), Value::Object(sm));
    }
    c.status = None;
    rest(&c, "CronJob")?;
    Ok(o)
}

#[cfg(test)]
mod tests {
    use k8s_pb::api::core::v1 as core;
    use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
    use prost::Message;

    use super::super::tests::{envelope, meta};
    use super::super::to_json;
    use super::*;

    fn template() -> Option<core::PodTemplateSpec> {
        Some(core::PodTemplateSpec {
            metadata: Some(meta::ObjectMeta::default()),
            spec: Some(core::PodSpec {
                containers: vec![core::Container {
                    name: Some("c".into()),
                    image: Some("busybox".into()),
                    command: vec!["echo".into(), "hi".into()],
                    resources: Some(core::ResourceRequirements::default()),
                    ..Default::default()
                }],
                restart_policy: Some("Never".into()),
                ..Default::default()
            }),
        })
    }

    #[test]
    fn job_from_a_cronjob_like_kubectl_create_job_from() {
        let mut m = meta("manual");
        if let Some(m) = m.as_mut() {
            m.annotations = [(
                "cronjob.kubernetes.io/instantiate".to_string(),
                "manual".to_string(),
            )]
            .into();
            m.owner_references = vec![meta::OwnerReference {
                api_version: Some("batch/v1".into()),
                kind: Some("CronJob".into()),
                name: Some("tick".into()),
                uid: Some("u-1".into()),
                controller: Some(true),
                block_owner_deletion: None,
            }];
        }
        let j = batch::Job {
            metadata: m,
            spec: Some(batch::JobSpec {
                backoff_limit: Some(6),
                completion_mode: Some("NonIndexed".into()),
                suspend: Some(false),
                template: template(),
                ..Default::default()
            }),
            status: Some(batch::JobStatus::default()),
        };
        let v = to_json(&envelope("batch/v1", "Job", j.encode_to_vec())).expect("decode");
        assert_eq!(v["kind"], "Job");
        assert_eq!(v["metadata"]["ownerReferences"][0]["kind"], "CronJob");
        assert_eq!(v["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(
            v["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"],
            "manual"
        );
        assert_eq!(v["spec"]["backoffLimit"], 6);
        assert_eq!(v["spec"]["suspend"], false);
        assert_eq!(
            v["spec"]["template"]["spec"]["containers"][0]["command"],
            json!(["echo", "hi"])
        );
    }

    #[test]
    fn unconverted_job_fields_are_refused() {
        let j = batch::Job {
            metadata: meta("p"),
            spec: Some(batch::JobSpec {
                template: template(),
                success_policy: Some(batch::SuccessPolicy {
                    rules: vec![batch::SuccessPolicyRule {
                        succeeded_count: Some(1),
                        succeeded_indexes: None,
                    }],
                }),
                ..Default::default()
            }),
            status: None,
        };
        let e = to_json(&envelope("batch/v1", "Job", j.encode_to_vec())).expect_err("415");
        assert!(e.to_string().contains("Job.spec"), "{e}");
    }

    #[test]
    fn cron_job_like_kubectl_create_cronjob() {
        let c = batch::CronJob {
            metadata: meta("tick"),
            spec: Some(batch::CronJobSpec {
                schedule: Some("*/1 * * * *".into()),
                job_template: Some(batch::JobTemplateSpec {
                    metadata: Some(meta::ObjectMeta {
                        name: Some("tick".into()),
                        ..Default::default()
                    }),
                    spec: Some(batch::JobSpec {
                        template: template(),
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
            status: None,
        };
        let v = to_json(&envelope("batch/v1", "CronJob", c.encode_to_vec())).expect("decode");
        assert_eq!(v["spec"]["schedule"], "*/1 * * * *");
        assert_eq!(
            v["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"],
            "Never"
        );
    }
}

//! CronJob plan tests: schedules and time zones, then each policy with the clock given.

use k8s_openapi::api::batch::v1::{CronJob, Job};
use serde_json::{Value, json};

use super::*;

fn ts(s: &str) -> Timestamp {
    s.parse().expect("timestamp")
}

fn cron(spec: Value, status: Value) -> CronJob {
    let mut s = json!({"schedule": "*/1 * * * *", "concurrencyPolicy": "Allow", "suspend": false,
        "successfulJobsHistoryLimit": 3, "failedJobsHistoryLimit": 1,
        "jobTemplate": {"metadata": {"labels": {"team": "ci"}},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}}});
    if let (Some(d), Some(src)) = (s.as_object_mut(), spec.as_object()) {
        for (k, v) in src {
            d.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(
        json!({"metadata": {"name": "tick", "namespace": "d", "uid": "cj-1",
        "creationTimestamp": "2026-01-01T00:00:30Z"}, "spec": s, "status": status}),
    )
    .expect("cronjob")
}

fn job(name: &str, condition: Option<&str>, start: &str) -> Job {
    let mut v = json!({"metadata": {"name": name, "namespace": "d", "uid": format!("u-{name}"),
        "creationTimestamp": start,
        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": "tick", "uid": "cj-1", "controller": true}]},
        "spec": {"template": {}}, "status": {"startTime": start}});
    if let Some(c) = condition {
        v["status"]["conditions"] = json!([{"type": c, "status": "True"}]);
        if c == "Complete" {
            v["status"]["completionTime"] = json!(start);
        }
    }
    serde_json::from_value(v).expect("job")
}

#[test]
fn schedules_parse_like_the_standard_cron_parser() {
    let s = parse("*/15 * * * *", None).expect("parse");
    assert_eq!(
        s.next_after(ts("2026-01-01T00:07:00Z")),
        Some(ts("2026-01-01T00:15:00Z"))
    );
    let h = parse("@hourly", None).expect("hourly");
    assert_eq!(
        h.next_after(ts("2026-01-01T00:07:00Z")),
        Some(ts("2026-01-01T01:00:00Z"))
    );
    // Day of month OR day of week when both are restricted (Vixie cron, robfig).
    let or = parse("0 0 13 * 5", None).expect("or");
    // 2026-01-02 is a Friday; the 13th comes later.
    assert_eq!(
        or.next_after(ts("2026-01-01T00:00:00Z")),
        Some(ts("2026-01-02T00:00:00Z"))
    );
    for bad in [
        "",
        "* * * *",
        "61 * * * *",
        "* * * * * *",
        "@sometimes",
        "a b c d e",
    ] {
        assert!(parse(bad, None).is_err(), "{bad:?} should not parse");
    }
}

#[test]
fn time_zones_come_from_the_bundled_database() {
    // 09:00 in New York is 14:00 UTC in January (EST, UTC-5).
    let s = parse("0 9 * * *", Some("America/New_York")).expect("tz");
    assert_eq!(
        s.next_after(ts("2026-01-01T00:00:00Z")),
        Some(ts("2026-01-01T14:00:00Z"))
    );
    let p = parse("TZ=Europe/Paris 0 9 * * *", None).expect("prefix");
    assert_eq!(
        p.next_after(ts("2026-01-01T00:00:00Z")),
        Some(ts("2026-01-01T08:00:00Z"))
    );
    assert!(matches!(
        parse("0 9 * * *", Some("Mars/Olympus")),
        Err(ScheduleError::TimeZone(_))
    ));
    assert!(matches!(
        parse("TZ=UTC 0 9 * * *", Some("UTC")),
        Err(ScheduleError::TzInSchedule)
    ));
    assert!(parse("0 9 * * *", Some("Local")).is_err());
}

#[test]
fn creates_one_job_per_scheduled_time_named_after_it() {
    let cj = cron(json!({}), json!({}));
    // Created at 00:00:30; at 00:01:10 the 00:01 run is due.
    let plan = reconcile(&cj, &[], ts("2026-01-01T00:01:10Z"));
    let j = plan.create.expect("job");
    let minutes = ts("2026-01-01T00:01:00Z").as_second() / 60;
    assert_eq!(j.metadata.name, Some(format!("tick-{minutes}")));
    let ann = j.metadata.annotations.as_ref().expect("annotations");
    assert_eq!(ann[SCHEDULED_TIMESTAMP], "2026-01-01T00:01:00+00:00");
    assert_eq!(j.metadata.labels.as_ref().expect("labels")["team"], "ci");
    let o = &j.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!((o.kind.as_str(), o.uid.as_str()), ("CronJob", "cj-1"));
    let st = plan.status.expect("status");
    assert_eq!(
        st.last_schedule_time,
        Some(Time(ts("2026-01-01T00:01:00Z")))
    );
    assert_eq!(plan.requeue_after, Some(50));
    // Before the first time: nothing, back at 00:01.
    let plan = reconcile(&cj, &[], ts("2026-01-01T00:00:40Z"));
    assert!(plan.create.is_none());
    assert_eq!(plan.requeue_after, Some(20));
    // Already run for 00:01: nothing until 00:02.
    let ran = cron(
        json!({}),
        json!({"lastScheduleTime": "2026-01-01T00:01:00Z"}),
    );
    assert!(
        reconcile(&ran, &[], ts("2026-01-01T00:01:59Z"))
            .create
            .is_none()
    );
}

#[test]
fn many_missed_times_run_only_the_latest_and_warn_past_100() {
    let cj = cron(
        json!({}),
        json!({"lastScheduleTime": "2026-01-01T00:00:00Z"}),
    );
    let plan = reconcile(&cj, &[], ts("2026-01-01T03:00:30Z"));
    let minutes = ts("2026-01-01T03:00:00Z").as_second() / 60;
    assert_eq!(
        plan.create.and_then(|j| j.metadata.name),
        Some(format!("tick-{minutes}"))
    );
    assert!(plan.events.iter().any(|e| e.reason == "TooManyMissedTimes"));
}

#[test]
fn starting_deadline_skips_times_missed_by_more() {
    let cj = cron(
        json!({"schedule": "0 * * * *", "startingDeadlineSeconds": 60}),
        json!({"lastScheduleTime": "2026-01-01T00:00:00Z"}),
    );
    // The 01:00 run is 5 minutes late: past its deadline, not run.
    let plan = reconcile(&cj, &[], ts("2026-01-01T01:05:00Z"));
    assert!(plan.create.is_none());
    assert_eq!(plan.requeue_after, Some(55 * 60));
    assert!(
        reconcile(&cj, &[], ts("2026-01-01T01:00:30Z"))
            .create
            .is_some()
    );
}

#[test]
fn forbid_skips_while_one_runs_and_replace_deletes_it() {
    let running = job("tick-1", None, "2026-01-01T00:01:00Z");
    let now = ts("2026-01-01T00:02:05Z");
    let status = json!({"lastScheduleTime": "2026-01-01T00:01:00Z"});
    let forbid = cron(json!({"concurrencyPolicy": "Forbid"}), status.clone());
    let plan = reconcile(&forbid, std::slice::from_ref(&running), now);
    assert!(plan.create.is_none());
    assert!(plan.events.iter().any(|e| e.reason == "JobAlreadyActive"));
    let st = plan.status.expect("status");
    assert_eq!(
        st.active.as_ref().map(|a| a[0].name.clone()),
        Some(Some("tick-1".into()))
    );
    let replace = cron(json!({"concurrencyPolicy": "Replace"}), status.clone());
    let plan = reconcile(&replace, std::slice::from_ref(&running), now);
    assert_eq!(plan.delete, ["tick-1"]);
    assert!(plan.create.is_some());
    let allow = cron(json!({}), status);
    let plan = reconcile(&allow, std::slice::from_ref(&running), now);
    assert!(plan.delete.is_empty());
    assert!(plan.create.is_some());
}

#[test]
fn suspended_cronjobs_do_not_run() {
    let cj = cron(json!({"suspend": true}), json!({}));
    assert!(
        reconcile(&cj, &[], ts("2026-01-01T00:05:00Z"))
            .create
            .is_none()
    );
}

#[test]
fn history_limits_prune_the_oldest_finished_jobs() {
    let jobs = vec![
        job("ok-1", Some("Complete"), "2026-01-01T00:01:00Z"),
        job("ok-2", Some("Complete"), "2026-01-01T00:02:00Z"),
        job("ok-3", Some("Complete"), "2026-01-01T00:03:00Z"),
        job("bad-1", Some("Failed"), "2026-01-01T00:04:00Z"),
        job("bad-2", Some("Failed"), "2026-01-01T00:05:00Z"),
        job("run", None, "2026-01-01T00:06:00Z"),
    ];
    let cj = cron(
        json!({"successfulJobsHistoryLimit": 2}),
        json!({"lastScheduleTime": "2026-01-01T00:06:00Z"}),
    );
    let plan = reconcile(&cj, &jobs, ts("2026-01-01T00:06:10Z"));
    assert_eq!(plan.delete, ["ok-1", "bad-1"]);
    let st = plan.status.expect("status");
    assert_eq!(
        st.last_successful_time,
        Some(Time(ts("2026-01-01T00:03:00Z")))
    );
    assert_eq!(st.active.as_ref().map(Vec::len), Some(1));
}

#[test]
fn a_job_already_created_for_the_time_is_not_created_again() {
    let minutes = ts("2026-01-01T00:01:00Z").as_second() / 60;
    let existing = job(&format!("tick-{minutes}"), None, "2026-01-01T00:01:00Z");
    let cj = cron(json!({}), json!({}));
    let plan = reconcile(&cj, &[existing], ts("2026-01-01T00:01:10Z"));
    assert!(plan.create.is_none());
    assert_eq!(
        plan.status.and_then(|s| s.last_schedule_time),
        Some(Time(ts("2026-01-01T00:01:00Z")))
    );
}

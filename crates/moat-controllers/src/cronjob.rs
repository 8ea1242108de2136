//! CronJob reconcile, as upstream's CronJob controller (v2) decides it: on each scheduled
//! time (a 5-field cron schedule in `timeZone`, UTC by default) create a Job from
//! `jobTemplate`, named `<cronjob>-<minutes since the epoch>` so a time is never run twice;
//! honour `concurrencyPolicy` (Allow, Forbid: skip while one runs, Replace: delete the
//! running ones first), `startingDeadlineSeconds` (a time missed by more is not run),
//! `suspend`, and the successful/failed history limits; keep `status.active`,
//! `lastScheduleTime` and `lastSuccessfulTime`. The clock is an argument.

use std::collections::BTreeMap;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

/// The scheduled time of a Job a CronJob created (RFC 3339 in the CronJob's zone).
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// Upstream gives up on counting missed times past 100 and warns.
const MAX_MISSED: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("{0}")]
    Parse(#[source] croner::errors::CronError),
    #[error("unknown time zone {0}")]
    TimeZone(String),
    #[error("cannot use both timeZone field and TZ or CRON_TZ in schedule")]
    TzInSchedule,
}

/// A parsed schedule and the zone it runs in.
pub struct Schedule {
    cron: Cron,
    tz: TimeZone,
}

/// The time zone named `name` from the tz database bundled in the binary (so validation
/// and the plan read no files and agree everywhere).
pub fn time_zone(name: &str) -> Result<TimeZone, ScheduleError> {
    if name.is_empty() || name == "Local" {
        // Upstream refuses "Local": the cluster's zone is not the user's.
        return Err(ScheduleError::TimeZone(name.to_string()));
    }
    jiff::tz::TimeZoneDatabase::bundled()
        .get(name)
        .map_err(|_| ScheduleError::TimeZone(name.to_string()))
}

/// Parses `schedule` as upstream does (robfig/cron's standard parser: five fields, the
/// `@yearly`/`@annually`/`@monthly`/`@weekly`/`@daily`/`@midnight`/`@hourly` nicknames, and
/// day-of-month/day-of-week combined with OR when both are restricted), in `time_zone`
/// (UTC when None; a `TZ=`/`CRON_TZ=` prefix in the schedule is allowed only without it).
/// croner accepts a superset (`L`, `W`, `#`); robfig's `@every` is not supported.
pub fn parse(schedule: &str, tz_name: Option<&str>) -> Result<Schedule, ScheduleError> {
    let mut expr = schedule.trim();
    let mut tz = match tz_name {
        Some(n) => time_zone(n)?,
        None => TimeZone::UTC,
    };
    for prefix in ["CRON_TZ=", "TZ="] {
        if let Some(rest) = expr.strip_prefix(prefix) {
            if tz_name.is_some() {
                return Err(ScheduleError::TzInSchedule);
            }
            let (zone, e) = rest.split_once(' ').unwrap_or((rest, ""));
            tz = time_zone(zone)?;
            expr = e.trim();
        }
    }
    let cron = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .dom_and_dow(false)
        .build()
        .parse(expr)
        .map_err(ScheduleError::Parse)?;
    Ok(Schedule { cron, tz })
}

impl Schedule {
    /// The first scheduled time strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        self.cron
            .find_next_occurrence(&t.to_zoned(self.tz.clone()), false)
            .ok()
            .map(|z| z.timestamp())
    }

    /// The last scheduled time at or before `t`.
    pub fn latest_until(&self, t: Timestamp) -> Option<Timestamp> {
        self.cron
            .find_previous_occurrence(&t.to_zoned(self.tz.clone()), true)
            .ok()
            .map(|z| z.timestamp())
    }

    /// Scheduled times in `(after, until]`, at most `cap` of them (earliest first).
    pub fn times_between(&self, after: Timestamp, until: Timestamp, cap: usize) -> Vec<Timestamp> {
        let mut out = Vec::new();
        let mut t = after;
        while out.len() < cap {
            match self.next_after(t) {
                Some(n) if n <= until => {
                    out.push(n);
                    t = n;
                }
                _ => break,
            }
        }
        out
    }

    fn zoned(&self, t: Timestamp) -> String {
        t.to_zoned(self.tz.clone())
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string()
    }
}

/// An event on the CronJob.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// What the CronJob controller should write.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CronPlan {
    /// A Job to create (named, owned, annotated).
    pub create: Option<Job>,
    /// Jobs to delete with background propagation (Replace, history limits).
    pub delete: Vec<String>,
    pub status: Option<CronJobStatus>,
    /// Seconds until the next scheduled time.
    pub requeue_after: Option<i64>,
    pub events: Vec<Event>,
}

fn finished(j: &Job) -> Option<&'static str> {
    let cs = j.status.as_ref()?.conditions.as_ref()?;
    cs.iter()
        .filter(|c| c.status == "True")
        .find_map(|c| match c.type_.as_str() {
            "Complete" => Some("Complete"),
            "Failed" => Some("Failed"),
            _ => None,
        })
}

fn owned_by(j: &Job, uid: &str) -> bool {
    j.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

fn job_ref(j: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: j.metadata.name.clone(),
        namespace: j.metadata.namespace.clone(),
        uid: j.metadata.uid.clone(),
        resource_version: j.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// The Job a CronJob creates for `scheduled`.
pub fn job_for(cj: &CronJob, scheduled: Timestamp, sched: &Schedule) -> Job {
    let name = cj.metadata.name.clone().unwrap_or_default();
    let tmpl = cj
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let meta = tmpl.metadata.unwrap_or_default();
    let mut annotations: BTreeMap<String, String> = meta.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_TIMESTAMP.into(), sched.zoned(scheduled));
    Job {
        metadata: ObjectMeta {
            name: Some(format!("{name}-{}", scheduled.as_second() / 60)),
            namespace: cj.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "CronJob".into(),
                name,
                uid: cj.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: tmpl.spec,
        status: None,
    }
}

fn started(j: &Job) -> i64 {
    j.status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .or(j.metadata.creation_timestamp.as_ref())
        .map_or(0, |t| t.0.as_second())
}

/// Plans one sync of `cj` given the Jobs of its namespace, at `now`.
pub fn reconcile(cj: &CronJob, ns_jobs: &[Job], now: Timestamp) -> CronPlan {
    let mut plan = CronPlan::default();
    let Some(spec) = cj.spec.as_ref() else {
        return plan;
    };
    if cj.metadata.deletion_timestamp.is_some() {
        return plan;
    }
    let uid = cj.metadata.uid.as_deref().unwrap_or("");
    let old = cj.status.clone().unwrap_or_default();
    let mut st = old.clone();
    let owned: Vec<&Job> = ns_jobs.iter().filter(|j| owned_by(j, uid)).collect();

    // status.active: the owned Jobs still running.
    let mut active: Vec<&Job> = owned
        .iter()
        .copied()
        .filter(|j| finished(j).is_none() && j.metadata.deletion_timestamp.is_none())
        .collect();
    active.sort_by_key(|j| (started(j), j.metadata.name.clone()));
    for r in old.active.iter().flatten() {
        let gone = !owned.iter().any(|j| j.metadata.uid == r.uid);
        let done = owned
            .iter()
            .find(|j| j.metadata.uid == r.uid)
            .and_then(|j| finished(j));
        if let Some(kind) = done {
            let n = r.name.clone().unwrap_or_default();
            plan.events.push(Event {
                warning: false,
                reason: "SawCompletedJob",
                message: format!("Saw completed job: {n}, status: {kind}"),
            });
        } else if gone {
            // Deleted by someone else: simply no longer active.
        }
    }
    for j in &owned {
        if finished(j) == Some("Complete")
            && let Some(ct) = j.status.as_ref().and_then(|s| s.completion_time.as_ref())
            && st.last_successful_time.as_ref().is_none_or(|l| l.0 < ct.0)
        {
            st.last_successful_time = Some(ct.clone());
        }
    }

    // History limits: the oldest finished Jobs beyond them go.
    for (kind, limit) in [
        ("Complete", spec.successful_jobs_history_limit.unwrap_or(3)),
        ("Failed", spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let mut done: Vec<&Job> = owned
            .iter()
            .copied()
            .filter(|j| finished(j) == Some(kind) && j.metadata.deletion_timestamp.is_none())
            .collect();
        done.sort_by_key(|j| (started(j), j.metadata.name.clone()));
        let extra = done
            .len()
            .saturating_sub(usize::try_from(limit.max(0)).unwrap_or(0));
        for j in &done[..extra] {
            if let Some(n) = &j.metadata.name {
                plan.delete.push(n.clone());
                plan.events.push(Event {
                    warning: false,
                    reason: "SuccessfulDelete",
                    message: format!("Deleted job {n}"),
                });
            }
        }
    }

    let finish = |mut plan: CronPlan, mut st: CronJobStatus, active: &[&Job]| {
        let refs: Vec<ObjectReference> = active.iter().map(|j| job_ref(j)).collect();
        st.active = (!refs.is_empty()).then_some(refs);
        plan.status = Some(st).filter(|s| *s != old);
        plan
    };

    let sched = match parse(&spec.schedule, spec.time_zone.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            // Validation refuses bad schedules; one stored before (or a zone gone from the
            // database) is reported, not retried every pass.
            plan.events.push(Event {
                warning: true,
                reason: "UnparseableSchedule",
                message: format!("unparseable schedule: {:?} : {e}", spec.schedule),
            });
            return finish(plan, st, &active);
        }
    };
    if spec.suspend == Some(true) {
        return finish(plan, st, &active);
    }

    // The latest scheduled time not yet run, looking back no further than the last run,
    // the CronJob's creation, or startingDeadlineSeconds.
    let mut earliest = old
        .last_schedule_time
        .as_ref()
        .or(cj.metadata.creation_timestamp.as_ref())
        .map_or(now, |t| t.0);
    if let Some(sds) = spec.starting_deadline_seconds {
        let limit = Timestamp::from_second(now.as_second() - sds).unwrap_or(now);
        earliest = earliest.max(limit);
    }
    let missed = sched.times_between(earliest, now, MAX_MISSED + 1);
    if let Some(next) = sched.next_after(now) {
        plan.requeue_after = Some((next.as_second() - now.as_second()).max(1));
    }
    if missed.is_empty() {
        return finish(plan, st, &active);
    }
    // The most recent time, however many were missed before it.
    let Some(scheduled) = sched.latest_until(now).filter(|t| *t > earliest) else {
        return finish(plan, st, &active);
    };
    if missed.len() > MAX_MISSED {
        plan.events.push(Event {
            warning: true,
            reason: "TooManyMissedTimes",
            message: "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew".into(),
        });
    }
    // A Job for this time may exist already (created by a pass whose status write failed).
    let want = job_for(cj, scheduled, &sched);
    if owned.iter().any(|j| j.metadata.name == want.metadata.name) {
        st.last_schedule_time = Some(Time(scheduled));
        return finish(plan, st, &active);
    }
    match spec.concurrency_policy.as_deref() {
        Some("Forbid") if !active.is_empty() => {
            plan.events.push(Event {
                warning: false,
                reason: "JobAlreadyActive",
                message: "Not starting job because prior execution is running and concurrency policy is Forbid".into(),
            });
            return finish(plan, st, &active);
        }
        Some("Replace") if !active.is_empty() => {
            for j in &active {
                if let Some(n) = &j.metadata.name {
                    plan.delete.push(n.clone());
                    plan.events.push(Event {
                        warning: false,
                        reason: "SuccessfulDelete",
                        message: format!("Deleted job {n}"),
                    });
                }
            }
            active.clear();
        }
        _ => {}
    }
    plan.events.push(Event {
        warning: false,
        reason: "SuccessfulCreate",
        message: format!(
            "Created job {}",
            want.metadata.name.as_deref().unwrap_or("")
        ),
    });
    plan.create = Some(want);
    st.last_schedule_time = Some(Time(scheduled));
    // The new Job joins status.active once it is seen (it has no uid before creation).
    finish(plan, st, &active)
}

#[cfg(test)]
mod tests;

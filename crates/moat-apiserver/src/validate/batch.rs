//! batch/v1 defaulting and validation (Job; CronJob's job template reuses the Job rules),
//! following upstream's `pkg/apis/batch` defaults, strategy (generated selectors) and
//! validation wording.

use moat_api::Cause;
use serde_json::{Value, json};

use super::{
    default_pod_spec, invalid, one_of, required, selector_matches, unsupported, validate_pod_spec,
};

/// The labels upstream's Job strategy puts on a Job's pod template (the `batch.kubernetes.io/`
/// ones and their legacy forms), and the one its generated selector matches on.
pub const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
pub const LEGACY_CONTROLLER_UID: &str = "controller-uid";
pub const JOB_NAME: &str = "batch.kubernetes.io/job-name";
pub const LEGACY_JOB_NAME: &str = "job-name";

/// Job defaults. `uid` and `name` are the Job's own (known before defaulting): unless
/// `manualSelector` is set, the selector and template labels are generated from them.
pub fn default_job(obj: &mut Value) {
    let uid = obj["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    default_job_spec(&mut obj["spec"], &uid, &name);
    // Upstream copies the template's labels to a Job without labels of its own.
    if obj["metadata"]["labels"]
        .as_object()
        .is_none_or(|l| l.is_empty())
        && let Some(tl) = obj["spec"]["template"]["metadata"]["labels"].as_object()
        && !tl.is_empty()
    {
        obj["metadata"]["labels"] = Value::Object(tl.clone());
    }
}

/// Defaults of a JobSpec; the selector is generated only when `uid` is known (a CronJob's
/// job template has none: its Jobs get theirs when they are created).
pub fn default_job_spec(spec: &mut Value, uid: &str, name: &str) {
    if !spec.is_object() {
        return;
    }
    if spec["completions"].is_null() && spec["parallelism"].is_null() {
        spec["completions"] = json!(1);
        spec["parallelism"] = json!(1);
    }
    if spec["parallelism"].is_null() {
        spec["parallelism"] = json!(1);
    }
    if spec["backoffLimit"].is_null() {
        spec["backoffLimit"] = json!(6);
    }
    if spec["completionMode"].is_null() {
        spec["completionMode"] = json!("NonIndexed");
    }
    if spec["suspend"].is_null() {
        spec["suspend"] = json!(false);
    }
    if spec["podReplacementPolicy"].is_null() {
        spec["podReplacementPolicy"] = json!(if spec["podFailurePolicy"].is_null() {
            "TerminatingOrFailed"
        } else {
            "Failed"
        });
    }
    // (Through `get_mut`: indexing a missing key mutably would create it.)
    if let Some(rules) = spec
        .get_mut("podFailurePolicy")
        .and_then(|p| p.get_mut("rules"))
        .and_then(Value::as_array_mut)
    {
        for r in rules {
            if let Some(cs) = r.get_mut("onPodConditions").and_then(Value::as_array_mut) {
                for c in cs {
                    if c["status"].is_null() {
                        c["status"] = json!("True");
                    }
                }
            }
        }
    }
    if !spec["template"]["spec"].is_null() {
        default_pod_spec(&mut spec["template"]["spec"]);
    }
    if uid.is_empty() || spec["manualSelector"] == true {
        return;
    }
    let labels = &mut spec["template"]["metadata"]["labels"];
    for (k, v) in [
        (LEGACY_CONTROLLER_UID, uid),
        (CONTROLLER_UID, uid),
        (LEGACY_JOB_NAME, name),
        (JOB_NAME, name),
    ] {
        if labels[k].is_null() {
            labels[k] = json!(v);
        }
    }
    if spec["selector"]["matchLabels"][CONTROLLER_UID].is_null() {
        spec["selector"]["matchLabels"][CONTROLLER_UID] = json!(uid);
    }
}

fn nonnegative(causes: &mut Vec<Cause>, field: &str, v: &Value) {
    if v.as_i64().is_some_and(|n| n < 0) {
        invalid(causes, field, v, "must be greater than or equal to 0");
    }
}

/// The rules of a JobSpec at `path` ("spec" for a Job, "spec.jobTemplate.spec" for a
/// CronJob). `uid` is the Job's own (None in a CronJob's template).
pub fn validate_job_spec(causes: &mut Vec<Cause>, spec: &Value, path: &str, uid: Option<&str>) {
    for f in [
        "parallelism",
        "completions",
        "activeDeadlineSeconds",
        "backoffLimit",
        "ttlSecondsAfterFinished",
    ] {
        nonnegative(causes, &format!("{path}.{f}"), &spec[f]);
    }
    match spec["completionMode"].as_str() {
        None | Some("NonIndexed") => {}
        Some("Indexed") => {
            if spec["completions"].is_null() {
                causes.push(Cause::new(
                    "FieldValueRequired",
                    format!("{path}.completions"),
                    "Required value: when completion mode is Indexed",
                ));
            }
            if spec["parallelism"].as_i64().is_some_and(|p| p > 100_000) {
                invalid(
                    causes,
                    &format!("{path}.parallelism"),
                    &spec["parallelism"],
                    "must be less than or equal to 100000 when completion mode is Indexed",
                );
            }
        }
        Some(_) => unsupported(
            causes,
            &format!("{path}.completionMode"),
            &spec["completionMode"],
            &["NonIndexed", "Indexed"],
        ),
    }
    one_of(
        causes,
        &format!("{path}.podReplacementPolicy"),
        &spec["podReplacementPolicy"],
        &["TerminatingOrFailed", "Failed"],
    );
    let tmpl = &spec["template"];
    let sel = &spec["selector"];
    if uid.is_some() {
        if sel.is_null() {
            required(causes, &format!("{path}.selector"));
        } else if !selector_matches(sel, &tmpl["metadata"]["labels"]) {
            invalid(
                causes,
                &format!("{path}.template.metadata.labels"),
                &tmpl["metadata"]["labels"],
                "`selector` does not match template `labels`",
            );
        }
        if let Some(uid) = uid
            && spec["manualSelector"] != true
            && !sel.is_null()
        {
            // A generated selector must be the one generated for this Job.
            if sel["matchLabels"][CONTROLLER_UID] != uid {
                invalid(
                    causes,
                    &format!("{path}.selector"),
                    sel,
                    "`selector` not auto-generated",
                );
            }
            if tmpl["metadata"]["labels"][CONTROLLER_UID] != uid {
                invalid(
                    causes,
                    &format!("{path}.template.metadata.labels"),
                    &tmpl["metadata"]["labels"][CONTROLLER_UID],
                    &format!("must be '{uid}'"),
                );
            }
        }
    } else if !sel.is_null() && !selector_matches(sel, &tmpl["metadata"]["labels"]) {
        invalid(
            causes,
            &format!("{path}.template.metadata.labels"),
            &tmpl["metadata"]["labels"],
            "`selector` does not match template `labels`",
        );
    }
    let ps = format!("{path}.template.spec");
    if tmpl["spec"].is_null() {
        required(causes, &format!("{ps}.containers"));
    } else {
        validate_pod_spec(causes, &tmpl["spec"], &ps, false);
        let rp = &tmpl["spec"]["restartPolicy"];
        if !matches!(rp.as_str(), Some("OnFailure" | "Never")) {
            unsupported(
                causes,
                &format!("{ps}.restartPolicy"),
                rp,
                &["OnFailure", "Never"],
            );
        } else if !spec["podFailurePolicy"].is_null() && rp != "Never" {
            invalid(
                causes,
                &format!("{ps}.restartPolicy"),
                rp,
                "only \"Never\" is supported when podFailurePolicy is specified",
            );
        }
    }
    validate_pod_failure_policy(causes, spec, path);
}

fn validate_pod_failure_policy(causes: &mut Vec<Cause>, spec: &Value, path: &str) {
    let pfp = &spec["podFailurePolicy"];
    if pfp.is_null() {
        return;
    }
    let rules = pfp["rules"].as_array().cloned().unwrap_or_default();
    if rules.len() > 20 {
        causes.push(Cause::new(
            "FieldValueTooMany",
            format!("{path}.podFailurePolicy.rules"),
            format!("Too many: {}: must have at most 20 items", rules.len()),
        ));
    }
    let containers: Vec<&str> = spec["template"]["spec"]["containers"]
        .as_array()
        .into_iter()
        .chain(spec["template"]["spec"]["initContainers"].as_array())
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for (i, r) in rules.iter().enumerate() {
        let at = format!("{path}.podFailurePolicy.rules[{i}]");
        let actions: &[&str] = if spec["backoffLimitPerIndex"].is_null() {
            &["FailJob", "Ignore", "Count"]
        } else {
            &["FailJob", "FailIndex", "Ignore", "Count"]
        };
        if r["action"].is_null() {
            required(causes, &format!("{at}.action"));
        } else {
            one_of(causes, &format!("{at}.action"), &r["action"], actions);
        }
        let codes = &r["onExitCodes"];
        let conds = r["onPodConditions"].as_array().filter(|c| !c.is_empty());
        match (codes.is_null(), conds) {
            (true, None) => invalid(
                causes,
                &at,
                &json!(null),
                "specifying one of OnExitCodes and OnPodConditions is required",
            ),
            (false, Some(_)) => invalid(
                causes,
                &at,
                &json!(null),
                "specifying both OnExitCodes and OnPodConditions is not supported",
            ),
            _ => {}
        }
        if !codes.is_null() {
            let cat = format!("{at}.onExitCodes");
            if codes["operator"].is_null() {
                required(causes, &format!("{cat}.operator"));
            } else {
                one_of(
                    causes,
                    &format!("{cat}.operator"),
                    &codes["operator"],
                    &["In", "NotIn"],
                );
            }
            if let Some(c) = codes["containerName"].as_str()
                && !containers.contains(&c)
            {
                invalid(
                    causes,
                    &format!("{cat}.containerName"),
                    &codes["containerName"],
                    "must be one of the container or initContainer names in the pod template",
                );
            }
            let vals: Vec<i64> = codes["values"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_i64).collect())
                .unwrap_or_default();
            if vals.is_empty() {
                invalid(
                    causes,
                    &format!("{cat}.values"),
                    &codes["values"],
                    "at least one value is required",
                );
            }
            for (j, v) in vals.iter().enumerate() {
                if *v == 0 && codes["operator"] == "In" {
                    invalid(
                        causes,
                        &format!("{cat}.values[{j}]"),
                        &json!(v),
                        "must not be 0 for the In operator",
                    );
                }
                if j > 0 && vals[j - 1] >= *v {
                    invalid(
                        causes,
                        &format!("{cat}.values[{j}]"),
                        &json!(v),
                        "must be ordered",
                    );
                }
            }
        }
        for (j, c) in conds.into_iter().flatten().enumerate() {
            let cat = format!("{at}.onPodConditions[{j}]");
            if c["type"].as_str().is_none_or(str::is_empty) {
                required(causes, &format!("{cat}.type"));
            }
            one_of(
                causes,
                &format!("{cat}.status"),
                &c["status"],
                &["True", "False", "Unknown"],
            );
        }
    }
}

/// A Job's own rules (metadata is checked by the caller).
pub fn validate_job(causes: &mut Vec<Cause>, obj: &Value) {
    let uid = obj["metadata"]["uid"].as_str().unwrap_or("");
    validate_job_spec(causes, &obj["spec"], "spec", Some(uid));
}

/// CronJob defaults (upstream's SetDefaults_CronJob), with the job template's JobSpec
/// defaulted as a Job's is, minus the selector (each Job gets its own).
pub fn default_cron_job(obj: &mut Value) {
    let spec = &mut obj["spec"];
    if !spec.is_object() {
        return;
    }
    for (k, v) in [
        ("concurrencyPolicy", json!("Allow")),
        ("suspend", json!(false)),
        ("successfulJobsHistoryLimit", json!(3)),
        ("failedJobsHistoryLimit", json!(1)),
    ] {
        if spec[k].is_null() {
            spec[k] = v;
        }
    }
    default_job_spec(&mut spec["jobTemplate"]["spec"], "", "");
}

/// A CronJob's rules: schedule and timeZone (parsed as the controller will run them),
/// policies, limits, and the job template as a JobSpec.
pub fn validate_cron_job(causes: &mut Vec<Cause>, obj: &Value) {
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    // Its Jobs are named `<name>-<minutes>` (11 digits) within the 63 of a label value.
    if name.len() > 52 {
        invalid(
            causes,
            "metadata.name",
            &obj["metadata"]["name"],
            "must be no more than 52 characters",
        );
    }
    let spec = &obj["spec"];
    match spec["schedule"].as_str() {
        None | Some("") => required(causes, "spec.schedule"),
        Some(s) => {
            if let Err(e) = moat_controllers::cronjob::parse(s, spec["timeZone"].as_str()) {
                let field = match e {
                    moat_controllers::cronjob::ScheduleError::TimeZone(_)
                        if !spec["timeZone"].is_null() =>
                    {
                        "spec.timeZone"
                    }
                    _ => "spec.schedule",
                };
                let v = if field == "spec.timeZone" {
                    &spec["timeZone"]
                } else {
                    &spec["schedule"]
                };
                let why = match &e {
                    moat_controllers::cronjob::ScheduleError::Parse(p) => {
                        format!("unparseable schedule: {p}")
                    }
                    other => other.to_string(),
                };
                invalid(causes, field, v, &why);
            }
        }
    }
    one_of(
        causes,
        "spec.concurrencyPolicy",
        &spec["concurrencyPolicy"],
        &["Allow", "Forbid", "Replace"],
    );
    for f in [
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ] {
        nonnegative(causes, &format!("spec.{f}"), &spec[f]);
    }
    if spec["jobTemplate"]["spec"].is_null() {
        required(causes, "spec.jobTemplate.spec.template.spec.containers");
    } else {
        validate_job_spec(
            causes,
            &spec["jobTemplate"]["spec"],
            "spec.jobTemplate.spec",
            None,
        );
    }
}

fn immutable(causes: &mut Vec<Cause>, field: &str, v: &Value) {
    // Upstream prints the Go value; a compact JSON form says the same.
    let shown = match v {
        Value::Object(_) | Value::Array(_) => json!("{...}"),
        other => other.clone(),
    };
    invalid(causes, field, &shown, "field is immutable");
}

/// What a Job update may not change: the selector, the pod template, completionMode,
/// podFailurePolicy, and completions (except that an Indexed Job may be scaled by changing
/// completions and parallelism together).
pub fn validate_job_update(causes: &mut Vec<Cause>, old: &Value, new: &Value) {
    let (o, n) = (&old["spec"], &new["spec"]);
    for f in [
        "selector",
        "template",
        "completionMode",
        "podFailurePolicy",
        "backoffLimitPerIndex",
        "manualSelector",
    ] {
        if o[f] != n[f] {
            immutable(causes, &format!("spec.{f}"), &n[f]);
        }
    }
    if o["completions"] != n["completions"] {
        let elastic = n["completionMode"] == "Indexed"
            && n["completions"] == n["parallelism"]
            && o["completions"] == o["parallelism"];
        if !elastic {
            immutable(causes, "spec.completions", &n["completions"]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(spec: Value) -> Value {
        let mut j =
            json!({"metadata": {"name": "pi", "namespace": "d", "uid": "u-1"}, "spec": spec});
        default_job(&mut j);
        j
    }

    fn fields(j: &Value) -> Vec<String> {
        let mut c = Vec::new();
        validate_job(&mut c, j);
        c.into_iter().map(|c| c.field).collect()
    }

    fn tmpl() -> Value {
        json!({"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}})
    }

    #[test]
    fn defaults_and_generated_selector_like_upstream() {
        let j = job(json!({"template": tmpl()}));
        let s = &j["spec"];
        assert_eq!(
            (&s["completions"], &s["parallelism"]),
            (&json!(1), &json!(1))
        );
        assert_eq!(s["backoffLimit"], 6);
        assert_eq!(s["completionMode"], "NonIndexed");
        assert_eq!(s["suspend"], false);
        assert_eq!(
            s["selector"],
            json!({"matchLabels": {CONTROLLER_UID: "u-1"}})
        );
        let l = &s["template"]["metadata"]["labels"];
        assert_eq!(l[LEGACY_CONTROLLER_UID], "u-1");
        assert_eq!(l[JOB_NAME], "pi");
        assert_eq!(l[LEGACY_JOB_NAME], "pi");
        // The Job takes its template's labels when it has none.
        assert_eq!(j["metadata"]["labels"][JOB_NAME], "pi");
        assert!(fields(&j).is_empty(), "{:?}", fields(&j));
        assert!(
            s.get("podFailurePolicy").is_none(),
            "defaulting adds no podFailurePolicy: {s}"
        );
        // parallelism alone leaves completions unset (work-queue Jobs).
        let w = job(json!({"parallelism": 3, "template": tmpl()}));
        assert!(w["spec"]["completions"].is_null());
    }

    #[test]
    fn bad_specs_get_upstream_field_causes() {
        let j = job(
            json!({"completionMode": "Sometimes", "parallelism": -1, "backoffLimit": -2, "template": tmpl()}),
        );
        assert_eq!(
            fields(&j),
            [
                "spec.parallelism",
                "spec.backoffLimit",
                "spec.completionMode"
            ]
        );
        let mut t = tmpl();
        t["spec"]["restartPolicy"] = json!("Always");
        assert_eq!(
            fields(&job(json!({"template": t}))),
            ["spec.template.spec.restartPolicy"]
        );
        // Defaulting turns a missing restartPolicy into Always, which Jobs refuse.
        let mut t = tmpl();
        t["spec"].as_object_mut().map(|s| s.remove("restartPolicy"));
        assert_eq!(
            fields(&job(json!({"template": t}))),
            ["spec.template.spec.restartPolicy"]
        );
        let ix = job(json!({"completionMode": "Indexed", "parallelism": 2, "template": tmpl()}));
        assert_eq!(fields(&ix), ["spec.completions"]);
    }

    #[test]
    fn selectors_must_match_and_be_generated_unless_manual() {
        let manual = job(
            json!({"manualSelector": true, "selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "c"}}, "spec": tmpl()["spec"]}}),
        );
        assert_eq!(fields(&manual), ["spec.template.metadata.labels"]);
        let mut j = job(json!({"template": tmpl()}));
        j["spec"]["selector"]["matchLabels"][CONTROLLER_UID] = json!("someone-else");
        assert!(fields(&j).contains(&"spec.selector".to_string()));
    }

    #[test]
    fn pod_failure_policy_rules() {
        let j = job(json!({"template": tmpl(), "podFailurePolicy": {"rules": [
            {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [0, 3]}},
            {"action": "Explode", "onPodConditions": [{"type": "DisruptionTarget"}]},
            {"action": "Ignore"},
            {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [5, 2], "containerName": "nope"}}]}}));
        assert_eq!(
            j["spec"]["podFailurePolicy"]["rules"][1]["onPodConditions"][0]["status"],
            "True"
        );
        assert_eq!(
            fields(&j),
            [
                "spec.podFailurePolicy.rules[0].onExitCodes.values[0]",
                "spec.podFailurePolicy.rules[1].action",
                "spec.podFailurePolicy.rules[2]",
                "spec.podFailurePolicy.rules[3].onExitCodes.containerName",
                "spec.podFailurePolicy.rules[3].onExitCodes.values[1]",
            ]
        );
        let mut t = tmpl();
        t["spec"]["restartPolicy"] = json!("OnFailure");
        let j = job(json!({"template": t, "podFailurePolicy": {"rules": [
            {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [1]}}]}}));
        assert_eq!(fields(&j), ["spec.template.spec.restartPolicy"]);
    }

    #[test]
    fn cron_jobs_default_and_check_schedules() {
        let mut cj = json!({"metadata": {"name": "tick"}, "spec": {"schedule": "*/1 * * * *",
            "jobTemplate": {"spec": {"template": tmpl()}}}});
        default_cron_job(&mut cj);
        assert_eq!(cj["spec"]["concurrencyPolicy"], "Allow");
        assert_eq!(cj["spec"]["successfulJobsHistoryLimit"], 3);
        assert_eq!(cj["spec"]["jobTemplate"]["spec"]["backoffLimit"], 6);
        assert!(cj["spec"]["jobTemplate"]["spec"]["selector"].is_null());
        let check = |cj: &Value| {
            let mut c = Vec::new();
            validate_cron_job(&mut c, cj);
            c
        };
        assert!(check(&cj).is_empty(), "{:?}", check(&cj));
        let mut bad = cj.clone();
        bad["spec"]["schedule"] = json!("every minute");
        bad["spec"]["concurrencyPolicy"] = json!("Sometimes");
        let c = check(&bad);
        let f: Vec<&str> = c.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(f, ["spec.schedule", "spec.concurrencyPolicy"]);
        assert!(
            c[0].message
                .starts_with("Invalid value: \"every minute\": unparseable schedule"),
            "{}",
            c[0].message
        );
        let mut tz = cj.clone();
        tz["spec"]["timeZone"] = json!("Mars/Olympus");
        let c = check(&tz);
        assert_eq!(c[0].field, "spec.timeZone");
        assert!(c[0].message.contains("unknown time zone Mars/Olympus"));
        let mut ok = cj;
        ok["spec"]["schedule"] = json!("@hourly");
        ok["spec"]["timeZone"] = json!("Europe/Berlin");
        assert!(check(&ok).is_empty());
    }

    #[test]
    fn template_and_selector_are_immutable() {
        let old = job(json!({"completions": 3, "template": tmpl()}));
        let mut new = old.clone();
        new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("alpine");
        new["spec"]["completions"] = json!(4);
        new["spec"]["parallelism"] = json!(5);
        let mut c = Vec::new();
        validate_job_update(&mut c, &old, &new);
        let f: Vec<&str> = c.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(f, ["spec.template", "spec.completions"]);
        assert!(c[0].message.contains("field is immutable"));
        // Parallelism, suspend and activeDeadlineSeconds may change.
        let mut ok = old.clone();
        ok["spec"]["parallelism"] = json!(7);
        ok["spec"]["suspend"] = json!(true);
        let mut c = Vec::new();
        validate_job_update(&mut c, &old, &ok);
        assert!(c.is_empty());
    }
}

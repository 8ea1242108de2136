//! apps/v1 DaemonSet defaults and the rules beyond the shared workload ones (selector,
//! template, restartPolicy Always): the update strategy.

use moat_api::Cause;
use serde_json::{Value, json};

use super::{default_pod_spec, invalid, one_of};

/// Upstream's SetDefaults_DaemonSet.
pub fn default_daemon_set(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) else {
        return;
    };
    if spec["updateStrategy"]["type"].is_null() {
        spec["updateStrategy"]["type"] = json!("RollingUpdate");
    }
    if spec["updateStrategy"]["type"] == "RollingUpdate" {
        let ru = &mut spec["updateStrategy"]["rollingUpdate"];
        if ru["maxUnavailable"].is_null() {
            ru["maxUnavailable"] = json!(1);
        }
        if ru["maxSurge"].is_null() {
            ru["maxSurge"] = json!(0);
        }
    }
    if spec["revisionHistoryLimit"].is_null() {
        spec["revisionHistoryLimit"] = json!(10);
    }
    if !spec["template"]["spec"].is_null() {
        default_pod_spec(&mut spec["template"]["spec"]);
    }
}

fn is_zero(v: &Value) -> bool {
    v == &json!(0) || v == &json!("0%")
}

pub fn validate_daemon_set(causes: &mut Vec<Cause>, obj: &Value) {
    let st = &obj["spec"]["updateStrategy"];
    one_of(
        causes,
        "spec.updateStrategy.type",
        &st["type"],
        &["RollingUpdate", "OnDelete"],
    );
    let ru = &st["rollingUpdate"];
    if st["type"] == "RollingUpdate" {
        let (mu, ms) = (&ru["maxUnavailable"], &ru["maxSurge"]);
        if is_zero(mu) && is_zero(ms) {
            invalid(
                causes,
                "spec.updateStrategy.rollingUpdate.maxUnavailable",
                mu,
                "may not be 0 when `maxSurge` is 0",
            );
        } else if !is_zero(mu) && !is_zero(ms) {
            invalid(
                causes,
                "spec.updateStrategy.rollingUpdate.maxSurge",
                ms,
                "may not be set when maxUnavailable is non-zero",
            );
        }
        for (f, v) in [("maxUnavailable", mu), ("maxSurge", ms)] {
            if v.as_i64().is_some_and(|n| n < 0) {
                invalid(
                    causes,
                    &format!("spec.updateStrategy.rollingUpdate.{f}"),
                    v,
                    "must be greater than or equal to 0",
                );
            }
        }
    }
    if obj["spec"]["minReadySeconds"]
        .as_i64()
        .is_some_and(|n| n < 0)
    {
        invalid(
            causes,
            "spec.minReadySeconds",
            &obj["spec"]["minReadySeconds"],
            "must be greater than or equal to 0",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(strategy: Value) -> Value {
        let mut d = json!({"metadata": {"name": "agent"}, "spec": {"selector": {"matchLabels": {"app": "a"}},
            "updateStrategy": strategy,
            "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}});
        default_daemon_set(&mut d);
        d
    }

    fn fields(d: &Value) -> Vec<String> {
        let mut c = Vec::new();
        validate_daemon_set(&mut c, d);
        c.into_iter().map(|c| c.field).collect()
    }

    #[test]
    fn defaults_and_strategy_rules_like_upstream() {
        let d = ds(json!(null));
        assert_eq!(
            d["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
        );
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
        assert!(fields(&d).is_empty());
        assert_eq!(
            fields(&ds(
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 0}})
            )),
            ["spec.updateStrategy.rollingUpdate.maxUnavailable"]
        );
        assert_eq!(
            fields(&ds(
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 1}})
            )),
            ["spec.updateStrategy.rollingUpdate.maxSurge"]
        );
        assert_eq!(
            fields(&ds(json!({"type": "Sometimes"}))),
            ["spec.updateStrategy.type"]
        );
        let od = ds(json!({"type": "OnDelete"}));
        assert!(od["spec"]["updateStrategy"]["rollingUpdate"].is_null());
        assert!(fields(&od).is_empty());
    }
}

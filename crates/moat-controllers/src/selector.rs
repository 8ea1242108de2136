//! Label selector matching for controllers (metav1.LabelSelector semantics).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` satisfy `sel`. An empty selector matches everything, as for
/// Deployments/ReplicaSets in apps/v1 (the API server rejects empty selectors there, so
/// in practice controllers see non-empty ones). Unknown operators match nothing.
pub fn matches(sel: &LabelSelector, labels: Option<&BTreeMap<String, String>>) -> bool {
    let get = |k: &str| labels.and_then(|l| l.get(k));
    if let Some(ml) = &sel.match_labels
        && !ml.iter().all(|(k, v)| get(k) == Some(v))
    {
        return false;
    }
    sel.match_expressions.iter().flatten().all(|e| {
        let vals = e.values.as_deref().unwrap_or(&[]);
        match e.operator.as_str() {
            "In" => get(&e.key).is_some_and(|v| vals.contains(v)),
            "NotIn" => get(&e.key).is_none_or(|v| !vals.contains(v)),
            "Exists" => get(&e.key).is_some(),
            "DoesNotExist" => get(&e.key).is_none(),
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(v: serde_json::Value) -> LabelSelector {
        serde_json::from_value(v).expect("selector")
    }

    #[test]
    fn match_labels_and_expressions() {
        let l: BTreeMap<String, String> = [
            ("app".to_string(), "web".to_string()),
            ("tier".into(), "fe".into()),
        ]
        .into();
        assert!(matches(
            &sel(serde_json::json!({"matchLabels": {"app": "web"}})),
            Some(&l)
        ));
        assert!(!matches(
            &sel(serde_json::json!({"matchLabels": {"app": "db"}})),
            Some(&l)
        ));
        assert!(matches(
            &sel(serde_json::json!({"matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["fe", "be"]},
                {"key": "x", "operator": "DoesNotExist"}]})),
            Some(&l)
        ));
        assert!(!matches(
            &sel(
                serde_json::json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["fe"]}]})
            ),
            Some(&l)
        ));
        assert!(!matches(
            &sel(serde_json::json!({"matchLabels": {"app": "web"}})),
            None
        ));
        assert!(matches(&sel(serde_json::json!({})), None));
    }
}

//! Container resources: requests and limits as valid, non-negative quantities, a request no
//! larger than its limit (upstream's wording).

use moat_api::Cause;
use serde_json::Value;

use super::invalid;

/// Requests and limits: each a valid, non-negative quantity, and a request no larger than its
/// limit (upstream's wording).
pub(super) fn validate_resources(causes: &mut Vec<Cause>, res: &Value, at: &str) {
    use moat_api::quantity;
    for kind in ["limits", "requests"] {
        for (name, q) in res[kind].as_object().into_iter().flatten() {
            let field = format!("{at}.{kind}[{name}]");
            let text = match q {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => String::new(),
            };
            match quantity::is_negative(&text) {
                Err(_) => invalid(
                    causes,
                    &field,
                    q,
                    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
                ),
                Ok(true) => invalid(causes, &field, q, "must be greater than or equal to 0"),
                Ok(false) => {}
            }
        }
    }
    for (name, req) in res["requests"].as_object().into_iter().flatten() {
        let (Some(r), Some(l)) = (req.as_str(), res["limits"][name].as_str()) else {
            continue;
        };
        let value = |t| {
            if name == "cpu" {
                quantity::milli_value(t)
            } else {
                quantity::value(t)
            }
        };
        if let (Ok(rv), Ok(lv)) = (value(r), value(l))
            && rv > lv
        {
            invalid(
                causes,
                &format!("{at}.requests[{name}]"),
                req,
                &format!("must be less than or equal to {name} limit of {l}"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::fields;
    use serde_json::{Value, json};

    #[test]
    fn resource_quantities_must_parse_be_non_negative_and_requests_fit_limits() {
        let pod = |res: Value| {
            json!({"metadata": {"name": "p"}, "spec": {"containers": [
                {"name": "a", "image": "x", "resources": res}]}})
        };
        assert!(
            fields(
                "Pod",
                pod(
                    json!({"limits": {"cpu": "500m", "memory": "1Gi"}, "requests": {"cpu": "0.25"}})
                )
            )
            .is_empty()
        );
        assert_eq!(
            fields(
                "Pod",
                pod(json!({"limits": {"cpu": "-1", "memory": "lots"}}))
            ),
            [
                "spec.containers[0].resources.limits[cpu]",
                "spec.containers[0].resources.limits[memory]"
            ]
        );
        assert_eq!(
            fields(
                "Pod",
                pod(json!({"limits": {"cpu": "100m"}, "requests": {"cpu": "1"}}))
            ),
            ["spec.containers[0].resources.requests[cpu]"]
        );
    }
}

//! Pod admission that depends on other objects, run by the API server before a pod is
//! stored (Kubernetes' RuntimeClass admission plugin plus moat's CRI-O compatibility).
//!
//! Sans-IO: the caller looks RuntimeClasses up and turns a [`Rejection`] into a 403
//! Forbidden Status (as kube-apiserver does for admission denials).

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::node::v1::RuntimeClass;

/// The CRI-O annotation the seed documents use to mark untrusted pods.
pub const TRUSTED_SANDBOX_ANNOTATION: &str = "io.kubernetes.cri-o.TrustedSandbox";

/// Admission configuration (server flags).
#[derive(Debug, Clone)]
pub struct Config {
    /// RuntimeClass given to pods annotated `TrustedSandbox: "false"` that name none.
    pub untrusted_runtime_class: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            untrusted_runtime_class: "kata".to_string(),
        }
    }
}

/// Why a pod is refused; the message is the user-facing text (upstream's where it exists).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub field: String,
    pub message: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pod rejected: {}", self.message)
    }
}

impl std::error::Error for Rejection {}

impl Rejection {
    pub fn cause(&self) -> moat_api::Cause {
        moat_api::Cause::new("FieldValueForbidden", self.field.clone(), self.to_string())
    }
}

/// Admits a pod being created: maps the TrustedSandbox annotation to a RuntimeClass, then
/// applies that RuntimeClass's overhead and scheduling constraints. `lookup` returns the
/// RuntimeClass by name. On error the pod may be partly modified; the caller drops it.
pub fn admit_pod_create(
    pod: &mut Pod,
    cfg: &Config,
    lookup: impl Fn(&str) -> Option<RuntimeClass>,
) -> Result<(), Rejection> {
    let untrusted = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(TRUSTED_SANDBOX_ANNOTATION))
        .is_some_and(|v| v.eq_ignore_ascii_case("false"));
    let Some(spec) = pod.spec.as_mut() else {
        return Ok(());
    };
    if untrusted && spec.runtime_class_name.as_deref().unwrap_or("").is_empty() {
        spec.runtime_class_name = Some(cfg.untrusted_runtime_class.clone());
    }
    let Some(name) = spec.runtime_class_name.clone().filter(|n| !n.is_empty()) else {
        return Ok(());
    };
    let rc = lookup(&name).ok_or_else(|| Rejection {
        field: "spec.runtimeClassName".into(),
        message: format!("RuntimeClass {name:?} not found"),
    })?;

    if let Some(fixed) = rc.overhead.as_ref().and_then(|o| o.pod_fixed.as_ref()) {
        match &spec.overhead {
            Some(existing) if existing != fixed => {
                return Err(Rejection {
                    field: "spec.overhead".into(),
                    message: "Pod's Overhead doesn't match RuntimeClass's defined Overhead".into(),
                });
            }
            _ => spec.overhead = Some(fixed.clone()),
        }
    } else if spec.overhead.is_some() {
        return Err(Rejection {
            field: "spec.overhead".into(),
            message: "Pod Overhead set without corresponding RuntimeClass defined Overhead".into(),
        });
    }

    if let Some(sched) = rc.scheduling {
        if let Some(sel) = sched.node_selector {
            let pod_sel = spec.node_selector.get_or_insert_with(BTreeMap::new);
            for (k, v) in sel {
                match pod_sel.get(&k) {
                    Some(existing) if *existing != v => {
                        return Err(Rejection {
                            field: "spec.nodeSelector".into(),
                            message: format!(
                                "conflict: runtimeClass.scheduling.nodeSelector[{k}] = {v}; pod.spec.nodeSelector[{k}] = {existing}"
                            ),
                        });
                    }
                    _ => {
                        pod_sel.insert(k, v);
                    }
                }
            }
        }
        if let Some(tols) = sched.tolerations {
            let pod_tols = spec.tolerations.get_or_insert_with(Vec::new);
            for t in tols {
                if !pod_tols.contains(&t) {
                    pod_tols.push(t);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn kata() -> RuntimeClass {
        serde_json::from_value(json!({
            "metadata": {"name": "kata"}, "handler": "kata",
            "overhead": {"podFixed": {"cpu": "250m", "memory": "160Mi"}},
            "scheduling": {
                "nodeSelector": {"example.org/workload": "untrusted"},
                "tolerations": [{"key": "example.org/workload", "operator": "Equal",
                                 "value": "untrusted", "effect": "NoSchedule"}]}
        }))
        .expect("rc")
    }

    fn lookup(name: &str) -> Option<RuntimeClass> {
        (name == "kata").then(kata)
    }

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("pod")
    }

    #[test]
    fn runtime_class_scheduling_and_overhead_are_merged() {
        let mut p = pod(json!({"metadata": {"name": "p"}, "spec": {
            "runtimeClassName": "kata", "containers": [{"name": "c"}],
            "nodeSelector": {"disk": "ssd"}}}));
        admit_pod_create(&mut p, &Config::default(), lookup).expect("admitted");
        let spec = p.spec.expect("spec");
        let sel = spec.node_selector.expect("selector");
        assert_eq!(
            sel.get("example.org/workload").map(String::as_str),
            Some("untrusted")
        );
        assert_eq!(sel.get("disk").map(String::as_str), Some("ssd"));
        assert_eq!(spec.tolerations.expect("tolerations").len(), 1);
        assert_eq!(
            spec.overhead
                .expect("overhead")
                .get("cpu")
                .map(|q| q.0.as_str()),
            Some("250m")
        );
    }

    #[test]
    fn trusted_sandbox_false_maps_to_untrusted_class() {
        let mut p = pod(json!({"metadata": {"name": "p", "annotations": {
            "io.kubernetes.cri-o.TrustedSandbox": "false"}},
            "spec": {"containers": [{"name": "c"}]}}));
        admit_pod_create(&mut p, &Config::default(), lookup).expect("admitted");
        let spec = p.spec.expect("spec");
        assert_eq!(spec.runtime_class_name.as_deref(), Some("kata"));
        assert!(spec.tolerations.is_some());

        // "true" (or no annotation) leaves the pod alone.
        let mut trusted = pod(json!({"metadata": {"name": "p", "annotations": {
            "io.kubernetes.cri-o.TrustedSandbox": "true"}},
            "spec": {"containers": [{"name": "c"}]}}));
        admit_pod_create(&mut trusted, &Config::default(), lookup).expect("admitted");
        assert_eq!(trusted.spec.expect("spec").runtime_class_name, None);

        // An explicit runtimeClassName wins over the annotation.
        let mut explicit = pod(json!({"metadata": {"name": "p", "annotations": {
            "io.kubernetes.cri-o.TrustedSandbox": "false"}},
            "spec": {"runtimeClassName": "missing", "containers": [{"name": "c"}]}}));
        let e = admit_pod_create(&mut explicit, &Config::default(), lookup).expect_err("missing");
        assert_eq!(
            e.to_string(),
            "pod rejected: RuntimeClass \"missing\" not found"
        );
        assert_eq!(e.cause().field, "spec.runtimeClassName");
    }

    #[test]
    fn conflicting_node_selector_is_rejected() {
        let mut p = pod(json!({"metadata": {"name": "p"}, "spec": {
            "runtimeClassName": "kata", "containers": [{"name": "c"}],
            "nodeSelector": {"example.org/workload": "trusted"}}}));
        let e = admit_pod_create(&mut p, &Config::default(), lookup).expect_err("conflict");
        assert!(
            e.message.starts_with(
                "conflict: runtimeClass.scheduling.nodeSelector[example.org/workload] = untrusted"
            ),
            "{e}"
        );
    }

    #[test]
    fn mismatched_overhead_is_rejected_and_duplicate_tolerations_not_added() {
        let mut p = pod(json!({"metadata": {"name": "p"}, "spec": {
            "runtimeClassName": "kata", "containers": [{"name": "c"}],
            "overhead": {"cpu": "1"}}}));
        let e = admit_pod_create(&mut p, &Config::default(), lookup).expect_err("overhead");
        assert_eq!(e.field, "spec.overhead");

        let mut p = pod(json!({"metadata": {"name": "p"}, "spec": {
            "runtimeClassName": "kata", "containers": [{"name": "c"}],
            "tolerations": [{"key": "example.org/workload", "operator": "Equal",
                             "value": "untrusted", "effect": "NoSchedule"}]}}));
        admit_pod_create(&mut p, &Config::default(), lookup).expect("admitted");
        assert_eq!(p.spec.expect("spec").tolerations.expect("tols").len(), 1);
    }
}

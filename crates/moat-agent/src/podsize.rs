//! The pod-level limits a VM runtime sizes its sandbox from (sans-IO), written as the CRI
//! sandbox annotations containerd passes with the kubelet's pod resources
//! (`io.kubernetes.cri.sandbox-cpu-quota`, `-cpu-period`, `-memory`): the sum of the
//! containers' limits, or the largest init container's where that is larger (init containers
//! run before the others, one at a time), as the kubelet's pod limits are computed. A
//! resource with no limit anywhere gets no annotation.

use k8s_openapi::api::core::v1::{Container, PodSpec};

pub const SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
pub const SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
pub const SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";

/// The CFS period the agent uses for every quota (the kubelet's).
const PERIOD_US: i64 = 100_000;

fn limit(c: &Container, key: &str, parse: fn(&str) -> Option<i64>) -> i64 {
    c.resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get(key))
        .and_then(|q| parse(&q.0))
        .unwrap_or(0)
}

fn pod_limit(pod: &PodSpec, key: &str, parse: fn(&str) -> Option<i64>) -> i64 {
    let sum: i64 = pod.containers.iter().map(|c| limit(c, key, parse)).sum();
    pod.init_containers
        .iter()
        .flatten()
        .map(|c| limit(c, key, parse))
        .fold(sum, i64::max)
}

/// The sandbox annotations for `pod` (empty when no container has a limit).
pub fn sandbox_annotations(pod: &PodSpec) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let millis = pod_limit(pod, "cpu", |q| moat_api::quantity::milli_value(q).ok());
    if millis > 0 {
        // The quota the kubelet would give a container with this limit: 100 µs per milli-CPU.
        out.push((
            SANDBOX_CPU_QUOTA.to_string(),
            (millis * PERIOD_US / 1000).max(1000).to_string(),
        ));
        out.push((SANDBOX_CPU_PERIOD.to_string(), PERIOD_US.to_string()));
    }
    let bytes = pod_limit(pod, "memory", |q| moat_api::quantity::value(q).ok());
    if bytes > 0 {
        out.push((SANDBOX_MEMORY.to_string(), bytes.to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> PodSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn containers_add_up_and_init_containers_count_when_larger() {
        let p = pod(serde_json::json!({
            "containers": [
                {"name": "a", "resources": {"limits": {"cpu": "1500m", "memory": "1Gi"}}},
                {"name": "b", "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}}},
                {"name": "c"}],
            "initContainers": [
                {"name": "i", "resources": {"limits": {"cpu": "1", "memory": "2Gi"}}}]}));
        let a = sandbox_annotations(&p);
        assert_eq!(
            a,
            vec![
                (SANDBOX_CPU_QUOTA.into(), "200000".into()),
                (SANDBOX_CPU_PERIOD.into(), "100000".into()),
                (SANDBOX_MEMORY.into(), (2u64 << 30).to_string()),
            ]
        );
    }

    #[test]
    fn no_limits_no_annotations() {
        let p = pod(serde_json::json!({"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "1"}}}]}));
        assert!(sandbox_annotations(&p).is_empty());
    }
}

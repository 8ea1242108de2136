//! The root CA publisher (kube-controller-manager's `root-ca-cert-publisher`): every
//! namespace holds a ConfigMap `kube-root-ca.crt` whose `ca.crt` is the cluster CA (PEM),
//! so pods can verify the API server. A pure plan from the namespaces, the existing
//! ConfigMaps of that name and the CA to the writes that make it so.
//!
//! As upstream: terminating namespaces get nothing new; a ConfigMap whose data or
//! description annotation differs is replaced (extra keys removed), keeping its other
//! metadata; a deleted one is recreated on the next pass.

use std::collections::BTreeMap;

use serde_json::{Value, json};

pub const NAME: &str = "kube-root-ca.crt";
pub const KEY: &str = "ca.crt";
pub const DESCRIPTION_ANNOTATION: &str = "kubernetes.io/description";
/// Upstream's wording, so tools that show the annotation show the same text.
pub const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

/// One write of the plan.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// POST this ConfigMap into its namespace.
    Create { namespace: String, object: Value },
    /// PUT this ConfigMap (it carries the resourceVersion it replaces, so a concurrent
    /// writer wins and the next pass recomputes).
    Replace { namespace: String, object: Value },
}

fn desired(namespace: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": NAME, "namespace": namespace,
                     "annotations": {DESCRIPTION_ANNOTATION: DESCRIPTION}}})
}

/// The writes that give every live namespace an up-to-date `kube-root-ca.crt`.
/// `configmaps` may hold ConfigMaps of any name and namespace; only `kube-root-ca.crt` ones
/// are looked at. An empty `ca_pem` plans nothing (no CA to publish).
pub fn plan(ca_pem: &str, namespaces: &[Value], configmaps: &[Value]) -> Vec<Action> {
    if ca_pem.trim().is_empty() {
        return Vec::new();
    }
    let existing: BTreeMap<&str, &Value> = configmaps
        .iter()
        .filter(|c| c["metadata"]["name"] == NAME)
        .filter_map(|c| Some((c["metadata"]["namespace"].as_str()?, c)))
        .collect();
    let mut out = Vec::new();
    for ns in namespaces {
        let Some(name) = ns["metadata"]["name"].as_str() else {
            continue;
        };
        let terminating = !ns["metadata"]["deletionTimestamp"].is_null()
            || ns["status"]["phase"] == "Terminating";
        match existing.get(name) {
            None if terminating => {}
            None => {
                let mut object = desired(name);
                object["data"] = json!({KEY: ca_pem});
                out.push(Action::Create {
                    namespace: name.to_string(),
                    object,
                });
            }
            Some(cm) => {
                let data_ok = cm["data"] == json!({KEY: ca_pem}) && cm["binaryData"].is_null();
                let ann_ok = cm["metadata"]["annotations"][DESCRIPTION_ANNOTATION] == DESCRIPTION;
                if (data_ok && ann_ok) || !cm["metadata"]["deletionTimestamp"].is_null() {
                    continue;
                }
                let mut object = (*cm).clone();
                object["data"] = json!({KEY: ca_pem});
                if let Some(o) = object.as_object_mut() {
                    o.remove("binaryData");
                }
                object["metadata"]["annotations"][DESCRIPTION_ANNOTATION] = json!(DESCRIPTION);
                out.push(Action::Replace {
                    namespace: name.to_string(),
                    object,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn ns(name: &str) -> Value {
        json!({"metadata": {"name": name}, "status": {"phase": "Active"}})
    }

    fn cm(ns: &str, data: Value) -> Value {
        json!({"metadata": {"name": NAME, "namespace": ns, "resourceVersion": "7",
            "labels": {"mine": "yes"}, "annotations": {DESCRIPTION_ANNOTATION: DESCRIPTION}},
            "data": data})
    }

    #[test]
    fn every_live_namespace_gets_the_ca() {
        let mut dying = ns("old");
        dying["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        let p = plan(CA, &[ns("default"), ns("x"), dying], &[]);
        assert_eq!(p.len(), 2);
        let Action::Create { namespace, object } = &p[0] else {
            panic!("{p:?}")
        };
        assert_eq!(namespace, "default");
        assert_eq!(object["metadata"]["name"], NAME);
        assert_eq!(object["data"][KEY], CA);
        assert_eq!(
            object["metadata"]["annotations"][DESCRIPTION_ANNOTATION],
            DESCRIPTION
        );
        assert!(matches!(&p[1], Action::Create { namespace, .. } if namespace == "x"));
    }

    #[test]
    fn current_ones_are_left_alone_and_stale_ones_replaced() {
        let good = cm("default", json!({KEY: CA}));
        let unrelated = json!({"metadata": {"name": "other", "namespace": "x"}});
        assert_eq!(plan(CA, &[ns("default")], &[good, unrelated]), []);
        let edited = cm("x", json!({KEY: "tampered", "extra": "1"}));
        let p = plan(CA, &[ns("x")], &[edited]);
        let [Action::Replace { namespace, object }] = p.as_slice() else {
            panic!("{p:?}")
        };
        assert_eq!(namespace, "x");
        assert_eq!(object["data"], json!({KEY: CA}));
        assert_eq!(object["metadata"]["resourceVersion"], "7");
        assert_eq!(object["metadata"]["labels"]["mine"], "yes");
        let mut no_note = cm("x", json!({KEY: CA}));
        no_note["metadata"]["annotations"] = json!({});
        assert!(matches!(
            plan(CA, &[ns("x")], &[no_note]).as_slice(),
            [Action::Replace { .. }]
        ));
    }

    #[test]
    fn no_ca_no_writes() {
        assert_eq!(plan("", &[ns("default")], &[]), []);
    }
}

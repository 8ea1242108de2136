//! Defaulting and validation for the kinds moat serves, following Kubernetes' own rules
//! and wording (`spec.containers[0].image: Required value`, ...). Sans-IO: objects in,
//! causes out; the handlers turn causes into a 422 `Invalid` Status and store nothing.

use moat_api::{Cause, ResourceInfo};
use serde_json::{Value, json};

pub mod batch;
mod daemonset;
mod rbac;
mod resources;

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(dns_label)
}

fn label_value_ok(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && v.as_bytes()[0].is_ascii_alphanumeric()
            && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric())
}

fn label_key_ok(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    prefix.is_none_or(dns_subdomain) && !name.is_empty() && label_value_ok(name)
}

pub fn validate_meta(res: &ResourceInfo, obj: &Value) -> Vec<moat_api::Cause> {
    let mut causes = Vec::new();
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    let label_style = matches!(res.kind, "Namespace" | "Service");
    // RBAC names are path segments (`system:discovery`), as upstream's ValidateRBACName.
    let path_segment = res.group == "rbac.authorization.k8s.io";
    let ok = if path_segment {
        !matches!(name, "" | "." | "..") && !name.contains(['/', '%'])
    } else if label_style {
        dns_label(name)
    } else {
        dns_subdomain(name)
    };
    if !ok {
        if path_segment {
            causes.push(moat_api::Cause::new(
                "FieldValueInvalid",
                "metadata.name",
                format!(
                    "Invalid value: {name:?}: may not be '.' or '..' and may not contain '/' or '%'"
                ),
            ));
            return causes;
        }
        let what = if label_style {
            "RFC 1123 label"
        } else {
            "RFC 1123 subdomain"
        };
        causes.push(moat_api::Cause::new(
            "FieldValueInvalid",
            "metadata.name",
            format!("Invalid value: {name:?}: a lowercase {what} must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"),
        ));
    }
    if let Some(labels) = obj["metadata"]["labels"].as_object() {
        for (k, v) in labels {
            if !label_key_ok(k) {
                causes.push(moat_api::Cause::new("FieldValueInvalid", "metadata.labels", format!("Invalid value: {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.'")));
            }
            match v.as_str() {
                Some(s) if label_value_ok(s) => {}
                _ => causes.push(moat_api::Cause::new("FieldValueInvalid", "metadata.labels", format!("Invalid value: {v}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"))),
            }
        }
    }
    causes
}

/// Kubernetes defaulting for the kinds moat serves (the defaults other components and
/// `kubectl get -o yaml` users rely on).
pub fn default_object(res: &ResourceInfo, obj: &mut Value) {
    match res.kind {
        "Namespace" => {
            let name = obj["metadata"]["name"].clone();
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
            if obj["status"]["phase"].is_null() {
                obj["status"] = json!({"phase": "Active"});
            }
            // The namespace controller's finalizer: deletion waits until it emptied it.
            if obj["spec"]["finalizers"].is_null() {
                obj["spec"]["finalizers"] = json!(["kubernetes"]);
            }
        }
        "Pod" => {
            default_pod_spec(&mut obj["spec"]);
            if obj["status"]["phase"].is_null() {
                obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
            }
        }
        "ReplicaSet" => {
            if obj["spec"]["replicas"].is_null() {
                obj["spec"]["replicas"] = json!(1);
            }
            default_pod_spec(&mut obj["spec"]["template"]["spec"]);
        }
        "Service" => {
            let spec = &mut obj["spec"];
            if spec["type"].is_null() {
                spec["type"] = json!("ClusterIP");
            }
            if spec["sessionAffinity"].is_null() {
                spec["sessionAffinity"] = json!("None");
            }
            if let Some(ps) = spec["ports"].as_array_mut() {
                for p in ps {
                    if p["protocol"].is_null() {
                        p["protocol"] = json!("TCP");
                    }
                    if p["targetPort"].is_null() {
                        p["targetPort"] = p["port"].clone();
                    }
                }
            }
            if spec["type"] != "ExternalName" {
                if spec["ipFamilies"].is_null() {
                    spec["ipFamilies"] = json!(["IPv4"]);
                }
                if spec["ipFamilyPolicy"].is_null() {
                    spec["ipFamilyPolicy"] = json!("SingleStack");
                }
                if spec["internalTrafficPolicy"].is_null() {
                    spec["internalTrafficPolicy"] = json!("Cluster");
                }
            }
            if matches!(spec["type"].as_str(), Some("NodePort" | "LoadBalancer"))
                && spec["externalTrafficPolicy"].is_null()
            {
                spec["externalTrafficPolicy"] = json!("Cluster");
            }
        }
        "Deployment" => {
            let spec = &mut obj["spec"];
            if spec["replicas"].is_null() {
                spec["replicas"] = json!(1);
            }
            if spec["strategy"]["type"].is_null() || spec["strategy"]["type"] == "RollingUpdate" {
                spec["strategy"]["type"] = json!("RollingUpdate");
                for k in ["maxSurge", "maxUnavailable"] {
                    if spec["strategy"]["rollingUpdate"][k].is_null() {
                        spec["strategy"]["rollingUpdate"][k] = json!("25%");
                    }
                }
            }
            default_pod_spec(&mut spec["template"]["spec"]);
            if spec["revisionHistoryLimit"].is_null() {
                spec["revisionHistoryLimit"] = json!(10);
            }
            if spec["progressDeadlineSeconds"].is_null() {
                spec["progressDeadlineSeconds"] = json!(600);
            }
        }
        "Job" => batch::default_job(obj),
        "DaemonSet" => daemonset::default_daemon_set(obj),
        "RoleBinding" | "ClusterRoleBinding" => rbac::default_rbac(obj),
        "CronJob" => batch::default_cron_job(obj),
        "Secret" => {
            if obj["type"].is_null() {
                obj["type"] = json!("Opaque");
            }
            merge_string_data(obj);
        }
        "NetworkPolicy" => {
            let spec = &mut obj["spec"];
            if spec["policyTypes"].as_array().is_none_or(|a| a.is_empty()) {
                let mut t = vec![json!("Ingress")];
                if spec["egress"].as_array().is_some_and(|e| !e.is_empty()) {
                    t.push(json!("Egress"));
                }
                spec["policyTypes"] = json!(t);
            }
        }
        _ => {}
    }
}

/// `stringData` is write-only, as upstream: its values go into `data` (base64), winning
/// over `data` for the same key, and it is never stored. Every write path (create, update,
/// patch, server-side apply) defaults the object through here before validation.
fn merge_string_data(obj: &mut Value) {
    use base64::Engine;
    let Some(m) = obj.as_object_mut() else {
        return;
    };
    let Some(Value::Object(sd)) = m.remove("stringData") else {
        return;
    };
    if sd.is_empty() {
        return;
    }
    if !m.get("data").is_some_and(Value::is_object) {
        m.insert("data".into(), json!({}));
    }
    if let Some(Value::Object(data)) = m.get_mut("data") {
        for (k, v) in sd {
            // Non-strings never get here: typed decoding rejects them first.
            let raw = v.as_str().unwrap_or_default();
            data.insert(
                k,
                json!(base64::engine::general_purpose::STANDARD.encode(raw.as_bytes())),
            );
        }
    }
}

/// Pod defaults, applied to pods and to the pod templates of workloads (as upstream does,
/// so `kubectl get deploy -o yaml` shows the same template a real cluster would).
pub fn default_pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    for (k, v) in [
        ("restartPolicy", json!("Always")),
        ("dnsPolicy", json!("ClusterFirst")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("schedulerName", json!("default-scheduler")),
        ("securityContext", json!({})),
    ] {
        if spec[k].is_null() {
            spec[k] = v;
        }
    }
    for list in ["initContainers", "containers"] {
        let Some(cs) = spec[list].as_array_mut() else {
            continue;
        };
        for c in cs {
            if c["terminationMessagePath"].is_null() {
                c["terminationMessagePath"] = json!("/dev/termination-log");
            }
            if c["terminationMessagePolicy"].is_null() {
                c["terminationMessagePolicy"] = json!("File");
            }
            if c["resources"].is_null() {
                c["resources"] = json!({});
            }
            if c["imagePullPolicy"].is_null() {
                let image = c["image"].as_str().unwrap_or("");
                let tag_or_digest =
                    image.contains('@') || image.rsplit('/').next().unwrap_or("").contains(':');
                let latest = !tag_or_digest || image.ends_with(":latest");
                c["imagePullPolicy"] = json!(if latest { "Always" } else { "IfNotPresent" });
            }
            if let Some(ps) = c["ports"].as_array_mut() {
                for p in ps {
                    if p["protocol"].is_null() {
                        p["protocol"] = json!("TCP");
                    }
                }
            }
        }
    }
}

fn required(causes: &mut Vec<Cause>, field: &str) {
    causes.push(Cause::new("FieldValueRequired", field, "Required value"));
}

fn invalid(causes: &mut Vec<Cause>, field: &str, value: &Value, why: &str) {
    causes.push(Cause::new(
        "FieldValueInvalid",
        field,
        format!("Invalid value: {value}: {why}"),
    ));
}

fn unsupported(causes: &mut Vec<Cause>, field: &str, value: &Value, allowed: &[&str]) {
    let list: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
    causes.push(Cause::new(
        "FieldValueNotSupported",
        field,
        format!(
            "Unsupported value: {value}: supported values: {}",
            list.join(", ")
        ),
    ));
}

fn one_of(causes: &mut Vec<Cause>, field: &str, v: &Value, allowed: &[&str]) {
    if !v.is_null() && !v.as_str().is_some_and(|s| allowed.contains(&s)) {
        unsupported(causes, field, v, allowed);
    }
}

fn port_number(causes: &mut Vec<Cause>, field: &str, v: &Value, allow_zero: bool) {
    if v.is_null() {
        return;
    }
    let ok = v
        .as_i64()
        .is_some_and(|n| (if allow_zero { 0 } else { 1 }..=65535).contains(&n));
    if !ok {
        invalid(causes, field, v, "must be between 1 and 65535, inclusive");
    }
}

/// IANA_SVC_NAME: at most 15 characters, lowercase alphanumerics and '-', at least one
/// letter, no leading, trailing or doubled '-'.
fn iana_svc_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn validate_containers(causes: &mut Vec<Cause>, spec: &Value, path: &str, list: &str) {
    let Some(cs) = spec[list].as_array() else {
        return;
    };
    let mut names = std::collections::HashSet::new();
    for (i, c) in cs.iter().enumerate() {
        let at = format!("{path}.{list}[{i}]");
        match c["name"].as_str() {
            None | Some("") => required(causes, &format!("{at}.name")),
            Some(n) if !dns_label(n) => invalid(
                causes,
                &format!("{at}.name"),
                &c["name"],
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
            ),
            Some(n) => {
                if !names.insert(n.to_string()) {
                    causes.push(Cause::new(
                        "FieldValueDuplicate",
                        format!("{at}.name"),
                        format!("Duplicate value: {n:?}"),
                    ));
                }
            }
        }
        if c["image"].as_str().is_none_or(|s| s.trim().is_empty()) {
            required(causes, &format!("{at}.image"));
        }
        one_of(
            causes,
            &format!("{at}.imagePullPolicy"),
            &c["imagePullPolicy"],
            &["Always", "IfNotPresent", "Never"],
        );
        for (j, p) in c["ports"].as_array().into_iter().flatten().enumerate() {
            let pat = format!("{at}.ports[{j}]");
            if p["containerPort"].is_null() {
                required(causes, &format!("{pat}.containerPort"));
            }
            port_number(
                causes,
                &format!("{pat}.containerPort"),
                &p["containerPort"],
                false,
            );
            port_number(causes, &format!("{pat}.hostPort"), &p["hostPort"], true);
            one_of(
                causes,
                &format!("{pat}.protocol"),
                &p["protocol"],
                &["TCP", "UDP", "SCTP"],
            );
            if let Some(n) = p["name"].as_str()
                && !iana_svc_name(n)
            {
                invalid(
                    causes,
                    &format!("{pat}.name"),
                    &p["name"],
                    "must be no more than 15 characters, contain only lowercase alphanumerics and '-', and contain at least one letter",
                );
            }
        }
        for (j, e) in c["env"].as_array().into_iter().flatten().enumerate() {
            if e["name"].as_str().is_none_or(str::is_empty) {
                required(causes, &format!("{at}.env[{j}].name"));
            }
        }
        resources::validate_resources(causes, &c["resources"], &format!("{at}.resources"));
    }
}

/// PodSpec rules. `template` is true inside a workload's pod template, where upstream
/// only allows restartPolicy Always.
pub fn validate_pod_spec(causes: &mut Vec<Cause>, spec: &Value, path: &str, template: bool) {
    if spec["containers"].as_array().is_none_or(|c| c.is_empty()) {
        required(causes, &format!("{path}.containers"));
    }
    validate_containers(causes, spec, path, "initContainers");
    validate_containers(causes, spec, path, "containers");
    let restart = if template {
        &["Always"][..]
    } else {
        &["Always", "OnFailure", "Never"][..]
    };
    one_of(
        causes,
        &format!("{path}.restartPolicy"),
        &spec["restartPolicy"],
        restart,
    );
    one_of(
        causes,
        &format!("{path}.dnsPolicy"),
        &spec["dnsPolicy"],
        &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
    );
    if spec["terminationGracePeriodSeconds"]
        .as_i64()
        .is_some_and(|g| g < 0)
    {
        invalid(
            causes,
            &format!("{path}.terminationGracePeriodSeconds"),
            &spec["terminationGracePeriodSeconds"],
            "must be greater than or equal to 0",
        );
    }
}

/// Whether a workload's selector (as JSON) selects its template's labels. A selector that
/// does not decode, or has an unknown operator, selects nothing.
fn selector_matches(sel: &Value, labels: &Value) -> bool {
    serde_json::from_value::<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>(
        sel.clone(),
    )
    .ok()
    .and_then(|ls| moat_api::selector::Selector::lenient(&ls))
    .is_some_and(|s| s.matches_json(labels))
}

fn validate_workload(causes: &mut Vec<Cause>, kind: &str, obj: &Value) {
    let spec = &obj["spec"];
    if spec["replicas"].as_i64().is_some_and(|r| r < 0) {
        invalid(
            causes,
            "spec.replicas",
            &spec["replicas"],
            "must be greater than or equal to 0",
        );
    }
    let sel = &spec["selector"];
    let empty_sel = sel["matchLabels"].as_object().is_none_or(|m| m.is_empty())
        && sel["matchExpressions"]
            .as_array()
            .is_none_or(|e| e.is_empty());
    if sel.is_null() {
        required(causes, "spec.selector");
    } else if empty_sel {
        invalid(
            causes,
            "spec.selector",
            sel,
            // (Upstream's ReplicaSet validation says "deployment" too.)
            if kind == "DaemonSet" {
                "empty selector is invalid for daemonset"
            } else {
                "empty selector is invalid for deployment"
            },
        );
    } else if !selector_matches(sel, &spec["template"]["metadata"]["labels"]) {
        invalid(
            causes,
            "spec.template.metadata.labels",
            &spec["template"]["metadata"]["labels"],
            "`selector` does not match template `labels`",
        );
    }
    validate_pod_spec(
        causes,
        &spec["template"]["spec"],
        "spec.template.spec",
        true,
    );
    if kind == "Deployment" {
        let st = &spec["strategy"];
        one_of(
            causes,
            "spec.strategy.type",
            &st["type"],
            &["Recreate", "RollingUpdate"],
        );
        if st["type"] == "Recreate" && !st["rollingUpdate"].is_null() {
            causes.push(Cause::new(
                "FieldValueForbidden",
                "spec.strategy.rollingUpdate",
                "Forbidden: may not be specified when strategy `type` is 'Recreate'",
            ));
        }
        if st["rollingUpdate"]["maxSurge"] == json!(0)
            && st["rollingUpdate"]["maxUnavailable"] == json!(0)
        {
            invalid(
                causes,
                "spec.strategy.rollingUpdate.maxUnavailable",
                &json!(0),
                "may not be 0 when `maxSurge` is 0",
            );
        }
    }
}

fn validate_service(causes: &mut Vec<Cause>, spec: &Value) {
    let ty = spec["type"].as_str().unwrap_or("ClusterIP");
    one_of(
        causes,
        "spec.type",
        &spec["type"],
        &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
    );
    let headless = spec["clusterIP"] == "None";
    let ports = spec["ports"].as_array();
    if ty == "ExternalName" {
        if spec["externalName"]
            .as_str()
            .is_none_or(|n| !dns_subdomain(n))
        {
            required(causes, "spec.externalName");
        }
    } else if ports.is_none_or(|p| p.is_empty()) && !headless {
        required(causes, "spec.ports");
    }
    let ports = ports.cloned().unwrap_or_default();
    let mut names = std::collections::HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        if ports.len() > 1 {
            match p["name"].as_str() {
                None | Some("") => required(causes, &format!("{at}.name")),
                Some(n) if !names.insert(n.to_string()) => causes.push(Cause::new(
                    "FieldValueDuplicate",
                    format!("{at}.name"),
                    format!("Duplicate value: {n:?}"),
                )),
                _ => {}
            }
        }
        if p["port"].is_null() {
            required(causes, &format!("{at}.port"));
        }
        port_number(causes, &format!("{at}.port"), &p["port"], false);
        one_of(
            causes,
            &format!("{at}.protocol"),
            &p["protocol"],
            &["TCP", "UDP", "SCTP"],
        );
        match &p["targetPort"] {
            Value::Null => {}
            Value::String(s) if iana_svc_name(s) => {}
            t @ Value::Number(_) => port_number(causes, &format!("{at}.targetPort"), t, false),
            t => invalid(
                causes,
                &format!("{at}.targetPort"),
                t,
                "must contain at least one letter or number (a-z, 0-9)",
            ),
        }
        if !p["nodePort"].is_null() && !matches!(ty, "NodePort" | "LoadBalancer") {
            causes.push(Cause::new(
                "FieldValueForbidden",
                format!("{at}.nodePort"),
                "Forbidden: may not be used when `type` is 'ClusterIP'",
            ));
        }
    }
    one_of(
        causes,
        "spec.sessionAffinity",
        &spec["sessionAffinity"],
        &["ClientIP", "None"],
    );
}

fn data_keys(causes: &mut Vec<Cause>, obj: &Value, field: &str) {
    let Some(m) = obj[field].as_object() else {
        if !obj[field].is_null() {
            invalid(causes, field, &obj[field], "must be a map of strings");
        }
        return;
    };
    for (k, v) in m {
        let ok = !k.is_empty()
            && k.len() <= 253
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
        if !ok {
            invalid(
                causes,
                &format!("{field}[{k}]"),
                &json!(k),
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
            );
        }
        if !v.is_string() {
            invalid(causes, &format!("{field}[{k}]"), v, "must be a string");
        }
    }
}

/// All causes for an object of `res`'s kind: metadata first, then the kind's own rules.
pub fn validate(res: &ResourceInfo, obj: &Value) -> Vec<Cause> {
    let mut causes = validate_meta(res, obj);
    match res.kind {
        "Pod" => validate_pod_spec(&mut causes, &obj["spec"], "spec", false),
        "Deployment" | "ReplicaSet" => validate_workload(&mut causes, res.kind, obj),
        "Job" => batch::validate_job(&mut causes, obj),
        "ControllerRevision" if obj["revision"].as_i64().is_some_and(|r| r < 0) => invalid(
            &mut causes,
            "revision",
            &obj["revision"],
            "must be greater than or equal to 0",
        ),
        "DaemonSet" => {
            validate_workload(&mut causes, res.kind, obj);
            daemonset::validate_daemon_set(&mut causes, obj);
        }
        "CronJob" => batch::validate_cron_job(&mut causes, obj),
        "Service" => validate_service(&mut causes, &obj["spec"]),
        "ConfigMap" => {
            data_keys(&mut causes, obj, "data");
            data_keys(&mut causes, obj, "binaryData");
        }
        "Secret" => {
            data_keys(&mut causes, obj, "data");
            data_keys(&mut causes, obj, "stringData");
            let total: usize = obj["data"]
                .as_object()
                .map(|d| {
                    d.values()
                        .filter_map(Value::as_str)
                        .map(|v| v.len() / 4 * 3)
                        .sum()
                })
                .unwrap_or(0);
            if total > 1024 * 1024 {
                causes.push(Cause::new(
                    "FieldValueTooLong",
                    "data",
                    "Too long: must have at most 1048576 bytes",
                ));
            }
        }
        "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" => {
            rbac::validate_rbac(&mut causes, res.kind, obj)
        }
        "RuntimeClass" => match obj["handler"].as_str() {
            None | Some("") => required(&mut causes, "handler"),
            Some(h) if !dns_label(h) => invalid(
                &mut causes,
                "handler",
                &obj["handler"],
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
            ),
            _ => {}
        },
        "NetworkPolicy" => {
            match serde_json::from_value::<k8s_openapi::api::networking::v1::NetworkPolicy>(
                obj.clone(),
            ) {
                Err(e) => causes.push(Cause::new(
                    "FieldValueInvalid",
                    "spec",
                    format!("Invalid value: the NetworkPolicy does not decode: {e}"),
                )),
                Ok(np) => {
                    if let Err(errs) = moat_netpol::model::policy(&np) {
                        for e in errs {
                            causes.push(Cause::new(
                                "FieldValueInvalid",
                                e.field.clone(),
                                format!("Invalid value: {}", e.message),
                            ));
                        }
                    }
                }
            }
        }
        _ => {}
    }
    causes
}

/// Rules about what an update may change (immutable fields), given the stored object.
pub fn validate_update(res: &ResourceInfo, old: &Value, new: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    match res.kind {
        "Job" => batch::validate_job_update(&mut causes, old, new),
        "RoleBinding" | "ClusterRoleBinding" => rbac::validate_rbac_update(&mut causes, old, new),
        "DaemonSet" if old["spec"]["selector"] != new["spec"]["selector"] => {
            invalid(
                &mut causes,
                "spec.selector",
                &new["spec"]["selector"],
                "field is immutable",
            );
        }
        _ => {}
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(kind: &str) -> &'static ResourceInfo {
        moat_api::RESOURCES
            .iter()
            .find(|r| r.kind == kind)
            .expect("kind")
    }

    pub(super) fn fields(kind: &str, mut obj: Value) -> Vec<String> {
        default_object(res(kind), &mut obj);
        validate(res(kind), &obj)
            .into_iter()
            .map(|c| c.field)
            .collect()
    }

    #[test]
    fn pods_need_containers_with_names_and_images() {
        assert_eq!(
            fields("Pod", json!({"metadata": {"name": "p"}, "spec": {}})),
            ["spec.containers"]
        );
        assert_eq!(
            fields(
                "Pod",
                json!({"metadata": {"name": "p"}, "spec": {"containers": [
                    {"name": "a"},
                    {"name": "a", "image": "x", "ports": [{"containerPort": 70000, "protocol": "ICMP"}]}]}})
            ),
            [
                "spec.containers[0].image",
                "spec.containers[1].name",
                "spec.containers[1].ports[0].containerPort",
                "spec.containers[1].ports[0].protocol"
            ]
        );
        assert!(
            fields(
                "Pod",
                json!({"metadata": {"name": "p"}, "spec": {"restartPolicy": "Sometimes", "containers": [{"name": "a", "image": "x"}]}})
            ) == ["spec.restartPolicy"]
        );
    }

    #[test]
    fn secret_string_data_goes_into_data_and_wins_over_it() {
        let mut s = json!({"metadata": {"name": "s"},
            "data": {"a": "b2xk", "keep": "eA=="},
            "stringData": {"a": "new", "b": "two words"}});
        default_object(res("Secret"), &mut s);
        assert_eq!(s.get("stringData"), None);
        assert_eq!(
            s["data"],
            json!({"a": "bmV3", "keep": "eA==", "b": "dHdvIHdvcmRz"})
        );
        assert_eq!(s["type"], "Opaque");
        let mut only = json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}});
        default_object(res("Secret"), &mut only);
        assert_eq!(only["data"], json!({"k": "dg=="}));
        let bad = json!({"metadata": {"name": "s"}, "stringData": {"bad key": "v"}});
        assert_eq!(fields("Secret", bad), ["data[bad key]"]);
    }

    #[test]
    fn pod_defaults_match_kubernetes() {
        let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "busybox", "ports": [{"containerPort": 80}]}]}});
        default_object(res("Pod"), &mut p);
        let s = &p["spec"];
        assert_eq!(
            (
                &s["restartPolicy"],
                &s["dnsPolicy"],
                &s["terminationGracePeriodSeconds"]
            ),
            (&json!("Always"), &json!("ClusterFirst"), &json!(30))
        );
        assert_eq!(s["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(s["containers"][0]["ports"][0]["protocol"], "TCP");
        let mut p = json!({"spec": {"containers": [{"image": "reg:5000/busybox:1.36"}, {"image": "busybox@sha256:ab"}]}});
        default_pod_spec(&mut p["spec"]);
        assert_eq!(
            p["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
        assert_eq!(
            p["spec"]["containers"][1]["imagePullPolicy"],
            "IfNotPresent"
        );
    }

    #[test]
    fn deployments_selector_must_match_template() {
        let d = json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}});
        assert_eq!(fields("Deployment", d), ["spec.template.metadata.labels"]);
        let ok = json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}});
        assert!(fields("Deployment", ok.clone()).is_empty());
        let mut d = ok.clone();
        default_object(res("Deployment"), &mut d);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
        let mut bad = ok;
        bad["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        bad["spec"]["strategy"] = json!({"type": "Recreate", "rollingUpdate": {"maxSurge": 1}});
        assert_eq!(
            fields("Deployment", bad),
            [
                "spec.template.spec.restartPolicy",
                "spec.strategy.rollingUpdate"
            ]
        );
    }

    #[test]
    fn services_ports_and_types() {
        assert_eq!(
            fields("Service", json!({"metadata": {"name": "s"}, "spec": {}})),
            ["spec.ports"]
        );
        assert_eq!(
            fields(
                "Service",
                json!({"metadata": {"name": "s"}, "spec": {"type": "Magic", "ports": [{"port": 80}, {"port": 0, "name": "x", "targetPort": "Not_A_Name"}]}})
            ),
            [
                "spec.type",
                "spec.ports[0].name",
                "spec.ports[1].port",
                "spec.ports[1].targetPort"
            ]
        );
        assert!(
            fields(
                "Service",
                json!({"metadata": {"name": "s"}, "spec": {"clusterIP": "None"}})
            )
            .is_empty()
        );
        let mut s = json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}});
        default_object(res("Service"), &mut s);
        assert_eq!(s["spec"]["ipFamilies"], json!(["IPv4"]));
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
    }

    #[test]
    fn runtime_class_handler_and_config_keys() {
        assert_eq!(
            fields("RuntimeClass", json!({"metadata": {"name": "kata"}})),
            ["handler"]
        );
        assert_eq!(
            fields(
                "RuntimeClass",
                json!({"metadata": {"name": "kata"}, "handler": "Kata_VM"})
            ),
            ["handler"]
        );
        assert_eq!(
            fields(
                "ConfigMap",
                json!({"metadata": {"name": "c"}, "data": {"ok.key": "v", "bad key": "v", "n": 1}})
            ),
            ["data[bad key]", "data[n]"]
        );
    }

    #[test]
    fn network_policies_are_checked_with_field_paths() {
        let np = json!({"metadata": {"name": "n", "namespace": "d"}, "spec": {"podSelector": {},
            "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}});
        let f = fields("NetworkPolicy", np);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].starts_with("spec.ingress[0].from[0].ipBlock"), "{f:?}");
    }

    #[test]
    fn name_and_label_validation() {
        let ns = moat_api::resource_by_kind("v1", "Namespace").expect("ns");
        assert!(validate_meta(ns, &json!({"metadata": {"name": "ok-name"}})).is_empty());
        assert_eq!(
            validate_meta(ns, &json!({"metadata": {"name": "Bad_Name"}}))[0].field,
            "metadata.name"
        );
        assert_eq!(
            validate_meta(ns, &json!({"metadata": {"name": "a.b"}})).len(),
            1,
            "namespaces are labels"
        );
        let cm = moat_api::resource_by_kind("v1", "ConfigMap").expect("cm");
        assert!(
            validate_meta(
                cm,
                &json!({"metadata": {"name": "a.b", "labels": {"example.org/k": "v-1"}}})
            )
            .is_empty()
        );
        assert_eq!(
            validate_meta(
                cm,
                &json!({"metadata": {"name": "a", "labels": {"k": "bad value!"}}})
            )
            .len(),
            1
        );
        assert_eq!(
            validate_meta(
                cm,
                &json!({"metadata": {"name": "a", "labels": {"-k": "v"}}})
            )
            .len(),
            1
        );
    }
}

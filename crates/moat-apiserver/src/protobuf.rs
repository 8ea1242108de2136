//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), which `kubectl create
//! configmap|secret|namespace|serviceaccount|service|deployment|job|cronjob` send with no JSON
//! fallback.
//!
//! The envelope is the 4-byte magic `k8s\0` followed by a `runtime.Unknown` whose `raw` is
//! the object in Kubernetes' protobuf encoding. The message types come from the `k8s-pb`
//! crate; no crate converts them to JSON, so the conversions below are written by hand for
//! the fields those kinds carry. They are strict: each converter moves out the fields it
//! understands and then requires the rest of the message to be empty, so a field moat does
//! not convert yet is a clear 415 naming it, never silently dropped.

use std::collections::BTreeMap;

use http::StatusCode;
use k8s_pb::api::apps::v1 as apps;
use k8s_pb::api::core::v1 as core;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use prost::Message;
use serde_json::{Map, Value, json};

use crate::status::ApiError;

mod batch;
mod rbac;

const MAGIC: &[u8] = b"k8s\0";

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("the protobuf body does not start with the Kubernetes magic number k8s\\0")]
    Magic,
    #[error("decoding the protobuf {what}")]
    Decode {
        what: &'static str,
        #[source]
        source: prost::DecodeError,
    },
    #[error("the protobuf envelope carries no typeMeta")]
    NoTypeMeta,
    #[error("protobuf bodies for {0} are not supported; send JSON")]
    Kind(String),
    #[error(
        "the protobuf {at} has fields moat does not decode from protobuf yet ({rest}); send the object as JSON instead"
    )]
    Unsupported { at: String, rest: String },
}

impl From<ProtoError> for ApiError {
    fn from(e: ProtoError) -> Self {
        let code = match e {
            ProtoError::Kind(_) | ProtoError::Unsupported { .. } => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            _ => StatusCode::BAD_REQUEST,
        };
        let reason = if code == StatusCode::BAD_REQUEST {
            "BadRequest"
        } else {
            "UnsupportedMediaType"
        };
        ApiError::new(code, reason, e.to_string())
    }
}

fn decode<M: Message + Default>(b: &[u8], what: &'static str) -> Result<M, ProtoError> {
    M::decode(b).map_err(|source| ProtoError::Decode { what, source })
}

/// What is left of a message after its converter took the fields it knows must be empty.
/// Go encodes its non-pointer fields even when they hold the zero value (`""`, `0`,
/// `false`, an empty struct), and those mean "unset" exactly as they do in JSON with
/// omitempty, so only fields holding something else count.
fn rest<M: Message + std::fmt::Debug + Default + PartialEq>(
    m: &M,
    at: &str,
) -> Result<(), ProtoError> {
    if *m == M::default() {
        return Ok(());
    }
    let set = set_fields(&format!("{m:?}"));
    if set.is_empty() {
        return Ok(());
    }
    Err(ProtoError::Unsupported {
        at: at.to_string(),
        rest: set.join(", "),
    })
}

/// Splits `a, b(c, d), e` at top-level commas.
fn top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start, mut quoted) = (0i32, 0usize, false);
    let mut prev = ' ';
    for (i, ch) in s.char_indices() {
        match ch {
            '"' if prev != '\\' => quoted = !quoted,
            '(' | '[' | '{' if !quoted => depth += 1,
            ')' | ']' | '}' if !quoted => depth -= 1,
            ',' if depth == 0 && !quoted => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
        prev = ch;
    }
    if !s[start..].trim().is_empty() {
        out.push(s[start..].trim());
    }
    out
}

/// Whether a Debug-printed prost value is a zero value: None, empty, "", 0, false,
/// Some(zero), or a message all of whose fields are zero.
fn is_zero(v: &str) -> bool {
    let v = v.trim();
    if matches!(v, "None" | "[]" | "{}" | "\"\"" | "0" | "false" | "0.0") {
        return true;
    }
    if let Some(inner) = v.strip_prefix("Some(").and_then(|r| r.strip_suffix(')')) {
        return is_zero(inner);
    }
    if let Some((name, body)) = v.split_once(" {")
        && !name.contains(' ')
        && let Some(body) = body.strip_suffix('}')
    {
        return set_fields_of(body).is_empty();
    }
    false
}

fn set_fields_of(body: &str) -> Vec<String> {
    top_level(body)
        .into_iter()
        .filter(|f| f.split_once(": ").is_some_and(|(_, v)| !is_zero(v)))
        .map(|f| f.chars().take(120).collect())
        .collect()
}

/// The fields of a prost message's Debug form that hold something, so the error names
/// what was sent rather than every field of the type.
fn set_fields(dbg: &str) -> Vec<String> {
    match dbg.split_once(" {") {
        Some((_, body)) => set_fields_of(body.trim_end().trim_end_matches('}')),
        None => vec![dbg.to_string()],
    }
}

const RBAC: &str = "rbac.authorization.k8s.io/v1";
const AUTHZ: &str = "authorization.k8s.io/v1";

/// Decodes a protobuf request body into the JSON object the handlers work with.
pub fn to_json(body: &[u8]) -> Result<Value, ProtoError> {
    let inner = body.strip_prefix(MAGIC).ok_or(ProtoError::Magic)?;
    let u: k8s_pb::apimachinery::pkg::runtime::Unknown = decode(inner, "envelope")?;
    let tm = u.type_meta.ok_or(ProtoError::NoTypeMeta)?;
    let api_version = tm.api_version.unwrap_or_default();
    let kind = tm.kind.unwrap_or_default();
    let raw = u.raw.unwrap_or_default();
    let mut obj = match (api_version.as_str(), kind.as_str()) {
        ("v1", "ConfigMap") => config_map(decode(&raw, "ConfigMap")?)?,
        ("v1", "Secret") => secret(decode(&raw, "Secret")?)?,
        ("v1", "Namespace") => namespace(decode(&raw, "Namespace")?)?,
        ("v1", "ServiceAccount") => service_account(decode(&raw, "ServiceAccount")?)?,
        ("v1", "Service") => service(decode(&raw, "Service")?)?,
        ("apps/v1", "Deployment") => deployment(decode(&raw, "Deployment")?)?,
        ("batch/v1", "Job") => batch::job(decode(&raw, "Job")?)?,
        ("batch/v1", "CronJob") => batch::cron_job(decode(&raw, "CronJob")?)?,
        (RBAC, "Role") => rbac::role(decode(&raw, "Role")?)?,
        (RBAC, "ClusterRole") => rbac::cluster_role(decode(&raw, "ClusterRole")?)?,
        (RBAC, "RoleBinding") => rbac::role_binding(decode(&raw, "RoleBinding")?)?,
        (RBAC, "ClusterRoleBinding") => {
            rbac::cluster_role_binding(decode(&raw, "ClusterRoleBinding")?)?
        }
        (AUTHZ, "SelfSubjectAccessReview") => {
            rbac::access_review(decode(&raw, "SelfSubjectAccessReview")?)?
        }
        (AUTHZ, "SelfSubjectRulesReview") => {
            rbac::rules_review(decode(&raw, "SelfSubjectRulesReview")?)?
        }
        _ => return Err(ProtoError::Kind(format!("{api_version} {kind}"))),
    };
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    Ok(Value::Object(obj))
}

fn put(m: &mut Map<String, Value>, k: &str, v: Value) {
    let empty = match &v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    };
    if !empty {
        m.insert(k.into(), v);
    }
}

fn strings(v: Vec<String>) -> Value {
    json!(v)
}

fn string_map(m: BTreeMap<String, String>) -> Value {
    json!(m)
}

fn object_meta(m: Option<meta::ObjectMeta>, at: &str) -> Result<Value, ProtoError> {
    let Some(mut m) = m else {
        return Ok(json!({}));
    };
    let mut o = Map::new();
    put(&mut o, "name", json!(m.name.take()));
    put(&mut o, "generateName", json!(m.generate_name.take()));
    put(&mut o, "namespace", json!(m.namespace.take()));
    put(&mut o, "labels", string_map(std::mem::take(&mut m.labels)));
    put(
        &mut o,
        "annotations",
        string_map(std::mem::take(&mut m.annotations)),
    );
    put(
        &mut o,
        "finalizers",
        strings(std::mem::take(&mut m.finalizers)),
    );
    put(&mut o, "resourceVersion", json!(m.resource_version.take()));
    let mut owners = Vec::new();
    for mut r in std::mem::take(&mut m.owner_references) {
        let mut rm = Map::new();
        put(&mut rm, "apiVersion", json!(r.api_version.take()));
        put(&mut rm, "kind", json!(r.kind.take()));
        put(&mut rm, "name", json!(r.name.take()));
        put(&mut rm, "uid", json!(r.uid.take()));
        put(&mut rm, "controller", json!(r.controller.take()));
        put(
            &mut rm,
            "blockOwnerDeletion",
            json!(r.block_owner_deletion.take()),
        );
        rest(&r, &format!("{at}.metadata.ownerReferences"))?;
        owners.push(Value::Object(rm));
    }
    put(&mut o, "ownerReferences", json!(owners));
    // Server-owned fields: Go always encodes creationTimestamp (as the zero time); the
    // server sets these itself, so they are dropped like their JSON forms are.
    m.creation_timestamp = None;
    m.uid = None;
    m.generation = None;
    m.self_link = None;
    m.managed_fields.clear();
    rest(&m, &format!("{at}.metadata"))?;
    Ok(Value::Object(o))
}

fn config_map(mut c: core::ConfigMap) -> Result<Map<String, Value>, ProtoError> {
    let mut o = Map::new();
    o.insert(
        "metadata".into(),
        object_meta(c.metadata.take(), "ConfigMap")?,
    );
    put(&mut o, "data", string_map(std::mem::take(&mut c.data)));
    put(
        &mut o,
        "binaryData",
        bytes_map(std::mem::take(&mut c.binary_data)),
    );
    put(&mut o, "immutable", json!(c.immutable.take()));
    rest(&c, "ConfigMap")?;
    Ok(o)
}

fn bytes_map(m: BTreeMap<String, Vec<u8>>) -> Value {
    use base64::Engine as _;
    Value::Object(
        m.into_iter()
            .map(|(k, v)| {
                (
                    k,
                    json!(base64::engine::general_purpose::STANDARD.encode(v)),
                )
            })
            .collect(),
    )
}

fn secret(mut s: core::Secret) -> Result<Map<String, Value>, ProtoError> {
    let mut o = Map::new();
    o.insert("metadata".into(), object_meta(s.metadata.take(), "Secret")?);
    put(&mut o, "data", bytes_map(std::mem::take(&mut s.data)));
    put(
        &mut o,
        "stringData",
        string_map(std::mem::take(&mut s.string_data)),
    );
    put(&mut o, "type", json!(s.r#type.take()));
    put(&mut o, "immutable", json!(s.immutable.take()));
    rest(&s, "Secret")?;
    Ok(o)
}

fn namespace(mut n: core::Namespace) -> Result<Map<String, Value>, ProtoError> {
    let mut o = Map::new();
    o.insert(
        "metadata".into(),
        object_meta(n.metadata.take(), "Namespace")?,
    );
    if let Some(mut spec) = n.spec.take() {
        let f = strings(std::mem::take(&mut spec.finalizers));
        rest(&spec, "Namespace.spec")?;
        let mut sm = Map::new();
        put(&mut sm, "finalizers", f);
        o.insert("spec".into(), Value::Object(sm));
    }
    // Status is the server's; a client-sent empty status is dropped.
    n.status = None;
    rest(&n, "Namespace")?;
    Ok(o)
}

fn service_account(mut a: core::ServiceAccount) -> Result<Map<String, Value>, ProtoError> {
    let mut o = Map::new();
    o.insert(
        "metadata".into(),
        object_meta(a.metadata.take(), "ServiceAccount")?,
    );
    put(
        &mut o,
        "automountServiceAccountToken",
        json!(a.automount_service_account_token.take()),
    );
    let ips: Vec<Value> = std::mem::take(&mut a.image_pull_secrets)
        .into_iter()
        .map(|r| json!({"name": r.name}))
        .collect();
    put(&mut o, "imagePullSecrets", json!(ips));
    rest(&a, "ServiceAccount")?;
    Ok(o)
}

fn int_or_string(v: IntOrString) -> Value {
    match v.r#type {
        Some(1) => json!(v.str_val.unwrap_or_default()),
        _ => json!(v.int_val.unwrap_or(0)),
    }
}

fn service(mut s: core::Service) -> Result<Map<String, Value>, ProtoError> {
    let mut o = Map::new();
    o.insert(
        "metadata".into(),
        object_meta(s.metadata.take(), "Service")?,
    );
    if let Some(mut spec) = s.spec.take() {
        let mut sm = Map::new();
        let mut ports = Vec::new();
        for (i, mut p) in std::mem::take(&mut spec.ports).into_iter().enumerate() {
            let mut pm = Map::new();
            put(&mut pm, "name", json!(p.name.take()));
            put(&mut pm, "protocol", json!(p.protocol.take()));
            put(&mut pm, "appProtocol", json!(p.app_protocol.take()));
            put(&mut pm, "port", json!(p.port.take()));
            if let Some(t) = p.target_port.take() {
                pm.insert("targetPort".into(), int_or_string(t));
            }
            put(
                &mut pm,
                "nodePort",
                json!(p.node_port.take().filter(|n| *n != 0)),
            );
            rest(&p, &format!("Service.spec.ports[{i}]"))?;
            ports.push(Value::Object(pm));
        }
        put(&mut sm, "ports", json!(ports));
        put(
            &mut sm,
            "selector",
            string_map(std::mem::take(&mut spec.selector)),
        );
        put(&mut sm, "clusterIP", json!(spec.cluster_ip.take()));
        put(
            &mut sm,
            "clusterIPs",
            strings(std::mem::take(&mut spec.cluster_ips)),
        );
        put(&mut sm, "type", json!(spec.r#type.take()));
        put(
            &mut sm,
            "externalIPs",
            strings(std::mem::take(&mut spec.external_ips)),
        );
        put(
            &mut sm,
            "sessionAffinity",
            json!(spec.session_affinity.take()),
        );
        put(&mut sm, "externalName", json!(spec.external_name.take()));
        put(
            &mut sm,
            "externalTrafficPolicy",
            json!(spec.external_traffic_policy.take()),
        );
        rest(&spec, "Service.spec")?;
        o.insert("spec".into(), Value::Object(sm));
    }
    s.status = None;
    rest(&s, "Service")?;
    Ok(o)
}

fn label_selector(s: Option<meta::LabelSelector>, at: &str) -> Result<Value, ProtoError> {
    let Some(mut s) = s else {
        return Ok(Value::Null);
    };
    let mut o = Map::new();
    put(
        &mut o,
        "matchLabels",
        string_map(std::mem::take(&mut s.match_labels)),
    );
    let mut exprs = Vec::new();
    for mut r in std::mem::take(&mut s.match_expressions) {
        let mut e = Map::new();
        put(&mut e, "key", json!(r.key.take()));
        put(&mut e, "operator", json!(r.operator.take()));
        put(&mut e, "values", strings(std::mem::take(&mut r.values)));
        rest(&r, &format!("{at}.matchExpressions"))?;
        exprs.push(Value::Object(e));
    }
    put(&mut o, "matchExpressions", json!(exprs));
    rest(&s, at)?;
    Ok(Value::Object(o))
}

fn quantities(m: BTreeMap<String, k8s_pb::apimachinery::pkg::api::resource::Quantity>) -> Value {
    Value::Object(
        m.into_iter()
            .map(|(k, q)| (k, json!(q.string.unwrap_or_default())))
            .collect(),
    )
}

fn container(mut c: core::Container, at: &str) -> Result<Value, ProtoError> {
    let mut o = Map::new();
    put(&mut o, "name", json!(c.name.take()));
    put(&mut o, "image", json!(c.image.take()));
    put(&mut o, "command", strings(std::mem::take(&mut c.command)));
    put(&mut o, "args", strings(std::mem::take(&mut c.args)));
    put(&mut o, "workingDir", json!(c.working_dir.take()));
    let mut ports = Vec::new();
    for mut p in std::mem::take(&mut c.ports) {
        let mut pm = Map::new();
        put(&mut pm, "name", json!(p.name.take()));
        put(&mut pm, "containerPort", json!(p.container_port.take()));
        put(
            &mut pm,
            "hostPort",
            json!(p.host_port.take().filter(|h| *h != 0)),
        );
        put(&mut pm, "protocol", json!(p.protocol.take()));
        put(&mut pm, "hostIP", json!(p.host_ip.take()));
        rest(&p, &format!("{at}.ports"))?;
        ports.push(Value::Object(pm));
    }
    put(&mut o, "ports", json!(ports));
    let mut env = Vec::new();
    for mut e in std::mem::take(&mut c.env) {
        let mut em = Map::new();
        put(&mut em, "name", json!(e.name.take()));
        put(&mut em, "value", json!(e.value.take()));
        rest(&e, &format!("{at}.env"))?;
        env.push(Value::Object(em));
    }
    put(&mut o, "env", json!(env));
    if let Some(mut r) = c.resources.take() {
        let mut rm = Map::new();
        put(&mut rm, "limits", quantities(std::mem::take(&mut r.limits)));
        put(
            &mut rm,
            "requests",
            quantities(std::mem::take(&mut r.requests)),
        );
        rest(&r, &format!("{at}.resources"))?;
        // kubectl's generators send `resources: {}`; keep it as they would in JSON.
        o.insert("resources".into(), Value::Object(rm));
    }
    put(&mut o, "imagePullPolicy", json!(c.image_pull_policy.take()));
    put(
        &mut o,
        "terminationMessagePath",
        json!(c.termination_message_path.take()),
    );
    put(
        &mut o,
        "terminationMessagePolicy",
        json!(c.termination_message_policy.take()),
    );
    put(&mut o, "stdin", json!(c.stdin.take().filter(|b| *b)));
    put(
        &mut o,
        "stdinOnce",
        json!(c.stdin_once.take().filter(|b| *b)),
    );
    put(&mut o, "tty", json!(c.tty.take().filter(|b| *b)));
    rest(&c, at)?;
    Ok(Value::Object(o))
}

fn pod_template(t: Option<core::PodTemplateSpec>, at: &str) -> Result<Value, ProtoError> {
    let Some(mut t) = t else {
        return Ok(Value::Null);
    };
    let mut o = Map::new();
    o.insert("metadata".into(), object_meta(t.metadata.take(), at)?);
    if let Some(mut s) = t.spec.take() {
        let mut sm = Map::new();
        let mut cs = Vec::new();
        for (i, c) in std::mem::take(&mut s.containers).into_iter().enumerate() {
            cs.push(container(c, &format!("{at}.spec.containers[{i}]"))?);
        }
        sm.insert("containers".into(), json!(cs));
        let mut ics = Vec::new();
        for (i, c) in std::mem::take(&mut s.init_containers)
            .into_iter()
            .enumerate()
        {
            ics.push(container(c, &format!("{at}.spec.initContainers[{i}]"))?);
        }
        put(&mut sm, "initContainers", json!(ics));
        put(&mut sm, "restartPolicy", json!(s.restart_policy.take()));
        put(
            &mut sm,
            "terminationGracePeriodSeconds",
            json!(s.termination_grace_period_seconds.take()),
        );
        put(&mut sm, "dnsPolicy", json!(s.dns_policy.take()));
        put(
            &mut sm,
            "nodeSelector",
            string_map(std::mem::take(&mut s.node_selector)),
        );
        put(
            &mut sm,
            "serviceAccountName",
            json!(s.service_account_name.take()),
        );
        put(&mut sm, "nodeName", json!(s.node_name.take()));
        put(
            &mut sm,
            "hostNetwork",
            json!(s.host_network.take().filter(|b| *b)),
        );
        put(&mut sm, "schedulerName", json!(s.scheduler_name.take()));
        put(
            &mut sm,
            "runtimeClassName",
            json!(s.runtime_class_name.take()),
        );
        rest(&s, &format!("{at}.spec"))?;
        o.insert("spec".into(), Value::Object(sm));
    }
    rest(&t, at)?;
    Ok(Value::Object(o))
}

fn deployment(mut d: apps::Deployment) -> Result<Map<String, Value>, ProtoError> {
    let mut o = Map::new();
    o.insert(
        "metadata".into(),
        object_meta(d.metadata.take(), "Deployment")?,
    );
    if let Some(mut s) = d.spec.take() {
        let mut sm = Map::new();
        put(&mut sm, "replicas", json!(s.replicas.take()));
        put(
            &mut sm,
            "selector",
            label_selector(s.selector.take(), "Deployment.spec.selector")?,
        );
        put(
            &mut sm,
            "template",
            pod_template(s.template.take(), "Deployment.spec.template")?,
        );
        if let Some(mut st) = s.strategy.take() {
            let mut stm = Map::new();
            put(&mut stm, "type", json!(st.r#type.take()));
            if let Some(mut ru) = st.rolling_update.take() {
                let mut rm = Map::new();
                if let Some(v) = ru.max_surge.take() {
                    rm.insert("maxSurge".into(), int_or_string(v));
                }
                if let Some(v) = ru.max_unavailable.take() {
                    rm.insert("maxUnavailable".into(), int_or_string(v));
                }
                rest(&ru, "Deployment.spec.strategy.rollingUpdate")?;
                stm.insert("rollingUpdate".into(), Value::Object(rm));
            }
            rest(&st, "Deployment.spec.strategy")?;
            // `strategy: {}` from kubectl's generator stays `{}` (defaulting fills it).
            sm.insert("strategy".into(), Value::Object(stm));
        }
        put(
            &mut sm,
            "minReadySeconds",
            json!(s.min_ready_seconds.take().filter(|n| *n != 0)),
        );
        put(
            &mut sm,
            "revisionHistoryLimit",
            json!(s.revision_history_limit.take()),
        );
        put(&mut sm, "paused", json!(s.paused.take().filter(|b| *b)));
        put(
            &mut sm,
            "progressDeadlineSeconds",
            json!(s.progress_deadline_seconds.take()),
        );
        rest(&s, "Deployment.spec")?;
        o.insert("spec".into(), Value::Object(sm));
    }
    d.status = None;
    rest(&d, "Deployment")?;
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let u = k8s_pb::apimachinery::pkg::runtime::Unknown {
            type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut b = MAGIC.to_vec();
        b.extend(u.encode_to_vec());
        b
    }

    pub(super) fn meta(name: &str) -> Option<meta::ObjectMeta> {
        Some(meta::ObjectMeta {
            name: Some(name.into()),
            // What Go sends for a zero creationTimestamp.
            creation_timestamp: Some(meta::Time {
                seconds: Some(-62135596800),
                nanos: Some(0),
            }),
            ..Default::default()
        })
    }

    #[test]
    fn config_map_round_trip() {
        let cm = core::ConfigMap {
            metadata: meta("demo"),
            data: [("a".to_string(), "1".to_string())].into(),
            binary_data: [("b".to_string(), vec![0u8, 255])].into(),
            immutable: None,
        };
        let v = to_json(&envelope("v1", "ConfigMap", cm.encode_to_vec())).expect("decode");
        assert_eq!(
            v,
            json!({"metadata": {"name": "demo"}, "data": {"a": "1"}, "binaryData": {"b": "AP8="},
                   "apiVersion": "v1", "kind": "ConfigMap"})
        );
    }

    #[test]
    fn deployment_like_kubectl_create_deployment() {
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let d = apps::Deployment {
            metadata: Some(meta::ObjectMeta {
                labels: labels.clone(),
                ..meta("web").unwrap_or_default()
            }),
            spec: Some(apps::DeploymentSpec {
                replicas: Some(2),
                selector: Some(meta::LabelSelector {
                    match_labels: labels.clone(),
                    match_expressions: vec![],
                }),
                template: Some(core::PodTemplateSpec {
                    metadata: Some(meta::ObjectMeta {
                        labels,
                        ..Default::default()
                    }),
                    spec: Some(core::PodSpec {
                        containers: vec![core::Container {
                            name: Some("busybox".into()),
                            image: Some("busybox:1".into()),
                            resources: Some(Default::default()),
                            ports: vec![core::ContainerPort {
                                container_port: Some(8080),
                                ..Default::default()
                            }],
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                }),
                strategy: Some(Default::default()),
                ..Default::default()
            }),
            status: Some(Default::default()),
        };
        let v = to_json(&envelope("apps/v1", "Deployment", d.encode_to_vec())).expect("decode");
        assert_eq!(v["spec"]["replicas"], 2);
        assert_eq!(v["spec"]["selector"]["matchLabels"]["app"], "web");
        assert_eq!(
            v["spec"]["template"]["spec"]["containers"][0],
            json!({"name": "busybox", "image": "busybox:1", "ports": [{"containerPort": 8080}], "resources": {}})
        );
        assert_eq!(v["spec"]["strategy"], json!({}));
        assert!(v.get("status").is_none());
    }

    #[test]
    fn service_ports_with_named_and_numeric_targets() {
        let s = core::Service {
            metadata: meta("svc"),
            spec: Some(core::ServiceSpec {
                ports: vec![
                    core::ServicePort {
                        name: Some("80-8080".into()),
                        protocol: Some("TCP".into()),
                        port: Some(80),
                        target_port: Some(IntOrString {
                            r#type: Some(0),
                            int_val: Some(8080),
                            str_val: None,
                        }),
                        ..Default::default()
                    },
                    core::ServicePort {
                        port: Some(443),
                        target_port: Some(IntOrString {
                            r#type: Some(1),
                            int_val: None,
                            str_val: Some("https".into()),
                        }),
                        ..Default::default()
                    },
                ],
                selector: [("app".to_string(), "svc".to_string())].into(),
                r#type: Some("ClusterIP".into()),
                ..Default::default()
            }),
            status: None,
        };
        let v = to_json(&envelope("v1", "Service", s.encode_to_vec())).expect("decode");
        assert_eq!(v["spec"]["ports"][0]["targetPort"], 8080);
        assert_eq!(v["spec"]["ports"][1]["targetPort"], "https");
        assert_eq!(v["spec"]["type"], "ClusterIP");
    }

    #[test]
    fn unconverted_fields_are_refused_not_dropped() {
        let d = apps::Deployment {
            metadata: meta("web"),
            spec: Some(apps::DeploymentSpec {
                template: Some(core::PodTemplateSpec {
                    metadata: None,
                    spec: Some(core::PodSpec {
                        priority_class_name: Some("high".into()),
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
            status: None,
        };
        let e = to_json(&envelope("apps/v1", "Deployment", d.encode_to_vec()))
            .expect_err("unsupported field");
        let msg = e.to_string();
        assert!(msg.contains("Deployment.spec.template.spec"), "{msg}");
        assert!(msg.contains("priority_class_name"), "{msg}");
        assert!(!msg.contains("volumes"), "only set fields are named: {msg}");
        assert_eq!(ApiError::from(e).code, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[test]
    fn go_zero_values_count_as_unset() {
        let s = core::ServiceSpec {
            load_balancer_ip: Some(String::new()),
            health_check_node_port: Some(0),
            publish_not_ready_addresses: Some(false),
            session_affinity_config: Some(Default::default()),
            ..Default::default()
        };
        assert!(rest(&s, "Service.spec").is_ok());
        let s = core::ServiceSpec {
            load_balancer_ip: Some("10.0.0.1".into()),
            ..Default::default()
        };
        let e = rest(&s, "Service.spec").expect_err("set");
        assert!(
            e.to_string()
                .contains("load_balancer_ip: Some(\"10.0.0.1\")"),
            "{e}"
        );
        assert_eq!(top_level(r#"a: Some("x, y"), b: [1, 2]"#).len(), 2);
    }

    #[test]
    fn garbage_is_a_bad_request() {
        assert!(matches!(to_json(b"{}"), Err(ProtoError::Magic)));
        assert!(matches!(
            to_json(b"k8s\0\xff\xff\xff"),
            Err(ProtoError::Decode { .. })
        ));
        let e = to_json(&envelope("v1", "Pod", vec![])).expect_err("kind");
        assert_eq!(ApiError::from(e).code, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
}

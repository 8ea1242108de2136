//! A container's environment as the kubelet makes it (`makeEnvironmentVariables`): `envFrom`
//! (ConfigMaps and Secrets, with `prefix`), then `env` in order, each `value` expanded with
//! `$(VAR)` references to the variables defined before it, each `valueFrom` resolved
//! (`fieldRef`, `resourceFieldRef`, `configMapKeyRef`, `secretKeyRef`); then `$(VAR)` in
//! `command` and `args`. Sans-IO: ConfigMaps and Secrets come through a lookup function.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::Value;

/// What the downward API can tell a container besides its pod object.
pub struct Facts<'a> {
    pub pod: &'a Pod,
    pub pod_ip: Option<&'a str>,
    pub host_ip: Option<&'a str>,
    /// Node allocatable, for `resourceFieldRef` limits a container does not set.
    pub node_cpu_millis: i64,
    pub node_memory_bytes: i64,
}

/// (`configmaps` | `secrets`, name) in the pod's namespace → the object, `None` if it does
/// not exist, `Err` if it could not be read.
pub type Lookup<'a> = dyn Fn(&str, &str) -> Result<Option<Value>, LookupError> + 'a;

/// Why a ConfigMap or Secret could not be read (the API's error, or a refused name).
pub type LookupError = Box<dyn std::error::Error + Send + Sync>;

/// Why a container's environment cannot be made; the texts are the kubelet's, as they show
/// up in `CreateContainerConfigError`.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("unsupported fieldPath: {0}")]
    FieldPath(String),
    #[error("resourceFieldRef: no container {0}")]
    NoContainer(String),
    #[error("unsupported container resource: {0}")]
    Resource(String),
    #[error("resourceFieldRef: divisor {0} must be positive")]
    Divisor(String),
    #[error("resourceFieldRef")]
    Quantity(#[from] moat_api::quantity::QuantityError),
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    #[error("couldn't find key {key} in {kind} {namespace}/{name}")]
    NoKey {
        key: String,
        kind: &'static str,
        namespace: String,
        name: String,
    },
    #[error("reading {kind} {name}")]
    Lookup {
        kind: &'static str,
        name: String,
        #[source]
        source: LookupError,
    },
}

fn singular(kind: &str) -> &'static str {
    if kind == "secrets" {
        "secret"
    } else {
        "configmap"
    }
}

/// Kubernetes' `IsEnvVarName`: `[-._a-zA-Z][-._a-zA-Z0-9]*`.
pub fn valid_name(n: &str) -> bool {
    let mut b = n.bytes();
    b.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || matches!(f, b'-' | b'.' | b'_'))
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'))
}

/// Kubernetes' `$(VAR)` expansion: a defined `VAR` is replaced, an undefined one is left as
/// written, `$$` is a literal `$`, anything else is kept.
pub fn expand(input: &str, vars: &dyn Fn(&str) -> Option<String>) -> String {
    let b = input.as_bytes();
    let mut out = String::new();
    let mut checkpoint = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            out.push_str(&input[checkpoint..i]);
            let (text, advance) = match b[i + 1] {
                b'$' => ("$".to_string(), 1),
                b'(' => match input[i + 2..].find(')') {
                    Some(close) => {
                        let name = &input[i + 2..i + 2 + close];
                        (
                            vars(name).unwrap_or_else(|| format!("$({name})")),
                            close + 2,
                        )
                    }
                    None => ("$(".to_string(), 1),
                },
                _ => {
                    // `$` and the next character, whole (it may be multi-byte).
                    let next = input[i + 1..].chars().next().map_or(1, char::len_utf8);
                    (input[i..i + 1 + next].to_string(), next)
                }
            };
            out.push_str(&text);
            i += advance;
            checkpoint = i + 1;
        }
        i += 1;
    }
    out.push_str(&input[checkpoint.min(input.len())..]);
    out
}

fn object<'a>(
    cache: &'a mut BTreeMap<(String, String), Option<Value>>,
    lookup: &Lookup,
    kind: &str,
    name: &str,
) -> Result<&'a Option<Value>, EnvError> {
    let key = (kind.to_string(), name.to_string());
    if !cache.contains_key(&key) {
        let v = lookup(kind, name).map_err(|source| EnvError::Lookup {
            kind: singular(kind),
            name: name.to_string(),
            source,
        })?;
        cache.insert(key.clone(), v);
    }
    Ok(&cache[&key])
}

fn decode(kind: &str, v: &Value) -> Option<String> {
    let s = v.as_str()?;
    if kind == "secrets" {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
        Some(String::from_utf8_lossy(&bytes).into_owned())
    } else {
        Some(s.to_string())
    }
}

/// The value of `key` in a ConfigMap (`data`, then `binaryData`) or Secret (`data`).
fn key_value(kind: &str, obj: &Value, key: &str) -> Option<String> {
    if let Some(v) = obj["data"].get(key) {
        return decode(kind, v);
    }
    let b = obj["binaryData"].get(key)?;
    decode("secrets", b)
}

fn label(kind: &str) -> &'static str {
    if kind == "secrets" {
        "Secret"
    } else {
        "ConfigMap"
    }
}

fn field_ref(path: &str, f: &Facts) -> Result<String, EnvError> {
    let m = &f.pod.metadata;
    let spec = f.pod.spec.as_ref();
    let subscript = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("['"))
            .and_then(|r| r.strip_suffix("']"))
    };
    Ok(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_else(|| "default".into()),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => f.pod_ip.unwrap_or_default().to_string(),
        "status.hostIP" | "status.hostIPs" => f.host_ip.unwrap_or_default().to_string(),
        _ => {
            if let Some(k) = subscript("metadata.labels") {
                m.labels
                    .as_ref()
                    .and_then(|l| l.get(k).cloned())
                    .unwrap_or_default()
            } else if let Some(k) = subscript("metadata.annotations") {
                m.annotations
                    .as_ref()
                    .and_then(|a| a.get(k).cloned())
                    .unwrap_or_default()
            } else {
                return Err(EnvError::FieldPath(path.to_string()));
            }
        }
    })
}

fn resource_field_ref(
    r: &k8s_openapi::api::core::v1::ResourceFieldSelector,
    me: &Container,
    f: &Facts,
) -> Result<String, EnvError> {
    let c = match r.container_name.as_deref().filter(|n| !n.is_empty()) {
        None => me,
        Some(n) => f
            .pod
            .spec
            .iter()
            .flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            })
            .find(|c| c.name == n)
            .ok_or_else(|| EnvError::NoContainer(n.to_string()))?,
    };
    let res = c.resources.as_ref();
    let get = |which: &str, name: &str| {
        res.and_then(|r| {
            if which == "limits" {
                r.limits.as_ref()
            } else {
                r.requests.as_ref()
            }
        })
        .and_then(|m| m.get(name))
        .map(|q| q.0.clone())
    };
    let (which, name) = r
        .resource
        .split_once('.')
        .ok_or_else(|| EnvError::Resource(r.resource.clone()))?;
    let q = |s: &str| moat_api::quantity::milli_value(s).map(i128::from);
    let divisor = r.divisor.as_ref().map(|d| d.0.as_str()).unwrap_or("1");
    let div = q(divisor)?;
    if div <= 0 {
        return Err(EnvError::Divisor(divisor.to_string()));
    }
    // Values in millis; unset limits are the node's allocatable, unset requests are 0.
    let value = match (which, name, get(which, name)) {
        ("limits" | "requests", "cpu" | "memory" | "ephemeral-storage", Some(v)) => q(&v)?,
        ("limits", "cpu", None) => i128::from(f.node_cpu_millis),
        ("limits", "memory", None) => i128::from(f.node_memory_bytes) * 1000,
        ("requests", "cpu" | "memory" | "ephemeral-storage", None) => 0,
        _ => return Err(EnvError::Resource(r.resource.clone())),
    };
    Ok(((value + div - 1) / div).to_string())
}

/// The container's environment, in definition order (a later definition of a name replaces
/// the earlier value in place). Errors read like the kubelet's CreateContainerConfigError.
pub fn resolve(
    c: &Container,
    f: &Facts,
    lookup: &Lookup,
) -> Result<Vec<(String, String)>, EnvError> {
    let mut out: Vec<(String, String)> = Vec::new();
    let set = |out: &mut Vec<(String, String)>, k: String, v: String| {
        if let Some(e) = out.iter_mut().find(|(n, _)| *n == k) {
            e.1 = v;
        } else {
            out.push((k, v));
        }
    };
    let mut cache = BTreeMap::new();
    for src in c.env_from.iter().flatten() {
        let prefix = src.prefix.clone().unwrap_or_default();
        let (kind, name, optional) = match (&src.config_map_ref, &src.secret_ref) {
            (Some(r), _) => ("configmaps", r.name.clone(), r.optional.unwrap_or(false)),
            (_, Some(r)) => ("secrets", r.name.clone(), r.optional.unwrap_or(false)),
            _ => continue,
        };
        let Some(obj) = object(&mut cache, lookup, kind, &name)? else {
            if optional {
                continue;
            }
            return Err(EnvError::NotFound {
                kind: singular(kind),
                name,
            });
        };
        let mut keys: Vec<&String> = obj["data"]
            .as_object()
            .into_iter()
            .chain(obj["binaryData"].as_object())
            .flat_map(|m| m.keys())
            .collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            let var = format!("{prefix}{k}");
            if !valid_name(&var) {
                continue;
            }
            if let Some(v) = key_value(kind, obj, k) {
                set(&mut out, var, v);
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = match &e.value_from {
            None => {
                let defined = out.clone();
                expand(e.value.as_deref().unwrap_or(""), &|n| {
                    defined.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())
                })
            }
            Some(vf) => {
                if let Some(fr) = &vf.field_ref {
                    field_ref(&fr.field_path, f)?
                } else if let Some(rr) = &vf.resource_field_ref {
                    resource_field_ref(rr, c, f)?
                } else {
                    let (kind, name, key, optional) =
                        match (&vf.config_map_key_ref, &vf.secret_key_ref) {
                            (Some(r), _) => {
                                ("configmaps", &r.name, &r.key, r.optional.unwrap_or(false))
                            }
                            (_, Some(r)) => {
                                ("secrets", &r.name, &r.key, r.optional.unwrap_or(false))
                            }
                            _ => continue,
                        };
                    match object(&mut cache, lookup, kind, name)? {
                        None if optional => continue,
                        None => {
                            return Err(EnvError::NotFound {
                                kind: singular(kind),
                                name: name.clone(),
                            });
                        }
                        Some(obj) => match key_value(kind, obj, key) {
                            Some(v) => v,
                            None if optional => continue,
                            None => {
                                let ns = f.pod.metadata.namespace.as_deref().unwrap_or("default");
                                return Err(EnvError::NoKey {
                                    key: key.clone(),
                                    kind: label(kind),
                                    namespace: ns.to_string(),
                                    name: name.clone(),
                                });
                            }
                        },
                    }
                }
            }
        };
        set(&mut out, e.name.clone(), value);
    }
    Ok(out)
}

/// The container with `$(VAR)` in its `command` and `args` expanded from `env`.
pub fn expand_command(c: &Container, env: &[(String, String)]) -> Container {
    let vars = |n: &str| env.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut c = c.clone();
    for list in [&mut c.command, &mut c.args].into_iter().flatten() {
        for s in list.iter_mut() {
            *s = expand(s, &vars);
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expansion_follows_kubernetes() {
        let vars = |n: &str| match n {
            "A" => Some("x".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let cases = [
            ("$(A)", "x"),
            ("pre-$(A)-post", "pre-x-post"),
            ("$(A)$(A)", "xx"),
            ("$(EMPTY)!", "!"),
            ("$(MISSING)", "$(MISSING)"),
            ("$$(A)", "$(A)"),
            ("$$", "$"),
            ("$", "$"),
            ("a$", "a$"),
            ("$(A", "$(A"),
            ("$A", "$A"),
            ("$é", "$é"),
            ("price: 5$ $(A)", "price: 5$ x"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, &vars), want, "{input:?}");
        }
    }

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "prod", "uid": "u-1",
                "labels": {"app": "shop"}, "annotations": {"team": "a"}},
            "spec": {"nodeName": "n1", "serviceAccountName": "sa",
                "containers": [{"name": "c", "image": "busybox",
                    "resources": {"limits": {"memory": "64Mi"}, "requests": {"cpu": "250m"}}}]},
        }))
        .unwrap()
    }

    fn container(v: Value) -> Container {
        serde_json::from_value(v).unwrap()
    }

    fn lookup(kind: &str, name: &str) -> Result<Option<Value>, LookupError> {
        Ok(match (kind, name) {
            ("configmaps", "cfg") => Some(
                json!({"data": {"mode": "fast", "bad key": "x", "LEVEL": "3"},
                "binaryData": {"blob": "YmluYXJ5"}}),
            ),
            ("secrets", "creds") => Some(json!({"data": {"password": "czNjcmV0"}})),
            ("configmaps", "broken") => return Err("GET configmaps/broken: 500".into()),
            _ => None,
        })
    }

    fn facts(p: &Pod) -> Facts<'_> {
        Facts {
            pod: p,
            pod_ip: Some("10.42.0.7"),
            host_ip: Some("192.0.2.1"),
            node_cpu_millis: 2000,
            node_memory_bytes: 8 << 30,
        }
    }

    #[test]
    fn env_from_value_from_and_references_resolve_in_order() {
        let p = pod();
        let c = container(json!({"name": "c",
        "resources": {"limits": {"memory": "64Mi"}, "requests": {"cpu": "250m"}},
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"},
                    {"secretRef": {"name": "absent", "optional": true}}],
        "env": [
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
            {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
            {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope", "optional": true}}},
            {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {"name": "CPU_REQ_M", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
            {"name": "URL", "value": "http://$(IP):8080/$(POD)?$(LATER)&$$(POD)"},
            {"name": "LATER", "value": "l"},
            {"name": "CFG_mode", "value": "overridden"},
        ]}));
        let env = resolve(&c, &facts(&p), &lookup).unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(env[0], ("CFG_LEVEL".into(), "3".into()), "{env:?}");
        assert_eq!(get("CFG_blob"), Some("binary"));
        assert_eq!(get("CFG_bad key"), None, "invalid names are skipped");
        assert_eq!(get("CFG_mode"), Some("overridden"));
        for (k, v) in [
            ("POD", "web"),
            ("NS", "prod"),
            ("IP", "10.42.0.7"),
            ("NODE", "n1"),
            ("HOST", "192.0.2.1"),
            ("APP", "shop"),
            ("MODE", "fast"),
            ("PASS", "s3cret"),
            ("MEM_MI", "64"),
            ("CPU", "2"),
            ("CPU_REQ_M", "250"),
            ("URL", "http://10.42.0.7:8080/web?$(LATER)&$(POD)"),
        ] {
            assert_eq!(get(k), Some(v), "{k}");
        }
        assert_eq!(get("OPT"), None);

        let cmd = expand_command(
            &container(
                json!({"name": "c", "command": ["sh", "-c", "echo $(POD) $(NOPE)"],
                "args": ["$(NS)"]}),
            ),
            &env,
        );
        assert_eq!(cmd.command.unwrap(), ["sh", "-c", "echo web $(NOPE)"]);
        assert_eq!(cmd.args.unwrap(), ["prod"]);
    }

    #[test]
    fn missing_sources_fail_like_the_kubelet() {
        let p = pod();
        let f = facts(&p);
        let one = |v: Value| {
            resolve(&container(json!({"name": "c", "env": [v]})), &f, &lookup).map_err(|e| {
                match std::error::Error::source(&e) {
                    Some(c) => format!("{e}: {c}"),
                    None => e.to_string(),
                }
            })
        };
        assert_eq!(
            one(
                json!({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "zz"}}})
            ),
            Err("couldn't find key zz in ConfigMap prod/cfg".into())
        );
        assert_eq!(
            one(json!({"name": "X", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k"}}})),
            Err("secret \"gone\" not found".into())
        );
        assert_eq!(
            one(
                json!({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k", "optional": true}}})
            ),
            Ok(vec![])
        );
        assert!(one(json!({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "broken", "key": "k"}}}))
            .unwrap_err()
            .contains("500"));
        assert_eq!(
            one(json!({"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.bogus"}}})),
            Err("unsupported fieldPath: spec.bogus".into())
        );
        let from = resolve(
            &container(json!({"name": "c", "envFrom": [{"configMapRef": {"name": "gone"}}]})),
            &f,
            &lookup,
        );
        assert_eq!(
            from.map_err(|e| e.to_string()),
            Err("configmap \"gone\" not found".to_string())
        );
        assert!(valid_name("_a.b-1") && !valid_name("1a") && !valid_name("a b") && !valid_name(""));
    }
}

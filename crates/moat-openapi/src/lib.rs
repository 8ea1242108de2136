//! The OpenAPI documents kubectl reads: v3 (a root listing every served group-version and
//! one document per group-version) and v2 (JSON, and the gnostic protobuf that kubectl
//! 1.27/1.28 fetch eagerly).
//!
//! Schemas are the real ones, generated from the k8s-openapi types (their `schemars`
//! implementations carry the upstream names and descriptions), then completed with what
//! kubectl relies on and k8s-openapi leaves out:
//! - `x-kubernetes-group-version-kind` on each served kind, so `explain` and validation find
//!   it;
//! - `x-kubernetes-patch-merge-key` / `x-kubernetes-patch-strategy` (and the matching
//!   list-type extensions) on every list moat's strategic merge patch merges by key, taken
//!   from `moat_patch::list_kind`, so that `kubectl apply` computes the same patches from
//!   these documents as from its compiled-in types (schemas without them are worse than no
//!   schemas: kubectl would replace lists whole);
//! - PATCH operations carrying the GVK and a `fieldValidation` parameter, so kubectl
//!   delegates validation to the server (`fieldValidation=Strict`).
//!
//! Sans-IO: everything is built once in memory from static type information.

mod v2proto;

use std::collections::BTreeMap;

use moat_api::{RESOURCES, ResourceInfo};
use moat_patch::ListKind;
use serde_json::{Map, Value, json};

#[derive(Debug, thiserror::Error)]
pub enum OpenApiError {
    #[error("the generated schema for {0} is not an object")]
    NotObject(String),
    #[error("no schema was generated for {0}")]
    Missing(String),
    #[error("serializing the OpenAPI document {doc}")]
    Serialize {
        doc: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The built documents, serialized once.
pub struct Docs {
    /// Group-version path ("api/v1", "apis/apps/v1") → (v3 document bytes, content hash).
    v3: BTreeMap<String, (Vec<u8>, String)>,
    v2_json: Vec<u8>,
    v2_proto: Vec<u8>,
    /// Content hash of the v2 document (ETag).
    pub v2_hash: String,
}

fn hash(b: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha512::digest(b);
    d.iter().map(|x| format!("{x:02X}")).collect()
}

/// Definitions of every served kind and what they reference, keyed by upstream name
/// (`io.k8s.api.core.v1.Pod`), with `$ref`s pointing at `#/components/schemas/`.
fn definitions() -> Result<Map<String, Value>, OpenApiError> {
    use k8s_openapi::api::{apps, batch, coordination, core, discovery, networking, node, rbac};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
    let mut g = schemars::generate::SchemaSettings::openapi3().into_generator();
    g.subschema_for::<core::v1::Namespace>();
    g.subschema_for::<core::v1::Node>();
    g.subschema_for::<core::v1::Pod>();
    g.subschema_for::<core::v1::Service>();
    g.subschema_for::<core::v1::Endpoints>();
    g.subschema_for::<core::v1::ConfigMap>();
    g.subschema_for::<core::v1::Secret>();
    g.subschema_for::<core::v1::ServiceAccount>();
    g.subschema_for::<core::v1::Event>();
    g.subschema_for::<apps::v1::Deployment>();
    g.subschema_for::<apps::v1::ReplicaSet>();
    g.subschema_for::<apps::v1::DaemonSet>();
    g.subschema_for::<apps::v1::ControllerRevision>();
    g.subschema_for::<batch::v1::Job>();
    g.subschema_for::<batch::v1::CronJob>();
    g.subschema_for::<coordination::v1::Lease>();
    g.subschema_for::<discovery::v1::EndpointSlice>();
    g.subschema_for::<networking::v1::NetworkPolicy>();
    g.subschema_for::<node::v1::RuntimeClass>();
    g.subschema_for::<rbac::v1::Role>();
    g.subschema_for::<rbac::v1::ClusterRole>();
    g.subschema_for::<rbac::v1::RoleBinding>();
    g.subschema_for::<rbac::v1::ClusterRoleBinding>();
    g.subschema_for::<k8s_openapi::api::autoscaling::v1::Scale>();
    g.subschema_for::<meta::Status>();
    g.subschema_for::<meta::DeleteOptions>();
    let defs = g.take_definitions(true);
    let mut out = Map::new();
    for (k, v) in defs {
        out.insert(k, v);
    }
    Ok(out)
}

fn def_name(r: &ResourceInfo) -> String {
    let group = match r.group {
        "" => "core".to_string(),
        g => g.split('.').next().unwrap_or(g).to_string(),
    };
    format!("io.k8s.api.{group}.{}.{}", r.version, r.kind)
}

/// The definition a property refers to: `$ref` directly, or the single `allOf` entry
/// OpenAPI 3 uses when the reference carries a description.
fn ref_target(v: &Value) -> Option<&str> {
    v.get("$ref")
        .or_else(|| {
            v.get("allOf")
                .and_then(|a| a.get(0))
                .and_then(|x| x.get("$ref"))
        })
        .and_then(Value::as_str)
        .and_then(|r| r.rsplit('/').next())
}

/// Adds the patch extensions to the list properties under `def`, following `$ref`s, with
/// `path` the field names from the root of `kind`.
fn annotate_lists(
    defs: &mut Map<String, Value>,
    kind: &str,
    def: &str,
    path: &mut Vec<String>,
    depth: usize,
) {
    if depth > 12 {
        return;
    }
    let props: Vec<(String, Value)> = match defs.get(def).and_then(|d| d.get("properties")) {
        Some(Value::Object(p)) => p.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        _ => return,
    };
    for (name, prop) in props {
        path.push(name.clone());
        if prop.get("type").and_then(Value::as_str) == Some("array") {
            let names: Vec<&str> = path.iter().map(String::as_str).collect();
            let ext: Option<Vec<(&str, Value)>> = match moat_patch::list_kind(kind, &names) {
                ListKind::MergeBy(key) => Some(vec![
                    ("x-kubernetes-patch-merge-key", json!(key)),
                    ("x-kubernetes-patch-strategy", json!("merge")),
                    ("x-kubernetes-list-type", json!("map")),
                    // Ports are keyed by number and protocol upstream (the same port may
                    // be open for TCP and UDP), though patches merge by number alone.
                    (
                        "x-kubernetes-list-map-keys",
                        match key {
                            "containerPort" | "port" => json!([key, "protocol"]),
                            _ => json!([key]),
                        },
                    ),
                ]),
                ListKind::Set => Some(vec![
                    ("x-kubernetes-patch-strategy", json!("merge")),
                    ("x-kubernetes-list-type", json!("set")),
                ]),
                ListKind::Atomic => None,
            };
            if let Some(ext) = ext
                && let Some(p) = defs
                    .get_mut(def)
                    .and_then(|d| d.get_mut("properties"))
                    .and_then(|p| p.get_mut(&name))
                    .and_then(Value::as_object_mut)
            {
                for (k, v) in ext {
                    p.insert(k.to_string(), v);
                }
            }
            if let Some(t) = prop.get("items").and_then(ref_target) {
                annotate_lists(defs, kind, t, path, depth + 1);
            }
        } else if let Some(t) = ref_target(&prop) {
            annotate_lists(defs, kind, t, path, depth + 1);
        }
        path.pop();
    }
}

/// Fields upstream marks `retainKeys` (a one-of object whose unset members must be dropped
/// when the applied configuration switches member, e.g. a Deployment's strategy going from
/// RollingUpdate to Recreate). Without it kubectl sends no `$retainKeys` and the server keeps
/// the old member (which validation then refuses). moat-patch honours `$retainKeys` wherever
/// it appears, so these only add directives the server understands. The merge half of
/// `merge,retainKeys` must agree with `moat_patch::list_kind` (checked by a test).
const RETAIN_KEYS: &[(&str, &str, &str)] = &[
    (
        "io.k8s.api.apps.v1.DeploymentSpec",
        "strategy",
        "retainKeys",
    ),
    ("io.k8s.api.core.v1.PodSpec", "volumes", "merge,retainKeys"),
    (
        "io.k8s.api.core.v1.PodSpec",
        "resourceClaims",
        "merge,retainKeys",
    ),
];

/// The URL path of a resource's item endpoint, as upstream documents it.
fn item_path(r: &ResourceInfo) -> String {
    let base = if r.group.is_empty() {
        format!("/api/{}", r.version)
    } else {
        format!("/apis/{}/{}", r.group, r.version)
    };
    if r.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
    } else {
        format!("{base}/{}/{{name}}", r.plural)
    }
}

fn gvk(r: &ResourceInfo) -> Value {
    json!({"group": r.group, "kind": r.kind, "version": r.version})
}

/// The query parameters of a PATCH, as v3 parameter objects.
fn patch_parameters() -> Vec<Value> {
    ["dryRun", "fieldManager", "fieldValidation", "force"]
        .iter()
        .map(|n| {
            json!({"name": n, "in": "query", "uniqueItems": true,
                "schema": {"type": if *n == "force" { "boolean" } else { "string" }}})
        })
        .collect()
}

impl Docs {
    pub fn build() -> Result<Docs, OpenApiError> {
        let mut defs = definitions()?;
        for r in RESOURCES {
            let name = def_name(r);
            let d = defs
                .get_mut(&name)
                .ok_or_else(|| OpenApiError::Missing(name.clone()))?
                .as_object_mut()
                .ok_or_else(|| OpenApiError::NotObject(name.clone()))?;
            d.insert("x-kubernetes-group-version-kind".into(), json!([gvk(r)]));
            annotate_lists(&mut defs, r.kind, &name, &mut Vec::new(), 0);
        }
        for (def, field, strategy) in RETAIN_KEYS {
            if let Some(p) = defs
                .get_mut(*def)
                .and_then(|d| d.get_mut("properties"))
                .and_then(|p| p.get_mut(*field))
                .and_then(Value::as_object_mut)
            {
                p.insert("x-kubernetes-patch-strategy".into(), json!(strategy));
            }
        }
        if let Some(d) = defs
            .get_mut("io.k8s.api.autoscaling.v1.Scale")
            .and_then(Value::as_object_mut)
        {
            d.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": "autoscaling", "kind": "Scale", "version": "v1"}]),
            );
        }

        // v3: one document per group-version with that group's paths and all schemas (the
        // documents are self-contained, as kubectl resolves $refs within one document).
        let mut v3 = BTreeMap::new();
        for (g, v) in moat_api::group_versions() {
            let mut paths = Map::new();
            for r in RESOURCES.iter().filter(|r| r.group == g && r.version == v) {
                let ok = json!({"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{}", def_name(r))}}}}});
                paths.insert(
                    item_path(r),
                    json!({
                        "get": {"operationId": format!("read{}", r.kind), "responses": ok.clone(),
                                "x-kubernetes-action": "get", "x-kubernetes-group-version-kind": gvk(r)},
                        "patch": {"operationId": format!("patch{}", r.kind),
                                  "parameters": patch_parameters(),
                                  "requestBody": {"content": {
                                      "application/apply-patch+yaml": {"schema": {"type": "object"}},
                                      "application/json-patch+json": {"schema": {"type": "object"}},
                                      "application/merge-patch+json": {"schema": {"type": "object"}},
                                      "application/strategic-merge-patch+json": {"schema": {"type": "object"}}},
                                      "required": true},
                                  "responses": ok,
                                  "x-kubernetes-action": "patch", "x-kubernetes-group-version-kind": gvk(r)},
                    }),
                );
            }
            let doc = json!({
                "openapi": "3.0.0",
                "info": {"title": "Kubernetes", "version": "v1.33.0-moat"},
                "paths": paths,
                "components": {"schemas": defs},
            });
            let key = if g.is_empty() {
                format!("api/{v}")
            } else {
                format!("apis/{g}/{v}")
            };
            let bytes = serde_json::to_vec(&doc).map_err(|source| OpenApiError::Serialize {
                doc: format!("v3 {key}"),
                source,
            })?;
            let h = hash(&bytes);
            v3.insert(key, (bytes, h));
        }

        // v2: definitions with `#/definitions/` refs, and the same PATCH operations.
        let mut v2defs = Value::Object(defs.clone());
        rewrite_refs(&mut v2defs);
        let mut v2paths = Map::new();
        for r in RESOURCES {
            let params: Vec<Value> = ["dryRun", "fieldManager", "fieldValidation", "force"]
                .iter()
                .map(|n| {
                    json!({"name": n, "in": "query", "uniqueItems": true,
                        "type": if *n == "force" { "boolean" } else { "string" }})
                })
                .collect();
            v2paths.insert(
                item_path(r),
                json!({"patch": {"operationId": format!("patch{}", r.kind),
                    "consumes": ["application/json-patch+json", "application/merge-patch+json",
                                 "application/strategic-merge-patch+json", "application/apply-patch+yaml"],
                    "produces": ["application/json"],
                    "parameters": params,
                    "responses": {"200": {"description": "OK", "schema": {"$ref": format!("#/definitions/{}", def_name(r))}}},
                    "x-kubernetes-action": "patch", "x-kubernetes-group-version-kind": gvk(r)}}),
            );
        }
        let v2 = json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.33.0-moat"},
            "paths": v2paths, "definitions": v2defs});
        let v2_json = serde_json::to_vec(&v2).map_err(|source| OpenApiError::Serialize {
            doc: "v2".into(),
            source,
        })?;
        let v2_proto = v2proto::encode(&v2);
        let v2_hash = hash(&v2_json);
        Ok(Docs {
            v3,
            v2_json,
            v2_proto,
            v2_hash,
        })
    }

    /// The `/openapi/v3` root: every served group-version and where its document is.
    pub fn v3_root(&self) -> Value {
        let paths: Map<String, Value> = self
            .v3
            .iter()
            .map(|(k, (_, h))| {
                (
                    k.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{k}?hash={h}")}),
                )
            })
            .collect();
        json!({ "paths": paths })
    }

    /// The v3 document of "api/v1" or "apis/<group>/<version>", and its hash.
    pub fn v3_group_version(&self, gv: &str) -> Option<(&[u8], &str)> {
        self.v3
            .get(gv.trim_matches('/'))
            .map(|(b, h)| (b.as_slice(), h.as_str()))
    }

    pub fn v2_json(&self) -> &[u8] {
        &self.v2_json
    }

    /// The v2 document as gnostic's `openapi.v2.Document` protobuf.
    pub fn v2_protobuf(&self) -> &[u8] {
        &self.v2_proto
    }
}

/// `#/components/schemas/X` → `#/definitions/X`, a lone `allOf` reference turned back into
/// the plain `$ref` v2 readers expect, and OpenAPI 3-only keywords dropped.
fn rewrite_refs(v: &mut Value) {
    match v {
        Value::Object(m) => {
            let lone_ref = m
                .get("allOf")
                .and_then(Value::as_array)
                .filter(|a| a.len() == 1)
                .and_then(|a| a[0].get("$ref"))
                .cloned();
            if let Some(r) = lone_ref {
                m.remove("allOf");
                m.insert("$ref".into(), r);
            }
            if let Some(Value::String(r)) = m.get_mut("$ref")
                && let Some(name) = r.strip_prefix("#/components/schemas/")
            {
                *r = format!("#/definitions/{name}");
            }
            m.remove("nullable");
            for (_, c) in m.iter_mut() {
                rewrite_refs(c);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs() -> Docs {
        Docs::build().expect("docs")
    }

    fn v3(d: &Docs, gv: &str) -> Value {
        serde_json::from_slice(d.v3_group_version(gv).expect("gv").0).expect("json")
    }

    #[test]
    fn every_served_kind_has_a_schema_with_its_gvk() {
        let d = docs();
        for r in RESOURCES {
            let gv = if r.group.is_empty() {
                format!("api/{}", r.version)
            } else {
                format!("apis/{}/{}", r.group, r.version)
            };
            let doc = v3(&d, &gv);
            let s = &doc["components"]["schemas"][def_name(r)];
            assert_eq!(
                s["x-kubernetes-group-version-kind"][0]["kind"], r.kind,
                "{}",
                r.kind
            );
            assert!(s["properties"]["metadata"].is_object(), "{}", r.kind);
            assert!(
                d.v3_root()["paths"][&gv]["serverRelativeURL"]
                    .as_str()
                    .is_some_and(|u| u.contains("?hash="))
            );
        }
    }

    #[test]
    fn merge_keys_match_the_strategic_merge_patch_table() {
        let d = docs();
        let doc = v3(&d, "api/v1");
        let s = &doc["components"]["schemas"];
        let containers = &s["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
        let ports = &s["io.k8s.api.core.v1.Container"]["properties"]["ports"];
        assert_eq!(ports["x-kubernetes-patch-merge-key"], "containerPort");
        assert_eq!(
            ports["x-kubernetes-list-map-keys"],
            json!(["containerPort", "protocol"])
        );
        let sports = &s["io.k8s.api.core.v1.ServiceSpec"]["properties"]["ports"];
        assert_eq!(sports["x-kubernetes-patch-merge-key"], "port");
        assert_eq!(containers["x-kubernetes-list-map-keys"], json!(["name"]));
        // Atomic lists carry no merge extension.
        assert!(
            s["io.k8s.api.core.v1.Container"]["properties"]["args"]
                .get("x-kubernetes-patch-merge-key")
                .is_none()
        );
        let np = &s["io.k8s.api.networking.v1.NetworkPolicySpec"];
        assert!(np["properties"]["podSelector"].is_object());
        assert!(np["properties"]["policyTypes"]["description"].is_string());
    }

    /// Collects, for every list under `def`, where the schema's patch semantics (what
    /// kubectl reads) differ from `moat_patch::list_kind` (what the server applies).
    fn walk(
        defs: &Value,
        def: &str,
        kind: &str,
        path: &mut Vec<String>,
        out: &mut Vec<String>,
        depth: usize,
    ) {
        if depth > 12 {
            return;
        }
        let Some(props) = defs[def]["properties"].as_object() else {
            return;
        };
        for (name, prop) in props {
            path.push(name.clone());
            if prop["type"] == "array" {
                let strategy = prop["x-kubernetes-patch-strategy"].as_str().unwrap_or("");
                let served = match prop["x-kubernetes-patch-merge-key"].as_str() {
                    Some(k) if strategy.contains("merge") => format!("merge by {k}"),
                    None if strategy.contains("merge") => "set".to_string(),
                    _ => "atomic".to_string(),
                };
                let names: Vec<&str> = path.iter().map(String::as_str).collect();
                let table = match moat_patch::list_kind(kind, &names) {
                    ListKind::MergeBy(k) => format!("merge by {k}"),
                    ListKind::Set => "set".to_string(),
                    ListKind::Atomic => "atomic".to_string(),
                };
                if served != table {
                    out.push(format!(
                        "{kind} {}: schema {served}, moat-patch {table}",
                        path.join(".")
                    ));
                }
                if let Some(t) = prop.get("items").and_then(ref_target) {
                    walk(defs, t, kind, path, out, depth + 1);
                }
            } else if let Some(t) = ref_target(prop) {
                walk(defs, t, kind, path, out, depth + 1);
            }
            path.pop();
        }
    }

    /// kubectl computes client-side apply patches from the served schema and moat applies
    /// them with moat-patch's table: where the two disagree, a list kubectl sends as a
    /// partial merge would be replaced whole (or the reverse). The only disagreement is
    /// object metadata embedded in a pod template, which both upstream and the schema (one
    /// shared ObjectMeta definition) merge, while moat-patch's path table treats it as atomic.
    #[test]
    fn served_list_semantics_agree_with_moat_patch() {
        let d = docs();
        let mut out = Vec::new();
        for r in RESOURCES {
            let gv = if r.group.is_empty() {
                format!("api/{}", r.version)
            } else {
                format!("apis/{}/{}", r.group, r.version)
            };
            let doc = v3(&d, &gv);
            walk(
                &doc["components"]["schemas"],
                &def_name(r),
                r.kind,
                &mut Vec::new(),
                &mut out,
                0,
            );
        }
        out.retain(|m| {
            !m.split(' ')
                .nth(1)
                .map(|p| p.trim_end_matches(':'))
                .is_some_and(|p| {
                    p.ends_with(".metadata.finalizers") || p.ends_with(".metadata.ownerReferences")
                })
        });
        assert_eq!(out, Vec::<String>::new());
    }

    #[test]
    fn retain_keys_where_upstream_has_them() {
        let d = docs();
        let apps = v3(&d, "apis/apps/v1");
        let s = &apps["components"]["schemas"];
        assert_eq!(
            s["io.k8s.api.apps.v1.DeploymentSpec"]["properties"]["strategy"]["x-kubernetes-patch-strategy"],
            "retainKeys"
        );
        let vols = &s["io.k8s.api.core.v1.PodSpec"]["properties"]["volumes"];
        assert_eq!(vols["x-kubernetes-patch-strategy"], "merge,retainKeys");
        assert_eq!(vols["x-kubernetes-patch-merge-key"], "name");
    }

    #[test]
    fn patch_operations_offer_field_validation() {
        let d = docs();
        let doc = v3(&d, "apis/apps/v1");
        let p = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(p["x-kubernetes-group-version-kind"]["kind"], "Deployment");
        assert!(
            p["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|x| x["name"] == "fieldValidation"))
        );
    }

    /// The whole v2 document decodes from protobuf with what kubectl 1.27 reads from it: every
    /// definition, the GVK on each kind, merge keys as YAML vendor extensions, and the PATCH
    /// operations' fieldValidation parameter.
    #[test]
    fn v2_protobuf_round_trips_the_whole_document() {
        use prost::Message;
        let d = docs();
        let json: Value = serde_json::from_slice(d.v2_json()).expect("json");
        let doc = v2proto::Document::decode(d.v2_protobuf()).expect("decode");
        assert_eq!(doc.swagger, "2.0");
        let defs = doc.definitions.expect("definitions").additional_properties;
        assert_eq!(
            defs.len(),
            json["definitions"].as_object().map(Map::len).unwrap_or(0)
        );
        let def = |n: &str| {
            defs.iter()
                .find(|x| x.name == n)
                .and_then(|x| x.value.clone())
                .unwrap_or_else(|| panic!("no {n}"))
        };
        let ext = |exts: &[v2proto::NamedAny], n: &str| {
            exts.iter()
                .find(|e| e.name == n)
                .and_then(|e| e.value.as_ref())
                .map(|v| v.yaml.clone())
        };
        for r in RESOURCES {
            let s = def(&def_name(r));
            let gvk = ext(&s.vendor_extension, "x-kubernetes-group-version-kind")
                .unwrap_or_else(|| panic!("{} has no GVK", r.kind));
            assert!(gvk.contains(&format!("kind: {}", r.kind)), "{gvk}");
        }
        let pod_spec = def("io.k8s.api.core.v1.PodSpec");
        let props = pod_spec
            .properties
            .expect("properties")
            .additional_properties;
        let containers = props
            .iter()
            .find(|p| p.name == "containers")
            .and_then(|p| p.value.clone())
            .expect("containers");
        assert_eq!(
            ext(&containers.vendor_extension, "x-kubernetes-patch-merge-key").as_deref(),
            Some("name\n")
        );
        assert_eq!(
            containers.items.expect("items").schema[0].r#ref,
            "#/definitions/io.k8s.api.core.v1.Container"
        );
        let paths = doc.paths.expect("paths").path;
        let dep = paths
            .iter()
            .find(|p| p.name == "/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
            .and_then(|p| p.value.as_ref())
            .and_then(|p| p.patch.as_ref())
            .expect("deployment patch");
        assert!(dep.parameters.iter().any(|p| {
            p.parameter
                .as_ref()
                .and_then(|p| p.non_body_parameter.as_ref())
                .and_then(|n| n.query_parameter_sub_schema.as_ref())
                .is_some_and(|q| q.name == "fieldValidation" && q.r#in == "query")
        }));
    }

    #[test]
    fn v2_uses_definitions_refs() {
        let d = docs();
        let v: Value = serde_json::from_slice(d.v2_json()).expect("json");
        let text = v.to_string();
        assert!(!text.contains("#/components/schemas/"));
        assert!(text.contains("#/definitions/io.k8s.api.core.v1.PodSpec"));
        assert!(!d.v2_protobuf().is_empty());
    }
}

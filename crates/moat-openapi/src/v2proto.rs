//! The OpenAPI v2 document as gnostic's `openapi.v2.Document` protobuf, the form kubectl
//! 1.27/1.28 request (`application/com.github.proto-openapi.spec.v2.v1.0+protobuf`).
//!
//! No crate provides these message types, so the subset moat emits is declared here with
//! prost, field numbers from gnostic's OpenAPIv2.proto. Vendor extension values are YAML
//! strings, as gnostic stores them.

use prost::Message;
use serde_json::Value;

#[derive(Clone, PartialEq, Message)]
pub struct Document {
    #[prost(string, tag = "1")]
    pub swagger: String,
    #[prost(message, optional, tag = "2")]
    pub info: Option<Info>,
    #[prost(message, optional, tag = "8")]
    pub paths: Option<Paths>,
    #[prost(message, optional, tag = "9")]
    pub definitions: Option<Definitions>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Info {
    #[prost(string, tag = "1")]
    pub title: String,
    #[prost(string, tag = "2")]
    pub version: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Paths {
    #[prost(message, repeated, tag = "1")]
    pub vendor_extension: Vec<NamedAny>,
    #[prost(message, repeated, tag = "2")]
    pub path: Vec<NamedPathItem>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NamedPathItem {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<PathItem>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PathItem {
    #[prost(message, optional, tag = "2")]
    pub get: Option<Operation>,
    #[prost(message, optional, tag = "8")]
    pub patch: Option<Operation>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Operation {
    #[prost(string, tag = "5")]
    pub operation_id: String,
    #[prost(string, repeated, tag = "6")]
    pub produces: Vec<String>,
    #[prost(string, repeated, tag = "7")]
    pub consumes: Vec<String>,
    #[prost(message, repeated, tag = "8")]
    pub parameters: Vec<ParametersItem>,
    #[prost(message, optional, tag = "9")]
    pub responses: Option<Responses>,
    #[prost(message, repeated, tag = "13")]
    pub vendor_extension: Vec<NamedAny>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ParametersItem {
    #[prost(message, optional, tag = "1")]
    pub parameter: Option<Parameter>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Parameter {
    #[prost(message, optional, tag = "2")]
    pub non_body_parameter: Option<NonBodyParameter>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NonBodyParameter {
    #[prost(message, optional, tag = "3")]
    pub query_parameter_sub_schema: Option<QueryParameterSubSchema>,
}

#[derive(Clone, PartialEq, Message)]
pub struct QueryParameterSubSchema {
    #[prost(bool, tag = "1")]
    pub required: bool,
    #[prost(string, tag = "2")]
    pub r#in: String,
    #[prost(string, tag = "3")]
    pub description: String,
    #[prost(string, tag = "4")]
    pub name: String,
    #[prost(string, tag = "6")]
    pub r#type: String,
    #[prost(bool, tag = "20")]
    pub unique_items: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct Responses {
    #[prost(message, repeated, tag = "1")]
    pub response_code: Vec<NamedResponseValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NamedResponseValue {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<ResponseValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ResponseValue {
    #[prost(message, optional, tag = "1")]
    pub response: Option<Response>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Response {
    #[prost(string, tag = "1")]
    pub description: String,
    #[prost(message, optional, tag = "2")]
    pub schema: Option<SchemaItem>,
}

#[derive(Clone, PartialEq, Message)]
pub struct SchemaItem {
    #[prost(message, optional, boxed, tag = "1")]
    pub schema: Option<Box<Schema>>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Definitions {
    #[prost(message, repeated, tag = "1")]
    pub additional_properties: Vec<NamedSchema>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NamedSchema {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<Schema>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Any {
    #[prost(string, tag = "2")]
    pub yaml: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct NamedAny {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<Any>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TypeItem {
    #[prost(string, repeated, tag = "1")]
    pub value: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ItemsItem {
    #[prost(message, repeated, tag = "1")]
    pub schema: Vec<Schema>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Properties {
    #[prost(message, repeated, tag = "1")]
    pub additional_properties: Vec<NamedSchema>,
}

#[derive(Clone, PartialEq, Message)]
pub struct AdditionalPropertiesItem {
    #[prost(message, optional, boxed, tag = "1")]
    pub schema: Option<Box<Schema>>,
    #[prost(bool, optional, tag = "2")]
    pub boolean: Option<bool>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Schema {
    #[prost(string, tag = "1")]
    pub r#ref: String,
    #[prost(string, tag = "2")]
    pub format: String,
    #[prost(string, tag = "3")]
    pub title: String,
    #[prost(string, tag = "4")]
    pub description: String,
    #[prost(message, optional, tag = "5")]
    pub default: Option<Any>,
    #[prost(string, repeated, tag = "19")]
    pub required: Vec<String>,
    #[prost(message, repeated, tag = "20")]
    pub r#enum: Vec<Any>,
    #[prost(message, optional, boxed, tag = "21")]
    pub additional_properties: Option<Box<AdditionalPropertiesItem>>,
    #[prost(message, optional, tag = "22")]
    pub r#type: Option<TypeItem>,
    #[prost(message, optional, tag = "23")]
    pub items: Option<ItemsItem>,
    #[prost(message, repeated, tag = "24")]
    pub all_of: Vec<Schema>,
    #[prost(message, optional, tag = "25")]
    pub properties: Option<Properties>,
    #[prost(bool, tag = "27")]
    pub read_only: bool,
    #[prost(message, repeated, tag = "31")]
    pub vendor_extension: Vec<NamedAny>,
}

fn yaml(v: &Value) -> Any {
    Any {
        yaml: serde_yaml::to_string(v).unwrap_or_default(),
    }
}

fn extensions(m: &serde_json::Map<String, Value>) -> Vec<NamedAny> {
    m.iter()
        .filter(|(k, _)| k.starts_with("x-"))
        .map(|(k, v)| NamedAny {
            name: k.clone(),
            value: Some(yaml(v)),
        })
        .collect()
}

fn s(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or("").to_string()
}

fn schema(v: &Value) -> Schema {
    let Some(m) = v.as_object() else {
        return Schema::default();
    };
    let named = |p: &Value| -> Vec<NamedSchema> {
        p.as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| NamedSchema {
                        name: k.clone(),
                        value: Some(schema(v)),
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    Schema {
        r#ref: s(v, "$ref"),
        format: s(v, "format"),
        title: s(v, "title"),
        description: s(v, "description"),
        default: m.get("default").map(yaml),
        required: m
            .get("required")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        r#enum: m
            .get("enum")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(yaml).collect())
            .unwrap_or_default(),
        additional_properties: m.get("additionalProperties").map(|a| {
            Box::new(match a {
                Value::Bool(b) => AdditionalPropertiesItem {
                    schema: None,
                    boolean: Some(*b),
                },
                other => AdditionalPropertiesItem {
                    schema: Some(Box::new(schema(other))),
                    boolean: None,
                },
            })
        }),
        r#type: match m.get("type") {
            Some(Value::String(t)) => Some(TypeItem {
                value: vec![t.clone()],
            }),
            Some(Value::Array(ts)) => Some(TypeItem {
                // v2 has no null type; an optional field is just absent.
                value: ts
                    .iter()
                    .filter_map(Value::as_str)
                    .filter(|t| *t != "null")
                    .map(str::to_string)
                    .collect(),
            }),
            _ => None,
        },
        items: m.get("items").map(|i| ItemsItem {
            schema: vec![schema(i)],
        }),
        all_of: m
            .get("allOf")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(schema).collect())
            .unwrap_or_default(),
        properties: m.get("properties").map(|p| Properties {
            additional_properties: named(p),
        }),
        read_only: m.get("readOnly").and_then(Value::as_bool).unwrap_or(false),
        vendor_extension: extensions(m),
    }
}

fn operation(v: &Value) -> Operation {
    let strings = |k: &str| -> Vec<String> {
        v.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    Operation {
        operation_id: s(v, "operationId"),
        produces: strings("produces"),
        consumes: strings("consumes"),
        parameters: v
            .get("parameters")
            .and_then(Value::as_array)
            .map(|ps| {
                ps.iter()
                    .map(|p| ParametersItem {
                        parameter: Some(Parameter {
                            non_body_parameter: Some(NonBodyParameter {
                                query_parameter_sub_schema: Some(QueryParameterSubSchema {
                                    required: false,
                                    r#in: s(p, "in"),
                                    description: s(p, "description"),
                                    name: s(p, "name"),
                                    r#type: s(p, "type"),
                                    unique_items: p
                                        .get("uniqueItems")
                                        .and_then(Value::as_bool)
                                        .unwrap_or(false),
                                }),
                            }),
                        }),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        responses: v
            .get("responses")
            .and_then(Value::as_object)
            .map(|rs| Responses {
                response_code: rs
                    .iter()
                    .map(|(code, r)| NamedResponseValue {
                        name: code.clone(),
                        value: Some(ResponseValue {
                            response: Some(Response {
                                description: s(r, "description"),
                                schema: r.get("schema").map(|sc| SchemaItem {
                                    schema: Some(Box::new(schema(sc))),
                                }),
                            }),
                        }),
                    })
                    .collect(),
            }),
        vendor_extension: v.as_object().map(extensions).unwrap_or_default(),
    }
}

/// Encodes a v2 JSON document (as `Docs::build` makes it) as the gnostic protobuf.
pub fn encode(doc: &Value) -> Vec<u8> {
    let paths = doc["paths"]
        .as_object()
        .map(|ps| {
            ps.iter()
                .map(|(p, item)| NamedPathItem {
                    name: p.clone(),
                    value: Some(PathItem {
                        get: item.get("get").map(operation),
                        patch: item.get("patch").map(operation),
                    }),
                })
                .collect()
        })
        .unwrap_or_default();
    let definitions = doc["definitions"]
        .as_object()
        .map(|ds| {
            ds.iter()
                .map(|(k, v)| NamedSchema {
                    name: k.clone(),
                    value: Some(schema(v)),
                })
                .collect()
        })
        .unwrap_or_default();
    Document {
        swagger: s(doc, "swagger"),
        info: Some(Info {
            title: s(&doc["info"], "title"),
            version: s(&doc["info"], "version"),
        }),
        paths: Some(Paths {
            vendor_extension: vec![],
            path: paths,
        }),
        definitions: Some(Definitions {
            additional_properties: definitions,
        }),
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_what_kubectl_reads() {
        let doc = json!({"swagger": "2.0", "info": {"title": "t", "version": "v"},
            "paths": {"/apis/apps/v1/namespaces/{namespace}/deployments/{name}": {"patch": {
                "parameters": [{"name": "fieldValidation", "in": "query", "type": "string"}],
                "x-kubernetes-group-version-kind": {"group": "apps", "kind": "Deployment", "version": "v1"}}}},
            "definitions": {"io.k8s.api.apps.v1.Deployment": {"type": "object",
                "properties": {"spec": {"$ref": "#/definitions/io.k8s.api.apps.v1.DeploymentSpec"},
                               "list": {"type": "array", "items": {"type": "string"}, "x-kubernetes-patch-strategy": "merge"}},
                "x-kubernetes-group-version-kind": [{"group": "apps", "kind": "Deployment", "version": "v1"}]}}});
        let bytes = encode(&doc);
        let d = Document::decode(bytes.as_slice()).expect("decode");
        assert_eq!(d.swagger, "2.0");
        let p = &d.paths.expect("paths").path[0];
        let op = p
            .value
            .as_ref()
            .and_then(|v| v.patch.as_ref())
            .expect("patch");
        let q = op.parameters[0]
            .parameter
            .as_ref()
            .and_then(|p| p.non_body_parameter.as_ref())
            .and_then(|n| n.query_parameter_sub_schema.as_ref())
            .expect("query param");
        assert_eq!(q.name, "fieldValidation");
        assert_eq!(
            op.vendor_extension[0].name,
            "x-kubernetes-group-version-kind"
        );
        let yaml = &op.vendor_extension[0].value.as_ref().expect("value").yaml;
        assert!(yaml.contains("kind: Deployment"), "{yaml}");
        let def = d.definitions.expect("defs").additional_properties[0]
            .value
            .clone()
            .expect("schema");
        assert_eq!(def.r#type.expect("type").value, vec!["object"]);
        let props = def.properties.expect("props").additional_properties;
        let spec = props.iter().find(|p| p.name == "spec").expect("spec");
        assert_eq!(
            spec.value.as_ref().expect("v").r#ref,
            "#/definitions/io.k8s.api.apps.v1.DeploymentSpec"
        );
    }
}

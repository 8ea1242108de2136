//! Request bodies: reading them within the size limit, decoding them by media type
//! (JSON, YAML, protobuf) into JSON, and applying patches of each patch type.

use axum::body::{Body, Bytes};
use http::{HeaderMap, StatusCode, header};
use serde_json::Value;

use crate::status::ApiError;

pub const MAX_BODY: usize = 3 * 1024 * 1024;

pub(crate) async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let raw = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("the request body is larger than the limit of {MAX_BODY} bytes"),
        )
    })?;
    if ct.starts_with("application/vnd.kubernetes.protobuf") {
        let v = crate::protobuf::to_json(&raw)?;
        return Ok(Bytes::from(serde_json::to_vec(&v).unwrap_or_default()));
    }
    Ok(raw)
}

/// A create or replace body as JSON: JSON as sent, protobuf and YAML converted. Any other
/// media type is 415, as kube-apiserver answers it (a form-encoded `curl -d` body, say,
/// would otherwise surface as a confusing JSON syntax error).
pub(crate) async fn read_object_body(headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "" | "application/json" | "application/vnd.kubernetes.protobuf" => {
            read_body(headers, body).await
        }
        "application/yaml" => {
            let raw = read_body(headers, body).await?;
            let v: Value = serde_yaml::from_slice(&raw).map_err(|e| {
                ApiError::bad_request(format!("the request body is not valid YAML: {e}"))
            })?;
            Ok(Bytes::from(serde_json::to_vec(&v).unwrap_or_default()))
        }
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({ct:?}) - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf"
            ),
        )),
    }
}

pub(crate) fn parse_json(b: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(b)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(v)
}

pub(crate) fn apply_patch(
    kind: &str,
    ct: &str,
    cur: &Value,
    patch: &[u8],
) -> Result<Bytes, ApiError> {
    let p: Value = serde_json::from_slice(patch)
        .map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))?;
    let mut out = cur.clone();
    let ct = ct.split(';').next().unwrap_or("").trim();
    match ct {
        "application/merge-patch+json" => json_patch::merge(&mut out, &p),
        "application/strategic-merge-patch+json" => {
            out = moat_patch::strategic_merge(kind, cur, &p).map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    format!("the strategic merge patch could not be applied: {e}"),
                )
            })?;
        }
        "application/json-patch+json" => {
            let ops: json_patch::Patch = serde_json::from_value(p)
                .map_err(|e| ApiError::bad_request(format!("the JSON patch is malformed: {e}")))?;
            json_patch::patch(&mut out, &ops).map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    format!("the JSON patch could not be applied: {e}"),
                )
            })?;
        }
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!(
                    "patch type {other:?} is not supported yet by moat (use --type merge or --type json)"
                ),
            ));
        }
    }
    Ok(Bytes::from(serde_json::to_vec(&out).unwrap_or_default()))
}

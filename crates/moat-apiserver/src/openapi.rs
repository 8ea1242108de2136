//! Serves the OpenAPI documents (`/openapi/v2`, `/openapi/v3`, `/openapi/v3/<gv>`) built
//! once by `moat-openapi`.

use std::sync::{Arc, OnceLock};

use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, header};

use crate::status::ApiError;

/// Built once; a failure is kept too (shared, as the error is not `Clone`), so every
/// request reports it rather than rebuilding.
type Built = Result<Arc<moat_openapi::Docs>, Arc<moat_openapi::OpenApiError>>;

static DOCS: OnceLock<Built> = OnceLock::new();

fn docs() -> Result<Arc<moat_openapi::Docs>, ApiError> {
    DOCS.get_or_init(|| moat_openapi::Docs::build().map(Arc::new).map_err(Arc::new))
        .clone()
        .map_err(|e| ApiError::internal(format!("building the OpenAPI documents: {e}")))
}

/// Builds the documents ahead of the first request (they take a moment).
pub fn warm_up() {
    std::thread::spawn(|| {
        let _ = docs();
    });
}

const PROTO_V2: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

fn cached(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_matches('"') == etag)
}

/// Answers an OpenAPI path, or None for any other path.
pub async fn serve(path: &str, headers: &HeaderMap) -> Option<Response> {
    let path = path.trim_end_matches('/');
    if path != "/openapi/v2" && path != "/openapi/v3" && !path.starts_with("/openapi/v3/") {
        return None;
    }
    let d = match tokio::task::spawn_blocking(docs).await {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => return Some(e.into_response()),
        Err(e) => return Some(ApiError::internal(e.to_string()).into_response()),
    };
    Some(match path {
        "/openapi/v2" => {
            let accept = headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let (content_type, body, tag) = if accept.contains("com.github.proto-openapi.spec.v2") {
                (PROTO_V2, d.v2_protobuf(), format!("{}-pb", d.v2_hash))
            } else {
                ("application/json", d.v2_json(), d.v2_hash.clone())
            };
            // One ETag per representation, and `Vary: Accept`, so that an HTTP cache (kubectl
            // keeps one under --cache-dir) never answers a protobuf request with cached JSON.
            let etag = format!("\"{tag}\"");
            if cached(headers, &tag) {
                return Some(
                    (
                        StatusCode::NOT_MODIFIED,
                        [(header::ETAG, etag), (header::VARY, "Accept".to_string())],
                    )
                        .into_response(),
                );
            }
            (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, content_type.to_string()),
                    (header::ETAG, etag),
                    (header::VARY, "Accept".to_string()),
                ],
                body.to_vec(),
            )
                .into_response()
        }
        "/openapi/v3" => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            d.v3_root().to_string(),
        )
            .into_response(),
        _ => {
            let gv = &path["/openapi/v3/".len()..];
            match d.v3_group_version(gv) {
                Some((bytes, hash)) => {
                    if cached(headers, hash) {
                        return Some(StatusCode::NOT_MODIFIED.into_response());
                    }
                    (
                        StatusCode::OK,
                        [
                            (header::CONTENT_TYPE, "application/json".to_string()),
                            (header::ETAG, format!("\"{hash}\"")),
                            (header::CACHE_CONTROL, "public, immutable".to_string()),
                        ],
                        bytes.to_vec(),
                    )
                        .into_response()
                }
                None => ApiError::new(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("no OpenAPI v3 document for {gv}"),
                )
                .into_response(),
            }
        }
    })
}

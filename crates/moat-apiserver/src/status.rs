//! API errors as Kubernetes `Status` objects.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use moat_api::Cause;
use serde_json::json;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: StatusCode,
    pub reason: &'static str,
    pub message: String,
    pub name: Option<String>,
    pub group: Option<String>,
    pub kind: Option<String>,
    pub causes: Vec<Cause>,
}

impl ApiError {
    pub fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            name: None,
            group: None,
            kind: None,
            causes: vec![],
        }
    }

    pub fn details(mut self, group: &str, kind: &str, name: &str) -> Self {
        self.group = Some(group.to_string());
        self.kind = Some(kind.to_string());
        self.name = Some(name.to_string());
        self
    }

    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", m)
    }

    pub fn not_found(group_resource: &str, name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{group_resource} \"{name}\" not found"),
        )
    }

    pub fn invalid(kind: &str, name: &str, causes: Vec<Cause>) -> Self {
        let detail: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let mut e = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {}", detail.join(", ")),
        );
        e.kind = Some(kind.to_string());
        e.name = Some(name.to_string());
        e.causes = causes;
        e
    }

    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", m)
    }

    pub fn body(&self) -> serde_json::Value {
        let mut details = serde_json::Map::new();
        if let Some(n) = &self.name {
            details.insert("name".into(), json!(n));
        }
        if let Some(g) = &self.group {
            details.insert("group".into(), json!(g));
        }
        if let Some(k) = &self.kind {
            details.insert("kind".into(), json!(k));
        }
        if !self.causes.is_empty() {
            details.insert("causes".into(), json!(self.causes));
        }
        let mut v = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code.as_u16()
        });
        if !details.is_empty() {
            v["details"] = serde_json::Value::Object(details);
        }
        v
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.code,
            [(http::header::CONTENT_TYPE, "application/json")],
            self.body().to_string(),
        )
            .into_response()
    }
}

impl From<moat_store::StoreError> for ApiError {
    fn from(e: moat_store::StoreError) -> Self {
        use moat_store::StoreError as S;
        match e {
            S::Compacted { .. } => ApiError::new(
                StatusCode::GONE,
                "Expired",
                format!("too old resource version: {e}"),
            ),
            S::Conflict { .. } => ApiError::new(
                StatusCode::CONFLICT,
                "Conflict",
                "the object has been modified; please apply your changes to the latest version and try again",
            ),
            S::AlreadyExists { .. } => {
                ApiError::new(StatusCode::CONFLICT, "AlreadyExists", e.to_string())
            }
            S::NotFound { .. } => ApiError::new(StatusCode::NOT_FOUND, "NotFound", e.to_string()),
            other => ApiError::internal(format!("storage: {other}")),
        }
    }
}

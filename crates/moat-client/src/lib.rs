//! moat's Kubernetes API client, shared by the control-plane loops (`moat-manager`) and the
//! node agent (`moat-agent`):
//!
//! - [`Client`]: the blocking HTTPS client (kubeconfig or server + token);
//! - [`Api`]: the narrow trait the loops call, so their API side is unit-tested against
//!   [`fake::FakeApi`] (an in-memory API that records every call and can be told to fail);
//! - [`Reflector`]: a watch-fed copy of one collection (client-go's informer);
//! - [`EventRecorder`]: events written in the background from a bounded queue, one instance
//!   per component (no process-global).

mod client;
mod events;
pub mod fake;
mod reflector;

use serde_json::Value;

pub use client::{Client, ClientError, ServerTrust};
pub use events::{EventRecorder, ObjectRef};
pub use reflector::{Reflector, key as object_key};

/// The API verbs moat's loops use, on untyped JSON at API paths (`/api/v1/nodes/n1`).
pub trait Api: Send + Sync {
    fn get(&self, path: &str) -> Result<Value, ClientError>;
    /// Items of a list and the list's resourceVersion.
    fn list(&self, path: &str) -> Result<(Vec<Value>, String), ClientError>;
    fn create(&self, path: &str, obj: &Value) -> Result<Value, ClientError>;
    /// JSON merge patch (RFC 7386).
    fn merge_patch(&self, path: &str, patch: &Value) -> Result<Value, ClientError>;
    /// DELETE; a missing object is not an error.
    fn delete(&self, path: &str) -> Result<(), ClientError>;
    /// Blocks delivering watch events from `rv`; returns when the stream ends or fails.
    fn watch(&self, path: &str, rv: &str, f: &mut dyn FnMut(&Value)) -> Result<(), ClientError>;
}

impl Api for Client {
    fn get(&self, path: &str) -> Result<Value, ClientError> {
        Client::get(self, path)
    }
    fn list(&self, path: &str) -> Result<(Vec<Value>, String), ClientError> {
        Client::list(self, path)
    }
    fn create(&self, path: &str, obj: &Value) -> Result<Value, ClientError> {
        Client::create(self, path, obj)
    }
    fn merge_patch(&self, path: &str, patch: &Value) -> Result<Value, ClientError> {
        Client::merge_patch(self, path, patch)
    }
    fn delete(&self, path: &str) -> Result<(), ClientError> {
        Client::delete(self, path)
    }
    fn watch(&self, path: &str, rv: &str, f: &mut dyn FnMut(&Value)) -> Result<(), ClientError> {
        Client::watch(self, path, rv, f)
    }
}

/// RFC 3339 "now" with second precision, as Kubernetes writes `metav1.Time`.
pub fn now_rfc3339() -> String {
    moat_api::time::rfc3339_from_millis(chrono::Utc::now().timestamp_millis())
}

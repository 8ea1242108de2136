//! Strategic-merge-patch metadata for the kinds moat serves: which lists merge by key and
//! which are atomic. Owned by the patch area; read by the schema crate to put
//! `x-kubernetes-patch-merge-key` / `x-kubernetes-patch-strategy` into OpenAPI.

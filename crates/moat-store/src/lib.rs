//! The storage contract of the API server.
//!
//! Only `moat-apiserver` may depend on this crate (see ARCHITECTURE.md): scheduler,
//! controllers and agents reach objects through the Kubernetes API, never through the store.
//!
//! Semantics follow etcd v3, because the etcd backend must satisfy the same test suite and
//! Kubernetes' resourceVersion is etcd's `mod_revision`:
//! - one global, strictly increasing `Revision`; every successful write (create, update,
//!   delete) bumps it by exactly one and returns the new value;
//! - values are opaque bytes (the API server stores JSON and sets `resourceVersion` on read
//!   from `mod_revision`, so a stored object never carries a stale resourceVersion);
//! - compare-and-swap on `mod_revision` for updates and deletes;
//! - list at a past revision and watch from a past revision, until compaction; a request for a
//!   compacted revision fails with [`StoreError::Compacted`] (the API server maps it to 410).

pub mod conformance;
pub mod embedded;
pub mod etcd;
pub mod mem;
mod mvcc;

use std::fmt;

pub use embedded::EmbeddedStore;
pub use etcd::EtcdStore;
pub use mem::{MemStore, MvccStore};

use futures::stream::BoxStream;

/// A store revision. Starts at 1 for an empty store (like etcd); 0 means "current".
pub type Revision = i64;

#[derive(Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that created this key (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the last write to this key. This is the object's resourceVersion.
    pub mod_revision: Revision,
}

impl fmt::Debug for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyValue")
            .field("key", &self.key)
            .field("value_len", &self.value.len())
            .field("create_revision", &self.create_revision)
            .field("mod_revision", &self.mod_revision)
            .finish()
    }
}

/// Result of a range read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListResult {
    /// Keys in ascending byte order.
    pub items: Vec<KeyValue>,
    /// The revision the list was read at (the store's current revision when `at` was 0).
    pub revision: Revision,
    /// True when `limit` cut the result short; continue with `start_after` = last key.
    pub more: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Read as of this revision; 0 = current. A compacted revision fails with `Compacted`.
    pub at: Revision,
    /// Only keys strictly greater than this one (pagination).
    pub start_after: Option<String>,
    /// At most this many items; 0 = no limit.
    pub limit: usize,
}

/// One change seen by a watch, in revision order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A create (`prev` is None) or an update (`prev` is the value before).
    Put {
        kv: KeyValue,
        prev: Option<KeyValue>,
    },
    /// A delete. `prev` is the last value; `revision` is the revision of the delete.
    Delete { prev: KeyValue, revision: Revision },
    /// Progress notification: nothing under the prefix changed up to `revision` (used for
    /// watch bookmarks). Backends may send these periodically; they are optional.
    Progress { revision: Revision },
}

impl WatchEvent {
    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Put { kv, .. } => kv.mod_revision,
            WatchEvent::Delete { revision, .. } => *revision,
            WatchEvent::Progress { revision } => *revision,
        }
    }
}

pub type WatchStream = BoxStream<'static, Result<WatchEvent, StoreError>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {key} already exists")]
    AlreadyExists { key: String },
    #[error("key {key} not found")]
    NotFound { key: String },
    /// Compare-and-swap failed: the key's mod_revision is not the expected one.
    #[error("key {key} was modified (expected revision {expected}, found {actual})")]
    Conflict {
        key: String,
        expected: Revision,
        actual: Revision,
    },
    /// The requested revision is older than the compaction point.
    #[error("revision {requested} has been compacted (oldest available is {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    /// The requested revision is newer than anything written yet.
    #[error("revision {requested} is in the future (current is {current})")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    #[error("store backend failed during {op}")]
    Backend {
        op: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("store is closed")]
    Closed,
}

/// The MVCC store. Implementations: embedded (default) and etcd v3.
///
/// Every write is durable before it returns Ok (fsync'd for the embedded store; quorum for
/// etcd): nothing acknowledged is ever lost.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The current revision (last committed write; 1 for an empty store).
    async fn current_revision(&self) -> Result<Revision, StoreError>;

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// All keys starting with `prefix`, in ascending order.
    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult, StoreError>;

    /// Creates `key`; fails with `AlreadyExists` if it exists. Returns the new KeyValue.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError>;

    /// Replaces `key`'s value if its mod_revision equals `expected` (`Conflict` otherwise,
    /// `NotFound` if missing). Returns the new KeyValue.
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> Result<KeyValue, StoreError>;

    /// Deletes `key`; if `expected` is Some, only when its mod_revision matches. Returns the
    /// deleted KeyValue and the revision of the delete.
    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<(KeyValue, Revision), StoreError>;

    /// Events for keys under `prefix` with revision > `after`, in order, then live events.
    /// `after` = 0 means "from now". A compacted `after` fails with `Compacted`.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError>;

    /// Discards history at or before `revision` (current values are kept).
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;

    /// The oldest revision still readable (compaction point + 1).
    async fn oldest_revision(&self) -> Result<Revision, StoreError>;
}

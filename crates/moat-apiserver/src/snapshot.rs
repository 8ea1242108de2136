//! Offline copies of the embedded store (`moat server snapshot save|restore`). The binary goes
//! through here so that only the API server depends on the store.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("opening the store {path} (is a server still running?)")]
    Open {
        path: String,
        #[source]
        source: moat_store::StoreError,
    },
    #[error("saving the snapshot to {path}")]
    Save {
        path: String,
        #[source]
        source: moat_store::StoreError,
    },
    #[error("restoring the snapshot {path}")]
    Restore {
        path: String,
        #[source]
        source: moat_store::StoreError,
    },
}

/// Copies the store at `db` to `file`.
pub async fn save(db: &Path, file: &Path) -> Result<(), SnapshotError> {
    let s = moat_store::EmbeddedStore::open(db).map_err(|source| SnapshotError::Open {
        path: db.display().to_string(),
        source,
    })?;
    s.snapshot_save(file)
        .await
        .map_err(|source| SnapshotError::Save {
            path: file.display().to_string(),
            source,
        })
}

/// Replaces the store at `db` with the snapshot `file`.
pub fn restore(file: &Path, db: &Path) -> Result<(), SnapshotError> {
    moat_store::EmbeddedStore::snapshot_restore(file, db).map_err(|source| SnapshotError::Restore {
        path: file.display().to_string(),
        source,
    })
}

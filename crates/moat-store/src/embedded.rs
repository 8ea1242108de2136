//! `EmbeddedStore`: the default, single-node backend.
//!
//! redb (a pure-Rust embedded database whose commits are durable by default: fsync before
//! `commit` returns) holds three tables: current values, the event history since the last
//! compaction, and metadata (revision, compaction point). Every write is persisted in one
//! redb transaction *before* it is applied to the in-memory MVCC state and announced to
//! watchers, so an acknowledged write survives `kill -9` and power loss, and nothing a
//! watcher saw can be missing after a restart. On open, the state is rebuilt from the
//! tables. Reads, lists at past revisions and watch replays are served from memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::mem::{Core, Durable, MvccStore};
use crate::mvcc::{Change, State};
use crate::{KeyValue, Revision, StoreError, WatchEvent};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const HIST: TableDefinition<i64, &[u8]> = TableDefinition::new("history");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");

pub const FILE_NAME: &str = "store.redb";

fn backend<E: Into<redb::Error>>(op: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Backend {
        op,
        source: Box::new(e.into()),
    }
}

fn corrupt(op: &'static str, what: &str) -> StoreError {
    StoreError::Backend {
        op,
        source: what.to_string().into(),
    }
}

// Record encoding (written here: a few fixed fields; a general serializer would add a
// dependency and a format to keep stable for no gain).
fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn enc_kv(out: &mut Vec<u8>, kv: &KeyValue) {
    out.extend_from_slice(&kv.create_revision.to_le_bytes());
    out.extend_from_slice(&kv.mod_revision.to_le_bytes());
    put_u32(out, kv.key.len() as u32);
    out.extend_from_slice(kv.key.as_bytes());
    put_u32(out, kv.value.len() as u32);
    out.extend_from_slice(&kv.value);
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8)?.try_into().ok().map(i64::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)?.try_into().ok().map(u32::from_le_bytes)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn kv(&mut self) -> Option<KeyValue> {
        let create_revision = self.i64()?;
        let mod_revision = self.i64()?;
        let kl = self.u32()? as usize;
        let key = String::from_utf8(self.take(kl)?.to_vec()).ok()?;
        let vl = self.u32()? as usize;
        let value = self.take(vl)?.to_vec();
        Some(KeyValue {
            key,
            value,
            create_revision,
            mod_revision,
        })
    }
}

fn enc_event(e: &WatchEvent) -> Vec<u8> {
    let mut out = Vec::new();
    match e {
        WatchEvent::Put { kv, prev: None } => {
            out.push(1);
            enc_kv(&mut out, kv);
        }
        WatchEvent::Put { kv, prev: Some(p) } => {
            out.push(2);
            enc_kv(&mut out, kv);
            enc_kv(&mut out, p);
        }
        WatchEvent::Delete { prev, revision } => {
            out.push(3);
            out.extend_from_slice(&revision.to_le_bytes());
            enc_kv(&mut out, prev);
        }
        WatchEvent::Progress { .. } => {}
    }
    out
}

fn dec_event(b: &[u8]) -> Option<WatchEvent> {
    let mut r = Reader(b);
    match r.u8()? {
        1 => Some(WatchEvent::Put {
            kv: r.kv()?,
            prev: None,
        }),
        2 => {
            let kv = r.kv()?;
            Some(WatchEvent::Put {
                kv,
                prev: Some(r.kv()?),
            })
        }
        3 => {
            let revision = r.i64()?;
            Some(WatchEvent::Delete {
                prev: r.kv()?,
                revision,
            })
        }
        _ => None,
    }
}

/// The embedded store: an [`MvccStore`] backed by a redb file ([`MvccStore::open`]).
pub type EmbeddedStore = MvccStore;

/// The redb file behind an embedded store.
pub(crate) struct RedbFile {
    db: Database,
    path: PathBuf,
}

impl MvccStore {
    /// Opens (creating if needed) the embedded store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<MvccStore, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Backend {
            op: "creating the data directory",
            source: Box::new(e),
        })?;
        let path = data_dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(backend("opening the store file"))?;
        // Make sure the tables exist so reads of a new store work.
        let w = db.begin_write().map_err(backend("initialising"))?;
        {
            w.open_table(KV).map_err(backend("initialising"))?;
            w.open_table(HIST).map_err(backend("initialising"))?;
            w.open_table(META).map_err(backend("initialising"))?;
        }
        w.commit().map_err(backend("initialising"))?;
        let state = RedbFile::load(&db)?;
        let core = Core::new(state);
        let file = Arc::new(RedbFile { db, path });
        let committer = crate::mem::Committer::start(core.clone(), file.clone())?;
        Ok(MvccStore {
            core,
            file: Some(file),
            committer: Some(Arc::new(committer)),
        })
    }

    /// Writes a consistent copy of the embedded store to `dest` (temp file, fsync, rename).
    pub async fn snapshot_save(&self, dest: &Path) -> Result<(), StoreError> {
        let Some(f) = &self.file else {
            return Err(StoreError::Backend {
                op: "saving a snapshot",
                source: "an in-memory store has no file to snapshot".into(),
            });
        };
        // Holding the state lock keeps writers out while the file is copied.
        let _st = self.core.state.lock().await;
        copy_durably(f.path(), dest)
    }

    /// Replaces the store in `data_dir` with `snapshot`. Refuses while a store is open on
    /// that directory, and checks the snapshot is a readable store first.
    pub fn snapshot_restore(snapshot: &Path, data_dir: &Path) -> Result<(), StoreError> {
        RedbFile::restore(snapshot, data_dir)
    }
}

impl Durable for RedbFile {
    fn persist(&self, changes: &[&Change]) -> Result<(), StoreError> {
        self.persist_changes(changes.iter().copied())
    }

    fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.compact_history(revision)
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl RedbFile {
    fn load(db: &Database) -> Result<State, StoreError> {
        let op = "loading the store";
        let r = db.begin_read().map_err(backend(op))?;
        let mut st = State::new();
        let meta = r.open_table(META).map_err(backend(op))?;
        if let Some(v) = meta.get("rev").map_err(backend(op))? {
            st.rev = v.value();
        }
        if let Some(v) = meta.get("compacted").map_err(backend(op))? {
            st.compacted = v.value();
        }
        let kv = r.open_table(KV).map_err(backend(op))?;
        for item in kv.iter().map_err(backend(op))? {
            let (k, v) = item.map_err(backend(op))?;
            let rec = Reader(v.value())
                .kv()
                .ok_or_else(|| corrupt(op, "corrupt value record"))?;
            if rec.key != k.value() {
                return Err(corrupt(op, "value record under the wrong key"));
            }
            st.kv.insert(rec.key.clone(), rec);
        }
        let hist = r.open_table(HIST).map_err(backend(op))?;
        for item in hist.iter().map_err(backend(op))? {
            let (k, v) = item.map_err(backend(op))?;
            let e = dec_event(v.value()).ok_or_else(|| corrupt(op, "corrupt history record"))?;
            st.hist.insert(k.value(), e);
        }
        Ok(st)
    }

    /// Persists a batch of changes durably, in one fsync'd commit (all or none).
    fn persist_changes<'a>(
        &self,
        changes: impl IntoIterator<Item = &'a Change>,
    ) -> Result<(), StoreError> {
        let op = "committing a write";
        let w = self.db.begin_write().map_err(backend(op))?;
        {
            let mut kv = w.open_table(KV).map_err(backend(op))?;
            let mut hist = w.open_table(HIST).map_err(backend(op))?;
            let mut meta = w.open_table(META).map_err(backend(op))?;
            let mut last = None;
            for c in changes {
                let rev = c.event.revision();
                last = Some(rev);
                match &c.event {
                    WatchEvent::Put { kv: new, .. } => {
                        let mut rec = Vec::with_capacity(new.value.len() + new.key.len() + 24);
                        enc_kv(&mut rec, new);
                        kv.insert(new.key.as_str(), rec.as_slice())
                            .map_err(backend(op))?;
                    }
                    WatchEvent::Delete { prev, .. } => {
                        kv.remove(prev.key.as_str()).map_err(backend(op))?;
                    }
                    WatchEvent::Progress { .. } => {}
                }
                hist.insert(rev, enc_event(&c.event).as_slice())
                    .map_err(backend(op))?;
            }
            if let Some(rev) = last {
                meta.insert("rev", rev).map_err(backend(op))?;
            }
        }
        w.commit().map_err(backend(op))
    }

    /// Drops history at or before `revision` from the file.
    fn compact_history(&self, revision: Revision) -> Result<(), StoreError> {
        let op = "compacting";
        let w = self.db.begin_write().map_err(backend(op))?;
        {
            let mut hist = w.open_table(HIST).map_err(backend(op))?;
            let old: Vec<i64> = hist
                .range(..=revision)
                .map_err(backend(op))?
                .map(|r| r.map(|(k, _)| k.value()))
                .collect::<Result<_, _>>()
                .map_err(backend(op))?;
            for k in old {
                hist.remove(k).map_err(backend(op))?;
            }
            let mut meta = w.open_table(META).map_err(backend(op))?;
            meta.insert("compacted", revision).map_err(backend(op))?;
        }
        w.commit().map_err(backend(op))
    }

    fn restore(snapshot: &Path, data_dir: &Path) -> Result<(), StoreError> {
        {
            let db = Database::open(snapshot).map_err(backend("reading the snapshot"))?;
            Self::load(&db)?;
        }
        let target = data_dir.join(FILE_NAME);
        if target.exists() {
            // redb locks an open database file; opening it here fails if a server runs.
            let probe = Database::open(&target).map_err(|e| StoreError::Backend {
                op: "checking that no server uses the data directory",
                source: Box::new(redb::Error::from(e)),
            })?;
            drop(probe);
        }
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Backend {
            op: "creating the data directory",
            source: Box::new(e),
        })?;
        copy_durably(snapshot, &target)
    }
}

fn copy_durably(from: &Path, to: &Path) -> Result<(), StoreError> {
    let io = |op: &'static str| {
        move |e: std::io::Error| StoreError::Backend {
            op,
            source: Box::new(e),
        }
    };
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).map_err(io("copying the store file"))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io("syncing the copy"))?;
    std::fs::rename(&tmp, to).map_err(io("renaming the copy into place"))?;
    if let Some(dir) = to.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing the directory"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_corruption() {
        let kv = KeyValue {
            key: "/a".into(),
            value: b"v".to_vec(),
            create_revision: 2,
            mod_revision: 5,
        };
        for e in [
            WatchEvent::Put {
                kv: kv.clone(),
                prev: None,
            },
            WatchEvent::Put {
                kv: kv.clone(),
                prev: Some(kv.clone()),
            },
            WatchEvent::Delete {
                prev: kv.clone(),
                revision: 9,
            },
        ] {
            let b = enc_event(&e);
            assert_eq!(dec_event(&b), Some(e));
            for cut in 0..b.len() {
                assert_eq!(
                    dec_event(&b[..cut]),
                    None,
                    "truncated record must not decode"
                );
            }
        }
    }
}

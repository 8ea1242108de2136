//! The MVCC store shared by the in-memory and embedded backends: one core (state, history,
//! watch broadcast) and one `Store` implementation; the embedded backend only adds a file.

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::{Mutex, broadcast};

use crate::mvcc::{Change, Op, State, event_key};
use crate::{
    KeyValue, ListOptions, ListResult, Revision, Store, StoreError, WatchEvent, WatchStream,
};

/// Where a store's changes become durable: the embedded store's redb file. Defined here,
/// implemented by `embedded`, so the MVCC core never names the backend that persists it.
pub(crate) trait Durable: Send + Sync {
    /// Persists a batch of changes in one fsync'd commit (all or none).
    fn persist(&self, changes: &[&Change]) -> Result<(), StoreError>;
    /// Drops history at or before `revision`.
    fn compact(&self, revision: Revision) -> Result<(), StoreError>;
    /// The file, for snapshots.
    fn path(&self) -> &std::path::Path;
}

/// The part every history-keeping backend shares: state under a lock, plus a broadcast of
/// committed events for watches.
pub(crate) struct Core {
    pub state: Mutex<State>,
    pub events: broadcast::Sender<WatchEvent>,
}

impl Core {
    pub fn new(state: State) -> Arc<Core> {
        let (events, _) = broadcast::channel(4096);
        Arc::new(Core {
            state: Mutex::new(state),
            events,
        })
    }

    /// One write without a file: plan it against the current state, apply it and tell
    /// watchers, under the state lock, so revisions are assigned and published in order.
    pub async fn write(&self, op: Op) -> Result<Change, StoreError> {
        let mut st = self.state.lock().await;
        let c = st.plan(op)?;
        st.apply(&c);
        let _ = self.events.send(c.event.clone());
        Ok(c)
    }

    pub async fn watch(
        self: &Arc<Self>,
        prefix: &str,
        after: Revision,
    ) -> Result<WatchStream, StoreError> {
        // Subscribe before reading history, then skip what history already delivered:
        // no gap, no duplicate.
        let (rx, replay, from) = {
            let st = self.state.lock().await;
            let rx = self.events.subscribe();
            let start = if after == 0 { st.rev } else { after };
            let replay = if after == 0 {
                vec![]
            } else {
                st.events_after(prefix, after)?
            };
            (rx, replay, start)
        };
        let last = replay.last().map(|e| e.revision()).unwrap_or(from);
        let prefix = prefix.to_string();
        let live = tokio_stream_from(rx).filter_map(move |r| {
            let prefix = prefix.clone();
            async move {
                match r {
                    Ok(e)
                        if e.revision() > last
                            && event_key(&e).is_some_and(|k| k.starts_with(&prefix)) =>
                    {
                        Some(Ok(e))
                    }
                    // A write elsewhere: everything under the prefix up to its revision has
                    // been delivered, which is what watch bookmarks need to know.
                    Ok(e) if e.revision() > last => Some(Ok(WatchEvent::Progress {
                        revision: e.revision(),
                    })),
                    Ok(_) => None,
                    // A watcher that fell this far behind must re-list, like etcd's compaction.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        Some(Err(StoreError::Compacted {
                            requested: last,
                            compacted: last,
                        }))
                    }
                    Err(broadcast::error::RecvError::Closed) => Some(Err(StoreError::Closed)),
                }
            }
        });
        Ok(futures::stream::iter(replay.into_iter().map(Ok))
            .chain(live)
            .boxed())
    }
}

/// Committed events as a stream; ends when the store is dropped.
fn tokio_stream_from(
    rx: broadcast::Receiver<WatchEvent>,
) -> impl futures::Stream<Item = Result<WatchEvent, broadcast::error::RecvError>> {
    futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Err(broadcast::error::RecvError::Closed) => None,
            r => Some((r, rx)),
        }
    })
}

/// A write waiting for the committer, and where its outcome goes.
struct Pending {
    op: Op,
    reply: tokio::sync::oneshot::Sender<Result<Change, StoreError>>,
}

/// Group commit for the embedded store: one thread takes every write queued while the
/// previous commit was being fsync'd, plans and applies them in order, makes them durable
/// in one redb commit, and only then publishes them to watchers and answers the callers.
/// One fsync per batch instead of per write, and no fsync on the async runtime's threads.
/// A failed commit undoes the whole batch in memory and fails each of its writes.
pub(crate) struct Committer {
    tx: Option<std::sync::mpsc::Sender<Pending>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Writes per commit at most (bounds one commit's size and the callers' wait).
const MAX_BATCH: usize = 256;

impl Committer {
    pub(crate) fn start(core: Arc<Core>, file: Arc<dyn Durable>) -> Result<Committer, StoreError> {
        let (tx, rx) = std::sync::mpsc::channel::<Pending>();
        let thread = std::thread::Builder::new()
            .name("store-commit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(p) => batch.push(p),
                            Err(_) => break,
                        }
                    }
                    commit_batch(&core, file.as_ref(), batch);
                }
            })
            .map_err(|e| StoreError::Backend {
                op: "starting the commit thread",
                source: Box::new(e),
            })?;
        Ok(Committer {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    async fn write(&self, op: Op) -> Result<Change, StoreError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .as_ref()
            .ok_or(StoreError::Closed)?
            .send(Pending { op, reply })
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        // Closing the queue ends the thread after the batch in hand; waiting for it releases
        // the redb file before the store counts as closed (a reopen must not find it locked).
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn commit_batch(core: &Core, file: &dyn Durable, batch: Vec<Pending>) {
    let mut st = core.state.blocking_lock();
    let mut applied: Vec<(
        Change,
        tokio::sync::oneshot::Sender<Result<Change, StoreError>>,
    )> = Vec::with_capacity(batch.len());
    for p in batch {
        match st.plan(p.op) {
            Ok(c) => {
                st.apply(&c);
                applied.push((c, p.reply));
            }
            // Refused (conflict, exists, missing): nothing changed, answered at once.
            Err(e) => {
                let _ = p.reply.send(Err(e));
            }
        }
    }
    if applied.is_empty() {
        return;
    }
    let changes: Vec<&Change> = applied.iter().map(|(c, _)| c).collect();
    match file.persist(&changes) {
        Ok(()) => {
            for (c, reply) in applied {
                let _ = core.events.send(c.event.clone());
                let _ = reply.send(Ok(c));
            }
        }
        Err(e) => {
            for (c, _) in applied.iter().rev() {
                st.undo(c);
            }
            let msg = e.to_string();
            let source = std::error::Error::source(&e).map(|s| s.to_string());
            for (_, reply) in applied {
                let _ = reply.send(Err(StoreError::Backend {
                    op: "committing a write",
                    source: format!("{msg}: {}", source.as_deref().unwrap_or("")).into(),
                }));
            }
        }
    }
}

/// The MVCC store: state and history in memory, optionally backed by a redb file that
/// every change is made durable in before it is applied and announced (the embedded store).
/// Without a file it is the in-memory store, the fake other crates test against.
#[derive(Clone)]
pub struct MvccStore {
    pub(crate) core: Arc<Core>,
    pub(crate) file: Option<Arc<dyn Durable>>,
    pub(crate) committer: Option<Arc<Committer>>,
}

/// The in-memory store: [`MvccStore::new`].
pub type MemStore = MvccStore;

impl Default for MvccStore {
    fn default() -> Self {
        MvccStore::new()
    }
}

impl MvccStore {
    /// An empty in-memory store.
    pub fn new() -> MvccStore {
        MvccStore {
            core: Core::new(State::new()),
            file: None,
            committer: None,
        }
    }

    async fn write(&self, op: Op) -> Result<Change, StoreError> {
        match &self.committer {
            Some(c) => c.write(op).await,
            None => self.core.write(op).await,
        }
    }
}

#[async_trait::async_trait]
impl Store for MvccStore {
    async fn current_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.core.state.lock().await.rev)
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.core.state.lock().await.kv.get(key).cloned())
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult, StoreError> {
        self.core.state.lock().await.list(prefix, &opts)
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError> {
        let c = self
            .write(Op::Create {
                key: key.into(),
                value,
            })
            .await?;
        Ok(put_kv(&c))
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> Result<KeyValue, StoreError> {
        let c = self
            .write(Op::Update {
                key: key.into(),
                value,
                expected,
            })
            .await?;
        Ok(put_kv(&c))
    }

    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<(KeyValue, Revision), StoreError> {
        let c = self
            .write(Op::Delete {
                key: key.into(),
                expected,
            })
            .await?;
        Ok(del_kv(&c))
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        self.core.watch(prefix, after).await
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let mut st = self.core.state.lock().await;
        let mut next = st.clone();
        next.compact(revision)?;
        if let Some(f) = &self.file {
            f.compact(revision)?;
        }
        *st = next;
        Ok(())
    }

    async fn oldest_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.core.state.lock().await.compacted + 1)
    }
}

pub(crate) fn put_kv(c: &Change) -> KeyValue {
    match &c.event {
        WatchEvent::Put { kv, .. } => kv.clone(),
        _ => unreachable_kv(),
    }
}

pub(crate) fn del_kv(c: &Change) -> (KeyValue, Revision) {
    match &c.event {
        WatchEvent::Delete { prev, revision } => (prev.clone(), *revision),
        _ => (unreachable_kv(), 0),
    }
}

/// plan_create/plan_update only produce Put and plan_delete only Delete; this keeps the
/// match total without a panic on an input path.
fn unreachable_kv() -> KeyValue {
    KeyValue {
        key: String::new(),
        value: vec![],
        create_revision: 0,
        mod_revision: 0,
    }
}

//! The MVCC store shared by the in-memory and embedded backends: one core (state, history,
//! watch broadcast) and one `Store` implementation; the embedded backend only adds a file.

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::{Mutex, broadcast};

use crate::embedded::RedbFile;
use crate::mvcc::{Change, State, event_key};
use crate::{
    KeyValue, ListOptions, ListResult, Revision, Store, StoreError, WatchEvent, WatchStream,
};

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

    /// One write: plan it against the current state, make it durable with `persist` (a
    /// no-op for the in-memory store), then apply it and tell watchers. The state lock is
    /// held throughout, so revisions are assigned and published in order.
    pub async fn write(
        &self,
        plan: impl FnOnce(&State) -> Result<Change, StoreError>,
        persist: impl FnOnce(&Change) -> Result<(), StoreError>,
    ) -> Result<Change, StoreError> {
        let mut st = self.state.lock().await;
        let c = plan(&st)?;
        persist(&c)?;
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

/// The MVCC store: state and history in memory, optionally backed by a redb file that
/// every change is made durable in before it is applied and announced (the embedded store).
/// Without a file it is the in-memory store, the fake other crates test against.
#[derive(Clone)]
pub struct MvccStore {
    pub(crate) core: Arc<Core>,
    pub(crate) file: Option<Arc<RedbFile>>,
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
        }
    }

    fn persist(&self, c: &Change) -> Result<(), StoreError> {
        match &self.file {
            Some(f) => f.persist(c),
            None => Ok(()),
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
            .core
            .write(|st| st.plan_create(key, value), |c| self.persist(c))
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
            .core
            .write(
                |st| st.plan_update(key, value, expected),
                |c| self.persist(c),
            )
            .await?;
        Ok(put_kv(&c))
    }

    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<(KeyValue, Revision), StoreError> {
        let c = self
            .core
            .write(|st| st.plan_delete(key, expected), |c| self.persist(c))
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

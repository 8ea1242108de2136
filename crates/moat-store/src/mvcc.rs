//! The in-memory MVCC state shared by every backend that keeps its own history (the
//! in-memory store and the embedded store, which persists each change before applying it
//! here). etcd keeps its own history and does not use this.

use std::collections::BTreeMap;

use crate::{KeyValue, ListOptions, ListResult, Revision, StoreError, WatchEvent};

#[derive(Debug, Default, Clone)]
pub(crate) struct State {
    pub kv: BTreeMap<String, KeyValue>,
    /// Every event after the compaction point, by revision.
    pub hist: BTreeMap<Revision, WatchEvent>,
    /// Last committed revision (1 for an empty store, like etcd).
    pub rev: Revision,
    /// History at or before this revision is gone.
    pub compacted: Revision,
}

/// A requested write, planned against the state when its turn comes.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Create {
        key: String,
        value: Vec<u8>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: Revision,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
}

/// A validated change, ready to persist and then apply.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub event: WatchEvent,
}

impl State {
    pub fn new() -> State {
        State {
            rev: 1,
            ..Default::default()
        }
    }

    pub fn check_rev(&self, at: Revision) -> Result<(), StoreError> {
        if at != 0 && at <= self.compacted {
            return Err(StoreError::Compacted {
                requested: at,
                compacted: self.compacted,
            });
        }
        if at > self.rev {
            return Err(StoreError::FutureRevision {
                requested: at,
                current: self.rev,
            });
        }
        Ok(())
    }

    pub fn plan_create(&self, key: &str, value: Vec<u8>) -> Result<Change, StoreError> {
        if self.kv.contains_key(key) {
            return Err(StoreError::AlreadyExists { key: key.into() });
        }
        let rev = self.rev + 1;
        Ok(Change {
            event: WatchEvent::Put {
                kv: KeyValue {
                    key: key.into(),
                    value,
                    create_revision: rev,
                    mod_revision: rev,
                },
                prev: None,
            },
        })
    }

    pub fn plan_update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> Result<Change, StoreError> {
        let old = self
            .kv
            .get(key)
            .ok_or_else(|| StoreError::NotFound { key: key.into() })?;
        if old.mod_revision != expected {
            return Err(StoreError::Conflict {
                key: key.into(),
                expected,
                actual: old.mod_revision,
            });
        }
        let rev = self.rev + 1;
        Ok(Change {
            event: WatchEvent::Put {
                kv: KeyValue {
                    key: key.into(),
                    value,
                    create_revision: old.create_revision,
                    mod_revision: rev,
                },
                prev: Some(old.clone()),
            },
        })
    }

    pub fn plan_delete(&self, key: &str, expected: Option<Revision>) -> Result<Change, StoreError> {
        let old = self
            .kv
            .get(key)
            .ok_or_else(|| StoreError::NotFound { key: key.into() })?;
        if let Some(e) = expected
            && old.mod_revision != e
        {
            return Err(StoreError::Conflict {
                key: key.into(),
                expected: e,
                actual: old.mod_revision,
            });
        }
        Ok(Change {
            event: WatchEvent::Delete {
                prev: old.clone(),
                revision: self.rev + 1,
            },
        })
    }

    pub fn plan(&self, op: Op) -> Result<Change, StoreError> {
        match op {
            Op::Create { key, value } => self.plan_create(&key, value),
            Op::Update {
                key,
                value,
                expected,
            } => self.plan_update(&key, value, expected),
            Op::Delete { key, expected } => self.plan_delete(&key, expected),
        }
    }

    /// Reverts the last applied change `c` (a batch whose commit failed is undone in
    /// reverse order, so the state is exactly what it was before the batch).
    pub fn undo(&mut self, c: &Change) {
        let rev = c.event.revision();
        match &c.event {
            WatchEvent::Put { kv, prev } => match prev {
                Some(p) => {
                    self.kv.insert(p.key.clone(), p.clone());
                }
                None => {
                    self.kv.remove(&kv.key);
                }
            },
            WatchEvent::Delete { prev, .. } => {
                self.kv.insert(prev.key.clone(), prev.clone());
            }
            WatchEvent::Progress { .. } => return,
        }
        self.hist.remove(&rev);
        self.rev = rev - 1;
    }

    /// Applies a planned change (after it was made durable, for durable backends).
    pub fn apply(&mut self, c: &Change) {
        match &c.event {
            WatchEvent::Put { kv, .. } => {
                self.rev = kv.mod_revision;
                self.kv.insert(kv.key.clone(), kv.clone());
            }
            WatchEvent::Delete { prev, revision } => {
                self.rev = *revision;
                self.kv.remove(&prev.key);
            }
            WatchEvent::Progress { .. } => return,
        }
        self.hist.insert(self.rev, c.event.clone());
    }

    pub fn compact(&mut self, revision: Revision) -> Result<(), StoreError> {
        if revision > self.rev {
            return Err(StoreError::FutureRevision {
                requested: revision,
                current: self.rev,
            });
        }
        if revision <= self.compacted {
            return Err(StoreError::Compacted {
                requested: revision,
                compacted: self.compacted,
            });
        }
        self.hist = self.hist.split_off(&(revision + 1));
        self.compacted = revision;
        Ok(())
    }

    pub fn list(&self, prefix: &str, opts: &ListOptions) -> Result<ListResult, StoreError> {
        self.check_rev(opts.at)?;
        let at = if opts.at == 0 { self.rev } else { opts.at };
        // Start from the current values and undo every change made after `at`.
        let mut view: BTreeMap<String, KeyValue> = self
            .kv
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if at < self.rev {
            for (_, ev) in self.hist.range(at + 1..).rev() {
                match ev {
                    WatchEvent::Put { kv, prev } if kv.key.starts_with(prefix) => match prev {
                        Some(p) => {
                            view.insert(p.key.clone(), p.clone());
                        }
                        None => {
                            view.remove(&kv.key);
                        }
                    },
                    WatchEvent::Delete { prev, .. } if prev.key.starts_with(prefix) => {
                        view.insert(prev.key.clone(), prev.clone());
                    }
                    _ => {}
                }
            }
        }
        let mut items: Vec<KeyValue> = view
            .into_values()
            .filter(|kv| {
                opts.start_after
                    .as_ref()
                    .is_none_or(|s| kv.key.as_str() > s.as_str())
            })
            .collect();
        let more = opts.limit > 0 && items.len() > opts.limit;
        if more {
            items.truncate(opts.limit);
        }
        Ok(ListResult {
            items,
            revision: at,
            more,
        })
    }

    /// History events under `prefix` with revision > `after`.
    pub fn events_after(
        &self,
        prefix: &str,
        after: Revision,
    ) -> Result<Vec<WatchEvent>, StoreError> {
        if after < self.compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted: self.compacted,
            });
        }
        Ok(self
            .hist
            .range(after + 1..)
            .map(|(_, e)| e)
            .filter(|e| event_key(e).is_some_and(|k| k.starts_with(prefix)))
            .cloned()
            .collect())
    }
}

pub(crate) fn event_key(e: &WatchEvent) -> Option<&str> {
    match e {
        WatchEvent::Put { kv, .. } => Some(&kv.key),
        WatchEvent::Delete { prev, .. } => Some(&prev.key),
        WatchEvent::Progress { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Snap = (BTreeMap<String, KeyValue>, Vec<Revision>, Revision);

    fn snapshot(s: &State) -> Snap {
        (s.kv.clone(), s.hist.keys().copied().collect(), s.rev)
    }

    /// A batch whose commit fails is undone in reverse: the state must be exactly what it
    /// was, whatever mix of creates, updates and deletes (of keys the batch itself touched).
    #[test]
    fn undo_in_reverse_restores_the_state_before_the_batch() {
        let mut st = State::new();
        for k in ["a", "b", "c"] {
            let c = st
                .plan(Op::Create {
                    key: k.into(),
                    value: b"v0".to_vec(),
                })
                .expect("create");
            st.apply(&c);
        }
        let before = snapshot(&st);
        let mut applied = Vec::new();
        let ops = [
            Op::Create {
                key: "d".into(),
                value: b"new".to_vec(),
            },
            Op::Update {
                key: "a".into(),
                value: b"v1".to_vec(),
                expected: 2,
            },
            Op::Delete {
                key: "b".into(),
                expected: None,
            },
            Op::Update {
                key: "d".into(),
                value: b"newer".to_vec(),
                expected: 5,
            },
            Op::Delete {
                key: "d".into(),
                expected: Some(8),
            },
            Op::Create {
                key: "b".into(),
                value: b"again".to_vec(),
            },
        ];
        for op in ops {
            let c = st.plan(op).expect("plan");
            st.apply(&c);
            applied.push(c);
        }
        assert_ne!(snapshot(&st), before);
        for c in applied.iter().rev() {
            st.undo(c);
        }
        assert_eq!(snapshot(&st), before);
    }
}

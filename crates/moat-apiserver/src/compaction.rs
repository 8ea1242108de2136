//! Periodic compaction of the store history, as kube-apiserver's `--etcd-compaction-interval`.
//!
//! kube-apiserver compacts, at each tick, to the revision it saw one interval earlier, and
//! etcd keeps that revision itself readable; so a list's continue token (which names the
//! revision of its first page) and a watch's resourceVersion stay valid for at least one
//! interval. The store contract here calls the compaction revision gone (`compact(r)`
//! drops `r`), so the plan compacts to one below the revision seen at the previous tick.
//! Compacting to that revision itself invalidated, on an idle store, a continue token
//! issued moments before the tick: its revision was the one seen at the previous tick
//! (issue 18: `kubectl get` listed only its first 500-item page).
//!
//! [`Plan`] is the decision (revisions in, revision to compact to out); [`run`] is the
//! timer and store calls around it.

use std::sync::Arc;
use std::time::Duration;

use moat_store::{Revision, Store};

/// What each tick compacts, from the revisions seen at the ticks before it.
#[derive(Debug, Default, Clone)]
pub struct Plan {
    /// The store's revision at the previous tick; None before the first tick.
    previous: Option<Revision>,
    /// The last revision compacted to (0: none).
    done: Revision,
}

impl Plan {
    pub fn new() -> Plan {
        Plan::default()
    }

    /// A tick with the store at revision `current`: the revision to compact to (it and
    /// everything before it become unreadable), if there is anything new to drop. The
    /// revision seen at the previous tick stays readable, so anything read since then does.
    pub fn tick(&mut self, current: Revision) -> Option<Revision> {
        let keep = self.previous.replace(current)?;
        let to = keep - 1;
        if to > self.done {
            self.done = to;
            Some(to)
        } else {
            None
        }
    }
}

/// Compacts `store` every `every`, by [`Plan`]; runs until the task is dropped.
pub async fn run(store: Arc<dyn Store>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut plan = Plan::new();
    loop {
        tick.tick().await;
        let current = match store.current_revision().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "reading the revision for compaction");
                continue;
            }
        };
        if let Some(to) = plan.tick(current) {
            match store.compact(to).await {
                Ok(()) => tracing::debug!(revision = to, "compacted the store history"),
                Err(e) => tracing::warn!(error = %e, revision = to, "compaction failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_store_keeps_the_revision_seen_one_tick_ago_readable() {
        let mut p = Plan::new();
        assert_eq!(p.tick(10), None, "the first tick only observes");
        // Idle: a list at 10 (a continue token) was possible at any time so far.
        assert_eq!(p.tick(10), Some(9));
        assert_eq!(p.tick(10), None, "nothing new to drop while idle");
        assert_eq!(p.tick(10), None);
    }

    #[test]
    fn writes_expire_revisions_seen_before_the_previous_tick() {
        let mut p = Plan::new();
        assert_eq!(p.tick(5), None);
        // A token issued between the ticks names revision >= 5; 5 stays readable.
        assert_eq!(p.tick(8), Some(4));
        // Next tick: everything before 8 goes, so a token at 5..=7 (over one interval
        // old) is gone and one at 8 (issued since the previous tick) stays.
        assert_eq!(p.tick(12), Some(7));
        assert_eq!(p.tick(12), Some(11));
        assert_eq!(p.tick(12), None);
    }

    #[test]
    fn revision_one_is_never_compacted_to_zero() {
        let mut p = Plan::new();
        assert_eq!(p.tick(1), None);
        assert_eq!(p.tick(1), None, "compacting to 0 would be a no-op request");
    }
}

//! moat's Service proxy core: kube-proxy's nftables mode (KEP-3866) as a sans-IO planner
//! plus one IO edge.
//!
//! Input: Services, EndpointSlices and [`NodeFacts`] ([`Snapshot`]). [`model::plan`]
//! builds the desired [`Model`] (one [`model::ServicePort`] per proxied port), which
//! [`ruleset::compile`] turns into a [`Ruleset`]: the dynamic content of the table
//! `ip moat-proxy` (chains, map and set elements). [`script`] renders a full rewrite or the
//! difference between two rulesets, always as one `nft -f` transaction applied through
//! [`moat_nft::NftApply`].
//!
//! # Invariants
//! - [`Proxy::sync`] keeps the last *committed* model and ruleset in memory, compiles only
//!   the service ports whose model changed, and sends only the difference (elements added/deleted, changed chains flushed and rewritten, new chains
//!   added, dead ones deleted); it never lists or parses the kernel's table.
//! - The first sync, and the first after a failed apply, is a full rewrite. nft
//!   transactions are atomic, so a rejected one leaves the previous ruleset in force.
//! - Chain and set names are hash-derived ([`moat_nft::hashed_ident`]): a fresh full render
//!   and any history of diffs give the same table (property-tested).
//! - A service port without a usable endpoint is rejected (TCP reset / ICMP port
//!   unreachable) in the filter hooks, never silently dropped.
//! - UDP endpoints that stop being served are reported per sync ([`SyncReport::stale_udp`])
//!   for conntrack cleanup through a [`Conntrack`].
//!
//! The nat chains hook at `dstnat`, before moat-netpol's forward filter: a Service
//! connection is judged by policy as a connection to its backend pod.

pub mod conntrack;
pub mod model;
pub mod ruleset;
pub mod script;

pub use conntrack::{Conntrack, ConntrackCli, ConntrackError, RecordingConntrack, StaleFlow};
pub use moat_api::cidr::Ipv4Net;
pub use moat_nft::{ApplyError, NftApply};
pub use model::{Model, NodeFacts, PortKey, Proto, Snapshot, plan};
pub use ruleset::{Fragment, Ruleset, Touched, compile};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("applying the proxy ruleset (full rewrite: {full})")]
    Apply {
        full: bool,
        #[source]
        source: ApplyError,
    },
}

/// What one sync did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// A full rewrite (first sync, or after a failed apply).
    pub full: bool,
    pub script_bytes: usize,
    /// (chains, rules, elements) of the dynamic table after the sync.
    pub chains: usize,
    pub rules: usize,
    pub elements: usize,
    /// UDP conntrack entries the caller should delete now ([`Conntrack::delete_udp`]).
    pub stale_udp: Vec<StaleFlow>,
}

/// What the kernel holds, as far as we know.
struct Committed {
    model: Model,
    rules: Ruleset,
    node: NodeFacts,
}

/// Keeps the committed state so each sync sends only the difference.
pub struct Proxy<A: NftApply> {
    applier: A,
    committed: Option<Committed>,
    /// The last apply failed: rewrite everything next time.
    needs_full: bool,
}

/// One service port's change: (key, old fragment, new fragment).
type Change = (PortKey, Option<Fragment>, Option<Fragment>);

impl<A: NftApply> Proxy<A> {
    pub fn new(applier: A) -> Self {
        Proxy {
            applier,
            committed: None,
            needs_full: true,
        }
    }

    pub fn applier(&self) -> &A {
        &self.applier
    }

    /// The ruleset last committed to the kernel.
    pub fn committed(&self) -> Option<&Ruleset> {
        self.committed.as_ref().map(|c| &c.rules)
    }

    /// Plans, renders and applies one snapshot in one transaction.
    pub fn sync(&mut self, snap: &Snapshot<'_>) -> Result<SyncReport, SyncError> {
        let model = plan(snap);
        match self.committed.as_mut() {
            Some(c) if !self.needs_full && c.node == *snap.node => {
                let res = Self::sync_changes(&self.applier, c, model);
                if res.is_err() {
                    self.needs_full = true;
                }
                res
            }
            _ => self.sync_full(snap.node, model),
        }
    }

    /// Full rewrite: first sync, after a failed apply, or when the node's facts changed.
    fn sync_full(&mut self, node: &NodeFacts, model: Model) -> Result<SyncReport, SyncError> {
        let rules = compile(&model, node);
        let text = match &self.committed {
            Some(c) if self.needs_full => script::full(script::Base::Known(&c.rules), &rules),
            Some(c) => script::diff(&c.rules, &rules),
            None => script::full(script::Base::Unknown, &rules),
        };
        let full = self.needs_full || self.committed.is_none();
        if !text.is_empty()
            && let Err(source) = self.applier.apply(&text)
        {
            // The kernel still holds the committed state (atomic transaction), but retry
            // with a full rewrite in case something else touched the table.
            self.needs_full = true;
            return Err(SyncError::Apply { full, source });
        }
        let empty = Model::default();
        let old = self.committed.as_ref().map_or(&empty, |c| &c.model);
        let stale_udp = conntrack::stale_udp(old, &model);
        let report = report(full, &text, &rules, stale_udp);
        self.committed = Some(Committed {
            model,
            rules,
            node: node.clone(),
        });
        self.needs_full = false;
        Ok(report)
    }

    /// Incremental sync: only the service ports whose model changed are compiled again,
    /// and the diff covers only what their old and new fragments touch.
    fn sync_changes(applier: &A, c: &mut Committed, model: Model) -> Result<SyncReport, SyncError> {
        let mut changes: Vec<Change> = Vec::new();
        let (mut old_sub, mut new_sub) = (Model::default(), Model::default());
        for (k, o) in &c.model.ports {
            match model.ports.get(k) {
                Some(n) if n == o => {}
                n => {
                    old_sub.ports.insert(k.clone(), o.clone());
                    if let Some(n) = n {
                        new_sub.ports.insert(k.clone(), n.clone());
                    }
                    changes.push((
                        k.clone(),
                        Some(ruleset::fragment(o)),
                        n.map(ruleset::fragment),
                    ));
                }
            }
        }
        for (k, n) in model
            .ports
            .iter()
            .filter(|(k, _)| !c.model.ports.contains_key(*k))
        {
            new_sub.ports.insert(k.clone(), n.clone());
            changes.push((k.clone(), None, Some(ruleset::fragment(n))));
        }
        let mut touched = Touched::default();
        for (_, o, n) in &changes {
            for f in [o, n].into_iter().flatten() {
                touched.add(f);
            }
        }
        let before = c.rules.part(&touched);
        for (k, o, _) in &changes {
            if let Some(o) = o {
                c.rules.remove(k, o);
            }
        }
        for (k, _, n) in &changes {
            if let Some(n) = n {
                c.rules.add(k, n);
            }
        }
        let text = script::diff(&before, &c.rules.part(&touched));
        if !text.is_empty()
            && let Err(source) = applier.apply(&text)
        {
            // Put the committed ruleset back as it was: it is what the kernel holds, and
            // the next (full) sync deletes what it no longer wants.
            for (k, _, n) in &changes {
                if let Some(n) = n {
                    c.rules.remove(k, n);
                }
            }
            for (k, o, _) in &changes {
                if let Some(o) = o {
                    c.rules.add(k, o);
                }
            }
            return Err(SyncError::Apply {
                full: false,
                source,
            });
        }
        let stale_udp = conntrack::stale_udp(&old_sub, &new_sub);
        c.model = model;
        Ok(report(false, &text, &c.rules, stale_udp))
    }

    /// Makes the next sync a full rewrite.
    pub fn force_full(&mut self) {
        self.needs_full = true;
    }
}

fn report(full: bool, text: &str, rules: &Ruleset, stale_udp: Vec<StaleFlow>) -> SyncReport {
    let (chains, nrules, elements) = rules.counts();
    SyncReport {
        full,
        script_bytes: text.len(),
        chains,
        rules: nrules,
        elements,
        stale_udp,
    }
}

#[cfg(test)]
mod replay;
#[cfg(test)]
mod tests;

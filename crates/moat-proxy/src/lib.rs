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
//! - [`Proxy::sync`] keeps the last *committed* ruleset in memory and sends only the
//!   difference (elements added/deleted, changed chains flushed and rewritten, new chains
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
pub use moat_nft::{ApplyError, NftApply};
pub use model::{Cidr, Model, NodeFacts, Proto, Snapshot, plan};
pub use ruleset::{Ruleset, compile};

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

/// Keeps the committed state so each sync sends only the difference.
pub struct Proxy<A: NftApply> {
    applier: A,
    /// Model and ruleset the kernel holds (as far as we know).
    committed: Option<(Model, Ruleset)>,
    /// The last apply failed: rewrite everything next time.
    needs_full: bool,
}

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
        self.committed.as_ref().map(|(_, r)| r)
    }

    /// Plans, renders and applies one snapshot in one transaction.
    pub fn sync(&mut self, snap: &Snapshot<'_>) -> Result<SyncReport, SyncError> {
        let model = plan(snap);
        let rules = compile(&model, snap.node);
        let full = self.needs_full || self.committed.is_none();
        let text = match (&self.committed, full) {
            (Some((_, old)), false) => script::diff(old, &rules),
            (Some((_, old)), true) => script::full(script::Base::Known(old), &rules),
            (None, _) => script::full(script::Base::Unknown, &rules),
        };
        if !text.is_empty()
            && let Err(source) = self.applier.apply(&text)
        {
            // The kernel still holds the committed state (atomic transaction), but retry
            // with a full rewrite in case something else touched the table.
            self.needs_full = true;
            return Err(SyncError::Apply { full, source });
        }
        let stale_udp = match &self.committed {
            Some((old, _)) => conntrack::stale_udp(old, &model),
            None => conntrack::stale_udp(&Model::default(), &model),
        };
        let (chains, nrules, elements) = rules.counts();
        self.committed = Some((model, rules));
        self.needs_full = false;
        Ok(SyncReport {
            full,
            script_bytes: text.len(),
            chains,
            rules: nrules,
            elements,
            stale_udp,
        })
    }

    /// Forgets nothing but makes the next sync a full rewrite.
    pub fn force_full(&mut self) {
        self.needs_full = true;
    }
}

#[cfg(test)]
mod replay;
#[cfg(test)]
mod tests;

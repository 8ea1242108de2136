//! moat's NetworkPolicy engine.
//!
//! Input: plain Kubernetes objects (Namespaces, Pods, NetworkPolicies) — a snapshot of the
//! cluster as the node agent sees it through the API. Output: one atomic `nft -f`
//! transaction for this node (a full replacement, or the minimal diff from the last one).
//!
//! # Datapath
//! Pods hang off a Linux bridge on the node (the CNI `bridge` plugin's `cni0`, or the lab's
//! bridge); a VM pod's traffic arrives on its veth exactly like a runc pod's. Bridged
//! pod-to-pod frames reach the IPv4 netfilter hooks through br_netfilter
//! (`net.bridge.bridge-nf-call-iptables=1`, built into this kernel), and routed traffic
//! (to and from Service VIPs, other nodes, outside) reaches them anyway, so one `inet`
//! table `moat_netpol` with one `forward` base chain at priority `filter` sees every pod
//! connection once, after Service DNAT (priority `dstnat`): a connection to a ClusterIP is
//! judged by its backend pod. Traffic between a pod and its own node uses the input/output
//! hooks, which the engine leaves alone: kubelet probes and node access always work.
//!
//! The base chain: `ct state established,related accept` (replies), `ct state invalid drop`,
//! self pairs (a pod reaching itself through a Service) and node addresses accept, then
//! `ip saddr vmap @egress` and `ip daddr vmap @ingress`: O(1) dispatch on the pod IP to the
//! chain of the pod's *group*. A group is all local pods isolated for the same reasons (the
//! same selecting policies; for ingress also the same resolution of the named ports those
//! policies use). Its chain is fixed — three lookups in sets of allowed peers (all ports),
//! ports (all peers) and peer×port pairs, each `return` on match, then `drop` — and its
//! sets hold the policy rules folded into canonical, disjoint concatenated intervals.
//! A label change or a new pod therefore changes map and set elements only; whole groups
//! appear or disappear only when the set of policies selecting some pod changes.
//! Group names are hashes of the group key, so a fresh compile and any history of
//! incremental updates produce the same ruleset.
//!
//! New pods: the agent calls [`Engine::sync`] with the pod's IP before starting it, so its
//! first packet is already judged (NETPOL.md rule 12). hostNetwork pods are never selected.
//! IPv4 only today; the group/set structure carries over to IPv6 with `ip6` keyed maps and
//! `ipv6_addr` sets beside the IPv4 ones.
//!
//! # Safety of input
//! Policies are validated first ([`model::Snapshot::build`]); one invalid policy fails the
//! whole sync and leaves the kernel's ruleset untouched. Rendering writes only hash-derived
//! identifiers and typed values, never a user string.

/// The nft edge now lives in `moat-nft`; re-exported so `moat_netpol::apply::*` keeps working.
pub use moat_nft as apply;
pub mod compile;
pub mod explain;
pub mod model;
pub mod reference;
pub mod render;
pub mod sim;

pub use apply::{ApplyError, NftApply};
pub use compile::{Compiled, compile};
pub use model::{InvalidInput, Options, Proto, Snapshot};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("invalid input ({} problem(s)): {}", .0.len(), .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<InvalidInput>),
    #[error("applying the ruleset")]
    Apply(#[source] ApplyError),
}

/// What one sync did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncStats {
    pub full: bool,
    pub script_bytes: usize,
    pub rules: usize,
    pub elements: usize,
}

/// Keeps the last applied state so each sync sends only the difference.
pub struct Engine<A: NftApply> {
    applier: A,
    current: Option<Compiled>,
}

impl<A: NftApply> Engine<A> {
    pub fn new(applier: A) -> Self {
        Engine {
            applier,
            current: None,
        }
    }

    pub fn current(&self) -> Option<&Compiled> {
        self.current.as_ref()
    }

    /// Compiles the snapshot and applies it: the whole table the first time (or after a
    /// failed apply, when the kernel state is in doubt), a diff afterwards.
    pub fn sync(&mut self, snap: &Snapshot) -> Result<SyncStats, SyncError> {
        let new = compile(snap);
        let (full, script) = match &self.current {
            None => (true, render::full(&new)),
            Some(old) => (false, render::diff(old, &new)),
        };
        // nft transactions are atomic: on failure the kernel still holds the previous
        // state, and so does `self.current`.
        if !script.is_empty()
            && let Err(e) = self.applier.apply(&script)
        {
            return Err(SyncError::Apply(e));
        }
        let (rules, elements) = render::counts(&new);
        self.current = Some(new);
        Ok(SyncStats {
            full,
            script_bytes: script.len(),
            rules,
            elements,
        })
    }

    /// Builds the snapshot from API objects and syncs it. Invalid input changes nothing.
    pub fn sync_objects(
        &mut self,
        namespaces: &[k8s_openapi::api::core::v1::Namespace],
        pods: &[k8s_openapi::api::core::v1::Pod],
        policies: &[k8s_openapi::api::networking::v1::NetworkPolicy],
        opts: &Options,
    ) -> Result<SyncStats, SyncError> {
        let snap = Snapshot::build(namespaces, pods, policies, opts).map_err(SyncError::Invalid)?;
        self.sync(&snap)
    }

    /// Forgets the applied state so the next sync replaces the whole table.
    pub fn force_full(&mut self) {
        self.current = None;
    }
}

#[cfg(test)]
mod tests;

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
//! New pods: the agent syncs with the pod's IP before starting it, so its first packet is
//! already judged (NETPOL.md rule 12). hostNetwork pods are never selected. When several
//! local pods show one IP (a torn-down pod's address reused), the pod that is not finished
//! owns its dispatch ([`model::PodInfo::ip_rank`]), whatever the input order.
//!
//! # Incremental updates
//! [`Engine::sync`] / [`Engine::sync_objects`] compile the whole snapshot each time
//! (about a second at 5,000 pods / 1,000 policies). [`Engine::sync_objects_incremental`]
//! takes the same arguments but recompiles only what changed ([`incremental`] finds the
//! changed objects by uid and resourceVersion, [`state::State`] updates the compiled
//! ruleset and yields a [`state::Delta`] of the touched entries), in milliseconds; its result
//! is always equal to a full compile of the same inputs (a randomized test checks every
//! step), and [`Engine::self_check`] confirms that periodically, repairing any drift.
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
pub mod incremental;
pub mod model;
pub mod reference;
pub mod render;
pub mod sim;
pub mod state;

pub use apply::{ApplyError, NftApply};
pub use compile::{Compiled, compile};
pub use model::{InvalidInput, Options, Proto, Snapshot};
pub use state::{Delta, State};

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

/// What the engine believes the kernel holds.
enum Held {
    Nothing,
    /// From [`Engine::sync`]: a whole compile.
    Compiled(Compiled),
    /// From [`Engine::sync_objects_incremental`]: the incremental state and its inputs.
    Tracked(Box<incremental::Tracked>, Doubt),
}

/// Whether the kernel is known to hold the tracked state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Doubt {
    InSync,
    /// An apply failed (or `force_full` was called) after the state moved on: the next
    /// transaction replaces the whole table.
    InDoubt,
}

/// Differences a self-check found between the incremental state and a full compile of the
/// same inputs (entries that differ), and the size of the repairing transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drift {
    pub groups: usize,
    pub map_entries: usize,
    pub local_ips: usize,
    pub node_addrs: bool,
    pub script_bytes: usize,
}

fn count_diff<K: Ord, V: PartialEq>(
    a: &std::collections::BTreeMap<K, V>,
    b: &std::collections::BTreeMap<K, V>,
) -> usize {
    a.iter().filter(|(k, v)| b.get(k) != Some(v)).count()
        + b.keys().filter(|k| !a.contains_key(k)).count()
}

impl Drift {
    fn between(have: &Compiled, want: &Compiled) -> Drift {
        Drift {
            groups: count_diff(&have.groups, &want.groups),
            map_entries: count_diff(&have.ingress, &want.ingress)
                + count_diff(&have.egress, &want.egress),
            local_ips: have.local_ips.symmetric_difference(&want.local_ips).count(),
            node_addrs: have.node_addrs != want.node_addrs,
            script_bytes: 0,
        }
    }
}

/// Keeps the last applied state so each sync sends only the difference.
pub struct Engine<A: NftApply> {
    applier: A,
    held: Held,
}

impl<A: NftApply> Engine<A> {
    pub fn new(applier: A) -> Self {
        Engine {
            applier,
            held: Held::Nothing,
        }
    }

    /// The ruleset the kernel holds, as far as the engine knows (None before the first
    /// sync, after `force_full`, or after a failed incremental apply).
    pub fn current(&self) -> Option<&Compiled> {
        match &self.held {
            Held::Nothing => None,
            Held::Compiled(c) => Some(c),
            Held::Tracked(t, Doubt::InSync) => Some(t.state.compiled()),
            Held::Tracked(_, Doubt::InDoubt) => None,
        }
    }

    /// The incremental state, when the last sync was incremental.
    pub fn state(&self) -> Option<&State> {
        match &self.held {
            Held::Tracked(t, _) => Some(&t.state),
            _ => None,
        }
    }

    fn apply(&mut self, script: &str) -> Result<(), SyncError> {
        if script.is_empty() {
            return Ok(());
        }
        self.applier.apply(script).map_err(SyncError::Apply)
    }

    /// Compiles the snapshot and applies it: the whole table the first time (or after a
    /// failed apply, when the kernel state is in doubt), a diff afterwards.
    pub fn sync(&mut self, snap: &Snapshot) -> Result<SyncStats, SyncError> {
        let new = compile(snap);
        let (full, script) = match self.current() {
            None => (true, render::full(&new)),
            Some(old) => (false, render::diff(old, &new)),
        };
        // nft transactions are atomic: on failure the kernel still holds the previous
        // state, and so does `self.held`.
        self.apply(&script)?;
        let (rules, elements) = render::counts(&new);
        self.held = Held::Compiled(new);
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

    /// [`Engine::sync_objects`] in time proportional to what changed since the last call:
    /// the same arguments (the caller's whole current lists), the same result and the same
    /// errors, but only the objects that changed are parsed and recompiled (see
    /// [`incremental`] for how changes are detected), and the transaction is built from
    /// the touched entries only. The first call, a call with different `opts`, or one after
    /// [`Engine::sync`] compiles everything. Invalid input changes nothing; a failed apply
    /// leaves the kernel as it was and makes the next transaction a whole-table one.
    pub fn sync_objects_incremental(
        &mut self,
        namespaces: &[k8s_openapi::api::core::v1::Namespace],
        pods: &[k8s_openapi::api::core::v1::Pod],
        policies: &[k8s_openapi::api::networking::v1::NetworkPolicy],
        opts: &Options,
    ) -> Result<SyncStats, SyncError> {
        if let Held::Tracked(t, doubt) = &mut self.held
            && t.opts == *opts
        {
            t.update(namespaces, pods, policies)
                .map_err(SyncError::Invalid)?;
            let delta = t.state.flush();
            let full = *doubt == Doubt::InDoubt;
            let script = if full {
                render::full(t.state.compiled())
            } else {
                delta.script()
            };
            let (rules, elements) = render::counts(t.state.compiled());
            if !script.is_empty()
                && let Err(e) = self.applier.apply(&script)
            {
                // The state moved on and the kernel did not.
                *doubt = Doubt::InDoubt;
                return Err(SyncError::Apply(e));
            }
            *doubt = Doubt::InSync;
            return Ok(SyncStats {
                full,
                script_bytes: script.len(),
                rules,
                elements,
            });
        }
        let snap = Snapshot::build(namespaces, pods, policies, opts).map_err(SyncError::Invalid)?;
        let tracked = incremental::Tracked::build(&snap, pods, policies, opts);
        let new = tracked.state.compiled();
        let (full, script) = match self.current() {
            None => (true, render::full(new)),
            Some(old) => (false, render::diff(old, new)),
        };
        self.apply(&script)?;
        let (rules, elements) = render::counts(new);
        self.held = Held::Tracked(Box::new(tracked), Doubt::InSync);
        Ok(SyncStats {
            full,
            script_bytes: script.len(),
            rules,
            elements,
        })
    }

    /// Compiles the incremental state's inputs from scratch and compares: Ok(None) when the
    /// state matches (the expected answer, always); otherwise applies the repairing diff,
    /// rebuilds the state and says what differed, for the caller to log. Costs a full
    /// compile; meant to run every few minutes. Nothing to check after [`Engine::sync`].
    pub fn self_check(&mut self) -> Result<Option<Drift>, SyncError> {
        let Held::Tracked(t, doubt) = &mut self.held else {
            return Ok(None);
        };
        let snap = t.state.snapshot();
        let fresh = compile(&snap);
        let have = t.state.compiled();
        if fresh == *have && *doubt == Doubt::InSync {
            return Ok(None);
        }
        let mut drift = Drift::between(have, &fresh);
        let script = match doubt {
            Doubt::InSync => render::diff(have, &fresh),
            Doubt::InDoubt => render::full(&fresh),
        };
        drift.script_bytes = script.len();
        if !script.is_empty()
            && let Err(e) = self.applier.apply(&script)
        {
            *doubt = Doubt::InDoubt;
            return Err(SyncError::Apply(e));
        }
        let drifted = fresh != *have;
        let mut state = State::from_snapshot(&snap);
        // The kernel now holds `fresh`, whatever the rebuilt state says.
        state.adopt(fresh);
        t.state = state;
        *doubt = Doubt::InSync;
        Ok(drifted.then_some(drift))
    }

    /// Forgets the applied state so the next sync replaces the whole table.
    pub fn force_full(&mut self) {
        match &mut self.held {
            Held::Tracked(_, doubt) => *doubt = Doubt::InDoubt,
            held => *held = Held::Nothing,
        }
    }
}

#[cfg(test)]
mod tests;

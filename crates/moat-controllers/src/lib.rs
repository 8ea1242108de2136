//! Controllers, Kubernetes-style: level-triggered reconcilers that compare what is asked
//! (a Deployment, a ReplicaSet) with what exists (ReplicaSets, Pods) and return a *plan* of
//! API writes. The plans are pure functions of their inputs so every rule is unit-tested
//! without a server; the loops that watch the API, apply plans and requeue with backoff sit
//! at the edge and talk only to the Kubernetes API (never the store).

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod gc;
pub mod job;
pub mod netpolstatus;
pub mod nodes;
pub mod pods;
pub mod replicaset;
pub mod rootca;

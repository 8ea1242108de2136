//! The agent's loops, each one job, started and restarted by [`crate::supervisor`]:
//! `pods` (dispatches the node's pods to per-pod workers), `heartbeat` (Node status and
//! Lease), `logrotate` (container log rotation), `podnet` (routes, FDB and neighbours to the
//! other nodes' pod subnets), `proxy` (Services through nftables), `dns` (the cluster
//! DNS on every node), `netpol` (NetworkPolicy for the node's pods).

pub mod dns;
pub mod heartbeat;
pub mod logrotate;
pub mod netpol;
pub mod podnet;
pub mod pods;
pub mod proxy;

//! The agent's loops, each one job, started and restarted by [`crate::supervisor`]:
//! `pods` (dispatches the node's pods to per-pod workers), `heartbeat` (Node status and
//! Lease), `logrotate` (container log rotation), `podnet` (routes, FDB and neighbours to the
//! other nodes' pod subnets). The service proxy, DNS and NetworkPolicy join here as loops of
//! their own.

pub mod heartbeat;
pub mod logrotate;
pub mod podnet;
pub mod pods;

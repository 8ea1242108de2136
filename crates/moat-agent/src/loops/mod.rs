//! The agent's loops, each one job, started and restarted by [`crate::supervisor`]:
//! `pods` (dispatches the node's pods to per-pod workers), `heartbeat` (Node status and
//! Lease), `logrotate` (container log rotation). The network components (pod network,
//! service proxy, DNS, NetworkPolicy) join here as loops of their own.

pub mod heartbeat;
pub mod logrotate;
pub mod pods;

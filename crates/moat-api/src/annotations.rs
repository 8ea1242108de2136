//! moat's own annotations, named once: the components that write them and the ones that
//! read them may run in different processes and must agree on the names.

/// On a Node: the URL of the agent's HTTPS endpoint (logs, exec, port-forward), which the
/// API server's proxy dials.
pub const AGENT_ENDPOINT: &str = "moat.io/agent-endpoint";
/// On a Node: the agent endpoint's self-signed certificate (PEM), which the proxy pins.
pub const AGENT_CERT: &str = "moat.io/agent-cert";
/// On a Node: the highest NetworkPolicy resourceVersion the node's ruleset was compiled
/// from; every policy at or below it is in force on the node.
pub const NETPOL_APPLIED_REVISION: &str = "netpol.moat.io/applied-revision";
/// On a NetworkPolicy: which generation every Ready node enforces.
pub const NETPOL_STATUS: &str = "netpol.moat.io/status";

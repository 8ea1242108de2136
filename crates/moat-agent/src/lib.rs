//! moat's node agent: the kubelet and container-runtime layer of a node.
//!
//! Sans-IO cores (handler config, OCI bundle generation, quantities, pod status, restart
//! backoff, CRI log lines) sit beside the IO edges: the API loop ([`agent`]), the OCI runtime
//! driven through a handler's binary and a per-container shim ([`runtime`], [`shim`]), and the
//! pod sandbox (network namespace + CNI, [`sandbox`]).

pub mod agent;
pub mod bundle;
pub mod check;
pub mod endpoint;
pub mod envvars;
pub mod exec;
pub mod handlers;
pub mod logrotate;
pub mod logs;
pub mod probe;
pub mod ps;
pub mod quantity;
pub mod runtime;
pub mod sandbox;
pub mod shim;
pub mod spdy;
pub mod status;

pub use agent::{Agent, AgentConfig, AgentError, Stop};
pub use handlers::{Handler, Handlers};

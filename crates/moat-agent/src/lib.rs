//! moat's node agent: the kubelet and container-runtime layer of a node.
//!
//! Shape: [`agent::Agent`] registers the node and runs independent loops under a
//! [`supervisor::Supervisor`] (`loops::pods`, `loops::heartbeat`, `loops::logrotate`). The
//! pods loop keeps one [`worker`] per pod; each worker drives the sans-IO pod state machine
//! ([`lifecycle`]) over the node's IO ([`node`]: sandbox, containers, teardown) behind narrow
//! traits (runtime, netns, CNI, images, host facts, network hooks, pod objects). Records
//! ([`podstate`]) make a restarted agent re-adopt its pods. The network components plug in
//! through [`hooks::PodNetHooks`]; the pod loop never imports them.

pub mod agent;
pub mod attach;
pub mod bundle;
pub mod check;
pub mod config;
pub mod containerlogs;
pub mod endpoint;
pub mod envvars;
pub mod errors;
pub mod exec;
pub mod handlers;
pub mod hooks;
pub mod hostinfo;
pub mod http;
pub mod images;
pub mod lifecycle;
pub mod logrotate;
pub mod logs;
pub mod loops;
pub mod node;
pub mod podsize;
pub mod podstate;
pub mod portforward;
pub mod probe;
pub mod ps;
pub mod runtime;
pub mod sandbox;
pub mod shim;
pub mod spdy;
pub mod status;
pub mod supervisor;
pub mod volumes;
pub mod worker;

pub use agent::{Agent, AgentConfig, AgentError, Stop};
pub use handlers::{Handler, Handlers};

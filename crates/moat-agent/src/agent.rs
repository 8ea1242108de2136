//! The agent: registers the node, starts its HTTPS endpoint, and runs its loops under the
//! [`Supervisor`]: `pods` (one worker per pod), `heartbeat`, `logrotate`.

use std::sync::Arc;

use moat_client::{Api, EventRecorder};
use serde_json::json;

use crate::hooks::NoHooks;
use crate::hostinfo::RealHost;
use crate::loops::heartbeat::{self, HeartbeatLoop, RegisterError};
use crate::loops::logrotate::LogRotateLoop;
use crate::loops::pods::PodsLoop;
use crate::node::{Node, SandboxError};
use crate::volumes::ApiObjects;

pub use crate::config::{AgentConfig, Join};
pub use crate::node::Parts;
pub use crate::podstate::{PodRecord, find_pod, records};
pub use crate::supervisor::{Health, Stop, Supervisor};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("API client")]
    Client(#[from] moat_client::ClientError),
    #[error("node registration")]
    Register(#[from] RegisterError),
    #[error("the agent's HTTPS endpoint")]
    Endpoint(#[from] crate::endpoint::EndpointError),
    #[error("setting up the node")]
    Node(#[from] SandboxError),
    #[error("opening the image store")]
    Images(#[source] moat_image::StoreError),
}

/// The loop names `--disable-loop` accepts.
pub const LOOPS: [&str; 3] = ["pods", "heartbeat", "logrotate"];

pub struct Agent {
    api: Arc<dyn Api>,
    node: Arc<Node>,
    endpoint_port: Option<u16>,
    events: EventRecorder,
}

impl Agent {
    /// Registers the node (creating it with the configured podCIDR if absent), starts the
    /// endpoint and sends a first heartbeat.
    pub fn new(mut cfg: AgentConfig, mut parts: Parts) -> Result<Agent, AgentError> {
        let client = cfg.join.client()?;
        if cfg.node_ip.is_none() {
            cfg.node_ip = parts.host.ipv4();
        }
        let api: Arc<dyn Api> = Arc::new(client.clone());
        let cidr = heartbeat::register(api.as_ref(), &cfg)?;
        let mut endpoint_port = None;
        if let Some(listen) = cfg.listen {
            // The API server proxies logs/exec with the cluster token, the one we hold.
            let token = client.token().to_string();
            let mut names = vec![
                "localhost".to_string(),
                "127.0.0.1".into(),
                cfg.node_name.clone(),
            ];
            names.extend(cfg.node_ip.clone());
            let ep = crate::endpoint::spawn(
                listen,
                names,
                crate::endpoint::Ctx {
                    token,
                    run_dir: cfg.run_dir.clone(),
                    log_dir: cfg.log_dir.clone(),
                    shim: cfg.shim.clone(),
                },
            )?;
            let host = if ep.addr.ip().is_unspecified() {
                cfg.node_ip.clone().unwrap_or_else(|| "127.0.0.1".into())
            } else {
                ep.addr.ip().to_string()
            };
            endpoint_port = Some(ep.addr.port());
            api.merge_patch(
                &format!("/api/v1/nodes/{}", cfg.node_name),
                &json!({"metadata": {"annotations": {
                    "moat.io/agent-endpoint": format!("https://{host}:{}", ep.addr.port()),
                    "moat.io/agent-cert": ep.cert_pem,
                }}}),
            )?;
        }
        parts.objects = Some(Arc::new(ApiObjects(api.clone())));
        let events = EventRecorder::spawn(api.clone(), "moat-agent", Some(&cfg.node_name));
        let node = Arc::new(Node::new(cfg, parts, &cidr)?);
        if let Err(e) = heartbeat::beat(
            api.as_ref(),
            &node.cfg,
            node.parts.host.as_ref(),
            endpoint_port,
        ) {
            tracing::warn!(error = %e, "first node heartbeat");
        }
        Ok(Agent {
            api,
            node,
            endpoint_port,
            events,
        })
    }

    /// The loops this agent runs (all but the disabled ones).
    pub fn supervisor(&self) -> Supervisor {
        let mut s = Supervisor::default();
        let off = &self.node.cfg.disabled_loops;
        if !off.contains("pods") {
            let l = PodsLoop {
                node: self.node.clone(),
                api: self.api.clone(),
                events: self.events.clone(),
            };
            s.add("pods", Box::new(move |stop: &Stop| l.run(stop)));
        }
        if !off.contains("heartbeat") {
            let l = HeartbeatLoop {
                api: self.api.clone(),
                cfg: self.node.cfg.clone(),
                host: self.node.parts.host.clone(),
                endpoint_port: self.endpoint_port,
            };
            s.add("heartbeat", Box::new(move |stop: &Stop| l.run(stop)));
        }
        if !off.contains("logrotate") {
            let l = LogRotateLoop {
                cfg: self.node.cfg.clone(),
            };
            s.add("logrotate", Box::new(move |stop: &Stop| l.run(stop)));
        }
        s
    }

    /// Runs the loops until `stop` is asked. Stopping leaves every pod running (as the
    /// kubelet does): their shims keep logs and exit codes, and the next agent re-adopts them
    /// from their records.
    pub fn run(self, stop: &Stop) {
        self.supervisor().run(stop);
        tracing::info!(
            pods = self.node.records().len(),
            "node agent stopped; its pods keep running"
        );
    }
}

/// The real parts for `cfg`.
pub fn real_parts(cfg: &AgentConfig) -> Result<Parts, AgentError> {
    let store = moat_image::Store::open(&cfg.image_root).map_err(AgentError::Images)?;
    Ok(Parts {
        runtime: Arc::new(crate::runtime::OciRuntime {
            shim: cfg.shim.clone(),
        }),
        netns: Arc::new(crate::sandbox::RealNetns),
        cni: Arc::new(moat_cni::RealExec {
            wrapper: Vec::new(),
        }),
        images: Arc::new(crate::images::StoreImages {
            store,
            mounter: Box::new(moat_image::RealMounter),
        }),
        hooks: Arc::new(NoHooks),
        host: Arc::new(RealHost),
        objects: None,
    })
}

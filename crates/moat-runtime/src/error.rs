//! The errors of a sandbox's daemon and of what it drives (QEMU, the template, the probe),
//! in a module of their own so the hypervisor implementation never names its consumer.

use std::path::PathBuf;

use crate::{ctl, net, oci};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{step} {}", path.display())]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "guest assets missing: {0} (run `moat-runtime assets build --agent <moat-guest-agent>`)"
    )]
    Assets(String),
    #[error("starting QEMU ({0})")]
    Qemu(String, #[source] std::io::Error),
    #[error("the VM did not come up: {why}\n--- guest console (last lines) ---\n{console}")]
    Boot { why: String, console: String },
    #[error("wiring the sandbox into its network namespace")]
    Net(#[from] net::NetError),
    #[error("control socket")]
    Ctl(#[from] ctl::CtlError),
    #[error("reading the bundle")]
    Bundle(#[source] oci_spec::OciSpecError),
    #[error("VM template: {step}: {why}")]
    Template { step: &'static str, why: String },
    #[error(transparent)]
    Oci(#[from] oci::OciError),
    #[error("sizing the VM from the pod's limits")]
    Size(#[from] crate::sizing::SizeError),
}

/// Why a control request to a sandbox's daemon failed. The CLI gets [`chain`] of it as
/// `CtlResponse::error` and prints it as the runtime's error.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("the VM is not running")]
    NoVm,
    #[error("container {0} already exists in this sandbox")]
    Exists(String),
    #[error("container {0} does not exist")]
    NoContainer(String),
    #[error("exec id {0} is in use")]
    ExecIdInUse(String),
    #[error("no such process in {0}")]
    NoProcess(String),
    #[error("reading {}/config.json", .0.display())]
    Spec(PathBuf, #[source] oci_spec::OciSpecError),
    #[error("decoding the exec process")]
    ExecProcess(#[source] serde_json::Error),
    #[error(transparent)]
    Oci(#[from] oci::OciError),
    /// Bind-mounting a volume or the rootfs into the share.
    #[error(transparent)]
    Share(DaemonError),
    /// The guest agent refused the request or did not answer.
    #[error(transparent)]
    Agent(#[from] crate::channel::ChannelError),
}

pub use moat_vm_proto::error_chain as chain;

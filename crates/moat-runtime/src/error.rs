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

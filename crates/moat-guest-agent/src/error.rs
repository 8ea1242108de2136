//! Why a host request failed. The host gets the whole chain as one string in
//! `Response::error` ("creating container c1: mounting /proc: EPERM"), so the variant names
//! the step and the OS error stays its `#[source]`.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("invalid container id {0:?}")]
    InvalidId(String),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("container {0} does not exist")]
    NoContainer(String),
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("container {0} was already started")]
    AlreadyStarted(String),
    #[error("exec id {0} is in use")]
    ExecIdInUse(String),
    #[error("no such process in {0}")]
    NoProcess(String),
    /// A host-side step failed; `step` says which ("preparing rootfs", "starting c1").
    #[error("{step}")]
    Io {
        step: String,
        #[source]
        source: io::Error,
    },
}

impl OpError {
    pub fn io(step: impl Into<String>) -> impl FnOnce(io::Error) -> OpError {
        let step = step.into();
        move |source| OpError::Io { step, source }
    }
}

pub use moat_vm_proto::error_chain as chain;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_names_step_and_cause() {
        let e = OpError::io("preparing rootfs")(io::Error::other("no space"));
        assert_eq!(chain(&e), "preparing rootfs: no space");
        assert_eq!(
            chain(&OpError::NoContainer("c1".into())),
            "container c1 does not exist"
        );
    }
}

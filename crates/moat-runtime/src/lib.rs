//! moat-runtime: an OCI runtime with runc's command-line contract whose sandboxes are microVMs.
//!
//! Sans-IO pieces (configuration, OCI state records, CPU-flag parsing, QEMU arguments, the
//! `features` document) sit beside the IO edges: the per-sandbox daemon owning QEMU and
//! the agent channel, the CLI commands, shims, networking and the host probes behind
//! `check`/`env` (see ARCHITECTURE.md).

pub mod assets;
pub mod channel;
pub mod commands;
pub mod config;
pub mod cpio;
pub mod ctl;
pub mod daemon;
pub mod error;
pub mod features;
pub mod kernel;
pub mod kvm;
pub mod modules;
pub mod net;
pub mod oci;
pub mod probe;
pub mod qemu;
pub mod qmp;
pub mod sandbox;
pub mod shares;
pub mod sizing;
pub mod state;
pub mod template;
pub mod vmlinux;
pub mod vmm;

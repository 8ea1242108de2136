//! moat-runtime: an OCI runtime with runc's command-line contract whose sandboxes are microVMs.
//!
//! This crate currently holds the sans-IO pieces (configuration, OCI state records, CPU-flag
//! parsing, the `features` document) and the host probes used by `check`/`env`. The VM boot
//! path (QEMU owner process, agent channel, create/start/exec) is not built yet.

pub mod assets;
pub mod channel;
pub mod commands;
pub mod config;
pub mod cpio;
pub mod ctl;
pub mod daemon;
pub mod features;
pub mod kvm;
pub mod modules;
pub mod net;
pub mod oci;
pub mod probe;
pub mod qemu;
pub mod qmp;
pub mod sandbox;
pub mod state;
pub mod template;
pub mod vmlinux;
pub mod vmm;

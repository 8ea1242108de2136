//! `moat netpol`: owned by the netpol area; replaced as that area lands.

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct NetpolArgs {}

pub fn run(_args: NetpolArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("moat netpol is not built yet")
}

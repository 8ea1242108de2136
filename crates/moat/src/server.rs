//! `moat server`: owned by the server area; replaced as that area lands.

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ServerArgs {}

pub fn run(_args: ServerArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("moat server is not built yet")
}

//! `moat image`: owned by the image area; replaced as that area lands.

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ImageArgs {}

pub fn run(_args: ImageArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("moat image is not built yet")
}

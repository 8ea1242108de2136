//! `moat ps` / `moat pods`: the node's containers and pod sandboxes, crictl-style, read from
//! the agent's run dir (works whether or not the agent is running).

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct PsArgs {
    /// The agent's run dir (its `--run-dir`).
    #[arg(long, default_value = "/run/moat/agent")]
    run_dir: PathBuf,
}

fn now() -> String {
    moat_client::now_rfc3339()
}

/// Containers (all states, like `crictl ps -a`).
pub fn ps(a: PsArgs) -> anyhow::Result<ExitCode> {
    let rows = moat_agent::ps::containers(&a.run_dir);
    print!("{}", moat_agent::ps::format_containers(&rows, &now()));
    Ok(ExitCode::SUCCESS)
}

/// Pod sandboxes (like `crictl pods`).
pub fn pods(a: PsArgs) -> anyhow::Result<ExitCode> {
    let rows = moat_agent::ps::sandboxes(&a.run_dir);
    print!("{}", moat_agent::ps::format_sandboxes(&rows, &now()));
    Ok(ExitCode::SUCCESS)
}

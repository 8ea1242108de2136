//! `moat`: thin entry point. Each subcommand lives in its own module, which only parses
//! arguments and calls into the library crate that owns the area (see ARCHITECTURE.md).

use clap::{Parser, Subcommand};

// Many small, short-lived allocations (JSON values per object) across threads: glibc's
// malloc spent about half the server's CPU on them under load (bench/scheduler.sh).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod agent;
mod certs;
mod cluster;
mod image;
mod netpol;
mod ps;
mod server;
mod shutdown;

#[derive(Parser)]
#[command(
    name = "moat",
    version,
    about = "Kubernetes-compatible cluster with VM-isolated pods"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the control plane (API server on the embedded store or etcd).
    Server(server::ServerArgs),
    /// A multi-node cluster on this machine, each node a network namespace (like kind).
    Cluster(cluster::ClusterArgs),
    /// NetworkPolicy tools: probe policies in a lab, explain verdicts.
    Netpol(netpol::NetpolArgs),
    /// The node's content-addressed image store.
    Image(image::ImageArgs),
    /// Run the node agent: register this node and run the pods bound to it.
    Agent(Box<agent::AgentCmdArgs>),
    /// Report what this node can do: runtime handlers (and whether their runtime accepts
    /// this machine's cgroups), CNI plugins, nftables, /dev/kvm (= `moat agent check`).
    Check(agent::CheckArgs),
    /// List this node's containers with their pod, runtime handler, state and pid.
    Ps(ps::PsArgs),
    /// List this node's pod sandboxes with their runtime handler, state and IP.
    Pods(ps::PsArgs),
    /// Credentials signed by the cluster CA: `moat certs user NAME --group G --out DIR`.
    Certs(certs::CertsArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MOAT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Server(a) => server::run(a),
        Cmd::Cluster(a) => cluster::run(a),
        Cmd::Netpol(a) => netpol::run(a),
        Cmd::Image(a) => image::run(a),
        Cmd::Agent(a) => agent::run(*a),
        Cmd::Check(a) => agent::check(a),
        Cmd::Ps(a) => ps::ps(a),
        Cmd::Pods(a) => ps::pods(a),
        Cmd::Certs(a) => certs::run(a),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("moat: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

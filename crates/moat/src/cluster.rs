//! `moat cluster`: parses arguments and calls `moat-devcluster`, which does the work.

use std::io::IsTerminal;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use moat_devcluster::host::RealHost;

#[derive(Args)]
pub struct ClusterArgs {
    /// Where clusters keep their records, node dirs and kubeconfig.
    #[arg(long, global = true, default_value = "/var/lib/moat/clusters")]
    root: PathBuf,
    #[command(subcommand)]
    cmd: ClusterCmd,
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Create a cluster of N nodes (network namespaces) and wait until every node is Ready.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// vxlan or host-gw (k3s's --flannel-backend names).
        #[arg(long, default_value = "vxlan")]
        backend: String,
        #[arg(long, default_value = "10.42.0.0/16")]
        cluster_cidr: String,
        #[arg(long, default_value = "10.43.0.0/16")]
        service_cidr: String,
        /// Label and taint the last K nodes example.org/workload=untrusted (NoSchedule).
        #[arg(long, default_value_t = 0)]
        untrusted_nodes: usize,
        /// The image store every node reads (the host's, where `moat image import` puts
        /// images).
        #[arg(long, default_value = "/var/lib/moat/images", env = "MOAT_IMAGE_ROOT")]
        image_root: PathBuf,
        /// Runtime handler TOML every node's agent loads (`moat agent --runtime-config`),
        /// e.g. `[handlers.kata] binary = "/path/to/moat-runtime"`; handler roots default
        /// to each node's own run dir.
        #[arg(long)]
        runtime_config: Option<PathBuf>,
        /// An extra `moat server` flag for the first node (repeatable; k3d's --k3s-arg),
        /// e.g. `--server-arg=--legacy-namespace-isolation`.
        #[arg(long = "server-arg", allow_hyphen_values = true)]
        server_args: Vec<String>,
    },
    /// Delete a cluster: processes, pods, VMs, namespaces, mounts, cgroups and files.
    Delete {
        #[arg(long)]
        name: String,
    },
    /// List the clusters.
    List,
    /// Print a cluster's kubeconfig (for the host's kubectl).
    Kubeconfig {
        #[arg(long)]
        name: String,
    },
    /// Run a command in a node's network namespace (`moat cluster exec --name demo demo-1 -- ip route`).
    Exec {
        #[arg(long)]
        name: String,
        node: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        cmd: Vec<String>,
    },
    /// Start a node's process again (after it was stopped or killed); its pods kept running.
    Start {
        #[arg(long)]
        name: String,
        node: String,
    },
    /// The host's forwarder to the API server (started by create).
    #[command(hide = true)]
    Proxy {
        #[arg(long)]
        name: String,
    },
}

pub fn run(a: ClusterArgs) -> anyhow::Result<ExitCode> {
    match a.cmd {
        ClusterCmd::Create {
            name,
            nodes,
            backend,
            cluster_cidr,
            service_cidr,
            untrusted_nodes,
            image_root,
            runtime_config,
            server_args,
        } => {
            // Absolute, and refused now if missing rather than as agents that never start.
            let runtime_config = runtime_config
                .map(|c| {
                    std::fs::canonicalize(&c)
                        .with_context(|| format!("--runtime-config {}", c.display()))
                })
                .transpose()?;
            let spec = moat_devcluster::Spec {
                name,
                nodes,
                backend,
                cluster_cidr,
                service_cidr,
                untrusted: untrusted_nodes,
                root: a.root.clone(),
                image_root,
                runtime_config,
                server_args,
            };
            let moat = std::env::current_exe().context("locating the moat binary")?;
            let tty = std::io::stderr().is_terminal();
            let mut progress = |line: &str| {
                if tty {
                    eprintln!(" • {line}");
                } else {
                    tracing::info!("{line}");
                }
            };
            let p = moat_devcluster::create(&RealHost, &spec, &moat, &mut progress)?;
            println!("cluster {} is ready ({} nodes)", p.name, p.nodes.len());
            println!("export KUBECONFIG={}", p.kubeconfig().display());
        }
        ClusterCmd::Delete { name } => {
            moat_devcluster::delete(&RealHost, &a.root, &name)?;
            println!("cluster {name} deleted");
        }
        ClusterCmd::List => {
            for p in moat_devcluster::list(&a.root) {
                println!(
                    "{}\t{} nodes\t{}\t{}",
                    p.name,
                    p.nodes.len(),
                    p.backend,
                    p.kubeconfig().display()
                );
            }
        }
        ClusterCmd::Kubeconfig { name } => {
            let p = moat_devcluster::load(&a.root, &name)?;
            let kc = std::fs::read_to_string(p.kubeconfig())
                .with_context(|| format!("reading {}", p.kubeconfig().display()))?;
            print!("{kc}");
        }
        ClusterCmd::Exec { name, node, cmd } => {
            let p = moat_devcluster::load(&a.root, &name)?;
            let ns = moat_devcluster::node_netns(&p, &node)?;
            let err = std::process::Command::new("nsenter")
                .arg(format!("--net=/run/netns/{ns}"))
                .arg("--")
                .args(&cmd)
                .exec();
            return Err(err).context("running nsenter");
        }
        ClusterCmd::Start { name, node } => {
            let p = moat_devcluster::load(&a.root, &name)?;
            let n = p
                .nodes
                .iter()
                .find(|n| n.name == node)
                .with_context(|| format!("cluster {name} has no node {node:?}"))?;
            if let Some(pid) = moat_devcluster::node_pid(n) {
                println!("node {node} is running (pid {pid})");
            } else {
                let moat = std::env::current_exe().context("locating the moat binary")?;
                let pid = moat_devcluster::start_node(&RealHost, &p, n, &moat)?;
                println!("node {node} started (pid {pid})");
            }
        }
        ClusterCmd::Proxy { name } => {
            let p = moat_devcluster::load(&a.root, &name)?;
            let listener = moat_devcluster::proxy::bind()?;
            let port = listener
                .local_addr()
                .context("the forwarder's address")?
                .port();
            let port_file = p.dir.join("proxy.port");
            let tmp = port_file.with_extension("tmp");
            std::fs::write(&tmp, port.to_string()).context("writing the forwarder's port")?;
            std::fs::rename(&tmp, &port_file).context("writing the forwarder's port")?;
            let server = p.server();
            moat_devcluster::proxy::serve(
                listener,
                &PathBuf::from("/run/netns").join(&server.netns),
                std::net::SocketAddr::from((server.ip, moat_devcluster::plan::API_PORT)),
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

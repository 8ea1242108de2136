//! `moat server`: the control plane (API server on the embedded store).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

#[derive(clap::Args)]
pub struct ServerArgs {
    /// Address for the HTTPS API.
    #[arg(long, default_value = "0.0.0.0:6443")]
    listen: SocketAddr,
    /// Holds the store, the CA and serving certificate, the admin token and kubeconfig.yaml.
    #[arg(long, default_value = "/var/lib/moat")]
    data_dir: PathBuf,
    /// etcd endpoints (comma-separated) instead of the embedded store.
    #[arg(long)]
    datastore_endpoint: Option<String>,
    /// RuntimeClass given to pods annotated io.kubernetes.cri-o.TrustedSandbox: "false".
    #[arg(long, default_value = "kata")]
    untrusted_runtime_class: String,
    /// Range Service ClusterIPs are allocated from.
    #[arg(long, default_value = "10.43.0.0/16")]
    service_cidr: String,
    /// Run only the API server: no scheduler, no controllers.
    #[arg(long)]
    disable_controllers: bool,
    /// Do not run the node agent in this process (like k3s `--disable-agent`): an API server
    /// and control plane only, registering no node and running no pods on this host.
    #[arg(long = "disable-agent")]
    disable_agent: bool,
    /// The in-process node agent is on by default; accepted for older command lines.
    #[arg(long, hide = true)]
    agent: bool,
    #[command(flatten)]
    agent_args: Box<crate::agent::AgentArgs>,
    /// Compact store history older than this (e.g. 5m, 30s; 0 disables). List continue
    /// tokens and watch resourceVersions stay valid for at least one interval; older ones get
    /// 410 Expired once the store has moved on, and clients re-list.
    #[arg(long, default_value = "5m", value_parser = moat_api::time::parse_duration)]
    compaction_interval: std::time::Duration,
    /// End watches after at most this many seconds (clients resume; for tests).
    #[arg(long, hide = true)]
    max_watch_seconds: Option<u64>,
    /// Pod network of the cluster; each node gets a block of it as its podCIDR.
    #[arg(long, default_value = "10.42.0.0/16")]
    cluster_cidr: String,
    /// Prefix length of each node's podCIDR block.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// How nodes reach each other's pod subnets: vxlan, host-gw, or none (the user installs
    /// a CNI config of their own on every node).
    #[arg(long, default_value = "vxlan")]
    flannel_backend: String,
    /// A node not heard from (Lease renewal or status) for this long is unreachable:
    /// Ready=Unknown and tainted.
    #[arg(long, default_value = "40s", value_parser = moat_api::time::parse_duration)]
    node_monitor_grace_period: std::time::Duration,
    /// How long pods without their own toleration stay on an unreachable or not-ready node.
    #[arg(long, default_value_t = 300)]
    default_toleration_seconds: i64,
    /// Honour the 2016-era namespace annotation
    /// `net.beta.kubernetes.io/network-policy: {"ingress":{"isolation":"DefaultDeny"}}` on
    /// every node (upstream removed it; off by default).
    #[arg(long)]
    legacy_namespace_isolation: bool,
    #[command(subcommand)]
    cmd: Option<ServerCmd>,
}

#[derive(Subcommand)]
enum ServerCmd {
    /// Offline snapshots of the embedded store (stop the server first).
    Snapshot {
        #[command(subcommand)]
        op: SnapshotOp,
    },
}

#[derive(Subcommand)]
enum SnapshotOp {
    /// Write a consistent copy of the store to FILE.
    Save { file: PathBuf },
    /// Replace the store with FILE.
    Restore { file: PathBuf },
}

pub fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    // Flags that do not fit together stop the server before it makes anything.
    let (network, services) = moat_podnet::conf::check_cidrs(
        &args.cluster_cidr,
        &args.service_cidr,
        args.node_cidr_mask_size,
    )?;
    let backend: moat_podnet::Backend = args.flannel_backend.parse()?;
    if let Some(dns) = args.agent_args.cluster_dns
        && !services.contains(&dns)
    {
        anyhow::bail!("--cluster-dns {dns} is outside the service CIDR {services}");
    }
    let net_conf = moat_podnet::NetConf::new(network, backend);
    let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
    let db = args.data_dir.join("db");
    match args.cmd {
        Some(ServerCmd::Snapshot {
            op: SnapshotOp::Save { file },
        }) => {
            rt.block_on(moat_apiserver::snapshot::save(&db, &file))?;
            println!("snapshot saved to {}", file.display());
        }
        Some(ServerCmd::Snapshot {
            op: SnapshotOp::Restore { file },
        }) => {
            moat_apiserver::snapshot::restore(&file, &db)?;
            println!("store restored from {}", file.display());
        }
        None => {
            let (tx, rx) = tokio::sync::oneshot::channel::<String>();
            let kubeconfig = args.data_dir.join("kubeconfig.yaml");
            let stop = moat_agent::Stop::new();
            let agent_ended = if !args.disable_agent {
                Some(crate::agent::spawn(
                    (*args.agent_args).clone(),
                    kubeconfig.clone(),
                    stop.clone(),
                )?)
            } else {
                None
            };
            // On SIGTERM: the agent finishes its pass and stops (its pods keep running), then
            // the API server stops; the scheduler and controllers end with the process.
            let (term_tx, term_rx) = tokio::sync::oneshot::channel::<()>();
            crate::shutdown::on_signal(move || {
                stop.stop();
                let _ = term_tx.send(());
            })?;
            let terminated = async move {
                if term_rx.await.is_err() {
                    return std::future::pending().await;
                }
                if let Some(ended) = agent_ended {
                    let waited = tokio::task::spawn_blocking(move || {
                        ended.recv_timeout(std::time::Duration::from_secs(30))
                    })
                    .await;
                    if !matches!(waited, Ok(Ok(()))) {
                        tracing::warn!("the node agent did not stop within 30s");
                    }
                }
            };
            let nodes_cfg = moat_manager::NodeLifecycleConfig {
                grace_secs: args.node_monitor_grace_period.as_secs() as i64,
                default_toleration_secs: args.default_toleration_seconds,
                cluster_cidr: network,
                node_prefix: args.node_cidr_mask_size,
            };
            if !args.disable_controllers {
                // The scheduler and controllers are API clients of this server, started once
                // it listens (they could as well run elsewhere with the same kubeconfig).
                rt.spawn(async move {
                    if rx.await.is_ok()
                        && let Err(e) = moat_manager::spawn_with(&kubeconfig, nodes_cfg)
                    {
                        tracing::error!(error = %e, "starting the scheduler and controllers");
                    }
                });
            }
            let serve = moat_apiserver::serve(
                moat_apiserver::Config {
                    listen: args.listen,
                    data_dir: args.data_dir,
                    datastore_endpoint: args.datastore_endpoint,
                    untrusted_runtime_class: args.untrusted_runtime_class,
                    service_cidr: args.service_cidr,
                    compaction_interval: Some(args.compaction_interval).filter(|d| !d.is_zero()),
                    max_watch_seconds: args.max_watch_seconds,
                    net_conf: Some(net_conf.to_json().to_string()),
                    cluster_dns: args.agent_args.cluster_dns,
                    legacy_namespace_isolation: args.legacy_namespace_isolation,
                },
                Some(tx),
            );
            rt.block_on(async {
                tokio::select! {
                    r = serve => r,
                    () = terminated => Ok(()),
                }
            })?;
            // Open connections (watches) are cut; the store closes as the last tasks end.
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
            tracing::info!("moat server stopped");
        }
    }
    Ok(ExitCode::SUCCESS)
}

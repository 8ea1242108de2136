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
    let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
    let db = args.data_dir.join("db");
    match args.cmd {
        Some(ServerCmd::Snapshot {
            op: SnapshotOp::Save { file },
        }) => {
            rt.block_on(async {
                let s = moat_store::EmbeddedStore::open(&db)
                    .context("opening the store (is a server still running?)")?;
                s.snapshot_save(&file).await.context("saving the snapshot")
            })?;
            println!("snapshot saved to {}", file.display());
        }
        Some(ServerCmd::Snapshot {
            op: SnapshotOp::Restore { file },
        }) => {
            moat_store::EmbeddedStore::snapshot_restore(&file, &db)
                .context("restoring the snapshot")?;
            println!("store restored from {}", file.display());
        }
        None => {
            let (tx, rx) = tokio::sync::oneshot::channel::<String>();
            let kubeconfig = args.data_dir.join("kubeconfig.yaml");
            if !args.disable_controllers {
                // The scheduler and controllers are API clients of this server, started once
                // it listens (they could as well run elsewhere with the same kubeconfig).
                rt.spawn(async move {
                    if rx.await.is_ok()
                        && let Err(e) = moat_manager::spawn(&kubeconfig)
                    {
                        tracing::error!(error = %e, "starting the scheduler and controllers");
                    }
                });
            }
            rt.block_on(moat_apiserver::serve(
                moat_apiserver::Config {
                    listen: args.listen,
                    data_dir: args.data_dir,
                    datastore_endpoint: args.datastore_endpoint,
                    untrusted_runtime_class: args.untrusted_runtime_class,
                    service_cidr: args.service_cidr,
                },
                Some(tx),
            ))?
        }
    }
    Ok(ExitCode::SUCCESS)
}

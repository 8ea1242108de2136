//! `moat netpol`: probe policies in a lab, explain a verdict.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use moat_netlab::manifest::{Objects, lab_pods, parse_probes, render_table, truth_table};
use moat_netlab::{Lab, ProbeOpts, cleanup_prefix, unique_prefix};
use moat_netpol::explain::{explain, find_pod};
use moat_netpol::{Engine, Options};

#[derive(clap::Args)]
pub struct NetpolArgs {
    #[command(subcommand)]
    cmd: NetpolCmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum NetpolCmd {
    /// Build the pods of the manifests as network namespaces, apply the compiled policies,
    /// probe every pod pair and print the truth table. Needs root; touches nothing outside
    /// the namespaces it creates and removes.
    Lab {
        /// Manifest files (Namespaces, Pods, NetworkPolicies; `-` for stdin).
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
        /// Ports to probe.
        #[arg(long, default_value = "80/TCP,81/TCP,80/UDP,81/UDP")]
        probe: String,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
        /// Honour the 2016-era `net.beta.kubernetes.io/network-policy` DefaultDeny annotation.
        #[arg(long)]
        legacy_namespace_isolation: bool,
        /// Per-attempt probe timeout (a deny is declared after two timeouts).
        #[arg(long, default_value_t = 250)]
        timeout_ms: u64,
    },
    /// Say which policies isolate each side of a connection and which rule allows it: of
    /// the manifests given with -f, or else of the running cluster (read through the API).
    Explain {
        /// Manifest files; without them the live cluster's Pods, Namespaces and
        /// NetworkPolicies are read.
        #[arg(short = 'f', long = "filename")]
        files: Vec<String>,
        /// The cluster to read when no manifests are given.
        #[arg(
            long,
            env = "KUBECONFIG",
            default_value = "/var/lib/moat/kubeconfig.yaml"
        )]
        kubeconfig: std::path::PathBuf,
        /// Source pod, `ns/name`.
        #[arg(long)]
        from: String,
        /// Destination pod, `ns/name`.
        #[arg(long)]
        to: String,
        /// `PORT/PROTO`, e.g. 80/TCP.
        #[arg(long)]
        port: String,
        #[arg(long)]
        legacy_namespace_isolation: bool,
    },
}

fn load(files: &[String]) -> anyhow::Result<Objects> {
    let mut o = Objects::default();
    for f in files {
        let text = if f == "-" {
            std::io::read_to_string(std::io::stdin()).context("reading stdin")?
        } else {
            std::fs::read_to_string(f).with_context(|| format!("reading {f}"))?
        };
        o.add_yaml(f, &text)?;
    }
    o.finish()?;
    Ok(o)
}

pub fn run(args: NetpolArgs) -> anyhow::Result<ExitCode> {
    match args.cmd {
        NetpolCmd::Lab {
            files,
            probe,
            output,
            legacy_namespace_isolation,
            timeout_ms,
        } => {
            let probes = parse_probes(&probe)?;
            let objs = load(&files)?;
            let opts = Options {
                legacy_namespace_isolation,
                node_addrs: vec![moat_netlab::LAB_GATEWAY],
                ..Default::default()
            };
            let snap = objs.snapshot(&opts)?;
            if !nix::unistd::geteuid().is_root() {
                bail!(
                    "moat netpol lab needs root (it creates network namespaces and nftables rules)"
                );
            }
            let prefix = unique_prefix("l");
            let on_signal = prefix.clone();
            ctrlc::set_handler(move || {
                cleanup_prefix(&on_signal);
                std::process::exit(130);
            })
            .context("installing the Ctrl-C handler")?;
            let lab = Lab::create(&prefix, &lab_pods(&snap, &probes))?;
            Engine::new(lab.nft()).sync(&snap)?;
            let table = truth_table(
                &lab,
                &probes,
                ProbeOpts {
                    timeout: std::time::Duration::from_millis(timeout_ms),
                    attempts: 2,
                },
            )?;
            drop(lab);
            match output {
                Output::Table => print!("{}", render_table(&table)),
                Output::Json => {
                    for v in &table {
                        println!("{}", serde_json::to_string(v)?);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        NetpolCmd::Explain {
            files,
            from,
            to,
            port,
            kubeconfig,
            legacy_namespace_isolation,
        } => {
            let (snap, source) = if files.is_empty() {
                (
                    live_snapshot(&kubeconfig, legacy_namespace_isolation)?,
                    "the cluster",
                )
            } else {
                let objs = load(&files)?;
                let snap = objs.snapshot(&Options {
                    legacy_namespace_isolation,
                    ..Default::default()
                })?;
                (snap, "the manifests")
            };
            let [(n, proto)] = parse_probes(&port)?[..] else {
                bail!("--port takes one PORT/PROTO, e.g. 80/TCP");
            };
            let a = find_pod(&snap, &from)
                .with_context(|| format!("no pod {from} with an IP in {source}"))?;
            let b = find_pod(&snap, &to)
                .with_context(|| format!("no pod {to} with an IP in {source}"))?;
            let e = explain(&snap, a, b, n, proto);
            print!("{}", e.render(&from, &to, n, proto, b.ip));
            Ok(if e.allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// The cluster as every node's engine sees it: all Pods, Namespaces and NetworkPolicies, and
/// the server's published settings (`kube-system/moat-network-policy`) unless the flag asks
/// for the legacy annotation anyway.
fn live_snapshot(
    kubeconfig: &std::path::Path,
    legacy_flag: bool,
) -> anyhow::Result<moat_netpol::Snapshot> {
    let client = moat_client::Client::from_kubeconfig(kubeconfig)
        .with_context(|| format!("connecting with {}", kubeconfig.display()))?;
    fn items<T: serde::de::DeserializeOwned>(
        c: &moat_client::Client,
        path: &str,
    ) -> anyhow::Result<Vec<T>> {
        let (items, _) = c.list(path).with_context(|| format!("listing {path}"))?;
        items
            .into_iter()
            .map(|v| serde_json::from_value(v).with_context(|| format!("decoding {path}")))
            .collect()
    }
    let namespaces = items(&client, "/api/v1/namespaces")?;
    let pods = items(&client, "/api/v1/pods")?;
    let policies = items(&client, "/apis/networking.k8s.io/v1/networkpolicies")?;
    let published =
        match client.get("/api/v1/namespaces/kube-system/configmaps/moat-network-policy") {
            Ok(cm) => cm["data"]["legacyNamespaceIsolation"] == "true",
            Err(e) if e.code() == Some(404) => false,
            Err(e) => return Err(e).context("reading kube-system/moat-network-policy"),
        };
    let opts = Options {
        legacy_namespace_isolation: legacy_flag || published,
        ..Default::default()
    };
    moat_netpol::Snapshot::build(&namespaces, &pods, &policies, &opts)
        .map_err(moat_netpol::SyncError::Invalid)
        .context("the cluster's NetworkPolicies do not compile")
}

//! `moat agent`: the node agent (kubelet + container runtime layer) as an API client.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

/// How `moat agent` reaches the API server.
#[derive(clap::Args, Clone)]
pub struct JoinArgs {
    /// Kubeconfig of the API server to join (server URL, CA, token); not read with --server.
    #[arg(long, default_value = "/var/lib/moat/kubeconfig.yaml")]
    pub kubeconfig: PathBuf,
    /// The API server to join, `https://HOST:PORT`, instead of a kubeconfig file.
    #[arg(long)]
    pub server: Option<String>,
    /// Bearer token for --server (the server's is in its data dir's `token` file).
    #[arg(long, env = "MOAT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the --server token from this file instead.
    #[arg(long, conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) the --server's certificate must chain to.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Do not verify the --server's certificate (the token goes to whoever answers).
    #[arg(long, conflicts_with = "ca_file")]
    pub insecure_skip_tls_verify: bool,
}

impl JoinArgs {
    pub fn join(&self) -> anyhow::Result<moat_agent::agent::Join> {
        let Some(server) = &self.server else {
            if self.token.is_some()
                || self.token_file.is_some()
                || self.ca_file.is_some()
                || self.insecure_skip_tls_verify
            {
                anyhow::bail!(
                    "--token, --token-file, --ca-file and --insecure-skip-tls-verify go with --server"
                );
            }
            return Ok(moat_agent::agent::Join::Kubeconfig(self.kubeconfig.clone()));
        };
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => t.trim().to_string(),
            (None, Some(f)) => std::fs::read_to_string(f)
                .with_context(|| format!("reading the token file {}", f.display()))?
                .trim()
                .to_string(),
            (None, None) => anyhow::bail!("--server needs --token (or --token-file, MOAT_TOKEN)"),
        };
        let trust = match (&self.ca_file, self.insecure_skip_tls_verify) {
            (Some(f), _) => moat_client::ServerTrust::Ca(
                std::fs::read(f).with_context(|| format!("reading the CA file {}", f.display()))?,
            ),
            (None, true) => moat_client::ServerTrust::InsecureSkipVerify,
            (None, false) => anyhow::bail!(
                "--server needs --ca-file (the server's ca.crt) or --insecure-skip-tls-verify"
            ),
        };
        Ok(moat_agent::agent::Join::Server {
            url: server.clone(),
            token,
            trust,
        })
    }
}

#[derive(clap::Args, Clone)]
pub struct AgentArgs {
    /// Node name (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// Pod sandboxes, bundles, netns files and runtime state.
    #[arg(long, default_value = "/run/moat/agent")]
    pub run_dir: PathBuf,
    /// CRI-format container logs.
    #[arg(long, default_value = "/var/log/pods")]
    pub log_dir: PathBuf,
    /// Image store root (shared with `moat image`).
    #[arg(long, default_value = "/var/lib/moat/images", env = "MOAT_IMAGE_ROOT")]
    pub image_root: PathBuf,
    /// CNI config dir; its first conflist replaces the default bridge network if present.
    #[arg(long)]
    pub cni_conf_dir: Option<PathBuf>,
    /// CNI plugin directories.
    #[arg(long, default_value = "/usr/lib/cni")]
    pub cni_bin_dir: Vec<PathBuf>,
    /// Register the Node with this podCIDR instead of waiting for the server to assign one
    /// from its --cluster-cidr.
    #[arg(long)]
    pub pod_cidr: Option<String>,
    /// The cgroup under which the pods' cgroups are made (one per node when nodes share a
    /// host, as `moat cluster` nodes do).
    #[arg(long, default_value = "/moat")]
    pub cgroup_parent: String,
    /// Runtime handler TOML (handler → binary + root); defaults: runc, crun.
    #[arg(long)]
    pub runtime_config: Option<PathBuf>,
    /// The node's InternalIP (default: the first non-loopback IPv4 address).
    #[arg(long)]
    pub node_ip: Option<String>,
    /// The agent's HTTPS endpoint (logs, exec) the API server proxies to; `off` disables it.
    #[arg(long, default_value = "0.0.0.0:10250")]
    pub agent_listen: String,
    /// Rotate a running container's log once it reaches this size (a quantity: 10Mi, 500Ki).
    #[arg(long, default_value = "10Mi")]
    pub container_log_max_size: String,
    /// Log files kept per container, the current one included (at least 2).
    #[arg(long, default_value_t = 5)]
    pub container_log_max_files: usize,
    /// How often container log sizes are checked.
    #[arg(long, default_value = "10s", value_parser = moat_api::time::parse_duration)]
    pub container_log_monitor_interval: std::time::Duration,
    /// CPU capacity to report instead of the host's (a quantity: 2, 1500m), for nodes that
    /// share a host.
    #[arg(long)]
    pub node_cpu: Option<String>,
    /// Memory capacity to report instead of the host's (a quantity: 4Gi).
    #[arg(long)]
    pub node_memory: Option<String>,
    /// Cluster DNS address: pods' resolv.conf (dnsPolicy ClusterFirst) names it and the node
    /// answers it (the `dns` loop); k3s's default.
    #[arg(long, default_value = "10.43.0.10")]
    pub cluster_dns: Option<std::net::Ipv4Addr>,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// An agent loop not to run (pods, heartbeat, logrotate, podnet, proxy, dns, netpol); repeatable.
    #[arg(long = "disable-loop", value_parser = clap::builder::PossibleValuesParser::new(moat_agent::agent::LOOPS))]
    pub disable_loop: Vec<String>,
}

#[derive(clap::Args)]
pub struct AgentCmdArgs {
    #[command(flatten)]
    pub join: JoinArgs,
    #[command(flatten)]
    pub args: AgentArgs,
    #[command(subcommand)]
    cmd: Option<AgentCmd>,
}

#[derive(clap::Subcommand)]
enum AgentCmd {
    /// Report what this node can do: runtime handlers (and whether their runtime accepts
    /// this machine's cgroups), CNI plugins, nftables, /dev/kvm.
    Check,
    /// Per-container shim (started by the agent, not by hand).
    #[command(hide = true)]
    Shim {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

pub fn config(
    a: &AgentArgs,
    join: moat_agent::agent::Join,
) -> anyhow::Result<moat_agent::AgentConfig> {
    let node_name = match &a.node_name {
        Some(n) => n.clone(),
        None => nix::unistd::gethostname()
            .context("reading the host name")?
            .into_string()
            .map_err(|_| anyhow::anyhow!("host name is not UTF-8"))?
            .to_lowercase(),
    };
    let handlers = moat_agent::Handlers::load(a.runtime_config.as_deref(), &a.run_dir)
        .context("loading runtime handlers")?;
    let exe = std::env::current_exe().context("locating the moat binary for the shim")?;
    let max_size = moat_api::quantity::value(&a.container_log_max_size)
        .ok()
        .and_then(|b| u64::try_from(b).ok())
        .with_context(|| {
            format!(
                "--container-log-max-size {:?} is not a size like 10Mi",
                a.container_log_max_size
            )
        })?;
    let log_policy = moat_agent::logrotate::Policy::new(max_size, a.container_log_max_files)?;
    if a.container_log_monitor_interval.is_zero() {
        anyhow::bail!("--container-log-monitor-interval must be more than 0");
    }
    Ok(moat_agent::AgentConfig {
        node_name,
        join,
        run_dir: a.run_dir.clone(),
        log_dir: a.log_dir.clone(),
        image_root: a.image_root.clone(),
        cni_conf_dir: a.cni_conf_dir.clone(),
        cni_bin_dirs: a.cni_bin_dir.clone(),
        pod_cidr: a.pod_cidr.clone(),
        cgroup_parent: a.cgroup_parent.clone(),
        handlers,
        shim: vec![exe.display().to_string(), "agent".into(), "shim".into()],
        node_ip: a.node_ip.clone(),
        listen: match a.agent_listen.as_str() {
            "off" => None,
            l => Some(
                l.parse()
                    .with_context(|| format!("--agent-listen {l:?} is not host:port"))?,
            ),
        },
        log_policy,
        log_monitor_interval: a.container_log_monitor_interval,
        node_cpu_millis: a
            .node_cpu
            .as_deref()
            .map(|q| {
                moat_api::quantity::milli_value(q)
                    .ok()
                    .filter(|m| *m > 0)
                    .with_context(|| {
                        format!("--node-cpu {q:?} is not a CPU quantity like 2 or 1500m")
                    })
            })
            .transpose()?,
        node_memory_bytes: a
            .node_memory
            .as_deref()
            .map(|q| {
                moat_api::quantity::value(q)
                    .ok()
                    .filter(|b| *b > 0)
                    .with_context(|| format!("--node-memory {q:?} is not a size like 4Gi"))
            })
            .transpose()?,
        cluster_dns: a.cluster_dns.map(|ip| moat_agent::hooks::ClusterDns {
            servers: vec![ip.to_string()],
            domain: a.cluster_domain.clone(),
        }),
        disabled_loops: a.disable_loop.iter().cloned().collect(),
        node_annotations: Default::default(),
    })
}

/// Starts the agent on a background thread (for `moat server`); it keeps trying to join
/// until the API server it belongs to answers, and ends when `stop` is asked. The receiver
/// hears when it has ended.
pub fn spawn(
    a: AgentArgs,
    kubeconfig: PathBuf,
    stop: moat_agent::Stop,
) -> anyhow::Result<std::sync::mpsc::Receiver<()>> {
    let cfg = config(&a, moat_agent::agent::Join::Kubeconfig(kubeconfig))?;
    let (done, ended) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("agent".into())
        .spawn(move || {
            let parts = || moat_agent::agent::real_parts(&cfg);
            while !stop.is_stopped() {
                match parts().and_then(|p| moat_agent::Agent::new(cfg.clone(), p)) {
                    Ok(agent) => agent.run(&stop),
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "node agent not started yet");
                        std::thread::sleep(std::time::Duration::from_millis(300));
                    }
                }
            }
            let _ = done.send(());
        })
        .context("starting the agent thread")?;
    Ok(ended)
}

/// `moat check` (also `moat agent check`).
#[derive(clap::Args)]
pub struct CheckArgs {
    /// Runtime handler TOML (handler → binary + root); defaults: runc, crun.
    #[arg(long)]
    pub runtime_config: Option<PathBuf>,
    /// The agent's run dir (handler roots default under it).
    #[arg(long, default_value = "/run/moat/agent")]
    pub run_dir: PathBuf,
    /// CNI plugin directories.
    #[arg(long, default_value = "/usr/lib/cni")]
    pub cni_bin_dir: Vec<PathBuf>,
}

/// Prints what this node can do, one `ok`/`NO` line per item.
pub fn check(a: CheckArgs) -> anyhow::Result<ExitCode> {
    let handlers = moat_agent::Handlers::load(a.runtime_config.as_deref(), &a.run_dir)
        .context("loading runtime handlers")?;
    for f in moat_agent::check::check(&handlers, &a.cni_bin_dir) {
        println!(
            "{:<3} {}: {}",
            if f.ok { "ok" } else { "NO" },
            f.what,
            f.detail
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run(a: AgentCmdArgs) -> anyhow::Result<ExitCode> {
    if let Some(AgentCmd::Shim { args }) = a.cmd {
        return Ok(ExitCode::from(
            u8::try_from(moat_agent::shim::main(&args)).unwrap_or(1),
        ));
    }
    if let Some(AgentCmd::Check) = a.cmd {
        return check(CheckArgs {
            runtime_config: a.args.runtime_config,
            run_dir: a.args.run_dir,
            cni_bin_dir: a.args.cni_bin_dir,
        });
    }
    let cfg = config(&a.args, a.join.join()?)?;
    let stop = moat_agent::Stop::new();
    let s = stop.clone();
    crate::shutdown::on_signal(move || s.stop())?;
    // Like the kubelet, keep trying to join until the server answers and gives the node its
    // podCIDR; every failure says why.
    let mut delay = std::time::Duration::from_millis(200);
    while !stop.is_stopped() {
        let started = moat_agent::agent::real_parts(&cfg)
            .and_then(|parts| moat_agent::Agent::new(cfg.clone(), parts));
        match started {
            Ok(agent) => {
                agent.run(&stop);
                break;
            }
            Err(e) if !e.is_transient() => {
                return Err(anyhow::Error::new(e).context("joining the cluster"));
            }
            Err(e) => {
                tracing::warn!(error = %format!("{:#}", anyhow::Error::new(e)), "node agent not started yet; retrying");
                stop.sleep(delay);
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

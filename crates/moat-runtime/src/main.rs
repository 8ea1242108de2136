//! `moat-runtime` command line: runc's commands and global flags; the logic lives in the
//! library (`commands`, `daemon`).

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use moat_runtime::commands::{self, Ctx, ExecArgs};
use moat_runtime::{config, features, kvm, state};
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "moat-runtime",
    version,
    about = "OCI runtime running sandboxes in microVMs"
)]
struct Cli {
    /// Directory for container state (runc's --root).
    #[arg(long, global = true, default_value = state::DEFAULT_ROOT)]
    root: PathBuf,
    /// Where errors are written besides stderr (podman/containerd read it).
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    #[arg(long = "log-format", global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[arg(long, global = true, default_value = config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Accepted for runc compatibility; cgroups are the guest's own.
    #[arg(long = "systemd-cgroup", global = true)]
    _systemd_cgroup: bool,
    #[arg(long, global = true, hide = true)]
    _debug: bool,
    #[arg(long, global = true, hide = true)]
    _rootless: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Probe the host for KVM (including a real guest boot under it) and print a verdict on
    /// the accelerator to use.
    Check {
        /// Skip the guest boot under KVM.
        #[arg(long = "no-boot")]
        no_boot: bool,
        /// How long a KVM guest may take to boot and power off.
        #[arg(long, default_value_t = 20)]
        boot_timeout: u64,
    },
    /// Boot the guest to its agent and power off at once; print milliseconds per boot.
    #[command(name = "bare-boot")]
    BareBoot {
        #[arg(long, default_value = "tcg")]
        accel: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Print the configuration and assets the runtime would use, as JSON.
    Env,
    /// Print the OCI features document.
    Features,
    /// Guest asset tools.
    #[command(subcommand)]
    Assets(AssetsCmd),
    /// Print the OCI state of a container.
    State { id: String },
    /// Create a container (boots the sandbox VM for a pod's first container).
    Create {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        #[arg(long = "console-socket")]
        console_socket: Option<PathBuf>,
        #[arg(long = "no-pivot", hide = true)]
        _no_pivot: bool,
        #[arg(long = "no-new-keyring", hide = true)]
        _no_new_keyring: bool,
        #[arg(long = "preserve-fds", hide = true, default_value_t = 0)]
        _preserve_fds: u32,
        id: String,
    },
    /// Run the user process of a created container.
    Start { id: String },
    /// Send a signal (default TERM) to the container.
    Kill {
        #[arg(short, long)]
        all: bool,
        id: String,
        #[arg(default_value = "TERM")]
        signal: String,
    },
    /// Delete a container (and its VM with the last one).
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Run another process in a running container.
    Exec {
        #[arg(short, long)]
        process: Option<PathBuf>,
        #[arg(short, long)]
        detach: bool,
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        #[arg(short, long)]
        tty: bool,
        #[arg(long = "console-socket")]
        console_socket: Option<PathBuf>,
        #[arg(long)]
        cwd: Option<String>,
        #[arg(short, long)]
        env: Vec<String>,
        #[arg(long = "preserve-fds", hide = true, default_value_t = 0)]
        _preserve_fds: u32,
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Processes of a container (guest pids).
    Ps {
        #[arg(short, long, default_value = "table")]
        format: String,
        id: String,
    },
    /// A shell in the VM of a running container, outside the container (debug_console = true).
    #[command(name = "debug-console")]
    DebugConsole { id: String },
    /// (internal) The per-sandbox daemon owning the VM.
    #[command(hide = true)]
    Daemon {
        #[arg(long)]
        bundle: PathBuf,
        sandbox: String,
    },
    /// (internal) Stands for one container process: exits with its status.
    #[command(hide = true)]
    Shim {
        #[arg(long)]
        sandbox: String,
        #[arg(long)]
        exec: Option<String>,
        id: String,
    },
    /// List containers.
    List {
        #[arg(short, long, default_value = "table")]
        format: String,
        #[arg(short, long)]
        quiet: bool,
    },
}

#[derive(Subcommand)]
enum AssetsCmd {
    /// Write the uncompressed vmlinux found inside a bzImage (vmlinuz).
    ExtractVmlinux { vmlinuz: PathBuf, out: PathBuf },
    /// Build our guest kernel from Debian's linux-source package and a config fragment, or
    /// find it in the cache; prints the vmlinux path.
    Kernel {
        /// The reviewed config fragment (crates/moat-runtime/kernel/guest.config).
        #[arg(long)]
        fragment: PathBuf,
        #[arg(long, default_value = moat_runtime::kernel::SOURCE_TARBALL)]
        source: PathBuf,
        /// Where built kernels are kept, by the hash of fragment and source version.
        #[arg(long, default_value = moat_runtime::kernel::DEFAULT_CACHE)]
        cache: PathBuf,
        #[arg(long, default_value_t = 2)]
        jobs: u32,
    },
    /// Build vmlinux + initramfs.cpio from Debian's linux-image package, and with --kernel
    /// our kernel's vmlinux-moat + initramfs-moat.cpio (idempotent).
    Build {
        #[arg(long)]
        out: Option<PathBuf>,
        /// The static guest agent to install as /init.
        #[arg(long)]
        agent: PathBuf,
        /// A static shell (e.g. /bin/busybox from busybox-static) for the debug console's
        /// initramfs (`initramfs-debug.cpio`).
        #[arg(long = "debug-shell")]
        debug_shell: Option<PathBuf>,
        /// Our kernel's vmlinux (from `assets kernel`).
        #[arg(long)]
        kernel: Option<PathBuf>,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(&cli) {
        let msg = format!("{e:#}");
        eprintln!("moat-runtime: {msg}");
        if let Some(path) = &cli.log {
            write_log(path, cli.log_format, &msg);
        }
        std::process::exit(1);
    }
}

fn write_log(path: &PathBuf, fmt: LogFormat, msg: &str) {
    let line = match fmt {
        LogFormat::Json => serde_json::json!({"level": "error", "msg": msg}).to_string(),
        LogFormat::Text => format!("level=error msg={msg:?}"),
    };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let store = state::StateStore::new(&cli.root);
    let ctx = Ctx {
        root: cli.root.clone(),
        config: cli.config.clone(),
    };
    match &cli.cmd {
        Cmd::Create {
            bundle,
            pid_file,
            console_socket,
            id,
            ..
        } => commands::create(
            &ctx,
            id,
            bundle,
            pid_file.as_deref(),
            console_socket.as_deref(),
        )
        .with_context(|| format!("create {id}"))?,
        Cmd::Start { id } => commands::start(&ctx, id).with_context(|| format!("start {id}"))?,
        Cmd::Kill { all, id, signal } => {
            commands::kill(&ctx, id, signal, *all).with_context(|| format!("kill {id}"))?
        }
        Cmd::Delete { force, id } => {
            commands::delete(&ctx, id, *force).with_context(|| format!("delete {id}"))?
        }
        Cmd::Exec {
            process,
            detach,
            pid_file,
            tty,
            console_socket,
            cwd,
            env,
            id,
            args,
            ..
        } => {
            let code = commands::exec(
                &ctx,
                id,
                &ExecArgs {
                    process: process.as_deref(),
                    args,
                    tty: *tty,
                    cwd: cwd.as_deref(),
                    env,
                    detach: *detach,
                    pid_file: pid_file.as_deref(),
                    console_socket: console_socket.as_deref(),
                },
            )
            .with_context(|| format!("exec in {id}"))?;
            std::process::exit(code);
        }
        Cmd::Ps { format, id } => {
            let ps = commands::ps(&ctx, id).with_context(|| format!("ps {id}"))?;
            if format == "json" {
                let pids: Vec<i32> = ps.iter().map(|(p, _)| *p).collect();
                println!("{}", serde_json::to_string(&pids)?);
            } else {
                println!("PID\tCMD");
                for (p, c) in ps {
                    println!("{p}\t{c}");
                }
            }
        }
        Cmd::DebugConsole { id } => {
            let code = commands::debug_console(&ctx, id)
                .with_context(|| format!("debug console of {id}"))?;
            std::process::exit(code);
        }
        Cmd::Daemon { bundle, sandbox } => moat_runtime::daemon::run(
            &cli.root,
            &cli.config,
            sandbox,
            bundle,
            commands::ready_fd(),
        ),
        Cmd::Shim { sandbox, exec, id } => {
            let code = commands::wait(&ctx, sandbox, id, exec.as_deref()).unwrap_or(255);
            std::process::exit(code);
        }
        Cmd::Check {
            no_boot,
            boot_timeout,
        } => {
            let cfg = config::Config::load(&cli.config)?;
            let mut p = kvm::probe_host();
            if !no_boot && p.kvm_create_vm.is_ok() {
                let booted = moat_runtime::probe::bare_boot(
                    &cfg,
                    "kvm",
                    std::time::Duration::from_secs(*boot_timeout),
                )
                .context("booting a guest under KVM")?;
                p.guest_boot = Some(booted.is_some());
                std::fs::create_dir_all(&cli.root).ok();
                std::fs::write(
                    moat_runtime::probe::cache_path(&cli.root),
                    if booted.is_some() { "ok" } else { "failed" },
                )
                .context("recording the KVM boot probe")?;
            }
            let v = kvm::verdict(&p, cfg.hypervisor.accel);
            println!(
                "cpu virtualization flag: {}",
                p.cpu_virt_flag.as_deref().unwrap_or("none")
            );
            println!("/dev/kvm: {}", show(&p.dev_kvm.map(|_| "ok")));
            println!("KVM_GET_API_VERSION: {}", show(&p.kvm_api_version));
            println!("KVM_CREATE_VM: {}", show(&p.kvm_create_vm.map(|_| "ok")));
            println!(
                "guest boot under KVM: {}",
                match p.guest_boot {
                    Some(true) => "ok",
                    Some(false) =>
                        "failed (the guest did not power off in time: it hangs under KVM here)",
                    None => "not probed",
                }
            );
            println!("verdict: {} ({})", v.accel, v.reason);
            let (k, i) = (cfg.assets.kernel_path(), cfg.assets.initramfs_path(false));
            println!(
                "guest kernel: {} ({}{})",
                cfg.assets.kernel.as_str(),
                k.display(),
                if k.is_file() && i.is_file() {
                    String::new()
                } else {
                    format!(
                        "; missing, with {}: run scripts/guest-assets.sh",
                        i.display()
                    )
                }
            );
        }
        Cmd::Env => {
            let cfg = config::Config::load(&cli.config)?;
            let p = kvm::probe_with_cache(&cli.root);
            let v = kvm::verdict(&p, cfg.hypervisor.accel);
            let out = serde_json::json!({
                "configPath": cli.config,
                "root": cli.root,
                "config": cfg,
                "kernelCmdline": cfg.kernel_cmdline(),
                // Which guest kernel sandboxes boot: "moat" (ours) or "debian".
                "kernelKind": cfg.assets.kernel.as_str(),
                "kernel": cfg.assets.kernel_path(),
                "initramfs": cfg.assets.initramfs_path(cfg.hypervisor.debug_console),
                "accel": v,
                "probe": p,
                // The VM factory's template, if one has been built under this root.
                "template": cfg.factory.template.then(|| {
                    let d = moat_runtime::template::dir(&cli.root);
                    serde_json::json!({"dir": d, "built": d.join("state").is_file()})
                }),
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Cmd::Assets(AssetsCmd::ExtractVmlinux { vmlinuz, out }) => {
            let img =
                std::fs::read(vmlinuz).with_context(|| format!("reading {}", vmlinuz.display()))?;
            let elf = moat_runtime::vmlinux::extract_vmlinux(&img)
                .with_context(|| format!("extracting vmlinux from {}", vmlinuz.display()))?;
            std::fs::write(out, &elf).with_context(|| format!("writing {}", out.display()))?;
            println!("{} ({} bytes)", out.display(), elf.len());
        }
        Cmd::Assets(AssetsCmd::Kernel {
            fragment,
            source,
            cache,
            jobs,
        }) => {
            let version = moat_runtime::kernel::source_version()?;
            let built = moat_runtime::kernel::build(&moat_runtime::kernel::KernelBuild {
                fragment,
                source_tarball: source,
                source_version: &version,
                cache,
                jobs: *jobs,
            })?;
            // stdout is the path alone, for scripts; the rest goes to stderr.
            println!("{}", built.vmlinux.display());
            eprintln!(
                "guest kernel ({} {version}): {}{}",
                moat_runtime::kernel::SOURCE_PACKAGE,
                if built.compiled { "built" } else { "cached" },
                built
                    .build_seconds
                    .map(|s| format!(", cold build {s:.0} s"))
                    .unwrap_or_default()
            );
        }
        Cmd::Assets(AssetsCmd::Build {
            out,
            agent,
            debug_shell,
            kernel,
        }) => {
            let cfg = config::Config::load(&cli.config)?;
            let out = out.clone().unwrap_or(cfg.assets.dir);
            let rebuilt =
                moat_runtime::assets::build(&out, agent, debug_shell.as_deref(), kernel.as_deref())
                    .context("assets build")?;
            println!(
                "{}: {}",
                out.display(),
                if rebuilt { "built" } else { "up to date" }
            );
        }
        Cmd::BareBoot { accel, count } => {
            let cfg = config::Config::load(&cli.config)?;
            let accel: &'static str = match accel.as_str() {
                "kvm" => "kvm",
                "tcg" => "tcg",
                other => anyhow::bail!("--accel must be kvm or tcg, not {other:?}"),
            };
            let mut ms = Vec::new();
            for _ in 0..*count {
                let d =
                    moat_runtime::probe::bare_boot(&cfg, accel, std::time::Duration::from_secs(60))
                        .context("bare boot")?
                        .ok_or_else(|| {
                            anyhow::anyhow!("the guest did not power off within 60 s")
                        })?;
                ms.push(d.as_millis() as u64);
            }
            println!("{}", serde_json::json!({"accel": accel, "ms": ms}));
        }
        Cmd::Features => println!("{}", serde_json::to_string_pretty(&features::features())?),
        Cmd::State { id } => {
            let st = ctx.state(id).with_context(|| format!("state of {id}"))?;
            println!("{}", serde_json::to_string_pretty(&st)?);
        }
        Cmd::List { format, quiet } => {
            let all: Vec<state::State> = store
                .list()
                .context("listing containers")?
                .into_iter()
                .map(|s| ctx.state(&s.id).unwrap_or(s))
                .collect();
            if *quiet {
                for s in &all {
                    println!("{}", s.id);
                }
            } else if format == "json" {
                println!("{}", serde_json::to_string(&all)?);
            } else {
                println!("ID\tPID\tSTATUS\tBUNDLE");
                for s in &all {
                    let status = serde_json::to_value(s.status)?;
                    println!(
                        "{}\t{}\t{}\t{}",
                        s.id,
                        s.pid.unwrap_or(0),
                        status.as_str().unwrap_or(""),
                        s.bundle.display()
                    );
                }
            }
        }
    }
    Ok(())
}

fn show<T: std::fmt::Display, E: std::fmt::Display>(r: &Result<T, E>) -> String {
    match r {
        Ok(v) => v.to_string(),
        Err(e) => format!("error: {e}"),
    }
}

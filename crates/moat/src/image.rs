//! `moat image`: the node's image store (import, pull, list, remove).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

#[derive(clap::Args)]
pub struct ImageArgs {
    /// Image store root.
    #[arg(
        long,
        global = true,
        default_value = "/var/lib/moat/images",
        env = "MOAT_IMAGE_ROOT"
    )]
    root: PathBuf,
    #[command(subcommand)]
    cmd: ImageCmd,
}

#[derive(clap::Subcommand)]
enum ImageCmd {
    /// Import an oci-archive or docker-archive tar, or an oci-layout directory.
    Import {
        path: PathBuf,
        /// Reference to record it under (default: from the archive).
        #[arg(long)]
        name: Option<String>,
    },
    /// Pull from an OCI distribution registry (linux/amd64).
    Pull {
        image: String,
        #[command(flatten)]
        auth: AuthArgs,
    },
    /// Push a stored image to a registry.
    Push {
        image: String,
        /// Destination reference (default: the image's own name).
        dest: Option<String>,
        #[command(flatten)]
        auth: AuthArgs,
    },
    /// List images: REPOSITORY TAG DIGEST SIZE.
    Ls,
    /// Remove an image reference; unreferenced blobs and layers are garbage-collected.
    Rm { image: String },
}

#[derive(clap::Args)]
struct AuthArgs {
    /// Registry user name (basic auth, or the token endpoint's credentials).
    #[arg(long, env = "MOAT_REGISTRY_USER")]
    username: Option<String>,
    /// Registry password; prefer the environment variable over the command line.
    #[arg(long, env = "MOAT_REGISTRY_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

impl AuthArgs {
    fn client(self) -> moat_image::registry::Client {
        let creds = self
            .username
            .map(|username| moat_image::registry::Credentials {
                username,
                password: self.password.unwrap_or_default(),
            });
        moat_image::registry::Client::new(creds)
    }
}

pub fn run(args: ImageArgs) -> anyhow::Result<ExitCode> {
    let store = moat_image::Store::open(&args.root)
        .with_context(|| format!("opening image store {}", args.root.display()))?;
    match args.cmd {
        ImageCmd::Import { path, name } => {
            let rec = store
                .import(&path, name.as_deref())
                .with_context(|| format!("importing {}", path.display()))?;
            println!("{} {}", rec.name, rec.manifest);
        }
        ImageCmd::Pull { image, auth } => {
            use std::io::IsTerminal;
            let r = moat_image::Reference::parse(&image)?;
            let tty = std::io::stderr().is_terminal();
            let mut progress = |d: &moat_image::Digest, n: u64, total: u64| {
                if tty {
                    eprint!("\r{}: {} / {}   ", &d.hex()[..12], human(n), human(total));
                    if n == total {
                        eprintln!();
                    }
                }
            };
            let rec = auth
                .client()
                .pull(&store, &r, &mut progress)
                .with_context(|| format!("pulling {r}"))?;
            println!("{} {}", rec.name, rec.manifest);
        }
        ImageCmd::Push { image, dest, auth } => {
            let rec = store
                .get(&image)?
                .with_context(|| format!("image {image} not found in the store"))?;
            let dest = moat_image::Reference::parse(dest.as_deref().unwrap_or(&rec.name))?;
            let d = auth
                .client()
                .push(&store, &image, &dest)
                .with_context(|| format!("pushing {image} to {dest}"))?;
            println!("{dest} {d}");
        }
        ImageCmd::Ls => {
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:<40} {:<12} {:<20} SIZE",
                "REPOSITORY", "TAG", "DIGEST"
            )?;
            for rec in store.list()? {
                let r = moat_image::Reference::parse(&rec.name)?;
                writeln!(
                    out,
                    "{:<40} {:<12} {:<20} {}",
                    r.name(),
                    r.tag.as_deref().unwrap_or("<none>"),
                    &rec.manifest.as_str()[..19],
                    human(rec.size)
                )?;
            }
        }
        ImageCmd::Rm { image } => {
            let rec = store
                .remove(&image)
                .with_context(|| format!("removing {image}"))?;
            println!("Untagged: {} {}", rec.name, rec.manifest);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn human(n: u64) -> String {
    const U: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < U.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n}B")
    } else {
        format!("{v:.2}{}", U[i])
    }
}

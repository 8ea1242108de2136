//! `moat certs`: credentials signed by the cluster CA in a server's data directory. Only
//! argument parsing here; the signing lives in `moat_apiserver::pki`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    cmd: CertsCmd,
}

#[derive(Subcommand)]
enum CertsCmd {
    /// A client certificate for a user (CN = NAME, O = each --group) and a kubeconfig using
    /// it; what the user may do is what RoleBindings grant NAME or its groups.
    User(UserArgs),
}

#[derive(Args)]
struct UserArgs {
    /// The user name (the certificate's CN).
    name: String,
    /// A group the user is in (the certificate's O); at most two.
    #[arg(long = "group")]
    groups: Vec<String>,
    /// Where `NAME.crt`, `NAME.key` and `NAME.kubeconfig` are written.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// The server's data directory (holding ca.crt, ca.key and the admin kubeconfig).
    #[arg(long, default_value = "/var/lib/moat")]
    data_dir: PathBuf,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = 365)]
    days: u32,
    /// The API server URL for the kubeconfig (default: the admin kubeconfig's).
    #[arg(long)]
    server: Option<String>,
}

pub fn run(args: CertsArgs) -> anyhow::Result<std::process::ExitCode> {
    match args.cmd {
        CertsCmd::User(a) => {
            let kc = moat_apiserver::pki::write_user_files(
                &a.data_dir,
                &a.out,
                &a.name,
                &a.groups,
                a.days,
                a.server.as_deref(),
            )?;
            println!("{}", kc.display());
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

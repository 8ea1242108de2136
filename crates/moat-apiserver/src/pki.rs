//! First-start credentials: a CA, a serving certificate signed by it, an admin bearer
//! token, and the admin kubeconfig (like k3s's k3s.yaml). Later starts reuse them.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rand::RngCore;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{step}: {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{step}")]
    Cert {
        step: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("{step}: {path} is not a valid PEM file")]
    Pem { step: &'static str, path: PathBuf },
}

pub struct Credentials {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub token: String,
}

fn read(path: &Path, step: &'static str) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        step,
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a private file (0600) durably: temp file, fsync, rename.
pub fn write_private(path: &Path, data: &[u8], step: &'static str) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        step,
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Loads the credentials from `dir`, creating any that are missing. `sans` are the names
/// and addresses the serving certificate must be valid for.
pub fn ensure(dir: &Path, sans: &[String]) -> Result<Credentials, PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        step: "creating the data directory",
        path: dir.to_path_buf(),
        source,
    })?;
    let (ca_crt, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let (srv_crt, srv_key) = (dir.join("server.crt"), dir.join("server.key"));
    let token_path = dir.join("token");
    if !(ca_crt.exists() && ca_key.exists() && srv_crt.exists() && srv_key.exists()) {
        let cert_err = |step| move |source| PkiError::Cert { step, source };
        let ca_kp = rcgen::KeyPair::generate().map_err(cert_err("generating the CA key"))?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())
            .map_err(cert_err("CA parameters"))?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "moat-ca");
        let ca = ca_params
            .self_signed(&ca_kp)
            .map_err(cert_err("signing the CA"))?;
        let kp = rcgen::KeyPair::generate().map_err(cert_err("generating the server key"))?;
        let mut params = rcgen::CertificateParams::new(sans.to_vec())
            .map_err(cert_err("server certificate names"))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "moat-apiserver");
        let issuer = rcgen::Issuer::new(ca_params, &ca_kp);
        let cert = params
            .signed_by(&kp, &issuer)
            .map_err(cert_err("signing the server certificate"))?;
        write_private(
            &ca_key,
            ca_kp.serialize_pem().as_bytes(),
            "writing the CA key",
        )?;
        write_private(&ca_crt, ca.pem().as_bytes(), "writing the CA certificate")?;
        write_private(
            &srv_key,
            kp.serialize_pem().as_bytes(),
            "writing the server key",
        )?;
        write_private(
            &srv_crt,
            cert.pem().as_bytes(),
            "writing the server certificate",
        )?;
    }
    if !token_path.exists() {
        let mut b = [0u8; 32];
        rand::rng().fill_bytes(&mut b);
        let t: String = b.iter().map(|x| format!("{x:02x}")).collect();
        write_private(&token_path, t.as_bytes(), "writing the admin token")?;
    }
    Ok(Credentials {
        ca_pem: read(&ca_crt, "reading the CA certificate")?,
        cert_pem: read(&srv_crt, "reading the server certificate")?,
        key_pem: read(&srv_key, "reading the server key")?,
        token: read(&token_path, "reading the admin token")?
            .trim()
            .to_string(),
    })
}

/// The admin kubeconfig text.
pub fn kubeconfig(server_url: &str, creds: &Credentials) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(creds.ca_pem.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: moat\n  cluster:\n    server: {server_url}\n    certificate-authority-data: {ca}\ncontexts:\n- name: moat\n  context:\n    cluster: moat\n    user: admin\ncurrent-context: moat\nusers:\n- name: admin\n  user:\n    token: {}\n",
        creds.token
    )
}

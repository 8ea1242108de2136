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

/// A user's client certificate and key (PEM), signed by the cluster CA.
pub struct UserCredentials {
    pub cert_pem: String,
    pub key_pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum UserCertError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("the user name must not be empty")]
    EmptyName,
    #[error(
        "at most two groups per certificate (the certificate library writes one value per \
         attribute type, and O is written once as itself and once as its OID); bind roles \
         to the user instead"
    )]
    TooManyGroups,
    #[error("{step}")]
    Cert {
        step: &'static str,
        #[source]
        source: rcgen::Error,
    },
}

/// Signs a client certificate for `name` in `groups` (CN = user, O = groups, as
/// kube-apiserver reads them) with the CA in `data_dir`, valid for `days`.
pub fn user_certificate(
    data_dir: &Path,
    name: &str,
    groups: &[String],
    days: u32,
) -> Result<UserCredentials, UserCertError> {
    if name.is_empty() {
        return Err(UserCertError::EmptyName);
    }
    if groups.len() > 2 {
        return Err(UserCertError::TooManyGroups);
    }
    let cert_err = |step| move |source| UserCertError::Cert { step, source };
    let ca_pem = read(&data_dir.join("ca.crt"), "reading the CA certificate")?;
    let ca_key_pem = read(&data_dir.join("ca.key"), "reading the CA key")?;
    let ca_key = rcgen::KeyPair::from_pem(&ca_key_pem).map_err(cert_err("parsing the CA key"))?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key)
        .map_err(cert_err("parsing the CA certificate"))?;
    let kp = rcgen::KeyPair::generate().map_err(cert_err("generating the user key"))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(cert_err("user certificate parameters"))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    for (i, g) in groups.iter().enumerate() {
        let ty = if i == 0 {
            rcgen::DnType::OrganizationName
        } else {
            // The same OID (2.5.4.10) under another key of rcgen's attribute map.
            rcgen::DnType::CustomDnType(vec![2, 5, 4, 10])
        };
        params.distinguished_name.push(ty, g.as_str());
    }
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    let now = chrono::Utc::now();
    let until = now + chrono::Duration::days(i64::from(days));
    let ymd = |d: chrono::DateTime<chrono::Utc>| {
        use chrono::Datelike;
        rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8)
    };
    params.not_before = ymd(now - chrono::Duration::days(1));
    params.not_after = ymd(until);
    let cert = params
        .signed_by(&kp, &issuer)
        .map_err(cert_err("signing the user certificate"))?;
    Ok(UserCredentials {
        cert_pem: cert.pem(),
        key_pem: kp.serialize_pem(),
    })
}

/// A kubeconfig for `user` authenticating with its client certificate.
pub fn user_kubeconfig(
    server_url: &str,
    ca_pem: &str,
    user: &str,
    creds: &UserCredentials,
) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: moat\n  cluster:\n    server: {server_url}\n    certificate-authority-data: {}\ncontexts:\n- name: {user}@moat\n  context:\n    cluster: moat\n    user: {user:?}\ncurrent-context: {user}@moat\nusers:\n- name: {user:?}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
        b64(ca_pem),
        b64(&creds.cert_pem),
        b64(&creds.key_pem),
    )
}

/// The server URL of the admin kubeconfig a server wrote into `data_dir`.
pub fn server_url(data_dir: &Path) -> Result<String, PkiError> {
    let path = data_dir.join("kubeconfig.yaml");
    let text = read(&path, "reading the admin kubeconfig")?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .map(|s| s.trim().to_string())
        .ok_or(PkiError::Pem {
            step: "finding the server URL in the admin kubeconfig",
            path,
        })
}

/// Writes `<out>/<name>.crt`, `<name>.key` and `<name>.kubeconfig` for a user; returns the
/// kubeconfig path.
pub fn write_user_files(
    data_dir: &Path,
    out: &Path,
    name: &str,
    groups: &[String],
    days: u32,
    server: Option<&str>,
) -> Result<PathBuf, UserCertError> {
    let creds = user_certificate(data_dir, name, groups, days)?;
    let url = match server {
        Some(s) => s.to_string(),
        None => server_url(data_dir)?,
    };
    let ca_pem = read(&data_dir.join("ca.crt"), "reading the CA certificate")?;
    std::fs::create_dir_all(out).map_err(|source| PkiError::Io {
        step: "creating the output directory",
        path: out.to_path_buf(),
        source,
    })?;
    let file = |ext: &str| out.join(format!("{}.{ext}", name.replace(['/', ':'], "_")));
    write_private(
        &file("crt"),
        creds.cert_pem.as_bytes(),
        "writing the user certificate",
    )?;
    write_private(
        &file("key"),
        creds.key_pem.as_bytes(),
        "writing the user key",
    )?;
    let kc = file("kubeconfig");
    write_private(
        &kc,
        user_kubeconfig(&url, &ca_pem, name, &creds).as_bytes(),
        "writing the user kubeconfig",
    )?;
    Ok(kc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn user_certificates_chain_to_the_ca_and_name_the_user() {
        let dir = tempfile::tempdir().unwrap();
        ensure(dir.path(), &["localhost".into()]).unwrap();
        let groups = vec!["devs".to_string(), "ops".to_string()];
        let c = user_certificate(dir.path(), "alice", &groups, 30).unwrap();
        let der = rustls::pki_types::CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).unwrap();
        let u = crate::authn::user_from_cert(&der).unwrap();
        assert_eq!(u.name, "alice");
        assert_eq!(u.groups, ["devs", "ops", "system:authenticated"]);
        let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ca = read(&dir.path().join("ca.crt"), "ca").unwrap();
        let ca_der = rustls::pki_types::CertificateDer::from_pem_slice(ca.as_bytes()).unwrap();
        let (_, ca_x) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        assert!(x.verify_signature(Some(ca_x.public_key())).is_ok());
        assert!(matches!(
            user_certificate(dir.path(), "bob", &["a".into(), "b".into(), "c".into()], 1),
            Err(UserCertError::TooManyGroups)
        ));
    }
}

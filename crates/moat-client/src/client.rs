//! The blocking HTTPS client: a handful of verbs on untyped JSON, over rustls with the
//! kubeconfig's CA and bearer token. Written here because the loops need few verbs; a full
//! client library would bring a large dependency tree and its own caching layer for no gain
//! at this size.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading the kubeconfig {0}")]
    Kubeconfig(String),
    #[error("API client for {0}")]
    Config(String),
    #[error("{method} {path}: {code} {reason}: {message}")]
    Api {
        method: &'static str,
        path: String,
        code: u16,
        reason: String,
        message: String,
    },
    #[error("{method} {path}: transport")]
    Transport {
        method: &'static str,
        path: String,
        #[source]
        source: Box<ureq::Transport>,
    },
    #[error("{method} {path}: reading the response")]
    Io {
        method: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl ClientError {
    pub fn code(&self) -> Option<u16> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// How a client trusts the API server's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerTrust {
    /// Only certificates issued by this CA (PEM, one or more certificates).
    Ca(Vec<u8>),
    /// Any certificate (kubectl's `--insecure-skip-tls-verify`): the connection is encrypted
    /// but the server is not authenticated, so the token goes to whoever answers.
    InsecureSkipVerify,
}

/// Accepts any server certificate; handshake signatures are still checked, so the peer must
/// hold the key of the certificate it shows.
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: String,
}

impl Client {
    pub fn from_kubeconfig(path: &Path) -> Result<Client, ClientError> {
        let bad = |m: &str| ClientError::Kubeconfig(format!("{}: {m}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| bad(&e.to_string()))?;
        let v: Value = serde_yaml::from_str(&text).map_err(|e| bad(&e.to_string()))?;
        let cluster = &v["clusters"][0]["cluster"];
        let base = cluster["server"]
            .as_str()
            .ok_or_else(|| bad("no clusters[0].cluster.server"))?
            .to_string();
        let ca_b64 = cluster["certificate-authority-data"]
            .as_str()
            .ok_or_else(|| bad("no certificate-authority-data"))?;
        let ca = base64::engine::general_purpose::STANDARD
            .decode(ca_b64)
            .map_err(|_| bad("bad certificate-authority-data"))?;
        let token = v["users"][0]["user"]["token"]
            .as_str()
            .ok_or_else(|| bad("no users[0].user.token"))?
            .to_string();
        Client::connect(&base, &token, ServerTrust::Ca(ca)).map_err(|e| match e {
            ClientError::Config(m) => bad(&m),
            e => e,
        })
    }

    /// A client for `server` (`https://host:port`) authenticating with `token`, trusting the
    /// server's certificate as `trust` says.
    pub fn connect(server: &str, token: &str, trust: ServerTrust) -> Result<Client, ClientError> {
        let bad = |m: &str| ClientError::Config(format!("{server}: {m}"));
        if !server.starts_with("https://") {
            return Err(bad("the server URL must start with https://"));
        }
        if token.is_empty() || token.contains(['\r', '\n']) {
            return Err(bad("the token must be one non-empty line"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(&e.to_string()))?;
        let tls = match trust {
            ServerTrust::Ca(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                use rustls::pki_types::pem::PemObject;
                for c in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
                    roots
                        .add(c.map_err(|_| bad("CA is not PEM"))?)
                        .map_err(|_| bad("CA not usable"))?;
                }
                if roots.is_empty() {
                    return Err(bad("the CA holds no certificate"));
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            ServerTrust::InsecureSkipVerify => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
                .with_no_client_auth(),
        };
        let agent = ureq::AgentBuilder::new()
            .user_agent("moat-controller-manager/v1.33")
            .tls_config(Arc::new(tls))
            .timeout_connect(Duration::from_secs(5))
            // ureq keeps one idle connection per host by default: with the scheduler's
            // concurrent binders every request but one paid a new TLS handshake.
            .max_idle_connections(64)
            .max_idle_connections_per_host(64)
            .build();
        Ok(Client {
            agent,
            base: server.trim_end_matches('/').to_string(),
            token: token.to_string(),
        })
    }

    /// The bearer token this client sends.
    pub fn token(&self) -> &str {
        &self.token
    }

    fn req(&self, method: &'static str, path: &str) -> ureq::Request {
        self.agent
            .request(method, &format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {}", self.token))
    }

    fn call(
        &self,
        method: &'static str,
        path: &str,
        ct: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let mut r = self.req(method, path).timeout(Duration::from_secs(30));
        if let Some(ct) = ct {
            r = r.set("Content-Type", ct);
        }
        let res = match body {
            Some(b) => r.send_string(&b.to_string()),
            None => r.call(),
        };
        match res {
            Ok(resp) => resp.into_json().map_err(|source| ClientError::Io {
                method,
                path: path.into(),
                source,
            }),
            Err(ureq::Error::Status(code, resp)) => {
                let v: Value = resp.into_json().unwrap_or_default();
                Err(ClientError::Api {
                    method,
                    path: path.into(),
                    code,
                    reason: v["reason"].as_str().unwrap_or("").into(),
                    message: v["message"].as_str().unwrap_or("").into(),
                })
            }
            Err(ureq::Error::Transport(t)) => Err(ClientError::Transport {
                method,
                path: path.into(),
                source: Box::new(t),
            }),
        }
    }

    pub fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call("GET", path, None, None)
    }

    /// Items of a list and the list's resourceVersion.
    pub fn list(&self, path: &str) -> Result<(Vec<Value>, String), ClientError> {
        let v = self.get(path)?;
        let rv = v["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("0")
            .to_string();
        Ok((v["items"].as_array().cloned().unwrap_or_default(), rv))
    }

    pub fn create(&self, path: &str, obj: &Value) -> Result<Value, ClientError> {
        self.call("POST", path, Some("application/json"), Some(obj))
    }

    pub fn merge_patch(&self, path: &str, patch: &Value) -> Result<Value, ClientError> {
        self.call(
            "PATCH",
            path,
            Some("application/merge-patch+json"),
            Some(patch),
        )
    }

    pub fn put(&self, path: &str, obj: &Value) -> Result<Value, ClientError> {
        self.call("PUT", path, Some("application/json"), Some(obj))
    }

    /// DELETE with a propagation policy (Background, Foreground or Orphan); a missing object
    /// is not an error.
    pub fn delete_with(&self, path: &str, propagation: &str) -> Result<(), ClientError> {
        let body = serde_json::json!({"kind": "DeleteOptions", "apiVersion": "v1",
            "propagationPolicy": propagation});
        match self.call("DELETE", path, Some("application/json"), Some(&body)) {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn delete(&self, path: &str) -> Result<(), ClientError> {
        match self.call("DELETE", path, None, None) {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Blocks reading watch events from `rv` ("0" = current state first), calling `f` for
    /// each; returns when the stream ends or fails.
    pub fn watch(
        &self,
        path: &str,
        rv: &str,
        mut f: impl FnMut(&Value),
    ) -> Result<(), ClientError> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let full = format!("{path}{sep}watch=true&resourceVersion={rv}&timeoutSeconds=300");
        let resp = match self.req("GET", &full).call() {
            Ok(r) => r,
            Err(ureq::Error::Status(code, _)) => {
                return Err(ClientError::Api {
                    method: "GET",
                    path: full,
                    code,
                    reason: String::new(),
                    message: "watch refused".into(),
                });
            }
            Err(ureq::Error::Transport(t)) => {
                return Err(ClientError::Transport {
                    method: "GET",
                    path: full,
                    source: Box::new(t),
                });
            }
        };
        for line in BufReader::new(resp.into_reader()).lines() {
            let line = line.map_err(|source| ClientError::Io {
                method: "GET",
                path: full.clone(),
                source,
            })?;
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                f(&v);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_refuses_what_cannot_be_a_secure_api_client() {
        let err = |server: &str, token: &str, trust: ServerTrust| {
            Client::connect(server, token, trust)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(
            err("http://10.0.0.1:6443", "t", ServerTrust::InsecureSkipVerify).contains("https://")
        );
        assert!(err("https://h:6443", "", ServerTrust::InsecureSkipVerify).contains("token"));
        assert!(err("https://h:6443", "a\nb", ServerTrust::InsecureSkipVerify).contains("token"));
        assert!(err("https://h:6443", "t", ServerTrust::Ca(b"not pem".to_vec())).contains("CA"));
        let c = Client::connect("https://h:6443/", "t", ServerTrust::InsecureSkipVerify)
            .expect("a client");
        assert_eq!((c.base.as_str(), c.token()), ("https://h:6443", "t"));
    }
}

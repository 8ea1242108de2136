//! OCI distribution client: pull into the store, push from it. Anonymous, basic and bearer
//! token auth (the WWW-Authenticate challenge decides which).

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Mutex;

use base64::Engine as _;

use crate::oci::{self, AnyManifest, Manifest};
use crate::reference::{DOCKER_HUB, Digest, Reference};
use crate::store::{ImageRecord, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{step}: HTTP {status} from {url}: {body}")]
    Status {
        step: &'static str,
        url: String,
        status: u16,
        body: String,
    },
    #[error("{step}: request to {url} failed")]
    Transport {
        step: &'static str,
        url: String,
        #[source]
        source: Box<ureq::Transport>,
    },
    #[error("{step}: reading response from {url}")]
    Body {
        step: &'static str,
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Protocol(String),
    #[error("manifest digest mismatch for {reference}: expected {expected}, got {actual}")]
    ManifestDigest {
        reference: String,
        expected: Digest,
        actual: Digest,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A parsed `WWW-Authenticate` challenge (sans-IO).
#[derive(Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer(BTreeMap<String, String>),
}

pub fn parse_challenge(h: &str) -> Option<Challenge> {
    let (scheme, rest) = h.trim().split_once(' ').unwrap_or((h.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = BTreeMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (k, after) = s.split_once('=')?;
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.insert(k, v.to_string());
        s = next.trim_start_matches([',', ' ']);
    }
    Some(Challenge::Bearer(params))
}

pub struct Credentials {
    pub username: String,
    pub password: String,
}

pub struct Client {
    agent: ureq::Agent,
    creds: Option<Credentials>,
    /// The Authorization header value that last worked; reused until a 401.
    auth: Mutex<Option<String>>,
}

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

const MAX_MANIFEST: u64 = 4 << 20;

/// Registries on loopback are spoken to over plain HTTP (as Docker treats localhost as an
/// insecure registry); everything else over HTTPS. `MOAT_INSECURE_REGISTRIES` adds hosts.
pub fn base_url(registry: &str) -> String {
    let host = registry.split(':').next().unwrap_or(registry);
    let insecure_env = std::env::var("MOAT_INSECURE_REGISTRIES").unwrap_or_default();
    let insecure = host == "localhost"
        || host.starts_with("127.")
        || insecure_env.split(',').any(|h| h.trim() == registry);
    let registry = if registry == DOCKER_HUB {
        "registry-1.docker.io"
    } else {
        registry
    };
    format!("{}://{registry}", if insecure { "http" } else { "https" })
}

enum Body<'a> {
    None,
    Bytes(&'a [u8], &'a str),
}

impl Client {
    pub fn new(creds: Option<Credentials>) -> Client {
        Client {
            agent: ureq::AgentBuilder::new()
                .timeout_connect(std::time::Duration::from_secs(30))
                .build(),
            creds,
            auth: Mutex::new(None),
        }
    }

    fn basic(&self) -> Option<String> {
        self.creds.as_ref().map(|c| {
            let raw = format!("{}:{}", c.username, c.password);
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            )
        })
    }

    // ureq's error is large, but it is handled immediately by the caller and never stored.
    #[allow(clippy::result_large_err)]
    fn call(
        &self,
        method: &str,
        url: &str,
        accept: Option<&str>,
        body: &Body<'_>,
        auth: Option<&str>,
    ) -> Result<ureq::Response, ureq::Error> {
        let mut req = self.agent.request(method, url);
        if let Some(a) = accept {
            req = req.set("Accept", a);
        }
        if let Some(a) = auth {
            req = req.set("Authorization", a);
        }
        match body {
            Body::None if method == "PUT" || method == "POST" => req.send_bytes(&[]),
            Body::None => req.call(),
            Body::Bytes(b, ct) => req.set("Content-Type", ct).send_bytes(b),
        }
    }

    /// One request, answering a 401 challenge once (basic or bearer token) and retrying.
    fn request(
        &self,
        step: &'static str,
        method: &str,
        url: &str,
        accept: Option<&str>,
        body: Body<'_>,
    ) -> Result<ureq::Response, RegistryError> {
        let cached = self.auth.lock().ok().and_then(|a| a.clone());
        match self.call(method, url, accept, &body, cached.as_deref()) {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(401, resp)) => {
                let challenge = resp
                    .header("WWW-Authenticate")
                    .and_then(parse_challenge)
                    .ok_or_else(|| {
                        RegistryError::Protocol(format!(
                            "{step}: 401 from {url} without a usable WWW-Authenticate challenge"
                        ))
                    })?;
                let auth = match challenge {
                    Challenge::Basic => self.basic().ok_or_else(|| RegistryError::Status {
                        step,
                        url: url.to_string(),
                        status: 401,
                        body: "registry wants basic auth and no credentials were given".into(),
                    })?,
                    Challenge::Bearer(p) => format!("Bearer {}", self.token(step, &p)?),
                };
                if let Ok(mut a) = self.auth.lock() {
                    *a = Some(auth.clone());
                }
                self.call(method, url, accept, &body, Some(&auth))
                    .map_err(|e| status_err(step, url, e))
            }
            Err(e) => Err(status_err(step, url, e)),
        }
    }

    fn token(
        &self,
        step: &'static str,
        p: &BTreeMap<String, String>,
    ) -> Result<String, RegistryError> {
        let realm = p.get("realm").ok_or_else(|| {
            RegistryError::Protocol(format!("{step}: bearer challenge without realm"))
        })?;
        let mut req = self.agent.get(realm);
        for k in ["service", "scope"] {
            if let Some(v) = p.get(k) {
                req = req.query(k, v);
            }
        }
        if let Some(b) = self.basic() {
            req = req.set("Authorization", &b);
        }
        let resp = req
            .call()
            .map_err(|e| status_err("fetching bearer token", realm, e))?;
        #[derive(serde::Deserialize)]
        struct Tok {
            token: Option<String>,
            access_token: Option<String>,
        }
        let mut body = Vec::new();
        resp.into_reader()
            .take(1 << 20)
            .read_to_end(&mut body)
            .map_err(|source| RegistryError::Body {
                step: "fetching bearer token",
                url: realm.clone(),
                source,
            })?;
        let t: Tok = serde_json::from_slice(&body).map_err(|e| {
            RegistryError::Protocol(format!("token endpoint {realm} answered non-JSON: {e}"))
        })?;
        t.token.or(t.access_token).ok_or_else(|| {
            RegistryError::Protocol(format!("token endpoint {realm} returned no token"))
        })
    }

    fn get_manifest(
        &self,
        base: &str,
        repo: &str,
        reference: &str,
    ) -> Result<(Vec<u8>, Digest), RegistryError> {
        let url = format!("{base}/v2/{repo}/manifests/{reference}");
        let resp = self.request(
            "fetching manifest",
            "GET",
            &url,
            Some(MANIFEST_ACCEPT),
            Body::None,
        )?;
        let header_digest = resp.header("Docker-Content-Digest").map(str::to_string);
        let mut bytes = Vec::new();
        resp.into_reader()
            .take(MAX_MANIFEST + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| RegistryError::Body {
                step: "fetching manifest",
                url: url.clone(),
                source,
            })?;
        if bytes.len() as u64 > MAX_MANIFEST {
            return Err(RegistryError::Protocol(format!(
                "manifest at {url} is over 4 MiB"
            )));
        }
        let actual = Digest::of(&bytes);
        let expected = match Digest::parse(reference) {
            Ok(d) => Some(d),
            Err(_) => header_digest.and_then(|h| Digest::parse(&h).ok()),
        };
        if let Some(expected) = expected
            && expected != actual
        {
            return Err(RegistryError::ManifestDigest {
                reference: format!("{repo}@{reference}"),
                expected,
                actual,
            });
        }
        Ok((bytes, actual))
    }

    fn fetch_blob(
        &self,
        store: &Store,
        base: &str,
        repo: &str,
        d: &oci::Descriptor,
        progress: &mut dyn FnMut(&Digest, u64, u64),
    ) -> Result<(), RegistryError> {
        if store.has_blob(&d.digest) {
            progress(&d.digest, d.size, d.size);
            return Ok(());
        }
        let url = format!("{base}/v2/{repo}/blobs/{}", d.digest);
        let resp = self.request("fetching blob", "GET", &url, None, Body::None)?;
        let mut r = resp.into_reader();
        let total = d.size;
        store.put_blob(&d.digest, Some(d.size), &mut r, &mut |n| {
            progress(&d.digest, n, total)
        })?;
        Ok(())
    }

    /// Pulls `image` into the store (linux/amd64 for indexes) and records it under its name.
    pub fn pull(
        &self,
        store: &Store,
        image: &Reference,
        progress: &mut dyn FnMut(&Digest, u64, u64),
    ) -> Result<ImageRecord, RegistryError> {
        let base = base_url(&image.registry);
        let repo = &image.repository;
        let (mut bytes, mut digest) = self.get_manifest(&base, repo, image.manifest_ref())?;
        let manifest = loop {
            match oci::parse_any(&bytes)
                .map_err(|e| RegistryError::Protocol(format!("parsing manifest: {e}")))?
            {
                AnyManifest::Image(m) => break m,
                AnyManifest::Index(ix) => {
                    let d = oci::pick_platform(&ix).ok_or_else(|| {
                        RegistryError::Protocol(format!("{image}: no linux/amd64 manifest"))
                    })?;
                    let next = d.digest.to_string();
                    (bytes, digest) = self.get_manifest(&base, repo, &next)?;
                    if oci::parse_any(&bytes).is_ok_and(|m| matches!(m, AnyManifest::Index(_))) {
                        return Err(RegistryError::Protocol(format!(
                            "{image}: nested image index"
                        )));
                    }
                }
            }
        };
        self.fetch_blob(store, &base, repo, &manifest.config, progress)?;
        for l in &manifest.layers {
            self.fetch_blob(store, &base, repo, l, progress)?;
        }
        store.put_blob_bytes(&digest, &bytes)?;
        Ok(store.commit_image(image, &digest)?)
    }

    /// Pushes a stored image to `dest` (blobs first, then the manifest under dest's tag).
    pub fn push(
        &self,
        store: &Store,
        image: &str,
        dest: &Reference,
    ) -> Result<Digest, RegistryError> {
        let rec = store
            .get(image)?
            .ok_or_else(|| StoreError::NotFound(image.to_string()))?;
        let base = base_url(&dest.registry);
        let repo = &dest.repository;
        let mbytes = store.read_blob(&rec.manifest)?;
        let manifest: Manifest = serde_json::from_slice(&mbytes)
            .map_err(|e| RegistryError::Protocol(format!("parsing stored manifest: {e}")))?;
        for d in std::iter::once(&manifest.config).chain(&manifest.layers) {
            let head = format!("{base}/v2/{repo}/blobs/{}", d.digest);
            if self
                .request("checking blob", "HEAD", &head, None, Body::None)
                .is_ok()
            {
                continue;
            }
            let start = format!("{base}/v2/{repo}/blobs/uploads/");
            let resp = self.request("starting blob upload", "POST", &start, None, Body::None)?;
            let loc = resp.header("Location").ok_or_else(|| {
                RegistryError::Protocol(format!("upload start at {start} gave no Location"))
            })?;
            let loc = if loc.starts_with('/') {
                format!("{base}{loc}")
            } else {
                loc.to_string()
            };
            let sep = if loc.contains('?') { '&' } else { '?' };
            let put = format!("{loc}{sep}digest={}", d.digest);
            let data = store.read_blob(&d.digest)?;
            self.request(
                "uploading blob",
                "PUT",
                &put,
                None,
                Body::Bytes(&data, "application/octet-stream"),
            )?;
        }
        let mt = manifest
            .media_type
            .clone()
            .unwrap_or_else(|| oci::MT_OCI_MANIFEST.to_string());
        let url = format!("{base}/v2/{repo}/manifests/{}", dest.manifest_ref());
        self.request(
            "putting manifest",
            "PUT",
            &url,
            None,
            Body::Bytes(&mbytes, &mt),
        )?;
        Ok(rec.manifest)
    }
}

fn status_err(step: &'static str, url: &str, e: ureq::Error) -> RegistryError {
    match e {
        ureq::Error::Status(status, resp) => {
            let mut body = resp.into_string().unwrap_or_default();
            body.truncate(512);
            RegistryError::Status {
                step,
                url: url.to_string(),
                status,
                body: body.trim().to_string(),
            }
        }
        ureq::Error::Transport(t) => RegistryError::Transport {
            step,
            url: url.to_string(),
            source: Box::new(t),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(parse_challenge("Basic realm=\"x\""), Some(Challenge::Basic));
        let Some(Challenge::Bearer(p)) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        ) else {
            panic!("not bearer")
        };
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/busybox:pull");
        assert_eq!(parse_challenge("Negotiate abc"), None);
    }

    #[test]
    fn base_urls() {
        assert_eq!(base_url("docker.io"), "https://registry-1.docker.io");
        assert_eq!(base_url("localhost:5000"), "http://localhost:5000");
        assert_eq!(base_url("127.0.0.1:5000"), "http://127.0.0.1:5000");
        assert_eq!(base_url("quay.io"), "https://quay.io");
    }
}

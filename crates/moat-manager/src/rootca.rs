//! The root CA publisher loop: namespaces and `kube-root-ca.crt` ConfigMaps in, the writes
//! `moat_controllers::rootca::plan` asks for out. The CA is read from the kubeconfig the
//! loops use (the API server's own CA) at every pass, so a replaced CA is republished.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use base64::Engine;
use moat_controllers::rootca::{Action, NAME, plan};

use crate::{Api, ClientError};

/// The selector that limits lists and watches to the published ConfigMaps.
pub(crate) const WATCH_PATH: &str =
    "/api/v1/configmaps?fieldSelector=metadata.name%3Dkube-root-ca.crt";

pub(crate) fn rootca_loop(c: Api, rx: mpsc::Receiver<()>, kubeconfig: PathBuf) {
    let mut pace = crate::Pace::new(std::time::Duration::from_millis(500));
    while pace.wait(&rx) {
        let ca = match ca_of(&kubeconfig) {
            Ok(ca) => ca,
            Err(e) => {
                tracing::debug!(error = %e, "root CA publisher: reading the CA");
                continue;
            }
        };
        if let Err(e) = pass(&c, &ca) {
            tracing::debug!(error = %e, "root CA publisher pass");
        }
    }
}

/// The CA certificate (PEM) of the kubeconfig's first cluster.
pub(crate) fn ca_of(kubeconfig: &Path) -> Result<String, ClientError> {
    let bad = |m: &str| ClientError::Kubeconfig(format!("{}: {m}", kubeconfig.display()));
    let text = std::fs::read_to_string(kubeconfig).map_err(|e| bad(&e.to_string()))?;
    let v: serde_json::Value = serde_yaml::from_str(&text).map_err(|e| bad(&e.to_string()))?;
    let b64 = v["clusters"][0]["cluster"]["certificate-authority-data"]
        .as_str()
        .ok_or_else(|| bad("no certificate-authority-data"))?;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| bad("bad certificate-authority-data"))?;
    String::from_utf8(pem).map_err(|_| bad("the CA is not PEM text"))
}

fn pass(c: &Api, ca: &str) -> Result<(), ClientError> {
    let (namespaces, _) = c.list("/api/v1/namespaces")?;
    let (configmaps, _) = c.list(WATCH_PATH)?;
    for a in plan(ca, &namespaces, &configmaps) {
        let r = match &a {
            Action::Create { namespace, object } => c
                .create(
                    &format!("/api/v1/namespaces/{namespace}/configmaps"),
                    object,
                )
                .map(|_| ()),
            Action::Replace { namespace, object } => c
                .put(
                    &format!("/api/v1/namespaces/{namespace}/configmaps/{NAME}"),
                    object,
                )
                .map(|_| ()),
        };
        if let Err(e) = r {
            // A namespace going away or a concurrent writer: the next pass recomputes.
            tracing::debug!(error = %e, ?a, "publishing the root CA");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_comes_from_the_kubeconfig() {
        let d = std::env::temp_dir().join(format!("moat-rootca-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let b64 = base64::engine::general_purpose::STANDARD.encode(pem);
        let p = d.join("kubeconfig.yaml");
        std::fs::write(
            &p,
            format!("apiVersion: v1\nclusters:\n- name: m\n  cluster:\n    server: https://h:1\n    certificate-authority-data: {b64}\n"),
        )
        .unwrap();
        assert_eq!(ca_of(&p).unwrap(), pem);
        std::fs::write(&p, "apiVersion: v1\nclusters: []\n").unwrap();
        assert!(
            ca_of(&p)
                .unwrap_err()
                .to_string()
                .contains("certificate-authority-data")
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}

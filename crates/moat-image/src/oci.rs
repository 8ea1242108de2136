//! OCI / Docker v2 schema2 manifest types (sans-IO).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::reference::Digest;

pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MT_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RootFs {
    pub diff_ids: Vec<Digest>,
}

/// The parts of an image config the store needs; the blob itself is kept verbatim.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    pub rootfs: RootFs,
}

/// A manifest document is either an image manifest or an index / manifest list; told apart by
/// mediaType when present, by shape otherwise.
pub enum AnyManifest {
    Image(Manifest),
    Index(Index),
}

pub fn parse_any(bytes: &[u8]) -> Result<AnyManifest, serde_json::Error> {
    let v: serde_json::Value = serde_json::from_slice(bytes)?;
    let mt = v.get("mediaType").and_then(|m| m.as_str()).unwrap_or("");
    if mt == MT_OCI_INDEX || mt == MT_DOCKER_LIST || v.get("manifests").is_some() {
        Ok(AnyManifest::Index(serde_json::from_value(v)?))
    } else {
        Ok(AnyManifest::Image(serde_json::from_value(v)?))
    }
}

/// Picks the linux/amd64 entry of an index (the only platform moat nodes run).
pub fn pick_platform(index: &Index) -> Option<&Descriptor> {
    index.manifests.iter().find(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_resolves_linux_amd64() {
        let h = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let doc = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MT_DOCKER_LIST,
            "manifests": [
                {"mediaType": MT_DOCKER_MANIFEST, "digest": h('a'), "size": 1,
                 "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
                {"mediaType": MT_DOCKER_MANIFEST, "digest": h('b'), "size": 1,
                 "platform": {"architecture": "amd64", "os": "linux"}},
            ]
        });
        let AnyManifest::Index(ix) = parse_any(doc.to_string().as_bytes()).unwrap() else {
            panic!("not an index")
        };
        assert_eq!(pick_platform(&ix).unwrap().digest.as_str(), h('b'));
    }
}

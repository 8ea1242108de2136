//! The `features` document (OCI runtime-spec features.md) describing what this runtime accepts.

use serde_json::{Value, json};

pub fn features() -> Value {
    json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": crate::state::OCI_VERSION,
        "hooks": [],
        "mountOptions": ["bind", "rbind", "ro", "rw", "nosuid", "nodev", "noexec"],
        "linux": {
            "namespaces": ["pid", "network", "ipc", "uts", "mount"],
            "capabilities": [],
            "cgroup": {"v1": true, "v2": true, "systemd": false},
        },
        "annotations": {
            "org.opencontainers.runtime-spec.features.runtime": "moat-runtime",
            "io.moat.runtime.sandbox": "microvm",
        },
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_and_namespaces_present() {
        let f = super::features();
        assert_eq!(f["ociVersionMax"], crate::state::OCI_VERSION);
        assert!(
            f["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .contains(&"network".into())
        );
    }
}

//! Objects a fresh cluster starts with beyond the namespaces: the `kata` RuntimeClass, and
//! the pod network's configuration (flannel's `kube-system/kube-flannel-cfg`).
//!
//! Created once, at the cluster's first start, then the user's: a marker key in the store
//! records that the bootstrap ran, so a class the user edited stays edited and one the user
//! deleted stays deleted across restarts (the marker lives in the store, not the data dir,
//! so it follows the cluster to etcd and through snapshots).

use moat_store::{Store, StoreError};
use serde_json::{Value, json};

/// Store key recording that the default `kata` RuntimeClass was offered once. Outside
/// `/registry/`, so no API path serves or lists it.
pub const KATA_MARKER: &str = "/moat/bootstrap/runtimeclass-kata";

const KATA_KEY: &str = "/registry/runtimeclasses.node.k8s.io/kata";

#[derive(Debug, thiserror::Error)]
#[error("creating the default RuntimeClass kata: {step}")]
pub struct BootstrapError {
    step: &'static str,
    #[source]
    source: StoreError,
}

/// What the bootstrap found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KataOutcome {
    /// First start: the class was created.
    Created,
    /// First start, but a `kata` class was already there (the user's or a restored one): left
    /// as it is.
    Existing,
    /// Not the first start: whatever the user did with the class stands.
    AlreadyBootstrapped,
}

/// The RuntimeClass Kata's deployment installs: handler `kata`, with a fixed per-pod overhead
/// the scheduler and the node account for the VM itself.
pub fn kata_runtime_class(uid: &str, now: &str) -> Value {
    json!({
        "kind": "RuntimeClass",
        "apiVersion": "node.k8s.io/v1",
        "metadata": {"name": "kata", "uid": uid, "creationTimestamp": now},
        "handler": "kata",
        "overhead": {"podFixed": {"memory": "160Mi", "cpu": "250m"}},
    })
}

/// Creates the `kata` RuntimeClass on the cluster's first start unless one exists, then
/// records that it did. A crash between the two steps repeats the create on the next start,
/// which finds the class and only writes the marker.
pub async fn default_runtime_class(
    store: &dyn Store,
    uid: &str,
    now: &str,
) -> Result<KataOutcome, BootstrapError> {
    let err = |step| move |source| BootstrapError { step, source };
    if store
        .get(KATA_MARKER)
        .await
        .map_err(err("reading the bootstrap marker"))?
        .is_some()
    {
        return Ok(KataOutcome::AlreadyBootstrapped);
    }
    let obj = kata_runtime_class(uid, now);
    let outcome = match store
        .create(KATA_KEY, serde_json::to_vec(&obj).unwrap_or_default())
        .await
    {
        Ok(_) => KataOutcome::Created,
        Err(StoreError::AlreadyExists { .. }) => KataOutcome::Existing,
        Err(e) => return Err(err("writing the RuntimeClass")(e)),
    };
    let marker = json!({"runtimeClass": "kata", "at": now});
    match store
        .create(KATA_MARKER, serde_json::to_vec(&marker).unwrap_or_default())
        .await
    {
        Ok(_) | Err(StoreError::AlreadyExists { .. }) => Ok(outcome),
        Err(e) => Err(err("writing the bootstrap marker")(e)),
    }
}

/// Store key of flannel's ConfigMap, which carries the cluster CIDR and backend to the agents.
pub const NET_CONF_KEY: &str = "/registry/configmaps/kube-system/kube-flannel-cfg";

/// Name of the ConfigMap in `kube-system` that carries the server's NetworkPolicy settings to
/// every agent (`legacyNamespaceIsolation: "true"|"false"`), so all nodes enforce the same
/// semantics (k3s hands its agents the server's flags the same way).
pub const NETPOL_CONF_NAME: &str = "moat-network-policy";

/// Writes the pod network's configuration (`net-conf.json`) from the server's flags at every
/// start, as k3s does: the flags are the truth, and an unchanged config is not rewritten.
pub async fn network_config(
    store: &dyn Store,
    net_conf: &str,
    uid: &str,
    now: &str,
) -> Result<(), NetConfError> {
    let data = [("net-conf.json".to_string(), net_conf.to_string())].into();
    let labels = json!({"app": "flannel", "tier": "node"});
    published_config_map(store, "kube-flannel-cfg", labels, &data, uid, now).await
}

/// Writes `kube-system/moat-network-policy` from the server's flags at every start.
pub async fn network_policy_config(
    store: &dyn Store,
    legacy_namespace_isolation: bool,
    uid: &str,
    now: &str,
) -> Result<(), NetConfError> {
    let data = [(
        "legacyNamespaceIsolation".to_string(),
        legacy_namespace_isolation.to_string(),
    )]
    .into();
    let labels = json!({"app.kubernetes.io/managed-by": "moat-server"});
    published_config_map(store, NETPOL_CONF_NAME, labels, &data, uid, now).await
}

/// A `kube-system` ConfigMap whose data the server's flags own: created when absent, its
/// `data` replaced when it differs, left alone (no new revision) when it matches.
async fn published_config_map(
    store: &dyn Store,
    name: &'static str,
    labels: Value,
    data: &std::collections::BTreeMap<String, String>,
    uid: &str,
    now: &str,
) -> Result<(), NetConfError> {
    let err = |step| move |source| NetConfError { name, step, source };
    let key = format!("/registry/configmaps/kube-system/{name}");
    let existing = store.get(&key).await.map_err(err("reading it"))?;
    match existing {
        None => {
            let obj = json!({
                "kind": "ConfigMap", "apiVersion": "v1",
                "metadata": {"name": name, "namespace": "kube-system", "uid": uid,
                             "creationTimestamp": now, "labels": labels},
                "data": data,
            });
            match store
                .create(&key, serde_json::to_vec(&obj).unwrap_or_default())
                .await
            {
                Ok(_) | Err(StoreError::AlreadyExists { .. }) => Ok(()),
                Err(e) => Err(err("creating it")(e)),
            }
        }
        Some(kv) => {
            let mut obj: Value = serde_json::from_slice(&kv.value).unwrap_or_else(|_| json!({}));
            if obj["data"] == json!(data) {
                return Ok(());
            }
            obj["data"] = json!(data);
            store
                .update(
                    &key,
                    serde_json::to_vec(&obj).unwrap_or_default(),
                    kv.mod_revision,
                )
                .await
                .map(|_| ())
                .map_err(err("updating it"))
        }
    }
}

/// The cluster DNS Service every node answers locally (k3s's and kubeadm's name for it), with
/// its address claimed in the allocator so no other Service gets it. Created when absent.
pub async fn kube_dns(
    store: &dyn Store,
    ip: std::net::Ipv4Addr,
    uid: &str,
    now: &str,
) -> Result<(), NetConfError> {
    let err = |step| {
        move |source| NetConfError {
            name: "kube-dns",
            step,
            source,
        }
    };
    let key = "/registry/services/kube-system/kube-dns";
    if store
        .get(key)
        .await
        .map_err(err("reading kube-dns"))?
        .is_some()
    {
        return Ok(());
    }
    let ip_key = format!("/registry/ranges/serviceips/{ip}");
    match store
        .create(&ip_key, b"kube-system/kube-dns".to_vec())
        .await
    {
        Ok(_) => {}
        Err(StoreError::AlreadyExists { .. }) => {
            let holder = store
                .get(&ip_key)
                .await
                .map_err(err("reading the DNS address's owner"))?;
            if holder.is_some_and(|kv| kv.value != b"kube-system/kube-dns") {
                tracing::warn!(%ip, "the cluster DNS address belongs to another Service; kube-dns not created");
                return Ok(());
            }
        }
        Err(e) => return Err(err("claiming the cluster DNS address")(e)),
    }
    let svc = json!({
        "kind": "Service", "apiVersion": "v1",
        "metadata": {"name": "kube-dns", "namespace": "kube-system", "uid": uid,
                     "creationTimestamp": now,
                     "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "moat-dns"}},
        "spec": {
            "type": "ClusterIP", "clusterIP": ip.to_string(), "clusterIPs": [ip.to_string()],
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
            ],
            "sessionAffinity": "None", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "internalTrafficPolicy": "Cluster",
        },
        "status": {"loadBalancer": {}},
    });
    match store
        .create(key, serde_json::to_vec(&svc).unwrap_or_default())
        .await
    {
        Ok(_) | Err(StoreError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(err("creating kube-dns")(e)),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("bootstrapping the cluster network (kube-system/{name}): {step}")]
pub struct NetConfError {
    name: &'static str,
    step: &'static str,
    #[source]
    source: StoreError,
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_store::MemStore;

    #[tokio::test]
    async fn network_config_follows_the_flags_and_is_not_rewritten_unchanged() {
        let s = MemStore::new();
        let t = "2026-01-01T00:00:00Z";
        network_config(&s, r#"{"Network":"10.42.0.0/16"}"#, "u", t)
            .await
            .unwrap();
        let rev = s.get(NET_CONF_KEY).await.unwrap().unwrap().mod_revision;
        network_config(&s, r#"{"Network":"10.42.0.0/16"}"#, "u", t)
            .await
            .unwrap();
        assert_eq!(
            s.get(NET_CONF_KEY).await.unwrap().unwrap().mod_revision,
            rev
        );
        network_config(&s, r#"{"Network":"10.20.0.0/16"}"#, "u", t)
            .await
            .unwrap();
        let kv = s.get(NET_CONF_KEY).await.unwrap().unwrap();
        let v: Value = serde_json::from_slice(&kv.value).unwrap();
        assert_eq!(v["data"]["net-conf.json"], r#"{"Network":"10.20.0.0/16"}"#);
        assert_eq!(v["metadata"]["namespace"], "kube-system");
    }

    #[tokio::test]
    async fn network_policy_config_follows_the_flag() {
        let s = MemStore::new();
        let key = format!("/registry/configmaps/kube-system/{NETPOL_CONF_NAME}");
        let read = |kv: Option<moat_store::KeyValue>| -> Value {
            serde_json::from_slice(&kv.unwrap().value).unwrap()
        };
        network_policy_config(&s, false, "u", "t").await.unwrap();
        let v = read(s.get(&key).await.unwrap());
        assert_eq!(v["data"]["legacyNamespaceIsolation"], "false");
        network_policy_config(&s, true, "u", "t").await.unwrap();
        let v = read(s.get(&key).await.unwrap());
        assert_eq!(v["data"]["legacyNamespaceIsolation"], "true");
        assert_eq!(v["metadata"]["name"], NETPOL_CONF_NAME);
    }

    #[tokio::test]
    async fn created_once_then_the_users_deletion_and_edits_stand() {
        let s = MemStore::new();
        let t = "2026-01-01T00:00:00Z";
        assert_eq!(
            default_runtime_class(&s, "u1", t).await.unwrap(),
            KataOutcome::Created
        );
        let kv = s.get(KATA_KEY).await.unwrap().expect("class created");
        let v: Value = serde_json::from_slice(&kv.value).unwrap();
        assert_eq!(v["handler"], "kata");
        assert_eq!(v["overhead"]["podFixed"]["memory"], "160Mi");
        assert_eq!(v["overhead"]["podFixed"]["cpu"], "250m");

        // An edit stands.
        let mut edited = v.clone();
        edited["overhead"]["podFixed"]["memory"] = json!("300Mi");
        s.update(
            KATA_KEY,
            serde_json::to_vec(&edited).unwrap(),
            kv.mod_revision,
        )
        .await
        .unwrap();
        assert_eq!(
            default_runtime_class(&s, "u2", t).await.unwrap(),
            KataOutcome::AlreadyBootstrapped
        );
        let again: Value =
            serde_json::from_slice(&s.get(KATA_KEY).await.unwrap().unwrap().value).unwrap();
        assert_eq!(again["overhead"]["podFixed"]["memory"], "300Mi");

        // A deletion stands.
        s.delete(KATA_KEY, None).await.unwrap();
        assert_eq!(
            default_runtime_class(&s, "u3", t).await.unwrap(),
            KataOutcome::AlreadyBootstrapped
        );
        assert!(s.get(KATA_KEY).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_existing_class_is_left_alone_and_the_marker_written() {
        let s = MemStore::new();
        let mine = json!({"kind": "RuntimeClass", "apiVersion": "node.k8s.io/v1",
            "metadata": {"name": "kata", "uid": "mine"}, "handler": "my-kata"});
        s.create(KATA_KEY, serde_json::to_vec(&mine).unwrap())
            .await
            .unwrap();
        assert_eq!(
            default_runtime_class(&s, "u", "t").await.unwrap(),
            KataOutcome::Existing
        );
        let v: Value =
            serde_json::from_slice(&s.get(KATA_KEY).await.unwrap().unwrap().value).unwrap();
        assert_eq!(v, mine);
        assert!(s.get(KATA_MARKER).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_crash_before_the_marker_only_writes_the_marker_next_time() {
        let s = MemStore::new();
        s.create(
            KATA_KEY,
            serde_json::to_vec(&kata_runtime_class("u1", "t")).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(
            default_runtime_class(&s, "u2", "t").await.unwrap(),
            KataOutcome::Existing
        );
        let v: Value =
            serde_json::from_slice(&s.get(KATA_KEY).await.unwrap().unwrap().value).unwrap();
        assert_eq!(v["metadata"]["uid"], "u1");
    }
}

//! Where the network components plug into the pod lifecycle without the pod loop importing
//! them: [`PodNetHooks`] is called after a sandbox has its IP and before its first container
//! starts (so the policy engine programs a new pod before it can send or receive a packet),
//! and after its teardown. [`resolv_conf`] writes a pod's resolver file per `dnsPolicy`.

use std::sync::Mutex;

use k8s_openapi::api::core::v1::Pod;

#[derive(Debug, thiserror::Error)]
#[error("{component}: {message}")]
pub struct HookError {
    pub component: &'static str,
    pub message: String,
}

/// Called by the pod lifecycle; implementations must be quick and idempotent (a sandbox
/// creation that fails after `sandbox_ready` is retried, calling it again).
pub trait PodNetHooks: Send + Sync {
    /// The sandbox of `pod` has address `ip` (None: host network); no container runs yet.
    /// An error fails the sandbox creation, which is retried with back-off.
    fn sandbox_ready(&self, pod: &Pod, ip: Option<&str>) -> Result<(), HookError>;
    /// Everything of pod `uid` (which had `ip`) is gone from the node.
    fn sandbox_gone(&self, uid: &str, ip: Option<&str>);
}

/// No network component installed.
pub struct NoHooks;

impl PodNetHooks for NoHooks {
    fn sandbox_ready(&self, _pod: &Pod, _ip: Option<&str>) -> Result<(), HookError> {
        Ok(())
    }
    fn sandbox_gone(&self, _uid: &str, _ip: Option<&str>) {}
}

/// Records the calls (and can refuse `sandbox_ready`), for tests.
#[derive(Default)]
pub struct RecordingHooks {
    pub calls: Mutex<Vec<String>>,
    pub refuse: Mutex<Option<String>>,
}

impl PodNetHooks for RecordingHooks {
    fn sandbox_ready(&self, pod: &Pod, ip: Option<&str>) -> Result<(), HookError> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("ready {uid} {}", ip.unwrap_or("-")));
        match self
            .refuse
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            Some(message) => Err(HookError {
                component: "recording",
                message,
            }),
            None => Ok(()),
        }
    }
    fn sandbox_gone(&self, uid: &str, ip: Option<&str>) {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("gone {uid} {}", ip.unwrap_or("-")));
    }
}

/// The cluster DNS settings the kubelet gets as `--cluster-dns` / `--cluster-domain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDns {
    pub servers: Vec<String>,
    pub domain: String,
}

/// Nameserver lines of the host's resolv.conf a pod can use (loopback resolvers are the
/// host's own and unreachable from a pod's namespace).
fn host_lines(host: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (mut ns, mut search, mut options) = (Vec::new(), Vec::new(), Vec::new());
    for l in host.lines() {
        let mut w = l.split_whitespace();
        match w.next() {
            Some("nameserver") => {
                if let Some(a) = w.next()
                    && !(a.starts_with("127.") || a == "::1")
                {
                    ns.push(a.to_string());
                }
            }
            Some("search" | "domain") => search.extend(w.map(String::from)),
            Some("options") => options.extend(w.map(String::from)),
            _ => {}
        }
    }
    (ns, search, options)
}

/// The pod's /etc/resolv.conf as the kubelet writes it for `dnsPolicy` (ClusterFirst,
/// ClusterFirstWithHostNet, Default, None) plus `dnsConfig`. Without cluster DNS, ClusterFirst
/// falls back to the node's resolvers, as the kubelet does when it has no `--cluster-dns`.
pub fn resolv_conf(pod: &Pod, cluster: Option<&ClusterDns>, host: &str) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let host_net = spec.host_network.unwrap_or(false);
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let (host_ns, host_search, host_opts) = host_lines(host);
    let cluster_first = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_net,
        _ => false,
    };
    let (mut servers, mut search, mut options) = match (policy, cluster_first, cluster) {
        ("None", _, _) => (Vec::new(), Vec::new(), Vec::new()),
        (_, true, Some(c)) => {
            let mut s = vec![
                format!("{ns}.svc.{}", c.domain),
                format!("svc.{}", c.domain),
                c.domain.clone(),
            ];
            s.extend(host_search.clone());
            (c.servers.clone(), s, vec!["ndots:5".to_string()])
        }
        _ => (host_ns, host_search, host_opts),
    };
    if let Some(cfg) = &spec.dns_config {
        servers.extend(cfg.nameservers.iter().flatten().cloned());
        search.extend(cfg.searches.iter().flatten().cloned());
        for o in cfg.options.iter().flatten() {
            let Some(name) = &o.name else { continue };
            options.retain(|x| x.split(':').next() != Some(name.as_str()));
            options.push(match &o.value {
                Some(v) => format!("{name}:{v}"),
                None => name.clone(),
            });
        }
    }
    // The resolver's own limits, which the kubelet enforces too.
    servers.dedup();
    servers.truncate(3);
    let mut seen = std::collections::BTreeSet::new();
    search.retain(|s| seen.insert(s.clone()));
    search.truncate(32);
    let mut out = String::new();
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    for s in servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": "test"}, "spec": spec}),
        )
        .unwrap()
    }

    const HOST: &str =
        "search corp.example\nnameserver 127.0.0.53\nnameserver 192.0.2.1\noptions edns0\n";

    fn dns() -> ClusterDns {
        ClusterDns {
            servers: vec!["10.43.0.10".into()],
            domain: "cluster.local".into(),
        }
    }

    #[test]
    fn cluster_first_points_at_cluster_dns_with_kubelet_search_and_ndots() {
        let p = pod(json!({"containers": []}));
        assert_eq!(
            resolv_conf(&p, Some(&dns()), HOST),
            "search test.svc.cluster.local svc.cluster.local cluster.local corp.example\n\
             nameserver 10.43.0.10\noptions ndots:5\n"
        );
        // No cluster DNS: the node's resolvers, loopback ones dropped.
        assert_eq!(
            resolv_conf(&p, None, HOST),
            "search corp.example\nnameserver 192.0.2.1\noptions edns0\n"
        );
    }

    #[test]
    fn host_network_default_none_and_dns_config() {
        let hn = pod(json!({"containers": [], "hostNetwork": true}));
        assert!(resolv_conf(&hn, Some(&dns()), HOST).contains("nameserver 192.0.2.1"));
        let hn2 = pod(
            json!({"containers": [], "hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}),
        );
        assert!(resolv_conf(&hn2, Some(&dns()), HOST).contains("nameserver 10.43.0.10"));
        let def = pod(json!({"containers": [], "dnsPolicy": "Default"}));
        assert!(!resolv_conf(&def, Some(&dns()), HOST).contains("10.43.0.10"));
        let none = pod(json!({"containers": [], "dnsPolicy": "None", "dnsConfig": {
            "nameservers": ["1.2.3.4"], "searches": ["a.b"], "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}));
        assert_eq!(
            resolv_conf(&none, Some(&dns()), HOST),
            "search a.b\nnameserver 1.2.3.4\noptions ndots:2 edns0\n"
        );
    }
}

//! The sans-IO plan of a cluster: names, namespaces, underlay addresses, directories,
//! cgroups and each node's command line, from what the user asked; validated before anything
//! is made.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use moat_podnet::{Backend, ConfError};
use serde::{Deserialize, Serialize};

/// The private underlay every node of a cluster sits on (inside the cluster's own network
/// namespaces: it never meets the host's networks).
pub const UNDERLAY_PREFIX: &str = "172.30.0";
/// The underlay bridge's address in the cluster's namespace: the nodes' default gateway and
/// the "outside world" the egress tests reach.
pub const OUTSIDE_IP: &str = "172.30.0.254";
pub const API_PORT: u16 = 6443;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(
        "cluster name {0:?} must be 1-12 characters of a-z, 0-9 and '-', starting with a letter"
    )]
    BadName(String),
    #[error("--nodes {0}: a cluster has 1 to 50 nodes")]
    BadNodes(usize),
    #[error("--untrusted-nodes {untrusted} is more than the cluster's {nodes} nodes")]
    Untrusted { untrusted: usize, nodes: usize },
    #[error(transparent)]
    Conf(#[from] ConfError),
}

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub nodes: usize,
    pub backend: String,
    pub cluster_cidr: String,
    pub service_cidr: String,
    pub untrusted: usize,
    /// Records, data, run and log dirs of every cluster.
    pub root: PathBuf,
    /// The image store every node reads (the host's, shared).
    pub image_root: PathBuf,
    /// Every node's runtime handler TOML (`--runtime-config`), e.g. a `kata` handler naming
    /// another moat-runtime; none: the agent's defaults (runc, crun, kata).
    pub runtime_config: Option<PathBuf>,
    /// Extra `moat server` flags for the first node (k3d's `--k3s-arg`), e.g.
    /// `--legacy-namespace-isolation`.
    pub server_args: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodePlan {
    pub name: String,
    pub index: usize,
    /// Network namespace (`/run/netns/<netns>`).
    pub netns: String,
    pub ip: Ipv4Addr,
    pub dir: PathBuf,
    /// Cgroup (relative to the hierarchy's root) the node's processes run in.
    pub cgroup: String,
    /// The pods' cgroup parent.
    pub pods_cgroup: String,
    pub server: bool,
    pub untrusted: bool,
}

impl NodePlan {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }
    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("node.log")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Plan {
    pub name: String,
    pub dir: PathBuf,
    pub backend: String,
    pub cluster_cidr: String,
    pub service_cidr: String,
    pub image_root: PathBuf,
    /// Records written before the option existed have none.
    #[serde(default)]
    pub runtime_config: Option<PathBuf>,
    #[serde(default)]
    pub server_args: Vec<String>,
    /// The underlay bridge's namespace.
    pub underlay_netns: String,
    /// The cgroup every process of the cluster runs under (killed as one on delete).
    pub cgroup: String,
    pub nodes: Vec<NodePlan>,
}

fn valid_name(n: &str) -> bool {
    (1..=12).contains(&n.len())
        && n.starts_with(|c: char| c.is_ascii_lowercase())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !n.ends_with('-')
}

/// The cluster's directory under `root`.
pub fn cluster_dir(root: &Path, name: &str) -> PathBuf {
    root.join(name)
}

pub fn plan(spec: &Spec) -> Result<Plan, PlanError> {
    if !valid_name(&spec.name) {
        return Err(PlanError::BadName(spec.name.clone()));
    }
    if !(1..=50).contains(&spec.nodes) {
        return Err(PlanError::BadNodes(spec.nodes));
    }
    if spec.untrusted > spec.nodes {
        return Err(PlanError::Untrusted {
            untrusted: spec.untrusted,
            nodes: spec.nodes,
        });
    }
    let _: Backend = spec.backend.parse()?;
    moat_podnet::conf::check_cidrs(&spec.cluster_cidr, &spec.service_cidr, 24)?;
    let dir = cluster_dir(&spec.root, &spec.name);
    let cgroup = format!("moat-cluster-{}", spec.name);
    let nodes = (1..=spec.nodes)
        .map(|i| {
            let name = format!("{}-{i}", spec.name);
            NodePlan {
                netns: format!("moat-{name}"),
                ip: format!("{UNDERLAY_PREFIX}.{}", 10 + i)
                    .parse()
                    .unwrap_or(Ipv4Addr::UNSPECIFIED),
                dir: dir.join(&name),
                cgroup: format!("{cgroup}/{name}/node"),
                pods_cgroup: format!("/{cgroup}/{name}/pods"),
                server: i == 1,
                untrusted: i > spec.nodes - spec.untrusted,
                index: i,
                name,
            }
        })
        .collect();
    Ok(Plan {
        name: spec.name.clone(),
        dir,
        backend: spec.backend.clone(),
        cluster_cidr: spec.cluster_cidr.clone(),
        service_cidr: spec.service_cidr.clone(),
        image_root: spec.image_root.clone(),
        runtime_config: spec.runtime_config.clone(),
        server_args: spec.server_args.clone(),
        underlay_netns: format!("moat-{}-ul", spec.name),
        cgroup,
        nodes,
    })
}

impl Plan {
    pub fn server(&self) -> &NodePlan {
        &self.nodes[0]
    }

    pub fn api_url(&self) -> String {
        format!("https://{}:{API_PORT}", self.server().ip)
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig.yaml")
    }

    pub fn records(&self) -> PathBuf {
        self.dir.join("cluster.json")
    }

    /// The node's command line (after `moat`).
    pub fn node_args(&self, n: &NodePlan) -> Vec<String> {
        let p = |x: PathBuf| x.display().to_string();
        let mut a: Vec<String> = Vec::new();
        if n.server {
            a.extend(
                [
                    "server",
                    "--listen",
                    &format!("{}:{API_PORT}", n.ip),
                    "--data-dir",
                    &p(n.data_dir()),
                    "--cluster-cidr",
                    &self.cluster_cidr,
                    "--service-cidr",
                    &self.service_cidr,
                    "--flannel-backend",
                    &self.backend,
                ]
                .map(String::from),
            );
            a.extend(self.server_args.iter().cloned());
        } else {
            let d = self.server().data_dir();
            a.extend(
                [
                    "agent",
                    "--server",
                    &self.api_url(),
                    "--token-file",
                    &p(d.join("token")),
                    "--ca-file",
                    &p(d.join("ca.crt")),
                ]
                .map(String::from),
            );
        }
        a.extend(
            [
                "--node-name",
                &n.name,
                "--node-ip",
                &n.ip.to_string(),
                "--agent-listen",
                &format!("{}:10250", n.ip),
                "--run-dir",
                &p(n.run_dir()),
                "--log-dir",
                &p(n.log_dir()),
                "--image-root",
                &p(self.image_root.clone()),
                "--cgroup-parent",
                &n.pods_cgroup,
            ]
            .map(String::from),
        );
        // Handler roots default to `<run dir>/runtime/<handler>`: one file serves every node
        // and each keeps its containers' and VMs' state under its own directory.
        if let Some(c) = &self.runtime_config {
            a.extend(["--runtime-config".to_string(), p(c.clone())]);
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            name: "demo".into(),
            nodes: 3,
            backend: "vxlan".into(),
            cluster_cidr: "10.42.0.0/16".into(),
            service_cidr: "10.43.0.0/16".into(),
            untrusted: 1,
            root: "/var/lib/moat/clusters".into(),
            image_root: "/var/lib/moat/images".into(),
            runtime_config: None,
            server_args: vec![],
        }
    }

    #[test]
    fn three_nodes_first_is_the_server_last_untrusted() {
        let p = plan(&spec()).unwrap();
        let names: Vec<_> = p.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["demo-1", "demo-2", "demo-3"]);
        assert!(p.nodes[0].server && !p.nodes[1].server);
        assert_eq!(p.nodes.iter().filter(|n| n.untrusted).count(), 1);
        assert!(p.nodes[2].untrusted);
        assert_eq!(p.nodes[1].ip.to_string(), "172.30.0.12");
        assert_eq!(p.api_url(), "https://172.30.0.11:6443");
        let a = p.node_args(&p.nodes[1]);
        assert_eq!(a[0], "agent");
        assert!(a.contains(&"/moat-cluster-demo/demo-2/pods".to_string()));
        let s = p.node_args(&p.nodes[0]);
        assert!(s.windows(2).any(|w| w == ["--flannel-backend", "vxlan"]));
        assert!(!s.contains(&"--runtime-config".to_string()));
    }

    #[test]
    fn server_args_go_to_the_server_only() {
        let mut s = spec();
        s.server_args = vec!["--legacy-namespace-isolation".into()];
        let p = plan(&s).unwrap();
        assert!(
            p.node_args(&p.nodes[0])
                .contains(&"--legacy-namespace-isolation".to_string())
        );
        assert!(
            !p.node_args(&p.nodes[1])
                .contains(&"--legacy-namespace-isolation".to_string())
        );
    }

    #[test]
    fn the_runtime_config_goes_to_every_node() {
        let mut s = spec();
        s.runtime_config = Some("/etc/moat/cluster-runtimes.toml".into());
        let p = plan(&s).unwrap();
        for n in &p.nodes {
            let a = p.node_args(n);
            assert!(
                a.windows(2)
                    .any(|w| w == ["--runtime-config", "/etc/moat/cluster-runtimes.toml"]),
                "{a:?}"
            );
        }
    }

    #[test]
    fn bad_input_is_refused_before_anything() {
        let mut s = spec();
        s.name = "Demo".into();
        assert!(matches!(plan(&s), Err(PlanError::BadName(_))));
        let mut s = spec();
        s.backend = "udp".into();
        assert!(
            plan(&s)
                .unwrap_err()
                .to_string()
                .contains("unknown flannel backend")
        );
        let mut s = spec();
        s.cluster_cidr = "10.43.0.0/16".into();
        assert!(plan(&s).unwrap_err().to_string().contains("overlaps"));
        let mut s = spec();
        s.untrusted = 4;
        assert!(matches!(plan(&s), Err(PlanError::Untrusted { .. })));
        let mut s = spec();
        s.nodes = 0;
        assert!(matches!(plan(&s), Err(PlanError::BadNodes(0))));
    }
}

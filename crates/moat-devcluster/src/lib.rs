//! `moat cluster`: a real multi-node moat cluster on one machine, as kind is for Kubernetes.
//!
//! Each node is a network namespace with its own underlay address (`172.30.0.1N/24`) on a
//! bridge that lives in a namespace of the cluster's own, so nothing is added to the host's
//! root network namespace. Node 1 runs `moat server` (control plane + agent), the others
//! `moat agent` joined with the server's token; each node has its own data, run and log dirs,
//! runtime roots and pods' cgroup parent, and reads the host's image store (so an image
//! imported on the host with `moat image import` runs on every node without a registry).
//! The host reaches the API server through a loopback forwarder ([`proxy`]).
//!
//! Everything a cluster starts runs in one cgroup of its own (`moat-cluster-NAME`, in the
//! cgroup v2 hierarchy), joined before the process execs: delete kills the cluster by that
//! cgroup (`cgroup.kill`), unmounts what lies under its directory and removes its namespaces,
//! cgroups and files, all found from the cluster's records, never by name patterns, and it
//! works whatever was killed before.
//!
//! Layout: [`plan`] (sans-IO: names, addresses, dirs, command lines, validation), [`host`]
//! (the narrow trait over commands and processes), [`proxy`], and here the steps of
//! create / delete / list / exec.

pub mod host;
pub mod plan;
pub mod proxy;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use host::Host;
pub use plan::{Plan, PlanError, Spec};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("cluster {0:?} exists (moat cluster delete --name {0} first)")]
    Exists(String),
    #[error("there is no cluster {0:?} (moat cluster list)")]
    NotFound(String),
    #[error("cluster {cluster} has no node {node:?}")]
    NoNode { cluster: String, node: String },
    #[error("running `{cmd}`")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
    #[error("{step} ({path})")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the cluster's records {path}")]
    Records {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what} not ready after {secs} s; see {log}")]
    Timeout {
        what: String,
        secs: u64,
        log: String,
    },
    #[error("the cluster's API server")]
    Api(#[from] moat_client::ClientError),
}

fn io(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ClusterError {
    let path = path.to_path_buf();
    move |source| ClusterError::Io { step, path, source }
}

/// Writes the records atomically.
pub fn save(plan: &Plan) -> Result<(), ClusterError> {
    let path = plan.records();
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(plan).map_err(|source| ClusterError::Records {
        path: path.clone(),
        source,
    })?;
    std::fs::write(&tmp, text).map_err(io("writing the records", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("writing the records", &path))
}

pub fn load(root: &Path, name: &str) -> Result<Plan, ClusterError> {
    let path = plan::cluster_dir(root, name).join("cluster.json");
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ClusterError::NotFound(name.to_string()));
        }
        Err(e) => return Err(io("reading the records", &path)(e)),
    };
    serde_json::from_slice(&text).map_err(|source| ClusterError::Records { path, source })
}

/// The names of the clusters under `root`.
pub fn list(root: &Path) -> Vec<Plan> {
    let mut out: Vec<Plan> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| load(root, &e.file_name().to_string_lossy()).ok())
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The underlay: a bridge in the cluster's namespace and a veth per node whose node end is
/// `eth0` in the node's namespace. Every `ip` command names a namespace of the cluster's.
pub fn network_up(h: &dyn Host, p: &Plan) -> Result<(), ClusterError> {
    let ul = p.underlay_netns.as_str();
    let outside = format!("{}/24", plan::OUTSIDE_IP);
    h.run(&["ip", "netns", "add", ul])?;
    h.run(&["ip", "-n", ul, "link", "set", "lo", "up"])?;
    h.run(&["ip", "-n", ul, "link", "add", "br0", "type", "bridge"])?;
    h.run(&["ip", "-n", ul, "addr", "add", &outside, "dev", "br0"])?;
    h.run(&["ip", "-n", ul, "link", "set", "br0", "up"])?;
    for n in &p.nodes {
        let ns = n.netns.as_str();
        let veth = format!("v{}", n.index);
        let addr = format!("{}/24", n.ip);
        h.run(&["ip", "netns", "add", ns])?;
        h.run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        h.run(&[
            "ip", "-n", ul, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
            ns,
        ])?;
        h.run(&["ip", "-n", ul, "link", "set", &veth, "master", "br0", "up"])?;
        h.run(&["ip", "-n", ns, "addr", "add", &addr, "dev", "eth0"])?;
        h.run(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
        h.run(&[
            "ip",
            "-n",
            ns,
            "route",
            "add",
            "default",
            "via",
            plan::OUTSIDE_IP,
        ])?;
    }
    Ok(())
}

fn wait_for(
    what: &str,
    secs: u64,
    log: &Path,
    mut ok: impl FnMut() -> bool,
) -> Result<(), ClusterError> {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() > Duration::from_secs(secs) {
            return Err(ClusterError::Timeout {
                what: what.to_string(),
                secs,
                log: log.display().to_string(),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn mkdir(path: &Path) -> Result<(), ClusterError> {
    std::fs::create_dir_all(path).map_err(io("creating", path))
}

/// The pid of the node's process, if it runs.
pub fn node_pid(n: &plan::NodePlan) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(n.dir.join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // A killed process nobody has reaped yet is a zombie: not running.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start())?;
    if state.starts_with('Z') || state.starts_with('X') {
        return None;
    }
    // Alive and still in the node's cgroup (a reused pid is someone else's).
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    cg.lines()
        .any(|l| l.ends_with(&format!("/{}", n.cgroup)))
        .then_some(pid)
}

/// Starts the node's process (server or agent) in its cgroup and namespace, recording its pid.
pub fn start_node(
    h: &dyn Host,
    p: &Plan,
    n: &plan::NodePlan,
    moat: &Path,
) -> Result<u32, ClusterError> {
    for d in [n.data_dir(), n.run_dir(), n.log_dir()] {
        mkdir(&d)?;
    }
    let ncg = host::cgroup_root().join(&n.cgroup);
    mkdir(&ncg)?;
    let mut argv = vec![moat.display().to_string()];
    argv.extend(p.node_args(n));
    let pid = h.spawn(
        &ncg.join("cgroup.procs"),
        Some(&n.netns),
        &argv,
        &n.log_file(),
    )?;
    let f = n.dir.join("pid");
    std::fs::write(&f, pid.to_string()).map_err(io("recording the pid", &f))?;
    Ok(pid)
}

/// Creates the cluster and returns when every node is Ready; `progress` hears a line per
/// step. On failure everything made so far is removed.
pub fn create(
    h: &dyn Host,
    spec: &Spec,
    moat: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Plan, ClusterError> {
    let p = plan::plan(spec)?;
    if p.records().exists() || Path::new("/run/netns").join(&p.underlay_netns).exists() {
        return Err(ClusterError::Exists(p.name.clone()));
    }
    mkdir(&p.dir)?;
    save(&p)?;
    match bring_up(h, &p, moat, progress) {
        Ok(()) => Ok(p),
        Err(e) => {
            progress(&format!(
                "creating {} failed; removing what was made",
                p.name
            ));
            if let Err(d) = delete(h, &spec.root, &p.name) {
                tracing::warn!(error = %d, "cleaning up a failed create");
            }
            Err(e)
        }
    }
}

fn bring_up(
    h: &dyn Host,
    p: &Plan,
    moat: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(), ClusterError> {
    let cg = host::cgroup_root().join(&p.cgroup);
    network_up(h, p)?;
    let moat_s = moat.display().to_string();
    let start_node = |n: &plan::NodePlan| start_node(h, p, n, moat);
    let server = p.server();
    start_node(server)?;
    let kc = server.data_dir().join("kubeconfig.yaml");
    wait_for("the API server on node 1", 90, &server.log_file(), || {
        kc.exists() && server.data_dir().join("token").exists()
    })?;
    progress(&format!("control plane up on {}", server.name));
    // The host's way in.
    let pcg = cg.join("proxy");
    mkdir(&pcg)?;
    let port_file = p.dir.join("proxy.port");
    h.spawn(
        &pcg.join("cgroup.procs"),
        None,
        &[
            moat_s.clone(),
            "cluster".into(),
            "proxy".into(),
            "--name".into(),
            p.name.clone(),
            "--root".into(),
            p.dir
                .parent()
                .unwrap_or(Path::new("/"))
                .display()
                .to_string(),
        ],
        &p.dir.join("proxy.log"),
    )?;
    wait_for("the API forwarder", 30, &p.dir.join("proxy.log"), || {
        port_file.exists()
    })?;
    let port = std::fs::read_to_string(&port_file).map_err(io("reading", &port_file))?;
    let text = std::fs::read_to_string(&kc).map_err(io("reading", &kc))?;
    let host_kc = text.replace(&p.api_url(), &format!("https://127.0.0.1:{}", port.trim()));
    std::fs::write(p.kubeconfig(), host_kc)
        .map_err(io("writing the kubeconfig", &p.kubeconfig()))?;
    for n in &p.nodes[1..] {
        start_node(n)?;
    }
    let client = moat_client::Client::from_kubeconfig(&p.kubeconfig())?;
    let mut ready: Vec<String> = Vec::new();
    let start = Instant::now();
    while ready.len() < p.nodes.len() {
        if start.elapsed() > Duration::from_secs(240) {
            let missing: Vec<&str> = p
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .filter(|n| !ready.iter().any(|r| r == n))
                .collect();
            return Err(ClusterError::Timeout {
                what: format!("nodes {}", missing.join(", ")),
                secs: 240,
                log: p.dir.join("<node>/node.log").display().to_string(),
            });
        }
        if let Ok((nodes, _)) = client.list("/api/v1/nodes") {
            for n in nodes {
                let name = n["metadata"]["name"].as_str().unwrap_or("").to_string();
                let is_ready = n["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
                let has_cidr = n["spec"]["podCIDR"].as_str().is_some_and(|c| !c.is_empty());
                if is_ready
                    && has_cidr
                    && !ready.contains(&name)
                    && p.nodes.iter().any(|x| x.name == name)
                {
                    progress(&format!(
                        "node {name} Ready ({})",
                        n["spec"]["podCIDR"].as_str().unwrap_or("")
                    ));
                    ready.push(name);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    for n in p.nodes.iter().filter(|n| n.untrusted) {
        // Journey 3's untrusted worker: only pods that tolerate the taint land here.
        client.merge_patch(
            &format!("/api/v1/nodes/{}", n.name),
            &serde_json::json!({
                "metadata": {"labels": {"example.org/workload": "untrusted"}},
                "spec": {"taints": [{"key": "example.org/workload", "value": "untrusted", "effect": "NoSchedule"}]},
            }),
        )?;
        progress(&format!(
            "node {} labelled and tainted example.org/workload=untrusted",
            n.name
        ));
    }
    Ok(())
}

/// Every mount point under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<String> {
    let root = dir.display().to_string();
    let mut m: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(String::from))
        .filter(|m| m.starts_with(&format!("{root}/")))
        .collect();
    m.sort_by_key(|m| std::cmp::Reverse(m.len()));
    m.dedup();
    m
}

/// Removes cgroup directories depth first (a cgroup goes once it has no processes).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Deletes the cluster: kills everything in its cgroup, unmounts, removes its namespaces,
/// cgroups (in every hierarchy) and files. Works whatever state the cluster is in.
pub fn delete(h: &dyn Host, root: &Path, name: &str) -> Result<(), ClusterError> {
    let p = load(root, name)?;
    let cg = host::cgroup_root().join(&p.cgroup);
    if cg.exists() {
        let _ = std::fs::write(cg.join("cgroup.kill"), "1");
        let populated = || {
            std::fs::read_to_string(cg.join("cgroup.events"))
                .map(|e| e.contains("populated 1"))
                .unwrap_or(false)
        };
        let _ = wait_for("the cluster's processes to end", 20, &p.dir, || {
            !populated()
        });
    }
    for m in mounts_under(&p.dir) {
        let _ = h.run(&["umount", "-l", &m]);
    }
    for n in &p.nodes {
        if Path::new("/run/netns").join(&n.netns).exists() {
            h.run(&["ip", "netns", "del", &n.netns])?;
        }
    }
    if Path::new("/run/netns").join(&p.underlay_netns).exists() {
        h.run(&["ip", "netns", "del", &p.underlay_netns])?;
    }
    // The pods' cgroups live in every controller's hierarchy (cgroup v1) or the one tree (v2).
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in rd.flatten() {
            remove_cgroup_tree(&e.path().join(&p.cgroup));
        }
    }
    remove_cgroup_tree(&Path::new("/sys/fs/cgroup").join(&p.cgroup));
    std::fs::remove_dir_all(&p.dir).map_err(io("removing the cluster's files", &p.dir))
}

/// The node's namespace, for `moat cluster exec`.
pub fn node_netns(p: &Plan, node: &str) -> Result<String, ClusterError> {
    p.nodes
        .iter()
        .find(|n| n.name == node || n.index.to_string() == node)
        .map(|n| n.netns.clone())
        .ok_or_else(|| ClusterError::NoNode {
            cluster: p.name.clone(),
            node: node.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_up_never_touches_the_root_namespace() {
        let p = plan::plan(&Spec {
            name: "t".into(),
            nodes: 3,
            backend: "host-gw".into(),
            cluster_cidr: "10.42.0.0/16".into(),
            service_cidr: "10.43.0.0/16".into(),
            untrusted: 0,
            root: "/tmp/x".into(),
            image_root: "/tmp/i".into(),
            runtime_config: None,
            server_args: vec![],
        })
        .unwrap();
        let h = host::Recording::default();
        network_up(&h, &p).unwrap();
        let log = h.log.lock().unwrap().clone();
        assert!(!log.is_empty());
        for cmd in &log {
            let namespaced =
                cmd.starts_with("ip netns add moat-t-") || cmd.starts_with("ip -n moat-t-");
            assert!(
                namespaced,
                "a command outside the cluster's namespaces: {cmd}"
            );
        }
        assert_eq!(log.iter().filter(|c| c.contains("type veth")).count(), 3);
    }
}

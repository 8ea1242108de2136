//! The policy lab: real packets for `moat netpol lab` and the policy tests.
//!
//! A lab is a host network namespace (the "node") holding a bridge with the pod gateway
//! address, and one network namespace per pod wired to it with a veth pair; nothing has a
//! route out of the machine. br_netfilter is switched on inside the host namespace only, the
//! compiled ruleset is applied there with `nft`, and every pod runs TCP and UDP listeners on
//! its ports. Probes are a TCP connect or a UDP request/response, sent from inside the
//! source pod's namespace with a short timeout and retried before a deny is declared.
//!
//! Each pod is served by one thread that entered the pod's namespace ([`probe::Probers`], also
//! used on live clusters' pods). Dropping the [`Lab`] stops the threads and deletes every namespace it created;
//! [`cleanup_prefix`] removes leftovers of a lab whose process was killed.

pub mod cases;
pub mod manifest;
pub mod probe;

pub use probe::Probers;

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use moat_netpol::Proto;

/// Pod subnet of every lab; the bridge holds `.1`.
pub const LAB_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 1);
pub const LAB_PREFIX_LEN: u8 = 16;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("setting up the lab: `{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
    #[error("setting up the lab: running `{cmd}`")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pod {pod}: entering its network namespace")]
    Setns {
        pod: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pod {pod}: listening on {port}/{proto}")]
    Listen {
        pod: String,
        port: u16,
        proto: Proto,
        #[source]
        source: std::io::Error,
    },
    #[error("pod {pod}: its worker thread stopped")]
    WorkerGone { pod: String },
    #[error("applying the ruleset in the lab")]
    Apply(#[source] moat_netpol::ApplyError),
}

/// One pod of the lab.
#[derive(Debug, Clone)]
pub struct LabPod {
    /// `ns/name`.
    pub id: String,
    pub ip: Ipv4Addr,
    /// Ports to listen on.
    pub listen: Vec<(u16, Proto)>,
}

/// Probe timing: each attempt waits `timeout`; a deny is declared after `attempts` failures.
#[derive(Debug, Clone, Copy)]
pub struct ProbeOpts {
    pub timeout: Duration,
    pub attempts: u32,
}

impl Default for ProbeOpts {
    fn default() -> Self {
        ProbeOpts {
            timeout: Duration::from_millis(250),
            attempts: 2,
        }
    }
}

pub struct Lab {
    prefix: String,
    host: String,
    pods: Vec<LabPod>,
    probers: Probers,
    netns: Vec<String>,
}

fn run(cmd: &[&str]) -> Result<(), LabError> {
    let text = cmd.join(" ");
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .map_err(|source| LabError::Spawn {
            cmd: text.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LabError::Command {
            cmd: text,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Deletes every network namespace whose name starts with `prefix` (leftovers of a killed
/// lab). Returns how many were removed.
pub fn cleanup_prefix(prefix: &str) -> usize {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with(prefix) && run(&["ip", "netns", "del", &name]).is_ok() {
            n += 1;
        }
    }
    n
}

/// The policy table of namespace `ns` as `nft list` prints it, lines trimmed and sorted:
/// two rulesets with equal meaning compare equal regardless of element order.
pub fn policy_table_listing(ns: &str) -> Result<String, LabError> {
    let cmd = [
        "ip",
        "netns",
        "exec",
        ns,
        "nft",
        "list",
        "table",
        "inet",
        moat_netpol::render::TABLE,
    ];
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .map_err(|source| LabError::Spawn {
            cmd: cmd.join(" "),
            source,
        })?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: cmd.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .collect();
    lines.sort();
    Ok(lines.join("\n"))
}

/// A lab name prefix unique to this process and call.
pub fn unique_prefix(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "mlab{tag}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl Lab {
    /// Builds the lab. On error everything created so far is removed.
    pub fn create(prefix: &str, pods: &[LabPod]) -> Result<Lab, LabError> {
        let mut lab = Lab {
            prefix: prefix.to_string(),
            host: format!("{prefix}h"),
            pods: pods.to_vec(),
            probers: Probers::default(),
            netns: Vec::new(),
        };
        lab.build()?;
        Ok(lab)
    }

    fn build(&mut self) -> Result<(), LabError> {
        let h = self.host.clone();
        run(&["ip", "netns", "add", &h])?;
        self.netns.push(h.clone());
        run(&["ip", "-n", &h, "link", "set", "lo", "up"])?;
        run(&["ip", "-n", &h, "link", "add", "br0", "type", "bridge"])?;
        let gw = format!("{LAB_GATEWAY}/{LAB_PREFIX_LEN}");
        run(&["ip", "-n", &h, "addr", "add", &gw, "dev", "br0"])?;
        run(&["ip", "-n", &h, "link", "set", "br0", "up"])?;
        // Bridged pod-to-pod traffic must traverse the IPv4 hooks, in this namespace only.
        run(&[
            "ip",
            "netns",
            "exec",
            &h,
            "sysctl",
            "-qw",
            "net.bridge.bridge-nf-call-iptables=1",
        ])?;
        run(&[
            "ip",
            "netns",
            "exec",
            &h,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])?;
        for (i, pod) in self.pods.clone().iter().enumerate() {
            let ns = format!("{}p{i}", self.prefix);
            run(&["ip", "netns", "add", &ns])?;
            self.netns.push(ns.clone());
            let host_if = format!("v{i}");
            run(&[
                "ip", "-n", &h, "link", "add", &host_if, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            run(&[
                "ip", "-n", &h, "link", "set", &host_if, "master", "br0", "up",
            ])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            let addr = format!("{}/{LAB_PREFIX_LEN}", pod.ip);
            run(&["ip", "-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            let gw = LAB_GATEWAY.to_string();
            run(&["ip", "-n", &ns, "route", "add", "default", "via", &gw])?;
            self.probers
                .add(pod, std::path::Path::new(&format!("/run/netns/{ns}")))?;
        }
        Ok(())
    }

    pub fn host_netns(&self) -> &str {
        &self.host
    }

    pub fn pods(&self) -> &[LabPod] {
        &self.pods
    }

    /// An applier that runs `nft` in the lab's host namespace.
    pub fn nft(&self) -> moat_netpol::apply::Nft {
        moat_netpol::apply::Nft {
            netns: Some(self.host.clone()),
        }
    }

    /// Forgets every tracked connection in the lab. Policies judge new connections only
    /// (replies and established flows pass, as NETPOL.md rule 8 wants), so a truth table
    /// taken right after a policy change must not see flows from before it: a reused
    /// ephemeral UDP port would otherwise ride an old, allowed conntrack entry.
    pub fn flush_conntrack(&self) -> Result<(), LabError> {
        run(&["ip", "netns", "exec", &self.host, "conntrack", "-F"]).or_else(|e| match e {
            // conntrack exits 1 with "0 flow entries" on an empty table on some versions.
            LabError::Command { ref stderr, .. } if stderr.contains("0 flow entries") => Ok(()),
            e => Err(e),
        })
    }

    /// Runs the probes in parallel; results in the same order.
    pub fn probe_all(
        &self,
        probes: &[(usize, usize, u16, Proto)],
        opts: ProbeOpts,
    ) -> Result<Vec<bool>, LabError> {
        self.probers.probe_all(probes, opts)
    }

    pub fn probe(
        &self,
        from: usize,
        to: usize,
        port: u16,
        proto: Proto,
        opts: ProbeOpts,
    ) -> Result<bool, LabError> {
        self.probers.probe(from, to, port, proto, opts)
    }

    /// Probes an arbitrary address (e.g. a Service VIP) from pod `from`.
    pub fn probe_addr(
        &self,
        from: usize,
        dst: Ipv4Addr,
        port: u16,
        proto: Proto,
        opts: ProbeOpts,
    ) -> Result<bool, LabError> {
        self.probers.probe_addr(from, dst, port, proto, opts)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The probers' threads hold sockets in the namespaces: stop them first.
        self.probers.stop();
        for ns in self.netns.iter().rev() {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

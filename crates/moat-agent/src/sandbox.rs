//! The pod sandbox's host side: a network namespace bind-mounted on a file under the run dir
//! (so it outlives the agent process), and the files every container of the pod shares.

use std::io;
use std::path::Path;
use std::sync::Mutex;

/// Creating and removing persistent network namespaces; the fake lets the agent's logic run
/// without root.
pub trait NetnsOps: Send + Sync {
    fn create(&self, path: &Path) -> io::Result<()>;
    /// Unmounts and removes; a missing namespace is not an error.
    fn remove(&self, path: &Path) -> io::Result<()>;
}

pub struct RealNetns;

impl NetnsOps for RealNetns {
    fn create(&self, path: &Path) -> io::Result<()> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::File::create(path)?;
        let target = path.to_path_buf();
        // unshare(CLONE_NEWNET) moves only the calling thread: do it on a throwaway thread so
        // the agent's own threads stay in the node's namespace.
        let res = std::thread::spawn(move || -> io::Result<()> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
            nix::mount::mount(
                Some(Path::new("/proc/thread-self/ns/net")),
                &target,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )?;
            Ok(())
        })
        .join()
        .map_err(|_| io::Error::other("netns thread panicked"))?;
        if res.is_err() {
            let _ = std::fs::remove_file(path);
        }
        res?;
        // Pods expect a working loopback; a fresh namespace has it down.
        let st = std::process::Command::new("nsenter")
            .arg(format!("--net={}", path.display()))
            .args(["ip", "link", "set", "lo", "up"])
            .status();
        match st {
            Ok(s) if s.success() => Ok(()),
            other => {
                let _ = self.remove(path);
                Err(io::Error::other(format!(
                    "bringing lo up in {}: {other:?}",
                    path.display()
                )))
            }
        }
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[derive(Default)]
pub struct FakeNetns {
    pub calls: Mutex<Vec<String>>,
}

impl NetnsOps for FakeNetns {
    fn create(&self, path: &Path) -> io::Result<()> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(path, b"")?;
        self.calls
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .push(format!("create {}", path.display()));
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let _ = std::fs::remove_file(path);
        self.calls
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .push(format!("remove {}", path.display()));
        Ok(())
    }
}

/// /etc/hosts for a pod, as the kubelet writes it.
pub fn hosts_file(hostname: &str, ip: Option<&str>) -> String {
    let mut s = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    if let Some(ip) = ip {
        s.push_str(&format!("{ip}\t{hostname}\n"));
    }
    s
}

/// The node's resolv.conf minus loopback resolvers (unreachable from a pod's namespace).
pub fn resolv_conf(host: &str) -> String {
    host.lines()
        .filter(|l| {
            let mut w = l.split_whitespace();
            !(w.next() == Some("nameserver")
                && w.next()
                    .is_some_and(|a| a.starts_with("127.") || a == "::1"))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_has_pod_entry() {
        let h = hosts_file("web-1", Some("10.42.0.7"));
        assert!(h.contains("127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with("10.42.0.7\tweb-1\n"));
    }

    #[test]
    fn loopback_resolvers_are_dropped() {
        let r = resolv_conf("nameserver 127.0.0.53\nnameserver 192.0.2.53\nsearch lan\n");
        assert_eq!(r, "nameserver 192.0.2.53\nsearch lan\n");
    }
}

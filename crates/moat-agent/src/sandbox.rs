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
    /// The pod's IPC and/or UTS namespace (hostname set), bind-mounted on `ipc` and `uts` so
    /// every container of the pod joins the same ones, across agent restarts.
    fn create_ipc_uts(
        &self,
        ipc: Option<&Path>,
        uts: Option<&Path>,
        hostname: &str,
    ) -> io::Result<()>;
    /// The pod's `/dev/shm`: a 64 MiB tmpfs on directory `path` (containerd's sandbox shm).
    fn mount_shm(&self, path: &Path) -> io::Result<()>;
    /// Unmounts (lazily) and removes what [`NetnsOps::create_ipc_uts`] or
    /// [`NetnsOps::mount_shm`] made; a missing one is not an error.
    fn release(&self, path: &Path) -> io::Result<()>;
}

fn umount_lazy(path: &Path) -> io::Result<()> {
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
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
        umount_lazy(path)?;
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn create_ipc_uts(
        &self,
        ipc: Option<&Path>,
        uts: Option<&Path>,
        hostname: &str,
    ) -> io::Result<()> {
        use nix::sched::CloneFlags;
        let mut flags = CloneFlags::empty();
        let mut targets = Vec::new();
        for (p, flag, ns) in [
            (ipc, CloneFlags::CLONE_NEWIPC, "ipc"),
            (uts, CloneFlags::CLONE_NEWUTS, "uts"),
        ] {
            let Some(p) = p else { continue };
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d)?;
            }
            std::fs::File::create(p)?;
            flags |= flag;
            targets.push((ns, p.to_path_buf()));
        }
        if targets.is_empty() {
            return Ok(());
        }
        let host = hostname.to_string();
        let undo: Vec<std::path::PathBuf> = targets.iter().map(|t| t.1.clone()).collect();
        // As for the netns: unshare on a throwaway thread, which is all that moves.
        let res = std::thread::spawn(move || -> io::Result<()> {
            nix::sched::unshare(flags)?;
            if flags.contains(CloneFlags::CLONE_NEWUTS) {
                nix::unistd::sethostname(&host)?;
            }
            for (ns, target) in &targets {
                nix::mount::mount(
                    Some(Path::new(&format!("/proc/thread-self/ns/{ns}"))),
                    target.as_path(),
                    None::<&str>,
                    nix::mount::MsFlags::MS_BIND,
                    None::<&str>,
                )?;
            }
            Ok(())
        })
        .join()
        .map_err(|_| io::Error::other("ipc/uts namespace thread panicked"))?;
        if res.is_err() {
            for p in &undo {
                let _ = self.release(p);
            }
        }
        res
    }

    fn mount_shm(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)?;
        use nix::mount::MsFlags;
        nix::mount::mount(
            Some("shm"),
            path,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=1777,size=65536k"),
        )
        .map_err(io::Error::from)
    }

    fn release(&self, path: &Path) -> io::Result<()> {
        umount_lazy(path)?;
        let r = if path.is_dir() {
            std::fs::remove_dir(path)
        } else {
            std::fs::remove_file(path)
        };
        match r {
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
        self.record(format!("remove {}", path.display()))
    }

    fn create_ipc_uts(
        &self,
        ipc: Option<&Path>,
        uts: Option<&Path>,
        hostname: &str,
    ) -> io::Result<()> {
        let mut names = Vec::new();
        for p in [ipc, uts].into_iter().flatten() {
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d)?;
            }
            std::fs::write(p, b"")?;
            names.push(p.display().to_string());
        }
        self.record(format!("ipc-uts {} {hostname}", names.join(" ")))
    }

    fn mount_shm(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)?;
        self.record(format!("shm {}", path.display()))
    }

    fn release(&self, path: &Path) -> io::Result<()> {
        let _ = std::fs::remove_file(path).or_else(|_| std::fs::remove_dir(path));
        self.record(format!("release {}", path.display()))
    }
}

impl FakeNetns {
    fn record(&self, call: String) -> io::Result<()> {
        self.calls
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .push(call);
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

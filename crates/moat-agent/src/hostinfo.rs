//! Facts about the host the node reports and the pod lifecycle uses, behind [`HostFacts`] so
//! the agent's API side and sandbox files are tested with a fake host.

/// What the agent reads about its host.
pub trait HostFacts: Send + Sync {
    /// The first non-loopback IPv4 address outside the pod bridge.
    fn ipv4(&self) -> Option<String>;
    fn hostname(&self) -> Option<String>;
    fn cpus(&self) -> u32;
    fn memory_kib(&self) -> u64;
    fn kernel(&self) -> String;
    /// `PRETTY_NAME` of /etc/os-release.
    fn os_image(&self) -> String;
    /// The host's /etc/resolv.conf.
    fn resolv_conf(&self) -> String;
}

pub struct RealHost;

impl HostFacts for RealHost {
    fn ipv4(&self) -> Option<String> {
        let addrs = nix::ifaddrs::getifaddrs().ok()?;
        for a in addrs {
            // The pod bridge and the vxlan device hold pod-network addresses, not the node's.
            if matches!(a.interface_name.as_str(), "lo" | "cni0" | "flannel.1") {
                continue;
            }
            if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
                let ip = sin.ip();
                if !ip.is_loopback() {
                    return Some(ip.to_string());
                }
            }
        }
        None
    }

    fn hostname(&self) -> Option<String> {
        nix::unistd::gethostname().ok()?.into_string().ok()
    }

    fn cpus(&self) -> u32 {
        std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
    }

    fn memory_kib(&self) -> u64 {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
            })
            .unwrap_or(0)
    }

    fn kernel(&self) -> String {
        nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn os_image(&self) -> String {
        std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|t| os_release_name(&t))
            .unwrap_or_else(|| "Linux".into())
    }

    fn resolv_conf(&self) -> String {
        std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
    }
}

/// `PRETTY_NAME` from os-release text (quotes removed).
pub fn os_release_name(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim().trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
}

/// A host with fixed facts.
#[derive(Debug, Clone)]
pub struct FakeHost {
    pub ipv4: Option<String>,
    pub hostname: String,
    pub cpus: u32,
    pub memory_kib: u64,
    pub resolv_conf: String,
}

impl Default for FakeHost {
    fn default() -> Self {
        FakeHost {
            ipv4: Some("192.0.2.10".into()),
            hostname: "host-1".into(),
            cpus: 4,
            memory_kib: 8 << 20,
            resolv_conf: "nameserver 192.0.2.53\n".into(),
        }
    }
}

impl HostFacts for FakeHost {
    fn ipv4(&self) -> Option<String> {
        self.ipv4.clone()
    }
    fn hostname(&self) -> Option<String> {
        Some(self.hostname.clone())
    }
    fn cpus(&self) -> u32 {
        self.cpus
    }
    fn memory_kib(&self) -> u64 {
        self.memory_kib
    }
    fn kernel(&self) -> String {
        "6.1.0-fake".into()
    }
    fn os_image(&self) -> String {
        "Debian GNU/Linux 12 (bookworm)".into()
    }
    fn resolv_conf(&self) -> String {
        self.resolv_conf.clone()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn os_release_pretty_name() {
        let t = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            super::os_release_name(t).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(super::os_release_name("ID=x\n"), None);
    }
}

//! Wiring a sandbox into the pod's network namespace the way Kata's tcfilter model does: the
//! CNI veth stays where it is, a tap is added beside it, two tc ingress filters splice
//! veth⇄tap, and the guest NIC takes the veth's MAC and MTU while the agent sets its
//! addresses and routes. So any CNI plugin's result works unchanged.
//!
//! Reading the namespace (`ip -j`) and changing it (`ip`, `tc`) go through [`NetCmd`], run in
//! the namespace with `nsenter --net=PATH`; the plan is computed sans-IO from their output.

use moat_vm_proto::{Interface, NetworkConfig, Route};
use serde_json::Value;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

/// The tap's name inside the pod netns.
pub const TAP: &str = "tap0_moat";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("running {cmd} in network namespace {netns}")]
    Spawn {
        cmd: String,
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{cmd} in network namespace {netns} failed: {stderr}")]
    Failed {
        cmd: String,
        netns: String,
        stderr: String,
    },
    #[error("parsing `ip -j` output")]
    Json(#[from] serde_json::Error),
    #[error("network namespace {0} has no interface with an IPv4 address (is CNI done with it?)")]
    NoInterface(String),
    #[error("creating the tap in network namespace {netns}")]
    Tap {
        netns: String,
        #[source]
        source: std::io::Error,
    },
}

/// Runs a command inside a network namespace and returns its stdout.
pub trait NetCmd {
    fn run(&self, netns: &Path, argv: &[&str]) -> Result<String, NetError>;
}

pub struct Nsenter;

impl NetCmd for Nsenter {
    fn run(&self, netns: &Path, argv: &[&str]) -> Result<String, NetError> {
        let cmd = argv.join(" ");
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .arg("--")
            .args(argv)
            .output()
            .map_err(|source| NetError::Spawn {
                cmd: cmd.clone(),
                netns: netns.display().to_string(),
                source,
            })?;
        if !out.status.success() {
            return Err(NetError::Failed {
                cmd,
                netns: netns.display().to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub veth: String,
    pub mac: String,
    pub mtu: u32,
    pub guest: NetworkConfig,
}

/// From `ip -j addr` and `ip -j route` of the pod netns: the veth to splice and the guest's
/// configuration (its addresses and every route that is not a kernel subnet route).
pub fn plan(addrs: &str, routes: &str, netns: &str) -> Result<Plan, NetError> {
    let addrs: Vec<Value> = serde_json::from_str(addrs)?;
    let link = addrs
        .iter()
        .find(|l| {
            l["ifname"] != "lo"
                && l["ifname"] != TAP
                && l["addr_info"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x["family"] == "inet"))
        })
        .ok_or_else(|| NetError::NoInterface(netns.to_string()))?;
    let name = link["ifname"].as_str().unwrap_or_default().to_string();
    let mac = link["address"].as_str().unwrap_or_default().to_string();
    let mtu = link["mtu"].as_u64().unwrap_or(1500) as u32;
    let addresses = link["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["family"] == "inet")
        .filter_map(|a| {
            Some(format!(
                "{}/{}",
                a["local"].as_str()?,
                a["prefixlen"].as_u64()?
            ))
        })
        .collect();
    let routes: Vec<Value> = serde_json::from_str(if routes.trim().is_empty() {
        "[]"
    } else {
        routes
    })?;
    let guest_routes = routes
        .iter()
        .filter(|r| r["dev"] == name.as_str() && r["protocol"] != "kernel")
        .filter_map(|r| {
            Some(Route {
                dest: r["dst"].as_str()?.to_string(),
                gateway: r["gateway"].as_str().map(str::to_string),
                device: name.clone(),
            })
        })
        .collect();
    Ok(Plan {
        veth: name.clone(),
        mac: mac.clone(),
        mtu,
        guest: NetworkConfig {
            interfaces: vec![Interface {
                mac,
                current_mac: None,
                name,
                mtu,
                addresses,
            }],
            routes: guest_routes,
        },
    })
}

/// The commands that splice veth and tap (after the tap exists).
pub fn splice_commands(p: &Plan) -> Vec<Vec<String>> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let mtu = p.mtu.to_string();
    vec![
        s(&["ip", "link", "set", TAP, "mtu", &mtu, "up"]),
        s(&["tc", "qdisc", "add", "dev", &p.veth, "ingress"]),
        s(&[
            "tc", "filter", "add", "dev", &p.veth, "parent", "ffff:", "protocol", "all", "u32",
            "match", "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", TAP,
        ]),
        s(&["tc", "qdisc", "add", "dev", TAP, "ingress"]),
        s(&[
            "tc", "filter", "add", "dev", TAP, "parent", "ffff:", "protocol", "all", "u32",
            "match", "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", &p.veth,
        ]),
    ]
}

/// Opens a non-persistent tap inside `netns`: it vanishes with the last descriptor, i.e. with
/// QEMU, so a killed sandbox leaves no tap behind.
pub fn open_tap(netns: &Path) -> Result<OwnedFd, NetError> {
    let err = |source| NetError::Tap {
        netns: netns.display().to_string(),
        source,
    };
    let ns = std::fs::File::open(netns).map_err(err)?;
    // setns(CLONE_NEWNET) only changes the calling thread, so do it on a throwaway thread.
    let r = std::thread::spawn(move || -> std::io::Result<OwnedFd> {
        use std::os::fd::AsRawFd;
        // SAFETY: ns is an open netns file; this thread ends right after.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: opening a device node with a valid C string.
        let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is fresh and ours.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ifreq is plain old data.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (i, b) in TAP.bytes().enumerate() {
            req.ifr_name[i] = b as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF with a valid ifreq.
        if unsafe { libc::ioctl(owned.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(owned)
    })
    .join()
    .map_err(|_| err(std::io::Error::other("tap thread panicked")))?;
    r.map_err(err)
}

/// Reads the namespace, opens the tap and splices it. Returns the plan and the tap fd.
pub fn setup(cmd: &dyn NetCmd, netns: &Path) -> Result<(Plan, OwnedFd), NetError> {
    let ns = netns.display().to_string();
    let addrs = cmd.run(netns, &["ip", "-j", "addr", "show"])?;
    let routes = cmd.run(netns, &["ip", "-j", "-4", "route", "show"])?;
    let p = plan(&addrs, &routes, &ns)?;
    let tap = open_tap(netns)?;
    for c in splice_commands(&p) {
        let argv: Vec<&str> = c.iter().map(String::as_str).collect();
        if let Err(e) = cmd.run(netns, &argv) {
            let _ = teardown_with(cmd, netns, &p.veth);
            return Err(e);
        }
    }
    Ok((p, tap))
}

pub fn teardown_with(cmd: &dyn NetCmd, netns: &Path, veth: &str) -> Result<(), NetError> {
    let _ = cmd.run(netns, &["tc", "qdisc", "del", "dev", veth, "ingress"]);
    let _ = cmd.run(netns, &["ip", "link", "del", TAP]);
    Ok(())
}

/// Removes the splice from a namespace whose veth name is recorded in the sandbox dir.
pub fn teardown(record: &Path) -> Result<(), NetError> {
    // The record holds "<netns path>\n<veth>".
    let text = std::fs::read_to_string(record).unwrap_or_default();
    let mut it = text.lines();
    if let (Some(ns), Some(veth)) = (it.next(), it.next()) {
        teardown_with(&Nsenter, Path::new(ns), veth)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    const ADDRS: &str = r#"[{"ifindex":1,"ifname":"lo","mtu":65536,"address":"00:00:00:00:00:00","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
      {"ifindex":3,"ifname":"eth0","mtu":1450,"address":"0a:58:0a:2a:00:05","addr_info":[{"family":"inet","local":"10.42.0.5","prefixlen":24},{"family":"inet6","local":"fe80::1","prefixlen":64}]}]"#;
    const ROUTES: &str = r#"[{"dst":"default","gateway":"10.42.0.1","dev":"eth0"},
      {"dst":"10.42.0.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"10.42.0.5"},
      {"dst":"10.43.0.0/16","gateway":"10.42.0.1","dev":"eth0"}]"#;

    #[test]
    fn plan_takes_the_veth_identity_and_non_kernel_routes() {
        let p = plan(ADDRS, ROUTES, "/ns").unwrap();
        assert_eq!(p.veth, "eth0");
        assert_eq!(p.mtu, 1450);
        let i = &p.guest.interfaces[0];
        assert_eq!(i.mac, "0a:58:0a:2a:00:05");
        assert_eq!(i.addresses, ["10.42.0.5/24"]);
        let dests: Vec<_> = p.guest.routes.iter().map(|r| r.dest.as_str()).collect();
        assert_eq!(dests, ["default", "10.43.0.0/16"]);
        assert!(matches!(
            plan(r#"[{"ifname":"lo","addr_info":[]}]"#, "[]", "/ns"),
            Err(NetError::NoInterface(_))
        ));
    }

    struct Rec(RefCell<Vec<String>>, bool);
    impl NetCmd for Rec {
        fn run(&self, _: &Path, argv: &[&str]) -> Result<String, NetError> {
            let line = argv.join(" ");
            self.0.borrow_mut().push(line.clone());
            if self.1 && line.starts_with("tc filter add dev tap0_moat") {
                return Err(NetError::Failed {
                    cmd: line,
                    netns: "/ns".into(),
                    stderr: "boom".into(),
                });
            }
            Ok(String::new())
        }
    }

    #[test]
    fn splice_filters_redirect_both_ways() {
        let p = plan(ADDRS, ROUTES, "/ns").unwrap();
        let cmds: Vec<String> = splice_commands(&p).iter().map(|c| c.join(" ")).collect();
        assert!(
            cmds.iter()
                .any(|c| c.contains("dev eth0 parent ffff:")
                    && c.ends_with("redirect dev tap0_moat"))
        );
        assert!(
            cmds.iter()
                .any(|c| c.contains("dev tap0_moat parent ffff:")
                    && c.ends_with("redirect dev eth0"))
        );
        assert_eq!(cmds[0], "ip link set tap0_moat mtu 1450 up");
        let r = Rec(RefCell::new(Vec::new()), false);
        teardown_with(&r, Path::new("/ns"), "eth0").unwrap();
        assert_eq!(
            r.0.borrow().as_slice(),
            ["tc qdisc del dev eth0 ingress", "ip link del tap0_moat"]
        );
    }
}

//! [`HostNet`] through iproute2's `ip -j` and `bridge -j` (JSON output), in the calling
//! process's network namespace.

use std::net::Ipv4Addr;
use std::process::Command;

use ipnet::Ipv4Net;
use serde_json::Value;

use crate::{Fdb, HostNet, HostNetError, Link, Mac, Neigh, Op, Route, VxlanInfo, VxlanSpec};

/// The real kernel, through iproute2.
#[derive(Debug, Clone, Default)]
pub struct Iproute2;

fn run(prog: &str, args: &[String]) -> Result<String, HostNetError> {
    let cmd = format!("{prog} {}", args.join(" "));
    let out = Command::new(prog)
        .args(args)
        .output()
        .map_err(|source| HostNetError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(HostNetError::Failed {
            cmd,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_json(prog: &str, args: &[&str]) -> Result<Vec<Value>, HostNetError> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let text = run(prog, &args)?;
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(&text).map_err(|source| HostNetError::Parse {
        cmd: format!("{prog} {}", args.join(" ")),
        source,
    })
}

fn run_args(prog: &str, args: Vec<String>) -> Result<(), HostNetError> {
    run(prog, &args).map(|_| ())
}

/// A route destination as `ip -j route` prints it: `default`, `a.b.c.d` or `a.b.c.d/n`.
fn parse_dst(s: &str) -> Option<Ipv4Net> {
    if s == "default" {
        return Some(Ipv4Net::default());
    }
    if s.contains('/') {
        return s.parse().ok();
    }
    s.parse::<Ipv4Addr>()
        .ok()
        .and_then(|a| Ipv4Net::new(a, 32).ok())
}

fn str_of<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

/// Parses `ip -j -d addr show` output.
pub(crate) fn parse_links(links: &[Value]) -> Vec<Link> {
    links
        .iter()
        .filter_map(|l| {
            let name = str_of(l, "ifname")?.to_string();
            let flags: Vec<&str> = l["flags"]
                .as_array()
                .map(|f| f.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let addrs = l["addr_info"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter(|a| str_of(a, "family") == Some("inet"))
                        .filter_map(|a| {
                            let ip: Ipv4Addr = str_of(a, "local")?.parse().ok()?;
                            let len = u8::try_from(a["prefixlen"].as_u64()?).ok()?;
                            Ipv4Net::new(ip, len).ok()
                        })
                        .collect()
                })
                .unwrap_or_default();
            let info = &l["linkinfo"];
            let vxlan = (str_of(info, "info_kind") == Some("vxlan")).then(|| {
                let d = &info["info_data"];
                VxlanInfo {
                    vni: d["id"]
                        .as_u64()
                        .and_then(|v| u32::try_from(v).ok())
                        .unwrap_or(0),
                    port: d["port"]
                        .as_u64()
                        .and_then(|v| u16::try_from(v).ok())
                        .unwrap_or(0),
                    local: str_of(d, "local").and_then(|s| s.parse().ok()),
                    // iproute2 prints `"learning": false` for a device made with nolearning.
                    learning: d["learning"].as_bool().unwrap_or(false),
                }
            });
            Some(Link {
                name,
                mtu: l["mtu"]
                    .as_u64()
                    .and_then(|v| u32::try_from(v).ok())
                    .unwrap_or(0),
                mac: str_of(l, "address").and_then(|m| m.parse::<Mac>().ok()),
                up: flags.contains(&"UP"),
                addrs,
                vxlan,
            })
        })
        .collect()
}

pub(crate) fn parse_routes(routes: &[Value]) -> Vec<Route> {
    routes
        .iter()
        .filter(|r| str_of(r, "type").is_none_or(|t| t == "unicast"))
        .filter_map(|r| {
            Some(Route {
                dst: parse_dst(str_of(r, "dst")?)?,
                via: str_of(r, "gateway").and_then(|g| g.parse().ok()),
                dev: str_of(r, "dev")?.to_string(),
                onlink: r["flags"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| x == "onlink")),
            })
        })
        .collect()
}

impl HostNet for Iproute2 {
    fn links(&self) -> Result<Vec<Link>, HostNetError> {
        Ok(parse_links(&run_json("ip", &["-j", "-d", "addr", "show"])?))
    }

    fn create_vxlan(&self, s: &VxlanSpec) -> Result<(), HostNetError> {
        run_args(
            "ip",
            [
                "link",
                "add",
                &s.name,
                "type",
                "vxlan",
                "id",
                &s.vni.to_string(),
                "local",
                &s.local.to_string(),
                "dev",
                &s.dev,
                "dstport",
                &s.port.to_string(),
                "nolearning",
            ]
            .iter()
            .map(|x| x.to_string())
            .collect(),
        )?;
        run_args(
            "ip",
            ["link", "set", &s.name, "mtu", &s.mtu.to_string(), "up"]
                .iter()
                .map(|x| x.to_string())
                .collect(),
        )
    }

    fn delete_link(&self, name: &str) -> Result<(), HostNetError> {
        run_args("ip", vec!["link".into(), "del".into(), name.into()])
    }

    fn ensure_addr(&self, dev: &str, addr: Ipv4Net) -> Result<(), HostNetError> {
        run_args(
            "ip",
            vec![
                "addr".into(),
                "replace".into(),
                addr.to_string(),
                "dev".into(),
                dev.into(),
            ],
        )
    }

    fn routes(&self) -> Result<Vec<Route>, HostNetError> {
        Ok(parse_routes(&run_json(
            "ip",
            &["-j", "-4", "route", "show", "table", "main"],
        )?))
    }

    fn neighs(&self, dev: &str) -> Result<Vec<Neigh>, HostNetError> {
        Ok(run_json(
            "ip",
            &["-j", "-4", "neigh", "show", "dev", dev, "nud", "permanent"],
        )?
        .iter()
        .filter_map(|n| {
            Some(Neigh {
                ip: str_of(n, "dst")?.parse().ok()?,
                mac: str_of(n, "lladdr")?.parse().ok()?,
                dev: dev.to_string(),
            })
        })
        .collect())
    }

    fn fdb(&self, dev: &str) -> Result<Vec<Fdb>, HostNetError> {
        Ok(run_json("bridge", &["-j", "fdb", "show", "dev", dev])?
            .iter()
            .filter_map(|e| {
                Some(Fdb {
                    mac: str_of(e, "mac")?.parse().ok()?,
                    dst: str_of(e, "dst")?.parse().ok()?,
                    dev: dev.to_string(),
                })
            })
            .collect())
    }

    fn apply(&self, op: &Op) -> Result<(), HostNetError> {
        let v = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        match op {
            Op::AddNeigh(n) => run_args(
                "ip",
                v(&[
                    "neigh",
                    "replace",
                    &n.ip.to_string(),
                    "lladdr",
                    &n.mac.to_string(),
                    "dev",
                    &n.dev,
                    "nud",
                    "permanent",
                ]),
            ),
            Op::DelNeigh(n) => {
                run_args("ip", v(&["neigh", "del", &n.ip.to_string(), "dev", &n.dev]))
            }
            Op::AddFdb(e) => run_args(
                "bridge",
                v(&[
                    "fdb",
                    "replace",
                    &e.mac.to_string(),
                    "dev",
                    &e.dev,
                    "dst",
                    &e.dst.to_string(),
                    "self",
                    "permanent",
                ]),
            ),
            Op::DelFdb(e) => run_args(
                "bridge",
                v(&[
                    "fdb",
                    "del",
                    &e.mac.to_string(),
                    "dev",
                    &e.dev,
                    "dst",
                    &e.dst.to_string(),
                    "self",
                ]),
            ),
            Op::AddRoute(r) | Op::DelRoute(r) => {
                let verb = if matches!(op, Op::AddRoute(_)) {
                    "replace"
                } else {
                    "del"
                };
                let mut a = v(&["route", verb, &r.dst.to_string()]);
                if let Some(g) = r.via {
                    a.extend(v(&["via", &g.to_string()]));
                }
                a.extend(v(&["dev", &r.dev]));
                if r.onlink && verb == "replace" {
                    a.push("onlink".into());
                }
                run_args("ip", a)
            }
        }
    }

    fn gateway_to(&self, ip: Ipv4Addr) -> Result<Option<Ipv4Addr>, HostNetError> {
        let r = run_json("ip", &["-j", "-4", "route", "get", &ip.to_string()])?;
        Ok(r.first()
            .and_then(|r| str_of(r, "gateway"))
            .and_then(|g| g.parse().ok()))
    }

    fn sysctl(&self, key: &str, value: &str) -> Result<(), HostNetError> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        std::fs::write(&path, value).map_err(|source| HostNetError::Sysctl {
            key: key.to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn routes_parse_default_host_and_onlink() {
        let r = parse_routes(&[
            json!({"dst": "default", "gateway": "192.168.1.1", "dev": "eth0", "flags": []}),
            json!({"dst": "10.42.1.0/24", "gateway": "10.42.1.0", "dev": "flannel.1", "flags": ["onlink"]}),
            json!({"dst": "10.0.0.9", "dev": "eth0", "flags": []}),
            json!({"type": "blackhole", "dst": "10.9.0.0/16", "flags": []}),
        ]);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].dst, Ipv4Net::default());
        assert!(r[1].onlink);
        assert_eq!(r[1].via, Some("10.42.1.0".parse().unwrap()));
        assert_eq!(r[2].dst, "10.0.0.9/32".parse().unwrap());
    }

    #[test]
    fn vxlan_link_parses() {
        let l = parse_links(&[json!({
            "ifname": "flannel.1", "mtu": 1450, "address": "0a:0b:0c:0d:0e:0f", "flags": ["BROADCAST", "UP"],
            "addr_info": [{"family": "inet", "local": "10.42.0.0", "prefixlen": 32}],
            "linkinfo": {"info_kind": "vxlan", "info_data": {"id": 1, "local": "192.168.0.2", "port": 8472, "learning": false}}
        })]);
        assert_eq!(l[0].vxlan.as_ref().unwrap().vni, 1);
        assert!(l[0].up);
        assert_eq!(l[0].addrs, vec!["10.42.0.0/32".parse::<Ipv4Net>().unwrap()]);
    }
}

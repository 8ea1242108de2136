//! The cluster's network configuration: the cluster CIDR and the backend, carried from the
//! server to every agent in flannel's own format (`net-conf.json` of the `kube-flannel-cfg`
//! ConfigMap in `kube-system`), and the checks the server makes before it starts.

use std::fmt;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde_json::{Value, json};

/// The ConfigMap (namespace, name, key) that carries [`NetConf`], as flannel's manifests name it.
pub const CONFIGMAP_NAMESPACE: &str = "kube-system";
pub const CONFIGMAP_NAME: &str = "kube-flannel-cfg";
pub const CONFIGMAP_KEY: &str = "net-conf.json";

/// How nodes reach each other's pod subnets (the names k3s's `--flannel-backend` takes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Vxlan,
    HostGw,
    /// The user's own CNI config does the networking; moat programs nothing.
    None,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Vxlan => "vxlan",
            Backend::HostGw => "host-gw",
            Backend::None => "none",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    #[error("unknown flannel backend {0:?}: use vxlan, host-gw or none")]
    UnknownBackend(String),
    #[error("{what} {value:?} is not an IPv4 CIDR like 10.42.0.0/16")]
    BadCidr {
        what: &'static str,
        value: String,
        #[source]
        source: moat_api::cidr::CidrError,
    },
    #[error("{what} {value:?} has host bits set: the network is {network}")]
    HostBits {
        what: &'static str,
        value: String,
        network: Ipv4Net,
    },
    #[error(
        "the cluster CIDR {cluster} overlaps the service CIDR {service}: pod and service addresses must not collide"
    )]
    Overlap { cluster: Ipv4Net, service: Ipv4Net },
    #[error(
        "--node-cidr-mask-size {mask} does not fit the cluster CIDR {cluster}: it must be between /{} and /28",
        cluster.prefix_len()
    )]
    Mask { mask: u8, cluster: Ipv4Net },
    #[error("net-conf.json is not valid: {0}")]
    NetConf(String),
}

impl FromStr for Backend {
    type Err = ConfError;
    fn from_str(s: &str) -> Result<Backend, ConfError> {
        match s {
            "vxlan" => Ok(Backend::Vxlan),
            "host-gw" => Ok(Backend::HostGw),
            "none" => Ok(Backend::None),
            _ => Err(ConfError::UnknownBackend(s.to_string())),
        }
    }
}

/// The VNI and UDP port flannel uses by default (4789 is the IANA port; make it possible).
pub const DEFAULT_VNI: u32 = 1;
pub const DEFAULT_PORT: u16 = 8472;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConf {
    pub network: Ipv4Net,
    pub backend: Backend,
    pub vni: u32,
    pub port: u16,
}

/// Parses a CIDR, insisting on the network address (10.42.0.0/16, not 10.42.3.4/16).
pub fn parse_cidr(what: &'static str, value: &str) -> Result<Ipv4Net, ConfError> {
    let n = moat_api::cidr::parse_interface(value).map_err(|source| ConfError::BadCidr {
        what,
        value: value.to_string(),
        source,
    })?;
    if n.trunc() != n {
        return Err(ConfError::HostBits {
            what,
            value: value.to_string(),
            network: n.trunc(),
        });
    }
    Ok(n)
}

/// The server's start-up check of `--cluster-cidr`, `--service-cidr` and
/// `--node-cidr-mask-size`: nothing starts when they do not fit together.
pub fn check_cidrs(
    cluster: &str,
    service: &str,
    mask: u8,
) -> Result<(Ipv4Net, Ipv4Net), ConfError> {
    let c = parse_cidr("--cluster-cidr", cluster)?;
    let s = parse_cidr("--service-cidr", service)?;
    if c.contains(&s.network()) || s.contains(&c.network()) {
        return Err(ConfError::Overlap {
            cluster: c,
            service: s,
        });
    }
    if mask < c.prefix_len() || mask > 28 {
        return Err(ConfError::Mask { mask, cluster: c });
    }
    Ok((c, s))
}

impl NetConf {
    pub fn new(network: Ipv4Net, backend: Backend) -> NetConf {
        NetConf {
            network,
            backend,
            vni: DEFAULT_VNI,
            port: DEFAULT_PORT,
        }
    }

    /// flannel's `net-conf.json`.
    pub fn to_json(&self) -> Value {
        let mut backend = json!({"Type": self.backend.as_str()});
        if self.backend == Backend::Vxlan {
            backend["VNI"] = json!(self.vni);
            backend["Port"] = json!(self.port);
        }
        json!({"Network": self.network.to_string(), "Backend": backend})
    }

    pub fn from_json(text: &str) -> Result<NetConf, ConfError> {
        let v: Value = serde_json::from_str(text).map_err(|e| ConfError::NetConf(e.to_string()))?;
        let network = v["Network"]
            .as_str()
            .ok_or_else(|| ConfError::NetConf("Network is missing".into()))?;
        let network = parse_cidr("Network", network)?;
        let backend: Backend = v["Backend"]["Type"].as_str().unwrap_or("vxlan").parse()?;
        let vni = match v["Backend"]["VNI"].as_u64() {
            None => DEFAULT_VNI,
            Some(n) => u32::try_from(n)
                .ok()
                .filter(|n| (1..1 << 24).contains(n))
                .ok_or_else(|| ConfError::NetConf(format!("VNI {n} is not 1..16777215")))?,
        };
        let port = match v["Backend"]["Port"].as_u64() {
            None => DEFAULT_PORT,
            Some(p) => u16::try_from(p)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| ConfError::NetConf(format!("Port {p} is not a UDP port")))?,
        };
        Ok(NetConf {
            network,
            backend,
            vni,
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_conf_round_trips() {
        for b in [Backend::Vxlan, Backend::HostGw, Backend::None] {
            let c = NetConf::new("10.20.0.0/16".parse().unwrap(), b);
            assert_eq!(NetConf::from_json(&c.to_json().to_string()).unwrap(), c);
        }
    }

    #[test]
    fn unknown_backend_is_named() {
        let e = "udp".parse::<Backend>().unwrap_err().to_string();
        assert!(e.contains("\"udp\"") && e.contains("host-gw"), "{e}");
    }

    #[test]
    fn overlapping_cidrs_are_refused() {
        let e = check_cidrs("10.0.0.0/8", "10.43.0.0/16", 24).unwrap_err();
        assert!(matches!(e, ConfError::Overlap { .. }), "{e}");
        let e = check_cidrs("10.43.0.0/24", "10.43.0.0/16", 24).unwrap_err();
        assert!(matches!(e, ConfError::Overlap { .. }), "{e}");
        check_cidrs("172.33.0.0/16", "10.43.0.0/16", 24).unwrap();
        check_cidrs("10.20.0.0/16", "10.43.0.0/16", 24).unwrap();
    }

    #[test]
    fn host_bits_and_bad_masks_are_refused() {
        assert!(matches!(
            check_cidrs("10.42.1.0/16", "10.43.0.0/16", 24),
            Err(ConfError::HostBits { .. })
        ));
        assert!(matches!(
            check_cidrs("10.42.0.0/16", "10.43.0.0/16", 8),
            Err(ConfError::Mask { .. })
        ));
        assert!(matches!(
            check_cidrs("10.42.0.0/16", "10.43.0.0/16", 30),
            Err(ConfError::Mask { .. })
        ));
    }
}

//! Text and objects derived from the plan: flannel's `subnet.env`, the masquerade ruleset,
//! the node's CNI conflist and the Node annotations.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use moat_hostnet::Mac;
use serde_json::{Value, json};

use crate::conf::{Backend, NetConf};
use crate::plan::{ANNOTATION_PREFIX, BRIDGE};

/// The nft table the pod network's masquerade lives in.
pub const NFT_TABLE: &str = "moat-podnet";

/// The gateway address of a node subnet (`.1`), which the bridge holds.
pub fn gateway(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).saturating_add(1))
}

/// flannel's `subnet.env`.
pub fn subnet_env(conf: &NetConf, subnet: Ipv4Net, mtu: u32, ipmasq: bool) -> String {
    format!(
        "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}/{}\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ={ipmasq}\n",
        conf.network,
        gateway(subnet),
        subnet.prefix_len()
    )
}

/// Masquerade as flannel's ip-masq rules do it, as one atomic transaction that replaces the
/// table: pod ↔ pod never (NetworkPolicy needs real pod addresses); pod → outside the cluster
/// to the node's address (`fully-random`, multicast exempt); from outside the cluster to a
/// remote node's pods, so the replies come back through this node.
pub fn masquerade(conf: &NetConf, local_subnet: Ipv4Net) -> String {
    let net = conf.network;
    format!(
        "table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\ntable ip {NFT_TABLE} {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ip saddr {net} ip daddr {net} return\n    ip saddr {net} ip daddr != 224.0.0.0/4 masquerade fully-random\n    ip saddr != {net} ip daddr {local_subnet} return\n    ip saddr != {net} ip daddr {net} masquerade fully-random\n  }}\n}}\n"
    )
}

/// The node's CNI conflist: bridge `cni0` (gateway `.1`, no masquerade of its own: the pod
/// network owns it) with host-local IPAM on the node's subnet, the pod MTU the backend
/// allows, and portmap for hostPort.
pub fn conflist(subnet: Ipv4Net, mtu: u32, ipam_dir: Option<&Path>) -> Value {
    let mut ipam = json!({
        "type": "host-local",
        "ranges": [[{"subnet": subnet.to_string(), "gateway": gateway(subnet).to_string()}]],
        "routes": [{"dst": "0.0.0.0/0"}],
    });
    if let Some(d) = ipam_dir {
        ipam["dataDir"] = json!(d);
    }
    json!({
        "cniVersion": "1.0.0",
        "name": "moat",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "mtu": mtu,
                "ipam": ipam,
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    })
}

/// The annotations a node publishes (flannel's names), so `kubectl get node -o yaml` shows the
/// state and peers find its tunnel endpoint.
pub fn annotations(
    conf: &NetConf,
    ip: Ipv4Addr,
    vtep_mac: Option<Mac>,
) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        a.insert(format!("{ANNOTATION_PREFIX}{k}"), v);
    };
    put("backend-type", conf.backend.as_str().to_string());
    put("public-ip", ip.to_string());
    put("kube-subnet-manager", "true".into());
    let data = match (conf.backend, vtep_mac) {
        (Backend::Vxlan, Some(m)) => json!({"VNI": conf.vni, "VtepMAC": m.to_string()}),
        _ => Value::Null,
    };
    put("backend-data", data.to_string());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf() -> NetConf {
        NetConf::new("10.42.0.0/16".parse().unwrap(), Backend::Vxlan)
    }

    #[test]
    fn subnet_env_has_flannels_four_lines() {
        let s = subnet_env(&conf(), "10.42.1.0/24".parse().unwrap(), 1450, true);
        assert_eq!(
            s,
            "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
    }

    #[test]
    fn masquerade_exempts_pod_to_pod_and_replaces_atomically() {
        let s = masquerade(&conf(), "10.42.1.0/24".parse().unwrap());
        let first_masq = s.find("masquerade").unwrap();
        let exempt = s
            .find("ip saddr 10.42.0.0/16 ip daddr 10.42.0.0/16 return")
            .unwrap();
        assert!(exempt < first_masq);
        assert!(s.starts_with("table ip moat-podnet\ndelete table ip moat-podnet\n"));
        assert!(s.contains("fully-random"));
    }

    #[test]
    fn conflist_leaves_masquerade_to_the_pod_network() {
        let c = conflist("10.42.1.0/24".parse().unwrap(), 1450, None);
        assert_eq!(c["plugins"][0]["ipMasq"], false);
        assert_eq!(c["plugins"][0]["mtu"], 1450);
        assert_eq!(
            c["plugins"][0]["ipam"]["ranges"][0][0]["gateway"],
            "10.42.1.1"
        );
    }

    #[test]
    fn annotations_carry_the_vtep_mac_for_vxlan_only() {
        let mac: Mac = "0a:58:00:00:00:01".parse().unwrap();
        let a = annotations(&conf(), "192.168.0.2".parse().unwrap(), Some(mac));
        assert_eq!(
            a["flannel.alpha.coreos.com/backend-data"],
            r#"{"VNI":1,"VtepMAC":"0a:58:00:00:00:01"}"#
        );
        let hg = NetConf::new("10.42.0.0/16".parse().unwrap(), Backend::HostGw);
        let a = annotations(&hg, "192.168.0.2".parse().unwrap(), None);
        assert_eq!(a["flannel.alpha.coreos.com/backend-type"], "host-gw");
        assert_eq!(a["flannel.alpha.coreos.com/backend-data"], "null");
    }
}

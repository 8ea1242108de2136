//! ClusterIP and NodePort allocation for Services, as kube-apiserver does it at create time.
//!
//! Every allocated address or port is a key in the store (`/registry/ranges/...`) created
//! with compare-and-swap, so two concurrent creates can never get the same one and the
//! allocation survives restarts with the store itself; deleting the Service releases them.

use std::net::Ipv4Addr;

use http::StatusCode;
use moat_api::cidr::{CidrError, Ipv4Net};
use moat_store::{Store, StoreError};
use serde_json::{Value, json};

use crate::status::ApiError;

pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// The service IPv4 range: a /8 to /30 (host bits cleared), as kube-apiserver accepts.
#[derive(Debug, Clone, Copy)]
pub struct ServiceCidr(Ipv4Net);

/// Why a service CIDR is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceCidrError {
    #[error(transparent)]
    Cidr(#[from] CidrError),
    #[error("{0} is not between /8 and /30")]
    Prefix(Ipv4Net),
}

impl ServiceCidr {
    pub fn parse(s: &str) -> Result<ServiceCidr, ServiceCidrError> {
        let n = moat_api::cidr::parse_network(s)?;
        if !(8..=30).contains(&n.prefix_len()) {
            return Err(ServiceCidrError::Prefix(n));
        }
        Ok(ServiceCidr(n))
    }

    fn size(&self) -> u32 {
        1u32 << (32 - u32::from(self.0.prefix_len()))
    }

    fn base(&self) -> u32 {
        u32::from(self.0.network())
    }
}

fn ip_key(ip: Ipv4Addr) -> String {
    format!("/registry/ranges/serviceips/{ip}")
}

fn port_key(p: u16) -> String {
    format!("/registry/ranges/servicenodeports/{p}")
}

fn invalid(name: &str, field: &str, msg: String) -> ApiError {
    ApiError::invalid(
        "Service",
        name,
        vec![moat_api::Cause::new("FieldValueInvalid", field, msg)],
    )
    .details("", "Service", name)
}

/// Claims one key; false if somebody holds it.
async fn claim(store: &dyn Store, key: &str, owner: &str) -> Result<bool, ApiError> {
    match store.create(key, owner.as_bytes().to_vec()).await {
        Ok(_) => Ok(true),
        Err(StoreError::AlreadyExists { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Releases what `allocate` claimed for a Service object.
pub async fn release(store: &dyn Store, svc: &Value) {
    if let Some(ip) = svc["spec"]["clusterIP"]
        .as_str()
        .and_then(|s| s.parse::<Ipv4Addr>().ok())
    {
        let _ = store.delete(&ip_key(ip), None).await;
    }
    for p in svc["spec"]["ports"].as_array().cloned().unwrap_or_default() {
        if let Some(n) = p["nodePort"].as_u64().and_then(|n| u16::try_from(n).ok()) {
            let _ = store.delete(&port_key(n), None).await;
        }
    }
}

/// Fills `spec.clusterIP(s)` and node ports of a new Service, claiming each in the store.
/// On error nothing stays claimed.
pub async fn allocate(
    store: &dyn Store,
    cidr: ServiceCidr,
    svc: &mut Value,
) -> Result<(), ApiError> {
    let name = svc["metadata"]["name"].as_str().unwrap_or("").to_string();
    let owner = format!(
        "{}/{name}",
        svc["metadata"]["namespace"].as_str().unwrap_or("")
    );
    let ty = svc["spec"]["type"]
        .as_str()
        .unwrap_or("ClusterIP")
        .to_string();
    let mut claimed: Vec<String> = Vec::new();
    let res = async {
        if ty != "ExternalName" && svc["spec"]["clusterIP"].as_str() != Some("None") {
            let ip = match svc["spec"]["clusterIP"].as_str().filter(|s| !s.is_empty()) {
                Some(want) => {
                    let ip: Ipv4Addr = want.parse().map_err(|_| invalid(&name, "spec.clusterIP", format!("Invalid value: {want:?}: must be a valid IP address")))?;
                    if !cidr.0.contains(&ip) {
                        return Err(invalid(&name, "spec.clusterIP", format!("Invalid value: {want:?}: provided IP is not in the valid range")));
                    }
                    if !claim(store, &ip_key(ip), &owner).await? {
                        return Err(invalid(&name, "spec.clusterIP", format!("Invalid value: {want:?}: provided IP is already allocated")));
                    }
                    ip
                }
                None => {
                    // Start from a pseudo-random offset, skip the network address and the
                    // first host (reserved for the `kubernetes` Service), claim the first free.
                    let size = cidr.size();
                    let start = rand::random::<u32>() % (size - 2);
                    let mut got = None;
                    for i in 0..(size - 2) {
                        let off = 2 + (start + i) % (size - 2);
                        let ip = Ipv4Addr::from(cidr.base() + off);
                        if claim(store, &ip_key(ip), &owner).await? {
                            got = Some(ip);
                            break;
                        }
                    }
                    got.ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "failed to allocate a service IP: range is full"))?
                }
            };
            claimed.push(ip_key(ip));
            svc["spec"]["clusterIP"] = json!(ip.to_string());
            svc["spec"]["clusterIPs"] = json!([ip.to_string()]);
            svc["spec"]["ipFamilies"] = json!(["IPv4"]);
            svc["spec"]["ipFamilyPolicy"] = json!("SingleStack");
        }
        if ty == "NodePort" || ty == "LoadBalancer" {
            let n = svc["spec"]["ports"].as_array().map(|p| p.len()).unwrap_or(0);
            for i in 0..n {
                let want = svc["spec"]["ports"][i]["nodePort"].as_u64();
                let port = match want {
                    Some(w) => {
                        let p = u16::try_from(w).ok().filter(|p| NODE_PORTS.contains(p)).ok_or_else(|| {
                            invalid(&name, &format!("spec.ports[{i}].nodePort"), format!("Invalid value: {w}: provided port is not in the valid range. The range of valid ports is 30000-32767"))
                        })?;
                        if !claim(store, &port_key(p), &owner).await? {
                            return Err(invalid(&name, &format!("spec.ports[{i}].nodePort"), format!("Invalid value: {w}: provided port is already allocated")));
                        }
                        p
                    }
                    None => {
                        let span = u32::from(*NODE_PORTS.end() - *NODE_PORTS.start()) + 1;
                        let start = rand::random::<u32>() % span;
                        let mut got = None;
                        for k in 0..span {
                            let p = *NODE_PORTS.start() + u16::try_from((start + k) % span).unwrap_or(0);
                            if claim(store, &port_key(p), &owner).await? {
                                got = Some(p);
                                break;
                            }
                        }
                        got.ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "failed to allocate a node port: range is full"))?
                    }
                };
                claimed.push(port_key(port));
                svc["spec"]["ports"][i]["nodePort"] = json!(port);
            }
        }
        Ok(())
    }
    .await;
    if res.is_err() {
        for k in &claimed {
            let _ = store.delete(k, None).await;
        }
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_cidrs_are_ipv4_networks_from_8_to_30() {
        let c = ServiceCidr::parse("10.43.7.9/16").expect("cidr");
        assert_eq!((c.base(), c.size()), (0x0a2b_0000, 1 << 16));
        assert!(c.0.contains(&Ipv4Addr::new(10, 43, 255, 254)));
        assert!(matches!(
            ServiceCidr::parse("10.43.0.0/31"),
            Err(ServiceCidrError::Prefix(_))
        ));
        assert!(matches!(
            ServiceCidr::parse("10.43.0.0"),
            Err(ServiceCidrError::Cidr(CidrError::NoPrefix(_)))
        ));
    }
}

//! Test helpers: Kubernetes objects from short descriptions, a fixture cluster, and queries
//! asked through the wire function.

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

use crate::{Answer, Transport, Zone, answer};

pub fn namespace(name: &str) -> Namespace {
    serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
}

fn ports_json(ports: &[(&str, &str, i32)]) -> serde_json::Value {
    ports
        .iter()
        .map(|(n, proto, port)| {
            let mut p = json!({"protocol": proto, "port": port});
            if !n.is_empty() {
                p["name"] = json!(n);
            }
            p
        })
        .collect()
}

/// A ClusterIP Service; `ports` are (name or "", protocol, port).
pub fn service(ns: &str, name: &str, ip: &str, ports: &[(&str, &str, i32)]) -> Service {
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "ports": ports_json(ports)}
    }))
    .unwrap()
}

pub fn headless(ns: &str, name: &str, ports: &[(&str, &str, i32)]) -> Service {
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name},
        "spec": {"clusterIP": "None", "clusterIPs": ["None"], "ports": ports_json(ports)}
    }))
    .unwrap()
}

pub fn external(ns: &str, name: &str, target: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name},
        "spec": {"type": "ExternalName", "externalName": target}
    }))
    .unwrap()
}

/// One endpoint: address, hostname, ready condition (`None`: unset).
pub type Ep<'a> = (&'a str, Option<&'a str>, Option<bool>);

pub fn slice(
    ns: &str,
    name: &str,
    service: &str,
    eps: &[Ep<'_>],
    ports: &[(&str, &str, i32)],
) -> EndpointSlice {
    let endpoints: Vec<serde_json::Value> = eps
        .iter()
        .map(|(ip, host, ready)| {
            let mut e = json!({"addresses": [ip], "conditions": {}});
            if let Some(h) = host {
                e["hostname"] = json!(h);
            }
            if let Some(r) = ready {
                e["conditions"]["ready"] = json!(r);
            }
            e
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports_json(ports)
    }))
    .unwrap()
}

/// The fixture cluster most rule tests ask:
/// - namespaces `default`, `prod`, `quiet` (no services);
/// - `prod/web` 10.96.0.10, ports http/TCP/80, dns/UDP/53 and an unnamed 8080, with ready
///   10.244.1.5 (no hostname) and not-ready 10.244.1.6;
/// - `prod/db` headless, port pg/TCP/5432, endpoints `db-0` 10.244.2.1 and 10.244.2.2 (no
///   hostname) on target port pg/5433, and 10.244.2.3 not ready;
/// - `prod/idle` headless with only a not-ready endpoint;
/// - `prod/ext` ExternalName to `example.com`;
/// - `prod/big` headless with 60 ready endpoints 10.245.0.1–60.
pub fn fixture() -> Zone {
    let namespaces = [namespace("default"), namespace("prod"), namespace("quiet")];
    let services = [
        service(
            "prod",
            "web",
            "10.96.0.10",
            &[("http", "TCP", 80), ("dns", "UDP", 53), ("", "TCP", 8080)],
        ),
        headless("prod", "db", &[("pg", "TCP", 5432)]),
        headless("prod", "idle", &[("http", "TCP", 80)]),
        external("prod", "ext", "example.com"),
        headless("prod", "big", &[]),
    ];
    let big: Vec<String> = (1..=60).map(|i| format!("10.245.0.{i}")).collect();
    let big_eps: Vec<Ep<'_>> = big
        .iter()
        .map(|ip| (ip.as_str(), None, Some(true)))
        .collect();
    let slices = [
        slice(
            "prod",
            "web-abc",
            "web",
            &[
                ("10.244.1.5", None, Some(true)),
                ("10.244.1.6", None, Some(false)),
            ],
            &[("http", "TCP", 8080), ("dns", "UDP", 5353)],
        ),
        slice(
            "prod",
            "db-xyz",
            "db",
            &[
                ("10.244.2.1", Some("db-0"), Some(true)),
                ("10.244.2.2", None, None),
                ("10.244.2.3", Some("db-2"), Some(false)),
            ],
            &[("pg", "TCP", 5433)],
        ),
        slice(
            "prod",
            "idle-1",
            "idle",
            &[("10.244.3.1", None, Some(false))],
            &[],
        ),
        slice("prod", "big-1", "big", &big_eps, &[]),
    ];
    Zone::from_snapshot("cluster.local", &services, &slices, &namespaces).unwrap()
}

/// Query bytes for one question, RD set, with an EDNS OPT offering `edns` bytes if given.
pub fn query_bytes(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 0x4242;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.edns = Some(e);
    }
    m.to_vec().unwrap()
}

/// Asks `zone` over UDP without EDNS; panics unless the answer is local.
pub fn ask(zone: &Zone, name: &str, qtype: RecordType) -> Message {
    ask_with(zone, &query_bytes(name, qtype, None), Transport::Udp)
}

pub fn ask_with(zone: &Zone, query: &[u8], transport: Transport) -> Message {
    match answer(zone, query, transport) {
        Answer::Local(bytes) => Message::from_vec(&bytes).unwrap(),
        other => panic!("expected a local answer, got {other:?}"),
    }
}

pub fn rcode(m: &Message) -> ResponseCode {
    m.metadata.response_code
}

/// The answer section's data rendered as text (`10.96.0.10`, `0 100 80 web.prod...`).
pub fn rdata(m: &Message) -> Vec<String> {
    m.answers.iter().map(|r| r.data.to_string()).collect()
}

pub fn a_records(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

/// NXDOMAIN with the zone's SOA in authority.
pub fn assert_nxdomain(m: &Message) {
    assert_eq!(rcode(m), ResponseCode::NXDomain, "{m}");
    assert!(m.answers.is_empty(), "{m}");
    assert_soa_authority(m);
}

/// NOERROR, no answers, the zone's SOA in authority.
pub fn assert_nodata(m: &Message) {
    assert_eq!(rcode(m), ResponseCode::NoError, "{m}");
    assert!(m.answers.is_empty(), "{m}");
    assert_soa_authority(m);
}

fn assert_soa_authority(m: &Message) {
    assert_eq!(m.authorities.len(), 1, "{m}");
    let soa = &m.authorities[0];
    assert_eq!(soa.record_type(), RecordType::SOA);
    assert_eq!(soa.name, Name::from_ascii("cluster.local.").unwrap());
}

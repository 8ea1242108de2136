//! The cluster DNS answer function fed arbitrary bytes over a small fixed zone (a ClusterIP
//! service with named ports, a headless one with a hostname endpoint, ExternalNames, 60
//! endpoints to force truncation): it must never panic, every answer must parse back with
//! hickory-proto, carry the query's ID, and fit the transport (512 bytes or the EDNS size
//! offered over UDP), also after an ExternalName's CNAME is merged with an upstream reply
//! (the input bytes standing in for it).
#![no_main]

use std::sync::LazyLock;

use hickory_proto::op::Message;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use libfuzzer_sys::fuzz_target;
use moat_dns::{Answer, EDNS_PAYLOAD, Transport, Zone, answer, complete_chase};
use serde_json::json;

/// Deserializes a fixture object (the shape is fixed, so this cannot fail at run time).
macro_rules! de {
    ($v:expr) => {
        serde_json::from_value($v).unwrap()
    };
}

static ZONE: LazyLock<Zone> = LazyLock::new(|| {
    let services: Vec<Service> = vec![
        de!(json!({"metadata": {"namespace": "prod", "name": "web"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [
                {"name": "http", "protocol": "TCP", "port": 80},
                {"name": "dns", "protocol": "UDP", "port": 53}]}})),
        de!(json!({"metadata": {"namespace": "prod", "name": "db"},
            "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}})),
        de!(json!({"metadata": {"namespace": "prod", "name": "ext"},
            "spec": {"type": "ExternalName", "externalName": "example.com"}})),
        de!(json!({"metadata": {"namespace": "prod", "name": "alias"},
            "spec": {"type": "ExternalName", "externalName": "web.prod.svc.cluster.local"}})),
        de!(json!({"metadata": {"namespace": "prod", "name": "big"},
            "spec": {"clusterIP": "None", "ports": [{"name": "p", "port": 1}]}})),
    ];
    let big: Vec<serde_json::Value> = (1..=60)
        .map(|i| json!({"addresses": [format!("10.245.0.{i}")]}))
        .collect();
    let slices: Vec<EndpointSlice> = vec![
        de!(json!({"metadata": {"namespace": "prod", "name": "web-1",
                "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.1.5"]}],
            "ports": [{"name": "http", "port": 8080}]})),
        de!(json!({"metadata": {"namespace": "prod", "name": "db-1",
                "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.2.1"], "hostname": "db-0"},
                          {"addresses": ["10.244.2.2"], "conditions": {"ready": false}}],
            "ports": [{"name": "pg", "port": 5432}]})),
        de!(json!({"metadata": {"namespace": "prod", "name": "big-1",
                "labels": {"kubernetes.io/service-name": "big"}},
            "addressType": "IPv4", "endpoints": big,
            "ports": [{"name": "p", "port": 1}]})),
    ];
    let namespaces: Vec<Namespace> = vec![de!(json!({"metadata": {"name": "prod"}}))];
    Zone::from_snapshot("cluster.local", &services, &slices, &namespaces).unwrap()
});

fuzz_target!(|data: &[u8]| {
    for transport in [Transport::Udp, Transport::Tcp] {
        let resp = match answer(&ZONE, data, transport) {
            Answer::Local(resp) => resp,
            Answer::Chase { partial, query } => {
                assert!(
                    Message::from_vec(&query).is_ok(),
                    "chase query does not parse"
                );
                // The input itself stands in for an upstream's (possibly garbage) reply.
                complete_chase(data, &partial, Some(data), transport)
            }
            Answer::Forward | Answer::Drop => continue,
        };
        let parsed = Message::from_vec(&resp);
        assert!(parsed.is_ok(), "answer does not parse: {parsed:?}");
        assert_eq!(resp[..2], data[..2], "ID not echoed");
        assert_eq!(resp[2] & 0x80, 0x80, "QR not set");
        let limit = match transport {
            Transport::Tcp => usize::from(u16::MAX),
            Transport::Udp => usize::from(EDNS_PAYLOAD),
        };
        assert!(
            resp.len() <= limit,
            "{} bytes over {transport:?}",
            resp.len()
        );
        if transport == Transport::Udp && Message::from_vec(data).is_ok_and(|q| q.edns.is_none()) {
            assert!(resp.len() <= 512, "{} bytes without EDNS", resp.len());
        }
    }
});

//! Incremental updates equal a rebuild: random sequences of applies and deletes over a
//! small universe of objects (so they collide: relabelled slices, services changing kind,
//! addresses shared between sources), compared with a zone built from what is left.

use std::collections::BTreeMap;

use hickory_proto::rr::RecordType;
use proptest::prelude::*;

use crate::testutil::*;
use crate::{Answer, Change, Transport, Zone, answer};

#[derive(Clone, Debug)]
enum Op {
    Namespace {
        name: usize,
        delete: bool,
    },
    Service {
        ns: usize,
        name: usize,
        kind: usize,
        ip: usize,
        port: usize,
        delete: bool,
    },
    Slice {
        ns: usize,
        name: usize,
        service: usize,
        eps: Vec<(usize, bool, Option<bool>)>,
        port: usize,
        delete: bool,
    },
}

const NS: [&str; 3] = ["a", "b", "c"];
const SVC: [&str; 3] = ["s0", "s1", "s2"];
const SLICE: [&str; 4] = ["x0", "x1", "x2", "x3"];
const PORTS: [(&str, &str, i32); 3] = [("http", "TCP", 80), ("dns", "UDP", 53), ("", "TCP", 81)];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3usize, any::<bool>()).prop_map(|(name, delete)| Op::Namespace { name, delete }),
        (
            0..3usize,
            0..3usize,
            0..3usize,
            0..4usize,
            0..3usize,
            any::<bool>()
        )
            .prop_map(|(ns, name, kind, ip, port, delete)| Op::Service {
                ns,
                name,
                kind,
                ip,
                port,
                delete
            }),
        (
            0..3usize,
            0..4usize,
            0..3usize,
            proptest::collection::vec(
                (
                    0..5usize,
                    any::<bool>(),
                    proptest::option::of(any::<bool>())
                ),
                0..4
            ),
            0..3usize,
            any::<bool>()
        )
            .prop_map(|(ns, name, service, eps, port, delete)| Op::Slice {
                ns,
                name,
                service,
                eps,
                port,
                delete
            }),
    ]
}

/// The objects currently present, keyed like the API server would.
#[derive(Default)]
struct World {
    namespaces: BTreeMap<String, k8s_openapi::api::core::v1::Namespace>,
    services: BTreeMap<(String, String), k8s_openapi::api::core::v1::Service>,
    slices: BTreeMap<(String, String), k8s_openapi::api::discovery::v1::EndpointSlice>,
}

fn change(op: &Op, world: &mut World) -> Change {
    match op {
        Op::Namespace { name, delete } => {
            let obj = namespace(NS[*name]);
            if *delete {
                world.namespaces.remove(NS[*name]);
                Change::NamespaceDeleted(obj)
            } else {
                world.namespaces.insert(NS[*name].to_owned(), obj.clone());
                Change::NamespaceApplied(obj)
            }
        }
        Op::Service {
            ns,
            name,
            kind,
            ip,
            port,
            delete,
        } => {
            // Two services in different namespaces may share a cluster IP here on purpose:
            // removing one must keep the other's PTR.
            let ports = [PORTS[*port]];
            let obj = match kind {
                0 => service(NS[*ns], SVC[*name], &format!("10.96.0.{ip}"), &ports),
                1 => headless(NS[*ns], SVC[*name], &ports),
                _ => external(NS[*ns], SVC[*name], "example.com"),
            };
            let key = (NS[*ns].to_owned(), SVC[*name].to_owned());
            if *delete {
                world.services.remove(&key);
                Change::ServiceDeleted(obj)
            } else {
                world.services.insert(key, obj.clone());
                Change::ServiceApplied(obj)
            }
        }
        Op::Slice {
            ns,
            name,
            service,
            eps,
            port,
            delete,
        } => {
            let ips: Vec<String> = eps
                .iter()
                .map(|(i, _, _)| format!("10.244.0.{i}"))
                .collect();
            let hosts: Vec<String> = eps.iter().map(|(i, _, _)| format!("h{i}")).collect();
            let list: Vec<Ep<'_>> = eps
                .iter()
                .enumerate()
                .map(|(k, (_, named, ready))| {
                    (ips[k].as_str(), named.then_some(hosts[k].as_str()), *ready)
                })
                .collect();
            let obj = slice(NS[*ns], SLICE[*name], SVC[*service], &list, &[PORTS[*port]]);
            let key = (NS[*ns].to_owned(), SLICE[*name].to_owned());
            if *delete {
                world.slices.remove(&key);
                Change::SliceDeleted(obj)
            } else {
                world.slices.insert(key, obj.clone());
                Change::SliceApplied(obj)
            }
        }
    }
}

/// Every name the universe can produce, asked for A and SRV and PTR, answered alike.
fn same_answers(a: &Zone, b: &Zone) -> Result<(), TestCaseError> {
    let mut names = Vec::new();
    for ns in NS {
        names.push(format!("{ns}.svc.cluster.local."));
        for svc in SVC {
            names.push(format!("{svc}.{ns}.svc.cluster.local."));
            names.push(format!("_http._tcp.{svc}.{ns}.svc.cluster.local."));
            for i in 0..5 {
                names.push(format!("h{i}.{svc}.{ns}.svc.cluster.local."));
                names.push(format!("10-244-0-{i}.{svc}.{ns}.svc.cluster.local."));
            }
        }
    }
    for i in 0..5 {
        names.push(format!("{i}.0.244.10.in-addr.arpa."));
        names.push(format!("{i}.0.96.10.in-addr.arpa."));
    }
    for name in names {
        for t in [RecordType::A, RecordType::SRV, RecordType::PTR] {
            let q = query_bytes(&name, t, None);
            let (x, y) = (answer(a, &q, Transport::Tcp), answer(b, &q, Transport::Tcp));
            // The SOA serial differs by design; compare the rest.
            let strip = |ans: Answer| match ans {
                Answer::Local(bytes) => {
                    let mut m = hickory_proto::op::Message::from_vec(&bytes).unwrap();
                    m.authorities.clear();
                    let mut records: Vec<String> = m
                        .answers
                        .iter()
                        .chain(&m.additionals)
                        .map(|r| r.to_string())
                        .collect();
                    records.sort();
                    Some((m.metadata.response_code, records))
                }
                _ => None,
            };
            prop_assert_eq!(strip(x), strip(y), "{} {:?}", name, t);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn incremental_updates_equal_rebuild(ops in proptest::collection::vec(op(), 0..40)) {
        let mut world = World::default();
        let mut zone = Zone::new("cluster.local").unwrap();
        zone.mark_synced();
        for op in &ops {
            zone.apply(change(op, &mut world));
        }
        let services: Vec<_> = world.services.values().cloned().collect();
        let slices: Vec<_> = world.slices.values().cloned().collect();
        let namespaces: Vec<_> = world.namespaces.values().cloned().collect();
        let rebuilt = Zone::from_snapshot("cluster.local", &services, &slices, &namespaces).unwrap();
        prop_assert!(zone == rebuilt, "incremental {:#?}\nrebuilt {:#?}", zone, rebuilt);
        same_answers(&zone, &rebuilt)?;
    }
}

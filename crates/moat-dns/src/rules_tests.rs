//! One test per rule of the Kubernetes DNS specification as CoreDNS serves it (NETWORK.md,
//! "Cluster DNS"), asked through the wire function over the fixture cluster.

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::testutil::*;
use crate::{Answer, Change, TTL, Transport, Zone, answer};

// ---- records ------------------------------------------------------------------------------

#[test]
fn cluster_ip_service_has_a_record() {
    let m = ask(&fixture(), "web.prod.svc.cluster.local.", RecordType::A);
    assert_eq!(rcode(&m), ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert_eq!(a_records(&m), ["10.96.0.10"]);
}

#[test]
fn headless_service_has_one_a_per_ready_endpoint() {
    let m = ask(&fixture(), "db.prod.svc.cluster.local.", RecordType::A);
    assert_eq!(rcode(&m), ResponseCode::NoError);
    // 10.244.2.3 is not ready; 10.244.2.2 has no ready condition, which counts as ready.
    assert_eq!(a_records(&m), ["10.244.2.1", "10.244.2.2"]);
}

#[test]
fn headless_service_without_ready_endpoints_is_nxdomain() {
    let m = ask(&fixture(), "idle.prod.svc.cluster.local.", RecordType::A);
    assert_nxdomain(&m);
}

#[test]
fn headless_service_with_no_slices_is_nxdomain() {
    let mut z = fixture();
    z.apply(Change::ServiceApplied(headless("prod", "fresh", &[])));
    assert_nxdomain(&ask(&z, "fresh.prod.svc.cluster.local.", RecordType::A));
}

#[test]
fn endpoint_hostname_names_its_address() {
    let m = ask(&fixture(), "db-0.db.prod.svc.cluster.local.", RecordType::A);
    assert_eq!(a_records(&m), ["10.244.2.1"]);
}

#[test]
fn endpoint_without_hostname_is_named_by_dashed_ip() {
    let z = fixture();
    let m = ask(&z, "10-244-2-2.db.prod.svc.cluster.local.", RecordType::A);
    assert_eq!(a_records(&m), ["10.244.2.2"]);
    // Endpoints of ClusterIP services have names too (CoreDNS answers them).
    let m = ask(&z, "10-244-1-5.web.prod.svc.cluster.local.", RecordType::A);
    assert_eq!(a_records(&m), ["10.244.1.5"]);
}

#[test]
fn endpoint_with_hostname_is_not_named_by_dashed_ip() {
    let m = ask(
        &fixture(),
        "10-244-2-1.db.prod.svc.cluster.local.",
        RecordType::A,
    );
    assert_nxdomain(&m);
}

#[test]
fn not_ready_endpoint_has_no_name() {
    let z = fixture();
    assert_nxdomain(&ask(&z, "db-2.db.prod.svc.cluster.local.", RecordType::A));
    assert_nxdomain(&ask(
        &z,
        "10-244-1-6.web.prod.svc.cluster.local.",
        RecordType::A,
    ));
}

#[test]
fn endpoint_name_of_unknown_service_is_nxdomain() {
    let m = ask(
        &fixture(),
        "db-0.nope.prod.svc.cluster.local.",
        RecordType::A,
    );
    assert_nxdomain(&m);
}

#[test]
fn srv_for_named_port_targets_the_service() {
    let m = ask(
        &fixture(),
        "_http._tcp.web.prod.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(rcode(&m), ResponseCode::NoError);
    assert_eq!(rdata(&m), ["0 100 80 web.prod.svc.cluster.local."]);
    // The target's address rides along in the additional section.
    let extra: Vec<String> = m
        .additionals
        .iter()
        .map(|r| format!("{} {}", r.name, r.data))
        .collect();
    assert_eq!(extra, ["web.prod.svc.cluster.local. 10.96.0.10"]);
}

#[test]
fn srv_for_udp_port_uses_udp_label() {
    let z = fixture();
    let m = ask(&z, "_dns._udp.web.prod.svc.cluster.local.", RecordType::SRV);
    assert_eq!(rdata(&m), ["0 100 53 web.prod.svc.cluster.local."]);
    assert_nxdomain(&ask(
        &z,
        "_dns._tcp.web.prod.svc.cluster.local.",
        RecordType::SRV,
    ));
}

#[test]
fn srv_for_headless_targets_each_ready_endpoint_on_its_port() {
    let m = ask(
        &fixture(),
        "_pg._tcp.db.prod.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(rcode(&m), ResponseCode::NoError);
    let mut got = rdata(&m);
    got.sort();
    assert_eq!(
        got,
        [
            "0 50 5433 10-244-2-2.db.prod.svc.cluster.local.",
            "0 50 5433 db-0.db.prod.svc.cluster.local.",
        ]
    );
    let mut extra: Vec<String> = m
        .additionals
        .iter()
        .map(|r| format!("{} {}", r.name, r.data))
        .collect();
    extra.sort();
    assert_eq!(
        extra,
        [
            "10-244-2-2.db.prod.svc.cluster.local. 10.244.2.2",
            "db-0.db.prod.svc.cluster.local. 10.244.2.1",
        ]
    );
}

#[test]
fn srv_for_port_the_service_lacks_is_nxdomain() {
    let z = fixture();
    assert_nxdomain(&ask(
        &z,
        "_https._tcp.web.prod.svc.cluster.local.",
        RecordType::SRV,
    ));
    assert_nxdomain(&ask(
        &z,
        "_http._udp.web.prod.svc.cluster.local.",
        RecordType::SRV,
    ));
}

#[test]
fn srv_for_unnamed_port_does_not_exist() {
    let m = ask(
        &fixture(),
        "_8080._tcp.web.prod.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_nxdomain(&m);
}

#[test]
fn srv_labels_need_underscores() {
    let m = ask(
        &fixture(),
        "http.tcp.web.prod.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_nxdomain(&m);
}

#[test]
fn srv_on_headless_without_ready_endpoints_is_nxdomain() {
    let m = ask(
        &fixture(),
        "_http._tcp.idle.prod.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_nxdomain(&m);
}

#[test]
fn srv_name_asked_for_a_is_nodata() {
    let m = ask(
        &fixture(),
        "_http._tcp.web.prod.svc.cluster.local.",
        RecordType::A,
    );
    assert_nodata(&m);
}

#[test]
fn ptr_for_cluster_ip_names_the_service() {
    let m = ask(&fixture(), "10.0.96.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(rcode(&m), ResponseCode::NoError);
    assert_eq!(rdata(&m), ["web.prod.svc.cluster.local."]);
}

#[test]
fn ptr_for_endpoint_ip_names_the_endpoint() {
    let z = fixture();
    let m = ask(&z, "1.2.244.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(rdata(&m), ["db-0.db.prod.svc.cluster.local."]);
    let m = ask(&z, "2.2.244.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(rdata(&m), ["10-244-2-2.db.prod.svc.cluster.local."]);
}

#[test]
fn ptr_for_unknown_or_not_ready_address_is_forwarded() {
    let z = fixture();
    for name in [
        "9.9.9.9.in-addr.arpa.",
        "3.2.244.10.in-addr.arpa.",
        "96.10.in-addr.arpa.",
    ] {
        let q = query_bytes(name, RecordType::PTR, None);
        assert_eq!(answer(&z, &q, Transport::Udp), Answer::Forward, "{name}");
    }
}

#[test]
fn ptr_goes_away_with_the_service() {
    let mut z = fixture();
    z.apply(Change::ServiceDeleted(headless("prod", "db", &[])));
    let q = query_bytes("1.2.244.10.in-addr.arpa.", RecordType::PTR, None);
    assert_eq!(answer(&z, &q, Transport::Udp), Answer::Forward);
}

#[test]
fn ptr_for_ipv6_cluster_ip() {
    let mut z = fixture();
    z.apply(Change::ServiceApplied(service(
        "prod",
        "six",
        "fd00::a",
        &[],
    )));
    let m = ask(
        &z,
        "a.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.",
        RecordType::PTR,
    );
    assert_eq!(rdata(&m), ["six.prod.svc.cluster.local."]);
    let m = ask(&z, "six.prod.svc.cluster.local.", RecordType::AAAA);
    assert_eq!(rdata(&m), ["fd00::a"]);
}

#[test]
fn external_name_service_is_a_cname() {
    let m = ask(&fixture(), "ext.prod.svc.cluster.local.", RecordType::CNAME);
    assert_eq!(rcode(&m), ResponseCode::NoError);
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].record_type(), RecordType::CNAME);
    assert_eq!(rdata(&m), ["example.com."]);
}

/// Stub resolvers do not follow a CNAME: for other types the server asks upstream for the
/// target (as CoreDNS does) and appends what it gets.
#[test]
fn external_name_to_outside_name_is_chased_upstream() {
    let z = fixture();
    let q = query_bytes("ext.prod.svc.cluster.local.", RecordType::A, None);
    let Answer::Chase { partial, query } = answer(&z, &q, Transport::Udp) else {
        panic!("expected a chase")
    };
    let p = Message::from_vec(&partial).unwrap();
    assert_eq!(rdata(&p), ["example.com."]);
    let up = Message::from_vec(&query).unwrap();
    assert_eq!(up.queries[0].name.to_string(), "example.com.");
    assert_eq!(up.queries[0].query_type, RecordType::A);
    // The upstream's answer is appended.
    let mut reply = up.clone();
    reply.metadata.message_type = hickory_proto::op::MessageType::Response;
    reply.answers.push(Record::from_rdata(
        Name::from_ascii("example.com.").unwrap(),
        300,
        RData::A(A::new(192, 0, 2, 9)),
    ));
    let done = crate::complete_chase(&q, &partial, Some(&reply.to_vec().unwrap()), Transport::Udp);
    let m = Message::from_vec(&done).unwrap();
    assert_eq!(rdata(&m), ["example.com.", "192.0.2.9"]);
    assert_eq!(m.metadata.id, 0x4242);
    // No upstream answer: the CNAME alone.
    let alone = crate::complete_chase(&q, &partial, None, Transport::Udp);
    assert_eq!(rdata(&Message::from_vec(&alone).unwrap()), ["example.com."]);
    // The target does not exist: NXDOMAIN for the end of the chain.
    reply.answers.clear();
    reply.metadata.response_code = ResponseCode::NXDomain;
    let nx = crate::complete_chase(&q, &partial, Some(&reply.to_vec().unwrap()), Transport::Udp);
    assert_eq!(
        rcode(&Message::from_vec(&nx).unwrap()),
        ResponseCode::NXDomain
    );
}

#[test]
fn external_name_to_service_in_zone_is_followed_locally() {
    let mut z = fixture();
    z.apply(Change::ServiceApplied(external(
        "prod",
        "alias",
        "web.prod.svc.cluster.local",
    )));
    z.apply(Change::ServiceApplied(external(
        "prod",
        "loop1",
        "loop2.prod.svc.cluster.local",
    )));
    z.apply(Change::ServiceApplied(external(
        "prod",
        "loop2",
        "loop1.prod.svc.cluster.local",
    )));
    let m = ask(&z, "alias.prod.svc.cluster.local.", RecordType::A);
    assert_eq!(rdata(&m), ["web.prod.svc.cluster.local.", "10.96.0.10"]);
    // A loop of ExternalNames stops after a bounded chain.
    let m = ask(&z, "loop1.prod.svc.cluster.local.", RecordType::A);
    assert_eq!(rcode(&m), ResponseCode::NoError);
    assert!(
        m.answers.len() <= 9
            && m.answers
                .iter()
                .all(|r| r.record_type() == RecordType::CNAME)
    );
}

#[test]
fn pod_name_resolves_to_its_dashed_address() {
    let m = ask(
        &fixture(),
        "10-244-7-9.default.pod.cluster.local.",
        RecordType::A,
    );
    assert_eq!(a_records(&m), ["10.244.7.9"]);
}

#[test]
fn pod_name_in_missing_namespace_is_nxdomain() {
    let m = ask(
        &fixture(),
        "10-244-7-9.nope.pod.cluster.local.",
        RecordType::A,
    );
    assert_nxdomain(&m);
}

#[test]
fn malformed_pod_name_is_nxdomain() {
    let z = fixture();
    for name in [
        "10-244-7.default.pod.cluster.local.",
        "10-244-7-999.default.pod.cluster.local.",
        "web.default.pod.cluster.local.",
    ] {
        assert_nxdomain(&ask(&z, name, RecordType::A));
    }
}

#[test]
fn dns_version_is_txt_1_1_0() {
    let m = ask(&fixture(), "dns-version.cluster.local.", RecordType::TXT);
    assert_eq!(rcode(&m), ResponseCode::NoError);
    let RData::TXT(txt) = &m.answers[0].data else {
        panic!("{m}")
    };
    assert_eq!(txt.to_string(), "1.1.0");
}

// ---- TTL and SOA ----------------------------------------------------------------------------

#[test]
fn every_record_has_ttl_5() {
    let z = fixture();
    for (name, t) in [
        ("web.prod.svc.cluster.local.", RecordType::A),
        ("db.prod.svc.cluster.local.", RecordType::A),
        ("_pg._tcp.db.prod.svc.cluster.local.", RecordType::SRV),
        ("10.0.96.10.in-addr.arpa.", RecordType::PTR),
        ("ext.prod.svc.cluster.local.", RecordType::CNAME),
        ("dns-version.cluster.local.", RecordType::TXT),
        ("cluster.local.", RecordType::SOA),
    ] {
        let m = ask(&z, name, t);
        assert!(!m.answers.is_empty(), "{name}");
        for r in m.answers.iter().chain(&m.additionals) {
            assert_eq!(r.ttl, TTL, "{name}: {r}");
        }
    }
    assert_eq!(TTL, 5);
}

#[test]
fn negative_answers_carry_soa_with_minimum_5() {
    let z = fixture();
    for m in [
        ask(&z, "nope.prod.svc.cluster.local.", RecordType::A),
        ask(&z, "web.prod.svc.cluster.local.", RecordType::AAAA),
    ] {
        let RData::SOA(soa) = &m.authorities[0].data else {
            panic!("{m}")
        };
        assert_eq!(soa.minimum, 5);
        assert_eq!(m.authorities[0].ttl, 5);
        assert_eq!(
            soa.mname,
            Name::from_ascii("ns.dns.cluster.local.").unwrap()
        );
    }
}

#[test]
fn apex_answers_soa() {
    let m = ask(&fixture(), "cluster.local.", RecordType::SOA);
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].record_type(), RecordType::SOA);
}

#[test]
fn soa_serial_moves_with_changes() {
    let mut z = fixture();
    let before = z.serial();
    z.apply(Change::NamespaceApplied(namespace("new")));
    assert_ne!(z.serial(), before);
}

// ---- NXDOMAIN vs NODATA -----------------------------------------------------------------------

#[test]
fn unknown_service_is_nxdomain() {
    assert_nxdomain(&ask(
        &fixture(),
        "nope.prod.svc.cluster.local.",
        RecordType::A,
    ));
}

#[test]
fn service_in_missing_namespace_is_nxdomain() {
    assert_nxdomain(&ask(
        &fixture(),
        "web.nope.svc.cluster.local.",
        RecordType::A,
    ));
}

#[test]
fn missing_namespace_is_nxdomain() {
    let z = fixture();
    assert_nxdomain(&ask(&z, "nope.svc.cluster.local.", RecordType::A));
    assert_nxdomain(&ask(&z, "nope.pod.cluster.local.", RecordType::A));
}

#[test]
fn malformed_names_are_nxdomain() {
    let z = fixture();
    for name in [
        "x.cluster.local.",
        "a.b.c.d.e.f.svc.cluster.local.",
        "x.y.web.prod.svc.cluster.local.",
        "a.b.c.pod.cluster.local.",
        "x.dns-version.cluster.local.",
    ] {
        assert_nxdomain(&ask(&z, name, RecordType::A));
    }
}

#[test]
fn apexes_are_nodata() {
    let z = fixture();
    for name in ["cluster.local.", "svc.cluster.local.", "pod.cluster.local."] {
        assert_nodata(&ask(&z, name, RecordType::A));
    }
}

#[test]
fn existing_namespace_is_nodata() {
    let z = fixture();
    assert_nodata(&ask(&z, "prod.svc.cluster.local.", RecordType::A));
    // A namespace with no services exists all the same.
    assert_nodata(&ask(&z, "quiet.svc.cluster.local.", RecordType::A));
}

#[test]
fn namespace_known_only_from_a_service_is_nodata() {
    let mut z = Zone::new("cluster.local").unwrap();
    z.apply(Change::ServiceApplied(service(
        "late",
        "a",
        "10.96.1.1",
        &[],
    )));
    z.mark_synced();
    assert_nodata(&ask(&z, "late.svc.cluster.local.", RecordType::A));
}

#[test]
fn aaaa_on_ipv4_service_is_nodata() {
    let z = fixture();
    assert_nodata(&ask(&z, "web.prod.svc.cluster.local.", RecordType::AAAA));
    assert_nodata(&ask(&z, "db.prod.svc.cluster.local.", RecordType::AAAA));
    assert_nodata(&ask(
        &z,
        "db-0.db.prod.svc.cluster.local.",
        RecordType::AAAA,
    ));
    assert_nodata(&ask(
        &z,
        "10-244-7-9.default.pod.cluster.local.",
        RecordType::AAAA,
    ));
}

#[test]
fn other_types_on_existing_names_are_nodata() {
    let z = fixture();
    assert_nodata(&ask(&z, "web.prod.svc.cluster.local.", RecordType::TXT));
    assert_nodata(&ask(&z, "web.prod.svc.cluster.local.", RecordType::MX));
    assert_nodata(&ask(&z, "dns-version.cluster.local.", RecordType::A));
}

/// musl stops at the first answer that is not NXDOMAIN, so every search-list expansion of a
/// name that does not exist in the cluster must be NXDOMAIN, and the bare name forwarded.
#[test]
fn search_list_expansions_are_nxdomain() {
    let z = fixture();
    for name in [
        "example.com.prod.svc.cluster.local.",
        "example.com.svc.cluster.local.",
        "example.com.cluster.local.",
        "web.prod.svc.cluster.local.prod.svc.cluster.local.",
        "web.prod.svc.cluster.local.svc.cluster.local.",
        "web.prod.svc.cluster.local.cluster.local.",
        "web.prod.prod.svc.cluster.local.",
    ] {
        for t in [RecordType::A, RecordType::AAAA] {
            assert_nxdomain(&ask(&z, name, t));
        }
    }
    let q = query_bytes("example.com.", RecordType::A, None);
    assert_eq!(answer(&z, &q, Transport::Udp), Answer::Forward);
}

/// A musl client in `prod` (search `prod.svc.cluster.local svc.cluster.local cluster.local`,
/// ndots:5) walks the list and stops at the first answer that is not NXDOMAIN: short names
/// must reach the right expansion, and external names must fall through all of them.
#[test]
fn musl_search_walk_finds_short_names_and_falls_through_for_external() {
    let z = fixture();
    let search = [
        "prod.svc.cluster.local.",
        "svc.cluster.local.",
        "cluster.local.",
    ];
    let walk = |name: &str| -> Option<Message> {
        for s in search {
            let m = ask(&z, &format!("{name}.{s}"), RecordType::A);
            if rcode(&m) != ResponseCode::NXDomain {
                return Some(m);
            }
        }
        None
    };
    assert_eq!(a_records(&walk("web").unwrap()), ["10.96.0.10"]);
    assert_eq!(a_records(&walk("web.prod").unwrap()), ["10.96.0.10"]);
    assert_eq!(a_records(&walk("db-0.db").unwrap()), ["10.244.2.1"]);
    assert_eq!(a_records(&walk("web.prod.svc").unwrap()), ["10.96.0.10"]);
    assert!(walk("example.com").is_none());
    assert!(walk("www.example.com").is_none());
}

//! Wire and state rules: SERVFAIL before sync, forwarding, case, IDs, FORMERR/NOTIMP/
//! REFUSED/BADVERS, truncation against 512 bytes, EDNS sizes and TCP, and no panic on any
//! bytes.

use hickory_proto::op::{Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};

use crate::testutil::*;
use crate::{Answer, Change, Transport, Zone, answer};

#[test]
fn in_zone_names_get_servfail_before_sync() {
    let mut z = Zone::new("cluster.local").unwrap();
    z.apply(Change::NamespaceApplied(namespace("prod")));
    for name in [
        "nope.prod.svc.cluster.local.",
        "cluster.local.",
        "x.cluster.local.",
    ] {
        let m = ask(&z, name, RecordType::A);
        assert_eq!(rcode(&m), ResponseCode::ServFail, "{name}");
        assert!(m.answers.is_empty() && m.authorities.is_empty());
    }
    let q = query_bytes("example.com.", RecordType::A, None);
    assert_eq!(answer(&z, &q, Transport::Udp), Answer::Forward);
    z.mark_synced();
    assert_nxdomain(&ask(&z, "nope.prod.svc.cluster.local.", RecordType::A));
}

#[test]
fn names_outside_the_zone_are_forwarded() {
    let z = fixture();
    for name in ["example.com.", "local.", "cluster.", "other.local.", "."] {
        let q = query_bytes(name, RecordType::A, None);
        assert_eq!(answer(&z, &q, Transport::Udp), Answer::Forward, "{name}");
    }
}

#[test]
fn custom_domain_is_honoured() {
    let z = Zone::from_snapshot(
        "corp.example",
        &[service("prod", "web", "10.96.0.10", &[])],
        &[],
        &[namespace("prod")],
    )
    .unwrap();
    assert_eq!(
        a_records(&ask(&z, "web.prod.svc.corp.example.", RecordType::A)),
        ["10.96.0.10"]
    );
    let q = query_bytes("web.prod.svc.cluster.local.", RecordType::A, None);
    assert_eq!(answer(&z, &q, Transport::Udp), Answer::Forward);
    assert!(Zone::new("bad domain").is_err());
    assert!(Zone::new(".").is_err());
}

#[test]
fn names_match_case_insensitively_and_echo_the_question() {
    let m = ask(&fixture(), "WeB.PROD.Svc.Cluster.LOCAL.", RecordType::A);
    assert_eq!(a_records(&m), ["10.96.0.10"]);
    assert_eq!(m.queries[0].name.to_string(), "WeB.PROD.Svc.Cluster.LOCAL.");
    // Compare case-sensitively: hickory's Name equality ignores case.
    assert_eq!(m.answers[0].name.to_string(), "WeB.PROD.Svc.Cluster.LOCAL.");
}

#[test]
fn id_and_recursion_desired_are_echoed() {
    let m = ask(&fixture(), "web.prod.svc.cluster.local.", RecordType::A);
    assert_eq!(m.metadata.id, 0x4242);
    assert!(m.metadata.recursion_desired);
    assert!(m.metadata.recursion_available);
}

#[test]
fn garbage_gets_formerr_with_its_id() {
    let z = fixture();
    // A header claiming one question, and no question.
    let q = [0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    let m = ask_with(&z, &q, Transport::Udp);
    assert_eq!(m.metadata.id, 0xbeef);
    assert_eq!(rcode(&m), ResponseCode::FormErr);
    // A name with a compression pointer loop.
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    q.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    assert_eq!(
        rcode(&ask_with(&z, &q, Transport::Udp)),
        ResponseCode::FormErr
    );
}

#[test]
fn runts_and_responses_are_dropped() {
    let z = fixture();
    assert_eq!(answer(&z, &[], Transport::Udp), Answer::Drop);
    assert_eq!(answer(&z, &[1, 2, 3], Transport::Udp), Answer::Drop);
    let mut q = query_bytes("web.prod.svc.cluster.local.", RecordType::A, None);
    q[2] |= 0x80;
    assert_eq!(answer(&z, &q, Transport::Udp), Answer::Drop);
}

#[test]
fn two_questions_are_formerr() {
    let mut m = Message::query();
    m.add_query(Query::query(
        Name::from_ascii("web.prod.svc.cluster.local.").unwrap(),
        RecordType::A,
    ));
    m.add_query(Query::query(
        Name::from_ascii("db.prod.svc.cluster.local.").unwrap(),
        RecordType::A,
    ));
    let r = ask_with(&fixture(), &m.to_vec().unwrap(), Transport::Udp);
    assert_eq!(rcode(&r), ResponseCode::FormErr);
}

#[test]
fn other_opcodes_are_notimp() {
    let mut m = Message::query();
    m.metadata.op_code = OpCode::Status;
    let r = ask_with(&fixture(), &m.to_vec().unwrap(), Transport::Udp);
    assert_eq!(rcode(&r), ResponseCode::NotImp);
}

#[test]
fn non_internet_class_and_transfers_are_refused_in_zone() {
    let z = fixture();
    let mut m = Message::query();
    let mut q = Query::query(
        Name::from_ascii("web.prod.svc.cluster.local.").unwrap(),
        RecordType::A,
    );
    q.set_query_class(DNSClass::CH);
    m.add_query(q);
    assert_eq!(
        rcode(&ask_with(&z, &m.to_vec().unwrap(), Transport::Udp)),
        ResponseCode::Refused
    );
    let q = query_bytes("cluster.local.", RecordType::AXFR, None);
    assert_eq!(
        rcode(&ask_with(&z, &q, Transport::Tcp)),
        ResponseCode::Refused
    );
}

#[test]
fn udp_answer_over_512_bytes_is_truncated() {
    let m = ask(&fixture(), "big.prod.svc.cluster.local.", RecordType::A);
    assert!(m.metadata.truncation);
    assert!(m.answers.is_empty());
    assert_eq!(m.queries.len(), 1);
}

#[test]
fn udp_answer_fits_the_edns_size_offered() {
    let z = fixture();
    let q = query_bytes("big.prod.svc.cluster.local.", RecordType::A, Some(4096));
    let m = ask_with(&z, &q, Transport::Udp);
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 60);
    assert!(
        m.edns.is_some(),
        "an OPT in the query gets one in the answer"
    );
    // An offer below 512 still gets 512.
    let q = query_bytes("db.prod.svc.cluster.local.", RecordType::A, Some(100));
    assert_eq!(ask_with(&z, &q, Transport::Udp).answers.len(), 2);
}

#[test]
fn tcp_answers_are_not_truncated() {
    let q = query_bytes("big.prod.svc.cluster.local.", RecordType::A, None);
    let m = ask_with(&fixture(), &q, Transport::Tcp);
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 60);
}

#[test]
fn additional_section_is_dropped_before_truncating() {
    let mut z = fixture();
    let eps: Vec<String> = (1..=15).map(|i| format!("10.246.0.{i}")).collect();
    let eps: Vec<Ep<'_>> = eps
        .iter()
        .map(|ip| (ip.as_str(), None, Some(true)))
        .collect();
    z.apply(Change::ServiceApplied(headless(
        "prod",
        "srvs",
        &[("p", "TCP", 1)],
    )));
    z.apply(Change::SliceApplied(slice(
        "prod",
        "srvs-1",
        "srvs",
        &eps,
        &[("p", "TCP", 1)],
    )));
    // 15 SRV records fit in 1232 bytes (targets are never compressed), their 15 A records
    // do not as well.
    let q = query_bytes(
        "_p._tcp.srvs.prod.svc.cluster.local.",
        RecordType::SRV,
        Some(1232),
    );
    let udp = answer(&z, &q, Transport::Udp);
    let Answer::Local(bytes) = udp else {
        panic!("{udp:?}")
    };
    assert!(bytes.len() <= 1232);
    let m = Message::from_vec(&bytes).unwrap();
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 15);
    assert!(m.additionals.is_empty());
    assert_eq!(ask_with(&z, &q, Transport::Tcp).additionals.len(), 15);
}

#[test]
fn edns_version_above_zero_is_badvers() {
    let q = query_bytes("web.prod.svc.cluster.local.", RecordType::A, Some(1232));
    let mut m = Message::from_vec(&q).unwrap();
    if let Some(e) = m.edns.as_mut() {
        e.set_version(1);
    }
    let r = ask_with(&fixture(), &m.to_vec().unwrap(), Transport::Udp);
    // BADVERS shares its value (16) with BADSIG, which is how hickory reads it back.
    assert_eq!(u16::from(rcode(&r)), 16);
    assert!(r.edns.is_some());
}

#[test]
fn servfail_helper_echoes_the_question() {
    let q = query_bytes("example.com.", RecordType::A, None);
    let m = Message::from_vec(&crate::servfail(&q).unwrap()).unwrap();
    assert_eq!(rcode(&m), ResponseCode::ServFail);
    assert_eq!(m.queries.len(), 1);
    assert_eq!(m.metadata.id, 0x4242);
    assert!(crate::servfail(&[1, 2]).is_none());
}

proptest::proptest! {
    /// Any bytes: no panic, and whatever is sent back parses.
    #[test]
    fn arbitrary_bytes_never_panic_and_answers_parse(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
        let z = fixture();
        for t in [Transport::Udp, Transport::Tcp] {
            if let Answer::Local(resp) = answer(&z, &bytes, t) {
                proptest::prop_assert!(Message::from_vec(&resp).is_ok());
                proptest::prop_assert_eq!(&resp[..2], &bytes[..2]);
            }
        }
    }

    /// Valid queries for mutated names and any type: the answer parses and fits UDP limits.
    #[test]
    fn generated_queries_answer_within_limits(
        labels in proptest::collection::vec("[a-zA-Z0-9_-]{1,12}", 0..6),
        suffix in proptest::sample::select(vec!["svc.cluster.local.", "pod.cluster.local.", "cluster.local.", "prod.svc.cluster.local.", "in-addr.arpa.", "com."]),
        qtype in proptest::num::u16::ANY,
    ) {
        let z = fixture();
        // Raw labels: hickory's text parser rejects some of these, the wire does not.
        let all: Vec<&[u8]> = labels.iter().map(String::as_bytes).chain(suffix.split('.').filter(|l| !l.is_empty()).map(str::as_bytes)).collect();
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_labels(all).unwrap(), RecordType::from(qtype)));
        let q = m.to_vec().unwrap();
        if let Answer::Local(resp) = answer(&z, &q, Transport::Udp) {
            proptest::prop_assert!(resp.len() <= 512);
            proptest::prop_assert!(Message::from_vec(&resp).is_ok());
        }
    }
}

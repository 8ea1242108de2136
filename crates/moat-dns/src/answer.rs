//! The wire, sans IO: a query's bytes in; the response's bytes, "forward it" or "drop it"
//! out. Never panics on any input (a fuzz target holds it to that).
//!
//! - Fewer than 12 bytes, or a message with the QR bit set, is dropped: answering responses
//!   is how two servers end up in a loop, and a short packet has no ID to answer to.
//! - What hickory cannot parse gets a header-only FORMERR with the query's ID and opcode.
//! - Answers are authoritative, TTL 5, with the zone's SOA in the authority section of
//!   negative answers.
//! - Over UDP an answer must fit 512 bytes, or the EDNS size offered (capped at 1232, what
//!   we advertise): the additional section goes first, then the answer is replaced by an
//!   empty one with TC set so the client retries over TCP.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, RecordType};

use crate::lookup::{Outcome, in_zone, resolve, soa};
use crate::zone::Zone;

/// The UDP payload size we advertise and accept at most (the DNS flag day 2020 value: no
/// fragmentation on common paths).
pub const EDNS_PAYLOAD: u16 = 1232;

/// The largest message a TCP frame can carry.
const TCP_MAX: usize = u16::MAX as usize;

const HEADER_LEN: usize = 12;

/// How the query arrived: it decides how large an answer may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// UDP: 512 bytes, or the EDNS size offered.
    Udp,
    /// TCP: up to 65,535 bytes.
    Tcp,
}

/// What to do with a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Send these bytes back.
    Local(Vec<u8>),
    /// Not in the cluster zone: send the query upstream and relay the response.
    Forward,
    /// An ExternalName answered with a CNAME to a name outside the zone: send `query` (the
    /// same question for the target) upstream, then reply with
    /// [`complete_chase`]`(original query, partial, upstream response)`.
    Chase { partial: Vec<u8>, query: Vec<u8> },
    /// Send nothing (responses, runts).
    Drop,
}

/// Answers one query from `zone`.
pub fn answer(zone: &Zone, query: &[u8], transport: Transport) -> Answer {
    if query.len() < HEADER_LEN || query[2] & 0x80 != 0 {
        return Answer::Drop;
    }
    let Ok(req) = Message::from_vec(query) else {
        return Answer::Local(header_only(query, ResponseCode::FormErr));
    };
    if req.metadata.message_type != MessageType::Query {
        return Answer::Drop;
    }
    if req.metadata.op_code != OpCode::Query {
        return Answer::Local(header_only(query, ResponseCode::NotImp));
    }
    let [q] = req.queries.as_slice() else {
        return Answer::Local(header_only(query, ResponseCode::FormErr));
    };
    let limit = limit_for(&req, transport);
    if req.edns.as_ref().is_some_and(|e| e.version() > 0) {
        // RFC 6891: we speak EDNS version 0 only.
        let resp = response(&req, ResponseCode::BADVERS, false);
        return Answer::Local(encode(resp, limit, query));
    }
    let labels: Vec<Vec<u8>> = q.name.iter().map(<[u8]>::to_ascii_lowercase).collect();
    let ours = in_zone(zone, &labels);
    let transfer = matches!(q.query_type, RecordType::AXFR | RecordType::IXFR);
    if ours && (q.query_class != DNSClass::IN || transfer) {
        let resp = response(&req, ResponseCode::Refused, false);
        return Answer::Local(encode(resp, limit, query));
    }
    if q.query_class != DNSClass::IN {
        return Answer::Forward;
    }
    let mut resp = match resolve(zone, &q.name, q.query_type) {
        Outcome::Forward => return Answer::Forward,
        Outcome::NotSynced => response(&req, ResponseCode::ServFail, false),
        Outcome::NxDomain => {
            let mut r = response(&req, ResponseCode::NXDomain, true);
            r.authorities.push(soa(zone));
            r
        }
        Outcome::NoData => {
            let mut r = response(&req, ResponseCode::NoError, true);
            r.authorities.push(soa(zone));
            r
        }
        Outcome::Records {
            answers,
            additionals,
        } => {
            let mut r = response(&req, ResponseCode::NoError, true);
            r.answers = answers;
            r.additionals = additionals;
            r
        }
        Outcome::Chase { answers, target } => {
            let mut partial = response(&req, ResponseCode::NoError, true);
            partial.answers = answers;
            let mut chase = Message::query();
            chase.metadata.id = req.metadata.id;
            chase.metadata.recursion_desired = true;
            chase.add_query(Query::query(target, q.query_type));
            let mut edns = Edns::new();
            edns.set_max_payload(EDNS_PAYLOAD);
            chase.edns = Some(edns);
            // Both are ours and small; failing to encode them is answered SERVFAIL.
            return match (partial.to_vec(), chase.to_vec()) {
                (Ok(partial), Ok(query)) => Answer::Chase { partial, query },
                _ => Answer::Local(header_only(query, ResponseCode::ServFail)),
            };
        }
    };
    // Reverse answers are ours only for the addresses we know; not authoritative for the
    // rest of in-addr.arpa.
    if !ours {
        resp.metadata.authoritative = false;
    }
    Answer::Local(encode(resp, limit, query))
}

/// The reply to `query` after an [`Answer::Chase`]: the partial answer (the CNAMEs) with
/// the upstream's answer records appended, and its NXDOMAIN if the target does not exist;
/// the CNAMEs alone when the upstream failed (`None`) or sent something unusable. Sized
/// for `transport` like every answer.
pub fn complete_chase(
    query: &[u8],
    partial: &[u8],
    upstream: Option<&[u8]>,
    transport: Transport,
) -> Vec<u8> {
    let Ok(req) = Message::from_vec(query) else {
        return partial.to_vec();
    };
    let Ok(mut resp) = Message::from_vec(partial) else {
        return partial.to_vec();
    };
    if let Some(up) = upstream.and_then(|u| Message::from_vec(u).ok()) {
        let rcode = up.metadata.response_code;
        if matches!(rcode, ResponseCode::NoError | ResponseCode::NXDomain) {
            resp.answers.extend(up.answers);
            resp.metadata.response_code = rcode;
        }
    }
    encode(resp, limit_for(&req, transport), query)
}

fn limit_for(req: &Message, transport: Transport) -> usize {
    match transport {
        Transport::Tcp => TCP_MAX,
        Transport::Udp => usize::from(req.max_payload().clamp(512, EDNS_PAYLOAD)),
    }
}

/// A SERVFAIL for `query` (the server's answer when forwarding fails), echoing its question
/// when it parses; `None` for what [`answer`] would drop.
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < HEADER_LEN || query[2] & 0x80 != 0 {
        return None;
    }
    match Message::from_vec(query) {
        Ok(req) if req.queries.len() == 1 => {
            let resp = response(&req, ResponseCode::ServFail, false);
            Some(encode(resp, 512, query))
        }
        _ => Some(header_only(query, ResponseCode::ServFail)),
    }
}

/// An empty response to `req` echoing its question, ID, RD and CD, with our OPT record
/// when the query had one.
fn response(req: &Message, rcode: ResponseCode, authoritative: bool) -> Message {
    let mut resp = Message::response(req.metadata.id, OpCode::Query);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.checking_disabled = req.metadata.checking_disabled;
    // Other names are forwarded, so recursion is available through us.
    resp.metadata.recursion_available = true;
    resp.metadata.authoritative = authoritative;
    resp.metadata.response_code = rcode;
    resp.queries = req.queries.clone();
    if req.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        edns.set_version(0);
        resp.edns = Some(edns);
    }
    resp
}

/// Encodes within `limit` bytes: the whole answer, else without the additional section,
/// else an empty answer with TC set.
fn encode(mut resp: Message, limit: usize, query: &[u8]) -> Vec<u8> {
    match resp.to_vec() {
        Ok(bytes) if bytes.len() <= limit => return bytes,
        Ok(_) => {}
        Err(_) => return header_only(query, ResponseCode::ServFail),
    }
    if !resp.additionals.is_empty() {
        resp.additionals.clear();
        if let Ok(bytes) = resp.to_vec()
            && bytes.len() <= limit
        {
            return bytes;
        }
    }
    match resp.truncate().to_vec() {
        Ok(bytes) if bytes.len() <= limit => bytes,
        // Even the question does not fit (a query larger than the limit): header only.
        _ => {
            let mut bytes = header_only(query, resp.metadata.response_code);
            bytes[2] |= 0x02;
            bytes
        }
    }
}

/// A 12-byte response to whatever `query` is: its ID, opcode and RD, our RA, `rcode`
/// (low four bits), no records. `query` has at least 12 bytes.
fn header_only(query: &[u8], rcode: ResponseCode) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN];
    out[..2].copy_from_slice(&query[..2]);
    // QR, the opcode bits and RD from the query.
    out[2] = 0x80 | (query[2] & 0x78) | (query[2] & 0x01);
    out[3] = 0x80 | (rcode.low() & 0x0f);
    out
}

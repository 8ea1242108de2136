//! Cluster DNS: the job of CoreDNS's `kubernetes` plugin, run by every node agent.
//!
//! Three layers, each usable alone:
//! - [`Zone`]: the records of one cluster domain, built from Services, EndpointSlices
//!   (discovery.k8s.io/v1) and Namespaces, updated one watch event at a time
//!   ([`Zone::apply`]). Not synced until [`Zone::mark_synced`]: before that, in-zone names
//!   get SERVFAIL rather than a wrong NXDOMAIN a client would cache.
//! - [`answer`]: sans IO, query bytes in, [`Answer`] out (response bytes, "forward",
//!   "chase this ExternalName's target upstream, then [`complete_chase`]", or "drop").
//!   The rules (records, TTL 5, NXDOMAIN vs NODATA, truncation) are listed in
//!   `lookup.rs` and `answer.rs`.
//! - [`DnsServer`]: UDP and TCP on one address, answering from a [`SharedZone`] and
//!   relaying other names through an [`Upstream`] ([`Forwarder`] reads the node's
//!   resolv.conf and skips loopback and link-local resolvers).
//!
//! The integrator keeps the zone current from watches:
//! `zone.write().apply(Change::ServiceApplied(svc))`, then `mark_synced()` once the first
//! lists are in.

mod answer;
mod error;
mod forward;
mod lookup;
mod server;
mod zone;

#[cfg(test)]
mod incremental_tests;
#[cfg(test)]
mod rules_tests;
#[cfg(test)]
mod testutil;
#[cfg(test)]
mod wire_tests;

pub use answer::{Answer, EDNS_PAYLOAD, Transport, answer, complete_chase, servfail};
pub use error::{ForwardError, ServerError, ZoneError};
pub use forward::{Forwarder, Upstream, nameservers};
pub use lookup::{SCHEMA_VERSION, TTL};
pub use server::{DnsServer, ServerConfig, SharedZone};
pub use zone::{Change, Zone};

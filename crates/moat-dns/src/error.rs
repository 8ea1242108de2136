//! Errors of the zone, the forwarder and the server.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Building a zone.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    /// The cluster domain is not a plain DNS name (letters, digits, hyphens, dots).
    #[error("invalid cluster domain {0:?}")]
    InvalidDomain(String),
}

/// Forwarding a query upstream.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// resolv.conf listed no usable resolver (or only loopback/link-local/our own).
    #[error("no upstream resolver configured")]
    NoUpstream,
    /// Every resolver was tried and none answered in time.
    #[error("upstream resolver timed out")]
    Timeout,
    /// The upstream's reply was not a response to our query.
    #[error("upstream sent a malformed or mismatched response")]
    BadResponse,
    #[error("upstream I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("reading {path}: {source}")]
    ResolvConf {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("binding {proto} {addr}: {source}")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

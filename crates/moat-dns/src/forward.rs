//! Forwarding names outside the cluster zone: the [`Upstream`] trait the server calls, the
//! resolver list read from the node's resolv.conf, and [`Forwarder`], which relays the
//! query bytes as they came, over the transport the client used.
//!
//! Loopback and link-local nameservers are skipped, as k3s does: a systemd-resolved stub
//! (`127.0.0.53`) or a node-local cache seen from inside the pod network would send the
//! query back to us or nowhere. Addresses the server itself answers on are skipped too.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

use crate::answer::Transport;
use crate::error::ForwardError;

/// Sends a query upstream and returns the response's bytes.
pub trait Upstream: Send + Sync + 'static {
    /// Forwards `query` (a parsed, out-of-zone query) the way it arrived (`transport`).
    fn forward(
        &self,
        query: Vec<u8>,
        transport: Transport,
    ) -> impl Future<Output = Result<Vec<u8>, ForwardError>> + Send;
}

/// Nameserver addresses from resolv.conf text: `nameserver` lines in order, without
/// loopback, link-local, unspecified, or `exclude` (our own addresses), port 53.
pub fn nameservers(resolv_conf: &str, exclude: &[IpAddr]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for line in resolv_conf.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        // A scoped address (fe80::1%eth0) is link-local anyway: it does not parse and is
        // skipped with the rest.
        let Some(Ok(ip)) = words.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        let usable = !ip.is_loopback()
            && !ip.is_unspecified()
            && !is_link_local(&ip)
            && !exclude.contains(&ip);
        let addr = SocketAddr::new(ip, 53);
        if usable && !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Relays queries to a list of resolvers, trying each in order until one answers.
#[derive(Clone, Debug)]
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    /// How long one upstream gets before the next is tried.
    timeout: Duration,
}

impl Forwarder {
    /// Per-upstream wait: glibc's own retry is 5 s, so two upstreams fit in one of its tries.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

    /// A forwarder to these resolvers (tests point it at their own).
    pub fn new(upstreams: Vec<SocketAddr>, timeout: Duration) -> Self {
        Self { upstreams, timeout }
    }

    /// The resolvers of the node's resolv.conf at `path`, less loopback, link-local and
    /// `exclude` (the addresses this server answers on). An empty list is not an error:
    /// every forwarded query then gets SERVFAIL.
    pub fn from_resolv_conf(path: &Path, exclude: &[IpAddr]) -> Result<Self, ForwardError> {
        let text = std::fs::read_to_string(path).map_err(|source| ForwardError::ResolvConf {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::new(
            nameservers(&text, exclude),
            Self::DEFAULT_TIMEOUT,
        ))
    }

    /// The resolvers queries go to, in order.
    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    async fn over_udp(&self, to: SocketAddr, query: &[u8]) -> Result<Vec<u8>, ForwardError> {
        let local: SocketAddr = if to.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        // A fresh socket per query: a random source port, and only `to` can answer it.
        let sock = UdpSocket::bind(local).await?;
        sock.connect(to).await?;
        sock.send(query).await?;
        let mut buf = vec![0u8; usize::from(u16::MAX)];
        loop {
            let n = sock.recv(&mut buf).await?;
            // Stray datagrams (late answers to someone else's ID) are ignored.
            if matches_query(query, &buf[..n]) {
                buf.truncate(n);
                return Ok(buf);
            }
        }
    }

    async fn over_tcp(&self, to: SocketAddr, query: &[u8]) -> Result<Vec<u8>, ForwardError> {
        let len = u16::try_from(query.len()).map_err(|_| ForwardError::BadResponse)?;
        let mut stream = TcpStream::connect(to).await?;
        let mut framed = Vec::with_capacity(query.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(query);
        stream.write_all(&framed).await?;
        let n = stream.read_u16().await?;
        let mut buf = vec![0u8; usize::from(n)];
        stream.read_exact(&mut buf).await?;
        if !matches_query(query, &buf) {
            return Err(ForwardError::BadResponse);
        }
        Ok(buf)
    }

    async fn one(
        &self,
        to: SocketAddr,
        query: &[u8],
        transport: Transport,
    ) -> Result<Vec<u8>, ForwardError> {
        if transport == Transport::Tcp {
            return self.over_tcp(to, query).await;
        }
        self.over_udp(to, query).await
    }
}

impl Upstream for Forwarder {
    async fn forward(&self, query: Vec<u8>, transport: Transport) -> Result<Vec<u8>, ForwardError> {
        let mut last = ForwardError::NoUpstream;
        for &to in &self.upstreams {
            match timeout(self.timeout, self.one(to, &query, transport)).await {
                // A truncated answer is relayed as it is: the client retries over TCP and
                // that query goes upstream over TCP.
                Ok(Ok(resp)) => return Ok(resp),
                Ok(Err(e)) => {
                    tracing::debug!(upstream = %to, error = %e, "forwarding failed");
                    last = e;
                }
                Err(_) => {
                    tracing::debug!(upstream = %to, "forwarding timed out");
                    last = ForwardError::Timeout;
                }
            }
        }
        Err(last)
    }
}

/// Whether `resp` is a response to `query`: same ID, QR set, same question count (the socket
/// is connected to the upstream and its port is random, which is the real defence).
pub(crate) fn matches_query(query: &[u8], resp: &[u8]) -> bool {
    if query.len() < 12 || resp.len() < 12 || resp[..2] != query[..2] || resp[2] & 0x80 == 0 {
        return false;
    }
    // Question count must agree; a response with no question (some FORMERRs) is accepted
    // on ID alone.
    let qd = &resp[4..6];
    qd == [0, 0] || qd == &query[4..6]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_skips_loopback_link_local_and_self() {
        let text = "# comment\n\
            nameserver 127.0.0.53\n\
            nameserver 10.0.0.2 # office\n\
            nameserver 169.254.20.10\n\
            nameserver ::1\n\
            nameserver fe80::1%eth0\n\
            nameserver fe80::2\n\
            nameserver 0.0.0.0\n\
            nameserver 10.96.0.10\n\
            nameserver 2001:db8::53\n\
            nameserver 10.0.0.2\n\
            search example.org\n\
            options ndots:2\n\
            ;nameserver 10.9.9.9\n\
            nameserver not-an-ip\n";
        let exclude: [IpAddr; 1] = ["10.96.0.10".parse().unwrap()];
        let got = nameservers(text, &exclude);
        let want: Vec<SocketAddr> = vec![
            "10.0.0.2:53".parse().unwrap(),
            "[2001:db8::53]:53".parse().unwrap(),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn missing_resolv_conf_is_an_error() {
        let err = Forwarder::from_resolv_conf(Path::new("/nonexistent/resolv.conf"), &[]);
        assert!(matches!(err, Err(ForwardError::ResolvConf { .. })));
    }

    #[tokio::test]
    async fn no_upstream_is_an_error() {
        let f = Forwarder::new(Vec::new(), Duration::from_millis(10));
        let r = f.forward(vec![0; 12], Transport::Udp).await;
        assert!(matches!(r, Err(ForwardError::NoUpstream)));
    }

    #[tokio::test]
    async fn silent_upstream_times_out() {
        // A bound socket that never answers.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let f = Forwarder::new(
            vec![silent.local_addr().unwrap()],
            Duration::from_millis(50),
        );
        let r = f.forward(vec![0; 12], Transport::Udp).await;
        assert!(matches!(r, Err(ForwardError::Timeout)), "{r:?}");
    }

    #[test]
    fn responses_must_match_the_query() {
        let q = [0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        let mut r = q;
        r[2] |= 0x80;
        assert!(matches_query(&q, &r));
        assert!(!matches_query(&q, &q), "QR must be set");
        let mut other = r;
        other[1] ^= 1;
        assert!(!matches_query(&q, &other), "ID must match");
        assert!(!matches_query(&q, &r[..11]));
    }
}

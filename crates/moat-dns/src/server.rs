//! The thin async server: UDP and TCP listeners on one address answering from a shared
//! zone with [`answer`], and relaying out-of-zone queries through an [`Upstream`].
//!
//! Local answers are computed inline on the receiving task (a read lock and a few
//! microseconds); only forwarded queries (and ExternalName targets chased upstream) get a
//! task of their own, bounded so a flood of external names cannot grow memory without
//! limit (past the bound they get SERVFAIL at once, which musl and glibc both retry). TCP connections are bounded too, and closed
//! after an idle period.

use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;

use crate::answer::{Answer, Transport, answer, complete_chase, servfail};
use crate::error::ServerError;
use crate::forward::Upstream;
use crate::zone::Zone;

/// The zone as the server reads it and the watch loops update it.
pub type SharedZone = Arc<RwLock<Zone>>;

/// Limits of the server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Tasks receiving on the UDP socket (one per core keeps every core answering).
    pub udp_workers: usize,
    /// Forwarded queries in flight at once.
    pub max_forwards: usize,
    /// Open TCP connections at once; more wait in the accept queue.
    pub max_tcp_connections: usize,
    /// A TCP connection with no complete query for this long is closed.
    pub tcp_idle: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            udp_workers: std::thread::available_parallelism().map_or(2, usize::from),
            max_forwards: 1024,
            max_tcp_connections: 256,
            tcp_idle: Duration::from_secs(10),
        }
    }
}

/// A running server; dropping it stops every task it started.
#[derive(Debug)]
pub struct DnsServer {
    addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// Binds UDP and TCP on `addr` (port 0: one ephemeral port for both) and starts
    /// answering. Must be called inside a tokio runtime.
    pub async fn bind<U: Upstream>(
        addr: SocketAddr,
        zone: SharedZone,
        upstream: U,
        config: ServerConfig,
    ) -> Result<Self, ServerError> {
        let (udp, tcp) = bind_pair(addr).await?;
        let addr = udp.local_addr().map_err(|source| ServerError::Bind {
            proto: "udp",
            addr,
            source,
        })?;
        let udp = Arc::new(udp);
        let upstream = Arc::new(upstream);
        let forwards = Arc::new(Semaphore::new(config.max_forwards.max(1)));
        let mut tasks = Vec::new();
        for _ in 0..config.udp_workers.max(1) {
            tasks.push(tokio::spawn(udp_worker(
                udp.clone(),
                zone.clone(),
                upstream.clone(),
                forwards.clone(),
            )));
        }
        tasks.push(tokio::spawn(tcp_acceptor(tcp, zone, upstream, config)));
        Ok(Self { addr, tasks })
    }

    /// The address both listeners are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// UDP and TCP on the same port. With port 0 the kernel picks the UDP port, and the TCP
/// port of the same number may be taken: then try again with another.
async fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), ServerError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|source| ServerError::Bind {
                proto: "udp",
                addr,
                source,
            })?;
        let bound = udp.local_addr().map_err(|source| ServerError::Bind {
            proto: "udp",
            addr,
            source,
        })?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(source) => {
                if addr.port() != 0 || attempts >= 16 {
                    return Err(ServerError::Bind {
                        proto: "tcp",
                        addr: bound,
                        source,
                    });
                }
            }
        }
    }
}

fn read(zone: &SharedZone) -> RwLockReadGuard<'_, Zone> {
    // A writer that panicked left a zone that is still consistent per object: serve it.
    zone.read().unwrap_or_else(PoisonError::into_inner)
}

async fn udp_worker<U: Upstream>(
    sock: Arc<UdpSocket>,
    zone: SharedZone,
    upstream: Arc<U>,
    forwards: Arc<Semaphore>,
) {
    // Queries are small; anything longer than this is cut and answered FORMERR.
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "dns: udp receive");
                tokio::task::yield_now().await;
                continue;
            }
        };
        let query = &buf[..n];
        let ans = answer(&read(&zone), query, Transport::Udp);
        match ans {
            Answer::Local(resp) => send(&sock, &resp, peer).await,
            Answer::Drop => {}
            Answer::Chase {
                partial,
                query: up_query,
            } => {
                let Ok(permit) = forwards.clone().try_acquire_owned() else {
                    let resp = complete_chase(query, &partial, None, Transport::Udp);
                    send(&sock, &resp, peer).await;
                    continue;
                };
                let query = query.to_vec();
                let sock = sock.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let resp = chase(&*upstream, &query, &partial, up_query, Transport::Udp).await;
                    send(&sock, &resp, peer).await;
                });
            }
            Answer::Forward => {
                let Ok(permit) = forwards.clone().try_acquire_owned() else {
                    if let Some(resp) = servfail(query) {
                        send(&sock, &resp, peer).await;
                    }
                    continue;
                };
                let query = query.to_vec();
                let sock = sock.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Some(resp) = forward(&*upstream, query, Transport::Udp).await {
                        send(&sock, &resp, peer).await;
                    }
                });
            }
        }
    }
}

async fn send(sock: &UdpSocket, resp: &[u8], peer: SocketAddr) {
    if let Err(e) = sock.send_to(resp, peer).await {
        tracing::debug!(error = %e, %peer, "dns: udp send");
    }
}

/// Follows an ExternalName out of the zone: asks upstream over UDP (the chase query offers
/// EDNS) and merges the result into the CNAME answer.
async fn chase<U: Upstream>(
    upstream: &U,
    query: &[u8],
    partial: &[u8],
    chase: Vec<u8>,
    transport: Transport,
) -> Vec<u8> {
    let up = upstream.forward(chase, Transport::Udp).await;
    if let Err(e) = &up {
        tracing::debug!(error = %e, "dns: following an ExternalName");
    }
    complete_chase(query, partial, up.ok().as_deref(), transport)
}

/// The upstream's response, or a SERVFAIL when forwarding failed.
async fn forward<U: Upstream>(
    upstream: &U,
    query: Vec<u8>,
    transport: Transport,
) -> Option<Vec<u8>> {
    let fallback = servfail(&query);
    match upstream.forward(query, transport).await {
        Ok(resp) => Some(resp),
        Err(e) => {
            tracing::debug!(error = %e, "dns: forwarding");
            fallback
        }
    }
}

async fn tcp_acceptor<U: Upstream>(
    listener: TcpListener,
    zone: SharedZone,
    upstream: Arc<U>,
    config: ServerConfig,
) {
    let slots = Arc::new(Semaphore::new(config.max_tcp_connections.max(1)));
    // Connections live in this set, so aborting the acceptor ends them too.
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "dns: tcp accept");
                // EMFILE and the like: give the others a moment to close.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let zone = zone.clone();
        let upstream = upstream.clone();
        let idle = config.tcp_idle;
        conns.spawn(async move {
            let _permit = permit;
            tcp_conn(stream, zone, &*upstream, idle).await;
        });
    }
}

/// Answers length-prefixed queries on one connection, in order, until the client closes,
/// goes idle, or sends something we drop.
async fn tcp_conn<U: Upstream>(
    mut stream: TcpStream,
    zone: SharedZone,
    upstream: &U,
    idle: Duration,
) {
    loop {
        let Ok(Ok(len)) = timeout(idle, stream.read_u16()).await else {
            return;
        };
        let mut query = vec![0u8; usize::from(len)];
        let Ok(Ok(_)) = timeout(idle, stream.read_exact(&mut query)).await else {
            return;
        };
        let ans = answer(&read(&zone), &query, Transport::Tcp);
        let resp = match ans {
            Answer::Local(resp) => resp,
            Answer::Drop => return,
            Answer::Chase { partial, query: up } => {
                chase(upstream, &query, &partial, up, Transport::Tcp).await
            }
            Answer::Forward => match forward(upstream, query, Transport::Tcp).await {
                Some(resp) => resp,
                None => return,
            },
        };
        let Ok(n) = u16::try_from(resp.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(resp.len() + 2);
        framed.extend_from_slice(&n.to_be_bytes());
        framed.extend_from_slice(&resp);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

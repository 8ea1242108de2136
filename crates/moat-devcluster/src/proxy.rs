//! The host's way to the cluster's API server: a listener on the host's loopback that
//! forwards each connection, byte for byte (TLS stays end to end), to the server inside node
//! 1's network namespace. The outgoing socket is made by a thread that entered that namespace
//! (`setns` affects only the calling thread), so the host gets no interface, route or rule.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("opening the network namespace {path}")]
    Netns {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("listening on {addr}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Connects to `target` from inside the namespace at `netns`.
fn connect_in(netns: &Path, target: SocketAddr) -> std::io::Result<TcpStream> {
    let ns = File::open(netns)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            TcpStream::connect(target)
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("connect thread panicked")))
    })
}

/// Binds the host-side listener (loopback, a free port).
pub fn bind() -> Result<TcpListener, ProxyError> {
    TcpListener::bind("127.0.0.1:0").map_err(|source| ProxyError::Listen {
        addr: "127.0.0.1:0".into(),
        source,
    })
}

/// Serves until the process is killed.
pub fn serve(listener: TcpListener, netns: &Path, target: SocketAddr) -> Result<(), ProxyError> {
    File::open(netns).map_err(|source| ProxyError::Netns {
        path: netns.display().to_string(),
        source,
    })?;
    for conn in listener.incoming() {
        let Ok(client) = conn else { continue };
        let netns = netns.to_path_buf();
        std::thread::spawn(move || {
            let Ok(server) = connect_in(&netns, target) else {
                return;
            };
            let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                return;
            };
            let up = std::thread::spawn(move || pump(client, server));
            pump(s2, c2);
            let _ = up.join();
        });
    }
    Ok(())
}

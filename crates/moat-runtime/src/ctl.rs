//! The sandbox daemon's control socket: one JSON message per SOCK_SEQPACKET datagram, stdio
//! descriptors riding along as SCM_RIGHTS. Used by the CLI commands and the shims.

use nix::sys::socket::{
    self, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr,
};
use serde::{Deserialize, Serialize};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

const MAX_MSG: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("connecting to the sandbox daemon at {path}")]
    Connect {
        path: String,
        #[source]
        source: nix::Error,
    },
    #[error("{step} on the control socket")]
    Io {
        step: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("the sandbox daemon closed the connection")]
    Closed,
    #[error("undecodable control message")]
    Json(#[from] serde_json::Error),
    #[error("sandbox socket path {0} is longer than a unix socket address allows")]
    PathTooLong(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum CtlRequest {
    Ping,
    /// Three descriptors ride along: stdin, stdout, stderr (a terminal's slave thrice).
    Create {
        id: String,
        bundle: String,
    },
    Start {
        id: String,
    },
    Kill {
        id: String,
        exec_id: Option<String>,
        signal: i32,
        all: bool,
    },
    /// Answers when the process has exited and all its output was written.
    Wait {
        id: String,
        exec_id: Option<String>,
    },
    Exec {
        id: String,
        exec_id: String,
        process: serde_json::Value,
        /// The debug console: run in the guest, outside the container.
        #[serde(default)]
        guest: bool,
    },
    Delete {
        id: String,
        force: bool,
    },
    Ps {
        id: String,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CtlResponse {
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub status: Option<i32>,
    #[serde(default)]
    pub pid: Option<i32>,
    #[serde(default)]
    pub processes: Vec<(i32, String)>,
    /// The guest kernel release, from Ping.
    #[serde(default)]
    pub kernel: Option<String>,
}

pub struct Conn {
    fd: OwnedFd,
}

fn addr(path: &Path) -> Result<UnixAddr, CtlError> {
    UnixAddr::new(path).map_err(|_| CtlError::PathTooLong(path.display().to_string()))
}

fn unix_socket(ty: SockType) -> Result<OwnedFd, CtlError> {
    socket::socket(AddressFamily::Unix, ty, SockFlag::SOCK_CLOEXEC, None).map_err(|source| {
        CtlError::Io {
            step: "socket",
            source,
        }
    })
}

/// A connected unix socket of type `ty` to `path`.
fn connect_to(path: &Path, ty: SockType) -> Result<OwnedFd, CtlError> {
    let a = addr(path)?;
    let fd = unix_socket(ty)?;
    socket::connect(fd.as_raw_fd(), &a).map_err(|source| CtlError::Connect {
        path: path.display().to_string(),
        source,
    })?;
    Ok(fd)
}

pub fn listen(path: &Path) -> Result<OwnedFd, CtlError> {
    let a = addr(path)?;
    let io = |step| move |source| CtlError::Io { step, source };
    let fd = unix_socket(SockType::SeqPacket)?;
    let _ = std::fs::remove_file(path);
    socket::bind(fd.as_raw_fd(), &a).map_err(io("bind"))?;
    socket::listen(
        &fd,
        socket::Backlog::new(64).unwrap_or(socket::Backlog::MAXCONN),
    )
    .map_err(io("listen"))?;
    Ok(fd)
}

pub fn accept(l: &OwnedFd) -> Result<Conn, CtlError> {
    let fd =
        socket::accept4(l.as_raw_fd(), SockFlag::SOCK_CLOEXEC).map_err(|source| CtlError::Io {
            step: "accept",
            source,
        })?;
    // SAFETY: accept4 returned a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(Conn { fd })
}

impl Conn {
    pub fn connect(path: &Path) -> Result<Conn, CtlError> {
        Ok(Conn {
            fd: connect_to(path, SockType::SeqPacket)?,
        })
    }

    pub fn send<T: Serialize>(&self, msg: &T, fds: &[RawFd]) -> Result<(), CtlError> {
        let body = serde_json::to_vec(msg)?;
        let iov = [IoSlice::new(&body)];
        let cmsg = [ControlMessage::ScmRights(fds)];
        let cm: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
        socket::sendmsg::<()>(self.fd.as_raw_fd(), &iov, cm, MsgFlags::MSG_NOSIGNAL, None)
            .map_err(|source| CtlError::Io {
                step: "sendmsg",
                source,
            })?;
        Ok(())
    }

    pub fn recv<T: for<'de> Deserialize<'de>>(&self) -> Result<(T, Vec<OwnedFd>), CtlError> {
        let mut buf = vec![0u8; MAX_MSG];
        let mut space = nix::cmsg_space!([RawFd; 8]);
        let (n, fds) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = loop {
                match socket::recvmsg::<()>(
                    self.fd.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                ) {
                    Err(nix::Error::EINTR) => continue,
                    r => break r,
                }
            }
            .map_err(|source| CtlError::Io {
                step: "recvmsg",
                source,
            })?;
            let mut fds = Vec::new();
            for c in msg.cmsgs().map_err(|source| CtlError::Io {
                step: "reading ancillary data",
                source,
            })? {
                if let ControlMessageOwned::ScmRights(v) = c {
                    // SAFETY: descriptors received with SCM_RIGHTS are new and ours.
                    fds.extend(v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                }
            }
            (msg.bytes, fds)
        };
        if n == 0 {
            return Err(CtlError::Closed);
        }
        Ok((serde_json::from_slice(&buf[..n])?, fds))
    }

    /// One request, one answer.
    pub fn call(&self, req: &CtlRequest, fds: &[RawFd]) -> Result<CtlResponse, CtlError> {
        self.send(req, fds)?;
        Ok(self.recv::<CtlResponse>()?.0)
    }
}

/// Sends a terminal master to a `--console-socket` the way runc does (SCM_RIGHTS on a stream
/// socket, with the pty name as payload).
pub fn send_console(socket_path: &Path, master: RawFd) -> Result<(), CtlError> {
    let fd = connect_to(socket_path, SockType::Stream)?;
    let name = b"/dev/ptmx";
    let iov = [IoSlice::new(name)];
    let fds = [master];
    socket::sendmsg::<()>(
        fd.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|source| CtlError::Io {
        step: "sending the console",
        source,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_descriptors_cross_a_seqpacket_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let l = listen(&path).unwrap();
        let t = std::thread::spawn(move || {
            let c = accept(&l).unwrap();
            let (req, fds): (CtlRequest, _) = c.recv().unwrap();
            assert!(matches!(req, CtlRequest::Create { ref id, .. } if id == "c1"));
            assert_eq!(fds.len(), 1);
            let mut f = std::fs::File::from(fds.into_iter().next().unwrap());
            std::io::Write::write_all(&mut f, b"through the socket").unwrap();
            c.send(
                &CtlResponse {
                    pid: Some(5),
                    ..Default::default()
                },
                &[],
            )
            .unwrap();
        });
        let out = dir.path().join("out");
        let f = std::fs::File::create(&out).unwrap();
        let c = Conn::connect(&path).unwrap();
        let r = c
            .call(
                &CtlRequest::Create {
                    id: "c1".into(),
                    bundle: "/b".into(),
                },
                &[f.as_raw_fd()],
            )
            .unwrap();
        t.join().unwrap();
        assert_eq!(r.pid, Some(5));
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "through the socket");
        assert!(matches!(c.recv::<CtlResponse>(), Err(CtlError::Closed)));
    }
}

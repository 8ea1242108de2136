//! Control messages (JSON on stream 0). Field names are the wire contract: never rename one
//! without bumping [`crate::PROTOCOL_VERSION`].

use crate::frame::{Frame, Kind};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    pub version: u32,
    /// Who is talking, e.g. "moat-guest-agent 0.1.0".
    pub agent: String,
    /// The guest kernel release (`uname -r`); empty from the host.
    #[serde(default)]
    pub kernel_release: String,
    /// Guest CLOCK_BOOTTIME (ms) when the agent started as PID 1, i.e. the kernel's boot.
    #[serde(default)]
    pub init_ms: u64,
    /// Guest CLOCK_BOOTTIME (ms) when this greeting was sent (modules, share, channel ready).
    #[serde(default)]
    pub ready_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub id: u64,
    pub op: Op,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Op {
    /// Prepare a container: rootfs overlay, mounts, and its init process forked but held
    /// before `exec` until `StartContainer` (runc's create/start split).
    CreateContainer(Box<ContainerSpec>),
    StartContainer {
        id: String,
    },
    /// Run another process in a container's namespaces (runc exec).
    Exec {
        container: String,
        exec_id: String,
        process: Box<ProcessSpec>,
        /// Run in the guest itself (the debug console), not in the container's namespaces.
        #[serde(default)]
        guest: bool,
    },
    /// Send a signal to a container's init (exec_id None) or to one exec'd process; `all`
    /// signals every process of the container.
    Signal {
        container: String,
        #[serde(default)]
        exec_id: Option<String>,
        signal: i32,
        #[serde(default)]
        all: bool,
    },
    Resize {
        container: String,
        #[serde(default)]
        exec_id: Option<String>,
        rows: u16,
        cols: u16,
    },
    /// Kill what is left of a container and free its guest resources.
    RemoveContainer {
        id: String,
    },
    ConfigureNetwork(NetworkConfig),
    /// Processes of a container as (pid in the guest, command).
    Ps {
        container: String,
    },
    Ping,
    /// Power the VM off.
    Shutdown,
    /// First request to a VM restored from a template (booted with `moat.template`, saved
    /// before it mounted anything): set the wall clock, mix in fresh entropy (every restored
    /// copy starts with the template's RNG state) and mount the sandbox's share.
    Resume {
        unix_time_ns: u64,
        entropy: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSpec {
    pub id: String,
    /// Rootfs path inside the 9p share (relative), overlaid with a tmpfs in the guest.
    pub rootfs: String,
    #[serde(default)]
    pub readonly_rootfs: bool,
    #[serde(default)]
    pub hostname: Option<String>,
    pub process: ProcessSpec,
    #[serde(default)]
    pub mounts: Vec<MountSpec>,
    #[serde(default)]
    pub masked_paths: Vec<String>,
    #[serde(default)]
    pub readonly_paths: Vec<String>,
    #[serde(default)]
    pub sysctl: Vec<(String, String)>,
    /// Limits from the OCI config's `linux.resources`, applied with a cgroup of the guest's
    /// own (the host's cgroup only bounds the whole VM).
    #[serde(default)]
    pub resources: Resources,
}

/// The cgroup v2 limits a container gets in the guest (absent = unlimited).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// Bytes (`memory.max`).
    #[serde(default)]
    pub memory_max: Option<i64>,
    /// Tasks (`pids.max`).
    #[serde(default)]
    pub pids_max: Option<i64>,
    /// CPU bandwidth: `quota` µs per `period` µs (`cpu.max`).
    #[serde(default)]
    pub cpu_quota: Option<i64>,
    #[serde(default)]
    pub cpu_period: Option<u64>,
    /// Relative share, cgroup v2 units 1–10000 (`cpu.weight`).
    #[serde(default)]
    pub cpu_weight: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ProcessSpec {
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub cwd: String,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    #[serde(default)]
    pub terminal: bool,
    /// OCI capability names per set; None keeps the agent's (full) set.
    #[serde(default)]
    pub capabilities: Option<Capabilities>,
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    #[serde(default)]
    pub no_new_privileges: bool,
    pub stdio: Stdio,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    #[serde(default)]
    pub bounding: Vec<String>,
    #[serde(default)]
    pub effective: Vec<String>,
    #[serde(default)]
    pub permitted: Vec<String>,
    #[serde(default)]
    pub inheritable: Vec<String>,
    #[serde(default)]
    pub ambient: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rlimit {
    /// OCI name, e.g. "RLIMIT_NOFILE".
    #[serde(rename = "type")]
    pub kind: String,
    pub soft: u64,
    pub hard: u64,
}

/// Stream ids chosen by the host for a process's stdio. With a terminal, output comes on
/// `stdout` only. A missing stdin means /dev/null.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Stdio {
    #[serde(default)]
    pub stdin: Option<u32>,
    #[serde(default)]
    pub stdout: Option<u32>,
    #[serde(default)]
    pub stderr: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MountSpec {
    pub destination: String,
    /// Filesystem type (proc, sysfs, tmpfs, devpts, mqueue, bind, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// For binds: a path inside the 9p share (the host copied or bind-mounted it there).
    #[serde(default)]
    pub source: String,
    /// For binds: `source` is in the writable share rather than the read-only one.
    #[serde(default)]
    pub writable: bool,
    #[serde(default)]
    pub options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct NetworkConfig {
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    /// Matched against the guest NIC's MAC (the host gave the NIC the veth's MAC).
    pub mac: String,
    /// The NIC's MAC now, when it is not `mac` yet (a VM restored from a template has the
    /// template's): the guest finds the NIC by it and gives it `mac`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_mac: Option<String>,
    /// Name the interface should take in the guest (the veth's name, e.g. eth0).
    pub name: String,
    pub mtu: u32,
    /// IPv4 CIDRs, e.g. "10.42.0.5/24".
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// "default" or an IPv4 CIDR.
    pub dest: String,
    #[serde(default)]
    pub gateway: Option<String>,
    /// Guest interface name.
    pub device: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    pub id: u64,
    /// Set when the request failed: the step and its cause, for the user.
    #[serde(default)]
    pub error: Option<String>,
    /// Guest pid of a created/exec'd process.
    #[serde(default)]
    pub pid: Option<i32>,
    /// `Ps` answer: (pid, command line).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<(i32, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Event {
    /// A container init or exec'd process ended, after all its output was sent. `status` is
    /// the exit code, or 128 + signal number as shells report it.
    Exited {
        container: String,
        #[serde(default)]
        exec_id: Option<String>,
        status: i32,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("expected a {expected:?} frame, got {got:?}")]
    WrongKind { expected: Kind, got: Kind },
    #[error("decoding {kind:?} payload")]
    Json {
        kind: Kind,
        #[source]
        source: serde_json::Error,
    },
}

/// Builds a control frame; serialising these plain structs cannot fail.
pub fn control<T: Serialize>(kind: Kind, msg: &T) -> Frame {
    let payload = serde_json::to_vec(msg).unwrap_or_default();
    Frame::new(0, kind, payload)
}

/// Decodes a control frame of the expected kind.
pub fn parse<T: for<'de> Deserialize<'de>>(f: &Frame, expected: Kind) -> Result<T, MessageError> {
    if f.kind != expected {
        return Err(MessageError::WrongKind {
            expected,
            got: f.kind,
        });
    }
    serde_json::from_slice(&f.payload).map_err(|source| MessageError::Json {
        kind: f.kind,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_through_frames() {
        let req = Request {
            id: 3,
            op: Op::CreateContainer(Box::new(ContainerSpec {
                id: "c1".into(),
                rootfs: "c1/rootfs".into(),
                process: ProcessSpec {
                    args: vec!["uname".into(), "-r".into()],
                    stdio: Stdio {
                        stdin: None,
                        stdout: Some(1),
                        stderr: Some(2),
                    },
                    ..Default::default()
                },
                ..Default::default()
            })),
        };
        let f = control(Kind::Request, &req);
        let back: Request = parse(&f, Kind::Request).unwrap();
        assert_eq!(back, req);
        assert!(matches!(
            parse::<Request>(&f, Kind::Response),
            Err(MessageError::WrongKind { .. })
        ));
        let v: serde_json::Value = serde_json::from_slice(&f.payload).unwrap();
        assert_eq!(v["op"]["type"], "createContainer");
    }

    #[test]
    fn garbage_json_is_an_error_not_a_panic() {
        let f = Frame::new(0, Kind::Event, b"{\"type\":\"nope\"}".to_vec());
        assert!(matches!(
            parse::<Event>(&f, Kind::Event),
            Err(MessageError::Json { .. })
        ));
    }
}

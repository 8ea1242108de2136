//! The wire protocol between `moat-runtime` (host) and `moat-guest-agent` (guest PID 1).
//!
//! Written here because the channel is a raw virtio-serial byte pipe and no crate offers a
//! multiplexed, flow-controlled framing for one (ttRPC needs a vsock-like transport and brings
//! protobuf into a static PID 1). The crate is sans-IO: a [`Decoder`] fed arbitrary byte chunks
//! yields [`Frame`]s, [`Frame::encode`] writes them, and [`Window`] is the per-stream credit
//! bookkeeping. Both ends wrap it in their own threads and transports.
//!
//! # Frame layout
//! ```text
//! u32 BE  length of what follows (5 + payload), at most MAX_FRAME
//! u32 BE  stream id (0 = control)
//! u8      kind (Kind)
//! ...     payload
//! ```
//! Control frames (`Hello`, `Request`, `Response`, `Event`) carry JSON on stream 0. `Data`,
//! `Eof` and `Credit` belong to a process stdio stream. Streams are pushed, never polled: a
//! sender may have at most [`INITIAL_WINDOW`] bytes in flight per stream, and the receiver
//! returns `Credit(n)` once it has written `n` bytes to their destination. That bounds memory
//! on both sides and a slow consumer never stalls another stream.

mod frame;
mod msg;
mod window;

pub use frame::{DecodeError, Decoder, Frame, Kind, MAX_FRAME, MAX_PAYLOAD};
pub use msg::*;
pub use window::Window;

/// How a failure travels in [`Response::error`] (and the runtime's own control socket): the
/// error and its `source()` chain on one line, "step: cause: root cause". Both ends render
/// with this, so the host shows what the guest meant.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Protocol version exchanged in `Hello`. A peer with another major refuses to talk.
pub const PROTOCOL_VERSION: u32 = 1;

/// Bytes a sender may have unacknowledged on one stream.
pub const INITIAL_WINDOW: u32 = 256 * 1024;

/// The virtio-serial port name the guest agent looks for (as Kata 1.x named its channel).
pub const CHANNEL_NAME: &str = "agent.channel.0";

/// The 9p mount tag of the per-sandbox shared directory.
pub const SHARE_TAG: &str = "moatShared";
/// The writable share: read-write bind mounts (emptyDir, writable hostPath, /dev/shm). Its
/// host side maps ownership, modes, symlinks and device nodes into xattrs (QEMU's
/// `mapped-xattr`), so nothing the guest creates there is a real symlink, device node or
/// set-id file on the host.
pub const SHARE_RW_TAG: &str = "moatSharedRw";

/// Container and sandbox ids become directory names on both sides, so path separators and
/// `..` must never get through: 1-1024 of `[A-Za-z0-9_.-]`, not starting with '.'.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 1024
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("preparing rootfs")]
    struct Step(#[source] std::io::Error);

    #[test]
    fn the_error_chain_names_step_and_cause() {
        let e = Step(std::io::Error::other("no space left on device"));
        assert_eq!(
            super::error_chain(&e),
            "preparing rootfs: no space left on device"
        );
    }
}

//! Capability names (OCI spelling) to numbers, and applying the OCI sets with capset(2).

/// Index = capability number (linux/capability.h).
const NAMES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

pub const LAST_CAP: u32 = NAMES.len() as u32 - 1;

pub fn number(name: &str) -> Option<u32> {
    NAMES.iter().position(|n| *n == name).map(|i| i as u32)
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown capability {0:?}")]
pub struct UnknownCapability(pub String);

/// Bit mask of the named capabilities; unknown names are an error so a typo never grants or
/// silently drops something.
pub fn mask(names: &[String]) -> Result<u64, UnknownCapability> {
    let mut m = 0u64;
    for n in names {
        let c = number(n).ok_or_else(|| UnknownCapability(n.clone()))?;
        m |= 1 << c;
    }
    Ok(m)
}

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// capset(2) with the 64-bit (version 3) layout. libc has no wrapper, hence the raw syscall.
pub fn capset(effective: u64, permitted: u64, inheritable: u64) -> std::io::Result<()> {
    let hdr = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let lo = |m: u64| m as u32;
    let hi = |m: u64| (m >> 32) as u32;
    let data = [
        Data {
            effective: lo(effective),
            permitted: lo(permitted),
            inheritable: lo(inheritable),
        },
        Data {
            effective: hi(effective),
            permitted: hi(permitted),
            inheritable: hi(inheritable),
        },
    ];
    // SAFETY: both pointers refer to live, correctly laid out structs for the call's duration.
    let r = unsafe { libc::syscall(libc::SYS_capset, &hdr as *const Header, data.as_ptr()) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_map_to_kernel_numbers() {
        assert_eq!(super::number("CAP_CHOWN"), Some(0));
        assert_eq!(super::number("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(super::number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(super::LAST_CAP, 40);
        assert!(super::mask(&["CAP_NOPE".into()]).is_err());
        assert_eq!(
            super::mask(&["CAP_KILL".into(), "CAP_CHOWN".into()]),
            Ok(0b10_0001)
        );
    }
}

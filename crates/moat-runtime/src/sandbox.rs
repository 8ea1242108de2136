//! Where a sandbox lives on the host, and tearing it down even when its daemon is gone.

use std::path::{Path, PathBuf};

/// `<root>/.sb-<hash>`: ids can be 64+ characters and a unix socket path only 108 bytes, so
/// the directory is named by a hash of the sandbox id; the id itself is stored inside. A
/// leading '.' keeps it clear of container ids, which never start with one.
pub fn dir(root: &Path, sandbox_id: &str) -> PathBuf {
    let h = sandbox_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    root.join(format!(".sb-{h:016x}"))
}

/// Serializes the boot of one sandbox (`<root>/.sb-<hash>.lock`, beside its directory).
pub fn lock_path(dir: &Path) -> PathBuf {
    dir.with_extension("lock")
}

pub fn ctl_socket(dir: &Path) -> PathBuf {
    dir.join("ctl.sock")
}

pub fn shared_dir(dir: &Path) -> PathBuf {
    dir.join("shared")
}

/// The writable share's host directory (see `moat_vm_proto::SHARE_RW_TAG`).
pub fn shared_rw_dir(dir: &Path) -> PathBuf {
    dir.join("shared-rw")
}

/// Mount points at or below `under` from /proc/self/mountinfo text, deepest first, so they
/// can be unmounted in order.
pub fn mounts_under(mountinfo: &str, under: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(under))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && let Ok(n) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(n);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn unmount_all_under(under: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for m in mounts_under(&info, under) {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Whether `pid` is a live (not zombie) process whose command line contains `needle`, so a
/// recycled pid is never killed by mistake.
pub fn alive_with(pid: i32, needle: &str) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(") ").map(|(_, r)| r.chars().next());
    if !matches!(state, Some(Some(c)) if c != 'Z' && c != 'X') {
        return false;
    }
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&cmd).contains(needle)
}

/// Removes what a dead daemon left: its QEMU, mounts, network wiring and directory.
pub fn cleanup_offline(dir: &Path, sandbox_id: &str) {
    for f in ["daemon.pid", "qemu.pid"] {
        if let Some(pid) = std::fs::read_to_string(dir.join(f))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            && (alive_with(pid, sandbox_id) || alive_with(pid, &dir.to_string_lossy()))
        {
            // SAFETY: a pid we checked belongs to this sandbox.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let _ = crate::net::teardown(&dir.join("netns"));
    unmount_all_under(dir);
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_file(lock_path(dir));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_dirs_are_short_and_distinct() {
        let a = dir(Path::new("/run/r"), &"a".repeat(64));
        let b = dir(Path::new("/run/r"), &"b".repeat(64));
        assert_ne!(a, b);
        assert!(ctl_socket(&a).as_os_str().len() < 60);
        assert!(a.file_name().unwrap().to_string_lossy().starts_with(".sb-"));
    }

    #[test]
    fn mounts_under_a_dir_deepest_first() {
        let info = "22 1 0:1 / / rw - ext4 /dev/vda rw\n\
                    30 22 0:2 / /run/r/.sb-1/shared/c/rootfs rw - overlay o rw\n\
                    31 30 0:3 / /run/r/.sb-1/shared/c/rootfs/proc rw - proc p rw\n\
                    32 22 0:4 / /run/r/.sb-1/shared/c/mounts/with\\040space rw - tmpfs t rw\n\
                    33 22 0:5 / /run/other rw - tmpfs t rw\n";
        let m = mounts_under(info, Path::new("/run/r/.sb-1"));
        assert_eq!(m.len(), 3);
        assert_eq!(m[0], Path::new("/run/r/.sb-1/shared/c/rootfs/proc"));
        assert!(m.contains(&PathBuf::from("/run/r/.sb-1/shared/c/mounts/with space")));
    }
}

//! What PID 1 does before it can serve: pseudo filesystems, kernel modules, the channel and
//! the shared directory.

use crate::sys;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const SHARED: &str = "/run/shared";
/// Where the writable share is mounted.
pub const SHARED_RW: &str = "/run/shared-rw";

pub fn mount_pseudo_filesystems() -> io::Result<()> {
    let nodev = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    for d in ["/proc", "/sys", "/dev", "/run", "/tmp"] {
        sys::mkdir_p(d)?;
    }
    sys::mount("proc", "/proc", "proc", nodev, None)?;
    sys::mount("sysfs", "/sys", "sysfs", nodev, None)?;
    sys::mount("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, None)?;
    sys::mkdir_p("/dev/pts")?;
    sys::mount(
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    sys::mount("tmpfs", "/run", "tmpfs", libc::MS_NOSUID, Some("mode=755"))?;
    sys::mount("tmpfs", "/tmp", "tmpfs", libc::MS_NOSUID, None)?;
    Ok(())
}

/// The initramfs has no /dev/console, so the kernel started us without stdio; point stdout
/// and stderr at the console now that devtmpfs is there, so boot errors reach the serial log.
pub fn console_stdio() {
    // SAFETY: open/dup2 with a valid path and our own descriptors.
    unsafe {
        let fd = libc::open(c"/dev/console".as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
        if fd >= 0 {
            libc::dup2(fd, 1);
            libc::dup2(fd, 2);
            if fd > 2 {
                libc::close(fd);
            }
        }
    }
}

/// `name.param=value` words of the kernel command line meant for module `name`. The kernel
/// keeps those for modules it has not loaded; modprobe normally passes them, so we do.
pub fn module_params(cmdline: &str, module: &str) -> String {
    let want = module.replace('-', "_");
    cmdline
        .split_whitespace()
        .filter_map(|w| {
            let (m, rest) = w.split_once('.')?;
            (m.replace('-', "_") == want && rest.contains('=')).then_some(rest)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn load_module(file: &str, cmdline: &str) -> io::Result<()> {
    let path = format!("/modules/{file}");
    let image = std::fs::read(&path).map_err(|e| sys::ctx("reading", &path, e))?;
    let name = file.trim_end_matches(".ko");
    let params = sys::cstr(&module_params(cmdline, name))?;
    // SAFETY: image is a live buffer of the given length; params is NUL-terminated.
    let r = unsafe {
        libc::syscall(
            libc::SYS_init_module,
            image.as_ptr(),
            image.len() as libc::c_ulong,
            params.as_ptr(),
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(sys::ctx("loading module", &path, e));
        }
    }
    if cmdline.split_whitespace().any(|w| w == "moat.trace") {
        crate::log(&format!(
            "module {name} ({} KiB) loaded at {} ms",
            image.len() / 1024,
            sys::boottime_ms()
        ));
    }
    Ok(())
}

/// The network driver and what only it needs.
const NIC_MODULES: [&str; 3] = ["virtio_net", "net_failover", "failover"];

/// Loads `/modules/<name>.ko` as `/modules/order` says (the asset build wrote it): one line
/// per dependency level, the modules of a line in parallel, since each load mostly waits.
pub fn load_modules() -> io::Result<()> {
    let order = match std::fs::read_to_string("/modules/order") {
        Ok(o) => o,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(sys::ctx("reading", "/modules/order", e)),
    };
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    // A sandbox without a NIC (the host says `moat.nic` when it gave one) skips the network
    // driver: under TCG every module costs milliseconds of start-up.
    let nic = cmdline.split_whitespace().any(|w| w == "moat.nic");
    for line in order.lines() {
        let files: Vec<&str> = line
            .split_whitespace()
            .filter(|f| nic || !NIC_MODULES.contains(&f.trim_end_matches(".ko")))
            .collect();
        let results: Vec<io::Result<()>> = std::thread::scope(|s| {
            let hs: Vec<_> = files
                .iter()
                .map(|f| s.spawn(|| load_module(f, &cmdline)))
                .collect();
            hs.into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(io::Error::other("module loader panicked")))
                })
                .collect()
        });
        for r in results {
            r?;
        }
    }
    Ok(())
}

/// The /dev node of the virtio-serial port named `name`, waiting for udev-less devtmpfs to
/// create it after the module probed.
pub fn find_port(name: &str, timeout: Duration) -> io::Result<PathBuf> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(rd) = std::fs::read_dir("/sys/class/virtio-ports") {
            for ent in rd.flatten() {
                let n = std::fs::read_to_string(ent.path().join("name")).unwrap_or_default();
                if n.trim() == name {
                    let dev = PathBuf::from("/dev").join(ent.file_name());
                    if dev.exists() {
                        return Ok(dev);
                    }
                }
            }
        }
        if Instant::now() > deadline {
            let seen: Vec<String> = std::fs::read_dir("/sys/class/virtio-ports")
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            let devs: Vec<String> = std::fs::read_dir("/sys/bus/virtio/devices")
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "no virtio-serial port named {name} appeared (ports: {seen:?}, virtio devices: {devs:?})"
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Mounts the read-only share and the writable one (the host maps whatever the guest creates
/// in the latter into xattrs; nosuid/nodev keep the guest from using what it plants there).
pub fn mount_share(tag: &str) -> io::Result<()> {
    sys::mkdir_p(SHARED)?;
    sys::mount(
        tag,
        SHARED,
        "9p",
        libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
        Some("trans=virtio,version=9p2000.L,msize=262144,cache=mmap"),
    )?;
    sys::mkdir_p(SHARED_RW)?;
    let rw = sys::mount(
        moat_vm_proto::SHARE_RW_TAG,
        SHARED_RW,
        "9p",
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("trans=virtio,version=9p2000.L,msize=262144,cache=mmap"),
    );
    // A host without the writable share (an older runtime) still boots; a container that
    // asks for a writable bind then fails on its own mount, naming it.
    if let Err(e) = rw {
        eprintln!("moat-guest-agent: no writable share: {e}");
    }
    Ok(())
}

/// A restored template's clock and randomness: the wall clock is the template's, and every
/// copy would draw the same random numbers, so the host's time is set and its entropy is
/// credited to the pool and the CRNG reseeded before anything runs.
pub fn resume(unix_time_ns: u64, entropy: &[u8]) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: (unix_time_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (unix_time_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: a valid timespec.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(sys::ctx("setting", "the clock", io::Error::last_os_error()));
    }
    if entropy.is_empty() {
        return Ok(());
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/random")
        .map_err(|e| sys::ctx("opening", "/dev/random", e))?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + entropy.len());
    info.extend_from_slice(&((entropy.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(entropy.len() as i32).to_ne_bytes());
    info.extend_from_slice(entropy);
    // RNDADDENTROPY = _IOW('R', 0x03, int[2]); RNDRESEEDCRNG = _IO('R', 0x07).
    const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
    const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
    use std::os::fd::AsRawFd;
    // SAFETY: `info` is a rand_pool_info of the declared size; the fd is open.
    if unsafe { libc::ioctl(f.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } != 0 {
        return Err(sys::ctx("adding", "entropy", io::Error::last_os_error()));
    }
    // SAFETY: no argument.
    if unsafe { libc::ioctl(f.as_raw_fd(), RNDRESEEDCRNG) } != 0 {
        return Err(sys::ctx(
            "reseeding",
            "the CRNG",
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Halts the VM: QEMU runs with -no-reboot, so the reset that `reboot=t` triggers ends it.
pub fn power_off() -> ! {
    // SAFETY: plain syscalls with no pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
        libc::_exit(0)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn module_params_pick_only_that_module() {
        let c = "console=ttyS0 virtio_mmio.device=512@0xfeb00e00:12 virtio-mmio.device=512@0xfeb00c00:11 9p.x=1 quiet";
        assert_eq!(
            super::module_params(c, "virtio_mmio"),
            "device=512@0xfeb00e00:12 device=512@0xfeb00c00:11"
        );
        assert_eq!(super::module_params(c, "virtio_net"), "");
    }
}

//! Building a container in the guest: overlay rootfs, mounts, pivot_root, credentials.
//!
//! Every process is started through a small monitor: the agent forks the monitor, the monitor
//! enters (exec) or creates (init) the namespaces and forks the real process, then waits for
//! it and exits with its status. So the agent always reaps a child of its own, even though the
//! real process lives in another PID namespace where orphans would go to the container's init.

use crate::{caps, sys};
use moat_vm_proto::{ContainerSpec, MountSpec, ProcessSpec};
use std::ffi::CString;
use std::io;

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Host-side ends of a spawned process.
pub struct Spawned {
    pub monitor: i32,
    /// The process's pid as the agent sees it (root PID namespace).
    pub pid: i32,
    pub stdin: Option<i32>,
    pub stdout: Option<i32>,
    pub stderr: Option<i32>,
    pub pty_master: Option<i32>,
    /// Write one byte to let a created init exec (runc start).
    pub start: Option<i32>,
}

pub enum What<'a> {
    Init {
        spec: &'a ContainerSpec,
        root: &'a str,
        /// The container's cgroup, joined before the namespaces are made.
        cgroup: Option<&'a str>,
    },
    Exec {
        init_pid: i32,
        process: &'a ProcessSpec,
    },
}

fn flag(opt: &str) -> Option<(libc::c_ulong, bool)> {
    // (flag, set) — `set=false` clears it.
    Some(match opt {
        "ro" => (libc::MS_RDONLY, true),
        "rw" => (libc::MS_RDONLY, false),
        "nosuid" => (libc::MS_NOSUID, true),
        "suid" => (libc::MS_NOSUID, false),
        "nodev" => (libc::MS_NODEV, true),
        "dev" => (libc::MS_NODEV, false),
        "noexec" => (libc::MS_NOEXEC, true),
        "exec" => (libc::MS_NOEXEC, false),
        "sync" => (libc::MS_SYNCHRONOUS, true),
        "async" => (libc::MS_SYNCHRONOUS, false),
        "dirsync" => (libc::MS_DIRSYNC, true),
        "noatime" => (libc::MS_NOATIME, true),
        "atime" => (libc::MS_NOATIME, false),
        "nodiratime" => (libc::MS_NODIRATIME, true),
        "diratime" => (libc::MS_NODIRATIME, false),
        "relatime" => (libc::MS_RELATIME, true),
        "norelatime" => (libc::MS_RELATIME, false),
        "strictatime" => (libc::MS_STRICTATIME, true),
        "bind" => (libc::MS_BIND, true),
        "rbind" => (libc::MS_BIND | libc::MS_REC, true),
        _ => return None,
    })
}

/// OCI mount options split into mount flags and filesystem data. Propagation options are
/// dropped: every container mount namespace is private here.
pub fn parse_options(opts: &[String]) -> (libc::c_ulong, String) {
    let mut flags = 0;
    let mut data = Vec::new();
    for o in opts {
        if matches!(
            o.as_str(),
            "private"
                | "rprivate"
                | "slave"
                | "rslave"
                | "shared"
                | "rshared"
                | "unbindable"
                | "runbindable"
                | "remount"
                | "mand"
                | "nomand"
                | "tmpcopyup"
        ) {
            continue;
        }
        match flag(o) {
            Some((f, true)) => flags |= f,
            Some((f, false)) => flags &= !f,
            None => data.push(o.as_str()),
        }
    }
    (flags, data.join(","))
}

/// A container path joined under `root`, refusing `..` so a spec cannot mount outside it.
pub fn under(root: &str, p: &str) -> io::Result<String> {
    if p.split('/').any(|c| c == "..") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("path {p:?} contains '..'"),
        ));
    }
    Ok(format!(
        "{}/{}",
        root.trim_end_matches('/'),
        p.trim_start_matches('/')
    ))
}

fn rlimit_resource(name: &str) -> Option<libc::__rlimit_resource_t> {
    Some(match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    })
}

/// Mounts the writable overlay for a container: the 9p rootfs below, a tmpfs above.
pub fn prepare_rootfs(dir: &str, lower: &str) -> io::Result<String> {
    let rw = format!("{dir}/rw");
    let root = format!("{dir}/root");
    sys::mkdir_p(&rw)?;
    sys::mkdir_p(&root)?;
    sys::mount("tmpfs", &rw, "tmpfs", 0, Some("mode=755"))?;
    sys::mkdir_p(&format!("{rw}/upper"))?;
    sys::mkdir_p(&format!("{rw}/work"))?;
    sys::mount(
        "overlay",
        &root,
        "overlay",
        0,
        Some(&format!(
            "lowerdir={lower},upperdir={rw}/upper,workdir={rw}/work"
        )),
    )?;
    Ok(root)
}

pub fn remove_rootfs(dir: &str) {
    let _ = sys::umount_detach(&format!("{dir}/root"));
    let _ = sys::umount_detach(&format!("{dir}/rw"));
    let _ = std::fs::remove_dir_all(dir);
}

fn do_mount(root: &str, m: &MountSpec) -> io::Result<()> {
    let dest = under(root, &m.destination)?;
    let (flags, data) = parse_options(&m.options);
    let is_bind = m.kind == "bind" || flags & libc::MS_BIND != 0;
    if is_bind {
        let share = if m.writable {
            crate::init::SHARED_RW
        } else {
            crate::init::SHARED
        };
        let src = under(share, &m.source)?;
        if std::path::Path::new(&src).is_dir() {
            sys::mkdir_p(&dest)?;
        } else {
            sys::touch(&dest)?;
        }
        sys::mount(&src, &dest, "", libc::MS_BIND | libc::MS_REC, None)?;
        let rest = flags & !(libc::MS_BIND | libc::MS_REC);
        if rest != 0 {
            sys::mount("", &dest, "", libc::MS_BIND | libc::MS_REMOUNT | rest, None)?;
        }
        return Ok(());
    }
    // The guest's own hierarchy, as seen from the container's cgroup namespace (its own
    // cgroup is the root it sees, with its limits), whatever version the host runs.
    if m.kind == "cgroup" || m.kind == "cgroup2" {
        if !std::path::Path::new(&format!("{}/cgroup.controllers", crate::cgroup::ROOT)).exists() {
            return Ok(());
        }
        sys::mkdir_p(&dest)?;
        let keep = flags & (libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC);
        return sys::mount("cgroup2", &dest, "cgroup2", keep, None);
    }
    sys::mkdir_p(&dest)?;
    let data = (!data.is_empty()).then_some(data.as_str());
    let src = if m.source.is_empty() {
        m.kind.as_str()
    } else {
        m.source.as_str()
    };
    match sys::mount(src, &dest, &m.kind, flags, data) {
        // sysfs in a new network of mounts needs the right to see it; fall back to a bind of
        // the guest's own, read-only, as runc does for rootless containers.
        Err(_) if m.kind == "sysfs" => {
            sys::mount("/sys", &dest, "", libc::MS_BIND | libc::MS_REC, None)?;
            sys::mount(
                "",
                &dest,
                "",
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                None,
            )
        }
        // A mqueue mount needs an IPC namespace of its own, which we have; anything else
        // failing is the spec's problem and reported.
        r => r,
    }
}

fn default_devices(root: &str) -> io::Result<()> {
    let dev = format!("{root}/dev");
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let p = format!("{dev}/{name}");
        if std::path::Path::new(&p).exists() {
            continue;
        }
        let c = sys::cstr(&p)?;
        // SAFETY: valid path; mknod of a character device as root in our own guest.
        let r = unsafe {
            libc::mknod(
                c.as_ptr(),
                libc::S_IFCHR | 0o666,
                libc::makedev(major, minor),
            )
        };
        if r != 0 {
            sys::touch(&p)?;
            sys::mount(&format!("/dev/{name}"), &p, "", libc::MS_BIND, None)?;
        }
        // mknod honours the umask; devices must be 0666.
        let _ = std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o666));
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let _ = std::os::unix::fs::symlink(target, format!("{dev}/{link}"));
    }
    Ok(())
}

fn mask_paths(root: &str, spec: &ContainerSpec) -> io::Result<()> {
    for p in &spec.masked_paths {
        let dest = under(root, p)?;
        let Ok(md) = std::fs::metadata(&dest) else {
            continue;
        };
        if md.is_dir() {
            sys::mount("tmpfs", &dest, "tmpfs", libc::MS_RDONLY, None)?;
        } else {
            sys::mount("/dev/null", &dest, "", libc::MS_BIND, None)?;
        }
    }
    for p in &spec.readonly_paths {
        let dest = under(root, p)?;
        if std::fs::metadata(&dest).is_err() {
            continue;
        }
        sys::mount(&dest, &dest, "", libc::MS_BIND | libc::MS_REC, None)?;
        sys::mount(
            &dest,
            &dest,
            "",
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC,
            None,
        )?;
    }
    Ok(())
}

/// In the new mount namespace: mounts, pivot_root, hostname.
fn build_root(spec: &ContainerSpec, root: &str) -> io::Result<()> {
    sys::mount("", "/", "", libc::MS_REC | libc::MS_PRIVATE, None)?;
    let mut dev_is_tmpfs = false;
    for m in &spec.mounts {
        do_mount(root, m)?;
        if m.destination.trim_end_matches('/') == "/dev" && m.kind != "bind" {
            dev_is_tmpfs = true;
        }
    }
    if dev_is_tmpfs || !std::path::Path::new(&format!("{root}/dev/null")).exists() {
        sys::mkdir_p(&format!("{root}/dev"))?;
        default_devices(root)?;
    }
    mask_paths(root, spec)?;
    let r = sys::cstr(root)?;
    let dot = sys::cstr(".")?;
    // SAFETY: valid C strings; pivot_root(".", ".") stacks the old root under the new one,
    // and the detach below removes it, leaving no path back to the guest's filesystem.
    unsafe {
        if libc::chdir(r.as_ptr()) != 0 {
            return Err(sys::ctx("chdir", root, io::Error::last_os_error()));
        }
        if libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) == 0 {
            sys::umount_detach(".")?;
        } else if io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
            // The guest root is the initramfs, which pivot_root refuses; move the container
            // root over "/" and chroot into it instead (runc's --no-pivot path). Lookups of
            // "/" and ".." then resolve to the covering mount, so the initramfs stays hidden.
            if libc::mount(
                r.as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_MOVE,
                std::ptr::null(),
            ) != 0
                || libc::chroot(dot.as_ptr()) != 0
            {
                return Err(sys::ctx("moving root to", root, io::Error::last_os_error()));
            }
        } else {
            return Err(sys::ctx("pivot_root to", root, io::Error::last_os_error()));
        }
    }
    std::env::set_current_dir("/").map_err(|e| sys::ctx("chdir", "/", e))?;
    if spec.readonly_rootfs {
        sys::mount(
            "",
            "/",
            "",
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
            None,
        )?;
    }
    if let Some(h) = &spec.hostname {
        let c = sys::cstr(h)?;
        // SAFETY: valid buffer and length.
        if unsafe { libc::sethostname(c.as_ptr(), h.len()) } != 0 {
            return Err(sys::ctx("sethostname", h, io::Error::last_os_error()));
        }
    }
    for (k, v) in &spec.sysctl {
        let p = format!("/proc/sys/{}", k.replace('.', "/"));
        std::fs::write(&p, v).map_err(|e| sys::ctx("writing sysctl", &p, e))?;
    }
    Ok(())
}

/// Finds the executable as execvp would, in the container's filesystem and PATH.
pub fn resolve(arg0: &str, env: &[String]) -> io::Result<String> {
    if arg0.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty args"));
    }
    let executable = |p: &str| {
        sys::cstr(p)
            // SAFETY: valid C string.
            .map(|c| unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0)
            .unwrap_or(false)
            && std::fs::metadata(p).map(|m| m.is_file()).unwrap_or(false)
    };
    if arg0.contains('/') {
        return if executable(arg0) {
            Ok(arg0.to_string())
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("exec: {arg0:?}: no such file or not executable"),
            ))
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let cand = format!("{}/{arg0}", dir.trim_end_matches('/'));
        if executable(&cand) {
            return Ok(cand);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("exec: {arg0:?}: executable file not found in $PATH"),
    ))
}

fn set_credentials(p: &ProcessSpec) -> io::Result<()> {
    let err = |step: &str| sys::ctx(step, "", io::Error::last_os_error());
    for r in &p.rlimits {
        let res = rlimit_resource(&r.kind).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown rlimit {}", r.kind),
            )
        })?;
        let lim = libc::rlimit {
            rlim_cur: r.soft,
            rlim_max: r.hard,
        };
        // SAFETY: valid struct pointer.
        if unsafe { libc::setrlimit(res, &lim) } != 0 {
            return Err(err(&format!("setrlimit {}", r.kind)));
        }
    }
    let sets = match &p.capabilities {
        Some(c) => Some((
            caps::mask(&c.bounding).map_err(io::Error::other)?,
            caps::mask(&c.effective).map_err(io::Error::other)?,
            caps::mask(&c.permitted).map_err(io::Error::other)?,
            caps::mask(&c.inheritable).map_err(io::Error::other)?,
            caps::mask(&c.ambient).map_err(io::Error::other)?,
        )),
        None => None,
    };
    // SAFETY: prctl/set*id calls with plain integer arguments and a valid gid array.
    unsafe {
        if let Some((bounding, ..)) = sets {
            for c in 0..=caps::LAST_CAP {
                if bounding & (1 << c) == 0
                    && libc::prctl(libc::PR_CAPBSET_DROP, c as libc::c_ulong, 0, 0, 0) != 0
                {
                    return Err(err("dropping bounding capability"));
                }
            }
        }
        if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
            return Err(err("PR_SET_KEEPCAPS"));
        }
        let gids: Vec<libc::gid_t> = p.additional_gids.clone();
        if libc::setgroups(gids.len(), gids.as_ptr()) != 0 {
            return Err(err("setgroups"));
        }
        if libc::setgid(p.gid) != 0 {
            return Err(err("setgid"));
        }
        if libc::setuid(p.uid) != 0 {
            return Err(err("setuid"));
        }
        libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0);
    }
    if let Some((_, eff, perm, inh, amb)) = sets {
        caps::capset(eff, perm, inh).map_err(|e| sys::ctx("capset", "", e))?;
        for c in 0..=caps::LAST_CAP {
            if amb & (1 << c) != 0 {
                // SAFETY: integer-only prctl.
                unsafe {
                    libc::prctl(
                        libc::PR_CAP_AMBIENT,
                        libc::PR_CAP_AMBIENT_RAISE,
                        c as libc::c_ulong,
                        0,
                        0,
                    )
                };
            }
        }
    }
    if p.no_new_privileges {
        // SAFETY: integer-only prctl.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(err("PR_SET_NO_NEW_PRIVS"));
        }
    }
    Ok(())
}

fn cvec(v: &[String]) -> io::Result<Vec<CString>> {
    v.iter().map(|s| sys::cstr(s)).collect()
}

fn child_fail(report: i32, e: &io::Error) -> ! {
    let _ = sys::write_all(report, format!("E{e}").as_bytes());
    // SAFETY: leaving the forked child without running destructors or atexit handlers.
    unsafe { libc::_exit(127) }
}

fn open_ns(pid: i32, ns: &str) -> io::Result<i32> {
    let p = sys::cstr(&format!("/proc/{pid}/ns/{ns}"))?;
    // SAFETY: valid path.
    let fd = unsafe { libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        Err(sys::ctx(
            "opening namespace",
            ns,
            io::Error::last_os_error(),
        ))
    } else {
        Ok(fd)
    }
}

fn setns(fd: i32, what: &str) -> io::Result<()> {
    // SAFETY: fd is an open namespace descriptor.
    if unsafe { libc::setns(fd, 0) } != 0 {
        Err(sys::ctx(
            "entering namespace",
            what,
            io::Error::last_os_error(),
        ))
    } else {
        Ok(())
    }
}

/// Forks monitor and process. On return the process has set itself up and is either running
/// (exec) or blocked before exec until `start` is written (init).
pub fn spawn(what: What<'_>) -> io::Result<Spawned> {
    let process = match &what {
        What::Init { spec, .. } => &spec.process,
        What::Exec { process, .. } => *process,
    };
    let argv = cvec(&process.args)?;
    let envp = cvec(&process.env)?;
    if argv.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "process.args is empty",
        ));
    }
    let (pid_r, pid_w) = sys::pipe()?;
    let (rep_r, rep_w) = sys::pipe()?;
    let (start_r, start_w) = match what {
        What::Init { .. } => {
            let (r, w) = sys::pipe()?;
            (Some(r), Some(w))
        }
        What::Exec { .. } => (None, None),
    };
    // With a terminal the process opens the pty in its own mount namespace (so the slave's
    // name resolves there) and passes the master back over this socket.
    let (pty_r, pty_w) = if process.terminal {
        let (a, b) = sys::socketpair()?;
        (a, b)
    } else {
        (-1, -1)
    };
    let (mut in_r, mut in_w, mut out_r, mut out_w, mut err_r, mut err_w) = (-1, -1, -1, -1, -1, -1);
    if !process.terminal {
        if process.stdio.stdin.is_some() {
            (in_r, in_w) = sys::pipe()?;
        }
        if process.stdio.stdout.is_some() {
            (out_r, out_w) = sys::pipe()?;
        }
        if process.stdio.stderr.is_some() {
            (err_r, err_w) = sys::pipe()?;
        }
    }
    let ns_fds = match &what {
        What::Exec { init_pid, .. } => Some([
            open_ns(*init_pid, "pid")?,
            open_ns(*init_pid, "ipc")?,
            open_ns(*init_pid, "uts")?,
            open_ns(*init_pid, "mnt")?,
            open_ns(*init_pid, "cgroup")?,
        ]),
        What::Init { .. } => None,
    };
    // An exec'd process joins the cgroup of the container's init, like runc's exec.
    let cgroup_dir: Option<String> = match &what {
        What::Init { cgroup, .. } => cgroup.map(str::to_string),
        What::Exec { init_pid, .. } => crate::cgroup::of_pid(*init_pid),
    };
    // SAFETY: fork in a multi-threaded process; the children only use async-signal-safe calls
    // plus malloc, which glibc's fork makes safe, and never touch std's locked handles.
    let monitor = unsafe { libc::fork() };
    if monitor < 0 {
        return Err(sys::ctx("fork", "", io::Error::last_os_error()));
    }
    if monitor == 0 {
        // Monitor.
        sys::close(pid_r);
        sys::close(rep_r);
        if let Some(w) = start_w {
            sys::close(w);
        }
        for fd in [pty_r, in_w, out_r, err_r] {
            if fd >= 0 {
                sys::close(fd);
            }
        }
        let r = match (&what, ns_fds) {
            // SAFETY: unshare with flags only.
            (What::Init { .. }, _) => unsafe {
                if libc::unshare(
                    libc::CLONE_NEWNS
                        | libc::CLONE_NEWUTS
                        | libc::CLONE_NEWIPC
                        | libc::CLONE_NEWPID,
                ) != 0
                {
                    Err(sys::ctx(
                        "unshare",
                        "namespaces",
                        io::Error::last_os_error(),
                    ))
                } else {
                    Ok(())
                }
            },
            (What::Exec { .. }, Some(fds)) => setns(fds[0], "pid"),
            _ => Ok(()),
        };
        if let Err(e) = r {
            child_fail(rep_w, &e);
        }
        // SAFETY: as above.
        let child = unsafe { libc::fork() };
        if child < 0 {
            child_fail(rep_w, &io::Error::last_os_error());
        }
        if child == 0 {
            sys::close(pid_w);
            let e = run_process(
                &what,
                process,
                &argv,
                &envp,
                rep_w,
                start_r,
                pty_w,
                in_r,
                out_w,
                err_w,
                ns_fds,
                cgroup_dir.as_deref(),
            );
            child_fail(rep_w, &e);
        }
        let _ = sys::write_all(pid_w, &child.to_ne_bytes());
        sys::close(pid_w);
        sys::close(rep_w);
        for fd in [pty_w, in_r, out_w, err_w, start_r.unwrap_or(-1)] {
            if fd >= 0 {
                sys::close(fd);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our only child.
        unsafe {
            while libc::waitpid(child, &mut status, 0) < 0 {}
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
            libc::_exit(code)
        }
    }
    // Agent.
    for fd in [
        pid_w,
        rep_w,
        pty_w,
        in_r,
        out_w,
        err_w,
        start_r.unwrap_or(-1),
    ] {
        if fd >= 0 {
            sys::close(fd);
        }
    }
    if let Some(fds) = ns_fds {
        for fd in fds {
            sys::close(fd);
        }
    }
    let mut master = -1;
    if pty_r >= 0 {
        master = sys::recv_fd(pty_r).ok().flatten().unwrap_or(-1);
        sys::close(pty_r);
    }
    let mut pidb = [0u8; 4];
    let n = sys::read_some(pid_r, &mut pidb)?;
    sys::close(pid_r);
    let mut msg = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match sys::read_some(rep_r, &mut buf)? {
            0 => break,
            k => {
                msg.extend_from_slice(&buf[..k]);
                if msg.first() == Some(&b'R') {
                    break;
                }
            }
        }
    }
    sys::close(rep_r);
    let fail = || {
        for fd in [master, in_w, out_r, err_r, start_w.unwrap_or(-1)] {
            if fd >= 0 {
                sys::close(fd);
            }
        }
    };
    if msg.first() != Some(&b'R') || n != 4 {
        fail();
        let text = String::from_utf8_lossy(msg.get(1..).unwrap_or_default()).into_owned();
        return Err(io::Error::other(if text.is_empty() {
            "container process died during setup".to_string()
        } else {
            text
        }));
    }
    let opt = |fd: i32| (fd >= 0).then_some(fd);
    Ok(Spawned {
        monitor,
        pid: i32::from_ne_bytes(pidb),
        stdin: if process.terminal { None } else { opt(in_w) },
        stdout: if process.terminal { None } else { opt(out_r) },
        stderr: opt(err_r),
        pty_master: opt(master),
        start: start_w,
    })
}

#[allow(clippy::too_many_arguments)]
fn run_process(
    what: &What<'_>,
    process: &ProcessSpec,
    argv: &[CString],
    envp: &[CString],
    report: i32,
    start: Option<i32>,
    pty_sock: i32,
    in_r: i32,
    out_w: i32,
    err_w: i32,
    ns_fds: Option<[i32; 5]>,
    cgroup_dir: Option<&str>,
) -> io::Error {
    let r: io::Result<String> = (|| {
        // The process itself (not its monitor, which would count against pids.max) joins
        // the cgroup, then gets a cgroup namespace rooted there: the container sees its own
        // cgroup, with its limits, as /sys/fs/cgroup.
        if let Some(d) = cgroup_dir {
            crate::cgroup::join(d)?;
        }
        match (what, ns_fds) {
            (What::Exec { .. }, Some(fds)) => setns(fds[4], "cgroup")?,
            // SAFETY: unshare with a flag only.
            (What::Init { .. }, _) if cgroup_dir.is_some() => unsafe {
                if libc::unshare(libc::CLONE_NEWCGROUP) != 0 {
                    return Err(sys::ctx(
                        "unshare",
                        "cgroup namespace",
                        io::Error::last_os_error(),
                    ));
                }
            },
            _ => {}
        }
        match what {
            What::Init { spec, root, .. } => build_root(spec, root)?,
            What::Exec { .. } => {
                if let Some(fds) = ns_fds {
                    setns(fds[1], "ipc")?;
                    setns(fds[2], "uts")?;
                    setns(fds[3], "mnt")?;
                }
            }
        }
        let cwd = if process.cwd.is_empty() {
            "/"
        } else {
            process.cwd.as_str()
        };
        let _ = std::fs::create_dir_all(cwd);
        std::env::set_current_dir(cwd).map_err(|e| sys::ctx("chdir", cwd, e))?;
        resolve(&process.args[0], &process.env)
    })();
    let exe = match r {
        Ok(p) => p,
        Err(e) => return e,
    };
    let slave = if pty_sock >= 0 {
        match sys::open_pty() {
            Ok((m, s)) => {
                if let Err(e) = sys::send_fd(pty_sock, m) {
                    return e;
                }
                sys::close(m);
                sys::close(pty_sock);
                s
            }
            Err(e) => return e,
        }
    } else {
        -1
    };
    // SAFETY: descriptor juggling in the forked child before exec.
    unsafe {
        if slave >= 0 {
            libc::setsid();
            libc::ioctl(slave, libc::TIOCSCTTY, 0);
            for t in 0..3 {
                libc::dup2(slave, t);
            }
        } else {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            for (fd, t) in [(in_r, 0), (out_w, 1), (err_w, 2)] {
                libc::dup2(if fd >= 0 { fd } else { null }, t);
            }
        }
    }
    if sys::write_all(report, b"R").is_err() {
        return io::Error::other("agent went away");
    }
    sys::close(report);
    if let Some(s) = start {
        let mut b = [0u8; 1];
        match sys::read_some(s, &mut b) {
            Ok(1) => {}
            // Closed without a byte: the container was removed before start.
            _ => {
                // SAFETY: leaving the child.
                unsafe { libc::_exit(137) }
            }
        }
        sys::close(s);
    }
    if let Err(e) = set_credentials(process) {
        let _ = sys::write_all(2, format!("moat-guest-agent: {e}\n").as_bytes());
        // SAFETY: leaving the child.
        unsafe { libc::_exit(126) }
    }
    let exe = match sys::cstr(&exe) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let mut av: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    av.push(std::ptr::null());
    let mut ev: Vec<*const libc::c_char> = envp.iter().map(|c| c.as_ptr()).collect();
    ev.push(std::ptr::null());
    // SAFETY: NULL-terminated arrays of valid C strings that outlive the call.
    unsafe { libc::execve(exe.as_ptr(), av.as_ptr(), ev.as_ptr()) };
    let e = io::Error::last_os_error();
    let _ = sys::write_all(
        2,
        format!("moat-guest-agent: exec {:?}: {e}\n", process.args[0]).as_bytes(),
    );
    // SAFETY: leaving the child.
    unsafe { libc::_exit(127) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let o: Vec<String> = [
            "nosuid",
            "strictatime",
            "mode=755",
            "size=65536k",
            "rprivate",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (f, d) = parse_options(&o);
        assert_eq!(f, libc::MS_NOSUID | libc::MS_STRICTATIME);
        assert_eq!(d, "mode=755,size=65536k");
        let (f, _) = parse_options(&["ro".into(), "rw".into(), "rbind".into()]);
        assert_eq!(f, libc::MS_BIND | libc::MS_REC);
    }

    #[test]
    fn paths_cannot_escape_the_root() {
        assert_eq!(under("/r/", "/etc/hosts").unwrap(), "/r/etc/hosts");
        assert!(under("/r", "/../../etc").is_err());
        assert!(under("/r", "a/../b").is_err());
    }

    #[test]
    fn resolve_searches_path_and_refuses_missing() {
        let sh = resolve("sh", &["PATH=/nonexistent:/bin:/usr/bin".into()]).unwrap();
        assert!(sh.ends_with("/sh"), "{sh}");
        let e = resolve("definitely-not-here", &[]).unwrap_err();
        assert!(
            e.to_string().contains("executable file not found in $PATH"),
            "{e}"
        );
        assert!(resolve("/nonexistent/x", &[]).is_err());
    }
}

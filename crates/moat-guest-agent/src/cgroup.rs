//! Container cgroups in the guest (cgroup v2). The host's cgroup bounds the whole VM; inside
//! it each container gets a directory of the guest's own hierarchy with the limits of its
//! OCI `linux.resources`, and every process of the container (init and exec'd) is moved
//! into it by its monitor before it starts, so nothing runs unaccounted.

use crate::sys;
use moat_vm_proto::Resources;
use std::io;

pub const ROOT: &str = "/sys/fs/cgroup";

/// Controllers containers get limits from.
const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// Mounts the guest's cgroup2 hierarchy and hands the controllers to child cgroups.
pub fn mount_hierarchy() -> io::Result<()> {
    sys::mount(
        "cgroup2",
        ROOT,
        "cgroup2",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )?;
    let available = std::fs::read_to_string(format!("{ROOT}/cgroup.controllers"))
        .map_err(|e| sys::ctx("reading", "cgroup.controllers", e))?;
    let enable: Vec<String> = CONTROLLERS
        .iter()
        .filter(|c| available.split_whitespace().any(|a| a == **c))
        .map(|c| format!("+{c}"))
        .collect();
    write(&format!("{ROOT}/cgroup.subtree_control"), &enable.join(" "))
}

fn mounted() -> bool {
    std::path::Path::new(&format!("{ROOT}/cgroup.subtree_control")).exists()
}

fn write(path: &str, value: &str) -> io::Result<()> {
    std::fs::write(path, value).map_err(|e| sys::ctx(&format!("writing {value:?} to"), path, e))
}

pub fn dir(id: &str) -> String {
    format!("{ROOT}/{id}")
}

/// The lines to write, file by file, for `r` (pure, so it is unit-tested).
pub fn settings(r: &Resources) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(m) = r.memory_max {
        out.push(("memory.max", m.to_string()));
    }
    if let Some(p) = r.pids_max {
        out.push(("pids.max", p.to_string()));
    }
    if r.cpu_quota.is_some() || r.cpu_period.is_some() {
        let quota = r
            .cpu_quota
            .map(|q| q.to_string())
            .unwrap_or_else(|| "max".into());
        out.push((
            "cpu.max",
            format!("{quota} {}", r.cpu_period.unwrap_or(100_000)),
        ));
    }
    if let Some(w) = r.cpu_weight {
        out.push(("cpu.weight", w.to_string()));
    }
    out
}

/// Creates the container's cgroup with its limits. Returns its path, or None when the guest
/// has no cgroup hierarchy and no limit was asked for (a limit that cannot be applied is an
/// error, never silently dropped).
pub fn create(id: &str, r: &Resources) -> io::Result<Option<String>> {
    let want = settings(r);
    if !mounted() {
        if want.is_empty() {
            return Ok(None);
        }
        return Err(io::Error::other(
            "resource limits asked for, but the guest has no cgroup2 hierarchy",
        ));
    }
    let d = dir(id);
    std::fs::create_dir(&d).map_err(|e| sys::ctx("creating cgroup", &d, e))?;
    for (file, value) in want {
        if let Err(e) = write(&format!("{d}/{file}"), &value) {
            let _ = std::fs::remove_dir(&d);
            return Err(e);
        }
    }
    Ok(Some(d))
}

/// Removes a container's cgroup once its processes are gone (they may take a moment to
/// leave it after their exit was reported).
pub fn remove(id: &str) {
    let d = dir(id);
    for _ in 0..50 {
        match std::fs::remove_dir(&d) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}

/// The cgroup directory of process `pid` (for an exec: the one of the container's init).
pub fn of_pid(pid: i32) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = s.lines().find_map(|l| l.strip_prefix("0::"))?;
    (rel != "/").then(|| format!("{ROOT}{rel}"))
}

/// Moves the calling process into the cgroup at `dir` ("0" is the writer itself, whatever
/// PID namespace it is in).
pub fn join(dir: &str) -> io::Result<()> {
    write(&format!("{dir}/cgroup.procs"), "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_name_the_cgroup2_files() {
        assert!(settings(&Resources::default()).is_empty());
        let r = Resources {
            memory_max: Some(64 << 20),
            pids_max: Some(16),
            cpu_quota: Some(50_000),
            cpu_period: None,
            cpu_weight: Some(39),
        };
        assert_eq!(
            settings(&r),
            vec![
                ("memory.max", "67108864".to_string()),
                ("pids.max", "16".to_string()),
                ("cpu.max", "50000 100000".to_string()),
                ("cpu.weight", "39".to_string()),
            ]
        );
        let period_only = Resources {
            cpu_period: Some(20_000),
            ..Default::default()
        };
        assert_eq!(
            settings(&period_only),
            vec![("cpu.max", "max 20000".to_string())]
        );
    }
}

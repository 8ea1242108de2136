//! Container log rotation, as the kubelet's container log manager does it
//! (`containerLogMaxSize`, default 10Mi; `containerLogMaxFiles`, default 5; checked every
//! `containerLogMonitorInterval`, default 10 s, for running containers only).
//!
//! When a container's current log (`<restart>.log`) has reached the maximum size:
//! 1. leftovers are removed: `*.tmp` of an interrupted compression, and an uncompressed
//!    rotated file whose `.gz` already exists;
//! 2. the oldest rotated files are removed so that at most `max_files - 2` remain (room for
//!    the one about to be rotated and the new current file);
//! 3. the remaining uncompressed rotated files are gzip'd (`<f>.tmp`, then renamed `<f>.gz`);
//! 4. the current file is renamed `<restart>.log.<YYYYmmdd-HHMMSS>` (UTC) and an empty
//!    current file is created; the shim notices the new inode on its next write and reopens
//!    (the kubelet asks the runtime with `ReopenContainerLog`).
//!
//! So a container has at most `max_files` files: the current one, the latest rotated one
//! (plain, so a reader that still had it open loses nothing) and older ones compressed.
//! `kubectl logs` reads the current file, as with the kubelet. [`plan`] is the sans-IO part.

use std::path::{Path, PathBuf};

/// The kubelet's rotated-file timestamp (`20060102-150405` in Go).
pub const TIMESTAMP_FORMAT: &str = "%Y%m%d-%H%M%S";

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("container log rotation: {0}")]
    Policy(String),
    #[error("{step} {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err<'a>(
    step: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> RotateError + 'a {
    move |source| RotateError::Io {
        step,
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Rotate once the current file has this many bytes.
    pub max_size: u64,
    /// Files per container, the current one included.
    pub max_files: usize,
}

impl Policy {
    /// The kubelet's defaults: 10Mi, 5 files.
    pub const DEFAULT: Policy = Policy {
        max_size: 10 * 1024 * 1024,
        max_files: 5,
    };

    /// Validated as the kubelet validates its configuration.
    pub fn new(max_size: u64, max_files: usize) -> Result<Policy, RotateError> {
        if max_files < 2 {
            return Err(RotateError::Policy(format!(
                "containerLogMaxFiles must be at least 2, not {max_files}"
            )));
        }
        if max_size == 0 {
            return Err(RotateError::Policy(
                "containerLogMaxSize must be more than 0".into(),
            ));
        }
        Ok(Policy {
            max_size,
            max_files,
        })
    }
}

impl Default for Policy {
    fn default() -> Policy {
        Policy::DEFAULT
    }
}

/// What one rotation of `log` does, by file name within its directory.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub remove: Vec<String>,
    pub compress: Vec<String>,
    /// The name the current file is renamed to; `None` if a file of that name exists already
    /// (a second rotation within the same second waits for the next check).
    pub rotate_to: Option<String>,
}

/// Plans the rotation of the file named `log` given the names of the files beside it and the
/// time stamp (formatted with [`TIMESTAMP_FORMAT`]).
pub fn plan(log: &str, siblings: &[String], policy: &Policy, stamp: &str) -> Plan {
    let prefix = format!("{log}.");
    let mut rotated: Vec<&str> = siblings
        .iter()
        .map(String::as_str)
        .filter(|n| n.starts_with(&prefix))
        .collect();
    rotated.sort_unstable();
    let mut p = Plan::default();
    let mut kept = Vec::new();
    for n in &rotated {
        let has_gz = rotated.contains(&format!("{n}.gz").as_str());
        if n.ends_with(".tmp") || (!n.ends_with(".gz") && has_gz) {
            p.remove.push(n.to_string());
        } else {
            kept.push(*n);
        }
    }
    let max_rotated = policy.max_files.saturating_sub(2);
    let excess = kept.len().saturating_sub(max_rotated);
    p.remove.extend(kept.drain(..excess).map(String::from));
    p.compress = kept
        .iter()
        .filter(|n| !n.ends_with(".gz"))
        .map(|n| n.to_string())
        .collect();
    let target = format!("{log}.{stamp}");
    let taken = kept
        .iter()
        .any(|n| *n == target || *n == format!("{target}.gz"));
    p.rotate_to = (!taken).then_some(target);
    p
}

/// Log files of runs older than the previous one, when run `current` of a container starts:
/// the kubelet keeps one dead container per container (for `--previous`) and removes the
/// older ones with their logs (`<n>.log` and its rotated files).
pub fn stale_runs(names: &[String], current: u32) -> Vec<String> {
    names
        .iter()
        .filter(|n| {
            n.split_once(".log")
                .and_then(|(num, rest)| {
                    (rest.is_empty() || rest.starts_with('.'))
                        .then(|| num.parse::<u32>().ok())
                        .flatten()
                })
                .is_some_and(|run| run.saturating_add(1) < current)
        })
        .cloned()
        .collect()
}

/// Removes the log files of runs older than the previous one from `dir` (see [`stale_runs`]).
pub fn remove_stale_runs(dir: &Path, current: u32) -> Result<(), RotateError> {
    let names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("listing", dir)(e)),
    };
    for n in stale_runs(&names, current) {
        let f = dir.join(n);
        std::fs::remove_file(&f).map_err(io_err("removing", &f))?;
    }
    Ok(())
}

/// Rotates `path` if it has reached the policy's size; whether it did.
pub fn rotate_if_needed(
    path: &Path,
    policy: &Policy,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<bool, RotateError> {
    let size = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err("reading the size of", path)(e)),
    };
    if size < policy.max_size {
        return Ok(false);
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Ok(false);
    };
    let siblings: Vec<String> = std::fs::read_dir(dir)
        .map_err(io_err("listing", dir))?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    let p = plan(
        name,
        &siblings,
        policy,
        &now.format(TIMESTAMP_FORMAT).to_string(),
    );
    for n in &p.remove {
        let f = dir.join(n);
        match std::fs::remove_file(&f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_err("removing", &f)(e));
            }
            _ => {}
        }
    }
    for n in &p.compress {
        compress(&dir.join(n))?;
    }
    let Some(to) = p.rotate_to else {
        return Ok(false);
    };
    let to = dir.join(to);
    std::fs::rename(path, &to).map_err(io_err("rotating", path))?;
    // The new current file, so readers find it before the container writes again; the shim
    // appends to whatever file the path names.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err("creating", path))?;
    Ok(true)
}

/// `f` → `f.gz` through `f.tmp`, then `f` is removed.
fn compress(f: &Path) -> Result<(), RotateError> {
    use std::io::Write;
    let name = f.as_os_str().to_string_lossy();
    let tmp = PathBuf::from(format!("{name}.tmp"));
    let gz = PathBuf::from(format!("{name}.gz"));
    let mut src = std::fs::File::open(f).map_err(io_err("opening", f))?;
    let out = std::fs::File::create(&tmp).map_err(io_err("creating", &tmp))?;
    let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    std::io::copy(&mut src, &mut enc).map_err(io_err("compressing", f))?;
    let mut out = enc.finish().map_err(io_err("compressing", f))?;
    out.flush().map_err(io_err("writing", &tmp))?;
    drop(out);
    std::fs::rename(&tmp, &gz).map_err(io_err("renaming", &tmp))?;
    std::fs::remove_file(f).map_err(io_err("removing", f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn plan_keeps_room_for_current_and_newest_and_compresses_older() {
        let pol = Policy::new(10, 5).unwrap();
        let sib = names(&[
            "0.log",
            "1.log",
            "1.log.20260101-000000",
            "0.log.20260101-000001.gz",
            "0.log.20260101-000002.gz",
            "0.log.20260101-000003",
            "0.log.20260101-000003.gz",
            "0.log.20260101-000004.gz.tmp",
            "0.log.20260101-000005",
            "0.log.20260101-000006",
        ]);
        let p = plan("0.log", &sib, &pol, "20260101-000007");
        assert_eq!(
            p.remove,
            [
                // leftovers first: an uncompressed copy of a .gz, an interrupted compression
                "0.log.20260101-000003",
                "0.log.20260101-000004.gz.tmp",
                // then the oldest, down to max_files - 2 = 3 rotated files
                "0.log.20260101-000001.gz",
                "0.log.20260101-000002.gz",
            ]
        );
        assert_eq!(
            p.compress,
            ["0.log.20260101-000005", "0.log.20260101-000006"]
        );
        assert_eq!(p.rotate_to.as_deref(), Some("0.log.20260101-000007"));

        let first = plan("0.log", &names(&["0.log"]), &pol, "20260101-000000");
        assert_eq!(
            first,
            Plan {
                remove: vec![],
                compress: vec![],
                rotate_to: Some("0.log.20260101-000000".into())
            }
        );
        // Two files at most: only the current one and the one just rotated.
        let two = Policy::new(10, 2).unwrap();
        let p = plan("0.log", &names(&["0.log", "0.log.1"]), &two, "2");
        assert_eq!(
            (p.remove, p.compress, p.rotate_to),
            (names(&["0.log.1"]), vec![], Some("0.log.2".into()))
        );
        // A name already used this second: no rename now.
        let p = plan("0.log", &names(&["0.log", "0.log.7"]), &pol, "7");
        assert_eq!(p.rotate_to, None);
        assert!(Policy::new(10, 1).is_err());
        assert!(Policy::new(0, 5).is_err());
    }

    #[test]
    fn only_the_current_and_previous_runs_keep_logs() {
        let sib = names(&[
            "0.log",
            "1.log",
            "1.log.20260101-000000.gz",
            "2.log",
            "2.log.20260101-000001",
            "3.log",
            "10.log",
            "x.log",
            "4.logs",
        ]);
        assert_eq!(
            stale_runs(&sib, 3),
            ["0.log", "1.log", "1.log.20260101-000000.gz"]
        );
        assert!(stale_runs(&sib, 1).is_empty());
        assert_eq!(
            stale_runs(&sib, 12).len(),
            7,
            "x.log and 4.logs are not run logs"
        );
        let d = tempfile::tempdir().unwrap();
        for n in ["0.log", "1.log", "2.log"] {
            std::fs::write(d.path().join(n), n).unwrap();
        }
        remove_stale_runs(d.path(), 2).unwrap();
        remove_stale_runs(&d.path().join("absent"), 2).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["1.log", "2.log"]);
    }

    #[test]
    fn rotation_on_disk_bounds_the_files_and_keeps_every_byte_until_removed() {
        use std::io::Read;
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("0.log");
        let pol = Policy::new(8, 3).unwrap();
        let t = |s: u32| chrono::DateTime::from_timestamp(1_767_225_600 + i64::from(s), 0).unwrap();
        std::fs::write(&log, "short\n").unwrap();
        assert!(
            !rotate_if_needed(&log, &pol, t(0)).unwrap(),
            "under the size"
        );
        assert!(!rotate_if_needed(&d.path().join("none.log"), &pol, t(0)).unwrap());
        for i in 1..=4u32 {
            std::fs::write(&log, format!("line {i} long enough\n")).unwrap();
            assert!(rotate_if_needed(&log, &pol, t(i)).unwrap());
            assert_eq!(std::fs::read(&log).unwrap(), b"", "a fresh current file");
        }
        let mut files: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        files.sort();
        assert_eq!(
            files,
            ["0.log", "0.log.20260101-000003.gz", "0.log.20260101-000004"]
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("0.log.20260101-000004")).unwrap(),
            "line 4 long enough\n"
        );
        let mut text = String::new();
        flate2::read::GzDecoder::new(
            std::fs::File::open(d.path().join("0.log.20260101-000003.gz")).unwrap(),
        )
        .read_to_string(&mut text)
        .unwrap();
        assert_eq!(text, "line 3 long enough\n");
        // The same second again: nothing is overwritten.
        std::fs::write(&log, "line 5 long enough\n").unwrap();
        assert!(!rotate_if_needed(&log, &pol, t(4)).unwrap());
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "line 5 long enough\n"
        );
    }
}

//! A VM sandbox's share mounts: each container's host paths (rootfs, volumes) are
//! bind-mounted under the sandbox's shared directories, which the guest sees. The mount
//! calls sit behind [`Mounts`] (real: [`HostMounts`]; [`fake::Recording`] for tests) so the
//! bookkeeping around them — all or nothing, undone last first — is tested without root.

use std::path::{Path, PathBuf};

use crate::error::DaemonError;

/// The two mount operations the daemon needs.
pub trait Mounts: Send + Sync {
    /// Bind-mounts `src` (file or directory, recursively) on `dst`, creating `dst`.
    fn bind(&self, src: &Path, dst: &Path) -> Result<(), DaemonError>;
    /// Detaches whatever is mounted on `dst` (lazily: a busy mount goes when released).
    fn detach(&self, dst: &Path);
}

/// Binds every `(src, dst)` in order. On a failure the mounts made so far are detached, last
/// first, and the error returned: a container gets all its shares or none.
pub fn bind_all(
    m: &dyn Mounts,
    shares: impl IntoIterator<Item = (PathBuf, PathBuf)>,
) -> Result<Vec<PathBuf>, DaemonError> {
    let mut made = Vec::new();
    for (src, dst) in shares {
        if let Err(e) = m.bind(&src, &dst) {
            detach_all(m, &made);
            return Err(e);
        }
        made.push(dst);
    }
    Ok(made)
}

/// Detaches `mounts`, last first (a later mount may sit inside an earlier one).
pub fn detach_all(m: &dyn Mounts, mounts: &[PathBuf]) {
    for d in mounts.iter().rev() {
        m.detach(d);
    }
}

/// The host's mount table.
pub struct HostMounts;

fn io(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DaemonError {
    let path = path.to_path_buf();
    move |source| DaemonError::Io { step, path, source }
}

impl Mounts for HostMounts {
    fn bind(&self, src: &Path, dst: &Path) -> Result<(), DaemonError> {
        if let Some(p) = dst.parent() {
            std::fs::create_dir_all(p).map_err(io("creating", p))?;
        }
        if src.is_dir() {
            std::fs::create_dir_all(dst).map_err(io("creating", dst))?;
        } else {
            std::fs::File::create(dst).map_err(io("creating", dst))?;
        }
        nix::mount::mount(
            Some(src),
            dst,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| DaemonError::Io {
            step: "bind-mounting into the share",
            path: src.to_path_buf(),
            source: e.into(),
        })
    }

    fn detach(&self, dst: &Path) {
        let _ = nix::mount::umount2(dst, nix::mount::MntFlags::MNT_DETACH);
    }
}

pub mod fake {
    //! A recording [`Mounts`](super::Mounts) that can be told to refuse one source.

    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    use crate::error::DaemonError;

    #[derive(Default)]
    pub struct Recording {
        /// `bind SRC DST` and `detach DST`, in call order.
        pub log: Mutex<Vec<String>>,
        /// A bind of this source fails.
        pub refuse: Option<PathBuf>,
    }

    impl Recording {
        pub fn calls(&self) -> Vec<String> {
            self.log.lock().map(|l| l.clone()).unwrap_or_default()
        }
    }

    impl super::Mounts for Recording {
        fn bind(&self, src: &Path, dst: &Path) -> Result<(), DaemonError> {
            if self.refuse.as_deref() == Some(src) {
                return Err(DaemonError::Io {
                    step: "bind-mounting into the share",
                    path: src.to_path_buf(),
                    source: std::io::Error::from_raw_os_error(2),
                });
            }
            if let Ok(mut l) = self.log.lock() {
                l.push(format!("bind {} {}", src.display(), dst.display()));
            }
            Ok(())
        }

        fn detach(&self, dst: &Path) {
            if let Ok(mut l) = self.log.lock() {
                l.push(format!("detach {}", dst.display()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(n: usize) -> Vec<(PathBuf, PathBuf)> {
        (0..n)
            .map(|i| (format!("/h/{i}").into(), format!("/s/{i}").into()))
            .collect()
    }

    #[test]
    fn all_shares_bound_in_order_and_detached_last_first() {
        let m = fake::Recording::default();
        let made = bind_all(&m, pairs(3)).unwrap();
        detach_all(&m, &made);
        assert_eq!(
            m.calls(),
            [
                "bind /h/0 /s/0",
                "bind /h/1 /s/1",
                "bind /h/2 /s/2",
                "detach /s/2",
                "detach /s/1",
                "detach /s/0"
            ]
        );
    }

    #[test]
    fn a_failed_share_undoes_the_ones_made_before_it() {
        let m = fake::Recording {
            refuse: Some("/h/2".into()),
            ..Default::default()
        };
        let e = bind_all(&m, pairs(4)).unwrap_err();
        assert!(e.to_string().contains("bind-mounting"), "{e}");
        assert_eq!(
            m.calls(),
            [
                "bind /h/0 /s/0",
                "bind /h/1 /s/1",
                "detach /s/1",
                "detach /s/0"
            ]
        );
    }
}

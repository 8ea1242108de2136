//! The narrow mount interface behind per-container rootfs: the real one calls mount(2), the
//! recording fake lets the store's logic be tested without root.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub trait Mounter {
    fn mount_overlay(
        &self,
        lower: &[PathBuf],
        upper: &Path,
        work: &Path,
        target: &Path,
    ) -> io::Result<()>;
    /// Unmounts `target`; a target that is not mounted is not an error (release is idempotent).
    fn unmount(&self, target: &Path) -> io::Result<()>;
}

/// Overlay mount options; fails when they exceed what mount(2) accepts in one page.
pub fn overlay_options(lower: &[PathBuf], upper: &Path, work: &Path) -> io::Result<String> {
    let mut lowers = Vec::new();
    for l in lower {
        let s = l
            .to_str()
            .ok_or_else(|| io::Error::other("non-UTF-8 layer path"))?;
        if s.contains([',', ':']) {
            return Err(io::Error::other(format!(
                "layer path {s:?} contains ',' or ':'"
            )));
        }
        lowers.push(s);
    }
    if lowers.is_empty() {
        return Err(io::Error::other("image has no layers"));
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        upper.display(),
        work.display()
    );
    if opts.len() >= 4096 {
        return Err(io::Error::other(format!(
            "overlay options are {} bytes, over the one-page limit of mount(2)",
            opts.len()
        )));
    }
    Ok(opts)
}

pub struct RealMounter;

impl Mounter for RealMounter {
    fn mount_overlay(
        &self,
        lower: &[PathBuf],
        upper: &Path,
        work: &Path,
        target: &Path,
    ) -> io::Result<()> {
        let opts = overlay_options(lower, upper, work)?;
        nix::mount::mount(
            Some("overlay"),
            target,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(opts.as_str()),
        )
        .map_err(io::Error::from)
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        match nix::mount::umount2(target, nix::mount::MntFlags::empty()) {
            Ok(()) => Ok(()),
            // EINVAL: not a mount point; ENOENT: already gone. Both mean "nothing mounted".
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountCall {
    Overlay { options: String, target: PathBuf },
    Unmount(PathBuf),
}

#[derive(Default)]
pub struct RecordingMounter {
    pub calls: Mutex<Vec<MountCall>>,
}

impl Mounter for RecordingMounter {
    fn mount_overlay(
        &self,
        lower: &[PathBuf],
        upper: &Path,
        work: &Path,
        target: &Path,
    ) -> io::Result<()> {
        let options = overlay_options(lower, upper, work)?;
        self.calls
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .push(MountCall::Overlay {
                options,
                target: target.to_path_buf(),
            });
        Ok(())
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        self.calls
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .push(MountCall::Unmount(target.to_path_buf()));
        Ok(())
    }
}

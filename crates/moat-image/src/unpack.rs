//! Layer unpacking into a per-layer directory usable as an overlayfs lowerdir.
//!
//! Whiteouts become overlayfs whiteouts (a 0:0 character device) and opaque markers become
//! the `trusted.overlay.opaque` xattr, so stacking the layer dirs as lowerdirs gives the
//! image's filesystem without flattening. Every path is checked to stay inside the layer dir:
//! `..` components are rejected and no entry is written through a symlink.

use std::ffi::CString;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};

use sha2::Digest as _;

use crate::reference::Digest;

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {0:?} escapes the layer directory")]
    Traversal(String),
    #[error("reading layer stream")]
    Read(#[source] io::Error),
    #[error("unpacking layer entry {path:?}")]
    Entry {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// What a tar entry's path means for the unpacker (sans-IO).
#[derive(Debug, PartialEq, Eq)]
pub enum EntryPath {
    /// The layer root itself (`./`).
    Root,
    Normal(PathBuf),
    /// `dir/.wh.name`: `dir/name` is deleted in this layer.
    Whiteout(PathBuf),
    /// `dir/.wh..wh..opq`: `dir` hides everything from lower layers.
    Opaque(PathBuf),
}

const WH_PREFIX: &str = ".wh.";
const WH_OPAQUE: &str = ".wh..wh..opq";

/// Normalizes a tar path relative to the layer root, rejecting anything that could leave it.
pub fn normalize(raw: &Path) -> Result<PathBuf, UnpackError> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(UnpackError::Traversal(raw.display().to_string()));
            }
        }
    }
    Ok(out)
}

pub fn classify(raw: &Path) -> Result<EntryPath, UnpackError> {
    let p = normalize(raw)?;
    let Some(file) = p.file_name().and_then(|f| f.to_str()) else {
        return Ok(if p.as_os_str().is_empty() {
            EntryPath::Root
        } else {
            EntryPath::Normal(p)
        });
    };
    let parent = p.parent().map(Path::to_path_buf).unwrap_or_default();
    if file == WH_OPAQUE {
        return Ok(EntryPath::Opaque(parent));
    }
    if let Some(name) = file.strip_prefix(WH_PREFIX) {
        if name.is_empty() || name == "." || name == ".." {
            return Err(UnpackError::Traversal(raw.display().to_string()));
        }
        return Ok(EntryPath::Whiteout(parent.join(name)));
    }
    Ok(EntryPath::Normal(p))
}

/// A reader that hashes what passes through it: the diffID is the digest of the uncompressed
/// tar stream.
struct HashingReader<R> {
    inner: R,
    hasher: sha2::Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Wraps a layer blob stream in the right decompressor, chosen by magic bytes rather than the
/// declared media type (registries mislabel layers often enough).
pub fn decompress<'a, R: Read + 'a>(r: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut br = BufReader::with_capacity(1 << 16, r);
    let head = br.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(br)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let d = ruzstd::decoding::StreamingDecoder::new(br)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        Ok(Box::new(d))
    } else {
        Ok(Box::new(br))
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Creates missing parent directories of `rel` under `root`, refusing to pass through a
/// symlink (which could point anywhere on the host).
fn safe_parent(root: &Path, rel: &Path) -> Result<PathBuf, UnpackError> {
    let mut cur = root.to_path_buf();
    let parent = rel.parent().unwrap_or(Path::new(""));
    for c in parent.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(UnpackError::Traversal(rel.display().to_string()));
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(entry_err(
                    rel,
                    io::Error::new(io::ErrorKind::NotADirectory, "parent is not a directory"),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&cur).map_err(|e| entry_err(rel, e))?;
            }
            Err(e) => return Err(entry_err(rel, e)),
        }
    }
    Ok(root.join(rel))
}

fn entry_err(rel: &Path, source: io::Error) -> UnpackError {
    UnpackError::Entry {
        path: rel.display().to_string(),
        source,
    }
}

/// Removes whatever non-directory sits at `path`, so a later entry replaces an earlier one.
fn clear(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn lchown(path: &Path, uid: u64, gid: u64) -> io::Result<()> {
    if !is_root() {
        return Ok(());
    }
    let uid = u32::try_from(uid).map_err(|_| io::Error::other("uid out of range"))?;
    let gid = u32::try_from(gid).map_err(|_| io::Error::other("gid out of range"))?;
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
}

fn mknod(path: &Path, kind: nix::sys::stat::SFlag, mode: u32, dev: u64) -> io::Result<()> {
    nix::sys::stat::mknod(
        path,
        kind,
        nix::sys::stat::Mode::from_bits_truncate(mode & 0o7777),
        dev,
    )
    .map_err(io::Error::from)
}

fn set_opaque(dir: &Path) -> io::Result<()> {
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let name = c"trusted.overlay.opaque";
    // SAFETY: both strings are NUL-terminated and live across the call; the value pointer and
    // length describe a 1-byte static buffer.
    let rc = unsafe { libc::lsetxattr(c.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Unpacks one layer blob (compressed or not) into `dest` (an existing empty directory) and
/// returns its diffID. The caller verifies the diffID and discards `dest` on any error.
pub fn unpack_layer<R: Read>(blob: R, dest: &Path) -> Result<Digest, UnpackError> {
    let stream = decompress(blob).map_err(UnpackError::Read)?;
    let hashing = HashingReader {
        inner: stream,
        hasher: sha2::Sha256::new(),
    };
    let mut ar = tar::Archive::new(hashing);
    let mut dirs: Vec<(PathBuf, u32)> = Vec::new();
    for entry in ar.entries().map_err(UnpackError::Read)? {
        let mut entry = entry.map_err(UnpackError::Read)?;
        let raw = entry.path().map_err(UnpackError::Read)?.into_owned();
        let header = entry.header().clone();
        let mode = header.mode().unwrap_or(0o644);
        let uid = header.uid().unwrap_or(0);
        let gid = header.gid().unwrap_or(0);
        let rel = match classify(&raw)? {
            EntryPath::Root => {
                dirs.push((dest.to_path_buf(), mode));
                lchown(dest, uid, gid).map_err(|e| entry_err(&raw, e))?;
                continue;
            }
            EntryPath::Opaque(dir) => {
                let full = if dir.as_os_str().is_empty() {
                    dest.to_path_buf()
                } else {
                    let p = safe_parent(dest, &dir.join("x"))?;
                    p.parent().map(Path::to_path_buf).unwrap_or(p)
                };
                set_opaque(&full).map_err(|e| entry_err(&raw, e))?;
                continue;
            }
            EntryPath::Whiteout(target) => {
                let full = safe_parent(dest, &target)?;
                clear(&full).map_err(|e| entry_err(&raw, e))?;
                mknod(&full, nix::sys::stat::SFlag::S_IFCHR, 0, 0)
                    .map_err(|e| entry_err(&raw, e))?;
                continue;
            }
            EntryPath::Normal(rel) => rel,
        };
        let full = safe_parent(dest, &rel)?;
        let err = |e| entry_err(&rel, e);
        let kind = header.entry_type();
        use tar::EntryType as T;
        match kind {
            T::Directory => {
                match fs::symlink_metadata(&full) {
                    Ok(m) if m.is_dir() => {}
                    Ok(m) if m.file_type().is_symlink() => {
                        return Err(UnpackError::Traversal(rel.display().to_string()));
                    }
                    Ok(_) => {
                        fs::remove_file(&full).map_err(err)?;
                        fs::create_dir(&full).map_err(err)?;
                    }
                    Err(_) => fs::create_dir(&full).map_err(err)?,
                }
                lchown(&full, uid, gid).map_err(err)?;
                // Directory modes are applied after all entries so a read-only directory does
                // not block its own children.
                dirs.push((full, mode));
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                clear(&full).map_err(err)?;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&full)
                    .map_err(err)?;
                io::copy(&mut entry, &mut f).map_err(err)?;
                drop(f);
                lchown(&full, uid, gid).map_err(err)?;
                fs::set_permissions(&full, fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(err)?;
            }
            T::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(UnpackError::Read)?
                    .ok_or_else(|| err(io::Error::other("symlink without target")))?;
                clear(&full).map_err(err)?;
                // The target is stored verbatim: it is resolved later inside the container's
                // root, and we never write through it here.
                symlink(&*target, &full).map_err(err)?;
                lchown(&full, uid, gid).map_err(err)?;
            }
            T::Link => {
                let target = entry
                    .link_name()
                    .map_err(UnpackError::Read)?
                    .ok_or_else(|| err(io::Error::other("hardlink without target")))?;
                let target_rel = normalize(&target)?;
                let target_full = safe_parent(dest, &target_rel)?;
                let m = fs::symlink_metadata(&target_full).map_err(err)?;
                if m.is_dir() {
                    return Err(err(io::Error::other("hardlink to a directory")));
                }
                clear(&full).map_err(err)?;
                fs::hard_link(&target_full, &full).map_err(err)?;
            }
            // Device nodes can only be made by root; unprivileged unpacking skips them (runc
            // provides /dev anyway).
            T::Char | T::Block | T::Fifo if is_root() => {
                use nix::sys::stat::SFlag;
                let flag = match kind {
                    T::Char => SFlag::S_IFCHR,
                    T::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                clear(&full).map_err(err)?;
                mknod(
                    &full,
                    flag,
                    mode,
                    nix::sys::stat::makedev(major.into(), minor.into()),
                )
                .map_err(err)?;
                lchown(&full, uid, gid).map_err(err)?;
            }
            // pax/GNU long-name headers are folded into entries by the tar crate; anything
            // else carries no filesystem content.
            _ => {}
        }
    }
    let mut hashing = ar.into_inner();
    io::copy(&mut hashing, &mut io::sink()).map_err(UnpackError::Read)?;
    for (dir, mode) in dirs.into_iter().rev() {
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode & 0o7777))
            .map_err(|e| entry_err(&dir, e))?;
    }
    Ok(Digest::from_sha256(&hashing.hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiteouts_are_classified() {
        assert_eq!(
            classify(Path::new("./etc/.wh.passwd")).unwrap(),
            EntryPath::Whiteout(PathBuf::from("etc/passwd"))
        );
        assert_eq!(
            classify(Path::new("var/lib/.wh..wh..opq")).unwrap(),
            EntryPath::Opaque(PathBuf::from("var/lib"))
        );
        assert_eq!(
            classify(Path::new(".wh..wh..opq")).unwrap(),
            EntryPath::Opaque(PathBuf::new())
        );
        assert_eq!(classify(Path::new("./")).unwrap(), EntryPath::Root);
        assert_eq!(
            classify(Path::new("/bin/sh")).unwrap(),
            EntryPath::Normal(PathBuf::from("bin/sh"))
        );
    }

    #[test]
    fn traversal_is_rejected() {
        for bad in ["../etc/passwd", "a/../../b", "./.wh...", "x/.wh.."] {
            assert!(
                matches!(classify(Path::new(bad)), Err(UnpackError::Traversal(_))),
                "{bad} accepted"
            );
        }
    }

    fn tar_with(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o640);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, data).unwrap();
    }

    #[test]
    fn unpacks_files_links_and_reports_diffid() {
        let data = tar_with(|b| {
            file(b, "etc/hello", b"hi");
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, "bin/sh", "/bin/busybox").unwrap();
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Link);
            h.set_size(0);
            b.append_link(&mut h, "etc/hello2", "etc/hello").unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        let d = unpack_layer(&data[..], dir.path()).unwrap();
        assert_eq!(d, Digest::of(&data));
        assert_eq!(fs::read(dir.path().join("etc/hello2")).unwrap(), b"hi");
        let m = fs::metadata(dir.path().join("etc/hello")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o640);
        assert_eq!(
            fs::read_link(dir.path().join("bin/sh")).unwrap(),
            PathBuf::from("/bin/busybox")
        );
        // The same layer gzip-compressed has the same diffID.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &data).unwrap();
        let gz = gz.finish().unwrap();
        let dir2 = tempfile::tempdir().unwrap();
        assert_eq!(unpack_layer(&gz[..], dir2.path()).unwrap(), d);
        // And zstd-compressed.
        let zst = ruzstd::encoding::compress_to_vec(
            &data[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        assert_eq!(&zst[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
        let dir3 = tempfile::tempdir().unwrap();
        assert_eq!(unpack_layer(&zst[..], dir3.path()).unwrap(), d);
        assert_eq!(fs::read(dir3.path().join("etc/hello")).unwrap(), b"hi");
    }

    #[test]
    fn writing_through_a_symlink_is_rejected() {
        let outside = tempfile::tempdir().unwrap();
        let data = tar_with(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, "evil", outside.path()).unwrap();
            file(b, "evil/owned", b"x");
        });
        let dir = tempfile::tempdir().unwrap();
        let e = unpack_layer(&data[..], dir.path()).unwrap_err();
        assert!(matches!(e, UnpackError::Traversal(_)), "{e:?}");
        assert!(!outside.path().join("owned").exists());
    }

    #[test]
    fn hardlink_outside_is_rejected() {
        let mut data = tar_with(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Link);
            h.set_size(0);
            b.append_link(&mut h, "x", "etc/passwd").unwrap();
        });
        // The tar crate refuses to write `..` itself, so patch the link name in the header.
        let pos = data.windows(10).position(|w| w == b"etc/passwd").unwrap();
        data[pos..pos + 10].copy_from_slice(b"../../../p");
        let h = tar::Header::from_byte_slice(&data[..512]).clone();
        let mut h2 = h;
        h2.set_cksum();
        data[..512].copy_from_slice(h2.as_bytes());
        let dir = tempfile::tempdir().unwrap();
        let e = unpack_layer(&data[..], dir.path()).unwrap_err();
        assert!(matches!(e, UnpackError::Traversal(_)), "{e:?}");
    }
}

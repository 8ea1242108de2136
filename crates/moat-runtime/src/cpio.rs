//! A minimal "newc" cpio archive writer for the guest initramfs.
//!
//! Written here because the initramfs needs only regular files, directories and symlinks with
//! fixed owners and mtimes (for reproducible, idempotent asset builds), which is a few dozen
//! lines; the crates.io cpio crates either read only or pull in far more than that.

use std::io::{self, Write};

const TRAILER: &str = "TRAILER!!!";

pub struct NewcWriter<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

enum Kind<'a> {
    File(&'a [u8]),
    Dir,
    Symlink(&'a str),
}

impl<W: Write> NewcWriter<W> {
    pub fn new(out: W) -> Self {
        NewcWriter {
            out,
            ino: 1,
            written: 0,
        }
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        self.entry(path, mode, Kind::Dir)
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, mode, Kind::File(data))
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.entry(path, 0o777, Kind::Symlink(target))
    }

    /// Writes the trailer and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header(TRAILER, 0, 0, 1, 0)?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(&mut self, path: &str, perm: u32, kind: Kind<'_>) -> io::Result<()> {
        let path = path.trim_start_matches('/');
        if path.is_empty() || path.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad cpio path {path:?}"),
            ));
        }
        let (fmt, nlink, data): (u32, u32, &[u8]) = match kind {
            Kind::File(d) => (0o100000, 1, d),
            Kind::Dir => (0o040000, 2, &[]),
            Kind::Symlink(t) => (0o120000, 1, t.as_bytes()),
        };
        let ino = self.ino;
        self.ino += 1;
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{path} exceeds 4 GiB"))
        })?;
        self.header(path, fmt | (perm & 0o7777), ino, nlink, size)?;
        self.write_padded(data)
    }

    fn header(&mut self, name: &str, mode: u32, ino: u32, nlink: u32, size: u32) -> io::Result<()> {
        let namesize = name.len() as u32 + 1;
        // Fields: ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor
        // namesize check; uid/gid/mtime are 0 so the archive is byte-for-byte reproducible.
        let hdr = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
            0, 0, 0, 0, 0, 0, 0, 0
        );
        self.out.write_all(hdr.as_bytes())?;
        self.written += hdr.len() as u64;
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        self.write_padded(&n)
    }

    /// newc aligns the name (after the 110-byte header) and the data to 4 bytes.
    fn write_padded(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.write_all(data)?;
        self.written += data.len() as u64;
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.out.write_all(&[0u8; 3][..pad])?;
        self.written += pad as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_and_alignment() {
        let mut w = NewcWriter::new(Vec::new());
        w.file("/init", 0o755, b"abcde").unwrap();
        let out = w.finish().unwrap();
        assert!(out.starts_with(b"070701"));
        // 110-byte header, "init\0" padded to 4-aligned offset 116, 5 data bytes padded to 124.
        assert_eq!(&out[110..115], b"init\0");
        assert_eq!(&out[116..121], b"abcde");
        assert_eq!(&out[124..130], b"070701");
        assert_eq!(out.len() % 4, 0);
        let mode = u32::from_str_radix(std::str::from_utf8(&out[14..22]).unwrap(), 16).unwrap();
        assert_eq!(mode, 0o100755);
        assert!(out.windows(10).any(|x| x == TRAILER.as_bytes()));
    }

    #[test]
    fn rejects_empty_and_nul_paths() {
        let mut w = NewcWriter::new(Vec::new());
        assert!(w.file("/", 0o644, b"").is_err());
        assert!(w.file("a\0b", 0o644, b"").is_err());
    }

    #[test]
    fn same_input_same_bytes() {
        let build = || {
            let mut w = NewcWriter::new(Vec::new());
            w.dir("modules", 0o755).unwrap();
            w.file("modules/order", 0o644, b"virtio.ko\n").unwrap();
            w.symlink("bin/sh", "busybox").unwrap();
            w.finish().unwrap()
        };
        assert_eq!(build(), build());
    }
}

//! Image layer unpacking (`moat_image::unpack::unpack_layer`) on hostile tar streams: raw
//! bytes (compressed or not), and archives built from entries whose paths and link targets
//! are drawn from traversal material (`..`, absolute paths, symlinks pointing outside, hard
//! links, whiteouts and opaque markers). The layer is unpacked into `base/layer` beside
//! `base/outside/canary`; whatever the outcome, nothing outside `base/layer` may change.
//! Absolute link targets only ever name `base/outside`, so a bug shows up there and not on
//! the host.
#![no_main]

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

const COMPONENTS: &[&str] = &[
    "a",
    "b",
    "l",
    "..",
    ".",
    "",
    ".wh.a",
    ".wh.l",
    ".wh..wh..opq",
    ".wh...",
    "outside",
];

/// One 512-byte ustar header with raw (unvalidated) name and link name.
fn header(name: &[u8], link: &[u8], kind: u8, mode: u32, size: usize) -> [u8; 512] {
    let mut h = [0u8; 512];
    let put = |h: &mut [u8; 512], at: usize, len: usize, v: &[u8]| {
        let n = v.len().min(len);
        h[at..at + n].copy_from_slice(&v[..n]);
    };
    put(&mut h, 0, 100, name);
    put(&mut h, 100, 8, format!("{mode:07o}\0").as_bytes());
    put(&mut h, 108, 8, b"0000000\0");
    put(&mut h, 116, 8, b"0000000\0");
    put(&mut h, 124, 12, format!("{size:011o}\0").as_bytes());
    put(&mut h, 136, 12, b"00000000000\0");
    h[156] = kind;
    put(&mut h, 157, 100, link);
    put(&mut h, 257, 8, b"ustar\x0000");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    put(&mut h, 148, 8, format!("{sum:06o}\0 ").as_bytes());
    h
}

fn path(u: &mut Unstructured, outside: &str) -> Result<Vec<u8>> {
    if u.ratio(1, 8)? {
        // An absolute path naming the outside directory (or below it).
        let mut p = outside.as_bytes().to_vec();
        if u.arbitrary()? {
            p.extend_from_slice(b"/canary");
        }
        return Ok(p);
    }
    let n = u.int_in_range(1..=4)?;
    let mut parts = Vec::new();
    for _ in 0..n {
        parts.push(*u.choose(COMPONENTS)?);
    }
    let mut p = parts.join("/").into_bytes();
    if u.ratio(1, 6)? {
        p.insert(0, b'/');
    }
    if u.ratio(1, 6)? {
        p.push(b'/');
    }
    Ok(p)
}

fn archive(u: &mut Unstructured, outside: &str) -> Result<Vec<u8>> {
    let mut tar = Vec::new();
    let entries = u.int_in_range(1..=12)?;
    for _ in 0..entries {
        let name = path(u, outside)?;
        // 0 file, 5 directory, 2 symlink, 1 hard link, 3/4/6 devices and fifos.
        let kind = *u.choose(b"0000552211346")?;
        let link = if kind == b'1' || kind == b'2' {
            path(u, outside)?
        } else {
            Vec::new()
        };
        let mode = *u.choose(&[0o644, 0o755, 0o000, 0o4755, 0o777])?;
        let body: Vec<u8> = if kind == b'0' {
            let n = u.int_in_range(0..=600)?;
            (0..n).map(|i| i as u8).collect()
        } else {
            Vec::new()
        };
        tar.extend_from_slice(&header(&name, &link, kind, mode, body.len()));
        tar.extend_from_slice(&body);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
    }
    tar.resize(tar.len() + 1024, 0);
    Ok(tar)
}

/// What may not change: the names in `base` and `base/outside`, and the canary's content,
/// mode, owner and link count.
fn fingerprint(base: &Path) -> String {
    let names = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let outside = base.join("outside");
    let canary = outside.join("canary");
    let m = std::fs::symlink_metadata(&canary).expect("the canary is still there");
    let om = std::fs::symlink_metadata(&outside).expect("outside is still there");
    format!(
        "{:?} {:?} {:?} {:o} {}:{} nlink={} outside={:o} {}:{}",
        names(base),
        names(&outside),
        std::fs::read(&canary).ok(),
        m.mode(),
        m.uid(),
        m.gid(),
        m.nlink(),
        om.mode(),
        om.uid(),
        om.gid()
    )
}

fuzz_target!(|data: &[u8]| {
    let base = tempfile::tempdir().expect("temp dir");
    let layer = base.path().join("layer");
    let outside = base.path().join("outside");
    std::fs::create_dir(&layer).expect("layer dir");
    std::fs::create_dir(&outside).expect("outside dir");
    std::fs::write(outside.join("canary"), b"canary").expect("canary");
    let before = fingerprint(base.path());
    let mut u = Unstructured::new(data);
    let blob = match u.arbitrary::<bool>() {
        Ok(true) => match archive(&mut u, &outside.to_string_lossy()) {
            Ok(t) => t,
            Err(_) => return,
        },
        _ => data.to_vec(),
    };
    let _ = moat_image::unpack::unpack_layer(&blob[..], &layer);
    assert_eq!(
        fingerprint(base.path()),
        before,
        "the layer wrote outside its directory"
    );
    // A read-only directory from the layer must not keep the temp dir from going away.
    open_up(&layer);
});

fn open_up(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            open_up(&e.path());
        }
    }
}

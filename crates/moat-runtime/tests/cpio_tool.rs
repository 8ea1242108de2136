//! The initramfs writer's output is read back by the real GNU cpio tool.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use moat_runtime::cpio::NewcWriter;
use std::process::Command;

#[test]
fn gnu_cpio_extracts_our_archive() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = NewcWriter::new(Vec::new());
    w.dir("modules", 0o755).unwrap();
    w.file("modules/order", 0o644, b"virtio.ko\nvirtio_ring.ko\n")
        .unwrap();
    w.file("init", 0o755, &[7u8; 1001]).unwrap();
    w.dir("bin", 0o755).unwrap();
    w.symlink("bin/sh", "busybox").unwrap();
    let archive = w.finish().unwrap();
    let path = dir.path().join("initramfs.cpio");
    std::fs::write(&path, &archive).unwrap();
    let out_dir = dir.path().join("x");
    std::fs::create_dir(&out_dir).unwrap();
    let st = Command::new("cpio")
        .args(["-i", "-d", "--quiet", "-F"])
        .arg(&path)
        .current_dir(&out_dir)
        .status()
        .expect("cpio is installed (Debian package cpio)");
    assert!(st.success());
    assert_eq!(
        std::fs::read_to_string(out_dir.join("modules/order")).unwrap(),
        "virtio.ko\nvirtio_ring.ko\n"
    );
    assert_eq!(
        std::fs::read(out_dir.join("init")).unwrap(),
        vec![7u8; 1001]
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out_dir.join("init"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(
        std::fs::read_link(out_dir.join("bin/sh")).unwrap(),
        std::path::PathBuf::from("busybox")
    );
}

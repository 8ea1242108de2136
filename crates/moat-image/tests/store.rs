//! Store integration: real archives from scripts/busybox-image.sh, real overlayfs, real runc.
//! Runs as root (the test suite runs as root).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use moat_image::{RealMounter, RecordingMounter, Store, StoreError};

fn busybox_archives(dir: &Path) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/busybox-image.sh");
    let out = Command::new("bash").arg(&script).arg(dir).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.to_path_buf()
}

fn count_files(root: &Path) -> usize {
    fn walk(p: &Path, n: &mut usize) {
        for e in fs::read_dir(p).unwrap() {
            let e = e.unwrap();
            *n += 1;
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), n);
            }
        }
    }
    let mut n = 0;
    walk(root, &mut n);
    n
}

#[test]
fn import_both_archive_formats_dedups_layers_and_gc_on_rm() {
    let tmp = tempfile::tempdir().unwrap();
    let arch = busybox_archives(&tmp.path().join("img"));
    let store = Store::open(tmp.path().join("store")).unwrap();
    let a = store.import(&arch.join("busybox.oci.tar"), None).unwrap();
    assert_eq!(a.name, "localhost/busybox:latest");
    let b = store
        .import(
            &arch.join("busybox.docker.tar"),
            Some("localhost/bb-docker:v1"),
        )
        .unwrap();
    // Same layer content: one unpacked layer dir for both images.
    assert_eq!(a.diff_ids, b.diff_ids);
    assert_eq!(
        fs::read_dir(store.root().join("layers")).unwrap().count(),
        1
    );
    let layer = store.layer_path(&a.diff_ids[0]);
    assert!(layer.join("bin/busybox").is_file());
    assert_eq!(
        fs::read_link(layer.join("bin/sh")).unwrap(),
        PathBuf::from("busybox")
    );
    assert_eq!(store.list().unwrap().len(), 2);
    assert_eq!(store.get("localhost/busybox").unwrap().unwrap(), a);
    // The docker-archive is converted to the very OCI manifest the script wrote, so both refs
    // name one manifest.
    assert_eq!(a.manifest, b.manifest);
    assert_eq!(
        store.get(a.manifest.as_str()).unwrap().unwrap().manifest,
        a.manifest
    );

    // A container holds the oci image: rm of it is refused while the rootfs exists.
    let m = RecordingMounter::default();
    let target = tmp.path().join("rootfs");
    store
        .prepare_rootfs(&m, "localhost/busybox:latest", "c1", &target)
        .unwrap();
    let calls = m.calls.lock().unwrap().clone();
    let opts = match &calls[0] {
        moat_image::rootfs::MountCall::Overlay { options, .. } => options.clone(),
        other => panic!("{other:?}"),
    };
    assert!(
        opts.starts_with(&format!("lowerdir={}", layer.display())),
        "{opts}"
    );
    assert!(opts.contains("containers/c1/upper"), "{opts}");
    // Dropping the second ref keeps what the first still references.
    store.remove("localhost/bb-docker:v1").unwrap();
    assert!(layer.is_dir());
    assert!(matches!(
        store.remove("localhost/busybox:latest"),
        Err(StoreError::InUse { .. })
    ));
    store.release_rootfs(&m, "c1", &target).unwrap();
    store.remove("localhost/busybox:latest").unwrap();
    assert!(store.list().unwrap().is_empty());
    assert_eq!(
        count_files(&store.root().join("blobs")),
        1,
        "only blobs/sha256 left"
    );
    assert_eq!(count_files(&store.root().join("layers")), 0);
    assert!(matches!(
        store.remove("busybox"),
        Err(StoreError::NotFound(_))
    ));
}

#[test]
fn corrupt_layer_is_rejected_and_nothing_half_written() {
    let tmp = tempfile::tempdir().unwrap();
    let arch = busybox_archives(&tmp.path().join("img"));
    // Unpack the oci-archive, flip a byte in the layer blob, import as an oci-layout dir.
    let layout = tmp.path().join("layout");
    fs::create_dir(&layout).unwrap();
    let st = Command::new("tar")
        .args(["-xf"])
        .arg(arch.join("busybox.oci.tar"))
        .arg("-C")
        .arg(&layout)
        .status()
        .unwrap();
    assert!(st.success());
    let mut biggest = None;
    for e in fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let len = e.metadata().unwrap().len();
        if biggest.as_ref().is_none_or(|(l, _)| len > *l) {
            biggest = Some((len, e.path()));
        }
    }
    let (_, layer_blob) = biggest.unwrap();
    let mut data = fs::read(&layer_blob).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    fs::write(&layer_blob, &data).unwrap();

    let store = Store::open(tmp.path().join("store")).unwrap();
    let before = count_files(store.root());
    let err = store
        .import(&layout, Some("localhost/corrupt:1"))
        .unwrap_err();
    assert!(
        matches!(err, StoreError::DigestMismatch { .. }),
        "want digest mismatch, got {err:?}"
    );
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    assert!(store.list().unwrap().is_empty());
    // Manifest and config blobs verified fine and may stay (content-addressed, unreferenced,
    // collected by the next gc); no layer blob, no layer dir, no staging file.
    assert_eq!(count_files(&store.root().join("layers")), 0);
    assert_eq!(count_files(&store.root().join("tmp")), 0);
    let layer_hex = layer_blob.file_name().unwrap();
    assert!(!store.root().join("blobs/sha256").join(layer_hex).exists());
    assert!(count_files(store.root()) <= before + 2);
}

struct Unmount<'a>(&'a Store, &'a Path);
impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = self.0.release_rootfs(&RealMounter, "run1", self.1);
    }
}

#[test]
fn overlay_rootfs_runs_under_runc() {
    let tmp = tempfile::tempdir().unwrap();
    let arch = busybox_archives(&tmp.path().join("img"));
    let store = Store::open(tmp.path().join("store")).unwrap();
    store.import(&arch.join("busybox.oci.tar"), None).unwrap();
    let bundle = tmp.path().join("bundle");
    let rootfs = bundle.join("rootfs");
    fs::create_dir_all(&bundle).unwrap();
    store
        .prepare_rootfs(&RealMounter, "localhost/busybox", "run1", &rootfs)
        .unwrap();
    let _guard = Unmount(&store, &rootfs);
    // Writes land in the container's upper dir, never in the shared layer.
    fs::write(rootfs.join("tmp/marker"), "x").unwrap();
    assert!(
        store
            .root()
            .join("containers/run1/upper/tmp/marker")
            .exists()
    );

    let st = Command::new("runc")
        .arg("spec")
        .current_dir(&bundle)
        .status()
        .unwrap();
    assert!(st.success());
    let cfg_path = bundle.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&fs::read(&cfg_path).unwrap()).unwrap();
    cfg["process"]["terminal"] = false.into();
    cfg["process"]["args"] = serde_json::json!(["busybox", "echo", "hi"]);
    cfg["root"]["readonly"] = false.into();
    // runc's default spec already asks for a new network namespace (no interfaces but lo).
    let ns = cfg["linux"]["namespaces"].as_array().unwrap();
    assert!(ns.iter().any(|n| n["type"] == "network"));
    fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let state = tmp.path().join("runc-state");
    let id = format!("moat-image-test-{}", std::process::id());
    let out = Command::new("runc")
        .arg("--root")
        .arg(&state)
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let _ = Command::new("runc")
        .arg("--root")
        .arg(&state)
        .args(["delete", "-f", &id])
        .output();
    assert!(
        out.status.success(),
        "runc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hi");
    drop(_guard);
    assert!(!store.root().join("containers/run1").exists());
    assert!(
        fs::read_dir(&rootfs).unwrap().next().is_none(),
        "still mounted"
    );
}

fn layer_tar(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        match data {
            Some(d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(d.len() as u64);
                h.set_mode(0o644);
                b.append_data(&mut h, path, *d).unwrap();
            }
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(0o755);
                b.append_data(&mut h, path, &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

struct Umount(PathBuf);
impl Drop for Umount {
    fn drop(&mut self) {
        use moat_image::Mounter;
        let _ = RealMounter.unmount(&self.0);
    }
}

#[test]
fn whiteouts_and_opaque_dirs_hide_lower_layers_in_overlay() {
    use moat_image::Mounter;
    let tmp = tempfile::tempdir().unwrap();
    let lower = layer_tar(&[
        ("etc/", None),
        ("etc/a", Some(b"a")),
        ("etc/b", Some(b"b")),
        ("dir/", None),
        ("dir/x", Some(b"x")),
    ]);
    let upper = layer_tar(&[
        ("etc/.wh.a", Some(b"")),
        ("dir/", None),
        ("dir/.wh..wh..opq", Some(b"")),
        ("dir/y", Some(b"y")),
    ]);
    let (l1, l2) = (tmp.path().join("l1"), tmp.path().join("l2"));
    for (dir, data) in [(&l1, &lower), (&l2, &upper)] {
        fs::create_dir(dir).unwrap();
        moat_image::unpack::unpack_layer(&data[..], dir).unwrap();
    }
    let (up, work, target) = (
        tmp.path().join("up"),
        tmp.path().join("work"),
        tmp.path().join("mnt"),
    );
    for d in [&up, &work, &target] {
        fs::create_dir(d).unwrap();
    }
    RealMounter
        .mount_overlay(&[l2.clone(), l1.clone()], &up, &work, &target)
        .unwrap();
    let _g = Umount(target.clone());
    assert!(
        !target.join("etc/a").exists(),
        "whiteout did not hide etc/a"
    );
    assert_eq!(fs::read(target.join("etc/b")).unwrap(), b"b");
    assert!(
        !target.join("dir/x").exists(),
        "opaque dir did not hide dir/x"
    );
    assert_eq!(fs::read(target.join("dir/y")).unwrap(), b"y");
}

#[test]
fn ownership_modes_and_devices_are_preserved_as_root() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(1);
    h.set_mode(0o4750);
    h.set_uid(1234);
    h.set_gid(5678);
    b.append_data(&mut h, "usr/bin/suid", &b"x"[..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Char);
    h.set_size(0);
    h.set_mode(0o666);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    b.append_data(&mut h, "dev/null", &[][..]).unwrap();
    let data = b.into_inner().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    moat_image::unpack::unpack_layer(&data[..], tmp.path()).unwrap();
    let m = fs::metadata(tmp.path().join("usr/bin/suid")).unwrap();
    assert_eq!((m.uid(), m.gid()), (1234, 5678));
    assert_eq!(m.mode() & 0o7777, 0o4750);
    let d = fs::symlink_metadata(tmp.path().join("dev/null")).unwrap();
    assert!(d.file_type().is_char_device());
    assert_eq!(d.rdev(), nix::sys::stat::makedev(1, 3));
}

//! Real asset build from Debian's package (apt): idempotent, modules in the initramfs, a
//! vmlinux QEMU can boot (PVH note) whose banner matches the package.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::process::Command;

#[test]
fn serial_assets_build_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("assets");
    // busybox-static stands in for the agent: any static binary proves the /init path.
    let agent = std::path::Path::new("/bin/busybox");
    let build = || {
        let o = Command::new(env!("CARGO_BIN_EXE_moat-runtime"))
            .args(["--config", "/nonexistent.toml", "assets", "build", "--out"])
            .arg(&out)
            .arg("--agent")
            .arg(agent)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert!(build().contains("built"));
    assert!(build().contains("up to date"));

    let list = Command::new("cpio")
        .args(["-t", "--quiet", "-F"])
        .arg(out.join("initramfs.cpio"))
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    for m in moat_runtime::modules::GUEST_MODULES {
        assert!(
            list.contains(&format!("modules/{m}.ko")),
            "{m} missing: {list}"
        );
    }
    assert!(list.lines().any(|l| l == "init"));

    let elf = std::fs::read(out.join("vmlinux")).unwrap();
    assert!(elf.starts_with(b"\x7fELF"));
    assert!(moat_runtime::vmlinux::has_pvh_note(&elf));
    let release = moat_runtime::vmlinux::release(&elf).expect("banner");
    let stamp = std::fs::read_to_string(out.join("stamp")).unwrap();
    assert!(
        stamp.starts_with(&format!("linux-image-{release}\n")),
        "{release} vs {stamp}"
    );
    // Without --kernel only Debian's assets are built.
    assert!(!out.join("vmlinux-moat").exists());
}

//! `moat image` through the real binary (built next to the test executable by the test suite).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

fn moat_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("moat");
    assert!(
        bin.is_file(),
        "build the moat binary first: {}",
        bin.display()
    );
    bin
}

fn moat(root: &Path, args: &[&str]) -> Output {
    Command::new(moat_bin())
        .arg("image")
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

struct Reg(Child);
impl Drop for Reg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn cli_import_push_pull_ls_rm() {
    let tmp = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/busybox-image.sh");
    let img = tmp.path().join("img");
    let st = Command::new("bash")
        .arg(&script)
        .arg(&img)
        .output()
        .unwrap();
    assert!(st.status.success());

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = tmp.path().join("reg.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            tmp.path().join("regdata").display()
        ),
    )
    .unwrap();
    let _reg = Reg(Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let a = tmp.path().join("a");
    let out = ok(moat(
        &a,
        &["import", img.join("busybox.oci.tar").to_str().unwrap()],
    ));
    assert!(out.starts_with("localhost/busybox:latest sha256:"), "{out}");
    let dest = format!("127.0.0.1:{port}/cli/busybox:v2");
    ok(moat(&a, &["push", "localhost/busybox", &dest]));

    let b = tmp.path().join("b");
    let out = ok(moat(&b, &["pull", &dest]));
    assert!(out.starts_with(&format!("{dest} sha256:")), "{out}");
    let ls = ok(moat(&b, &["ls"]));
    let lines: Vec<&str> = ls.lines().collect();
    assert!(lines[0].starts_with("REPOSITORY"), "{ls}");
    let cols: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(cols[0], format!("127.0.0.1:{port}/cli/busybox"));
    assert_eq!(cols[1], "v2");
    assert!(cols[2].starts_with("sha256:"));
    ok(moat(&b, &["rm", &dest]));
    assert_eq!(ok(moat(&b, &["ls"])).lines().count(), 1);
    let e = moat(&b, &["rm", &dest]);
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("not found"));
}

//! containerd 1.6 from Debian with its runc shim pointed at moat-runtime (`ctr run
//! --runc-binary`): the shim passes its own --root, --log and --log-format json.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::process::{Child, Command};

struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
}

impl Containerd {
    fn start() -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("mctd")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("config.toml"),
            "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
        )
        .unwrap();
        let child = Command::new("containerd")
            .arg("--root")
            .arg(d.join("root"))
            .arg("--state")
            .arg(d.join("state"))
            .arg("--address")
            .arg(d.join("ctrd.sock"))
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdout(std::fs::File::create(d.join("containerd.log")).unwrap())
            .stderr(std::fs::File::create(d.join("containerd.err")).unwrap())
            .spawn()
            .unwrap();
        for _ in 0..200 {
            if d.join("ctrd.sock").exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Containerd { dir, child }
    }

    fn ctr(&self, ns: &str) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a")
            .arg(self.dir.path().join("ctrd.sock"))
            .args(["-n", ns]);
        c
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serial_ctr_run_with_moat_runtime_as_the_runc_binary() {
    let env = common::Env::new();
    let ctrd = Containerd::start();
    let ns = format!("moat-t-{}", std::process::id());
    // containerd's shim names the runtime root itself: /run/containerd/runc/<namespace>.
    let shim_root = std::path::PathBuf::from("/run/containerd/runc").join(&ns);
    let wrapper = env.dir.path().join("moat-runtime-ctr");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec {} --config {} \"$@\"\n",
            env!("CARGO_BIN_EXE_moat-runtime"),
            env.config.display()
        ),
    )
    .unwrap();
    let mut p = std::fs::metadata(&wrapper).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o755);
    std::fs::set_permissions(&wrapper, p).unwrap();
    let archive = common::target_dir().join("busybox-image/busybox.oci.tar");
    let o = ctrd
        .ctr(&ns)
        .args(["images", "import", "--base-name", "localhost/busybox"])
        .arg(&archive)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "import: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let list = ctrd.ctr(&ns).args(["images", "ls", "-q"]).output().unwrap();
    let image = String::from_utf8_lossy(&list.stdout)
        .lines()
        .next()
        .expect("an imported image")
        .to_string();
    let run = |id: &str, args: &[&str]| {
        ctrd.ctr(&ns)
            .args(["run", "--rm", "--runc-binary"])
            .arg(&wrapper)
            .arg(&image)
            .arg(id)
            .args(args)
            .output()
            .unwrap()
    };
    let o = run("u1", &["uname", "-r"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        common::guest_release()
    );
    let o = run("u2", &["sh", "-c", "exit 9"]);
    assert_eq!(o.status.code(), Some(9));
    // Nothing left under the shim's runtime root, and no VM.
    let left: Vec<_> = std::fs::read_dir(&shim_root)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    let qemus = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            let c = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&c).contains(shim_root.to_str().unwrap())
        })
        .count();
    assert_eq!(qemus, 0);
    let _ = std::fs::remove_dir_all(&shim_root);
}

//! Harness for tests that boot real sandbox VMs (QEMU under TCG here): a private runtime
//! root and config per test, a wrapper script podman/containerd can call, and leak counts.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn assets_dir() -> PathBuf {
    std::env::var_os("MOAT_VM_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/moat-runtime/assets"))
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub config: PathBuf,
    /// A runtime path for podman/containerd: the binary with this test's --root/--config.
    pub wrapper: PathBuf,
}

impl Env {
    /// An environment whose sandboxes start from the VM factory's template.
    pub fn with_template() -> Env {
        let env = Env::new();
        let mut cfg = std::fs::read_to_string(&env.config).unwrap();
        cfg.push_str("[factory]\ntemplate = true\n");
        std::fs::write(&env.config, cfg).unwrap();
        env
    }

    pub fn new() -> Env {
        let a = assets_dir();
        assert!(
            // Our kernel, the default (`[assets] kernel = "moat"`).
            a.join("vmlinux-moat").is_file() && a.join("initramfs-moat.cpio").is_file(),
            "guest assets missing in {}: run scripts/guest-assets.sh (scripts/test.sh does)",
            a.display()
        );
        // Short paths: the sandbox control socket must fit a unix socket address.
        let dir = tempfile::Builder::new()
            .prefix("mrt")
            .tempdir_in("/tmp")
            .unwrap();
        let root = dir.path().join("r");
        let config = dir.path().join("runtime.toml");
        std::fs::write(
            &config,
            format!(
                "[hypervisor]\naccel = \"tcg\"\nmemory_mib = 256\n[assets]\ndir = \"{}\"\n",
                a.display()
            ),
        )
        .unwrap();
        let wrapper = dir.path().join("moat-runtime");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec {} --root {} --config {} \"$@\"\n",
                env!("CARGO_BIN_EXE_moat-runtime"),
                root.display(),
                config.display()
            ),
        )
        .unwrap();
        let mut p = std::fs::metadata(&wrapper).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o755);
        std::fs::set_permissions(&wrapper, p).unwrap();
        // Shims of containers we create outlive the `create` command; as a subreaper this
        // test process inherits them and can read their exit statuses.
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        Env {
            dir,
            root,
            config,
            wrapper,
        }
    }

    pub fn rt(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_moat-runtime"));
        c.arg("--root")
            .arg(&self.root)
            .arg("--config")
            .arg(&self.config);
        c
    }

    /// Runs the runtime, asserting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.rt().args(args).output().unwrap();
        assert!(
            o.status.success(),
            "moat-runtime {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// What this test's sandboxes could leak.
    pub fn leaks(&self) -> Leaks {
        let root = self.root.to_string_lossy().into_owned();
        let mut qemu = 0;
        let mut helpers = 0;
        for ent in std::fs::read_dir("/proc").unwrap().flatten() {
            let cmd = std::fs::read(ent.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if !cmd.contains(&root) {
                continue;
            }
            if cmd.contains("qemu-system") {
                qemu += 1;
            } else if cmd.contains(" daemon ") || cmd.contains(" shim ") {
                helpers += 1;
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(&root))
            .count();
        // The VM factory's template is kept on purpose (it outlives sandboxes, like the
        // assets); anything else in the root is a leak.
        let files = std::fs::read_dir(&self.root)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with(".template"))
                    .count()
            })
            .unwrap_or(0);
        Leaks {
            qemu,
            helpers,
            mounts,
            files,
        }
    }

    pub fn assert_clean(&self) {
        // Teardown is asynchronous by at most a moment (QEMU exit, daemon exit).
        let mut l = self.leaks();
        for _ in 0..100 {
            if l == Leaks::default() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            l = self.leaks();
        }
        panic!("leftovers after delete: {l:?}");
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Best effort, so a failed test does not leave VMs running for the next one.
        if let Ok(rd) = std::fs::read_dir(&self.root) {
            for ent in rd.flatten() {
                let id = ent.file_name().to_string_lossy().into_owned();
                if !id.starts_with('.') {
                    let _ = self.rt().args(["delete", "--force", &id]).output();
                }
            }
        }
        let root = self.root.to_string_lossy().into_owned();
        for ent in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let cmd = std::fs::read(ent.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmd).contains(&root)
                && let Ok(pid) = ent.file_name().to_string_lossy().parse::<i32>()
            {
                // SAFETY: a process of this test's sandboxes.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for m in moat_runtime::sandbox::mounts_under(&info, &self.root) {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Leaks {
    pub qemu: usize,
    pub helpers: usize,
    pub mounts: usize,
    pub files: usize,
}

/// A bundle with a busybox rootfs and runc's default config, `args` as the process.
pub fn bundle(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let b = dir.join(name);
    let rootfs = b.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    for d in ["proc", "sys", "dev", "etc", "tmp", "var/www"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
        }
    }
    std::fs::write(
        rootfs.join("var/www/index.html"),
        format!("hello from {name}\n"),
    )
    .unwrap();
    let o = Command::new("runc")
        .arg("spec")
        .current_dir(&b)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "runc spec: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.join("config.json")).unwrap()).unwrap();
    cfg["process"]["terminal"] = false.into();
    cfg["process"]["args"] = serde_json::json!(args);
    cfg["root"]["readonly"] = false.into();
    cfg["hostname"] = name.into();
    std::fs::write(
        b.join("config.json"),
        serde_json::to_vec_pretty(&cfg).unwrap(),
    )
    .unwrap();
    b
}

pub fn edit_config(bundle: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = bundle.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut cfg);
    std::fs::write(&p, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
}

/// Waits for a child we adopted as subreaper (a shim) and returns its exit status.
pub fn reap(pid: i32) -> i32 {
    let mut st = 0;
    for _ in 0..600 {
        // SAFETY: waitpid on a pid that is (or will be) our child.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if r == pid {
            return if libc::WIFEXITED(st) {
                libc::WEXITSTATUS(st)
            } else {
                128 + libc::WTERMSIG(st)
            };
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("shim {pid} did not exit within 60 s");
}

/// The guest kernel release: the version of the Debian package the assets came from.
/// `uname -r` of the default guest kernel (ours): the first line of its asset stamp.
pub fn guest_release() -> String {
    let stamp = std::fs::read_to_string(assets_dir().join("stamp-moat")).unwrap();
    stamp.lines().next().unwrap().to_string()
}

pub fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string()
}

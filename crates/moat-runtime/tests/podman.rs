//! Podman from Debian driving moat-runtime as its OCI runtime (`--runtime <path>`), against
//! the same commands with runc. Every test boots real VMs (TCG) and counts leftovers.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use common::Env;
use std::io::Write;
use std::process::{Command, Output, Stdio};

const IMAGE: &str = "localhost/busybox";

struct Podman {
    conf: tempfile::NamedTempFile,
}

impl Podman {
    fn new() -> Podman {
        // The hard RLIMIT_NOFILE here is 20000 and podman's default ulimits ask for more.
        let mut conf = tempfile::NamedTempFile::new().unwrap();
        writeln!(conf, "[containers]\ndefault_ulimits = []").unwrap();
        let p = Podman { conf };
        let have = p
            .cmd(None)
            .args(["image", "exists", IMAGE])
            .status()
            .unwrap();
        if !have.success() {
            let archive = common::target_dir().join("busybox-image/busybox.docker.tar");
            let o = p
                .cmd(None)
                .arg("load")
                .arg("-i")
                .arg(&archive)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "podman load {}: {} (scripts/pretest.d builds it)",
                archive.display(),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        p
    }

    fn cmd(&self, runtime: Option<&std::path::Path>) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.conf.path())
            .args(["--cgroup-manager", "cgroupfs", "--runtime"])
            .arg(
                runtime
                    .map(|p| p.as_os_str().to_owned())
                    .unwrap_or_else(|| "runc".into()),
            );
        c
    }

    fn run(&self, rt: Option<&std::path::Path>, args: &[&str]) -> Output {
        self.cmd(rt)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn serial_podman_uname_in_vm_vs_runc_and_exit_codes() {
    let env = Env::new();
    let p = Podman::new();
    let vm = p.run(
        Some(&env.wrapper),
        &["run", "--rm", "--network", "none", IMAGE, "uname", "-r"],
    );
    assert!(
        vm.status.success(),
        "{}",
        String::from_utf8_lossy(&vm.stderr)
    );
    let runc = p.run(
        None,
        &["run", "--rm", "--network", "none", IMAGE, "uname", "-r"],
    );
    assert!(
        runc.status.success(),
        "{}",
        String::from_utf8_lossy(&runc.stderr)
    );
    assert_eq!(text(&vm), common::guest_release());
    assert_eq!(text(&runc), common::host_release());
    assert_ne!(text(&vm), text(&runc));

    let seven = p.run(
        Some(&env.wrapper),
        &[
            "run",
            "--rm",
            "--network",
            "none",
            IMAGE,
            "sh",
            "-c",
            "echo out; echo err >&2; exit 7",
        ],
    );
    assert_eq!(seven.status.code(), Some(7));
    assert_eq!(text(&seven), "out");
    assert_eq!(String::from_utf8_lossy(&seven.stderr).trim(), "err");
    env.assert_clean();
}

#[test]
fn serial_podman_stdin_piped_through_run_i() {
    let env = Env::new();
    let p = Podman::new();
    let mut child = p
        .cmd(Some(&env.wrapper))
        .args([
            "run",
            "--rm",
            "-i",
            "--network",
            "none",
            IMAGE,
            "sh",
            "-c",
            "wc -c; read -r x </dev/null; exit 3",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // More than one credit window, so flow control is exercised end to end.
    let data = vec![b'x'; 600 * 1024];
    let mut stdin = child.stdin.take().unwrap();
    let w = std::thread::spawn(move || {
        stdin.write_all(&data).unwrap();
    });
    let o = child.wait_with_output().unwrap();
    w.join().unwrap();
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(text(&o), (600 * 1024).to_string());
    env.assert_clean();
}

#[test]
fn serial_podman_exec_stop_and_kill() {
    let env = Env::new();
    let p = Podman::new();
    let name = format!("moat-t-{}", std::process::id());
    let d = p.run(
        Some(&env.wrapper),
        &[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "none",
            IMAGE,
            "sh",
            "-c",
            "trap 'echo got-term; exit 0' TERM; while true; do sleep 0.2; done",
        ],
    );
    assert!(d.status.success(), "{}", String::from_utf8_lossy(&d.stderr));
    let ex = p.run(
        Some(&env.wrapper),
        &["exec", &name, "sh", "-c", "uname -r; exit 5"],
    );
    assert_eq!(
        ex.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&ex.stderr)
    );
    assert_eq!(text(&ex), common::guest_release());
    let ex = p.run(
        Some(&env.wrapper),
        &["exec", "-i", &name, "cat", "/proc/1/cmdline"],
    );
    assert!(text(&ex).starts_with("sh"), "{}", text(&ex));
    // stop sends SIGTERM: the trap runs and the container exits 0 well before the timeout.
    let st = p.run(Some(&env.wrapper), &["stop", "-t", "30", &name]);
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let logs = p.run(None, &["logs", &name]);
    assert!(text(&logs).contains("got-term"), "{}", text(&logs));
    let code = p.run(None, &["inspect", &name, "--format", "{{.State.ExitCode}}"]);
    assert_eq!(text(&code), "0");
    assert!(p.run(None, &["rm", &name]).status.success());

    let d = p.run(
        Some(&env.wrapper),
        &[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "none",
            IMAGE,
            "sleep",
            "1000",
        ],
    );
    assert!(d.status.success());
    assert!(p.run(Some(&env.wrapper), &["kill", &name]).status.success());
    let w = p.run(None, &["wait", &name]);
    assert_eq!(text(&w), "137");
    assert!(p.run(None, &["rm", &name]).status.success());
    env.assert_clean();
}

#[test]
fn serial_podman_tty_is_a_terminal_in_the_guest() {
    let env = Env::new();
    let p = Podman::new();
    let o = p.run(
        Some(&env.wrapper),
        &[
            "run",
            "--rm",
            "-t",
            "--network",
            "none",
            IMAGE,
            "sh",
            "-c",
            "tty; exit 4",
        ],
    );
    assert_eq!(o.status.code(), Some(4));
    assert!(text(&o).starts_with("/dev/pts/"), "{}", text(&o));
    // The terminal size podman's user has reaches the guest pty (conmon sizes the host
    // terminal; the runtime forwards each change).
    let inner = format!(
        "stty rows 33 cols 101; CONTAINERS_CONF={} podman --cgroup-manager cgroupfs --runtime {} \
         run --rm -it --network none {IMAGE} sh -c 'sleep 1; stty size'",
        p.conf.path().display(),
        env.wrapper.display()
    );
    let o = Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("33 101"), "{out}");
    env.assert_clean();
}

#[test]
fn serial_podman_host_network_is_refused_clearly() {
    let env = Env::new();
    let p = Podman::new();
    let o = p.run(
        Some(&env.wrapper),
        &["run", "--rm", "--network", "host", IMAGE, "true"],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("hostNetwork"), "{err}");
    env.assert_clean();
}

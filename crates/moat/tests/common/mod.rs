//! Shared harness for tests that drive `moat server` with the real kubectl.
#![allow(dead_code)]

pub mod cluster;
pub mod lab;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod pyclient;

pub struct Server {
    child: Child,
    pub dir: PathBuf,
    args: Vec<String>,
}

impl Server {
    /// Starts `moat server` on a free loopback port with `extra` flags.
    pub fn start(dir: &Path, extra: &[&str]) -> Server {
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = Self::spawn(dir, &args);
        Server {
            child,
            dir: dir.to_path_buf(),
            args,
        }
    }

    fn spawn(dir: &Path, args: &[String]) -> Child {
        let _ = std::fs::remove_file(dir.join("kubeconfig.yaml"));
        let log = std::fs::File::create(dir.join("server.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_moat"))
            .args([
                "server",
                "--disable-agent",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(dir)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start moat server");
        let start = Instant::now();
        while !dir.join("kubeconfig.yaml").exists() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "server did not come up: {}",
                std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// kill -9, then start again on the same data dir with the same flags.
    pub fn restart(&mut self) {
        self.kill9();
        self.child = Self::spawn(&self.dir, &self.args);
    }

    pub fn kubectl(&self, minor: &str) -> Kubectl {
        Kubectl {
            bin: format!("/usr/lib/google-cloud-sdk/bin/kubectl.1.{minor}"),
            kubeconfig: self.dir.join("kubeconfig.yaml"),
            cache: tempfile::tempdir().expect("cache"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Kubectl {
    pub bin: String,
    pub kubeconfig: PathBuf,
    pub cache: tempfile::TempDir,
}

pub struct Out {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Kubectl {
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.cache.path());
        c
    }

    pub fn run(&self, args: &[&str]) -> Out {
        let o = self.cmd().args(args).output().expect("run kubectl");
        Out {
            ok: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into(),
            stderr: String::from_utf8_lossy(&o.stderr).into(),
        }
    }

    /// Runs with `stdin` piped in (for `-f -`).
    pub fn run_stdin(&self, args: &[&str], stdin: &str) -> Out {
        use std::io::Write;
        let mut c = self
            .cmd()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        c.stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        let o = c.wait_with_output().expect("kubectl output");
        Out {
            ok: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into(),
            stderr: String::from_utf8_lossy(&o.stderr).into(),
        }
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.ok, "kubectl {args:?} failed: {}", o.stderr);
        o.stdout
    }

    pub fn ok_stdin(&self, args: &[&str], stdin: &str) -> String {
        let o = self.run_stdin(args, stdin);
        assert!(o.ok, "kubectl {args:?} failed: {}", o.stderr);
        o.stdout
    }

    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(!o.ok, "kubectl {args:?} should fail, printed: {}", o.stdout);
        o.stderr
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).expect("json output")
    }
}

pub fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// RFC 3339 UTC "now" for objects the tests write (Lease renewals, conditions), without a
/// time crate: `date` is everywhere.
pub fn now() -> String {
    let o = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

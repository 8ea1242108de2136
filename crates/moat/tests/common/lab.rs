//! A node of the test's own: `moat server` (or `moat agent`) inside a network namespace the
//! test creates (so cni0, the pod veths and the pod CIDR never touch the host's network),
//! pods under runc with the busybox image built by scripts/busybox-image.sh, and a teardown
//! that removes everything a run left (containers, mounts, cgroups, the namespace).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const KUBECTL: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.32";

/// A network namespace of the test's own, torn down with everything the run left.
pub struct Lab {
    pub ns: String,
    pub dir: tempfile::TempDir,
    pub server: Option<Child>,
    /// A `moat agent` of its own (beside a server started without `--agent`).
    pub agent: Option<Child>,
    pub node: String,
}

pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let o = cmd.output().expect("run command");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

pub fn kubectl_bin(minor: &str) -> String {
    format!("/usr/lib/google-cloud-sdk/bin/kubectl.1.{minor}")
}

pub fn moat_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_moat"))
}

impl Lab {
    pub fn new(tag: &str) -> Lab {
        let ns = format!("moat-{tag}-{}", std::process::id());
        let (ok, _, err) = run(Command::new("ip").args(["netns", "add", &ns]));
        assert!(ok, "ip netns add: {err}");
        let lab = Lab {
            node: format!("agt-{tag}-{}", std::process::id()),
            ns,
            dir: tempfile::tempdir().expect("tempdir"),
            server: None,
            agent: None,
        };
        let (ok, _, err) = run(lab.in_ns("ip").args(["link", "set", "lo", "up"]));
        assert!(ok, "lo up: {err}");
        lab
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn in_ns(&self, prog: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns)).arg(prog);
        c
    }

    pub fn import_busybox(&self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/busybox-image.sh");
        let out = self.path("img");
        let (ok, _, err) = run(Command::new("bash").arg(script).arg(&out));
        assert!(ok, "busybox-image.sh: {err}");
        let (ok, _, err) = run(Command::new(moat_bin())
            .args(["image", "--root"])
            .arg(self.path("images"))
            .arg("import")
            .arg(out.join("busybox.oci.tar"))
            .args(["--name", "localhost/busybox:latest"]));
        assert!(ok, "image import: {err}");
    }

    pub fn start(&mut self, extra: &[&str]) {
        self.start_server(true, extra);
    }

    /// `localhost/busybox:<tag>`: the busybox image with its config's `User` set to `user`
    /// (a docker-archive rewritten here; the layer, and so /etc/passwd, is unchanged).
    pub fn import_busybox_as(&self, user: &str, tag: &str) {
        let src = self.path("img/busybox.docker.tar");
        let work = self.path(&format!("img-{tag}"));
        let script = r#"set -eu
src=$1; work=$2; user=$3; out=$4
mkdir -p "$work" && cd "$work" && tar -xf "$src"
old=$(ls *.json | grep -v '^manifest.json$')
sed "s/\"WorkingDir\":\"\/\"/\"WorkingDir\":\"\/\",\"User\":\"$user\"/" "$old" > new.json
grep -q "\"User\":\"$user\"" new.json
sha=$(sha256sum new.json | cut -d' ' -f1)
rm "$old" && mv new.json "$sha.json"
sed -i "s/$old/$sha.json/; s/localhost\/busybox:latest/localhost\/busybox:x/" manifest.json
tar -cf "$out" manifest.json "$sha.json" $(ls -d */)
"#;
        let out = self.path(&format!("busybox-{tag}.tar"));
        let (ok, _, err) = run(Command::new("sh")
            .args(["-c", script, "sh"])
            .arg(&src)
            .arg(&work)
            .arg(user)
            .arg(&out));
        assert!(ok, "rewriting the image config: {err}");
        let (ok, _, err) = run(Command::new(moat_bin())
            .args(["image", "--root"])
            .arg(self.path("images"))
            .arg("import")
            .arg(&out)
            .args(["--name", &format!("localhost/busybox:{tag}")]));
        assert!(ok, "image import: {err}");
    }

    pub fn log_file(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(name))
            .expect("log")
    }

    /// The flags of a node agent in this lab, for `moat server --agent` and `moat agent`.
    pub fn agent_flags(&self, c: &mut Command) {
        c.args(["--node-name", &self.node, "--pod-cidr", "10.42.77.0/24"])
            .args(["--agent-listen", "127.0.0.1:0"])
            .arg("--run-dir")
            .arg(self.path("run"))
            .arg("--log-dir")
            .arg(self.path("logs"))
            .arg("--image-root")
            .arg(self.path("images"))
            .arg("--cni-conf-dir")
            .arg(self.path("cni-conf"));
    }

    /// `moat server` (with its in-process agent when `agent`), waiting for its kubeconfig.
    pub fn start_server(&mut self, agent: bool, extra: &[&str]) {
        let _ = std::fs::remove_file(self.path("kubeconfig.yaml"));
        std::fs::create_dir_all(self.path("cni-conf")).expect("cni dir");
        let mut c = self.in_ns(moat_bin().to_str().expect("utf-8 path"));
        c.args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(self.dir.path());
        if agent {
            c.arg("--agent");
            self.agent_flags(&mut c);
        }
        let child = c
            .args(extra)
            .env("MOAT_LOG", "info,moat_agent=debug")
            .stdout(Stdio::null())
            .stderr(self.log_file("server.log"))
            .spawn()
            .expect("start moat server");
        self.server = Some(child);
        self.wait("kubeconfig", 30, || self.path("kubeconfig.yaml").exists());
    }

    /// The API server's URL, from the kubeconfig it wrote.
    pub fn server_url(&self) -> String {
        std::fs::read_to_string(self.path("kubeconfig.yaml"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: ").map(String::from))
            .expect("server URL in the kubeconfig")
            .trim_matches('"')
            .to_string()
    }

    /// `moat agent` in the lab's namespace with the given join flags.
    pub fn start_agent(&mut self, join: &[&str]) {
        std::fs::create_dir_all(self.path("cni-conf")).expect("cni dir");
        let mut c = self.in_ns(moat_bin().to_str().expect("utf-8 path"));
        c.arg("agent").args(join);
        self.agent_flags(&mut c);
        let child = c
            .env("MOAT_LOG", "info,moat_agent=debug")
            .stdout(Stdio::null())
            .stderr(self.log_file("agent.log"))
            .spawn()
            .expect("start moat agent");
        self.agent = Some(child);
    }

    /// kill -9 of the server and its in-process agent (the shims and containers live on).
    pub fn kill9(&mut self) {
        for c in [self.agent.take(), self.server.take()]
            .into_iter()
            .flatten()
        {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn server_log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.path(f)).unwrap_or_default();
        format!("{}\nagent log:\n{}", read("server.log"), read("agent.log"))
    }

    pub fn wait(&self, what: &str, secs: u64, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while !f() {
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "timed out waiting for {what}; server log:\n{}",
                self.server_log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// kubectl 1.`minor` in the lab's namespace, with the lab's kubeconfig and a cache of
    /// its own per version.
    pub fn kubectl_cmd(&self, minor: &str, args: &[&str]) -> Command {
        let mut c = self.in_ns(&kubectl_bin(minor));
        c.arg("--kubeconfig")
            .arg(self.path("kubeconfig.yaml"))
            .arg("--cache-dir")
            .arg(self.path(&format!("kcache-{minor}")))
            .args(args);
        c
    }

    /// [`Lab::kubectl`] with kubectl 1.`minor`.
    pub fn kubectl_v(
        &self,
        minor: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> (bool, String, String) {
        use std::io::Write;
        // Bounded, so a command that never ends fails the test instead of hanging it (and
        // a killed test would leave its lab behind).
        let mut c = Command::new("timeout");
        c.args(["--kill-after=5", "180", "nsenter"])
            .arg(format!("--net=/run/netns/{}", self.ns))
            .arg(kubectl_bin(minor))
            .arg("--kubeconfig")
            .arg(self.path("kubeconfig.yaml"))
            .arg("--cache-dir")
            .arg(self.path(&format!("kcache-{minor}")))
            .args(args);
        let mut ch = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        if let Some(mut si) = ch.stdin.take() {
            let _ = si.write_all(stdin.unwrap_or("").as_bytes());
        }
        let o = ch.wait_with_output().expect("kubectl output");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        use std::io::Write;
        let mut c = self.in_ns(KUBECTL);
        c.arg("--kubeconfig")
            .arg(self.path("kubeconfig.yaml"))
            .arg("--cache-dir")
            .arg(self.path("kcache"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut ch = c.spawn().expect("kubectl");
        if let Some(mut si) = ch.stdin.take() {
            let _ = si.write_all(stdin.unwrap_or("").as_bytes());
        }
        let o = ch.wait_with_output().expect("kubectl output");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    pub fn pod(&self, name: &str) -> Option<Value> {
        let (ok, out, _) = self.kubectl(&["get", "pod", name, "-o", "json"], None);
        if !ok {
            return None;
        }
        serde_json::from_str(&out).ok()
    }

    pub fn runtime_root(&self) -> PathBuf {
        self.path("run/runtime/runc")
    }

    /// What a pod can leave behind: (netns files, veths in the lab, mounts under the lab dir,
    /// cgroup dirs of the pod, runc containers).
    pub fn leftovers(&self, uid: &str) -> (usize, usize, usize, usize, usize) {
        let netns = std::fs::read_dir(self.path("run/netns"))
            .map(|d| d.count())
            .unwrap_or(0);
        let (_, veths, _) = run(self
            .in_ns("ip")
            .args(["-o", "link", "show", "type", "veth"]));
        let root = self.dir.path().display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&root))
            .count();
        let mut cgroups = 0;
        if let Ok(ctrls) = std::fs::read_dir("/sys/fs/cgroup") {
            for c in ctrls.flatten() {
                if let Ok(d) = std::fs::read_dir(c.path().join("moat")) {
                    cgroups += d
                        .flatten()
                        .filter(|e| e.file_name().to_string_lossy().contains(uid))
                        .count();
                }
            }
        }
        let (_, list, _) = run(Command::new("runc")
            .arg("--root")
            .arg(self.runtime_root())
            .args(["list", "-q"]));
        (
            netns,
            veths.lines().count(),
            mounts,
            cgroups,
            list.lines().filter(|l| !l.is_empty()).count(),
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.kill9();
        // Containers first (they hold mounts), then every mount under the lab dir, then the
        // namespace, which takes cni0 and the host ends of the veths with it.
        let (_, list, _) = run(Command::new("runc")
            .arg("--root")
            .arg(self.runtime_root())
            .args(["list", "-q"]));
        for id in list.lines().filter(|l| !l.is_empty()) {
            let _ = run(Command::new("runc")
                .arg("--root")
                .arg(self.runtime_root())
                .args(["delete", "--force", id]));
        }
        let root = self.dir.path().display().to_string();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(String::from))
            .filter(|m| m.starts_with(&root))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = run(Command::new("umount").args(["-l", &m]));
        }
        // Cgroups are named after pod uids; every uid this lab saw running is recorded.
        let uids = std::fs::read_to_string(self.path("uids")).unwrap_or_default();
        if let Ok(ctrls) = std::fs::read_dir("/sys/fs/cgroup") {
            for c in ctrls.flatten() {
                let Ok(d) = std::fs::read_dir(c.path().join("moat")) else {
                    continue;
                };
                for e in d.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if uids.lines().any(|u| !u.is_empty() && name.contains(u)) {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
            }
        }
        let _ = run(Command::new("ip").args(["netns", "del", &self.ns]));
    }
}

pub const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: NAME, labels: {app: web}}
spec:
  nodeName: NODE
  terminationGracePeriodSeconds: 2
  containers:
  - name: web
    image: localhost/busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "hostname > /tmp/index.html; echo serving $(hostname); exec httpd -f -p 8080 -h /tmp"]
    ports: [{containerPort: 8080}]
"#;

pub fn running_ip(lab: &Lab, name: &str) -> (String, String) {
    let mut ip = String::new();
    let mut uid = String::new();
    lab.wait(&format!("{name} Running with an IP"), 60, || {
        let Some(p) = lab.pod(name) else { return false };
        uid = p["metadata"]["uid"].as_str().unwrap_or("").to_string();
        ip = p["status"]["podIP"].as_str().unwrap_or("").to_string();
        p["status"]["phase"] == "Running" && !ip.is_empty()
    });
    let mut uids = std::fs::read_to_string(lab.path("uids")).unwrap_or_default();
    uids.push_str(&uid);
    uids.push('\n');
    let _ = std::fs::write(lab.path("uids"), uids);
    (ip, uid)
}

pub fn fetch(lab: &Lab, ip: &str) -> String {
    let (_, out, _) =
        run(lab
            .in_ns("curl")
            .args(["-s", "--max-time", "3", &format!("http://{ip}:8080/")]));
    out.trim().to_string()
}

pub fn container_status(lab: &Lab, name: &str) -> Value {
    lab.pod(name)
        .map(|p| p["status"]["containerStatuses"][0].clone())
        .unwrap_or(Value::Null)
}

pub fn apply(lab: &Lab, manifest: &str) {
    let (ok, _, err) = lab.kubectl(&["apply", "-f", "-"], Some(manifest));
    assert!(ok, "apply: {err}");
}

pub fn delete_and_check_clean(lab: &Lab, name: &str, uid: &str) {
    let (ok, _, err) = lab.kubectl(&["delete", "pod", name, "--timeout=60s"], None);
    assert!(ok, "delete: {err}");
    lab.wait("the pod object to go", 30, || lab.pod(name).is_none());
    // A running pod's object goes only after its teardown; a finished (Succeeded/Failed)
    // pod's object is deleted at once by the API server and the agent cleans up after it.
    let logs = lab.path(&format!("logs/default_{name}_{uid}"));
    let pod_dir = lab.path(&format!("run/pods/{uid}"));
    // (netns, veths, cgroups); leftover mounts are counted by the tests that need none.
    lab.wait("the agent to remove everything of the pod", 20, || {
        let l = lab.leftovers(uid);
        (l.0, l.1, l.3) == (0, 0, 0) && !pod_dir.exists() && !logs.exists()
    });
}

/// A `kata` runtime handler for a lab: moat-runtime (under TCG, with the guest assets that
/// scripts/guest-assets.sh builds) behind a wrapper naming its config. VMs are not the
/// agent's children: dropping this deletes any the test left, even when it fails half-way.
pub struct Kata {
    /// The guest assets (kernel, initramfs) the VMs boot.
    pub assets: PathBuf,
    pub runtime: PathBuf,
    pub root: PathBuf,
    pub config: PathBuf,
    /// The agent's `--runtime-config` naming the handler.
    pub handlers: PathBuf,
}

/// The files a `kata` runtime handler needs under `dir`: moat-runtime's config (TCG, the guest
/// assets), a wrapper naming it, and the agent's `--runtime-config` naming the wrapper (with
/// `root` as the handler's state root, else the agent's default under its run dir). Panics
/// (the test fails, never skips) when the assets or the binary are missing.
pub struct KataFiles {
    pub assets: PathBuf,
    pub runtime: PathBuf,
    pub config: PathBuf,
    pub handlers: PathBuf,
}

pub fn kata_files(dir: &Path, root: Option<&Path>) -> KataFiles {
    use std::os::unix::fs::PermissionsExt;
    let assets = std::env::var_os("MOAT_VM_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/moat-runtime/assets"));
    // Our kernel is the default (`[assets] kernel = "moat"`).
    assert!(
        assets.join("vmlinux-moat").is_file(),
        "guest assets missing in {}: scripts/guest-assets.sh (scripts/test.sh runs it)",
        assets.display()
    );
    let runtime = moat_bin()
        .parent()
        .expect("target dir")
        .join("moat-runtime");
    assert!(
        runtime.is_file(),
        "build moat-runtime (cargo build --workspace --bins)"
    );
    let config = dir.join("moat-runtime.toml");
    std::fs::write(
        &config,
        format!(
            "[hypervisor]\naccel = \"tcg\"\n[assets]\ndir = \"{}\"\n",
            assets.display()
        ),
    )
    .expect("runtime config");
    let wrapper = dir.join("kata-runtime");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec {} --config {} \"$@\"\n",
            runtime.display(),
            config.display()
        ),
    )
    .expect("wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let handlers = dir.join("runtimes.toml");
    let root = root
        .map(|r| format!("root = \"{}\"\n", r.display()))
        .unwrap_or_default();
    std::fs::write(
        &handlers,
        format!(
            "[handlers.kata]\nbinary = \"{}\"\n{root}",
            wrapper.display()
        ),
    )
    .expect("handlers");
    KataFiles {
        assets,
        runtime,
        config,
        handlers,
    }
}

impl Kata {
    pub fn new(lab: &Lab) -> Kata {
        let root = lab.path("kata-root");
        let KataFiles {
            assets,
            runtime,
            config,
            handlers,
        } = kata_files(lab.dir.path(), Some(&root));
        Kata {
            assets,
            runtime,
            root,
            config,
            handlers,
        }
    }

    /// QEMU processes of this lab's VMs.
    pub fn qemus(&self) -> usize {
        let root = self.root.display().to_string();
        std::fs::read_dir("/proc")
            .expect("proc")
            .flatten()
            .filter(|e| {
                let c = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                let c = String::from_utf8_lossy(&c);
                c.contains("qemu-system") && c.contains(&root)
            })
            .count()
    }
}

impl Drop for Kata {
    fn drop(&mut self) {
        let ids = Command::new(&self.runtime)
            .arg("--root")
            .arg(&self.root)
            .args(["list", "-q"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for id in ids.lines().filter(|l| !l.is_empty()) {
            let _ = Command::new(&self.runtime)
                .arg("--root")
                .arg(&self.root)
                .arg("--config")
                .arg(&self.config)
                .args(["delete", "--force", id])
                .output();
        }
    }
}

//! The runc contract driven directly (as containerd's shim and podman's conmon do), on real
//! VMs under TCG: pods of two containers in one VM, CNI-style veth networking, kill -9 of
//! every moat-runtime process, a killed QEMU, isolation, bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use common::{Env, bundle, edit_config, reap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `create` with the container's stdout/stderr in files; returns the shim pid.
fn create(env: &Env, id: &str, b: &Path) -> (i32, PathBuf) {
    let out = env.dir.path().join(format!("{id}.out"));
    let err = env.dir.path().join(format!("{id}.err"));
    let pid_file = env.dir.path().join(format!("{id}.pid"));
    let o = env
        .rt()
        .args(["create", "--bundle"])
        .arg(b)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .status()
        .unwrap();
    // The runtime's own errors and the container's stderr share the file, as with runc.
    assert!(
        o.success(),
        "create {id}: {}",
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (pid, out)
}

fn status(env: &Env, id: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["state", id])).unwrap();
    v["status"].as_str().unwrap().to_string()
}

fn sandbox_file(env: &Env, sandbox: &str, f: &str) -> String {
    let d = moat_runtime::sandbox::dir(&env.root, sandbox);
    std::fs::read_to_string(d.join(f))
        .unwrap()
        .trim()
        .to_string()
}

/// kill -9 of a process the sandbox recorded (its daemon or QEMU).
fn kill_recorded(env: &Env, sandbox: &str, pid_file: &str) {
    let pid: i32 = sandbox_file(env, sandbox, pid_file).parse().unwrap();
    // SAFETY: a process of this test's own sandbox.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

fn pod_annotations(b: &Path, ty: &str, sandbox: &str) {
    edit_config(b, |c| {
        c["annotations"] = serde_json::json!({
            "io.kubernetes.cri.container-type": ty,
            "io.kubernetes.cri.sandbox-id": sandbox,
        });
    });
}

#[test]
fn serial_vm_pod_containers_share_one_vm_over_localhost() {
    let env = Env::new();
    let pod = bundle(
        env.dir.path(),
        "pod",
        &["httpd", "-f", "-p", "8080", "-h", "/var/www"],
    );
    pod_annotations(&pod, "sandbox", "pod1");
    let client = bundle(
        env.dir.path(),
        "client",
        &[
            "sh",
            "-c",
            "for i in 1 2 3 4 5 6 7 8 9 10; do wget -q -O- http://127.0.0.1:8080/ && exit 0; sleep 0.5; done; exit 1",
        ],
    );
    pod_annotations(&client, "container", "pod1");
    let (_pod_shim, _) = create(&env, "pod1", &pod);
    env.ok(&["start", "pod1"]);
    let (shim, out) = create(&env, "web-client", &client);
    assert_eq!(
        env.leaks().qemu,
        1,
        "the second container joined the pod's VM"
    );
    env.ok(&["start", "web-client"]);
    assert_eq!(reap(shim), 0);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "hello from pod\n");
    assert_eq!(status(&env, "web-client"), "stopped");
    env.ok(&["delete", "web-client"]);
    assert_eq!(
        env.leaks().qemu,
        1,
        "the VM stays while the pod's sandbox container lives"
    );
    assert_eq!(status(&env, "pod1"), "running");
    // Deleting a running container needs --force, as with runc.
    let o = env.rt().args(["delete", "pod1"]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("running"));
    env.ok(&["kill", "pod1", "KILL"]);
    env.ok(&["delete", "--force", "pod1"]);
    env.assert_clean();
}

/// Two network namespaces of the test's own, joined by a veth: "pod" (as CNI leaves it) and
/// "peer". No route leads anywhere else. Removed on drop, even when the test fails.
struct Netns {
    pod: String,
    peer: String,
}

impl Netns {
    fn new() -> Netns {
        let n = Netns {
            pod: format!("mrt-pod-{}", std::process::id()),
            peer: format!("mrt-peer-{}", std::process::id()),
        };
        let sh = |cmd: String| {
            let o = Command::new("sh").arg("-c").arg(&cmd).output().unwrap();
            assert!(
                o.status.success(),
                "{cmd}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        sh(format!("ip netns add {}", n.pod));
        sh(format!("ip netns add {}", n.peer));
        sh(format!(
            "ip -n {} link add vp0 type veth peer name eth0 netns {}",
            n.peer, n.pod
        ));
        sh(format!(
            "ip -n {} addr add 10.42.250.1/24 dev vp0 && ip -n {} link set vp0 up && ip -n {} link set lo up",
            n.peer, n.peer, n.peer
        ));
        sh(format!(
            "ip -n {} addr add 10.42.250.2/24 dev eth0 && ip -n {} link set eth0 mtu 1400 up && ip -n {} link set lo up && ip -n {} route add default via 10.42.250.1",
            n.pod, n.pod, n.pod, n.pod
        ));
        n
    }

    fn exec(&self, ns: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).args(args);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in [&self.pod, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn serial_vm_network_through_the_pod_veth_both_ways() {
    network_through_the_pod_veth(Env::new());
}

/// The same from the VM factory's template: the restored guest's NIC has the template's
/// MAC until the agent gives it the veth's.
#[test]
fn serial_vm_template_network_through_the_pod_veth_both_ways() {
    network_through_the_pod_veth(Env::with_template());
}

fn network_through_the_pod_veth(env: Env) {
    let ns = Netns::new();
    let www = env.dir.path().join("peer-www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "from the peer\n").unwrap();
    let mut peer_httpd = ns
        .exec(
            &ns.peer,
            &["busybox", "httpd", "-f", "-p", "10.42.250.1:8081", "-h"],
        )
        .arg(&www)
        .spawn()
        .unwrap();
    let b = bundle(
        env.dir.path(),
        "net",
        &[
            "sh",
            "-c",
            "ip -o -4 addr show eth0; ip link show eth0; \
          for i in 1 2 3 4 5 6 7 8 9 10; do wget -q -O- http://10.42.250.1:8081/ && break; sleep 0.5; done; \
          exec httpd -f -p 8080 -h /var/www",
        ],
    );
    edit_config(&b, |c| {
        for n in c["linux"]["namespaces"].as_array_mut().unwrap() {
            if n["type"] == "network" {
                n["path"] = format!("/var/run/netns/{}", ns.pod).into();
            }
        }
    });
    let pod_mac = String::from_utf8(
        ns.exec(&ns.pod, &["cat", "/sys/class/net/eth0/address"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let (_shim, out) = create(&env, "net1", &b);
    env.ok(&["start", "net1"]);
    // The guest reaches the peer through the veth, and serves the peer. (No `wget -T`: this
    // busybox build segfaults with it.)
    let mut got = String::new();
    for _ in 0..40 {
        let o = ns
            .exec(
                &ns.peer,
                &["busybox", "wget", "-q", "-O-", "http://10.42.250.2:8080/"],
            )
            .output()
            .unwrap();
        got = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            if o.status.success() {
                String::new()
            } else {
                String::from_utf8_lossy(&o.stderr).into_owned()
            }
        );
        if o.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let log = std::fs::read_to_string(&out).unwrap();
    assert_eq!(got, "hello from net\n", "container output: {log}");
    assert!(log.contains("inet 10.42.250.2/24"), "{log}");
    assert!(
        log.contains("mtu 1400"),
        "guest MTU follows the veth: {log}"
    );
    assert!(
        log.contains(pod_mac.trim()),
        "guest MAC is the veth's: {log}"
    );
    assert!(log.contains("from the peer"), "{log}");
    // The splice is visible in the pod namespace while the VM runs ...
    let tc = ns
        .exec(&ns.pod, &["tc", "filter", "show", "dev", "eth0", "ingress"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&tc.stdout).contains("mirred"),
        "{}",
        String::from_utf8_lossy(&tc.stdout)
    );
    env.ok(&["delete", "--force", "net1"]);
    // ... and gone after: no tap, no ingress qdisc.
    let links = ns.exec(&ns.pod, &["ip", "-o", "link"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains("tap0_moat"));
    let q = ns
        .exec(&ns.pod, &["tc", "qdisc", "show", "dev", "eth0"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&q.stdout).contains("ingress"));
    // A daemon killed with the VM wired in: `delete` removes the splice it left.
    let (shim, _) = create(&env, "net2", &b);
    env.ok(&["start", "net2"]);
    kill_recorded(&env, "net2", "daemon.pid");
    assert_ne!(reap(shim), 0);
    env.ok(&["delete", "net2"]);
    let links = ns.exec(&ns.pod, &["ip", "-o", "link"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains("tap0_moat"));
    let q = ns
        .exec(&ns.pod, &["tc", "qdisc", "show", "dev", "eth0"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&q.stdout).contains("ingress"));
    let _ = peer_httpd.kill();
    let _ = peer_httpd.wait();
    env.assert_clean();
}

#[test]
fn serial_vm_kill9_of_daemon_or_shim_leaves_nothing_after_delete() {
    let env = Env::new();
    let b = bundle(env.dir.path(), "k", &["sleep", "1000"]);
    // Daemon killed: QEMU dies with it, the container reads as stopped with a failure status.
    let (shim, _) = create(&env, "k1", &b);
    env.ok(&["start", "k1"]);
    kill_recorded(&env, "k1", "daemon.pid");
    assert_ne!(reap(shim), 0);
    assert_eq!(status(&env, "k1"), "stopped");
    env.ok(&["delete", "k1"]);
    env.assert_clean();

    // Shim killed: the container is stopped for its manager, who deletes it.
    let (shim, _) = create(&env, "k2", &b);
    env.ok(&["start", "k2"]);
    // SAFETY: the test's own shim.
    unsafe { libc::kill(shim, libc::SIGKILL) };
    assert_eq!(reap(shim), 128 + libc::SIGKILL);
    assert_eq!(status(&env, "k2"), "stopped");
    env.ok(&["delete", "k2"]);
    env.assert_clean();

    // The create command killed after the VM booted: a forced delete tears the sandbox down.
    let mut c = env
        .rt()
        .args(["create", "--bundle"])
        .arg(&b)
        .arg("k3")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let sock = moat_runtime::sandbox::ctl_socket(&moat_runtime::sandbox::dir(&env.root, "k3"));
    for _ in 0..600 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
    env.ok(&["delete", "--force", "k3"]);
    env.assert_clean();
}

#[test]
fn serial_vm_killed_qemu_is_reported_stopped_with_failure() {
    let env = Env::new();
    let b = bundle(env.dir.path(), "q", &["sleep", "1000"]);
    let (shim, _) = create(&env, "q1", &b);
    env.ok(&["start", "q1"]);
    kill_recorded(&env, "q1", "qemu.pid");
    assert_eq!(reap(shim), moat_runtime::daemon::VM_DIED_STATUS);
    assert_eq!(status(&env, "q1"), "stopped");
    env.ok(&["delete", "q1"]);
    env.assert_clean();
}

#[test]
fn serial_vm_isolation_from_the_host() {
    let env = Env::new();
    let secret = env.dir.path().join("host-secret");
    std::fs::write(&secret, "host only").unwrap();
    let script = format!(
        "uname -r; \
         echo procs=$(ls /proc | grep -c '^[0-9]'); \
         cat /proc/*/cmdline 2>/dev/null | tr '\\0' ' ' | grep -c '[m]oat-runtime'; \
         test -e /dev/kvm && echo kvm-visible || echo no-kvm; \
         cat {} 2>/dev/null || echo no-secret; \
         ls /run/shared 2>/dev/null || echo no-share; \
         mount | grep -c ' / ' ",
        secret.display()
    );
    let b = bundle(env.dir.path(), "iso", &["sh", "-c", &script]);
    let (shim, out) = create(&env, "iso1", &b);
    env.ok(&["start", "iso1"]);
    assert_eq!(reap(shim), 0);
    let o = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = o.lines().collect();
    assert_eq!(lines[0], common::guest_release(), "{o}");
    assert_ne!(lines[0], common::host_release());
    let procs: usize = lines[1].trim_start_matches("procs=").parse().unwrap();
    assert!(
        procs <= 5,
        "only the container's own processes are visible: {o}"
    );
    assert_eq!(lines[2], "0", "no host process is visible: {o}");
    assert_eq!(lines[3], "no-kvm", "{o}");
    assert_eq!(lines[4], "no-secret", "{o}");
    assert_eq!(lines[5], "no-share", "{o}");
    env.ok(&["delete", "iso1"]);
    env.assert_clean();
}

#[test]
fn serial_vm_bad_input_is_refused_and_changes_nothing() {
    let env = Env::new();
    let missing = env.dir.path().join("nope");
    std::fs::create_dir_all(&missing).unwrap();
    let o = env
        .rt()
        .args(["create", "--bundle"])
        .arg(&missing)
        .arg("x1")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("config.json"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let b = bundle(env.dir.path(), "bad", &["true"]);
    for bad_id in ["../x", ".hidden", "a/b"] {
        let o = env
            .rt()
            .args(["create", "--bundle"])
            .arg(&b)
            .arg(bad_id)
            .output()
            .unwrap();
        assert!(!o.status.success());
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("invalid container id"),
            "{bad_id}"
        );
    }
    let nocmd = bundle(env.dir.path(), "nocmd", &["/definitely/not/here"]);
    let o = env
        .rt()
        .args(["create", "--bundle"])
        .arg(&nocmd)
        .arg("x2")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("/definitely/not/here"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        env.rt()
            .args(["start", "x2"])
            .output()
            .unwrap()
            .status
            .code()
            != Some(0)
    );
    let o = env.rt().args(["kill", "x2", "NOPE"]).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown signal"));
    env.assert_clean();
}

#[test]
fn serial_vm_debug_console_is_a_shell_in_the_guest_not_the_container() {
    let env = Env::new();
    let cfg = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        cfg.replace("[hypervisor]\n", "[hypervisor]\ndebug_console = true\n"),
    )
    .unwrap();
    let b = bundle(env.dir.path(), "dbg", &["sleep", "1000"]);
    let (_shim, _) = create(&env, "d1", &b);
    env.ok(&["start", "d1"]);
    let mut c = env
        .rt()
        .args(["debug-console", "d1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    // Written before the guest has even spawned the shell: regression for stdin pumped ahead
    // of the process (the guest dropped what arrived for a stream it did not know yet).
    c.stdin
        .take()
        .unwrap()
        .write_all(b"uname -r; ls /run/shared; readlink /proc/1/exe; exit 3\n")
        .unwrap();
    let o = c.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{out} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], common::guest_release(), "{out}");
    // The guest's own view: the share with the container's rootfs, and the agent as PID 1.
    assert_eq!(lines[1], "d1", "{out}");
    assert_eq!(lines[2], "/init", "{out}");

    // Plain exec with stdin piped at once takes the same path.
    let mut c = env
        .rt()
        .args(["exec", "d1", "wc", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(b"12345").unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "5");

    // A sandbox booted without it has no shell, and says how to get one.
    std::fs::write(&env.config, cfg).unwrap();
    let (_shim, _) = create(&env, "d2", &b);
    env.ok(&["start", "d2"]);
    let o = env
        .rt()
        .args(["debug-console", "d2"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("debug_console = true"), "{err}");
    for id in ["d1", "d2"] {
        env.ok(&["delete", "--force", id]);
    }
    env.assert_clean();
}

/// `linux.resources` become a cgroup of the guest's own: the container sees its limits as
/// its /sys/fs/cgroup (a cgroup namespace rooted there), pids.max is enforced on its forks,
/// an exec'd process joins the same cgroup, and delete removes it.
#[test]
fn serial_vm_resources_become_guest_cgroup_limits() {
    let env = Env::new();
    // The forks run in a subshell (a failed fork ends the shell that tried it); after them
    // only builtins, since with pids.max reached nothing else can start.
    let script = "read m < /sys/fs/cgroup/memory.max; echo memory=$m; \
                  read p < /sys/fs/cgroup/pids.max; echo pids=$p; \
                  read c < /sys/fs/cgroup/cpu.max; echo cpu=$c; \
                  read w < /sys/fs/cgroup/cpu.weight; echo weight=$w; \
                  (for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do sleep 600 & done) 2>/dev/null; \
                  n=0; for x in /proc/[0-9]*; do n=$((n+1)); done; echo procs=$n; \
                  kill -9 -1; wait; echo ready; \
                  while :; do sleep 1; done";
    let b = bundle(env.dir.path(), "cg", &["sh", "-c", script]);
    edit_config(&b, |c| {
        c["linux"]["resources"] = serde_json::json!({
            "memory": {"limit": 64 << 20},
            "pids": {"limit": 8},
            "cpu": {"quota": 50000, "period": 100000, "shares": 512}
        });
    });
    let (shim, out) = create(&env, "cg1", &b);
    env.ok(&["start", "cg1"]);
    let mut o = String::new();
    for _ in 0..300 {
        o = std::fs::read_to_string(&out).unwrap();
        if o.contains("ready") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let lines: Vec<&str> = o.lines().collect();
    assert_eq!(lines.first(), Some(&"memory=67108864"), "{o}");
    assert_eq!(lines.get(1), Some(&"pids=8"), "{o}");
    assert_eq!(lines.get(2), Some(&"cpu=50000 100000"), "{o}");
    // runc's shares→weight mapping: 1 + (512 - 2) * 9999 / 262142.
    assert_eq!(lines.get(3), Some(&"weight=20"), "{o}");
    let procs: usize = lines
        .iter()
        .find_map(|l| l.strip_prefix("procs="))
        .unwrap_or_else(|| panic!("no procs line: {o}"))
        .parse()
        .unwrap();
    assert!(
        procs <= 8,
        "20 forks asked, at most pids.max processes exist: {o}"
    );
    // An exec'd process lands in the container's cgroup, seen as the root of its namespace.
    let e = env.ok(&[
        "exec",
        "cg1",
        "sh",
        "-c",
        "cat /proc/self/cgroup; read p < /sys/fs/cgroup/pids.max; echo $p",
    ]);
    assert_eq!(e.lines().collect::<Vec<_>>(), ["0::/", "8"], "{e}");
    env.ok(&["kill", "cg1", "KILL"]);
    assert_eq!(reap(shim), 137);
    env.ok(&["delete", "cg1"]);
    env.assert_clean();
}

/// The VM factory: the first sandbox builds the template, later ones are restored from it
/// instead of booting. Each copy must still be its own: its own share (rootfs), a random pool
/// reseeded (without it all three printed the same "random" bytes), the same teardown.
/// (The clock is set on resume too, but under TCG a restored guest's clock already follows
/// the host's, so no assertion here could tell it apart.)
#[test]
fn serial_vm_template_copies_get_their_own_share_and_entropy() {
    let env = Env::with_template();
    let script = "cat /var/www/index.html; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; \
                  uname -r";
    // The first sandbox builds the template.
    let b = bundle(env.dir.path(), "warm", &["true"]);
    let (shim, _) = create(&env, "warm", &b);
    env.ok(&["start", "warm"]);
    assert_eq!(reap(shim), 0);
    env.ok(&["delete", "warm"]);
    let mut outs = Vec::new();
    for id in ["ta", "tb", "tc"] {
        let b = bundle(env.dir.path(), id, &["sh", "-c", script]);
        let (shim, out) = create(&env, id, &b);
        let timings = sandbox_file(&env, id, "timings.json");
        assert!(
            timings.contains("\"template\":true"),
            "{id} was restored, not booted: {timings}"
        );
        env.ok(&["start", id]);
        assert_eq!(reap(shim), 0);
        outs.push(std::fs::read_to_string(&out).unwrap());
        env.ok(&["delete", id]);
    }
    let mut randoms = Vec::new();
    for (o, id) in outs.iter().zip(["ta", "tb", "tc"]) {
        let l: Vec<&str> = o.lines().collect();
        assert_eq!(
            l.first().copied(),
            Some(format!("hello from {id}").as_str()),
            "{o}"
        );
        randoms.push(l[1].to_string());
        assert_eq!(l[2], common::guest_release(), "{o}");
    }
    randoms.sort();
    randoms.dedup();
    assert_eq!(
        randoms.len(),
        3,
        "each copy draws its own random numbers: {outs:?}"
    );
    assert!(
        moat_runtime::template::dir(&env.root)
            .join("state")
            .is_file()
    );
    env.assert_clean();
}

/// Two first sandboxes at once: the template is built once (under its lock) and both are
/// restored from it.
#[test]
fn serial_vm_template_concurrent_first_sandboxes_share_one_build() {
    let env = Env::with_template();
    let bundles: Vec<_> = ["ca", "cb"]
        .iter()
        .map(|id| {
            (
                *id,
                bundle(env.dir.path(), id, &["cat", "/var/www/index.html"]),
            )
        })
        .collect();
    let started: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = bundles
            .iter()
            .map(|(id, b)| s.spawn(|| create(&env, id, b)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((id, _), (shim, out)) in bundles.iter().zip(started) {
        assert!(sandbox_file(&env, id, "timings.json").contains("\"template\":true"));
        env.ok(&["start", id]);
        assert_eq!(reap(shim), 0);
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            format!("hello from {id}\n")
        );
        env.ok(&["delete", id]);
    }
    env.assert_clean();
}

/// Issue 16, Kata's static sandbox sizing: the VM is the configured size (1 vCPU, 256 MiB in
/// these tests) plus its pod's limits, and the guest sees it; without limits it is the
/// default; a size the host cannot give is a clear create error that leaves nothing.
#[test]
fn serial_vm_is_sized_from_the_pod_limits() {
    let env = Env::new();
    let script = "echo cpus=$(nproc); grep MemTotal /proc/meminfo";
    let seen = |id: &str, b: &Path| -> (u32, u64) {
        let (shim, out) = create(&env, id, b);
        env.ok(&["start", id]);
        assert_eq!(reap(shim), 0);
        env.ok(&["delete", id]);
        let o = std::fs::read_to_string(&out).unwrap();
        let cpus = o
            .lines()
            .find_map(|l| l.strip_prefix("cpus="))
            .unwrap_or_else(|| panic!("{o}"))
            .parse()
            .unwrap();
        let kib: u64 = o
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("{o}"))
            .parse()
            .unwrap();
        (cpus, kib / 1024)
    };
    // limits: {cpu: 2, memory: 1Gi}, as the node agent writes them.
    let big = bundle(env.dir.path(), "big", &["sh", "-c", script]);
    edit_config(&big, |c| {
        c["linux"]["resources"] = serde_json::json!({
            "memory": {"limit": 1u64 << 30},
            "cpu": {"quota": 200000, "period": 100000}
        });
    });
    let (cpus, mib) = seen("sz1", &big);
    assert_eq!(cpus, 3, "1 default + 2 from the limit");
    // MemTotal is the VM's memory less what the kernel keeps for itself.
    assert!(
        (1180..=1280).contains(&mib),
        "1280 MiB VM, guest sees {mib}"
    );

    let plain = bundle(env.dir.path(), "plain", &["sh", "-c", script]);
    let (cpus, mib) = seen("sz2", &plain);
    assert_eq!(cpus, 1);
    assert!((200..=256).contains(&mib), "256 MiB VM, guest sees {mib}");

    // The CRI sandbox annotations (the pod's summed limits) win over the container's own.
    let pod = bundle(env.dir.path(), "pod", &["sh", "-c", script]);
    edit_config(&pod, |c| {
        c["annotations"] = serde_json::json!({
            "io.kubernetes.cri.sandbox-cpu-quota": "100000",
            "io.kubernetes.cri.sandbox-cpu-period": "100000",
            "io.kubernetes.cri.sandbox-memory": (512u64 << 20).to_string(),
        });
    });
    let (cpus, mib) = seen("sz3", &pod);
    assert_eq!(cpus, 2);
    assert!((700..=768).contains(&mib), "768 MiB VM, guest sees {mib}");

    let huge = bundle(env.dir.path(), "huge", &["true"]);
    edit_config(&huge, |c| {
        c["linux"]["resources"] = serde_json::json!({"memory": {"limit": 1u64 << 50}});
    });
    let o = env
        .rt()
        .args(["create", "--bundle"])
        .arg(&huge)
        .arg("sz4")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("sizing the VM") && err.contains("more than this host's"),
        "{err}"
    );
    env.assert_clean();
}

/// Issue 16, volumes: a read-write bind (an emptyDir) is writable from the guest through the
/// writable share, and what the guest plants there (symlinks to /etc/passwd and /, writes
/// through them) stays guest-side: on the host they are plain files, and the host's targets
/// are untouched during the run and after the volume is removed.
#[test]
fn serial_vm_writable_bind_never_lets_the_guest_reach_host_files() {
    let env = Env::new();
    let vol = env.dir.path().join("emptydir");
    std::fs::create_dir_all(&vol).unwrap();
    let passwd = std::fs::read("/etc/passwd").unwrap();
    let root_entries = std::fs::read_dir("/").unwrap().count();
    let script = "echo hi > /scratch/f && cat /scratch/f; \
                  ln -s /etc/passwd /scratch/p; ln -s / /scratch/root; \
                  echo pwned >> /scratch/p; echo x > /scratch/root/planted; \
                  test -L /scratch/p && echo guest-sees-symlink";
    let b = bundle(env.dir.path(), "rw", &["sh", "-c", script]);
    edit_config(&b, |c| {
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!({
            "destination": "/scratch", "type": "bind",
            "source": vol.to_str().unwrap(), "options": ["rbind", "rw"]
        }));
    });
    let (shim, out) = create(&env, "rw1", &b);
    env.ok(&["start", "rw1"]);
    assert_eq!(reap(shim), 0);
    let o = std::fs::read_to_string(&out).unwrap();
    assert!(o.starts_with("hi\n"), "{o}");
    assert!(o.contains("guest-sees-symlink"), "{o}");
    env.ok(&["delete", "rw1"]);
    assert_eq!(std::fs::read_to_string(vol.join("f")).unwrap(), "hi\n");
    for planted in ["p", "root"] {
        let m = std::fs::symlink_metadata(vol.join(planted)).unwrap();
        assert!(
            m.file_type().is_file(),
            "{planted} is a plain file on the host"
        );
    }
    assert!(!Path::new("/planted").exists());
    std::fs::remove_dir_all(&vol).unwrap();
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), passwd);
    assert_eq!(std::fs::read_dir("/").unwrap().count(), root_entries);
    env.assert_clean();
}

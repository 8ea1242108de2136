//! The node agent for real: `moat server --agent` runs inside a network namespace of the test's
//! own (so cni0, the pod veths and the pod CIDR never touch the host's network), pods run
//! under runc with the busybox image built by scripts/busybox-image.sh, and deleting a pod
//! must leave no netns, veth, mount, cgroup or runtime state behind.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::lab::*;
use serde_json::Value;
#[test]
fn serial_agent_runs_a_pod_with_runc_and_deletes_it_without_leftovers() {
    let mut lab = Lab::new("run");
    lab.import_busybox();
    lab.start(&[]);
    let name = "web-a";
    let manifest = POD.replace("NAME", name).replace("NODE", &lab.node);
    let (ok, _, err) = lab.kubectl(&["apply", "-f", "-"], Some(&manifest));
    assert!(ok, "apply: {err}");
    let (ip, uid) = running_ip(&lab, name);
    assert!(
        ip.starts_with("10.42.77."),
        "pod IP {ip} outside the node's podCIDR"
    );

    // The pod answers from the node (the lab namespace) with its own name.
    let mut body = String::new();
    lab.wait("the pod's httpd", 20, || {
        body = fetch(&lab, &ip);
        !body.is_empty()
    });
    assert_eq!(body, name);

    // Node registration and heartbeat.
    let (ok, out, _) = lab.kubectl(&["get", "node", &lab.node, "-o", "json"], None);
    assert!(ok);
    let node: Value = serde_json::from_str(&out).expect("node json");
    assert_eq!(node["spec"]["podCIDR"], "10.42.77.0/24");
    assert_eq!(node["metadata"]["labels"]["kubernetes.io/os"], "linux");
    assert!(node["status"]["capacity"]["cpu"].is_string());
    let (ok, _, err) = lab.kubectl(&["get", "lease", "-n", "kube-node-lease", &lab.node], None);
    assert!(ok, "lease: {err}");

    // The pod's status as kubectl shows it.
    let p = lab.pod(name).expect("pod");
    let cs = &p["status"]["containerStatuses"][0];
    assert_eq!(cs["ready"], true);
    assert!(
        cs["containerID"]
            .as_str()
            .unwrap_or("")
            .starts_with("runc://")
    );
    let ready = p["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned())
        .expect("Ready condition");
    assert_eq!(ready["status"], "True");

    // CRI log file.
    let log = lab
        .path("logs")
        .join(format!("default_{name}_{uid}"))
        .join("web/0.log");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let line = text.lines().next().unwrap_or("");
    let parts: Vec<&str> = line.splitn(4, ' ').collect();
    assert_eq!(parts.len(), 4, "CRI log line {line:?} in {}", log.display());
    assert!(parts[0].contains('T') && parts[0].ends_with('Z'), "{line}");
    assert_eq!(&parts[1..], ["stdout", "F", &format!("serving {name}")]);

    // kubectl logs and exec, proxied by the API server to the agent's endpoint.
    let (ok, out, err) = lab.kubectl(&["logs", name], None);
    assert!(ok, "logs: {err}");
    assert_eq!(out, format!("serving {name}\n"));
    let (ok, out, err) = lab.kubectl(&["logs", name, "-c", "web", "--timestamps"], None);
    assert!(ok, "logs: {err}");
    assert!(out.ends_with(&format!("Z serving {name}\n")), "{out}");
    for (args, want) in [
        (vec!["--limit-bytes=7"], "serving".to_string()),
        (vec!["--since=1h"], format!("serving {name}\n")),
        (vec!["--since-time=2999-01-01T00:00:00Z"], String::new()),
    ] {
        let mut a = vec!["logs", name];
        a.extend(args.iter().copied());
        let (ok, out, err) = lab.kubectl(&a, None);
        assert!(ok, "logs {args:?}: {err}");
        assert_eq!(out, want, "logs {args:?}");
    }
    let (ok, out, err) = lab.kubectl(&["exec", name, "--", "hostname"], None);
    assert!(ok, "exec: {err}");
    assert_eq!(out, format!("{name}\n"));
    let (ok, out, err) = lab.kubectl(
        &[
            "exec",
            name,
            "--",
            "sh",
            "-c",
            "echo to-out; echo to-err >&2; exit 3",
        ],
        None,
    );
    assert!(!ok, "a failing command fails kubectl");
    assert_eq!(out, "to-out\n");
    assert!(
        err.contains("to-err") && err.contains("exit code 3"),
        "{err}"
    );
    let o = lab
        .in_ns(KUBECTL)
        .arg("--kubeconfig")
        .arg(lab.path("kubeconfig.yaml"))
        .args(["exec", name, "--", "sh", "-c", "exit 7"])
        .output()
        .expect("kubectl");
    assert_eq!(o.status.code(), Some(7), "exit codes propagate");
    let (ok, out, err) = lab.kubectl(&["exec", "-i", name, "--", "cat"], Some("through stdin\n"));
    assert!(ok, "exec -i: {err}");
    assert_eq!(out, "through stdin\n");
    let (ok, _, err) = lab.kubectl(&["logs", name, "-c", "nope"], None);
    assert!(!ok && err.contains("nope"), "{err}");

    // kubectl cp streams a tar through exec's stdin and back through its stdout.
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(lab.path("blob"), &blob).expect("blob");
    let src = lab.path("blob").display().to_string();
    let (ok, _, err) = lab.kubectl(&["cp", &src, &format!("{name}:/tmp/blob")], None);
    assert!(ok, "kubectl cp in: {err}");
    let back = lab.path("blob-back").display().to_string();
    let (ok, _, err) = lab.kubectl(&["cp", &format!("{name}:/tmp/blob"), &back], None);
    assert!(ok, "kubectl cp out: {err}");
    assert!(
        std::fs::read(&back).ok() == Some(blob),
        "the copy came back different"
    );

    // kubectl 1.27-1.29 exec over SPDY/3.1: streams, stdin, exit codes, a terminal.
    for old in ["kubectl.1.29", "kubectl.1.27"] {
        let bin = format!("/usr/lib/google-cloud-sdk/bin/{old}");
        let kc = lab.path("kubeconfig.yaml");
        let o = lab
            .in_ns(&bin)
            .arg("--kubeconfig")
            .arg(&kc)
            .args([
                "exec",
                name,
                "--",
                "sh",
                "-c",
                "hostname; echo to-err >&2; exit 3",
            ])
            .output()
            .expect("old kubectl");
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        assert_eq!(out, format!("{name}\n"), "{old}: {err}");
        assert!(err.contains("to-err"), "{old}: {err}");
        assert_eq!(o.status.code(), Some(3), "{old}: {err}");
        let mut ch = lab
            .in_ns(&bin)
            .arg("--kubeconfig")
            .arg(&kc)
            .args(["exec", "-i", name, "--", "cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("old kubectl");
        {
            use std::io::Write;
            let mut si = ch.stdin.take().expect("stdin");
            let _ = si.write_all(b"over spdy\n");
        }
        let o = ch.wait_with_output().expect("old kubectl output");
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "over spdy\n",
            "{old}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(o.status.success());
        let line = format!(
            "stty rows 21 cols 77; {bin} --kubeconfig {} exec -it {name} -- sh -c 'tty; stty size; exit 6'",
            kc.display()
        );
        // Seen twice in 2026-12 under load, never reproduced on demand: busybox `stty size`
        // in the container failing "standard input: No child processes" (ECHILD from the
        // terminal ioctl). Until it is understood, that one message gets a second attempt;
        // any other wrong answer fails at once.
        let mut attempt = 0;
        let (o, text) = loop {
            attempt += 1;
            let o = lab
                .in_ns("script")
                .args(["-q", "-e", "-c", &line, "/dev/null"])
                .stdin(Stdio::null())
                .output()
                .expect("script");
            let text = String::from_utf8_lossy(&o.stdout).replace('\r', "");
            if attempt < 3 && text.contains("stty: standard input: No child processes") {
                eprintln!("{old}: stty hit ECHILD (attempt {attempt}): {text}");
                continue;
            }
            break (o, text);
        };
        assert!(
            text.contains("/dev/pts/") && text.contains("21 77\n"),
            "{old}: {text}"
        );
        assert_eq!(o.status.code(), Some(6), "{old}: {text}");
        // Far more stdin than one SPDY window (64 KiB), both ways.
        let o = lab
            .in_ns(&bin)
            .arg("--kubeconfig")
            .arg(&kc)
            .args(["cp", &back, &format!("{name}:/tmp/blob2")])
            .output()
            .expect("old kubectl cp");
        assert!(
            o.status.success(),
            "{old} cp: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let o = lab
            .in_ns(&bin)
            .arg("--kubeconfig")
            .arg(&kc)
            .args(["exec", name, "--", "cat", "/tmp/blob2"])
            .output()
            .expect("old kubectl exec");
        assert!(
            std::fs::read(&back).ok() == Some(o.stdout),
            "{old}: the copy came back different"
        );
    }

    // exec -it: a terminal of the container's own, sized as kubectl's, exit code kept.
    // `script` gives kubectl a terminal (33x101) to read its size from.
    let line = format!(
        "stty rows 33 cols 101; {KUBECTL} --kubeconfig {} exec -it {name} -- sh -c 'tty; stty size; exit 5'",
        lab.path("kubeconfig.yaml").display()
    );
    let o = lab
        .in_ns("script")
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script");
    let text = String::from_utf8_lossy(&o.stdout).replace('\r', "");
    assert!(
        text.contains("/dev/pts/"),
        "{text} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(text.contains("33 101\n"), "{text}");
    assert_eq!(o.status.code(), Some(5), "{text}");
    // Typed input reaches an interactive shell through the terminal.
    let line = format!(
        "{KUBECTL} --kubeconfig {} exec -it {name} -- sh",
        lab.path("kubeconfig.yaml").display()
    );
    let mut ch = lab
        .in_ns("script")
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script");
    {
        use std::io::Write;
        let mut si = ch.stdin.take().expect("stdin");
        let _ = si.write_all(b"echo typed-$((6*7)); exit 4\n");
    }
    let o = ch.wait_with_output().expect("script output");
    let text = String::from_utf8_lossy(&o.stdout).replace('\r', "");
    assert!(text.contains("\ntyped-42\n"), "{text}");
    assert_eq!(o.status.code(), Some(4), "{text}");

    let during = lab.leftovers(&uid);
    assert_eq!(during.0, 1, "one pod netns");
    assert_eq!(during.1, 1, "one veth");
    assert!(during.3 >= 1, "pod cgroups exist while it runs");
    assert_eq!(during.4, 1, "one runc container");

    let (ok, _, err) = lab.kubectl(&["delete", "pod", name, "--timeout=60s"], None);
    assert!(ok, "delete: {err}");
    lab.wait("the pod object to go", 30, || lab.pod(name).is_none());
    let after = lab.leftovers(&uid);
    // Only the image store's own state may remain mounted (none), nothing of the pod.
    assert_eq!(
        after,
        (0, 0, 0, 0, 0),
        "leftovers after delete (netns, veth, mounts, cgroups, runc)"
    );
    assert!(!lab.path(&format!("run/pods/{uid}")).exists());
}

#[test]
fn serial_agent_crashloop_backoff_grows_and_keeps_previous_logs() {
    let mut lab = Lab::new("crash");
    lab.import_busybox();
    lab.start(&[]);
    let manifest = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: crash}}
spec:
  nodeName: {}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: localhost/busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "echo run at $(date +%s%N); exit 1"]
"#,
        lab.node
    );
    apply(&lab, &manifest);
    lab.wait("the first crash", 30, || {
        container_status(&lab, "crash")["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    });
    let cs = container_status(&lab, "crash");
    assert_eq!(cs["lastState"]["terminated"]["exitCode"], 1, "{cs}");
    assert_eq!(cs["restartCount"], 0);
    let msg = cs["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(msg.contains("back-off 10s"), "{msg}");
    let p = lab.pod("crash").expect("pod");
    assert_eq!(p["status"]["phase"], "Running");
    let uid = p["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let _ = std::fs::write(lab.path("uids"), &uid);

    // After the 10 s back-off it runs again, fails again, and waits twice as long.
    lab.wait("the second crash", 40, || {
        let cs = container_status(&lab, "crash");
        cs["restartCount"] == 1 && cs["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    });
    let cs = container_status(&lab, "crash");
    let msg = cs["state"]["waiting"]["message"].as_str().unwrap_or("");
    assert!(msg.contains("back-off 20s"), "{cs}");

    // Each run has its own CRI log: 0.log is the previous run's.
    let dir = lab
        .path("logs")
        .join(format!("default_crash_{uid}"))
        .join("c");
    let first = std::fs::read_to_string(dir.join("0.log")).unwrap_or_default();
    let second = std::fs::read_to_string(dir.join("1.log")).unwrap_or_default();
    assert!(first.contains(" stdout F run at "), "{first:?}");
    assert!(second.contains(" stdout F run at "), "{second:?}");
    assert_ne!(first, second);
    // kubectl logs shows the current (last) run, --previous the one before.
    let plain = |t: &str| {
        t.lines()
            .filter_map(|l| l.splitn(4, ' ').nth(3))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    };
    let (ok, out, err) = lab.kubectl(&["logs", "crash"], None);
    assert!(ok, "logs: {err}");
    assert_eq!(out, plain(&second));
    let (ok, out, err) = lab.kubectl(&["logs", "crash", "--previous"], None);
    assert!(ok, "logs --previous: {err}");
    assert_eq!(out, plain(&first));
    delete_and_check_clean(&lab, "crash", &uid);
}

#[test]
fn serial_agent_kill9_restart_readopts_without_restarting_containers() {
    let mut lab = Lab::new("kill");
    lab.import_busybox();
    lab.start(&[]);
    apply(
        &lab,
        &POD.replace("NAME", "keep").replace("NODE", &lab.node),
    );
    let (ip, uid) = running_ip(&lab, "keep");
    let before = container_status(&lab, "keep");
    let state = |lab: &Lab| -> Value {
        let (_, out, _) = run(Command::new("runc")
            .arg("--root")
            .arg(lab.runtime_root())
            .args([
                "state",
                before["containerID"]
                    .as_str()
                    .unwrap_or("")
                    .trim_start_matches("runc://"),
            ]));
        serde_json::from_str(&out).unwrap_or(Value::Null)
    };
    let pid = state(&lab)["pid"].as_i64().expect("container pid");

    lab.kill9();
    lab.start(&[]);
    // The restarted agent reports the node again and keeps the pod as it was.
    let node_hb = |lab: &Lab| {
        lab.kubectl(
            &[
                "get",
                "lease",
                "-n",
                "kube-node-lease",
                &lab.node,
                "-o",
                "jsonpath={.spec.renewTime}",
            ],
            None,
        )
        .1
    };
    let hb = node_hb(&lab);
    lab.wait("a lease renewal from the restarted agent", 30, || {
        node_hb(&lab) != hb
    });
    let after = container_status(&lab, "keep");
    assert_eq!(after["containerID"], before["containerID"]);
    assert_eq!(after["restartCount"], 0);
    assert_eq!(
        state(&lab)["pid"].as_i64(),
        Some(pid),
        "the container was restarted"
    );
    assert_eq!(state(&lab)["status"], "running");
    assert_eq!(fetch(&lab, &ip), "keep");
    let (_, list, _) = run(Command::new("runc")
        .arg("--root")
        .arg(lab.runtime_root())
        .args(["list", "-q"]));
    assert_eq!(list.lines().count(), 1, "no duplicate container: {list}");

    // Status updates resume: the container's death is seen and it is restarted.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    lab.wait("the killed container to be noticed", 30, || {
        container_status(&lab, "keep")["lastState"]["terminated"]["exitCode"] == 137
    });
    lab.wait("its restart", 40, || {
        let cs = container_status(&lab, "keep");
        cs["restartCount"] == 1 && cs["state"]["running"].is_object()
    });
    delete_and_check_clean(&lab, "keep", &uid);
}

#[test]
fn serial_agent_runtime_classes_pick_handlers_and_crun_fails_fast() {
    let mut lab = Lab::new("rc");
    lab.import_busybox();
    // A handler pointing at a wrapper that records its invocations, then runs runc.
    let wrapper = lab.path("rec-runtime");
    let calls = lab.path("rec-calls");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$*\" >> {}\nexec /usr/sbin/runc \"$@\"\n",
            calls.display()
        ),
    )
    .expect("wrapper");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let rec_root = lab.path("rec-root");
    let cfg = lab.path("runtimes.toml");
    std::fs::write(
        &cfg,
        format!(
            "[handlers.rec]\nbinary = \"{}\"\nroot = \"{}\"\n",
            wrapper.display(),
            rec_root.display()
        ),
    )
    .expect("config");
    lab.start(&["--runtime-config", cfg.to_str().expect("utf-8")]);
    apply(
        &lab,
        r#"
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata: {name: recorded}
handler: rec
---
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata: {name: crun}
handler: crun
---
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata: {name: nowhere}
handler: kata-nowhere
"#,
    );
    let with_class = |name: &str, class: &str| {
        POD.replace("NAME", name)
            .replace("NODE", &lab.node)
            .replace(
                "  containers:",
                &format!("  runtimeClassName: {class}\n  containers:"),
            )
    };
    apply(
        &lab,
        &POD.replace("NAME", "plain").replace("NODE", &lab.node),
    );
    apply(&lab, &with_class("wrapped", "recorded"));
    apply(&lab, &with_class("oncrun", "crun"));
    apply(&lab, &with_class("lost", "nowhere"));
    let (_, plain_uid) = running_ip(&lab, "plain");
    let (wrapped_ip, wrapped_uid) = running_ip(&lab, "wrapped");
    let _ = std::fs::write(lab.path("uids"), &plain_uid);
    assert_eq!(fetch(&lab, &wrapped_ip), "wrapped");

    let id_of = |name: &str| {
        container_status(&lab, name)["containerID"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert!(
        id_of("wrapped").starts_with("rec://"),
        "{}",
        id_of("wrapped")
    );
    assert!(id_of("plain").starts_with("runc://"));
    let list = |root: &Path| {
        run(Command::new("runc")
            .arg("--root")
            .arg(root)
            .args(["list", "-q"]))
        .1
    };
    let rec_list = list(&rec_root);
    let runc_list = list(&lab.runtime_root());
    assert!(
        rec_list.contains(&wrapped_uid) && !rec_list.contains(&plain_uid),
        "{rec_list}"
    );
    assert!(
        runc_list.contains(&plain_uid) && !runc_list.contains(&wrapped_uid),
        "{runc_list}"
    );
    let recorded = std::fs::read_to_string(&calls).unwrap_or_default();
    assert!(
        recorded
            .lines()
            .any(|l| l.contains(" create ") && l.contains(&wrapped_uid)),
        "{recorded}"
    );
    assert!(
        recorded.lines().any(|l| l.contains(" start ")),
        "{recorded}"
    );
    assert!(!recorded.contains(&plain_uid), "{recorded}");

    // crun refuses this machine's hybrid cgroups: the pod says so at once, with an event.
    lab.wait("crun's refusal in the pod status", 20, || {
        container_status(&lab, "oncrun")["state"]["waiting"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("hybrid"))
    });
    let cs = container_status(&lab, "oncrun");
    assert_eq!(
        cs["state"]["waiting"]["reason"], "CreateContainerError",
        "{cs}"
    );
    let (_, events, _) = lab.kubectl(
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=oncrun",
            "-o",
            "json",
        ],
        None,
    );
    assert!(events.contains("hybrid"), "{events}");
    // An unknown handler fails the pod with a reason.
    lab.wait("the unknown handler to fail the pod", 20, || {
        lab.pod("lost").is_some_and(|p| {
            p["status"]["phase"] == "Failed" && p["status"]["reason"] == "RuntimeHandlerNotFound"
        })
    });
    let p = lab.pod("lost").expect("pod");
    assert!(
        p["status"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("kata-nowhere"),
        "{p}"
    );

    for n in ["oncrun", "lost", "wrapped"] {
        let (ok, _, err) = lab.kubectl(&["delete", "pod", n, "--timeout=60s"], None);
        assert!(ok, "delete {n}: {err}");
    }
    assert!(list(&rec_root).trim().is_empty());
    delete_and_check_clean(&lab, "plain", &plain_uid);
}

#[test]
fn serial_agent_runs_a_scheduled_deployment_and_cleans_up_after_it() {
    let mut lab = Lab::new("dep");
    lab.import_busybox();
    lab.start(&[]);
    apply(
        &lab,
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: hello}
spec:
  replicas: 2
  selector: {matchLabels: {app: hello}}
  template:
    metadata: {labels: {app: hello}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: localhost/busybox:latest
        imagePullPolicy: IfNotPresent
        command: ["sh", "-c", "hostname > /tmp/index.html; trap 'exit 0' TERM; httpd -f -p 8080 -h /tmp & wait"]
        ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: hello}
spec:
  selector: {app: hello}
  ports: [{port: 80, targetPort: 8080}]
"#,
    );
    // The scheduler binds both replicas to the agent's node; both run with their own IPs.
    let mut pods: Vec<(String, String, String)> = Vec::new();
    lab.wait("both replicas Running", 90, || {
        let (ok, out, _) = lab.kubectl(&["get", "pods", "-l", "app=hello", "-o", "json"], None);
        let list: Value = if ok {
            serde_json::from_str(&out).unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        pods = list["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter(|p| {
                        p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string()
                    })
                    .map(|p| {
                        (
                            p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                            p["status"]["podIP"].as_str().unwrap_or("").to_string(),
                            p["metadata"]["uid"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        pods.len() == 2
    });
    assert_ne!(pods[0].1, pods[1].1);
    for (name, ip, _) in &pods {
        assert!(ip.starts_with("10.42.77."), "{ip}");
        assert_eq!(&fetch(&lab, ip), name, "each pod serves its own name");
        let (ok, out, err) = lab.kubectl(&["exec", name, "--", "hostname"], None);
        assert!(ok, "exec: {err}");
        assert_eq!(out.trim(), name);
    }
    let (ok, _, err) = lab.kubectl(&["delete", "deployment", "hello"], None);
    assert!(ok, "delete: {err}");
    lab.wait("the replicas to go", 60, || {
        let (_, out, _) = lab.kubectl(&["get", "pods", "-l", "app=hello", "-o", "name"], None);
        out.trim().is_empty()
    });
    for (_, _, uid) in &pods {
        let left = lab.leftovers(uid);
        assert_eq!(
            (left.0, left.1, left.2, left.3, left.4),
            (0, 0, 0, 0, 0),
            "leftovers of {uid}"
        );
    }
}

#[test]
fn agent_check_says_plainly_what_the_node_can_run() {
    let (ok, out, err) = run(Command::new(moat_bin()).args(["agent", "check"]));
    assert!(ok, "agent check: {err}");
    let (ok, top, err) = run(Command::new(moat_bin()).arg("check"));
    assert!(ok, "moat check: {err}");
    assert_eq!(top, out, "moat check is moat agent check");
    let line = |what: &str| {
        out.lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what} line in:\n{out}"))
            .to_string()
    };
    assert!(line("handler runc (").starts_with("ok "), "{out}");
    assert!(line("CNI plugin bridge").starts_with("ok "), "{out}");
    // This machine's layout (read here independently): v1 controllers plus a unified
    // hierarchy that holds controllers is what crun refuses.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let hybrid_with_controllers = mounts.contains(" - cgroup cgroup ")
        && std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers")
            .is_ok_and(|c| !c.trim().is_empty());
    let crun = line("handler crun (");
    if hybrid_with_controllers {
        assert!(crun.starts_with("NO ") && crun.contains("hybrid"), "{crun}");
        assert!(line("cgroups").contains("hybrid"), "{out}");
    } else {
        assert!(crun.starts_with("ok "), "{crun}");
    }
}

#[test]
fn serial_agent_readiness_probe_gates_ready() {
    let mut lab = Lab::new("ready");
    lab.import_busybox();
    lab.start(&[]);
    let manifest = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: probed}}
spec:
  nodeName: {}
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: localhost/busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "trap 'exit 0' TERM; httpd -f -p 8080 -h /tmp & wait"]
    readinessProbe:
      httpGet: {{path: /ready, port: 8080}}
      periodSeconds: 1
      failureThreshold: 2
"#,
        lab.node
    );
    apply(&lab, &manifest);
    let (_, uid) = running_ip(&lab, "probed");
    let ready = |lab: &Lab| -> (Value, Value) {
        let p = lab.pod("probed").unwrap_or(Value::Null);
        let cond = p["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned())
            .unwrap_or(Value::Null);
        (
            p["status"]["containerStatuses"][0]["ready"].clone(),
            cond["status"].clone(),
        )
    };
    // Running but the probe's page is missing (404): not ready, for several periods.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ready(&lab), (Value::Bool(false), Value::from("False")));
    let (ok, _, err) = lab.kubectl(&["exec", "probed", "--", "touch", "/tmp/ready"], None);
    assert!(ok, "exec: {err}");
    lab.wait("the probe to pass", 20, || {
        ready(&lab) == (Value::Bool(true), Value::from("True"))
    });
    let (ok, _, err) = lab.kubectl(&["exec", "probed", "--", "rm", "/tmp/ready"], None);
    assert!(ok, "exec: {err}");
    lab.wait("two failures to make it unready", 20, || {
        ready(&lab) == (Value::Bool(false), Value::from("False"))
    });
    let cs = container_status(&lab, "probed");
    assert_eq!(cs["restartCount"], 0, "readiness never restarts: {cs}");
    delete_and_check_clean(&lab, "probed", &uid);
}

#[test]
fn serial_agent_two_containers_share_emptydir_configmap_and_secret() {
    let mut lab = Lab::new("vol");
    lab.import_busybox();
    lab.start(&[]);
    let manifest = format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: greet}}
data: {{greeting: "hi-from-cm "}}
---
apiVersion: v1
kind: Secret
metadata: {{name: creds}}
data: {{token: c2VjcmV0}}
---
apiVersion: v1
kind: Pod
metadata: {{name: vols}}
spec:
  nodeName: {}
  terminationGracePeriodSeconds: 1
  volumes:
  - {{name: shared, emptyDir: {{}}}}
  - {{name: cfg, configMap: {{name: greet}}}}
  - {{name: sec, secret: {{secretName: creds}}}}
  containers:
  - name: writer
    image: localhost/busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "cat /cfg/greeting /sec/token > /shared/index.html; trap 'exit 0' TERM; sleep 3600 & wait"]
    volumeMounts: [{{name: shared, mountPath: /shared}}, {{name: cfg, mountPath: /cfg}}, {{name: sec, mountPath: /sec, readOnly: true}}]
  - name: web
    image: localhost/busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "trap 'exit 0' TERM; httpd -f -p 8080 -h /shared & wait"]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
"#,
        lab.node
    );
    apply(&lab, &manifest);
    let (ip, uid) = running_ip(&lab, "vols");
    let mut body = String::new();
    lab.wait(
        "the web container to serve what the writer wrote",
        20,
        || {
            body = fetch(&lab, &ip);
            !body.is_empty()
        },
    );
    assert_eq!(body, "hi-from-cm secret");
    let (ok, _, err) = lab.kubectl(
        &["exec", "vols", "-c", "writer", "--", "touch", "/shared/x"],
        None,
    );
    assert!(ok, "{err}");
    let (ok, _, _) = lab.kubectl(
        &["exec", "vols", "-c", "writer", "--", "touch", "/sec/x"],
        None,
    );
    assert!(!ok, "the secret mount is read-only");

    // The containers share the pod's IPC (with /dev/shm) and UTS namespaces, not the host's.
    let in_c = |c: &str, cmd: &str| {
        let (ok, out, err) = lab.kubectl(&["exec", "vols", "-c", c, "--", "sh", "-c", cmd], None);
        assert!(ok, "exec in {c}: {err}");
        out
    };
    let ns = "readlink /proc/self/ns/ipc; readlink /proc/self/ns/uts";
    let (writer, web) = (in_c("writer", ns), in_c("web", ns));
    assert_eq!(writer, web);
    let host = |t: &str| {
        std::fs::read_link(format!("/proc/self/ns/{t}"))
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    assert!(
        !writer.contains(&host("ipc")) && !writer.contains(&host("uts")),
        "{writer}"
    );
    in_c("writer", "echo shared > /dev/shm/note");
    assert_eq!(in_c("web", "cat /dev/shm/note"), "shared\n");
    assert_eq!(in_c("web", "hostname"), "vols\n");
    let before_delete = lab.leftovers(&uid);
    delete_and_check_clean(&lab, "vols", &uid);
    let after = lab.leftovers(&uid);
    assert!(
        before_delete.2 > after.2,
        "pod mounts are gone: {before_delete:?} {after:?}"
    );
    assert_eq!(after.2, 0, "no mount under the lab is left");
}

/// `moat ps` / `moat pods` against the run dir of a live agent.
fn moat_ps(lab: &Lab, what: &str) -> Vec<Vec<String>> {
    let (ok, out, err) = run(Command::new(moat_bin())
        .arg(what)
        .arg("--run-dir")
        .arg(lab.path("run")));
    assert!(ok, "moat {what}: {err}");
    let mut lines = out.lines();
    let head = lines.next().unwrap_or("");
    assert!(
        head.starts_with(if what == "ps" {
            "CONTAINER "
        } else {
            "POD ID "
        }),
        "{out}"
    );
    lines
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

#[test]
fn serial_agent_ps_lists_containers_and_sandboxes_with_handler_state_and_pid() {
    let mut lab = Lab::new("ps");
    lab.import_busybox();
    lab.start(&[]);
    apply(
        &lab,
        &POD.replace("NAME", "listed").replace("NODE", &lab.node),
    );
    let (ip, uid) = running_ip(&lab, "listed");
    let id = container_status(&lab, "listed")["containerID"]
        .as_str()
        .unwrap_or("")
        .trim_start_matches("runc://")
        .to_string();
    let (_, out, _) = run(Command::new("runc")
        .arg("--root")
        .arg(lab.runtime_root())
        .args(["state", &id]));
    let runc_pid = serde_json::from_str::<Value>(&out).unwrap_or(Value::Null)["pid"]
        .as_i64()
        .expect("runc knows the container's pid");

    // CONTAINER IMAGE CREATED STATE NAME ATTEMPT PID POD NAMESPACE RUNTIME
    let rows = moat_ps(&lab, "ps");
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r = &rows[0];
    assert_eq!(r[0], id);
    assert_eq!(r[1], "localhost/busybox:latest");
    assert_eq!(
        (r[3].as_str(), r[4].as_str(), r[5].as_str()),
        ("Running", "web", "0")
    );
    assert_eq!(r[6], runc_pid.to_string(), "the pid runc reports");
    assert!(
        Path::new(&format!("/proc/{}", r[6])).exists(),
        "pid {} is alive",
        r[6]
    );
    assert_eq!(
        (r[7].as_str(), r[8].as_str(), r[9].as_str()),
        ("listed", "default", "runc")
    );

    // POD ID CREATED STATE NAME NAMESPACE IP RUNTIME CONTAINERS
    let rows = moat_ps(&lab, "pods");
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r = &rows[0];
    assert_eq!(r[0], uid);
    assert_eq!(
        (r[2].as_str(), r[3].as_str(), r[4].as_str()),
        ("Ready", "listed", "default")
    );
    assert_eq!((&r[5], r[6].as_str(), r[7].as_str()), (&ip, "runc", "1"));

    // The container's end shows at once (the shim's exit file), with no pid.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(runc_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    lab.wait("moat ps to stop showing it running", 20, || {
        moat_ps(&lab, "ps")
            .first()
            .is_some_and(|r| r[3] != "Running" && r.iter().all(|c| *c != runc_pid.to_string()))
    });
    delete_and_check_clean(&lab, "listed", &uid);
    assert!(moat_ps(&lab, "ps").is_empty());
    assert!(moat_ps(&lab, "pods").is_empty());
}

#[test]
fn serial_agent_rotates_container_logs_and_kubectl_logs_reads_the_current_file() {
    let mut lab = Lab::new("logrot");
    lab.import_busybox();
    lab.start(&[
        "--container-log-max-size",
        "2Ki",
        "--container-log-max-files",
        "3",
        "--container-log-monitor-interval",
        "1s",
    ]);
    let manifest = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: chatty}}
spec:
  nodeName: {}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: localhost/busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "trap 'exit 0' TERM; i=0; while true; do echo line $i padding-padding-padding-padding-padding-padding-padding; i=$((i+1)); usleep 20000; done"]
"#,
        lab.node
    );
    apply(&lab, &manifest);
    let (_, uid) = running_ip(&lab, "chatty");
    let dir = lab
        .path("logs")
        .join(format!("default_chatty_{uid}"))
        .join("c");
    let files = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    // Rotated as the kubelet names them: 0.log.<YYYYmmdd-HHMMSS>, older ones gzip'd, never
    // more than --container-log-max-files files.
    let stamped = |n: &str, ext: &str| {
        n.strip_prefix("0.log.")
            .and_then(|s| s.strip_suffix(ext))
            .is_some_and(|t| {
                t.len() == 15
                    && t.as_bytes()[8] == b'-'
                    && t.bytes().filter(u8::is_ascii_digit).count() == 14
            })
    };
    lab.wait("current, rotated and compressed logs", 40, || {
        let f = files();
        assert!(f.len() <= 3, "more files than allowed: {f:?}");
        f.contains(&"0.log".to_string())
            && f.iter().any(|n| stamped(n, ".gz"))
            && f.iter().any(|n| stamped(n, ""))
    });

    // kubectl logs reads the current file: recent lines only, consecutive, complete.
    let (ok, out, err) = lab.kubectl(&["logs", "chatty"], None);
    assert!(ok, "logs: {err}");
    let nums: Vec<u64> = out
        .lines()
        .map(|l| {
            l.strip_prefix("line ")
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected log line {l:?}"))
        })
        .collect();
    assert!(!nums.is_empty(), "empty logs after a rotation");
    assert!(
        nums[0] > 0,
        "the rotated-away lines are not in the current file"
    );
    assert!(
        nums.windows(2).all(|w| w[1] == w[0] + 1),
        "lines missing or repeated: {nums:?}"
    );
    let (ok, out, err) = lab.kubectl(&["logs", "chatty", "--tail", "1"], None);
    assert!(ok && out.starts_with("line "), "{out} {err}");

    // kubectl logs -f goes on from file to file: nothing lost or repeated across rotations.
    let before = files();
    let o = lab
        .in_ns("timeout")
        .args(["6", KUBECTL, "--kubeconfig"])
        .arg(lab.path("kubeconfig.yaml"))
        .args(["logs", "-f", "chatty"])
        .output()
        .expect("kubectl logs -f");
    let text = String::from_utf8_lossy(&o.stdout);
    let complete = match text.rfind('\n') {
        Some(i) => &text[..i],
        None => "",
    };
    let nums: Vec<u64> = complete
        .lines()
        .filter_map(|l| l.strip_prefix("line ")?.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(nums.len(), complete.lines().count(), "{complete}");
    assert!(
        nums.windows(2).all(|w| w[1] == w[0] + 1),
        "lines missing or repeated while following: {nums:?}"
    );
    assert_ne!(files(), before, "no rotation happened while following");
    assert!(nums.len() > 100, "followed only {} lines", nums.len());
    delete_and_check_clean(&lab, "chatty", &uid);
}

#[test]
fn serial_agent_joins_with_server_and_token_without_a_kubeconfig() {
    let mut lab = Lab::new("join");
    lab.import_busybox();
    lab.start_server(false, &[]);
    let url = lab.server_url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let token_file = lab.path("token");
    let ca = lab.path("ca.crt");
    let agent = |args: &[&str]| {
        run(lab
            .in_ns(moat_bin().to_str().expect("utf-8 path"))
            .arg("agent")
            .args(args)
            .args(["--node-name", "never-registered", "--agent-listen", "off"])
            .arg("--run-dir")
            .arg(lab.path("run-refused")))
    };
    // Misuse is refused before anything is touched, and plainly.
    let (ok, _, err) = agent(&["--server", &url, "--token", "x"]);
    assert!(!ok && err.contains("--ca-file"), "{err}");
    let (ok, _, err) = agent(&["--token", "x"]);
    assert!(!ok && err.contains("go with --server"), "{err}");
    // Unverified TLS reaches the server, which refuses a wrong token.
    let (ok, _, err) = agent(&[
        "--server",
        &url,
        "--token",
        "wrong",
        "--insecure-skip-tls-verify",
    ]);
    assert!(!ok && err.contains("401"), "{err}");
    // The server's certificate must chain to the CA given.
    let (ok, _, err) = agent(&[
        "--server",
        &url,
        "--token",
        "wrong",
        "--ca-file",
        "/etc/ssl/certs/ca-certificates.crt",
    ]);
    assert!(!ok && err.contains("certificate"), "{err}");
    assert!(!lab.path("run-refused/pods").exists());

    lab.start_agent(&[
        "--server",
        &url,
        "--token-file",
        token_file.to_str().expect("utf-8"),
        "--ca-file",
        ca.to_str().expect("utf-8"),
    ]);
    lab.wait("the joined node to be Ready", 30, || {
        let (ok, out, _) = lab.kubectl(
            &[
                "get",
                "node",
                &lab.node,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ],
            None,
        );
        ok && out == "True"
    });
    let (ok, out, _) = lab.kubectl(&["get", "node", &lab.node, "-o", "json"], None);
    assert!(ok);
    let node: Value = serde_json::from_str(&out).expect("node json");
    assert_eq!(node["spec"]["podCIDR"], "10.42.77.0/24");
    assert_eq!(
        node["metadata"]["labels"]["kubernetes.io/hostname"],
        lab.node.as_str()
    );
    let (ok, _, err) = lab.kubectl(&["get", "lease", "-n", "kube-node-lease", &lab.node], None);
    assert!(ok, "lease: {err}");

    // It runs pods, and the API server reaches its endpoint with the token it joined with.
    apply(
        &lab,
        &POD.replace("NAME", "joined").replace("NODE", &lab.node),
    );
    let (ip, uid) = running_ip(&lab, "joined");
    assert!(ip.starts_with("10.42.77."), "{ip}");
    let (ok, out, err) = lab.kubectl(&["logs", "joined"], None);
    assert!(ok, "logs: {err}");
    assert_eq!(out, "serving joined\n");
    delete_and_check_clean(&lab, "joined", &uid);
}

/// SIGTERM to a lab process; its exit status once it has ended (within 40 s).
fn sigterm(lab: &Lab, child: &mut Child) -> std::process::ExitStatus {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let mut status = None;
    lab.wait("the process to exit after SIGTERM", 40, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    status.expect("exit status")
}

/// The runc id of the pod's first container.
fn runc_id(lab: &Lab, pod: &str) -> String {
    container_status(lab, pod)["containerID"]
        .as_str()
        .unwrap_or("")
        .trim_start_matches("runc://")
        .to_string()
}

/// The runc state (status, pid) of a container.
fn runc_state(lab: &Lab, id: &str) -> (String, i64) {
    let (_, out, _) = run(Command::new("runc")
        .arg("--root")
        .arg(lab.runtime_root())
        .args(["state", id]));
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    (
        v["status"].as_str().unwrap_or("").to_string(),
        v["pid"].as_i64().unwrap_or(0),
    )
}

fn lease_renew_time(lab: &Lab) -> String {
    lab.kubectl(
        &[
            "get",
            "lease",
            "-n",
            "kube-node-lease",
            &lab.node,
            "-o",
            "jsonpath={.spec.renewTime}",
        ],
        None,
    )
    .1
}

#[test]
fn serial_agent_sigterm_of_server_stops_cleanly_and_a_restart_readopts_the_pods() {
    let mut lab = Lab::new("term");
    lab.import_busybox();
    lab.start(&[]);
    apply(
        &lab,
        &POD.replace("NAME", "calm").replace("NODE", &lab.node),
    );
    let (ip, uid) = running_ip(&lab, "calm");
    let before = container_status(&lab, "calm");
    let id = runc_id(&lab, "calm");
    let (st, pid) = runc_state(&lab, &id);
    assert_eq!(st, "running");

    let mut server = lab.server.take().expect("server");
    let status = sigterm(&lab, &mut server);
    assert!(status.success(), "exit after SIGTERM: {status:?}");
    let log = lab.server_log();
    assert!(
        log.contains("node agent stopped; its pods keep running"),
        "{log}"
    );
    assert!(log.contains("moat server stopped"), "{log}");
    // The pod was left alone: same process, still serving from its netns.
    assert_eq!(runc_state(&lab, &id), ("running".into(), pid));
    assert_eq!(fetch(&lab, &ip), "calm");

    lab.start(&[]);
    let hb = lease_renew_time(&lab);
    lab.wait("a lease renewal from the restarted agent", 30, || {
        lease_renew_time(&lab) != hb
    });
    let after = container_status(&lab, "calm");
    assert_eq!(after["containerID"], before["containerID"]);
    assert_eq!(after["restartCount"], 0);
    assert_eq!(runc_state(&lab, &id), ("running".into(), pid));
    delete_and_check_clean(&lab, "calm", &uid);
}

#[test]
fn serial_agent_sigterm_of_moat_agent_leaves_pods_running_for_the_next_one() {
    let mut lab = Lab::new("aterm");
    lab.import_busybox();
    lab.start_server(false, &[]);
    let kubeconfig = lab.path("kubeconfig.yaml");
    let join = ["--kubeconfig", kubeconfig.to_str().expect("utf-8")];
    lab.start_agent(&join);
    apply(
        &lab,
        &POD.replace("NAME", "stays").replace("NODE", &lab.node),
    );
    let (ip, uid) = running_ip(&lab, "stays");
    let before = container_status(&lab, "stays");
    let id = runc_id(&lab, "stays");
    let (st, pid) = runc_state(&lab, &id);
    assert_eq!(st, "running");

    let mut agent = lab.agent.take().expect("agent");
    let status = sigterm(&lab, &mut agent);
    assert!(status.success(), "exit after SIGTERM: {status:?}");
    assert!(lab.server_log().contains("node agent stopped"));
    assert_eq!(runc_state(&lab, &id), ("running".into(), pid));
    assert_eq!(fetch(&lab, &ip), "stays");

    lab.start_agent(&join);
    let hb = lease_renew_time(&lab);
    lab.wait("a lease renewal from the new agent", 30, || {
        lease_renew_time(&lab) != hb
    });
    let after = container_status(&lab, "stays");
    assert_eq!(after["containerID"], before["containerID"]);
    assert_eq!(after["restartCount"], 0);
    assert_eq!(runc_state(&lab, &id), ("running".into(), pid));
    // Its loop runs: the deletion is carried out.
    delete_and_check_clean(&lab, "stays", &uid);
}

#[test]
fn serial_agent_resolves_env_value_from_and_expands_command_references() {
    let mut lab = Lab::new("env");
    lab.import_busybox();
    lab.start(&[]);
    let manifest = format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: settings}}
data: {{mode: fast, LEVEL: "3"}}
---
apiVersion: v1
kind: Secret
metadata: {{name: creds}}
data: {{password: czNjcmV0}}
---
apiVersion: v1
kind: Pod
metadata: {{name: envy, labels: {{app: shop}}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  restartPolicy: Never
  containers:
  - name: c
    image: localhost/busybox:latest
    imagePullPolicy: IfNotPresent
    envFrom: [{{configMapRef: {{name: settings}}, prefix: CFG_}}]
    env:
    - {{name: POD, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
    - {{name: NS, valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}}}
    - {{name: IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
    - {{name: NODE, valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}}}
    - {{name: APP, valueFrom: {{fieldRef: {{fieldPath: "metadata.labels['app']"}}}}}}
    - {{name: MODE, valueFrom: {{configMapKeyRef: {{name: settings, key: mode}}}}}}
    - {{name: PASS, valueFrom: {{secretKeyRef: {{name: creds, key: password}}}}}}
    - {{name: URL, value: "http://$(IP):8080/$(POD)"}}
    command: ["sh", "-c", "echo arg=$(POD).$(NS); env | grep -E '^(POD|NS|IP|NODE|APP|MODE|PASS|URL|CFG_.*)=' | sort"]
---
apiVersion: v1
kind: Pod
metadata: {{name: keyless}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: localhost/busybox:latest
    imagePullPolicy: IfNotPresent
    env: [{{name: X, valueFrom: {{configMapKeyRef: {{name: settings, key: absent}}}}}}]
    command: ["true"]
"#,
        node = lab.node
    );
    apply(&lab, &manifest);
    let mut pod = Value::Null;
    lab.wait("envy to complete", 60, || {
        pod = lab.pod("envy").unwrap_or(Value::Null);
        pod["status"]["phase"] == "Succeeded"
    });
    let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let _ = std::fs::write(lab.path("uids"), &uid);
    let ip = pod["status"]["podIP"].as_str().unwrap_or("").to_string();
    assert!(ip.starts_with("10.42.77."), "{ip}");
    let (ok, out, err) = lab.kubectl(&["logs", "envy"], None);
    assert!(ok, "logs: {err}");
    let want = format!(
        "arg=envy.default\nAPP=shop\nCFG_LEVEL=3\nCFG_mode=fast\nIP={ip}\nMODE=fast\nNODE={}\nNS=default\nPASS=s3cret\nPOD=envy\nURL=http://{ip}:8080/envy\n",
        lab.node
    );
    assert_eq!(out, want);

    // A missing key is the kubelet's CreateContainerConfigError, with its message.
    lab.wait("keyless to report the missing key", 30, || {
        let w = &container_status(&lab, "keyless")["state"]["waiting"];
        w["reason"] == "CreateContainerConfigError"
            && w["message"] == "couldn't find key absent in ConfigMap default/settings"
    });
    let (ok, _, err) = lab.kubectl(&["delete", "pod", "keyless", "--timeout=60s"], None);
    assert!(ok, "delete: {err}");
    delete_and_check_clean(&lab, "envy", &uid);
}

#[test]
fn serial_agent_runs_named_image_users_with_their_passwd_groups() {
    let mut lab = Lab::new("user");
    lab.import_busybox();
    lab.import_busybox_as("nobody", "nobody");
    lab.import_busybox_as("ghost", "ghost");
    lab.start(&[]);
    let pod = |name: &str, image: &str, sc: &str| {
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  restartPolicy: Never
  containers:
  - name: c
    image: {image}
    imagePullPolicy: IfNotPresent
    command: ["id"]
    securityContext: {sc}
"#,
            node = lab.node
        )
    };
    apply(&lab, &pod("named", "localhost/busybox:nobody", "{}"));
    // runAsUser without runAsGroup: the group is that uid's passwd entry's.
    apply(
        &lab,
        &pod("byuid", "localhost/busybox:latest", "{runAsUser: 65534}"),
    );
    apply(&lab, &pod("ghost", "localhost/busybox:ghost", "{}"));
    for name in ["named", "byuid"] {
        lab.wait(&format!("{name} to complete"), 60, || {
            lab.pod(name)
                .is_some_and(|p| p["status"]["phase"] == "Succeeded")
        });
        let (ok, out, err) = lab.kubectl(&["logs", name], None);
        assert!(ok, "logs: {err}");
        assert_eq!(
            out, "uid=65534(nobody) gid=65534(nobody) groups=65534(nobody)\n",
            "{name}"
        );
    }
    lab.wait("ghost to say its user does not exist", 30, || {
        let w = &container_status(&lab, "ghost")["state"]["waiting"];
        w["reason"] == "CreateContainerConfigError"
            && w["message"]
                .as_str()
                .is_some_and(|m| m.contains("unable to find user ghost"))
    });
    for name in ["ghost", "byuid"] {
        let (ok, _, err) = lab.kubectl(&["delete", "pod", name, "--timeout=60s"], None);
        assert!(ok, "delete: {err}");
    }
    let uid = lab.pod("named").expect("pod")["metadata"]["uid"]
        .as_str()
        .unwrap_or("")
        .to_string();
    delete_and_check_clean(&lab, "named", &uid);
}

/// The Kata row end to end: a RuntimeClass whose handler is moat-runtime puts the pod in its
/// own microVM (TCG here) on the CNI network the agent made, while the node keeps serving it
/// like any other pod: IP in the podCIDR, reachable by that IP, `kubectl logs` and
/// `kubectl exec` (which runs in the guest), and a delete that leaves no VM behind.
#[test]
fn serial_agent_kata_runtime_class_runs_the_pod_in_a_vm() {
    let mut lab = Lab::new("kata");
    lab.import_busybox();
    let kata = Kata::new(&lab);
    lab.start(&["--runtime-config", kata.handlers.to_str().expect("utf-8")]);
    apply(
        &lab,
        "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata: {name: kata}\nhandler: kata\n",
    );
    apply(
        &lab,
        &POD.replace("NAME", "untrusted")
            .replace("NODE", &lab.node)
            .replace("  containers:", "  runtimeClassName: kata\n  containers:"),
    );
    apply(
        &lab,
        &POD.replace("NAME", "trusted").replace("NODE", &lab.node),
    );
    let (ip, uid) = running_ip(&lab, "untrusted");
    let (trusted_ip, trusted_uid) = running_ip(&lab, "trusted");
    let mut got = String::new();
    lab.wait("the VM pod to answer on its pod IP", 60, || {
        got = fetch(&lab, &ip);
        got == "untrusted"
    });
    assert_eq!(fetch(&lab, &trusted_ip), "trusted");
    let qemus = || kata.qemus();
    assert_eq!(qemus(), 1, "one VM, for the kata pod only");
    // A pod of two containers: one VM holds both, and they talk over localhost.
    apply(
        &lab,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: duo}}
spec:
  nodeName: {}
  runtimeClassName: kata
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: localhost/busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "hostname > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"]
  - name: client
    image: localhost/busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "until wget -q -O- http://127.0.0.1:8080/; do sleep 0.5; done; exec sleep 3600"]
"#,
            lab.node
        ),
    );
    let (_, duo_uid) = running_ip(&lab, "duo");
    lab.wait(
        "the sidecar to reach its neighbour over localhost",
        60,
        || {
            lab.kubectl(&["logs", "duo", "-c", "client"], None)
                .1
                .contains("duo")
        },
    );
    assert_eq!(qemus(), 2, "the two containers of duo share one VM");
    // Our kernel's release is the first line of its asset stamp.
    let guest = std::fs::read_to_string(kata.assets.join("stamp-moat")).expect("stamp");
    let guest = guest.lines().next().unwrap_or_default().to_string();
    let (ok, out, err) = lab.kubectl(&["exec", "untrusted", "--", "uname", "-r"], None);
    assert!(ok, "exec: {err}");
    assert_eq!(out.trim(), guest, "kubectl exec runs in the guest");
    let (ok, out, _) = lab.kubectl(&["exec", "trusted", "--", "uname", "-r"], None);
    assert!(ok);
    assert_ne!(out.trim(), guest, "the runc pod shares the host kernel");
    let (ok, logs, err) = lab.kubectl(&["logs", "untrusted"], None);
    assert!(ok, "logs: {err}");
    assert!(logs.contains("serving untrusted"), "{logs}");
    // Issue 16: the VM is sized from the pod (defaults 1 vCPU / 256 MiB + its limits), seen
    // from inside; a size the host cannot give fails the pod with the reason in its events.
    // Requests stay small so the two-core node can schedule it.
    let sized = |name: &str, limits: &str| {
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {}
  runtimeClassName: kata
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: localhost/busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "echo cpus=$(nproc); grep MemTotal /proc/meminfo; exec sleep 3600"]
    resources: {{requests: {{cpu: 100m, memory: 64Mi}}, limits: {limits}}}
"#,
            lab.node
        )
    };
    apply(&lab, &sized("sized", "{cpu: 2, memory: 1Gi}"));
    apply(&lab, &sized("toobig", "{cpu: 1, memory: 100Ti}"));
    let (_, sized_uid) = running_ip(&lab, "sized");
    let mut logs = String::new();
    lab.wait("the sized pod to report its VM", 60, || {
        logs = lab.kubectl(&["logs", "sized"], None).1;
        logs.contains("MemTotal")
    });
    assert!(logs.contains("cpus=3"), "1 + 2 vCPUs: {logs}");
    let mib: u64 = logs
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|k| k.parse::<u64>().ok())
        .map(|k| k / 1024)
        .unwrap_or_else(|| panic!("{logs}"));
    assert!((1180..=1280).contains(&mib), "256 + 1024 MiB VM: {logs}");
    lab.wait("the impossible VM size in the pod status", 60, || {
        container_status(&lab, "toobig")["state"]["waiting"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("more than this host's"))
    });
    let (_, events, _) = lab.kubectl(
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=toobig",
            "-o",
            "json",
        ],
        None,
    );
    assert!(events.contains("sizing the VM"), "{events}");
    // The leftover counts are per node: delete both, then nothing may remain.
    let (ok, _, err) = lab.kubectl(
        &[
            "delete",
            "pod",
            "trusted",
            "untrusted",
            "duo",
            "sized",
            "toobig",
            "--timeout=90s",
        ],
        None,
    );
    assert!(ok, "delete: {err}");
    lab.wait("both pods and everything of them to go", 60, || {
        let l = lab.leftovers(&uid);
        lab.pod("trusted").is_none()
            && lab.pod("untrusted").is_none()
            && (l.0, l.1, l.3) == (0, 0, 0)
            && !lab.path(&format!("run/pods/{uid}")).exists()
            && !lab.path(&format!("run/pods/{trusted_uid}")).exists()
            && !lab.path(&format!("run/pods/{duo_uid}")).exists()
            && !lab.path(&format!("run/pods/{sized_uid}")).exists()
            && lab.pod("duo").is_none()
            && lab.pod("sized").is_none()
            && lab.pod("toobig").is_none()
    });
    lab.wait("the VM to stop with its pod", 30, || qemus() == 0);
}

//! The pod worker over recording fakes (runtime, netns, CNI, images, hooks): the lifecycle
//! and the node's IO together, without root.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use super::*;
use crate::bundle::ImageDefaults;
use crate::config::{AgentConfig, Join};
use crate::handlers::Handlers;
use crate::hooks::RecordingHooks;
use crate::hostinfo::FakeHost;
use crate::images::{ImageError, Images};
use crate::node::Parts;
use crate::probe::fake::{Call, FakeDialer, Reply};
use crate::runtime::RecordingRuntime;
use crate::sandbox::FakeNetns;

#[derive(Default)]
struct FakeImages {
    calls: Mutex<Vec<String>>,
}

impl Images for FakeImages {
    fn resolve(
        &self,
        image: &str,
        _p: Option<&str>,
    ) -> Result<(ImageDefaults, String), ImageError> {
        if image == "missing" {
            return Err(ImageError::NotPresent(image.into()));
        }
        Ok((
            ImageDefaults {
                cmd: Some(vec!["sh".into()]),
                ..Default::default()
            },
            "sha256:abc".into(),
        ))
    }
    fn prepare(&self, image: &str, id: &str, _t: &Path) -> Result<(), ImageError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("prepare {image} {id}"));
        Ok(())
    }
    fn release(&self, id: &str, _t: &Path) -> Result<(), ImageError> {
        self.calls.lock().unwrap().push(format!("release {id}"));
        Ok(())
    }
}

struct Fx {
    dir: tempfile::TempDir,
    rt: Arc<RecordingRuntime>,
    netns: Arc<FakeNetns>,
    cni: Arc<moat_cni::FakeExec>,
    hooks: Arc<RecordingHooks>,
    dialer: Arc<FakeDialer>,
}

const RESULT: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"10.42.0.9/24","gateway":"10.42.0.1","interface":0}]}"#;
const T0: i64 = 1_800_000_000_000;

impl Fx {
    fn new() -> Fx {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("cni-bin");
        std::fs::create_dir_all(&bin).unwrap();
        for p in ["bridge", "portmap"] {
            std::fs::write(bin.join(p), b"").unwrap();
        }
        Fx {
            dir,
            rt: Arc::new(RecordingRuntime::default()),
            netns: Arc::new(FakeNetns::default()),
            cni: Arc::new(moat_cni::FakeExec::default()),
            hooks: Arc::new(RecordingHooks::default()),
            dialer: Arc::new(FakeDialer::default()),
        }
    }

    fn node(&self) -> Arc<Node> {
        let run = self.dir.path().join("run");
        let cfg = AgentConfig {
            node_name: "n1".into(),
            join: Join::Kubeconfig(PathBuf::new()),
            run_dir: run.clone(),
            log_dir: self.dir.path().join("logs"),
            image_root: PathBuf::new(),
            cni_conf_dir: None,
            cni_bin_dirs: vec![self.dir.path().join("cni-bin")],
            pod_cidr: Some("10.42.0.0/24".into()),
            node_annotations: Default::default(),
            cgroup_parent: "/moat".into(),
            handlers: Handlers::defaults(&run),
            shim: Vec::new(),
            node_ip: Some("192.0.2.10".into()),
            listen: None,
            log_policy: crate::logrotate::Policy::new(16, 3).unwrap(),
            log_monitor_interval: Duration::from_secs(10),
            node_cpu_millis: None,
            node_memory_bytes: None,
            cluster_dns: Some(crate::hooks::ClusterDns {
                servers: vec!["10.43.0.10".into()],
                domain: "cluster.local".into(),
            }),
            disabled_loops: Default::default(),
        };
        let parts = Parts {
            runtime: self.rt.clone(),
            netns: self.netns.clone(),
            cni: self.cni.clone(),
            images: Arc::new(FakeImages::default()),
            hooks: self.hooks.clone(),
            host: Arc::new(FakeHost::default()),
            probes: self.dialer.clone(),
            objects: None,
        };
        Arc::new(
            Node::new(
                cfg,
                parts,
                moat_cni::NetworkList::moat_default("10.42.0.0/24", None),
            )
            .unwrap(),
        )
    }

    /// bridge and portmap ADD answers.
    fn cni_reply(&self) {
        let mut r = self.cni.replies.lock().unwrap();
        r.push((true, RESULT.as_bytes().to_vec()));
        r.push((true, RESULT.as_bytes().to_vec()));
    }

    fn cni_commands(&self) -> Vec<String> {
        self.cni
            .calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| {
                format!(
                    "{} {}",
                    c.env["CNI_COMMAND"],
                    c.plugin.file_name().unwrap().to_string_lossy()
                )
            })
            .collect()
    }

    fn worker(&self, node: &Arc<Node>, p: &Pod) -> PodWorker {
        PodWorker::new(
            node.clone(),
            Some((Arc::new(p.clone()), Ok(runc(node)))),
            None,
        )
    }
}

fn pod(policy: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "u-1"},
        "spec": {"nodeName": "n1", "restartPolicy": policy,
            "containers": [{"name": "c", "image": "busybox", "command": ["httpd", "-f"]}]},
    }))
    .unwrap()
}

fn deleting(p: &Pod, grace: i64) -> Pod {
    let mut v = serde_json::to_value(p).unwrap();
    v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    v["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
    serde_json::from_value(v).unwrap()
}

fn runc(n: &Node) -> crate::Handler {
    n.cfg.handlers.get(None).unwrap().clone()
}

fn status(r: Report) -> Value {
    crate::status::patch_body(&r.status.expect("a status"))["status"].take()
}

#[test]
fn pod_runs_restarts_with_backoff_and_tears_down_completely() {
    let fx = Fx::new();
    fx.cni_reply();
    let n = fx.node();
    let p = pod("Always");
    let mut w = fx.worker(&n, &p);
    let s = status(w.sync(T0));
    assert_eq!(s["phase"], "Running", "{s}");
    assert_eq!(s["podIP"], "10.42.0.9");
    assert_eq!(s["containerStatuses"][0]["containerID"], "runc://u-1-c-0");
    let calls = fx.rt.calls();
    assert!(
        calls.iter().any(|c| c.starts_with("runc create u-1-c-0 ")),
        "{calls:?}"
    );
    assert!(calls.contains(&"runc start u-1-c-0".to_string()));
    assert_eq!(fx.cni_commands(), ["ADD bridge", "ADD portmap"]);
    // The network hook saw the pod's IP before any container was created.
    assert_eq!(*fx.hooks.calls.lock().unwrap(), ["ready u-1 10.42.0.9"]);
    // The bundle's config.json is what bundle::spec produced, joined to the pod netns.
    let cfg: Value = serde_json::from_slice(
        &std::fs::read(
            fx.dir
                .path()
                .join("run/pods/u-1/containers/u-1-c-0/config.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let netns = fx.dir.path().join("run/netns/u-1");
    let pod_ns = |t: &str| fx.dir.path().join(format!("run/pods/u-1/ns-{t}"));
    let nss = cfg["linux"]["namespaces"].as_array().unwrap();
    assert!(nss.contains(&json!({"type": "network", "path": netns})));
    assert!(nss.contains(&json!({"type": "ipc", "path": pod_ns("ipc")})));
    assert!(nss.contains(&json!({"type": "uts", "path": pod_ns("uts")})));
    // resolv.conf from the cluster DNS settings (ClusterFirst).
    let resolv = std::fs::read_to_string(fx.dir.path().join("run/pods/u-1/resolv.conf")).unwrap();
    assert!(resolv.contains("nameserver 10.43.0.10"), "{resolv}");
    assert!(
        resolv.contains("search default.svc.cluster.local"),
        "{resolv}"
    );

    // Exit 1: CrashLoopBackOff, old container removed, no immediate restart.
    fx.rt.exit("u-1-c-0", 1);
    let s = status(w.sync(T0 + 1_000));
    let cs = &s["containerStatuses"][0];
    assert_eq!(cs["state"]["waiting"]["reason"], "CrashLoopBackOff", "{s}");
    assert_eq!(cs["lastState"]["terminated"]["exitCode"], 1);
    assert_eq!(s["phase"], "Running");
    assert!(fx.rt.calls().contains(&"runc delete u-1-c-0".to_string()));
    let before = fx.rt.calls().len();
    let _ = w.sync(T0 + 2_000);
    assert!(!fx.rt.calls()[before..].iter().any(|c| c.contains("create")));
    // The worker wants to look again when the back-off ends, not before.
    assert!(w.wake_ms() <= T0 + 11_000, "{}", w.wake_ms());
    // After the 10 s back-off the next run starts, counted as a restart.
    let s = status(w.sync(T0 + 12_000));
    assert_eq!(s["containerStatuses"][0]["restartCount"], 1, "{s}");
    assert!(
        fx.rt
            .calls()
            .iter()
            .any(|c| c.starts_with("runc create u-1-c-1 "))
    );

    // A restarted agent re-adopts the pod from its state file: no second sandbox.
    drop(w);
    let rec = crate::podstate::load(&n.cfg.run_dir, "u-1").expect("record");
    let n = fx.node();
    let mut w = PodWorker::new(n.clone(), None, Some(rec));
    w.update(Arc::new(p.clone()), Ok(runc(&n)));
    let _ = w.sync(T0 + 13_000);
    let pod_dir = fx.dir.path().join("run/pods/u-1");
    assert_eq!(
        *fx.netns.calls.lock().unwrap(),
        [
            format!("create {}", netns.display()),
            format!(
                "ipc-uts {} {} web",
                pod_dir.join("ns-ipc").display(),
                pod_dir.join("ns-uts").display()
            ),
            format!("shm {}", pod_dir.join("shm").display()),
        ],
        "one sandbox: network, IPC and UTS namespaces and /dev/shm, made once"
    );

    // Deletion: everything goes, its logs too, then the object.
    let logs = fx.dir.path().join("logs/default_web_u-1");
    std::fs::create_dir_all(logs.join("c")).unwrap();
    std::fs::write(logs.join("c/0.log"), "T stdout F x\n").unwrap();
    w.update(Arc::new(deleting(&p, 0)), Ok(runc(&n)));
    let r = w.sync(T0 + 14_000);
    assert!(r.delete_object, "deleted once everything was gone");
    assert!(!pod_dir.exists());
    assert!(!logs.exists());
    let ns_calls = fx.netns.calls.lock().unwrap().clone();
    assert_eq!(
        ns_calls[3..],
        [
            format!("release {}", pod_dir.join("shm").display()),
            format!("release {}", pod_dir.join("ns-ipc").display()),
            format!("release {}", pod_dir.join("ns-uts").display()),
            format!("remove {}", netns.display()),
        ]
    );
    assert_eq!(fx.cni_commands().last().unwrap(), "DEL bridge");
    assert_eq!(
        fx.hooks.calls.lock().unwrap().last().unwrap(),
        "gone u-1 10.42.0.9"
    );
    w.object_deleted(Ok(()), T0 + 14_000);
    assert!(w.finished());
}

#[test]
fn termination_waits_out_the_grace_period_without_blocking_then_kills() {
    let fx = Fx::new();
    fx.cni_reply();
    let n = fx.node();
    let p = pod("Always");
    let mut w = fx.worker(&n, &p);
    status(w.sync(T0));
    fx.rt.ignore_term.lock().unwrap().insert("u-1-c-0".into());
    w.update(Arc::new(deleting(&p, 30)), Ok(runc(&n)));
    let started = std::time::Instant::now();
    let r = w.sync(T0 + 1_000);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "sync returned at once"
    );
    assert!(!r.delete_object);
    assert!(
        fx.rt
            .calls()
            .contains(&"runc kill u-1-c-0 SIGTERM".to_string())
    );
    assert!(matches!(
        w.state().phase(),
        Phase::Terminating { deadline_ms, killed: false } if deadline_ms == T0 + 31_000
    ));
    assert!(w.wake_ms() <= T0 + 1_100, "polls while terminating");
    // Still within the grace period: nothing more.
    let _ = w.sync(T0 + 20_000);
    assert!(!fx.rt.calls().iter().any(|c| c.ends_with("SIGKILL")));
    assert!(fx.dir.path().join("run/pods/u-1").exists());
    // The deadline passes: SIGKILL, then teardown in the same wake-up, then the object.
    let r = w.sync(T0 + 31_000);
    assert!(
        fx.rt
            .calls()
            .contains(&"runc kill u-1-c-0 SIGKILL".to_string())
    );
    assert!(r.delete_object);
    assert!(!fx.dir.path().join("run/pods/u-1").exists());
}

#[test]
fn a_failing_cni_del_keeps_the_pod_object_and_is_retried_with_backoff() {
    let fx = Fx::new();
    fx.cni_reply();
    let n = fx.node();
    let p = pod("Always");
    let mut w = fx.worker(&n, &p);
    status(w.sync(T0));
    // DEL runs the chain in reverse: portmap fails.
    fx.cni
        .replies
        .lock()
        .unwrap()
        .push((false, br#"{"code":11,"msg":"iptables is busy"}"#.to_vec()));
    w.update(Arc::new(deleting(&p, 0)), Ok(runc(&n)));
    let r = w.sync(T0 + 1_000);
    assert!(
        !r.delete_object,
        "the object stays while the node still holds the pod"
    );
    assert!(
        fx.dir.path().join("run/pods/u-1/state.json").exists(),
        "record kept"
    );
    let ev = w.take_events();
    assert!(
        ev.iter()
            .any(|e| e.1 == "FailedKillPod" && e.2.contains("iptables is busy")),
        "{ev:?}"
    );
    let Phase::TearingDown {
        attempts,
        not_before_ms,
    } = w.state().phase()
    else {
        panic!("{:?}", w.state().phase())
    };
    assert_eq!(attempts, 1);
    assert!(not_before_ms > T0 + 1_000);
    // Before the back-off: no new attempt.
    let dels = || {
        fx.cni_commands()
            .iter()
            .filter(|c| c.starts_with("DEL"))
            .count()
    };
    let n_before = dels();
    let _ = w.sync(T0 + 1_500);
    assert_eq!(dels(), n_before);
    // A record survives an agent restart: the next agent goes on tearing down.
    let rec = crate::podstate::load(&n.cfg.run_dir, "u-1").unwrap();
    assert!(matches!(rec.phase, Phase::TearingDown { .. }));
    // After it, DEL succeeds: everything goes, then the object.
    let r = w.sync(not_before_ms);
    assert!(r.delete_object);
    assert!(!fx.dir.path().join("run/pods/u-1").exists());
}

#[test]
fn failing_liveness_probe_kills_and_the_policy_restarts() {
    let fx = Fx::new();
    fx.cni_reply();
    let n = fx.node();
    let mut v = serde_json::to_value(pod("Always")).unwrap();
    v["spec"]["containers"][0]["livenessProbe"] =
        json!({"exec": {"command": ["true"]}, "failureThreshold": 1});
    let p: Pod = serde_json::from_value(v).unwrap();
    let mut w = fx.worker(&n, &p);
    let _ = w.sync(T0);
    assert!(
        fx.rt
            .calls()
            .contains(&"runc exec u-1-c-0 true".to_string())
    );
    assert!(
        fx.rt
            .calls()
            .contains(&"runc kill u-1-c-0 SIGKILL".to_string()),
        "{:?}",
        fx.rt.calls()
    );
    assert!(w.take_events().iter().any(|e| e.1 == "Unhealthy"));
    let s = status(w.sync(T0 + 1_000));
    let cs = &s["containerStatuses"][0];
    assert_eq!(cs["lastState"]["terminated"]["exitCode"], 137, "{s}");
    assert_eq!(cs["state"]["waiting"]["reason"], "CrashLoopBackOff");
}

#[test]
fn http_readiness_probe_dials_the_pod_ip_through_the_parts_dialer() {
    let fx = Fx::new();
    fx.cni_reply();
    let n = fx.node();
    let mut v = serde_json::to_value(pod("Always")).unwrap();
    v["spec"]["containers"][0]["readinessProbe"] =
        json!({"httpGet": {"port": 8080, "path": "/ready"}, "periodSeconds": 2});
    let p: Pod = serde_json::from_value(v).unwrap();
    let mut w = fx.worker(&n, &p);
    let s = status(w.sync(T0));
    assert_eq!(s["containerStatuses"][0]["ready"], false, "refused: {s}");
    let addr = "10.42.0.9:8080".parse().unwrap();
    assert_eq!(
        fx.dialer.calls(),
        vec![Call::HttpGet {
            addr,
            path: "/ready".into(),
            timeout: Duration::from_secs(1),
        }]
    );
    fx.dialer.reply(addr, Reply::Http(200));
    let s = status(w.sync(T0 + 2_500));
    assert_eq!(s["containerStatuses"][0]["ready"], true, "{s}");
    fx.dialer.reply(addr, Reply::Http(500));
    for i in 2..5 {
        let _ = w.sync(T0 + i * 2_500);
    }
    let s = status(w.sync(T0 + 12_500));
    assert_eq!(
        s["containerStatuses"][0]["ready"], false,
        "three failures: {s}"
    );
}

#[test]
fn readiness_probe_gates_ready() {
    let fx = Fx::new();
    fx.cni_reply();
    let n = fx.node();
    let mut v = serde_json::to_value(pod("Always")).unwrap();
    v["spec"]["containers"][0]["readinessProbe"] =
        json!({"exec": {"command": ["check"]}, "periodSeconds": 2});
    let p: Pod = serde_json::from_value(v).unwrap();
    let mut w = fx.worker(&n, &p);
    let s = status(w.sync(T0));
    assert_eq!(s["containerStatuses"][0]["ready"], false, "{s}");
    fx.rt.exec_ok.lock().unwrap().insert("u-1-c-0".into());
    let s = status(w.sync(T0 + 2_500));
    assert_eq!(s["containerStatuses"][0]["ready"], true, "{s}");
}

fn with_init(policy: &str) -> Pod {
    let mut v = serde_json::to_value(pod(policy)).unwrap();
    v["spec"]["initContainers"] = json!([{"name": "i1", "image": "busybox", "command": ["true"]}]);
    serde_json::from_value(v).unwrap()
}

fn condition(s: &Value, t: &str) -> Value {
    s["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == t))
        .map(|c| c["status"].clone())
        .unwrap_or(Value::Null)
}

#[test]
fn init_containers_run_to_success_before_the_app_containers() {
    let fx = Fx::new();
    fx.cni_reply();
    let n = fx.node();
    let p = with_init("Always");
    let mut w = fx.worker(&n, &p);
    let s = status(w.sync(T0));
    assert_eq!(s["phase"], "Pending", "{s}");
    assert_eq!(condition(&s, "Initialized"), "False");
    assert!(
        s["initContainerStatuses"][0]["state"]["running"].is_object(),
        "{s}"
    );
    assert_eq!(
        s["containerStatuses"][0]["state"]["waiting"]["reason"],
        "PodInitializing"
    );
    assert!(!fx.rt.calls().iter().any(|c| c.contains("create u-1-c-")));
    fx.rt.exit("u-1-i1-0", 0);
    let s = status(w.sync(T0 + 1_000));
    assert_eq!(s["phase"], "Running", "{s}");
    assert_eq!(condition(&s, "Initialized"), "True");
    assert_eq!(
        s["initContainerStatuses"][0]["state"]["terminated"]["reason"],
        "Completed"
    );
    assert!(fx.rt.calls().iter().any(|c| c.contains("create u-1-c-0")));
}

#[test]
fn a_failed_init_container_fails_a_never_restart_pod() {
    let fx = Fx::new();
    fx.cni_reply();
    let n = fx.node();
    let p = with_init("Never");
    let mut w = fx.worker(&n, &p);
    status(w.sync(T0));
    fx.rt.exit("u-1-i1-0", 2);
    let s = status(w.sync(T0 + 1_000));
    assert_eq!(s["phase"], "Failed", "{s}");
    assert_eq!(
        s["initContainerStatuses"][0]["state"]["terminated"]["exitCode"],
        2
    );
    assert!(!fx.rt.calls().iter().any(|c| c.contains("create u-1-c-")));
}

#[test]
fn restart_policy_never_leaves_a_finished_pod() {
    let fx = Fx::new();
    fx.cni_reply();
    let n = fx.node();
    let p = pod("Never");
    let mut w = fx.worker(&n, &p);
    status(w.sync(T0));
    fx.rt.exit("u-1-c-0", 0);
    let s = status(w.sync(T0 + 1_000));
    assert_eq!(s["phase"], "Succeeded", "{s}");
    assert_eq!(
        s["containerStatuses"][0]["state"]["terminated"]["reason"],
        "Completed"
    );
}

#[test]
fn start_failures_carry_their_kubernetes_reason() {
    let fx = Fx::new();
    fx.cni_reply();
    fx.rt
        .fail_create
        .lock()
        .unwrap()
        .insert("crun".into(), "cgroups in hybrid mode not supported".into());
    let n = fx.node();
    let crun = n.cfg.handlers.get(Some("crun")).unwrap().clone();
    let p = pod("Always");
    let mut w = PodWorker::new(n.clone(), Some((Arc::new(p.clone()), Ok(crun))), None);
    let s = status(w.sync(T0));
    let wt = &s["containerStatuses"][0]["state"]["waiting"];
    assert_eq!(wt["reason"], "CreateContainerError", "{s}");
    assert!(wt["message"].as_str().unwrap().contains("hybrid"), "{s}");
    assert!(w.take_events().iter().any(|e| e.2.contains("hybrid")));

    // An image that is not there is ErrImagePull, never a message fragment as the reason.
    let fx = Fx::new();
    fx.cni_reply();
    let n = fx.node();
    let mut v = serde_json::to_value(pod("Always")).unwrap();
    v["spec"]["containers"][0]["image"] = json!("missing");
    let p: Pod = serde_json::from_value(v).unwrap();
    let mut w = fx.worker(&n, &p);
    let s = status(w.sync(T0));
    assert_eq!(
        s["containerStatuses"][0]["state"]["waiting"]["reason"], "ErrImagePull",
        "{s}"
    );

    // No handler for the pod's RuntimeClass: Failed, nothing made on the node.
    let fx = Fx::new();
    let n = fx.node();
    let p = pod("Always");
    let mut w = PodWorker::new(
        n.clone(),
        Some((
            Arc::new(p),
            Err(crate::handlers::Unresolved::NotOnNode(
                "kata".into(),
                "runc".into(),
            )),
        )),
        None,
    );
    let s = status(w.sync(T0));
    assert_eq!(s["phase"], "Failed");
    assert_eq!(s["reason"], "RuntimeHandlerNotFound");
    assert!(fx.rt.calls().is_empty());
    assert!(fx.netns.calls.lock().unwrap().is_empty());
}

#[test]
fn a_refusing_network_hook_fails_the_sandbox_before_any_container() {
    let fx = Fx::new();
    fx.cni_reply();
    *fx.hooks.refuse.lock().unwrap() = Some("policy not programmed".into());
    let n = fx.node();
    let p = pod("Always");
    let mut w = fx.worker(&n, &p);
    let s = status(w.sync(T0));
    let wt = &s["containerStatuses"][0]["state"]["waiting"];
    assert_eq!(wt["reason"], "ContainerCreating", "{s}");
    assert!(
        wt["message"]
            .as_str()
            .unwrap()
            .contains("policy not programmed")
    );
    assert!(!fx.rt.calls().iter().any(|c| c.contains("create")));
    // The half-made sandbox was undone (CNI DEL, netns removed).
    assert!(fx.cni_commands().iter().any(|c| c.starts_with("DEL")));
    assert!(!fx.dir.path().join("run/pods/u-1").exists());
}

#[test]
fn a_pod_gone_from_the_api_is_torn_down_without_deleting_an_object() {
    let fx = Fx::new();
    fx.cni_reply();
    let n = fx.node();
    let p = pod("Always");
    let mut w = fx.worker(&n, &p);
    status(w.sync(T0));
    w.gone();
    let r = w.sync(T0 + 1_000);
    assert!(!r.delete_object);
    assert!(w.finished());
    assert!(!fx.dir.path().join("run/pods/u-1").exists());
}

//! Scheduling benchmark (run by bench/scheduler.sh): N Node objects and P pending pods
//! created through the API of a running `moat server`; prints scheduling throughput
//! (pods bound per second, first create to last bind) and create→bound latency, next to
//! the scheduling algorithm alone on the same snapshot (the baseline: what the loop costs
//! on top of the decisions themselves: listing, binding over HTTPS, events).
//!
//! Usage: schedbench <kubeconfig> <nodes> <pods> <concurrency>
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

// The same allocator as the server, so the clients of the benchmark do not take the CPU
// the server needs (two cores in all).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn node(i: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": format!("node-{i:04}"), "labels": {"kubernetes.io/hostname": format!("node-{i:04}"), "zone": format!("z{}", i % 3)}},
        "status": {"allocatable": {"cpu": "32", "memory": "64Gi", "pods": "110"},
                   "capacity": {"cpu": "32", "memory": "64Gi", "pods": "110"},
                   "conditions": [{"type": "Ready", "status": "True"}]}})
}

fn pod(i: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("p-{i:05}"), "labels": {"app": format!("a{}", i % 50)}},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36",
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}})
}

fn parallel(
    n: usize,
    conc: usize,
    f: impl Fn(usize) -> anyhow::Result<()> + Sync,
) -> anyhow::Result<()> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..conc)
            .map(|_| {
                s.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= n {
                            return Ok(());
                        }
                        f(i)?;
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
        }
        Ok(())
    })
}

fn pct(v: &[Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 5 {
        bail!("usage: schedbench <kubeconfig> <nodes> <pods> <concurrency>");
    }
    let c = moat_manager::Client::from_kubeconfig(std::path::Path::new(&a[1]))?;
    let (n, p, conc): (usize, usize, usize) = (a[2].parse()?, a[3].parse()?, a[4].parse()?);

    // Baseline: the algorithm alone over the same nodes and pods.
    let nodes_typed: Vec<k8s_openapi::api::core::v1::Node> = (0..n)
        .map(|i| serde_json::from_value(node(i)))
        .collect::<Result<_, _>>()?;
    let pods_typed: Vec<k8s_openapi::api::core::v1::Pod> = (0..p)
        .map(|i| serde_json::from_value(pod(i)))
        .collect::<Result<_, _>>()?;
    let mut infos: Vec<moat_scheduler::NodeInfo> = nodes_typed
        .into_iter()
        .map(moat_scheduler::NodeInfo::new)
        .collect();
    let t = Instant::now();
    let (mut start, mut placed) = (0usize, 0usize);
    for (tie, pd) in pods_typed.iter().enumerate() {
        if let Ok(Ok(pl)) = moat_scheduler::schedule(pd, &infos, start, tie as u64) {
            start = pl.next_start;
            let req = moat_scheduler::pod_requests(pd)?;
            infos[pl.node].add_pod(pd, &req);
            placed += 1;
        }
    }
    let algo = placed as f64 / t.elapsed().as_secs_f64();

    c.create(
        "/api/v1/namespaces",
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "sched"}}),
    )
    .context("namespace")?;
    let t = Instant::now();
    parallel(n, conc, |i| {
        c.create("/api/v1/nodes", &node(i))
            .map(|_| ())
            .context("node")
    })?;
    println!("{n} nodes created in {:.1} s", t.elapsed().as_secs_f64());

    // Watch for bindings from now on.
    let bound: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let (_, rv) = c.list("/api/v1/namespaces/sched/pods?limit=1")?;
    {
        let (c, bound) = (c.clone(), bound.clone());
        std::thread::spawn(move || {
            let mut rv = rv;
            loop {
                let mut latest = rv.clone();
                let r = c.watch("/api/v1/namespaces/sched/pods", &rv, |e| {
                    let o = &e["object"];
                    if let Some(r) = o["metadata"]["resourceVersion"].as_str() {
                        latest = r.to_string();
                    }
                    if o["spec"]["nodeName"]
                        .as_str()
                        .is_some_and(|x| !x.is_empty())
                        && let (Some(name), Ok(mut b)) =
                            (o["metadata"]["name"].as_str(), bound.lock())
                    {
                        b.entry(name.to_string()).or_insert_with(Instant::now);
                    }
                });
                rv = latest;
                if r.is_err() {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
    }
    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let t0 = Instant::now();
    parallel(p, conc, |i| {
        let v = pod(i);
        let name = v["metadata"]["name"].as_str().unwrap_or("").to_string();
        let t = Instant::now();
        c.create("/api/v1/namespaces/sched/pods", &v)
            .context("pod")?;
        if let Ok(mut m) = created.lock() {
            m.insert(name, t);
        }
        Ok(())
    })?;
    let created_all = t0.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done = bound.lock().map(|b| b.len()).unwrap_or(0);
        if done >= p || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let b = bound.lock().map_err(|_| anyhow::anyhow!("lock"))?.clone();
    let cr = created.lock().map_err(|_| anyhow::anyhow!("lock"))?.clone();
    let last = b.values().max().copied().unwrap_or(t0);
    let mut lat: Vec<Duration> = b
        .iter()
        .filter_map(|(k, t)| cr.get(k).map(|c| t.saturating_duration_since(*c)))
        .collect();
    lat.sort();
    let total = last.saturating_duration_since(t0).as_secs_f64();
    let rate = b.len() as f64 / total;
    println!(
        "{p} pods created in {:.1} s ({:.0}/s)",
        created_all.as_secs_f64(),
        p as f64 / created_all.as_secs_f64()
    );
    println!(
        "bound {}/{p} in {total:.1} s: {rate:.0} pods/s; create→bound p50 {:.0} ms, p99 {:.0} ms",
        b.len(),
        pct(&lat, 0.5).as_secs_f64() * 1000.0,
        pct(&lat, 0.99).as_secs_f64() * 1000.0
    );
    println!(
        "baseline (the algorithm alone, same {n} nodes / {p} pods): {algo:.0} pods/s; API loop / algorithm = {:.3}",
        rate / algo
    );
    println!("goal: >= 1000 pods/s through the API (kube-scheduler's own target is 100 pods/s)");
    Ok(())
}

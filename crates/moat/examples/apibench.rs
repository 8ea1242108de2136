//! API server benchmark (run by bench/apiserver.sh): creates N ConfigMaps and N Pods through
//! the HTTPS API of a running `moat server` with C concurrent clients, lists them, and does
//! the same writes and range reads directly on a store of the same kind as the baseline,
//! so the ratio is the server's overhead (TLS, HTTP, JSON, validation, admission).
//!
//! Usage: apibench <kubeconfig> <server-pid> <n> <concurrency> <baseline: redb:PATH | etcd:URL>
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use moat_store::Store;
use serde_json::{Value, json};

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Run {
    total: Duration,
    lat: Vec<Duration>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.lat.len() as f64 / self.total.as_secs_f64()
    }
}

fn configmap(i: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": format!("cm-{i:05}"), "labels": {"bench": "api", "shard": (i % 10).to_string()}},
        "data": {"config.yaml": format!("key: value-{i}\nother: {}\n", "x".repeat(200))}})
}

fn pod(i: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("pod-{i:05}"), "labels": {"app": "bench", "shard": (i % 10).to_string()}},
        "spec": {"containers": [{"name": "app", "image": "busybox:1.36",
            "command": ["httpd", "-f", "-p", "8080"], "ports": [{"containerPort": 8080}],
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}})
}

fn http_creates(
    client: &moat_manager::Client,
    path: &str,
    n: usize,
    conc: usize,
    make: fn(usize) -> Value,
) -> anyhow::Result<Run> {
    let start = Instant::now();
    let chunks: Vec<Vec<usize>> = (0..conc)
        .map(|t| (0..n).filter(|i| i % conc == t).collect())
        .collect();
    let mut lat = Vec::with_capacity(n);
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|idx| {
                let c = client.clone();
                s.spawn(move || -> anyhow::Result<Vec<Duration>> {
                    let mut l = Vec::with_capacity(idx.len());
                    for i in idx {
                        let t = Instant::now();
                        c.create(path, &make(i))
                            .with_context(|| format!("create #{i}"))?;
                        l.push(t.elapsed());
                    }
                    Ok(l)
                })
            })
            .collect();
        for h in handles {
            lat.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("client thread panicked"))??,
            );
        }
        Ok(())
    })?;
    let total = start.elapsed();
    lat.sort();
    Ok(Run { total, lat })
}

async fn store_creates(
    store: Arc<dyn Store>,
    prefix: &str,
    n: usize,
    conc: usize,
    make: fn(usize) -> Value,
) -> anyhow::Result<Run> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..conc {
        let store = store.clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut l = Vec::new();
            for i in (0..n).filter(|i| i % conc == t) {
                let v = make(i);
                let key = format!("{prefix}{}", v["metadata"]["name"].as_str().unwrap_or(""));
                let t0 = Instant::now();
                store
                    .create(&key, serde_json::to_vec(&v)?)
                    .await
                    .with_context(|| format!("store create {key}"))?;
                l.push(t0.elapsed());
            }
            anyhow::Ok(l)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let total = start.elapsed();
    lat.sort();
    Ok(Run { total, lat })
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<f64>().ok())
            })
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 6 {
        bail!("usage: apibench <kubeconfig> <server-pid> <n> <concurrency> <redb:PATH|etcd:URL>");
    }
    let client = moat_manager::Client::from_kubeconfig(std::path::Path::new(&a[1]))?;
    let pid: u32 = a[2].parse().context("server pid")?;
    let n: usize = a[3].parse().context("n")?;
    let conc: usize = a[4].parse().context("concurrency")?;
    let rt = tokio::runtime::Runtime::new()?;
    let store: Arc<dyn Store> = match a[5].split_once(':') {
        Some(("redb", path)) => {
            Arc::new(moat_store::EmbeddedStore::open(std::path::Path::new(path))?)
        }
        Some(("etcd", url)) => rt.block_on(baseline_etcd(url))?,
        _ => bail!("baseline must be redb:PATH or etcd:URL"),
    };

    client
        .create(
            "/api/v1/namespaces",
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}}),
        )
        .context("creating namespace bench")?;
    let rss0 = rss_mib(pid);
    println!(
        "objects per kind: {n}, concurrent clients: {conc}, baseline: {}",
        a[5]
    );
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>12} {:>10}",
        "operation", "creates/s", "p50 ms", "p99 ms", "list 1 ms", "vs store"
    );
    for (kind, path, prefix, make) in [
        (
            "ConfigMap",
            "/api/v1/namespaces/bench/configmaps",
            "/bench/configmaps/bench/",
            configmap as fn(usize) -> Value,
        ),
        (
            "Pod",
            "/api/v1/namespaces/bench/pods",
            "/bench/pods/bench/",
            pod as fn(usize) -> Value,
        ),
    ] {
        let base = rt.block_on(store_creates(store.clone(), prefix, n, conc, make))?;
        let t = Instant::now();
        let listed = rt.block_on(store.list(prefix, moat_store::ListOptions::default()))?;
        let base_list = t.elapsed();
        anyhow::ensure!(
            listed.items.len() == n,
            "store list returned {}",
            listed.items.len()
        );

        let api = http_creates(&client, path, n, conc, make)?;
        let t = Instant::now();
        let (items, _) = client.list(path)?;
        let api_list = t.elapsed();
        anyhow::ensure!(
            items.len() == n,
            "API list returned {} {kind}s",
            items.len()
        );

        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{:<22} {:>10.0} {:>10.2} {:>10.2} {:>12.1} {:>10}",
            format!("store {kind}"),
            base.rate(),
            ms(pct(&base.lat, 0.5)),
            ms(pct(&base.lat, 0.99)),
            ms(base_list),
            "1.00"
        );
        println!(
            "{:<22} {:>10.0} {:>10.2} {:>10.2} {:>12.1} {:>10.2}",
            format!("HTTP API {kind}"),
            api.rate(),
            ms(pct(&api.lat, 0.5)),
            ms(pct(&api.lat, 0.99)),
            ms(api_list),
            base.rate() / api.rate()
        );
        println!(
            "  ratio (API/store): create throughput {:.2}x slower, p99 {:.2}x, list {:.2}x",
            base.rate() / api.rate(),
            pct(&api.lat, 0.99).as_secs_f64() / pct(&base.lat, 0.99).as_secs_f64().max(1e-9),
            api_list.as_secs_f64() / base_list.as_secs_f64().max(1e-9)
        );
    }
    println!(
        "server RSS: {rss0:.0} MiB before, {:.0} MiB after {} objects",
        rss_mib(pid),
        2 * n
    );
    Ok(())
}

async fn baseline_etcd(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    Ok(Arc::new(moat_store::EtcdStore::connect(url).await?))
}

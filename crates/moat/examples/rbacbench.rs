//! RBAC benchmark (run by bench/rbac.sh): ConfigMap creates through the HTTPS API of a
//! running `moat server`, by the admin (token, `system:masters`: no RBAC lookup) and by a
//! user with a client certificate whose RoleBinding to `edit` must be found among other
//! bindings (100 RoleBindings in its namespace, 20 ClusterRoleBindings for other groups), in
//! alternating rounds, so the ratio user/admin is the cost of authenticating by certificate
//! and authorizing by RBAC.
//!
//! Usage: rbacbench <data-dir> <n per round> <concurrency> <rounds>
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a failed step is a failed run

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

#[derive(Clone)]
struct Http {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

impl Http {
    fn new(
        base: &str,
        ca_pem: &[u8],
        token: Option<&str>,
        cert: Option<(&str, &str)>,
    ) -> anyhow::Result<Http> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem) {
            roots.add(c?)?;
        }
        let b = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
        let tls = match cert {
            Some((crt, key)) => b.with_client_auth_cert(
                CertificateDer::pem_slice_iter(crt.as_bytes()).collect::<Result<_, _>>()?,
                PrivateKeyDer::from_pem_slice(key.as_bytes())?,
            )?,
            None => b.with_no_client_auth(),
        };
        let agent = ureq::AgentBuilder::new()
            .tls_config(Arc::new(tls))
            .max_idle_connections_per_host(64)
            .build();
        Ok(Http {
            agent,
            base: base.trim_end_matches('/').into(),
            token: token.map(String::from),
        })
    }

    fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let mut r = self.agent.post(&format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.set("Authorization", &format!("Bearer {t}"));
        }
        match r.send_json(body.clone()) {
            Ok(resp) => Ok(resp.into_json()?),
            Err(ureq::Error::Status(code, resp)) => bail!("{path}: {code} {}", resp.into_string()?),
            Err(e) => Err(e.into()),
        }
    }
}

fn creates(h: &Http, ns: &str, round: usize, n: usize, conc: usize) -> anyhow::Result<f64> {
    let path = format!("/api/v1/namespaces/{ns}/configmaps");
    let start = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..conc)
            .map(|t| {
                let (h, path) = (h.clone(), path.clone());
                s.spawn(move || -> anyhow::Result<()> {
                    for i in (0..n).filter(|i| i % conc == t) {
                        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": format!("cm-{round}-{i:05}")},
                            "data": {"k": "v".repeat(200)}});
                        h.post(&path, &cm).with_context(|| format!("create #{i}"))?;
                    }
                    Ok(())
                })
            })
            .collect();
        for j in handles {
            j.join()
                .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn binding(kind: &str, name: &str, ns: Option<&str>, role: &str, subject: Value) -> Value {
    let mut meta = json!({"name": name});
    if let Some(ns) = ns {
        meta["namespace"] = json!(ns);
    }
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [subject]})
}

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 5 {
        bail!("usage: rbacbench <data-dir> <n per round> <concurrency> <rounds>");
    }
    let dir = Path::new(&a[1]);
    let (n, conc, rounds): (usize, usize, usize) = (a[2].parse()?, a[3].parse()?, a[4].parse()?);
    let kc: Value = admin_kubeconfig(&std::fs::read_to_string(dir.join("kubeconfig.yaml"))?)?;
    let base = kc["server"].as_str().context("server")?.to_string();
    let ca = std::fs::read(dir.join("ca.crt"))?;
    let admin = Http::new(
        &base,
        &ca,
        Some(kc["token"].as_str().context("token")?),
        None,
    )?;
    let creds = moat_apiserver::pki::user_certificate(dir, "bench", &[], 1)?;
    let user = Http::new(&base, &ca, None, Some((&creds.cert_pem, &creds.key_pem)))?;

    for ns in ["bench-admin", "bench-user"] {
        admin.post(
            "/api/v1/namespaces",
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )?;
    }
    let rbs = "/apis/rbac.authorization.k8s.io/v1/namespaces/bench-user/rolebindings";
    for i in 0..100 {
        let s = json!({"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": format!("someone-{i}")});
        admin.post(
            rbs,
            &binding(
                "RoleBinding",
                &format!("other-{i}"),
                Some("bench-user"),
                "view",
                s,
            ),
        )?;
    }
    for i in 0..20 {
        let s = json!({"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": format!("team-{i}")});
        admin.post(
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            &binding("ClusterRoleBinding", &format!("team-{i}"), None, "view", s),
        )?;
    }
    let s = json!({"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "bench"});
    admin.post(
        rbs,
        &binding("RoleBinding", "bench-edit", Some("bench-user"), "edit", s),
    )?;
    let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"verb": "create", "resource": "configmaps", "namespace": "bench-user"}}});
    let deadline = Instant::now() + Duration::from_secs(10);
    while user.post(
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        &review,
    )?["status"]["allowed"]
        != true
    {
        if Instant::now() > deadline {
            bail!("the bench user's RoleBinding never took effect");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Warm both paths (connections, allocator) before measuring.
    creates(&admin, "bench-admin", 0, conc * 10, conc)?;
    creates(&user, "bench-user", 0, conc * 10, conc)?;
    // Short alternating rounds, compared pairwise: the machine's drift (other load, the
    // store's growth) hits both sides of a pair alike; the median ratio ignores outliers.
    let (mut admins, mut users, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for r in 1..=rounds {
        // Alternate who goes first, so neither gets the quieter half of every round.
        let (ad, us) = if r % 2 == 1 {
            let ad = creates(&admin, "bench-admin", r, n, conc)?;
            (ad, creates(&user, "bench-user", r, n, conc)?)
        } else {
            let us = creates(&user, "bench-user", r, n, conc)?;
            (creates(&admin, "bench-admin", r, n, conc)?, us)
        };
        println!("round {r}: admin {ad:.0} creates/s, RBAC user {us:.0} creates/s");
        admins.push(ad);
        users.push(us);
        ratios.push(us / ad);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "admin (token, system:masters): median {:.0} creates/s over {rounds} rounds",
        median(&mut admins)
    );
    println!(
        "user (certificate, RBAC edit among 120 bindings): median {:.0} creates/s",
        median(&mut users)
    );
    println!(
        "ratio user/admin: {:.2} (median of per-round ratios; goal >= 0.9)",
        median(&mut ratios)
    );
    Ok(())
}

/// The admin kubeconfig's server and token (the only fields read), without a YAML parser:
/// `moat server` writes it in a fixed shape.
fn admin_kubeconfig(text: &str) -> anyhow::Result<Value> {
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(k).map(|v| v.trim().to_string()))
    };
    Ok(json!({"server": field("server:"), "token": field("token:")}))
}

//! The Endpoints and EndpointSlice controller loop: Services and Pods in, the objects
//! `moat_controllers::endpoints::desired` asks for written through the API.

use std::collections::{BTreeMap, HashSet};
use std::sync::mpsc;

use moat_controllers::endpoints::{MANAGED_BY, MANAGED_BY_LABEL, desired, same};
use serde_json::Value;

use crate::{Api, ClientError};

pub(crate) fn endpoints_loop(c: Api, rx: mpsc::Receiver<()>) {
    let mut pace = crate::Pace::new(std::time::Duration::from_millis(500));
    while pace.wait(&rx) {
        if let Err(e) = pass(&c) {
            tracing::debug!(error = %e, "endpoints pass");
        }
    }
}

fn key(v: &Value) -> (String, String) {
    (
        v["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        v["metadata"]["name"].as_str().unwrap_or("").to_string(),
    )
}

fn pass(c: &Api) -> Result<(), ClientError> {
    let (services, _) = c.list("/api/v1/services")?;
    let (endpoints, _) = c.list("/api/v1/endpoints")?;
    // Nothing to manage or clean up: no need to read every pod.
    if endpoints.is_empty()
        && !services.iter().any(|s| {
            s["spec"]["selector"]
                .as_object()
                .is_some_and(|m| !m.is_empty())
        })
    {
        return Ok(());
    }
    let (pods, _) = c.list("/api/v1/pods")?;
    let (slices, _) = c.list(&format!(
        "/apis/discovery.k8s.io/v1/endpointslices?labelSelector={MANAGED_BY_LABEL}%3D{MANAGED_BY}"
    ))?;
    let have_eps: BTreeMap<(String, String), &Value> =
        endpoints.iter().map(|e| (key(e), e)).collect();
    let have_slices: BTreeMap<(String, String), &Value> =
        slices.iter().map(|e| (key(e), e)).collect();
    let mut by_ns: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for p in pods {
        by_ns
            .entry(
                p["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
            .or_default()
            .push(p);
    }
    let mut wanted_slices = HashSet::new();
    let mut managed_eps = HashSet::new();
    let none = Vec::new();
    for svc in &services {
        let (ns, _) = key(svc);
        let Some(d) = desired(svc, by_ns.get(&ns).unwrap_or(&none)) else {
            continue;
        };
        managed_eps.insert(key(&d.endpoints));
        write(
            c,
            "/api/v1",
            "endpoints",
            &d.endpoints,
            have_eps.get(&key(&d.endpoints)).copied(),
            "Endpoints",
        );
        for s in &d.slices {
            wanted_slices.insert(key(s));
            write(
                c,
                "/apis/discovery.k8s.io/v1",
                "endpointslices",
                s,
                have_slices.get(&key(s)).copied(),
                "EndpointSlice",
            );
        }
    }
    // Slices of ours nobody wants any more (a port set went away); Endpoints of Services
    // that are gone (slices go with their owner through the garbage collector).
    for ((ns, name), _) in have_slices
        .iter()
        .filter(|(k, _)| !wanted_slices.contains(*k))
    {
        let _ = c.delete(&format!(
            "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices/{name}"
        ));
    }
    let svc_keys: HashSet<(String, String)> = services.iter().map(key).collect();
    for (k, _) in have_eps
        .iter()
        .filter(|(k, _)| !svc_keys.contains(*k) && !managed_eps.contains(*k))
    {
        let _ = c.delete(&format!("/api/v1/namespaces/{}/endpoints/{}", k.0, k.1));
    }
    Ok(())
}

/// Creates `want` or replaces `have` with it (keeping its resourceVersion, so a concurrent
/// writer wins and the next pass recomputes).
fn write(c: &Api, base: &str, plural: &str, want: &Value, have: Option<&Value>, kind: &str) {
    let (ns, name) = key(want);
    let r = match have {
        None => c
            .create(&format!("{base}/namespaces/{ns}/{plural}"), want)
            .map(|_| ()),
        Some(h) if same(kind, h, want) => Ok(()),
        Some(h) => {
            let mut next = want.clone();
            next["metadata"]["resourceVersion"] = h["metadata"]["resourceVersion"].clone();
            c.put(&format!("{base}/namespaces/{ns}/{plural}/{name}"), &next)
                .map(|_| ())
        }
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, %ns, %name, kind, "writing endpoints");
    }
}

//! Discovery: the legacy documents (`/api`, `/apis`, `/api/v1`, `/apis/<g>/<v>`) and the
//! aggregated form (`apidiscovery.k8s.io` v2 and v2beta1) that kubectl 1.27+ negotiate with
//! the Accept header. Everything is derived from `moat_api::RESOURCES`.

use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, header};
use moat_api::{RESOURCES, ResourceInfo, Subresource};
use serde_json::{Value, json};

/// Which aggregated discovery version a client accepts, in its order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregated {
    V2,
    V2Beta1,
}

impl Aggregated {
    fn version(self) -> &'static str {
        match self {
            Aggregated::V2 => "v2",
            Aggregated::V2Beta1 => "v2beta1",
        }
    }
}

/// Picks the first aggregated-discovery media type the Accept header offers. A client
/// that offered only v2beta1 (kubectl 1.27–1.29) must never get v2.
pub fn negotiate(accept: &str) -> Option<Aggregated> {
    for media in accept.split(',') {
        let mut parts = media.split(';').map(str::trim);
        let base = parts.next().unwrap_or("");
        if base != "application/json" {
            continue;
        }
        let (mut g, mut v, mut r#as) = (None, None, None);
        for p in parts {
            match p.split_once('=') {
                Some(("g", x)) => g = Some(x),
                Some(("v", x)) => v = Some(x),
                Some(("as", x)) => r#as = Some(x),
                _ => {}
            }
        }
        if g != Some("apidiscovery.k8s.io") || r#as != Some("APIGroupDiscoveryList") {
            continue;
        }
        match v {
            Some("v2") => return Some(Aggregated::V2),
            Some("v2beta1") => return Some(Aggregated::V2Beta1),
            _ => {}
        }
    }
    None
}

fn sub_kind(r: &ResourceInfo, s: Subresource) -> (&'static str, &'static str, &'static str) {
    match s {
        Subresource::Scale => ("autoscaling", "v1", "Scale"),
        Subresource::Status => (r.group, r.version, r.kind),
        Subresource::Binding => ("", "v1", "Binding"),
        Subresource::Eviction => ("policy", "v1", "Eviction"),
        Subresource::Log => ("", "v1", "Pod"),
        Subresource::Exec => ("", "v1", "PodExecOptions"),
    }
}

fn sub_verbs(s: Subresource) -> Vec<&'static str> {
    match s {
        Subresource::Scale | Subresource::Status => vec!["get", "patch", "update"],
        Subresource::Binding | Subresource::Eviction => vec!["create"],
        Subresource::Log => vec!["get"],
        Subresource::Exec => vec!["create", "get"],
    }
}

/// `GET /api` or `GET /apis`: aggregated when the client asked for it, legacy otherwise.
pub fn root(apis: bool, headers: &HeaderMap, advertise: &str) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if let Some(agg) = negotiate(accept) {
        let ct = format!(
            "application/json;g=apidiscovery.k8s.io;v={};as=APIGroupDiscoveryList",
            agg.version()
        );
        return (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, ct),
                (header::VARY, "Accept".to_string()),
            ],
            aggregated(apis, agg).to_string(),
        )
            .into_response();
    }
    let body = if apis {
        api_groups()
    } else {
        json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": advertise}]})
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (header::VARY, "Accept".to_string()),
        ],
        body.to_string(),
    )
        .into_response()
}

/// The APIGroupDiscoveryList for the core group (`/api`) or the named groups (`/apis`).
pub fn aggregated(apis: bool, agg: Aggregated) -> Value {
    let mut items = Vec::new();
    for (g, v) in moat_api::group_versions() {
        if g.is_empty() == apis {
            continue;
        }
        let resources: Vec<Value> = RESOURCES
            .iter()
            .filter(|r| r.group == g && r.version == v)
            .map(|r| {
                let mut e = json!({
                    "resource": r.plural,
                    "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                    "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                    "singularResource": r.singular,
                    "verbs": r.verbs(),
                });
                if !r.short_names.is_empty() {
                    e["shortNames"] = json!(r.short_names);
                }
                if !r.categories.is_empty() {
                    e["categories"] = json!(r.categories);
                }
                let subs: Vec<Value> = r
                    .subresources
                    .iter()
                    .map(|&s| {
                        let (sg, sv, sk) = sub_kind(r, s);
                        json!({"subresource": s.name(),
                            "responseKind": {"group": sg, "version": sv, "kind": sk},
                            "verbs": sub_verbs(s)})
                    })
                    .collect();
                if !subs.is_empty() {
                    e["subresources"] = json!(subs);
                }
                e
            })
            .collect();
        let mut meta = json!({"creationTimestamp": null});
        if !g.is_empty() {
            meta["name"] = json!(g);
        }
        items.push(json!({"metadata": meta,
            "versions": [{"version": v, "resources": resources, "freshness": "Current"}]}));
    }
    json!({"kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{}", agg.version()),
        "metadata": {}, "items": items})
}

pub fn api_groups() -> Value {
    let groups: Vec<Value> = moat_api::group_versions()
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, v)| {
            let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/<g>` (with or without the trailing slash): the group's APIGroup, as client
/// libraries ask for it (the Python client's `AppsApi().get_api_group()`).
pub fn api_group(path: &str) -> Option<Value> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let ["apis", g] = segs.as_slice() else {
        return None;
    };
    let versions: Vec<Value> = moat_api::group_versions()
        .into_iter()
        .filter(|(gg, _)| gg == g)
        .map(|(_, v)| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    let preferred = versions.first()?.clone();
    Some(json!({"kind": "APIGroup", "apiVersion": "v1", "name": g,
        "versions": versions, "preferredVersion": preferred}))
}

/// `GET /api/v1` or `GET /apis/<g>/<v>`: the APIResourceList.
pub fn resource_list(path: &str) -> Option<Value> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (g, v) = match segs.as_slice() {
        ["api", v] => ("", *v),
        ["apis", g, v] => (*g, *v),
        _ => return None,
    };
    if !moat_api::group_versions().contains(&(g, v)) {
        return None;
    }
    let mut resources = Vec::new();
    for r in RESOURCES.iter().filter(|r| r.group == g && r.version == v) {
        let mut e = json!({"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind, "verbs": r.verbs()});
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            e["categories"] = json!(r.categories);
        }
        resources.push(e);
        for &s in r.subresources {
            let (group, version, kind) = sub_kind(r, s);
            resources.push(json!({"name": format!("{}/{}", r.plural, s.name()), "singularName": "", "namespaced": r.namespaced,
                "group": group, "version": version, "kind": kind, "verbs": sub_verbs(s)}));
        }
    }
    let gv = if g.is_empty() {
        v.to_string()
    } else {
        format!("{g}/{v}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_the_clients_offer() {
        // kubectl 1.30+.
        let new = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(negotiate(new), Some(Aggregated::V2));
        // kubectl 1.27–1.29 only know v2beta1: never answer v2.
        let old = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(negotiate(old), Some(Aggregated::V2Beta1));
        assert_eq!(negotiate("application/json, */*"), None);
        assert_eq!(negotiate(""), None);
        assert_eq!(
            negotiate("application/json;g=apidiscovery.k8s.io;v=v3;as=APIGroupDiscoveryList"),
            None
        );
    }

    #[test]
    fn aggregated_lists_every_resource_with_response_kind() {
        let core = aggregated(false, Aggregated::V2);
        let named = aggregated(true, Aggregated::V2);
        let mut n = 0;
        for doc in [&core, &named] {
            for item in doc["items"].as_array().expect("items") {
                for v in item["versions"].as_array().expect("versions") {
                    for r in v["resources"].as_array().expect("resources") {
                        assert!(r["responseKind"]["kind"].is_string(), "{r}");
                        n += 1;
                    }
                }
            }
        }
        assert_eq!(n, RESOURCES.len());
        assert_eq!(core["items"].as_array().map(Vec::len), Some(1));
        assert!(core["items"][0]["metadata"]["name"].is_null());
        let deploy = named["items"]
            .as_array()
            .and_then(|i| i.iter().find(|g| g["metadata"]["name"] == "apps"))
            .expect("apps");
        let d = deploy["versions"][0]["resources"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["resource"] == "deployments"))
            .expect("deployments");
        let scale = d["subresources"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["subresource"] == "scale"))
            .expect("scale");
        assert_eq!(
            scale["responseKind"],
            json!({"group": "autoscaling", "version": "v1", "kind": "Scale"})
        );
        assert_eq!(d["shortNames"], json!(["deploy"]));
    }

    #[test]
    fn group_documents_are_served_with_or_without_the_slash() {
        for p in ["/apis/apps", "/apis/apps/"] {
            let g = api_group(p).expect("apps");
            assert_eq!(g["kind"], "APIGroup");
            assert_eq!(g["preferredVersion"]["groupVersion"], "apps/v1");
        }
        assert_eq!(api_group("/apis/nope"), None);
        assert_eq!(api_group("/apis/apps/v1"), None);
    }
}

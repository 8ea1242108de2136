//! `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`: server-side printing with the
//! columns Kubernetes uses for each kind.

use serde_json::{Value, json};

/// Kubernetes' short age format (kubectl's HumanDuration).
pub fn age(created: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(created) else {
        return "<unknown>".into();
    };
    let s = (now - t.with_timezone(&chrono::Utc)).num_seconds().max(0);
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 8 * 3600 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s if s < 8 * 86400 => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn col(name: &str, ty: &str, priority: i32, desc: &str) -> Value {
    let format = if name == "Name" { "name" } else { "" };
    json!({"name": name, "type": ty, "format": format, "description": desc, "priority": priority})
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn count(v: &Value) -> i64 {
    v.as_object().map(|m| m.len() as i64).unwrap_or(0)
}

/// A LabelSelector as kubectl's SELECTOR column shows it (`app=web,tier in (be,fe)`).
fn selector_str(v: &Value) -> String {
    let Ok(ls) = serde_json::from_value(v.clone()) else {
        return "<none>".into();
    };
    match moat_api::selector::Selector::lenient(&ls) {
        Some(sel) if !sel.is_empty() => sel.to_string(),
        Some(_) => "<none>".into(),
        // An expression with an unknown operator, as upstream's FormatLabelSelector says.
        None => "<error>".into(),
    }
}

/// (columns, cells-of-one-object) for a kind.
fn columns(kind: &str) -> Vec<Value> {
    let name = col(
        "Name",
        "string",
        0,
        "Name must be unique within a namespace.",
    );
    let age = col(
        "Age",
        "string",
        0,
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    );
    match kind {
        "Pod" => vec![
            name,
            col(
                "Ready",
                "string",
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            col(
                "Status",
                "string",
                0,
                "The aggregate status of the containers in this pod.",
            ),
            col(
                "Restarts",
                "string",
                0,
                "The number of times the containers in this pod have been restarted.",
            ),
            age,
            col("IP", "string", 1, "IP address allocated to the pod."),
            col(
                "Node",
                "string",
                1,
                "Name of the Node this pod is running on.",
            ),
            col(
                "Nominated Node",
                "string",
                1,
                "Name of the node the scheduler nominated for this pod.",
            ),
            col("Readiness Gates", "string", 1, "Pod readiness gates."),
        ],
        "Namespace" => vec![
            name,
            col("Status", "string", 0, "The status of the namespace"),
            age,
        ],
        "Node" => vec![
            name,
            col("Status", "string", 0, "The status of the node"),
            col("Roles", "string", 0, "The roles of the node"),
            age,
            col(
                "Version",
                "string",
                0,
                "Kubelet Version reported by the node.",
            ),
            col("Internal-IP", "string", 1, "Internal IP"),
            col("External-IP", "string", 1, "External IP"),
            col("OS-Image", "string", 1, "OS image"),
            col("Kernel-Version", "string", 1, "Kernel"),
            col("Container-Runtime", "string", 1, "Runtime"),
        ],
        "Service" => vec![
            name,
            col("Type", "string", 0, "The type of the service."),
            col("Cluster-IP", "string", 0, "The cluster IP."),
            col("External-IP", "string", 0, "External IPs."),
            col("Port(s)", "string", 0, "Ports."),
            age,
            col("Selector", "string", 1, "Selector."),
        ],
        "Deployment" => vec![
            name,
            col("Ready", "string", 0, "Number of ready pods."),
            col("Up-to-date", "integer", 0, "Updated pods."),
            col("Available", "integer", 0, "Available pods."),
            age,
            col("Containers", "string", 1, "Containers."),
            col("Images", "string", 1, "Images."),
            col("Selector", "string", 1, "Selector."),
        ],
        "ReplicaSet" => vec![
            name,
            col("Desired", "integer", 0, "Desired."),
            col("Current", "integer", 0, "Current."),
            col("Ready", "integer", 0, "Ready."),
            age,
            col("Containers", "string", 1, "Containers."),
            col("Images", "string", 1, "Images."),
            col("Selector", "string", 1, "Selector."),
        ],
        "ControllerRevision" => vec![
            name,
            col("Controller", "string", 0, "Controller of the object."),
            col(
                "Revision",
                "integer",
                0,
                "Revision of the ControllerRevision.",
            ),
            age,
        ],
        "DaemonSet" => vec![
            name,
            col("Desired", "integer", 0, "Desired."),
            col("Current", "integer", 0, "Current."),
            col("Ready", "integer", 0, "Ready."),
            col("Up-to-date", "integer", 0, "Up-to-date."),
            col("Available", "integer", 0, "Available."),
            col("Node Selector", "string", 0, "Node selector."),
            age,
            col("Containers", "string", 1, "Containers."),
            col("Images", "string", 1, "Images."),
            col("Selector", "string", 1, "Selector."),
        ],
        "Job" => vec![
            name,
            col("Status", "string", 0, "Status of the job."),
            col(
                "Completions",
                "string",
                0,
                "The completion status of the job.",
            ),
            col(
                "Duration",
                "string",
                0,
                "Time required to complete the job.",
            ),
            age,
            col("Containers", "string", 1, "Containers."),
            col("Images", "string", 1, "Images."),
            col("Selector", "string", 1, "Selector."),
        ],
        "CronJob" => vec![
            name,
            col("Schedule", "string", 0, "The schedule in Cron format."),
            col("Timezone", "string", 0, "The time zone of the schedule."),
            col(
                "Suspend",
                "boolean",
                0,
                "Whether the schedule is suspended.",
            ),
            col("Active", "integer", 0, "Number of running jobs."),
            col(
                "Last Schedule",
                "string",
                0,
                "When the job was last scheduled.",
            ),
            age,
            col("Containers", "string", 1, "Containers."),
            col("Images", "string", 1, "Images."),
            col("Selector", "string", 1, "Selector."),
        ],
        "ConfigMap" => vec![name, col("Data", "integer", 0, "Number of data keys."), age],
        "Secret" => vec![
            name,
            col("Type", "string", 0, "The type of the secret"),
            col("Data", "integer", 0, "Number of data keys."),
            age,
        ],
        "ServiceAccount" => vec![name, col("Secrets", "integer", 0, "Secrets."), age],
        "NetworkPolicy" => vec![name, col("Pod-Selector", "string", 0, "Pod selector."), age],
        "RuntimeClass" => vec![name, col("Handler", "string", 0, "Handler."), age],
        "Endpoints" => vec![name, col("Endpoints", "string", 0, "Endpoints."), age],
        "Lease" => vec![name, col("Holder", "string", 0, "Holder."), age],
        "Role" | "ClusterRole" => vec![name, col("Created At", "date", 0, "Creation time.")],
        "RoleBinding" | "ClusterRoleBinding" => vec![
            name,
            col("Role", "string", 0, "Role."),
            age,
            col("Users", "string", 1, "Users."),
            col("Groups", "string", 1, "Groups."),
            col("ServiceAccounts", "string", 1, "ServiceAccounts."),
        ],
        "Event" => vec![
            col("Last Seen", "string", 0, "Last seen."),
            col("Type", "string", 0, "Type."),
            col("Reason", "string", 0, "Reason."),
            col("Object", "string", 0, "Object."),
            col("Message", "string", 0, "Message."),
            name,
        ],
        _ => vec![name, age],
    }
}

fn cells(kind: &str, o: &Value, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
    let name = json!(s(&o["metadata"]["name"]));
    let a = json!(age(
        o["metadata"]["creationTimestamp"].as_str().unwrap_or(""),
        now
    ));
    let spec = &o["spec"];
    let st = &o["status"];
    match kind {
        "Pod" => {
            let cs = st["containerStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let total = spec["containers"].as_array().map(|c| c.len()).unwrap_or(0);
            let ready = cs.iter().filter(|c| c["ready"] == true).count();
            let restarts: i64 = cs
                .iter()
                .map(|c| c["restartCount"].as_i64().unwrap_or(0))
                .sum();
            let mut status = s(&st["phase"]);
            if o["metadata"]["deletionTimestamp"].is_string() {
                status = "Terminating".into();
            }
            for c in &cs {
                if let Some(r) = c["state"]["waiting"]["reason"].as_str() {
                    status = r.to_string();
                }
            }
            if status.is_empty() {
                status = "Pending".into();
            }
            let or_none = |v: &Value| {
                if v.is_null() {
                    json!("<none>")
                } else {
                    json!(s(v))
                }
            };
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(status),
                json!(restarts.to_string()),
                a,
                or_none(&st["podIP"]),
                or_none(&spec["nodeName"]),
                json!("<none>"),
                json!("<none>"),
            ]
        }
        "Namespace" => vec![
            name,
            json!(if st["phase"].is_null() {
                "Active".into()
            } else {
                s(&st["phase"])
            }),
            a,
        ],
        "Node" => {
            let ready = st["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                .map(|c| c["status"] == "True");
            let mut status = match ready {
                Some(true) => "Ready".to_string(),
                Some(false) => "NotReady".into(),
                None => "Unknown".into(),
            };
            if spec["unschedulable"] == true {
                status.push_str(",SchedulingDisabled");
            }
            let roles: Vec<String> = o["metadata"]["labels"]
                .as_object()
                .map(|m| {
                    m.keys()
                        .filter_map(|k| {
                            k.strip_prefix("node-role.kubernetes.io/").map(String::from)
                        })
                        .collect()
                })
                .unwrap_or_default();
            let addr = |t: &str| {
                st["addresses"]
                    .as_array()
                    .and_then(|a| a.iter().find(|x| x["type"] == t))
                    .map(|x| s(&x["address"]))
                    .unwrap_or("<none>".into())
            };
            let ni = &st["nodeInfo"];
            vec![
                name,
                json!(status),
                json!(if roles.is_empty() {
                    "<none>".into()
                } else {
                    roles.join(",")
                }),
                a,
                json!(s(&ni["kubeletVersion"])),
                json!(addr("InternalIP")),
                json!(addr("ExternalIP")),
                json!(s(&ni["osImage"])),
                json!(s(&ni["kernelVersion"])),
                json!(s(&ni["containerRuntimeVersion"])),
            ]
        }
        "Service" => {
            let ports: Vec<String> = spec["ports"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    let proto = p["protocol"].as_str().unwrap_or("TCP");
                    if p["nodePort"].is_number() {
                        format!("{}:{}/{proto}", p["port"], p["nodePort"])
                    } else {
                        format!("{}/{proto}", p["port"])
                    }
                })
                .collect();
            let ext = spec["externalIPs"]
                .as_array()
                .map(|a| a.iter().map(s).collect::<Vec<_>>().join(","))
                .filter(|x| !x.is_empty());
            let sel = spec["selector"].as_object().map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", s(v)))
                    .collect::<Vec<_>>()
                    .join(",")
            });
            vec![
                name,
                json!(if spec["type"].is_null() {
                    "ClusterIP".into()
                } else {
                    s(&spec["type"])
                }),
                json!(if spec["clusterIP"].is_null() {
                    "<none>".into()
                } else {
                    s(&spec["clusterIP"])
                }),
                json!(ext.unwrap_or("<none>".into())),
                json!(if ports.is_empty() {
                    "<none>".into()
                } else {
                    ports.join(",")
                }),
                a,
                json!(sel.filter(|x| !x.is_empty()).unwrap_or("<none>".into())),
            ]
        }
        "Deployment" | "ReplicaSet" => {
            let cs = spec["template"]["spec"]["containers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let names = cs
                .iter()
                .map(|c| s(&c["name"]))
                .collect::<Vec<_>>()
                .join(",");
            let images = cs
                .iter()
                .map(|c| s(&c["image"]))
                .collect::<Vec<_>>()
                .join(",");
            let want = spec["replicas"].as_i64().unwrap_or(1);
            let n = |k: &str| st[k].as_i64().unwrap_or(0);
            if kind == "Deployment" {
                vec![
                    name,
                    json!(format!("{}/{want}", n("readyReplicas"))),
                    json!(n("updatedReplicas")),
                    json!(n("availableReplicas")),
                    a,
                    json!(names),
                    json!(images),
                    json!(selector_str(&spec["selector"])),
                ]
            } else {
                vec![
                    name,
                    json!(want),
                    json!(n("replicas")),
                    json!(n("readyReplicas")),
                    a,
                    json!(names),
                    json!(images),
                    json!(selector_str(&spec["selector"])),
                ]
            }
        }
        "ControllerRevision" => {
            let owner = o["metadata"]["ownerReferences"]
                .as_array()
                .and_then(|rs| rs.iter().find(|r| r["controller"] == true))
                .map(|r| {
                    let group = s(&r["apiVersion"])
                        .split_once('/')
                        .map(|(g, _)| format!(".{g}"))
                        .unwrap_or_default();
                    format!("{}{group}/{}", s(&r["kind"]).to_lowercase(), s(&r["name"]))
                })
                .unwrap_or_else(|| "<none>".into());
            vec![
                name,
                json!(owner),
                json!(o["revision"].as_i64().unwrap_or(0)),
                a,
            ]
        }
        "DaemonSet" => {
            let (names, images) = containers_and_images(&spec["template"]["spec"]);
            let n = |k: &str| st[k].as_i64().unwrap_or(0);
            let ns = spec["template"]["spec"]["nodeSelector"]
                .as_object()
                .filter(|m| !m.is_empty())
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", s(v)))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_else(|| "<none>".into());
            vec![
                name,
                json!(n("desiredNumberScheduled")),
                json!(n("currentNumberScheduled")),
                json!(n("numberReady")),
                json!(n("updatedNumberScheduled")),
                json!(n("numberAvailable")),
                json!(ns),
                a,
                json!(names),
                json!(images),
                json!(selector_str(&spec["selector"])),
            ]
        }
        "Job" => {
            let (names, images) = containers_and_images(&spec["template"]["spec"]);
            vec![
                name,
                json!(job_status(o)),
                json!(job_completions(o)),
                json!(job_duration(o, now)),
                a,
                json!(names),
                json!(images),
                json!(selector_str(&spec["selector"])),
            ]
        }
        "CronJob" => {
            let js = &spec["jobTemplate"]["spec"];
            let (names, images) = containers_and_images(&js["template"]["spec"]);
            let last = match st["lastScheduleTime"].as_str() {
                Some(t) => age(t, now),
                None => "<none>".into(),
            };
            vec![
                name,
                json!(s(&spec["schedule"])),
                json!(if spec["timeZone"].is_null() {
                    "<none>".into()
                } else {
                    s(&spec["timeZone"])
                }),
                json!(spec["suspend"] == true),
                json!(st["active"].as_array().map_or(0, Vec::len)),
                json!(last),
                a,
                json!(names),
                json!(images),
                json!(selector_str(&js["selector"])),
            ]
        }
        "ConfigMap" => vec![name, json!(count(&o["data"]) + count(&o["binaryData"])), a],
        "Secret" => vec![
            name,
            json!(if o["type"].is_null() {
                "Opaque".into()
            } else {
                s(&o["type"])
            }),
            json!(count(&o["data"])),
            a,
        ],
        "ServiceAccount" => vec![
            name,
            json!(o["secrets"].as_array().map(|a| a.len()).unwrap_or(0)),
            a,
        ],
        "NetworkPolicy" => vec![name, json!(selector_str(&spec["podSelector"])), a],
        "RuntimeClass" => vec![name, json!(s(&o["handler"])), a],
        "Endpoints" => {
            let mut eps = Vec::new();
            for sub in o["subsets"].as_array().cloned().unwrap_or_default() {
                for ad in sub["addresses"].as_array().cloned().unwrap_or_default() {
                    for p in sub["ports"].as_array().cloned().unwrap_or_default() {
                        eps.push(format!("{}:{}", s(&ad["ip"]), p["port"]));
                    }
                }
            }
            vec![
                name,
                json!(if eps.is_empty() {
                    "<none>".into()
                } else {
                    eps.join(",")
                }),
                a,
            ]
        }
        "Lease" => vec![name, json!(s(&spec["holderIdentity"])), a],
        "Role" | "ClusterRole" => vec![name, o["metadata"]["creationTimestamp"].clone()],
        "RoleBinding" | "ClusterRoleBinding" => {
            let subjects = o["subjects"].as_array().cloned().unwrap_or_default();
            let of = |kind: &str| {
                let names: Vec<String> = subjects
                    .iter()
                    .filter(|x| x["kind"] == kind)
                    .map(|x| match x["namespace"].as_str() {
                        Some(ns) if kind == "ServiceAccount" => format!("{ns}/{}", s(&x["name"])),
                        _ => s(&x["name"]),
                    })
                    .collect();
                json!(names.join(", "))
            };
            let role = format!("{}/{}", s(&o["roleRef"]["kind"]), s(&o["roleRef"]["name"]));
            vec![
                name,
                json!(role),
                a,
                of("User"),
                of("Group"),
                of("ServiceAccount"),
            ]
        }
        "Event" => {
            let last = o["lastTimestamp"]
                .as_str()
                .or(o["eventTime"].as_str())
                .unwrap_or("");
            let io = &o["involvedObject"];
            vec![
                json!(age(last, now)),
                json!(s(&o["type"])),
                json!(s(&o["reason"])),
                json!(format!(
                    "{}/{}",
                    s(&io["kind"]).to_lowercase(),
                    s(&io["name"])
                )),
                json!(s(&o["message"])),
                name,
            ]
        }
        _ => vec![name, a],
    }
}

/// Container names and images of a pod spec, comma-joined (the wide columns).
fn containers_and_images(pod_spec: &Value) -> (String, String) {
    let cs = pod_spec["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let join = |k: &str| cs.iter().map(|c| s(&c[k])).collect::<Vec<_>>().join(",");
    (join("name"), join("image"))
}

fn has_condition(o: &Value, ty: &str) -> bool {
    o["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == ty && c["status"] == "True"))
}

/// Upstream's Job STATUS column: the first true terminal (or pending-terminal) condition,
/// then Suspended, Terminating, Running.
fn job_status(o: &Value) -> &'static str {
    for (ty, shown) in [
        ("Complete", "Complete"),
        ("Failed", "Failed"),
        ("SuccessCriteriaMet", "SuccessCriteriaMet"),
        ("FailureTarget", "FailureTarget"),
        ("Suspended", "Suspended"),
    ] {
        if has_condition(o, ty) {
            return shown;
        }
    }
    if o["metadata"]["deletionTimestamp"].is_string() {
        "Terminating"
    } else {
        "Running"
    }
}

fn job_completions(o: &Value) -> String {
    let done = o["status"]["succeeded"].as_i64().unwrap_or(0);
    match o["spec"]["completions"].as_i64() {
        Some(c) => format!("{done}/{c}"),
        None => match o["spec"]["parallelism"].as_i64().unwrap_or(0) {
            p if p > 1 => format!("{done}/1 of {p}"),
            _ => format!("{done}/1"),
        },
    }
}

/// Start to completion, or start to now while running; empty before the Job started.
fn job_duration(o: &Value, now: chrono::DateTime<chrono::Utc>) -> String {
    let Some(start) = o["status"]["startTime"].as_str() else {
        return String::new();
    };
    match o["status"]["completionTime"]
        .as_str()
        .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
    {
        Some(end) => age(start, end.with_timezone(&chrono::Utc)),
        None => age(start, now),
    }
}

fn partial(o: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]})
}

/// A Table of `objs` of `kind`. `include_object`: "Object" for full objects, else metadata.
pub fn table(
    kind: &str,
    objs: &[Value],
    rv: &str,
    include_object: &str,
    with_columns: bool,
) -> Value {
    let now = chrono::Utc::now();
    let rows: Vec<Value> = objs
        .iter()
        .map(|o| {
            let object = match include_object {
                "Object" => o.clone(),
                "None" => Value::Null,
                _ => partial(o),
            };
            json!({"cells": cells(kind, o, now), "object": object})
        })
        .collect();
    let mut t = json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv}, "rows": rows});
    t["columnDefinitions"] = if with_columns {
        json!(columns(kind))
    } else {
        json!([])
    };
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_like_kubectl() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-02T00:00:00Z")
            .expect("t")
            .with_timezone(&chrono::Utc);
        assert_eq!(age("2026-01-01T23:59:30Z", now), "30s");
        assert_eq!(age("2026-01-01T23:55:00Z", now), "5m0s");
        assert_eq!(age("2026-01-01T23:00:00Z", now), "60m");
        assert_eq!(age("2025-12-31T00:00:00Z", now), "2d0h");
        assert_eq!(age("garbage", now), "<unknown>");
    }

    #[test]
    fn job_rows_like_upstream() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:10:00Z")
            .expect("t")
            .with_timezone(&chrono::Utc);
        let j = json!({"metadata": {"name": "j", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"completions": 5, "parallelism": 2, "selector": {"matchLabels": {"a": "b"}},
                     "template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
            "status": {"succeeded": 5, "startTime": "2026-01-01T00:00:00Z", "completionTime": "2026-01-01T00:00:42Z",
                       "conditions": [{"type": "Complete", "status": "True"}]}});
        let names: Vec<String> = columns("Job").iter().map(|c| s(&c["name"])).collect();
        assert_eq!(
            &names[..5],
            ["Name", "Status", "Completions", "Duration", "Age"]
        );
        let c = cells("Job", &j, now);
        assert_eq!(
            (&c[1], &c[2], &c[3], &c[4]),
            (
                &json!("Complete"),
                &json!("5/5"),
                &json!("42s"),
                &json!("10m")
            )
        );
        let running = json!({"metadata": {"name": "w"}, "spec": {"parallelism": 3},
            "status": {"startTime": "2026-01-01T00:09:00Z"}});
        let c = cells("Job", &running, now);
        assert_eq!(
            (&c[1], &c[2], &c[3]),
            (&json!("Running"), &json!("0/1 of 3"), &json!("60s"))
        );
    }

    #[test]
    fn pod_row_has_kubernetes_columns() {
        let pod = json!({"metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.42.0.5", "containerStatuses": [{"ready": true, "restartCount": 2}, {"ready": false, "restartCount": 1}]}});
        let t = table("Pod", &[pod], "7", "", true);
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .expect("cols")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(&names[..5], ["Name", "Ready", "Status", "Restarts", "Age"]);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "Running");
        assert_eq!(cells[3], "3");
        assert_eq!(cells[5], "10.42.0.5");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["columnDefinitions"][0]["format"], "name");
    }
}

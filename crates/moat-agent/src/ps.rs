//! `moat ps` / `moat pods`: what `crictl ps -a` / `crictl pods` show, read from the agent's
//! persisted pod records (`<run>/pods/<uid>/state.json`) rather than from a daemon, so it works
//! whether or not the agent is running. Building rows takes the runtime lookups as arguments and
//! formatting takes `now`: both are sans-IO; [`sandboxes`] and [`containers`] do the IO.

use std::path::Path;

use crate::handlers::Handler;
use crate::podstate::PodRecord;
use crate::runtime::{ContainerState, Runtime, Status};
use crate::status::State;

/// One pod sandbox, as `crictl pods` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRow {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    /// `Ready` while its network namespace exists (or it uses the host's), else `NotReady`.
    pub state: &'static str,
    pub ip: Option<String>,
    pub handler: String,
    /// RFC 3339.
    pub created: String,
    pub containers: usize,
}

/// One container slot, as `crictl ps -a` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRow {
    /// The runtime's container id; `None` while no container exists for the slot (waiting
    /// to be restarted, or finished and removed).
    pub id: Option<String>,
    pub name: String,
    pub image: String,
    /// `Running`, `Created`, `Exited`, `Unknown`, or the waiting reason (`CrashLoopBackOff`).
    pub state: String,
    /// The container's init pid while it runs.
    pub pid: Option<i64>,
    pub attempt: u32,
    /// RFC 3339; the current container's start, else the last one's.
    pub created: Option<String>,
    pub pod: String,
    pub namespace: String,
    pub pod_uid: String,
    pub handler: String,
}

/// Sandbox rows, sorted by namespace and name; `ready(rec)` says whether its netns exists.
pub fn sandbox_rows(recs: &[PodRecord], ready: &dyn Fn(&PodRecord) -> bool) -> Vec<SandboxRow> {
    let mut rows: Vec<SandboxRow> = recs
        .iter()
        .map(|r| SandboxRow {
            uid: r.uid.clone(),
            name: r.name.clone(),
            namespace: r.namespace.clone(),
            state: if ready(r) { "Ready" } else { "NotReady" },
            ip: r.ip.clone(),
            handler: r.handler().name,
            created: r.start_time.clone(),
            containers: r.containers.values().filter(|s| s.id.is_some()).count(),
        })
        .collect();
    rows.sort_by(|a, b| (&a.namespace, &a.name, &a.uid).cmp(&(&b.namespace, &b.name, &b.uid)));
    rows
}

/// Container rows, sorted by pod then container name; `state(handler, id, bundle)` asks the
/// runtime about an existing container (`None`: the runtime does not know it).
pub fn container_rows(
    recs: &[PodRecord],
    run_dir: &Path,
    state: &dyn Fn(&Handler, &str, &Path) -> Option<ContainerState>,
) -> Vec<ContainerRow> {
    let mut rows = Vec::new();
    for r in recs {
        let h = r.handler();
        for (cname, slot) in &r.containers {
            let (state_s, pid) = match &slot.id {
                Some(id) => match state(&h, id, &r.bundle(run_dir, id)) {
                    Some(st) => match st.status {
                        Status::Running => ("Running".to_string(), Some(st.pid).filter(|&p| p > 0)),
                        Status::Created => ("Created".into(), None),
                        Status::Stopped => ("Exited".into(), None),
                        Status::Other => ("Unknown".into(), None),
                    },
                    None => ("Unknown".into(), None),
                },
                None => match (&slot.done, &slot.waiting) {
                    (Some(_), _) => ("Exited".into(), None),
                    (None, Some((reason, _))) => (reason.clone(), None),
                    (None, None) => ("Pending".into(), None),
                },
            };
            let created = match (&slot.id, &slot.done, &slot.last) {
                (Some(_), _, _) => slot.started_at.clone(),
                (None, Some(State::Terminated { started_at, .. }), _)
                | (None, None, Some(State::Terminated { started_at, .. })) => started_at.clone(),
                _ => slot.started_at.clone(),
            };
            rows.push(ContainerRow {
                id: slot.id.clone(),
                name: cname.clone(),
                image: slot.image.clone(),
                state: state_s,
                pid,
                attempt: slot.restart_count,
                created,
                pod: r.name.clone(),
                namespace: r.namespace.clone(),
                pod_uid: r.uid.clone(),
                handler: h.name.clone(),
            });
        }
    }
    rows.sort_by(|a, b| {
        (&a.namespace, &a.pod, &a.pod_uid, &a.name).cmp(&(
            &b.namespace,
            &b.pod,
            &b.pod_uid,
            &b.name,
        ))
    });
    rows
}

/// kubectl's `HumanDuration` of `now - then` (RFC 3339 both); `-` if `then` is unparsable.
pub fn age(then: Option<&str>, now: &str) -> String {
    let parse = |t: &str| moat_api::time::parse_rfc3339(t).ok();
    let (Some(then), Some(now)) = (then.and_then(parse), parse(now)) else {
        return "-".into();
    };
    let secs = now.duration_since(then).as_secs();
    human_duration(secs)
}

fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let secs = secs.max(0);
    let (m, h) = (secs / 60, secs / 3600);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        match secs % 60 {
            0 => format!("{m}m"),
            s => format!("{m}m{s}s"),
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        match m % 60 {
            0 => format!("{h}h"),
            mm => format!("{h}h{mm}m"),
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        match h % 24 {
            0 => format!("{}d", h / 24),
            hh => format!("{}d{hh}h", h / 24),
        }
    } else if h < 24 * 365 * 2 {
        format!("{}d", h / 24)
    } else if h < 24 * 365 * 8 {
        match (h / 24) % 365 {
            0 => format!("{}y", h / 24 / 365),
            d => format!("{}y{d}d", h / 24 / 365),
        }
    } else {
        format!("{}y", h / 24 / 365)
    }
}

/// Left-aligned columns separated by three spaces, as kubectl and crictl print them.
fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            out.push_str(c);
            if i + 1 < n {
                out.push_str(&" ".repeat(w[i] - c.chars().count() + 3));
            }
        }
        out.push('\n');
    };
    line(head.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

fn opt(s: Option<&str>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or("-").to_string()
}

/// `moat pods`.
pub fn format_sandboxes(rows: &[SandboxRow], now: &str) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.uid.clone(),
                age(Some(&r.created), now),
                r.state.to_string(),
                r.name.clone(),
                r.namespace.clone(),
                opt(r.ip.as_deref()),
                r.handler.clone(),
                r.containers.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "POD ID",
            "CREATED",
            "STATE",
            "NAME",
            "NAMESPACE",
            "IP",
            "RUNTIME",
            "CONTAINERS",
        ],
        &cells,
    )
}

/// `moat ps`.
pub fn format_containers(rows: &[ContainerRow], now: &str) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                opt(r.id.as_deref()),
                opt(Some(&r.image)),
                age(r.created.as_deref(), now),
                r.state.clone(),
                r.name.clone(),
                r.attempt.to_string(),
                r.pid.map_or_else(|| "-".into(), |p| p.to_string()),
                r.pod.clone(),
                r.namespace.clone(),
                r.handler.clone(),
            ]
        })
        .collect();
    table(
        &[
            "CONTAINER",
            "IMAGE",
            "CREATED",
            "STATE",
            "NAME",
            "ATTEMPT",
            "PID",
            "POD",
            "NAMESPACE",
            "RUNTIME",
        ],
        &cells,
    )
}

/// Sandboxes of the agent with run dir `run_dir`.
pub fn sandboxes(run_dir: &Path) -> Vec<SandboxRow> {
    sandbox_rows(&crate::podstate::records(run_dir), &|r| {
        r.host_network || r.netns.exists()
    })
}

/// Containers of the agent with run dir `run_dir`, their state asked of their handler's
/// runtime (the shim's files first, as the agent does).
pub fn containers(run_dir: &Path) -> Vec<ContainerRow> {
    let rt = crate::runtime::OciRuntime { shim: Vec::new() };
    container_rows(&crate::podstate::records(run_dir), run_dir, &|h, id, b| {
        rt.state(h, id, b).ok().flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(v: serde_json::Value) -> PodRecord {
        serde_json::from_value(v).unwrap()
    }

    fn fixture() -> Vec<PodRecord> {
        let handler = |n: &str| json!({"name": n, "binary": "/usr/sbin/runc", "root": format!("/r/{n}"), "options": []});
        let slot = |id: Option<&str>, restarts: u32| {
            json!({"id": id, "restart_count": restarts, "started_at": "2026-01-01T00:00:00Z",
                "image_id": "sha256:1", "image": "localhost/busybox:latest", "last": null,
                "done": null, "not_before": null, "waiting": null, "errors": 0})
        };
        let mut crashing = slot(None, 3);
        crashing["waiting"] = json!(["CrashLoopBackOff", "back-off 40s"]);
        crashing["last"] = json!({"Terminated": {"exit_code": 1, "reason": "Error",
            "started_at": "2026-01-01T00:04:00Z", "finished_at": "2026-01-01T00:04:01Z",
            "container_id": "runc://x"}});
        vec![
            rec(
                json!({"uid": "u-2", "namespace": "prod", "name": "web", "handler": handler("rec"),
                "netns": "/gone/u-2", "host_network": false, "ip": "10.42.0.7",
                "start_time": "2026-01-01T00:00:00Z",
                "containers": {"app": slot(Some("u-2-app-0"), 0), "side": crashing}}),
            ),
            rec(
                json!({"uid": "u-1", "namespace": "default", "name": "db", "handler": handler("runc"),
                "netns": "/ok/u-1", "host_network": false, "ip": null,
                "start_time": "2026-01-01T00:09:30Z",
                "containers": {"c": slot(Some("u-1-c-2"), 2)}}),
            ),
        ]
    }

    #[test]
    fn rows_come_from_records_and_runtime_answers() {
        let recs = fixture();
        let sb = sandbox_rows(&recs, &|r| r.netns.starts_with("/ok"));
        assert_eq!(
            sb.iter()
                .map(|r| (r.name.as_str(), r.state, r.containers, r.handler.as_str()))
                .collect::<Vec<_>>(),
            [("db", "Ready", 1, "runc"), ("web", "NotReady", 1, "rec")]
        );
        let asked = std::sync::Mutex::new(Vec::new());
        let rows = container_rows(&recs, Path::new("/run"), &|h, id, bundle| {
            asked
                .lock()
                .unwrap()
                .push(format!("{} {id} {}", h.root.display(), bundle.display()));
            match id {
                "u-2-app-0" => Some(ContainerState {
                    status: Status::Running,
                    pid: 4242,
                    exit_code: None,
                }),
                _ => Some(ContainerState {
                    status: Status::Stopped,
                    pid: 0,
                    exit_code: Some(0),
                }),
            }
        });
        let mut asked = asked.into_inner().unwrap();
        asked.sort();
        assert_eq!(
            asked,
            [
                "/r/rec u-2-app-0 /run/pods/u-2/containers/u-2-app-0",
                "/r/runc u-1-c-2 /run/pods/u-1/containers/u-1-c-2",
            ]
        );
        let view: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    r.pod.as_str(),
                    r.name.as_str(),
                    r.state.as_str(),
                    r.pid,
                    r.attempt,
                )
            })
            .collect();
        assert_eq!(
            view,
            [
                ("db", "c", "Exited", None, 2),
                ("web", "app", "Running", Some(4242), 0),
                ("web", "side", "CrashLoopBackOff", None, 3),
            ]
        );
        // A slot without a container dates from its last run.
        assert_eq!(rows[2].created.as_deref(), Some("2026-01-01T00:04:00Z"));
    }

    #[test]
    fn tables_align_and_ages_read_like_kubectl() {
        let recs = fixture();
        let now = "2026-01-01T00:10:00Z";
        let sb = sandbox_rows(&recs, &|_| true);
        assert_eq!(
            format_sandboxes(&sb, now),
            "POD ID   CREATED   STATE   NAME   NAMESPACE   IP          RUNTIME   CONTAINERS\n\
             u-1      30s       Ready   db     default     -           runc      1\n\
             u-2      10m       Ready   web    prod        10.42.0.7   rec       1\n"
        );
        let rows = container_rows(&recs, Path::new("/run"), &|_, _, _| None);
        let text = format_containers(&rows, now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "CONTAINER   IMAGE                      CREATED   STATE              NAME   ATTEMPT   PID   POD   NAMESPACE   RUNTIME"
        );
        assert_eq!(
            lines[3],
            "-           localhost/busybox:latest   6m        CrashLoopBackOff   side   3         -     web   prod        rec"
        );
        assert!(lines[1].starts_with("u-1-c-2     "), "{text}");
        assert!(lines[1].contains(" Unknown "), "{text}");
    }

    #[test]
    fn human_durations() {
        let cases = [
            (-5, "<invalid>"),
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 60 * 7, "3h7m"),
            (20 * 3600, "20h"),
            (3 * 86400 + 3600, "3d1h"),
            (30 * 86400, "30d"),
            (3 * 365 * 86400 + 86400, "3y1d"),
            (10 * 365 * 86400, "10y"),
        ];
        for (s, want) in cases {
            assert_eq!(human_duration(s), want, "{s}");
        }
        assert_eq!(age(Some("bogus"), "2026-01-01T00:00:00Z"), "-");
    }
}

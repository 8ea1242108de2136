//! DaemonSet reconcile, as upstream's DaemonSet controller decides it: one pod per eligible
//! node (nodeSelector, required node affinity, and the node's NoSchedule/NoExecute taints
//! against the template's tolerations plus the ones upstream adds to every daemon pod),
//! pinned to its node with a `metadata.name` node-affinity term so the scheduler binds it;
//! surplus, misplaced and failed daemon pods deleted; RollingUpdate replacing pods of an
//! older template within maxUnavailable (or surging with maxSurge); OnDelete leaving them.
//!
//! Templates are told apart by `controller-revision-hash` (a hash of the template). Each
//! template is kept as a ControllerRevision `<name>-<hash>` whose data is the strategic merge
//! patch restoring it (`{"spec":{"template":{...,"$patch":"replace"}}}`, as upstream), so
//! `kubectl rollout history|undo ds` work; returning to an old template renumbers its
//! revision; unused old revisions beyond `revisionHistoryLimit` are deleted.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::pods;

/// The label carrying the template hash of a daemon pod (upstream's ControllerRevision hash).
pub const REVISION_HASH: &str = "controller-revision-hash";

/// What the DaemonSet controller should write.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DsPlan {
    pub create: Vec<Pod>,
    pub delete: Vec<String>,
    pub status: DaemonSetStatus,
    /// The current template's ControllerRevision, when it does not exist yet.
    pub create_revision: Option<ControllerRevision>,
    /// (name, new revision number) of an old revision the template went back to.
    pub renumber: Option<(String, i64)>,
    /// Old ControllerRevisions beyond the history limit.
    pub delete_revisions: Vec<String>,
}

fn owner(ds: &DaemonSet) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "DaemonSet".into(),
        name: ds.metadata.name.clone().unwrap_or_default(),
        uid: ds.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn revision_hash(r: &ControllerRevision) -> Option<&str> {
    r.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(REVISION_HASH))
        .map(String::as_str)
}

/// The ControllerRevision recording `ds`'s current template as revision `revision`.
pub fn revision_for(ds: &DaemonSet, hash: &str, revision: i64) -> ControllerRevision {
    let tmpl = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut labels = tmpl
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(REVISION_HASH.into(), hash.into());
    let mut t = serde_json::to_value(&tmpl).unwrap_or_default();
    t["$patch"] = serde_json::json!("replace");
    ControllerRevision {
        metadata: ObjectMeta {
            name: Some(format!(
                "{}-{hash}",
                ds.metadata.name.as_deref().unwrap_or("")
            )),
            namespace: ds.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: ds
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("kubernetes.io/change-cause"))
                .map(|c| [("kubernetes.io/change-cause".to_string(), c.clone())].into()),
            owner_references: Some(vec![owner(ds)]),
            ..Default::default()
        },
        data: Some(RawExtension(serde_json::json!({"spec": {"template": t}}))),
        revision,
    }
}

/// The revision bookkeeping of one sync: the current template recorded (or renumbered to
/// the newest), and unused old revisions past the limit deleted, oldest first.
fn plan_revisions(
    ds: &DaemonSet,
    hash: &str,
    owned: &[&ControllerRevision],
    live_hashes: &[&str],
    plan: &mut DsPlan,
) {
    let max = owned.iter().map(|r| r.revision).max().unwrap_or(0);
    match owned.iter().find(|r| revision_hash(r) == Some(hash)) {
        Some(cur) if cur.revision < max => {
            plan.renumber = cur.metadata.name.clone().map(|n| (n, max + 1));
        }
        Some(_) => {}
        None => plan.create_revision = Some(revision_for(ds, hash, max + 1)),
    }
    let limit = ds
        .spec
        .as_ref()
        .and_then(|s| s.revision_history_limit)
        .unwrap_or(10)
        .max(0);
    let mut old: Vec<&&ControllerRevision> = owned
        .iter()
        .filter(|r| revision_hash(r).is_none_or(|h| h != hash && !live_hashes.contains(&h)))
        .collect();
    old.sort_by_key(|r| r.revision);
    let extra = old
        .len()
        .saturating_sub(usize::try_from(limit).unwrap_or(0));
    plan.delete_revisions = old[..extra]
        .iter()
        .filter_map(|r| r.metadata.name.clone())
        .collect();
}

/// The tolerations upstream adds to every daemon pod (AddOrUpdateDaemonPodTolerations).
pub fn daemon_tolerations(host_network: bool) -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    let mut v = vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
        t("node.kubernetes.io/pid-pressure", "NoSchedule"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        v.push(t("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    v
}

fn template_tolerations(ds: &DaemonSet) -> Vec<Toleration> {
    let spec = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref());
    let mut tols = spec.and_then(|s| s.tolerations.clone()).unwrap_or_default();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    for t in daemon_tolerations(host_network) {
        if !tols.contains(&t) {
            tols.push(t);
        }
    }
    tols
}

/// Whether a daemon pod of `ds` should run on `node`.
pub fn should_run(ds: &DaemonSet, node: &Node) -> bool {
    if node.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let Some(ps) = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else {
        return false;
    };
    let labels = node.metadata.labels.clone().unwrap_or_default();
    if let Some(sel) = &ps.node_selector
        && !sel.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    if let Some(req) = ps
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        && !req
            .node_selector_terms
            .iter()
            .any(|t| moat_scheduler::term_matches(t, node))
    {
        return false;
    }
    let tols = template_tolerations(ds);
    let taints: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|taint| tols.iter().any(|t| moat_scheduler::tolerates(t, taint)))
}

/// The template hash of `ds`'s current template.
pub fn current_hash(ds: &DaemonSet) -> String {
    let t = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    crate::deployment::template_hash(&t, ds.status.as_ref().and_then(|s| s.collision_count))
}

/// The node a daemon pod is for: its nodeName, or the node its affinity pins it to.
pub fn pod_node(p: &Pod) -> Option<String> {
    let spec = p.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|f| f.key == "metadata.name" && f.operator == "In")
        .and_then(|f| f.values.as_ref()?.first().cloned())
}

/// A new daemon pod of `ds` for `node`.
pub fn pod_for(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let name = ds.metadata.name.clone().unwrap_or_default();
    let tmpl = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let meta = tmpl.metadata.unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(REVISION_HASH.into(), hash.into());
    if let Some(g) = ds.metadata.generation {
        labels.insert("pod-template-generation".into(), g.to_string());
    }
    let mut spec = tmpl.spec.unwrap_or_default();
    // Upstream replaces any required node affinity with the one pinning the node (the
    // template's own was already checked against it by should_run).
    let pin = NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![node.to_string()]),
            }]),
            match_expressions: None,
        }],
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default)
        .required_during_scheduling_ignored_during_execution = Some(pin);
    spec.tolerations = Some(template_tolerations(ds));
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: ds.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: meta.annotations,
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "DaemonSet".into(),
                name,
                uid: ds.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

fn resolve(v: Option<&IntOrString>, default: i32, total: i32, round_up: bool) -> i32 {
    match v {
        None => default,
        Some(IntOrString::Int(i)) => *i,
        Some(IntOrString::String(s)) => s
            .strip_suffix('%')
            .and_then(|n| n.parse::<i64>().ok())
            .map_or(default, |p| {
                let x = p * i64::from(total);
                let r = if round_up { (x + 99) / 100 } else { x / 100 };
                i32::try_from(r).unwrap_or(i32::MAX)
            }),
    }
}

fn name(p: &Pod) -> Option<String> {
    p.metadata.name.clone()
}

fn older_first(a: &&Pod, b: &&Pod) -> std::cmp::Ordering {
    let t = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    t(a).cmp(&t(b)).then(a.metadata.name.cmp(&b.metadata.name))
}

/// Plans one sync of `ds` given every node and the pods of its namespace; `now` in seconds
/// since the epoch (minReadySeconds).
pub fn reconcile(
    ds: &DaemonSet,
    nodes: &[Node],
    ns_pods: &[Pod],
    ns_revisions: &[ControllerRevision],
    now: i64,
) -> DsPlan {
    let mut plan = DsPlan::default();
    let Some(spec) = ds.spec.as_ref() else {
        return plan;
    };
    let uid = ds.metadata.uid.as_deref().unwrap_or("");
    let hash = current_hash(ds);
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let deleting = ds.metadata.deletion_timestamp.is_some();
    let mut by_node: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for p in ns_pods
        .iter()
        .filter(|p| pods::controller_uid(p) == Some(uid))
    {
        match pod_node(p) {
            Some(n) => by_node.entry(n).or_default().push(p),
            None => plan.delete.extend(name(p)),
        }
    }
    let is_new = |p: &Pod| {
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(REVISION_HASH))
            == Some(&hash)
    };
    let available = |p: &Pod| pods::is_available(p, min_ready, now);

    let eligible: Vec<&Node> = nodes.iter().filter(|n| should_run(ds, n)).collect();
    let desired = i32::try_from(eligible.len()).unwrap_or(i32::MAX);
    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|u| u.type_.as_deref())
        .unwrap_or("RollingUpdate")
        == "RollingUpdate";
    let ru = spec
        .update_strategy
        .as_ref()
        .and_then(|u| u.rolling_update.as_ref());
    let max_surge = resolve(ru.and_then(|r| r.max_surge.as_ref()), 0, desired, true);
    let max_unavailable = if max_surge > 0 {
        resolve(
            ru.and_then(|r| r.max_unavailable.as_ref()),
            0,
            desired,
            false,
        )
    } else {
        resolve(
            ru.and_then(|r| r.max_unavailable.as_ref()),
            1,
            desired,
            false,
        )
        .max(1)
    };

    let mut st = DaemonSetStatus {
        desired_number_scheduled: desired,
        observed_generation: ds.metadata.generation,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        conditions: ds.status.as_ref().and_then(|s| s.conditions.clone()),
        ..Default::default()
    };
    // Pods on nodes that are gone or where the daemon must not run.
    let eligible_names: Vec<&str> = eligible
        .iter()
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    for (node, ps) in &by_node {
        if !eligible_names.contains(&node.as_str()) {
            let live: Vec<&&Pod> = ps.iter().filter(|p| pods::is_active(p)).collect();
            if !live.is_empty()
                && nodes
                    .iter()
                    .any(|n| n.metadata.name.as_deref() == Some(node))
            {
                st.number_misscheduled += 1;
            }
            plan.delete.extend(live.iter().filter_map(|p| name(p)));
        }
    }

    // Per eligible node: what runs there, what is missing, what to roll.
    let mut unavailable_now = 0;
    let (mut updated, mut avail) = (0, 0);
    let mut old_candidates: Vec<(&Pod, bool)> = Vec::new(); // (old pod, available)
    let mut surge_nodes: Vec<(&str, &Pod)> = Vec::new(); // nodes with an old pod and no new one
    for n in &eligible_names {
        let ps = by_node.get(*n).cloned().unwrap_or_default();
        // Failed daemon pods are deleted so a new one takes their place.
        plan.delete.extend(
            ps.iter()
                .filter(|p| pods::phase_is(p, "Failed"))
                .filter_map(|p| name(p)),
        );
        let mut live: Vec<&Pod> = ps.iter().copied().filter(|p| pods::is_active(p)).collect();
        live.sort_by(older_first);
        if live.is_empty() {
            unavailable_now += 1;
            if !deleting {
                plan.create.push(pod_for(ds, n, &hash));
            }
            continue;
        }
        st.current_number_scheduled += 1;
        let new: Vec<&Pod> = live.iter().copied().filter(|p| is_new(p)).collect();
        let old: Vec<&Pod> = live.iter().copied().filter(|p| !is_new(p)).collect();
        // More than one of a kind: keep the oldest (upstream keeps the oldest pod).
        if new.len() > 1 {
            plan.delete.extend(new[1..].iter().filter_map(|p| name(p)));
        }
        if !new.is_empty() {
            updated += 1;
        }
        if old.len() > 1 || (!new.is_empty() && !old.is_empty() && max_surge == 0) {
            let keep_one_old = new.is_empty();
            let extra = if keep_one_old { &old[1..] } else { &old[..] };
            plan.delete.extend(extra.iter().filter_map(|p| name(p)));
        }
        let shown = new.first().or(old.first()).copied();
        if let Some(p) = shown {
            if pods::is_ready(p) {
                st.number_ready += 1;
            }
            if available(p) {
                avail += 1;
            } else {
                unavailable_now += 1;
            }
        }
        if rolling && !deleting && new.is_empty() {
            if let Some(o) = old.first() {
                old_candidates.push((o, available(o)));
                surge_nodes.push((n, o));
            }
        } else if rolling && max_surge > 0 && !new.is_empty() {
            // Surge: the old pod goes once the new one is available.
            if available(new[0]) {
                plan.delete.extend(old.iter().filter_map(|p| name(p)));
            }
        }
    }
    st.updated_number_scheduled = Some(updated);
    st.number_available = Some(avail);
    st.number_unavailable = Some(desired - avail).filter(|n| *n > 0);

    if rolling && !deleting {
        if max_surge > 0 {
            let surging = eligible_names
                .iter()
                .filter(|n| {
                    let ps = by_node.get(**n).cloned().unwrap_or_default();
                    ps.iter().any(|p| pods::is_active(p) && is_new(p))
                        && ps.iter().any(|p| pods::is_active(p) && !is_new(p))
                })
                .count();
            let room = usize::try_from(max_surge)
                .unwrap_or(0)
                .saturating_sub(surging);
            for (n, _) in surge_nodes.iter().take(room) {
                plan.create.push(pod_for(ds, n, &hash));
            }
        } else {
            // Unavailable old pods go first (they cost nothing), then available ones within
            // maxUnavailable.
            let mut budget = max_unavailable - unavailable_now;
            for (p, avail) in &old_candidates {
                if !avail {
                    plan.delete.extend(name(p));
                }
            }
            for (p, avail) in &old_candidates {
                if *avail && budget > 0 {
                    plan.delete.extend(name(p));
                    budget -= 1;
                }
            }
        }
    }
    plan.delete.sort();
    plan.delete.dedup();
    plan.status = st;
    if !deleting {
        let owned: Vec<&ControllerRevision> = ns_revisions
            .iter()
            .filter(|r| {
                r.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.controller == Some(true) && o.uid == uid)
            })
            .collect();
        let live: Vec<&str> = by_node
            .values()
            .flatten()
            .filter(|p| pods::is_active(p))
            .filter_map(|p| p.metadata.labels.as_ref()?.get(REVISION_HASH))
            .map(String::as_str)
            .collect();
        plan_revisions(ds, &hash, &owned, &live, &mut plan);
    }
    plan
}

#[cfg(test)]
mod tests;

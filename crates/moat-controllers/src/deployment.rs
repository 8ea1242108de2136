//! Deployment reconcile: one ReplicaSet per pod template (named by the pod-template-hash),
//! rolled forward with RollingUpdate (maxSurge / maxUnavailable) or Recreate, revision
//! annotations for `kubectl rollout history|undo`, history cleanup, and the status fields
//! `kubectl rollout status` reads.
//!
//! The rolling-update arithmetic follows upstream's deployment controller (surge rounds
//! up, unavailable rounds down; unhealthy old replicas are cleaned up first; old sets are
//! scaled down only as far as minAvailable allows). Proportional scaling of several
//! active ReplicaSets when `replicas` changes mid-rollout is simplified: surplus is taken
//! from the oldest sets first.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::pods;

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    #[error("spec.strategy.rollingUpdate.{field}: invalid value {value:?}")]
    BadIntOrPercent { field: &'static str, value: String },
}

/// What the Deployment controller should write.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeployPlan {
    /// A new ReplicaSet to create (for a template no existing set has).
    pub create: Option<ReplicaSet>,
    /// (ReplicaSet name, new spec.replicas, annotations to set) for existing sets.
    pub scale: Vec<ScaleOp>,
    /// Old, empty ReplicaSets beyond revisionHistoryLimit.
    pub delete: Vec<String>,
    /// The revision annotation the Deployment should carry.
    pub revision: Option<String>,
    pub status: DeploymentStatus,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScaleOp {
    pub name: String,
    pub replicas: i32,
    pub annotations: BTreeMap<String, String>,
}

/// Hash of a pod template, encoded with Kubernetes' vowel-free alphabet so it never spells
/// words and is a valid label value. FNV-1a over the canonical JSON (upstream hashes a
/// Go-specific dump; equal templates get equal hashes in both, values differ).
pub fn template_hash(t: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let json = serde_json::to_vec(t).unwrap_or_default();
    let mut h: u32 = 0x811c_9dc5;
    let mut feed = |b: u8| {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    };
    json.iter().copied().for_each(&mut feed);
    if let Some(c) = collision_count {
        c.to_le_bytes().into_iter().for_each(&mut feed);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|d| ALPHABET[usize::from(d - b'0') % ALPHABET.len()] as char)
        .collect()
}

/// Templates are equal ignoring the pod-template-hash label (upstream's EqualIgnoreHash).
fn same_template(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    let strip = |t: &PodTemplateSpec| {
        let mut t = t.clone();
        if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            l.remove(POD_TEMPLATE_HASH);
            if l.is_empty()
                && let Some(m) = t.metadata.as_mut()
            {
                m.labels = None;
            }
        }
        serde_json::to_value(t).unwrap_or_default()
    };
    strip(a) == strip(b)
}

/// Resolves an int-or-percent against `total` (percentages round up for surge and down
/// for unavailable, as upstream).
fn resolve(
    v: Option<&IntOrString>,
    default_pct: i32,
    total: i32,
    round_up: bool,
    field: &'static str,
) -> Result<i32, DeploymentError> {
    let pct = |p: i32| {
        let x = i64::from(p) * i64::from(total);
        let r = if round_up { (x + 99) / 100 } else { x / 100 };
        i32::try_from(r).unwrap_or(i32::MAX)
    };
    match v {
        None => Ok(pct(default_pct)),
        Some(IntOrString::Int(i)) => Ok(*i),
        Some(IntOrString::String(s)) => s
            .strip_suffix('%')
            .and_then(|n| n.parse::<i32>().ok())
            .map(pct)
            .ok_or_else(|| DeploymentError::BadIntOrPercent {
                field,
                value: s.clone(),
            }),
    }
}

fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

fn owner_ref(d: &Deployment) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name: d.metadata.name.clone().unwrap_or_default(),
        uid: d.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Annotations a ReplicaSet inherits from its Deployment (all but kubectl's bookkeeping
/// and the controller's own).
fn inherited_annotations(d: &Deployment) -> BTreeMap<String, String> {
    d.metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != LAST_APPLIED && !k.starts_with("deployment.kubernetes.io/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Plans one sync of deployment `d` given the ReplicaSets and pods of its namespace.
pub fn reconcile(
    d: &Deployment,
    ns_rs: &[ReplicaSet],
    ns_pods: &[k8s_openapi::api::core::v1::Pod],
) -> Result<DeployPlan, DeploymentError> {
    let mut plan = DeployPlan::default();
    let uid = d.metadata.uid.as_deref().unwrap_or("");
    let Some(spec) = d.spec.as_ref() else {
        return Ok(plan);
    };
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let owned: Vec<&ReplicaSet> = ns_rs
        .iter()
        .filter(|rs| {
            rs.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.controller == Some(true) && o.uid == uid)
        })
        .collect();
    let new_rs = owned
        .iter()
        .copied()
        .filter(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| same_template(t, &spec.template))
        })
        .min_by_key(|rs| rs.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let mut old: Vec<&ReplicaSet> = owned
        .iter()
        .copied()
        .filter(|rs| new_rs.is_none_or(|n| n.metadata.name != rs.metadata.name))
        .collect();
    old.sort_by_key(|rs| (revision_of(rs), rs.metadata.name.clone()));
    let max_old_revision = old.iter().map(|rs| revision_of(rs)).max().unwrap_or(0);

    let rolling = spec
        .strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
        != "Recreate";
    let ru = spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    let (max_surge, mut max_unavailable) = if rolling {
        (
            resolve(
                ru.and_then(|r| r.max_surge.as_ref()),
                25,
                replicas,
                true,
                "maxSurge",
            )?,
            resolve(
                ru.and_then(|r| r.max_unavailable.as_ref()),
                25,
                replicas,
                false,
                "maxUnavailable",
            )?,
        )
    } else {
        (0, replicas)
    };
    if rolling && max_surge == 0 && max_unavailable == 0 {
        max_unavailable = 1;
    }

    // The revision the new set carries: kept if it is already the newest, else bumped.
    let new_revision = match new_rs {
        Some(rs) if revision_of(rs) > max_old_revision => revision_of(rs),
        _ => max_old_revision + 1,
    };
    let mut rs_annotations = inherited_annotations(d);
    rs_annotations.insert(REVISION.into(), new_revision.to_string());
    rs_annotations.insert(DESIRED_REPLICAS.into(), replicas.to_string());
    rs_annotations.insert(MAX_REPLICAS.into(), (replicas + max_surge).to_string());

    let old_total: i32 = old.iter().map(|rs| spec_replicas(rs)).sum();
    let old_pods_running = ns_pods.iter().any(|p| {
        pods::controller_uid(p)
            .is_some_and(|o| old.iter().any(|rs| rs.metadata.uid.as_deref() == Some(o)))
    });
    let new_current = new_rs.map(spec_replicas).unwrap_or(0);

    // Desired replicas of the new set.
    let new_target = if !rolling {
        // Recreate never overlaps: the new set waits (untouched) until no old pod is left.
        if old_total > 0 || old_pods_running {
            new_current
        } else {
            replicas
        }
    } else if old_total == 0 {
        replicas
    } else {
        let current_total = old_total + new_current;
        let max_total = replicas + max_surge;
        if current_total >= max_total || new_current >= replicas {
            new_current.min(replicas)
        } else {
            new_current + (max_total - current_total).min(replicas - new_current)
        }
    };

    // Desired replicas of the old sets.
    let mut old_targets: Vec<i32> = old.iter().map(|rs| spec_replicas(rs)).collect();
    if !rolling {
        old_targets.iter_mut().for_each(|r| *r = 0);
    } else if old_total > 0 {
        let all_pods = old_total + new_current;
        let min_available = replicas - max_unavailable;
        let new_unavailable = (new_current - new_rs.map(available).unwrap_or(0)).max(0);
        let mut budget = all_pods - min_available - new_unavailable;
        // First drop old replicas that are not available anyway.
        for (i, rs) in old.iter().enumerate() {
            if budget <= 0 {
                break;
            }
            let unhealthy = (old_targets[i] - available(rs)).max(0).min(budget);
            old_targets[i] -= unhealthy;
            budget -= unhealthy;
        }
        // Then available ones, as far as minAvailable allows, oldest first.
        let avail_total: i32 = old
            .iter()
            .enumerate()
            .map(|(i, rs)| available(rs).min(old_targets[i]))
            .sum::<i32>()
            + new_rs.map(available).unwrap_or(0);
        let mut down = (avail_total - min_available).min(budget).max(0);
        for t in old_targets.iter_mut() {
            if down <= 0 {
                break;
            }
            let step = (*t).min(down);
            *t -= step;
            down -= step;
        }
    }

    match new_rs {
        None => {
            let hash = template_hash(
                &spec.template,
                d.status.as_ref().and_then(|s| s.collision_count),
            );
            let mut tmpl = spec.template.clone();
            tmpl.metadata
                .get_or_insert_with(Default::default)
                .labels
                .get_or_insert_with(Default::default)
                .insert(POD_TEMPLATE_HASH.into(), hash.clone());
            let mut selector = spec.selector.clone();
            selector
                .match_labels
                .get_or_insert_with(Default::default)
                .insert(POD_TEMPLATE_HASH.into(), hash.clone());
            let mut labels = tmpl
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            labels.insert(POD_TEMPLATE_HASH.into(), hash.clone());
            let name = d.metadata.name.clone().unwrap_or_default();
            plan.create = Some(ReplicaSet {
                metadata: ObjectMeta {
                    name: Some(format!("{name}-{hash}")),
                    namespace: d.metadata.namespace.clone(),
                    labels: Some(labels),
                    annotations: Some(rs_annotations.clone()),
                    owner_references: Some(vec![owner_ref(d)]),
                    ..Default::default()
                },
                spec: Some(ReplicaSetSpec {
                    replicas: Some(new_target),
                    min_ready_seconds: spec.min_ready_seconds,
                    selector,
                    template: Some(tmpl),
                }),
                status: None,
            });
        }
        Some(rs) => {
            let have = rs.metadata.annotations.clone().unwrap_or_default();
            let wanted_ann: BTreeMap<String, String> = rs_annotations
                .iter()
                .filter(|(k, v)| have.get(*k) != Some(v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if spec_replicas(rs) != new_target || !wanted_ann.is_empty() {
                plan.scale.push(ScaleOp {
                    name: rs.metadata.name.clone().unwrap_or_default(),
                    replicas: new_target,
                    annotations: wanted_ann,
                });
            }
        }
    }
    for (rs, target) in old.iter().zip(&old_targets) {
        if spec_replicas(rs) != *target {
            plan.scale.push(ScaleOp {
                name: rs.metadata.name.clone().unwrap_or_default(),
                replicas: *target,
                annotations: BTreeMap::new(),
            });
        }
    }

    // History: empty old sets beyond the limit, oldest revisions first.
    let limit = usize::try_from(spec.revision_history_limit.unwrap_or(10).max(0)).unwrap_or(10);
    let empty_old: Vec<&ReplicaSet> = old
        .iter()
        .zip(&old_targets)
        .filter(|(rs, t)| {
            **t == 0
                && rs.status.as_ref().map(|s| s.replicas).unwrap_or(0) == 0
                && rs.metadata.deletion_timestamp.is_none()
        })
        .map(|(rs, _)| *rs)
        .collect();
    if empty_old.len() > limit {
        plan.delete = empty_old[..empty_old.len() - limit]
            .iter()
            .filter_map(|rs| rs.metadata.name.clone())
            .collect();
    }
    plan.revision = Some(new_revision.to_string());

    // Status from the sets' own status (written by the ReplicaSet controller).
    let st = |rs: &ReplicaSet, f: fn(&k8s_openapi::api::apps::v1::ReplicaSetStatus) -> i32| {
        rs.status.as_ref().map(f).unwrap_or(0)
    };
    let all: Vec<&ReplicaSet> = owned.clone();
    let total = all.iter().map(|rs| st(rs, |s| s.replicas)).sum::<i32>();
    let ready = all
        .iter()
        .map(|rs| st(rs, |s| s.ready_replicas.unwrap_or(0)))
        .sum::<i32>();
    let avail = all
        .iter()
        .map(|rs| st(rs, |s| s.available_replicas.unwrap_or(0)))
        .sum::<i32>();
    let updated = new_rs.map(|rs| st(rs, |s| s.replicas)).unwrap_or(0);
    let complete =
        new_rs.is_some() && updated == replicas && total == replicas && avail >= replicas;
    let min_ok = avail >= replicas - max_unavailable.min(replicas);
    let prev = d
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let cond = |type_: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        let old = prev.iter().find(|c| c.type_ == type_);
        let unchanged =
            old.is_some_and(|c| c.status == status && c.reason.as_deref() == Some(reason));
        DeploymentCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_transition_time: if unchanged {
                old.and_then(|c| c.last_transition_time.clone())
            } else {
                None
            },
            last_update_time: if unchanged {
                old.and_then(|c| c.last_update_time.clone())
            } else {
                None
            },
        }
    };
    let rs_name = new_rs
        .and_then(|r| r.metadata.name.clone())
        .or_else(|| plan.create.as_ref().and_then(|r| r.metadata.name.clone()))
        .unwrap_or_default();
    plan.status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(total),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(avail),
        unavailable_replicas: Some((replicas - avail).max(0)),
        collision_count: d.status.as_ref().and_then(|s| s.collision_count),
        terminating_replicas: None,
        conditions: Some(vec![
            if min_ok {
                cond(
                    "Available",
                    true,
                    "MinimumReplicasAvailable",
                    "Deployment has minimum availability.".into(),
                )
            } else {
                cond(
                    "Available",
                    false,
                    "MinimumReplicasUnavailable",
                    "Deployment does not have minimum availability.".into(),
                )
            },
            if complete {
                cond(
                    "Progressing",
                    true,
                    "NewReplicaSetAvailable",
                    format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
                )
            } else if new_rs.is_none() {
                cond(
                    "Progressing",
                    true,
                    "NewReplicaSetCreated",
                    format!("Created new replica set \"{rs_name}\""),
                )
            } else {
                cond(
                    "Progressing",
                    true,
                    "ReplicaSetUpdated",
                    format!("ReplicaSet \"{rs_name}\" is progressing."),
                )
            },
        ]),
    };
    Ok(plan)
}

#[cfg(test)]
mod tests;

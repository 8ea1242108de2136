//! The object-level front of [`State`]: given the caller's whole lists of Namespaces, Pods
//! and NetworkPolicies (what the node agent's watch caches hold), find what changed since
//! the last accepted call and feed only that to the state.
//!
//! Change detection is O(n) and parses only what changed: a Pod or NetworkPolicy with a
//! `metadata.uid` and a `metadata.resourceVersion` equal to the last accepted ones is taken
//! as unchanged (the API server bumps the resourceVersion on every write) — for pods, only
//! if `status.podIP` is the same too, because the agent fills in the address of a pod
//! whose sandbox exists before the API shows it. Objects without uid or resourceVersion
//! (manifests, tests) are parsed every time and compared by value. Namespaces are few and
//! always compared by value. Objects missing from a call are deleted.
//!
//! Validation keeps the whole-snapshot contract: if any object of the call is invalid, the
//! call changes nothing and the error lists exactly what [`Snapshot::build`] would list
//! (an object accepted before and unchanged since is valid, since validation is a
//! function of the object).

use std::collections::{BTreeSet, HashMap};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::{self, InvalidInput, Options, PodInfo, Policy, Snapshot};
use crate::state::State;

/// (resourceVersion, podIP) of an object with a uid and a resourceVersion.
type Fingerprint = (String, Option<String>);

/// What was last accepted for one object.
struct Seen<K> {
    fingerprint: Option<Fingerprint>,
    /// The call that last saw it (objects not seen by a call are deleted).
    generation: u64,
    key: K,
}

/// The state plus what it was built from.
pub(crate) struct Tracked {
    pub(crate) state: State,
    pub(crate) opts: Options,
    pods: HashMap<String, Seen<(String, String, String)>>,
    policies: HashMap<String, Seen<(String, String)>>,
    generation: u64,
}

fn identity(meta: &ObjectMeta) -> String {
    match meta.uid.as_deref() {
        Some(u) if !u.is_empty() => u.to_string(),
        // A NUL never appears in a uid, so the two kinds of identity never collide.
        _ => format!(
            "\0{}/{}",
            meta.namespace.as_deref().unwrap_or("default"),
            meta.name.as_deref().unwrap_or("")
        ),
    }
}

fn fingerprint(meta: &ObjectMeta, pod_ip: Option<&str>) -> Option<Fingerprint> {
    let rv = meta.resource_version.as_deref().filter(|v| !v.is_empty())?;
    meta.uid.as_deref().filter(|u| !u.is_empty())?;
    Some((rv.to_string(), pod_ip.map(str::to_string)))
}

fn same(seen: Option<&Fingerprint>, meta: &ObjectMeta, pod_ip: Option<&str>) -> bool {
    let (Some((rv, ip)), Some(cur)) = (seen, meta.resource_version.as_deref()) else {
        return false;
    };
    rv == cur && ip.as_deref() == pod_ip
}

fn pod_ip(p: &Pod) -> Option<&str> {
    p.status.as_ref().and_then(|s| s.pod_ip.as_deref())
}

impl Tracked {
    /// Builds the state from a validated snapshot of the same objects.
    pub(crate) fn build(
        snap: &Snapshot,
        pods: &[Pod],
        policies: &[NetworkPolicy],
        opts: &Options,
    ) -> Tracked {
        let mut t = Tracked {
            state: State::from_snapshot(snap),
            opts: opts.clone(),
            pods: HashMap::new(),
            policies: HashMap::new(),
            generation: 0,
        };
        for p in pods {
            let m = &p.metadata;
            t.pods.insert(
                identity(m),
                Seen {
                    fingerprint: fingerprint(m, pod_ip(p)),
                    generation: 0,
                    key: (
                        m.namespace.clone().unwrap_or_else(|| "default".into()),
                        m.name.clone().unwrap_or_default(),
                        m.uid.clone().unwrap_or_default(),
                    ),
                },
            );
        }
        for p in policies {
            let m = &p.metadata;
            t.policies.insert(
                identity(m),
                Seen {
                    fingerprint: fingerprint(m, None),
                    generation: 0,
                    key: (
                        m.namespace.clone().unwrap_or_else(|| "default".into()),
                        m.name.clone().unwrap_or_default(),
                    ),
                },
            );
        }
        t
    }

    /// Feeds the changes between the last accepted call and this one to the state (not
    /// flushed). Invalid input changes nothing.
    pub(crate) fn update(
        &mut self,
        namespaces: &[Namespace],
        pods: &[Pod],
        policies: &[NetworkPolicy],
    ) -> Result<(), Vec<InvalidInput>> {
        let generation = self.generation + 1;
        let mut errs = Vec::new();
        let mut pod_changes: Vec<(String, Option<Fingerprint>, PodInfo)> = vec![];
        let mut seen_pods: Vec<&str> = Vec::new();
        for p in pods {
            let ip = pod_ip(p);
            if let Some(u) = p.metadata.uid.as_deref()
                && let Some(s) = self.pods.get(u)
                && same(s.fingerprint.as_ref(), &p.metadata, ip)
            {
                seen_pods.push(u);
                continue;
            }
            match model::pod_info(p, &self.opts) {
                Ok(pi) => {
                    pod_changes.push((identity(&p.metadata), fingerprint(&p.metadata, ip), pi))
                }
                Err(e) => errs.push(e),
            }
        }
        let mut pol_changes: Vec<(String, Option<Fingerprint>, Policy)> = vec![];
        let mut seen_pols: Vec<&str> = Vec::new();
        for np in policies {
            if let Some(u) = np.metadata.uid.as_deref()
                && let Some(s) = self.policies.get(u)
                && same(s.fingerprint.as_ref(), &np.metadata, None)
            {
                seen_pols.push(u);
                continue;
            }
            match model::policy(np) {
                Ok(p) => {
                    pol_changes.push((identity(&np.metadata), fingerprint(&np.metadata, None), p))
                }
                Err(mut e) => errs.append(&mut e),
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        // Accepted: from here on everything is applied.
        self.generation = generation;
        let infos: Vec<model::NsInfo> = namespaces
            .iter()
            .map(|n| model::ns_info(n, &self.opts))
            .collect();
        let names: BTreeSet<&str> = infos.iter().map(|n| n.name.as_str()).collect();
        let gone: Vec<String> = self
            .state
            .namespace_names()
            .filter(|n| !names.contains(n))
            .map(str::to_string)
            .collect();
        for n in gone {
            self.state.delete_namespace(&n);
        }
        for info in infos {
            self.state.upsert_namespace(info);
        }
        // Deletions first: a policy deleted and re-created under the same name since the
        // last call is a new uid, and its old identity must not delete the new one.
        for u in seen_pods {
            if let Some(s) = self.pods.get_mut(u) {
                s.generation = generation;
            }
        }
        for (id, _, _) in &pod_changes {
            if let Some(s) = self.pods.get_mut(id) {
                s.generation = generation;
            }
        }
        let state = &mut self.state;
        self.pods.retain(|_, s| {
            let keep = s.generation == generation;
            if !keep {
                state.delete_pod(&s.key.0, &s.key.1, &s.key.2);
            }
            keep
        });
        for u in seen_pols {
            if let Some(s) = self.policies.get_mut(u) {
                s.generation = generation;
            }
        }
        for (id, _, _) in &pol_changes {
            if let Some(s) = self.policies.get_mut(id) {
                s.generation = generation;
            }
        }
        let state = &mut self.state;
        self.policies.retain(|_, s| {
            let keep = s.generation == generation;
            if !keep {
                state.delete_policy(&s.key.0, &s.key.1);
            }
            keep
        });
        for (id, fingerprint, pi) in pod_changes {
            let key = (pi.namespace.clone(), pi.name.clone(), pi.uid.clone());
            if let Some(old) = self.pods.get(&id)
                && old.key != key
            {
                self.state.delete_pod(&old.key.0, &old.key.1, &old.key.2);
            }
            self.state.upsert_pod(pi);
            self.pods.insert(
                id,
                Seen {
                    fingerprint,
                    generation,
                    key,
                },
            );
        }
        for (id, fingerprint, p) in pol_changes {
            let key = (p.namespace.clone(), p.name.clone());
            if let Some(old) = self.policies.get(&id)
                && old.key != key
            {
                self.state.delete_policy(&old.key.0, &old.key.1);
            }
            self.state.upsert_policy(p);
            self.policies.insert(
                id,
                Seen {
                    fingerprint,
                    generation,
                    key,
                },
            );
        }
        Ok(())
    }
}

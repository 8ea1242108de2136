//! The garbage collector and the namespace controller, as plans.
//!
//! Garbage collection follows `metadata.ownerReferences` the way kube-controller-manager
//! does: a dependent whose owners are all gone is deleted (in the background); an owner
//! being deleted with the `foregroundDeletion` finalizer has its dependents deleted first
//! (foreground, recursively) and loses the finalizer once no dependent that blocks owner
//! deletion remains; an owner being deleted with the `orphan` finalizer has its references
//! removed from its dependents, then loses the finalizer.
//!
//! A namespace being deleted has everything in it deleted; once nothing is left, its
//! `kubernetes` finalizer is removed through `/finalize` and the API server removes it.

use std::collections::{HashMap, HashSet};

pub const ORPHAN: &str = "orphan";
pub const FOREGROUND: &str = "foregroundDeletion";
pub const NAMESPACE_FINALIZER: &str = "kubernetes";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRef {
    pub uid: String,
    pub block_owner_deletion: bool,
    /// The owner's identity (`apiVersion`, `kind`, `name`), so a collector reading from
    /// caches can confirm with a live read that an owner is really gone before acting.
    pub api_version: String,
    pub kind: String,
    pub name: String,
}

/// What the collector needs of any object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Obj {
    /// The object's API path (`/api/v1/namespaces/x/pods/p`).
    pub path: String,
    pub uid: String,
    pub namespace: Option<String>,
    pub owners: Vec<OwnerRef>,
    pub deleting: bool,
    pub finalizers: Vec<String>,
}

impl Obj {
    /// Reads the fields the collector uses from an object as JSON.
    pub fn from_json(path: String, v: &serde_json::Value) -> Obj {
        let m = &v["metadata"];
        Obj {
            path,
            uid: m["uid"].as_str().unwrap_or("").to_string(),
            namespace: m["namespace"].as_str().map(str::to_string),
            owners: m["ownerReferences"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|o| OwnerRef {
                            uid: o["uid"].as_str().unwrap_or("").to_string(),
                            block_owner_deletion: o["blockOwnerDeletion"] == true,
                            api_version: o["apiVersion"].as_str().unwrap_or("").to_string(),
                            kind: o["kind"].as_str().unwrap_or("").to_string(),
                            name: o["name"].as_str().unwrap_or("").to_string(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            deleting: m["deletionTimestamp"].is_string(),
            finalizers: m["finalizers"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|f| f.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// DELETE the object with this propagation policy.
    Delete {
        path: String,
        propagation: &'static str,
    },
    /// Remove the owner references with these uids from the object.
    RemoveOwnerRefs { path: String, uids: Vec<String> },
    /// Remove this finalizer from `metadata.finalizers`.
    RemoveFinalizer {
        path: String,
        finalizer: &'static str,
    },
}

/// One pass of the garbage collector over every object that can own or be owned.
pub fn plan(objs: &[Obj]) -> Vec<Action> {
    let by_uid: HashMap<&str, &Obj> = objs.iter().map(|o| (o.uid.as_str(), o)).collect();
    let mut actions = Vec::new();
    // Dependents.
    for o in objs.iter().filter(|o| !o.owners.is_empty() && !o.deleting) {
        let present: Vec<&Obj> = o
            .owners
            .iter()
            .filter_map(|r| by_uid.get(r.uid.as_str()).copied())
            .collect();
        if present.is_empty() {
            actions.push(Action::Delete {
                path: o.path.clone(),
                propagation: "Background",
            });
            continue;
        }
        if present
            .iter()
            .any(|p| p.deleting && p.finalizers.iter().any(|f| f == FOREGROUND))
        {
            actions.push(Action::Delete {
                path: o.path.clone(),
                propagation: "Foreground",
            });
            continue;
        }
        // References to owners that are gone, or that orphan their dependents, go.
        let drop: Vec<String> = o
            .owners
            .iter()
            .filter(|r| match by_uid.get(r.uid.as_str()) {
                None => true,
                Some(p) => p.deleting && p.finalizers.iter().any(|f| f == ORPHAN),
            })
            .map(|r| r.uid.clone())
            .collect();
        if !drop.is_empty() {
            actions.push(Action::RemoveOwnerRefs {
                path: o.path.clone(),
                uids: drop,
            });
        }
    }
    // Owners being deleted.
    let referenced: HashSet<&str> = objs
        .iter()
        .flat_map(|o| o.owners.iter().map(|r| r.uid.as_str()))
        .collect();
    let blocking: HashSet<&str> = objs
        .iter()
        .flat_map(|o| {
            o.owners
                .iter()
                .filter(|r| r.block_owner_deletion)
                .map(|r| r.uid.as_str())
        })
        .collect();
    for o in objs.iter().filter(|o| o.deleting) {
        if o.finalizers.iter().any(|f| f == ORPHAN) && !referenced.contains(o.uid.as_str()) {
            actions.push(Action::RemoveFinalizer {
                path: o.path.clone(),
                finalizer: ORPHAN,
            });
        }
        if o.finalizers.iter().any(|f| f == FOREGROUND) && !blocking.contains(o.uid.as_str()) {
            actions.push(Action::RemoveFinalizer {
                path: o.path.clone(),
                finalizer: FOREGROUND,
            });
        }
    }
    actions
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceAction {
    /// Delete this object of the terminating namespace.
    Delete { path: String },
    /// Everything is gone: clear the namespace's `kubernetes` finalizer.
    Finalize { namespace: String },
}

/// One pass of the namespace controller: `terminating` are the namespaces with a
/// deletionTimestamp and the `kubernetes` finalizer; `contents` every namespaced object.
pub fn plan_namespaces(terminating: &[String], contents: &[Obj]) -> Vec<NamespaceAction> {
    let mut out = Vec::new();
    for ns in terminating {
        let inside: Vec<&Obj> = contents
            .iter()
            .filter(|o| o.namespace.as_deref() == Some(ns.as_str()))
            .collect();
        if inside.is_empty() {
            out.push(NamespaceAction::Finalize {
                namespace: ns.clone(),
            });
        }
        for o in inside.into_iter().filter(|o| !o.deleting) {
            out.push(NamespaceAction::Delete {
                path: o.path.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(name: &str, owners: &[(&str, bool)]) -> Obj {
        Obj {
            path: format!("/p/{name}"),
            uid: name.to_string(),
            namespace: Some("default".into()),
            owners: owners
                .iter()
                .map(|(u, b)| OwnerRef {
                    uid: u.to_string(),
                    block_owner_deletion: *b,
                    api_version: "v1".into(),
                    kind: "Thing".into(),
                    name: u.to_string(),
                })
                .collect(),
            deleting: false,
            finalizers: vec![],
        }
    }

    fn deleting(mut o: Obj, f: &str) -> Obj {
        o.deleting = true;
        o.finalizers = vec![f.to_string()];
        o
    }

    #[test]
    fn dependents_of_a_gone_owner_are_deleted_in_the_background() {
        let rs = obj("rs", &[("deploy", true)]);
        let pod = obj("pod", &[("rs", true)]);
        let a = plan(&[rs.clone(), pod.clone()]);
        assert_eq!(
            a,
            vec![Action::Delete {
                path: "/p/rs".into(),
                propagation: "Background"
            }]
        );
        // The pod goes on the next pass, once its ReplicaSet is gone.
        assert_eq!(
            plan(&[pod]),
            vec![Action::Delete {
                path: "/p/pod".into(),
                propagation: "Background"
            }]
        );
    }

    #[test]
    fn foreground_deletes_dependents_first_then_the_finalizer() {
        let d = deleting(obj("deploy", &[]), FOREGROUND);
        let rs = obj("rs", &[("deploy", true)]);
        assert_eq!(
            plan(&[d.clone(), rs.clone()]),
            vec![Action::Delete {
                path: "/p/rs".into(),
                propagation: "Foreground"
            }]
        );
        // While the ReplicaSet is itself being deleted, the Deployment waits.
        let rs_del = deleting(rs, FOREGROUND);
        let a = plan(&[d.clone(), rs_del]);
        assert!(
            !a.contains(&Action::RemoveFinalizer {
                path: "/p/deploy".into(),
                finalizer: FOREGROUND
            }),
            "{a:?}"
        );
        // A dependent that does not block owner deletion does not hold it.
        let loose = obj("cm", &[("deploy", false)]);
        assert!(
            plan(&[d.clone(), loose]).contains(&Action::RemoveFinalizer {
                path: "/p/deploy".into(),
                finalizer: FOREGROUND
            })
        );
        assert_eq!(
            plan(&[d]),
            vec![Action::RemoveFinalizer {
                path: "/p/deploy".into(),
                finalizer: FOREGROUND
            }]
        );
    }

    #[test]
    fn orphan_releases_dependents_then_the_owner() {
        let d = deleting(obj("deploy", &[]), ORPHAN);
        let rs = obj("rs", &[("deploy", true), ("other", false)]);
        let other = obj("other", &[]);
        assert_eq!(
            plan(&[d.clone(), rs, other.clone()]),
            vec![Action::RemoveOwnerRefs {
                path: "/p/rs".into(),
                uids: vec!["deploy".into()]
            }]
        );
        let released = obj("rs", &[("other", false)]);
        assert_eq!(
            plan(&[d, released, other]),
            vec![Action::RemoveFinalizer {
                path: "/p/deploy".into(),
                finalizer: ORPHAN
            }]
        );
    }

    #[test]
    fn dangling_references_are_dropped_when_another_owner_remains() {
        let a = plan(&[
            obj("x", &[("gone", false), ("here", false)]),
            obj("here", &[]),
        ]);
        assert_eq!(
            a,
            vec![Action::RemoveOwnerRefs {
                path: "/p/x".into(),
                uids: vec!["gone".into()]
            }]
        );
    }

    #[test]
    fn namespaces_are_emptied_then_finalized() {
        let mut other = obj("y", &[]);
        other.namespace = Some("keep".into());
        let mut gone = obj("z", &[]);
        gone.deleting = true;
        let a = plan_namespaces(&["default".into()], &[obj("x", &[]), other.clone(), gone]);
        assert_eq!(
            a,
            vec![NamespaceAction::Delete {
                path: "/p/x".into()
            }]
        );
        assert_eq!(
            plan_namespaces(&["default".into()], &[other]),
            vec![NamespaceAction::Finalize {
                namespace: "default".into()
            }]
        );
    }
}

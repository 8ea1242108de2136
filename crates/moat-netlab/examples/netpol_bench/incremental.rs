//! The incremental engine at 5,000 pods / 1,000 policies: for each kind of change, the time
//! to the diff script (compile + diff) and to the kernel (plus `nft -f` in the lab's own
//! host namespace), against the full recompile + diff of the same change measured here.
//!
//! Two incremental paths are timed: the `State` API (the change handed over as one object)
//! and `Engine::sync_objects_incremental` (what the node agent calls: its whole cached lists,
//! scanned for changed resourceVersions). Every object carries a uid and a resourceVersion
//! as API objects do. Each change is done and undone `REPS` times; medians are printed.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use moat_netlab::Lab;
use moat_netpol::apply::{ApplyError, Nft};
use moat_netpol::{Engine, NftApply, Options, Snapshot, State, compile, model, render};
use serde_json::json;

const REPS: usize = 11;
const GOAL_COMPILE_MS: f64 = 20.0;
const GOAL_KERNEL_MS: f64 = 50.0;

type World = (Vec<Namespace>, Vec<Pod>, Vec<NetworkPolicy>);

/// The real `nft`, timing each transaction (the kernel's share of a sync).
struct Timed {
    nft: Nft,
    last: Rc<Cell<Duration>>,
}

impl NftApply for Timed {
    fn apply(&self, script: &str) -> Result<(), ApplyError> {
        let t = Instant::now();
        let r = self.nft.apply(script);
        self.last.set(t.elapsed());
        r
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One change to the cluster, in both directions.
#[derive(Clone)]
enum Change {
    /// Replace the pod at this index.
    Pod(usize, Pod),
    AddPod(Pod),
    DeletePod(usize),
    AddPolicy(NetworkPolicy),
    DeletePolicy(usize),
}

struct Objects {
    world: World,
    rv: u64,
}

impl Objects {
    fn bump(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    /// Applies a change to the object lists (as the watch caches would see it) and returns
    /// its inverse.
    fn apply(&mut self, c: &Change) -> Change {
        let rv = self.bump();
        match c {
            Change::Pod(i, p) => {
                let mut p = p.clone();
                p.metadata.resource_version = Some(rv);
                let old = std::mem::replace(&mut self.world.1[*i], p);
                Change::Pod(*i, old)
            }
            Change::AddPod(p) => {
                let mut p = p.clone();
                p.metadata.resource_version = Some(rv);
                self.world.1.push(p);
                Change::DeletePod(self.world.1.len() - 1)
            }
            Change::DeletePod(i) => Change::AddPod(self.world.1.remove(*i)),
            Change::AddPolicy(p) => {
                let mut p = p.clone();
                p.metadata.resource_version = Some(rv);
                self.world.2.push(p);
                Change::DeletePolicy(self.world.2.len() - 1)
            }
            Change::DeletePolicy(i) => Change::AddPolicy(self.world.2.remove(*i)),
        }
    }
}

/// Hands one change to a `State` as the object it is.
fn feed(state: &mut State, o: &Objects, c: &Change, before: &World, opts: &Options) {
    let key = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        (
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
            m.uid.clone().unwrap_or_default(),
        )
    };
    match c {
        Change::Pod(i, _) => {
            let old = key(&before.1[*i].metadata);
            if old != key(&o.world.1[*i].metadata) {
                state.delete_pod(&old.0, &old.1, &old.2);
            }
            state.upsert_pod(model::pod_info(&o.world.1[*i], opts).expect("pod"));
        }
        Change::AddPod(_) => {
            let p = o.world.1.last().expect("added");
            state.upsert_pod(model::pod_info(p, opts).expect("pod"));
        }
        Change::DeletePod(i) => {
            let (ns, name, uid) = key(&before.1[*i].metadata);
            state.delete_pod(&ns, &name, &uid);
        }
        Change::AddPolicy(_) => {
            let p = o.world.2.last().expect("added");
            state.upsert_policy(model::policy(p).expect("policy"));
        }
        Change::DeletePolicy(i) => {
            let (ns, name, _) = key(&before.2[*i].metadata);
            state.delete_policy(&ns, &name);
        }
    }
}

fn with_identity(mut w: World) -> World {
    let mut n = 0u64;
    let mut id = |m: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        n += 1;
        m.uid = Some(format!("uid-{n}"));
        m.resource_version = Some("1".into());
    };
    w.0.iter_mut().for_each(|o| id(&mut o.metadata));
    w.1.iter_mut().for_each(|o| id(&mut o.metadata));
    w.2.iter_mut().for_each(|o| id(&mut o.metadata));
    w
}

fn pod_at(w: &World, ns: &str, name: &str) -> usize {
    w.1.iter()
        .position(|p| {
            p.metadata.namespace.as_deref() == Some(ns) && p.metadata.name.as_deref() == Some(name)
        })
        .expect("pod")
}

fn relabel(w: &World, i: usize, key: &str, value: &str) -> Change {
    let mut p = w.1[i].clone();
    p.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(key.into(), value.into());
    Change::Pod(i, p)
}

pub fn run(lab: &Lab, world: World) {
    let opts = Options::default();
    let mut o = Objects {
        world: with_identity(world),
        rv: 1,
    };
    let new_pod: Pod = serde_json::from_value(json!({
        "metadata": {"namespace": "n0", "name": "fresh", "uid": "uid-fresh",
                     "labels": {"app": "a4", "tier": "fe"}},
        "spec": {"containers": [{"name": "c", "ports": [{"name": "web", "containerPort": 8080}]}]},
        "status": {"podIP": "10.42.0.200"}
    }))
    .expect("pod");
    let new_policy: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"namespace": "n5", "name": "extra", "uid": "uid-extra"},
        "spec": {"podSelector": {"matchLabels": {"app": "a5"}},
                 "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "t5"}},
                                        "podSelector": {"matchLabels": {"tier": "fe"}}}],
                              "ports": [{"port": 9000}]}]}
    }))
    .expect("policy");
    let w = &o.world;
    let cases: Vec<(&str, Change)> = vec![
        (
            "label change (app, one namespace)",
            relabel(w, pod_at(w, "n0", "p7"), "app", "a3"),
        ),
        (
            "label change (tier: peer of 100 policies)",
            relabel(w, pod_at(w, "n3", "p4"), "tier", "be"),
        ),
        ("pod add", Change::AddPod(new_pod)),
        ("pod delete", Change::DeletePod(pod_at(w, "n0", "p3"))),
        ("policy add", Change::AddPolicy(new_policy)),
    ];

    let last_apply = Rc::new(Cell::new(Duration::ZERO));
    let mut engine = Engine::new(Timed {
        nft: lab.nft(),
        last: last_apply.clone(),
    });
    let t = Instant::now();
    engine
        .sync_objects_incremental(&o.world.0, &o.world.1, &o.world.2, &opts)
        .expect("first sync");
    println!(
        "incremental engine: first sync (whole build + full table) {:.0} ms",
        ms(t.elapsed())
    );
    let t = Instant::now();
    let snap = Snapshot::build(&o.world.0, &o.world.1, &o.world.2, &opts).expect("valid");
    let mut state = State::from_snapshot(&snap);
    println!(
        "incremental engine: State::from_snapshot {:.0} ms",
        ms(t.elapsed())
    );
    let t = Instant::now();
    assert_eq!(engine.self_check().expect("self-check"), None, "no drift");
    println!(
        "incremental engine: self-check (full compile + compare) {:.0} ms, no drift",
        ms(t.elapsed())
    );

    // The lab applies through `ip netns exec`, which the node agent (nft in its own
    // namespace) does not pay: shown so the kernel figures can be read either way.
    let netns_exec = median(
        (0..REPS)
            .map(|_| {
                let t = Instant::now();
                let st = std::process::Command::new("ip")
                    .args(["netns", "exec", lab.host_netns(), "true"])
                    .status()
                    .expect("ip netns exec");
                assert!(st.success());
                ms(t.elapsed())
            })
            .collect(),
    );
    println!(
        "incremental, 5,000 pods / 1,000 policies, median of {REPS} (goals: compile+diff < {GOAL_COMPILE_MS} ms, to the kernel < {GOAL_KERNEL_MS} ms; `ip netns exec` alone takes {netns_exec:.1} ms of each nft figure):"
    );
    for (name, change) in cases {
        // Today's path for the same change, once: validate + compile everything + diff.
        let before = compile(&snap_of(&o.world, &opts));
        let mut changed = Objects {
            world: o.world.clone(),
            rv: o.rv,
        };
        changed.apply(&change);
        let t = Instant::now();
        let after = compile(&snap_of(&changed.world, &opts));
        let script_full = render::diff(&before, &after);
        let full_ms = ms(t.elapsed());
        drop(changed);
        let (mut st_ms, mut obj_ms, mut kernel_ms, mut apply_ms, mut bytes) =
            (vec![], vec![], vec![], vec![], 0);
        let mut change = change;
        for rep in 0..2 * REPS {
            let before = o.world.clone();
            let inverse = o.apply(&change);
            // State API: the change handed over directly.
            let t = Instant::now();
            feed(&mut state, &o, &change, &before, &opts);
            let script = state.flush().script();
            let st = ms(t.elapsed());
            // What the agent calls: whole lists in, kernel updated.
            last_apply.set(Duration::ZERO);
            let t = Instant::now();
            let stats = engine
                .sync_objects_incremental(&o.world.0, &o.world.1, &o.world.2, &opts)
                .expect("incremental sync");
            let total = ms(t.elapsed());
            let nft = ms(last_apply.get());
            assert_eq!(stats.script_bytes, script.len(), "both paths, one diff");
            if rep % 2 == 0 {
                // Forward changes only (the odd reps undo them).
                assert_eq!(script, script_full, "incremental diff == full diff");
                st_ms.push(st);
                obj_ms.push(total - nft);
                kernel_ms.push(total);
                apply_ms.push(nft);
                bytes = script.len();
            }
            change = inverse;
        }
        let (st, obj, kernel, nft) = (
            median(st_ms),
            median(obj_ms),
            median(kernel_ms),
            median(apply_ms),
        );
        let full_kernel = full_ms + nft;
        let verdict = |v: f64, goal: f64| if v < goal { "met" } else { "MISSED" };
        println!(
            "  {name}: {bytes} B of nft; compile+diff {st:.2} ms (State) / {obj:.2} ms (sync_objects_incremental, incl. the O(n) change scan) vs full recompile+diff {full_ms:.0} ms: ratio {:.5}, goal {}; to the kernel {kernel:.1} ms (nft {nft:.1} ms) vs {full_kernel:.0} ms: ratio {:.4}, goal {}",
            obj / full_ms,
            verdict(obj, GOAL_COMPILE_MS),
            kernel / full_kernel,
            verdict(kernel, GOAL_KERNEL_MS),
        );
    }
    assert_eq!(engine.self_check().expect("self-check"), None, "no drift");
    assert_eq!(state.compiled(), engine.current().expect("applied"));
}

fn snap_of(w: &World, opts: &Options) -> Snapshot {
    Snapshot::build(&w.0, &w.1, &w.2, opts).expect("valid")
}

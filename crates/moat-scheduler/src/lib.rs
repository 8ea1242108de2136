//! The scheduling core: which nodes can run a pod (filters) and which of them is best
//! (scores), with kube-scheduler's semantics and its user-facing wording.
//!
//! Sans-IO: the scheduler loop in the controller binary watches pods and nodes through the
//! API, keeps a [`Cluster`] snapshot, calls [`schedule`] and POSTs a Binding. Nothing here
//! blocks or allocates per node beyond what the answer needs, because the benchmark target
//! is ≥1,000 pods/s over 1,000 nodes on two cores.
//!
//! Filters run in kube-scheduler's default-profile order (NodeUnschedulable, NodeName,
//! TaintToleration, NodeAffinity, NodeResourcesFit) and a node is rejected by the first
//! filter that fails, so the per-node reason a user sees is the same as upstream's.

pub use std::collections::{BTreeMap, HashMap};
use std::fmt;

use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, Taint, Toleration,
};

pub use moat_api::quantity::{self, QuantityError};

/// Requested or allocatable amounts, in the units the filters compare.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub pods: i64,
}

impl Resources {
    fn add(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_add(o.milli_cpu);
        self.memory = self.memory.saturating_add(o.memory);
        self.pods = self.pods.saturating_add(o.pods);
    }

    fn sub(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_sub(o.milli_cpu);
        self.memory = self.memory.saturating_sub(o.memory);
        self.pods = self.pods.saturating_sub(o.pods);
    }

    fn max(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.max(o.milli_cpu);
        self.memory = self.memory.max(o.memory);
    }
}

/// Errors from reading a pod or node (bad quantities): the pod cannot be scheduled until
/// it is fixed, and the message says which field is wrong.
#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    #[error("pod {pod}: {field}")]
    PodQuantity {
        pod: String,
        field: String,
        #[source]
        source: QuantityError,
    },
}

type QMap = BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>;

fn read_resources(map: Option<&QMap>, what: &str, pod: &str) -> Result<Resources, SchedError> {
    let mut r = Resources::default();
    let Some(map) = map else { return Ok(r) };
    for (name, q) in map {
        let bad = |source| SchedError::PodQuantity {
            pod: pod.to_string(),
            field: format!("{what}[{name}]"),
            source,
        };
        match name.as_str() {
            "cpu" => r.milli_cpu = quantity::milli_value(&q.0).map_err(bad)?,
            "memory" => r.memory = quantity::value(&q.0).map_err(bad)?,
            _ => {}
        }
    }
    Ok(r)
}

/// What a pod asks of a node: max(sum of containers, largest init container) + overhead,
/// plus one pod slot. Requests default to limits when only limits are given (as the API
/// server's defaulting does).
pub fn pod_requests(pod: &Pod) -> Result<Resources, SchedError> {
    let name = pod.metadata.name.as_deref().unwrap_or("");
    let mut total = Resources::default();
    let Some(spec) = &pod.spec else {
        total.pods = 1;
        return Ok(total);
    };
    let container_req = |c: &k8s_openapi::api::core::v1::Container, what: &str| {
        let res = c.resources.as_ref();
        let req = res.and_then(|r| r.requests.as_ref());
        let lim = res.and_then(|r| r.limits.as_ref());
        let mut r = read_resources(lim, &format!("{what}.resources.limits"), name)?;
        let q = read_resources(req, &format!("{what}.resources.requests"), name)?;
        if req.is_some_and(|m| m.contains_key("cpu")) {
            r.milli_cpu = q.milli_cpu;
        }
        if req.is_some_and(|m| m.contains_key("memory")) {
            r.memory = q.memory;
        }
        Ok::<_, SchedError>(r)
    };
    for (i, c) in spec.containers.iter().enumerate() {
        total.add(&container_req(c, &format!("spec.containers[{i}]"))?);
    }
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        total.max(&container_req(c, &format!("spec.initContainers[{i}]"))?);
    }
    total.add(&read_resources(
        spec.overhead.as_ref(),
        "spec.overhead",
        name,
    )?);
    total.pods = 1;
    Ok(total)
}

/// Why one node cannot run the pod, worded as kube-scheduler words it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Unfit {
    Unschedulable,
    NodeName,
    UntoleratedTaint { key: String, value: String },
    Affinity,
    Insufficient(&'static str),
    TooManyPods,
}

impl fmt::Display for Unfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unfit::Unschedulable => f.write_str("node(s) were unschedulable"),
            Unfit::NodeName => f.write_str("node(s) didn't match the requested node name"),
            Unfit::UntoleratedTaint { key, value } => {
                write!(f, "node(s) had untolerated taint {{{key}: {value}}}")
            }
            Unfit::Affinity => f.write_str("node(s) didn't match Pod's node affinity/selector"),
            Unfit::Insufficient(r) => write!(f, "Insufficient {r}"),
            Unfit::TooManyPods => f.write_str("Too many pods"),
        }
    }
}

/// A node plus what is already placed on it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node: Node,
    pub name: String,
    pub allocatable: Resources,
    pub requested: Resources,
    /// Pods per owner (controller ownerReference uid) on this node, for spreading.
    pub owner_pods: HashMap<String, u32>,
}

impl NodeInfo {
    /// Builds the info for a node; unparsable allocatable quantities count as zero, which
    /// makes the node unable to fit anything that requests that resource (visible to the
    /// user as "Insufficient cpu") instead of silently ignoring its limits.
    pub fn new(node: Node) -> Self {
        let name = node.metadata.name.clone().unwrap_or_default();
        let alloc = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
        let get = |k: &str, milli: bool| {
            alloc
                .and_then(|m| m.get(k))
                .and_then(|q| {
                    if milli {
                        quantity::milli_value(&q.0).ok()
                    } else {
                        quantity::value(&q.0).ok()
                    }
                })
                .unwrap_or(0)
        };
        let allocatable = Resources {
            milli_cpu: get("cpu", true),
            memory: get("memory", false),
            // Kubernetes' kubelet default when a node does not say.
            pods: alloc
                .and_then(|m| m.get("pods"))
                .and_then(|q| quantity::value(&q.0).ok())
                .unwrap_or(110),
        };
        NodeInfo {
            node,
            name,
            allocatable,
            requested: Resources::default(),
            owner_pods: HashMap::new(),
        }
    }

    /// Accounts for a pod bound to this node.
    pub fn add_pod(&mut self, pod: &Pod, req: &Resources) {
        self.requested.add(req);
        if let Some(owner) = controller_uid(pod) {
            *self.owner_pods.entry(owner.to_string()).or_default() += 1;
        }
    }

    /// Reverses [`NodeInfo::add_pod`] when a pod goes away or moves.
    pub fn remove_pod(&mut self, pod: &Pod, req: &Resources) {
        self.requested.sub(req);
        if let Some(owner) = controller_uid(pod)
            && let Some(n) = self.owner_pods.get_mut(owner)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.owner_pods.remove(owner);
            }
        }
    }
}

fn controller_uid(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

/// Whether one toleration tolerates one taint (Kubernetes' `ToleratesTaint`).
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = t.effect.as_deref()
        && !effect.is_empty()
        && effect != taint.effect
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or("");
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => key.is_empty() || key == taint.key,
        "Equal" | "" => {
            key == taint.key
                && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

fn tolerated(tols: &[Toleration], taint: &Taint) -> bool {
    tols.iter().any(|t| tolerates(t, taint))
}

fn labels(node: &Node) -> Option<&BTreeMap<String, String>> {
    node.metadata.labels.as_ref()
}

fn requirement_matches(
    req: &NodeSelectorRequirement,
    get: &dyn Fn(&str) -> Option<String>,
) -> bool {
    let val = get(&req.key);
    let values = req.values.as_deref().unwrap_or(&[]);
    match req.operator.as_str() {
        "In" => val.is_some_and(|v| values.contains(&v)),
        "NotIn" => val.is_none_or(|v| !values.contains(&v)),
        "Exists" => val.is_some(),
        "DoesNotExist" => val.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), [bound]) = (val, values) else {
                return false;
            };
            let (Ok(v), Ok(bound)) = (v.parse::<i64>(), bound.parse::<i64>()) else {
                return false;
            };
            if req.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// A node selector term: all expressions and fields must match; an empty term matches
/// nothing (as upstream).
pub fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or(&[]);
    let fields = term.match_fields.as_deref().unwrap_or(&[]);
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let label = |k: &str| labels(node).and_then(|l| l.get(k)).cloned();
    let field = |k: &str| {
        (k == "metadata.name")
            .then(|| node.metadata.name.clone())
            .flatten()
    };
    exprs.iter().all(|r| requirement_matches(r, &label))
        && fields.iter().all(|r| requirement_matches(r, &field))
}

fn affinity_matches(pod: &Pod, node: &Node) -> bool {
    let Some(spec) = &pod.spec else { return true };
    if let Some(sel) = &spec.node_selector {
        let l = labels(node);
        if !sel.iter().all(|(k, v)| l.and_then(|l| l.get(k)) == Some(v)) {
            return false;
        }
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    match required {
        Some(r) => r.node_selector_terms.iter().any(|t| term_matches(t, node)),
        None => true,
    }
}

/// Runs the filters against one node. `req` is [`pod_requests`] of the pod.
pub fn filter(pod: &Pod, req: &Resources, info: &NodeInfo) -> Result<(), Vec<Unfit>> {
    let node = &info.node;
    let spec = pod.spec.as_ref();
    let tols: &[Toleration] = spec.and_then(|s| s.tolerations.as_deref()).unwrap_or(&[]);
    let nspec = node.spec.as_ref();
    if nspec.and_then(|s| s.unschedulable).unwrap_or(false) {
        let t = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if !tolerated(tols, &t) {
            return Err(vec![Unfit::Unschedulable]);
        }
    }
    if let Some(want) = spec.and_then(|s| s.node_name.as_deref())
        && !want.is_empty()
        && want != info.name
    {
        return Err(vec![Unfit::NodeName]);
    }
    for taint in nspec.and_then(|s| s.taints.as_deref()).unwrap_or(&[]) {
        if (taint.effect == "NoSchedule" || taint.effect == "NoExecute") && !tolerated(tols, taint)
        {
            return Err(vec![Unfit::UntoleratedTaint {
                key: taint.key.clone(),
                value: taint.value.clone().unwrap_or_default(),
            }]);
        }
    }
    if !affinity_matches(pod, node) {
        return Err(vec![Unfit::Affinity]);
    }
    let mut out = Vec::new();
    if info.requested.pods + req.pods > info.allocatable.pods {
        out.push(Unfit::TooManyPods);
    }
    if req.milli_cpu > 0 && info.requested.milli_cpu + req.milli_cpu > info.allocatable.milli_cpu {
        out.push(Unfit::Insufficient("cpu"));
    }
    if req.memory > 0 && info.requested.memory + req.memory > info.allocatable.memory {
        out.push(Unfit::Insufficient("memory"));
    }
    if out.is_empty() { Ok(()) } else { Err(out) }
}

/// No node fits: the message is kube-scheduler's ("0/3 nodes are available: ...").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FitError {
    pub num_nodes: usize,
    /// Reason text → number of nodes that gave it.
    pub reasons: BTreeMap<String, usize>,
}

impl fmt::Display for FitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.num_nodes == 0 {
            return f.write_str("no nodes available to schedule pods");
        }
        let mut parts: Vec<String> = self
            .reasons
            .iter()
            .map(|(r, n)| format!("{n} {r}"))
            .collect();
        // Upstream sorts the formatted strings, counts included.
        parts.sort();
        write!(
            f,
            "0/{} nodes are available: {}.",
            self.num_nodes,
            parts.join(", ")
        )
    }
}

impl std::error::Error for FitError {}

/// Weights of the default profile's scoring plugins.
const W_TAINT: i64 = 3;
const W_AFFINITY: i64 = 2;
const W_SPREAD: i64 = 2;
const W_RESOURCES: i64 = 1;

/// How many feasible nodes to find before scoring, as upstream's
/// percentageOfNodesToScore adaptive default: all nodes up to 100, then a share that
/// shrinks with cluster size (at least 5%). Scoring a sample keeps per-pod cost bounded on
/// large clusters; a rotating start index spreads the sample.
pub fn feasible_nodes_to_find(num_nodes: usize) -> usize {
    if num_nodes < 100 {
        return num_nodes;
    }
    let pct = (50 - (num_nodes as i64) / 125).max(5) as usize;
    (num_nodes * pct / 100).max(100)
}

/// The outcome of one scheduling attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Index into the nodes slice.
    pub node: usize,
    /// Where the next attempt should start looking (upstream's nextStartNodeIndex).
    pub next_start: usize,
}

/// Picks a node for `pod`. `start` rotates the search start across calls; `tie` breaks ties
/// between equally scored nodes (pass a counter; upstream picks at random).
pub fn schedule(
    pod: &Pod,
    nodes: &[NodeInfo],
    start: usize,
    tie: u64,
) -> Result<Result<Placement, FitError>, SchedError> {
    let req = pod_requests(pod)?;
    let n = nodes.len();
    if n == 0 {
        return Ok(Err(FitError {
            num_nodes: 0,
            reasons: BTreeMap::new(),
        }));
    }
    let want = feasible_nodes_to_find(n);
    let mut feasible: Vec<usize> = Vec::with_capacity(want.min(n));
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut examined = 0;
    for k in 0..n {
        let i = (start + k) % n;
        examined += 1;
        match filter(pod, &req, &nodes[i]) {
            Ok(()) => {
                feasible.push(i);
                if feasible.len() >= want {
                    break;
                }
            }
            Err(why) => {
                for w in why {
                    *reasons.entry(w.to_string()).or_default() += 1;
                }
            }
        }
    }
    if feasible.is_empty() {
        return Ok(Err(FitError {
            num_nodes: n,
            reasons,
        }));
    }
    let next_start = (start + examined) % n;
    let scores = score(pod, &req, nodes, &feasible);
    let best = scores.iter().copied().max().unwrap_or(0);
    let ties: Vec<usize> = feasible
        .iter()
        .zip(&scores)
        .filter(|(_, s)| **s == best)
        .map(|(i, _)| *i)
        .collect();
    let pick = ties[(tie % ties.len() as u64) as usize];
    Ok(Ok(Placement {
        node: pick,
        next_start,
    }))
}

/// Scores feasible nodes (0..=100 per plugin, weighted and summed), in `feasible` order.
pub fn score(pod: &Pod, req: &Resources, nodes: &[NodeInfo], feasible: &[usize]) -> Vec<i64> {
    let spec = pod.spec.as_ref();
    let tols: &[Toleration] = spec.and_then(|s| s.tolerations.as_deref()).unwrap_or(&[]);
    let preferred = spec
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.preferred_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or(&[]);
    let owner = controller_uid(pod);

    let mut taint_raw = Vec::with_capacity(feasible.len());
    let mut aff_raw = Vec::with_capacity(feasible.len());
    let mut spread_raw = Vec::with_capacity(feasible.len());
    let mut res_score = Vec::with_capacity(feasible.len());
    for &i in feasible {
        let info = &nodes[i];
        let taints = info
            .node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_deref())
            .unwrap_or(&[]);
        taint_raw.push(
            taints
                .iter()
                .filter(|t| t.effect == "PreferNoSchedule" && !tolerated(tols, t))
                .count() as i64,
        );
        aff_raw.push(
            preferred
                .iter()
                .filter(|p| term_matches(&p.preference, &info.node))
                .map(|p| i64::from(p.weight))
                .sum::<i64>(),
        );
        spread_raw.push(
            owner
                .and_then(|o| info.owner_pods.get(o))
                .map(|n| i64::from(*n))
                .unwrap_or(0),
        );
        res_score.push(least_allocated(info, req));
    }
    // Normalisation as upstream's DefaultNormalizeScore: scale to 0..100 by the maximum,
    // reversed where fewer is better.
    let norm = |raw: &[i64], reverse: bool| -> Vec<i64> {
        let max = raw.iter().copied().max().unwrap_or(0);
        raw.iter()
            .map(|&v| {
                if max == 0 {
                    if reverse { 100 } else { 0 }
                } else if reverse {
                    100 - v * 100 / max
                } else {
                    v * 100 / max
                }
            })
            .collect()
    };
    let taint = norm(&taint_raw, true);
    let aff = norm(&aff_raw, false);
    let spread = norm(&spread_raw, true);
    (0..feasible.len())
        .map(|k| {
            taint[k] * W_TAINT
                + aff[k] * W_AFFINITY
                + spread[k] * W_SPREAD
                + res_score[k] * W_RESOURCES
        })
        .collect()
}

/// NodeResourcesFit's LeastAllocated strategy over cpu and memory.
fn least_allocated(info: &NodeInfo, req: &Resources) -> i64 {
    let one = |alloc: i64, used: i64| {
        if alloc <= 0 {
            return 0;
        }
        let free = alloc - used;
        if free < 0 { 0 } else { free * 100 / alloc }
    };
    let cpu = one(
        info.allocatable.milli_cpu,
        info.requested.milli_cpu + req.milli_cpu,
    );
    let mem = one(info.allocatable.memory, info.requested.memory + req.memory);
    (cpu + mem) / 2
}

#[cfg(test)]
mod tests;

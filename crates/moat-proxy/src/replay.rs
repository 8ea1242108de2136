//! Test-only interpreter of the scripts [`crate::script`] writes: replays the flat dynamic
//! commands against a [`Ruleset`] the way the kernel would, so a sequence of diffs can be
//! compared with a fresh full render. Also checks ordering rules nft enforces (a chain must
//! exist before rules go into it, may only be deleted when empty and unreferenced).

use crate::ruleset::{FAMILY, Ruleset, TABLE};

fn refs_chain(r: &Ruleset, name: &str) -> bool {
    let goto = format!("goto {name}");
    let jump = format!("jump {name}");
    let used = |s: &str| {
        s.split([',', '}', '{'])
            .any(|p| p.trim() == goto || p.trim() == jump || p.trim().ends_with(&goto))
    };
    r.chains.values().flatten().any(|rule| used(rule))
        || r.maps.values().flat_map(|m| m.values()).any(|v| used(v))
}

/// Applies `script` to `state`; panics (test failure) on anything nft would reject.
pub fn apply(state: &mut Ruleset, script: &str) {
    let prefix_of = |kind: &str, verb: &str| format!("{verb} {kind} {FAMILY} {TABLE} ");
    let mut in_block = 0usize;
    for line in script.lines() {
        if in_block > 0 || line.starts_with(&format!("table {FAMILY} {TABLE} {{")) {
            in_block += line.matches('{').count();
            in_block -= line.matches('}').count();
            continue;
        }
        if line == format!("add table {FAMILY} {TABLE}") {
            continue;
        }
        if line == format!("delete table {FAMILY} {TABLE}") {
            *state = Ruleset::default();
            continue;
        }
        if line == format!("flush table {FAMILY} {TABLE}") {
            // Like the kernel: rules only; set and map elements stay.
            for rules in state.chains.values_mut() {
                rules.clear();
            }
            continue;
        }
        if let Some(name) = line.strip_prefix(&prefix_of("map", "flush")) {
            if let Some(m) = state.maps.get_mut(name) {
                m.clear();
            }
            continue;
        }
        if let Some(name) = line.strip_prefix(&prefix_of("set", "flush")) {
            if let Some(s) = state.sets.get_mut(name) {
                s.clear();
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix(&prefix_of("chain", "add")) {
            state.chains.entry(rest.to_string()).or_default();
        } else if let Some(rest) = line.strip_prefix(&prefix_of("chain", "flush")) {
            state
                .chains
                .get_mut(rest)
                .unwrap_or_else(|| panic!("flush of missing chain {rest}"))
                .clear();
        } else if let Some(rest) = line.strip_prefix(&prefix_of("chain", "delete")) {
            let rules = state
                .chains
                .get(rest)
                .unwrap_or_else(|| panic!("delete of missing chain {rest}"));
            assert!(rules.is_empty(), "delete of non-empty chain {rest}");
            state.chains.remove(rest);
            assert!(!refs_chain(state, rest), "deleted chain {rest} still used");
        } else if let Some(rest) = line.strip_prefix(&prefix_of("rule", "add")) {
            let (name, rule) = rest.split_once(' ').expect("rule");
            for w in rule.split_whitespace() {
                if let Some(set) = w.strip_prefix('@')
                    && set.starts_with("aff-")
                {
                    assert!(state.affinity.contains_key(set), "rule uses missing {set}");
                }
            }
            state
                .chains
                .get_mut(name)
                .unwrap_or_else(|| panic!("rule into missing chain {name}"))
                .push(rule.to_string());
        } else if let Some(rest) = line.strip_prefix(&prefix_of("set", "add")) {
            let (name, def) = rest.split_once(' ').expect("set");
            let t: u32 = def
                .split("timeout ")
                .nth(1)
                .and_then(|t| t.split('s').next())
                .and_then(|t| t.parse().ok())
                .expect("timeout");
            state.affinity.insert(name.to_string(), t);
        } else if let Some(rest) = line.strip_prefix(&prefix_of("set", "delete")) {
            assert!(
                state.affinity.remove(rest).is_some(),
                "delete of missing set {rest}"
            );
        } else if let Some(rest) = line.strip_prefix(&prefix_of("element", "add")) {
            let (name, elems) = parse_elems(rest);
            for e in elems {
                if let Some((k, v)) = e.split_once(" : ") {
                    let m = state.maps.entry(name.to_string()).or_default();
                    assert!(m.insert(k.to_string(), v.to_string()).is_none(), "dup {k}");
                } else {
                    let s = state.sets.entry(name.to_string()).or_default();
                    assert!(s.insert(e.to_string()), "dup {e}");
                }
            }
        } else if let Some(rest) = line.strip_prefix(&prefix_of("element", "delete")) {
            let (name, elems) = parse_elems(rest);
            for e in elems {
                let gone = state.maps.get_mut(name).and_then(|m| m.remove(e)).is_some()
                    || state.sets.get_mut(name).is_some_and(|s| s.remove(e));
                assert!(gone, "delete of missing element {e} in {name}");
            }
        } else {
            panic!("unexpected line: {line}");
        }
    }
}

fn parse_elems(rest: &str) -> (&str, Vec<&str>) {
    let (name, body) = rest.split_once(" { ").expect("elements");
    let body = body.strip_suffix(" }").expect("closing brace");
    (name, body.split(", ").collect())
}

//! Habits kept by a test, not by hand (ARCHITECTURE.md's invariants that a machine can check):
//! every source file opens with its `//!` doc; only the API server depends on the store;
//! no module import cycles inside the crates that had them; every crate takes the workspace
//! lints (undocumented unsafe, unwrap/expect outside tests, error types named `Error`); no
//! `Result<_, String>` outside tests.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_source_file_opens_with_its_module_doc() {
    let ws = workspace();
    let mut files = Vec::new();
    for d in std::fs::read_dir(ws.join("crates"))
        .expect("crates")
        .flatten()
    {
        rust_files(&d.path().join("src"), &mut files);
        rust_files(&d.path().join("tests"), &mut files);
    }
    rust_files(&ws.join("fuzz/fuzz_targets"), &mut files);
    assert!(files.len() > 100, "found the sources ({})", files.len());
    let missing: Vec<String> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            !first.starts_with("//!")
        })
        .map(|f| f.strip_prefix(&ws).unwrap_or(f).display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files without a //! header: {missing:?}"
    );
}

#[test]
fn only_the_api_server_depends_on_the_store() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(workspace())
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let mut users = BTreeSet::new();
    for p in meta["packages"].as_array().expect("packages") {
        for d in p["dependencies"].as_array().into_iter().flatten() {
            // Dev-dependencies (tests starting a real etcd, the store baseline of the API
            // benchmark) are allowed; a normal or build dependency is not.
            if d["name"] == "moat-store" && d["kind"] != "dev" {
                users.insert(p["name"].as_str().unwrap_or("").to_string());
            }
        }
    }
    assert_eq!(
        users,
        BTreeSet::from(["moat-apiserver".to_string()]),
        "crates depending on moat-store"
    );
}

#[test]
fn every_crate_takes_the_workspace_lints() {
    let mut missing = Vec::new();
    for d in std::fs::read_dir(workspace().join("crates"))
        .expect("crates")
        .flatten()
    {
        let toml = std::fs::read_to_string(d.path().join("Cargo.toml")).unwrap_or_default();
        if !toml.contains("[lints]\nworkspace = true") {
            missing.push(d.file_name().to_string_lossy().into_owned());
        }
    }
    assert!(
        missing.is_empty(),
        "crates without `[lints] workspace = true`: {missing:?}"
    );
    let root = std::fs::read_to_string(workspace().join("Cargo.toml")).expect("Cargo.toml");
    for lint in [
        "undocumented_unsafe_blocks",
        "unwrap_used",
        "expect_used",
        "error_impl_error",
    ] {
        assert!(
            root.contains(&format!("{lint} = \"deny\"")),
            "{lint} is not denied"
        );
    }
}

/// Top-level module → the top-level modules it names through `crate::`.
fn module_graph(krate: &str) -> BTreeMap<String, BTreeSet<String>> {
    let src = workspace().join("crates").join(krate).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).expect("under src");
        let first = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .unwrap_or("")
            .trim_end_matches(".rs")
            .to_string();
        let me = if first == "lib" || first == "main" {
            "<root>".to_string()
        } else {
            first
        };
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        let edges = g.entry(me.clone()).or_default();
        let mut add = |name: &str| {
            if !name.is_empty() && name != me {
                edges.insert(name.to_string());
            }
        };
        let ident = |s: &str| -> String {
            s.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        };
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                for item in group.split('}').next().unwrap_or("").split(',') {
                    add(&ident(item.trim()));
                }
            } else {
                add(&ident(rest));
            }
        }
    }
    g
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        let succ: Vec<&'a str> =
            t.g.get(v)
                .map(|s| s.iter().map(String::as_str).collect())
                .unwrap_or_default();
        for w in succ {
            if !t.g.contains_key(w) {
                continue;
            }
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low[v];
                t.low.insert(v, lv.min(lw));
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low[v];
                t.low.insert(v, lv.min(iw));
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(cycles(&g), [["a", "b", "c"]]);
}

#[test]
fn no_module_import_cycles() {
    let mut found = BTreeMap::new();
    for krate in ["moat-agent", "moat-runtime", "moat-store", "moat"] {
        let g = module_graph(krate);
        assert!(g.len() > 3, "{krate}: read its modules");
        let c = cycles(&g);
        if !c.is_empty() {
            found.insert(krate, c);
        }
    }
    assert!(found.is_empty(), "module import cycles: {found:?}");
}

/// The agent's network components stay loops of their own: only their loop modules import
/// the network crates, so the pods loop, workers and lifecycle never grow network code.
#[test]
fn only_the_network_loops_import_the_network_crates() {
    let mut files = Vec::new();
    rust_files(&workspace().join("crates/moat-agent/src"), &mut files);
    assert!(files.len() > 10, "read the agent's sources");
    let mut offenders = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let uses = [
            "moat_podnet",
            "moat_hostnet",
            "moat_proxy",
            "moat_dns",
            "moat_netpol",
        ]
        .iter()
        .any(|c| text.contains(c));
        let rel = f.strip_prefix(workspace()).unwrap().display().to_string();
        let allowed = rel.contains("/loops/") && !rel.ends_with("/loops/pods.rs");
        if uses && !allowed && !rel.ends_with("src/agent.rs") {
            offenders.push(rel);
        }
    }
    assert!(
        offenders.is_empty(),
        "network crates imported outside their loops: {offenders:?}"
    );
}

/// Whether `line` names a `Result<_, String>` (at any nesting: `Option<Result<T, String>>`).
fn string_result(line: &str) -> bool {
    let code = line.split("//").next().unwrap_or("");
    let mut rest = code;
    while let Some(i) = rest.find("Result<") {
        let args = &rest[i + "Result<".len()..];
        let (mut depth, mut last_comma, mut end) = (0i32, None, None);
        for (j, c) in args.char_indices() {
            match c {
                '<' | '(' | '[' => depth += 1,
                '>' | ')' | ']' if depth > 0 => depth -= 1,
                '>' => {
                    end = Some(j);
                    break;
                }
                ',' if depth == 0 => last_comma = Some(j),
                _ => {}
            }
        }
        if let (Some(c), Some(e)) = (last_comma, end) {
            let err = args[c + 1..e].trim();
            if err == "String" || err == "std::string::String" {
                return true;
            }
        }
        rest = args;
    }
    false
}

/// Lines of `text` outside `#[cfg(test)] mod … { … }` blocks (a test module's closing brace
/// is the first line that is exactly `}` after it opens, as rustfmt writes it).
fn non_test_lines(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    while let Some((n, l)) = lines.next() {
        if l.trim() == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|(_, m)| m.starts_with("mod ") && m.trim_end().ends_with('{'))
        {
            for (_, m) in lines.by_ref() {
                if m == "}" {
                    break;
                }
            }
            continue;
        }
        out.push((n + 1, l));
    }
    out
}

#[test]
fn the_string_result_finder_finds_them() {
    assert!(string_result(
        "pub fn parse(s: &str) -> Result<Cidr, String> {"
    ));
    assert!(string_result("fn f() -> Result<Vec<Req>, String> {"));
    assert!(string_result(
        "    Sandbox(Result<Box<PodRecord>, String>),"
    ));
    assert!(string_result(
        "static D: OnceLock<Result<Arc<Docs>, String>> = x;"
    ));
    assert!(!string_result("fn f() -> Result<(), Error> {"));
    assert!(!string_result("fn f() -> Result<String, Error> {"));
    assert!(!string_result(
        "result: Result<Started, (StartFailure, String)>,"
    ));
    assert!(!string_result("// was Result<(), String>"));
    let text = "fn a() -> Result<(), String> {}\n#[cfg(test)]\nmod tests {\n    fn b() -> Result<(), String> {}\n}\nfn c() {}\n";
    let kept: Vec<usize> = non_test_lines(text).into_iter().map(|(n, _)| n).collect();
    assert_eq!(kept, [1, 6]);
}

/// Errors are types, not strings: no `Result<_, String>` in non-test code, so a failure
/// keeps its cause (`#[source]`) and callers match on variants instead of message text.
#[test]
fn no_string_errors_outside_tests() {
    // Empty since the proxy moved to hyper; do not add to it.
    const ALLOWED: &[&str] = &[];
    let ws = workspace();
    let mut files = Vec::new();
    for d in std::fs::read_dir(ws.join("crates"))
        .expect("crates")
        .flatten()
    {
        rust_files(&d.path().join("src"), &mut files);
    }
    assert!(files.len() > 100, "found the sources ({})", files.len());
    let mut found = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&ws).unwrap_or(&f).display().to_string();
        let test_file = rel.ends_with("tests.rs") || rel.contains("/tests/");
        if test_file || ALLOWED.iter().any(|a| rel.ends_with(a)) {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, l) in non_test_lines(&text) {
            if string_result(l) {
                found.push(format!("{rel}:{n}: {}", l.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "Result<_, String> outside tests (use a thiserror enum, the cause as #[source]):\n{}",
        found.join("\n")
    );
}

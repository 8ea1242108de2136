//! Lab cases: ordinary manifests plus header comments saying what the truth table must be.
//!
//! ```text
//! # topology: topology.yaml          (manifests the case adds its policies to; same dir)
//! # probe: 80/TCP,81/TCP,80/UDP,81/UDP
//! # option: legacy-namespace-isolation
//! # expect: allow-all | deny-all     (starting point for every from→to pair)
//! # expect: allow|deny FROM TO [PORT/PROTO,...]   (applied in order; FROM/TO: *, ns/*, */name, ns/name)
//! ```
//! A pod always reaches itself, whatever the lines say. The expectations are written by hand
//! from the upstream test's expectations, never computed by the engine.

use std::path::{Path, PathBuf};

use moat_netpol::Proto;

use crate::manifest::{ManifestError, parse_probes};

#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    #[error("{path}: reading")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: line {line}: {message}")]
    Header {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{path}: bad probe list")]
    Probe {
        path: String,
        #[source]
        source: ManifestError,
    },
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub allow: bool,
    pub from: String,
    pub to: String,
    /// None = every probed port.
    pub ports: Option<Vec<(u16, Proto)>>,
}

#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub path: PathBuf,
    pub topology: PathBuf,
    pub probes: Vec<(u16, Proto)>,
    pub legacy: bool,
    pub default_allow: bool,
    pub rules: Vec<Rule>,
    pub text: String,
}

fn pattern_matches(pat: &str, id: &str) -> bool {
    if pat == "*" {
        return true;
    }
    let (pn, pp) = pat.split_once('/').unwrap_or(("default", pat));
    let (n, p) = id.split_once('/').unwrap_or(("default", id));
    (pn == "*" || pn == n) && (pp == "*" || pp == p)
}

impl Case {
    pub fn load(path: &Path) -> Result<Case, CaseError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| CaseError::Read {
            path: p.clone(),
            source,
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut case = Case {
            name: path
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default(),
            path: path.to_path_buf(),
            topology: dir.join("topology.yaml"),
            probes: parse_probes("80/TCP,81/TCP,80/UDP,81/UDP").map_err(|source| {
                CaseError::Probe {
                    path: p.clone(),
                    source,
                }
            })?,
            legacy: false,
            default_allow: true,
            rules: vec![],
            text: text.clone(),
        };
        for (i, line) in text.lines().enumerate() {
            let bad = |m: &str| CaseError::Header {
                path: p.clone(),
                line: i + 1,
                message: m.to_string(),
            };
            let Some(rest) = line.strip_prefix("# ") else {
                continue;
            };
            if let Some(t) = rest.strip_prefix("topology: ") {
                case.topology = dir.join(t.trim());
            } else if let Some(pr) = rest.strip_prefix("probe: ") {
                case.probes = parse_probes(pr.trim()).map_err(|source| CaseError::Probe {
                    path: p.clone(),
                    source,
                })?;
            } else if rest.trim() == "option: legacy-namespace-isolation" {
                case.legacy = true;
            } else if let Some(e) = rest.strip_prefix("expect: ") {
                let words: Vec<&str> = e.split_whitespace().collect();
                match words.as_slice() {
                    ["allow-all"] => case.default_allow = true,
                    ["deny-all"] => case.default_allow = false,
                    [verb @ ("allow" | "deny"), from, to, rest @ ..] => {
                        let ports = match rest {
                            [] => None,
                            [list] => {
                                Some(parse_probes(list).map_err(|source| CaseError::Probe {
                                    path: p.clone(),
                                    source,
                                })?)
                            }
                            _ => return Err(bad("too many words")),
                        };
                        case.rules.push(Rule {
                            allow: *verb == "allow",
                            from: from.to_string(),
                            to: to.to_string(),
                            ports,
                        });
                    }
                    _ => {
                        return Err(bad(
                            "want `allow-all`, `deny-all` or `allow|deny FROM TO [PORTS]`",
                        ));
                    }
                }
            }
        }
        Ok(case)
    }

    /// The expected verdict for one probe.
    pub fn expect(&self, from: &str, to: &str, port: u16, proto: Proto) -> bool {
        if from == to {
            return true;
        }
        let mut v = self.default_allow;
        for r in &self.rules {
            let port_ok = r
                .ports
                .as_ref()
                .is_none_or(|ps| ps.contains(&(port, proto)));
            if port_ok && pattern_matches(&r.from, from) && pattern_matches(&r.to, to) {
                v = r.allow;
            }
        }
        v
    }
}

/// Every `*.yaml` case in `dir` except topology files, sorted by name.
pub fn load_dir(dir: &Path) -> Result<Vec<Case>, CaseError> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| CaseError::Read {
            path: dir.display().to_string(),
            source,
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains("topology"))
        })
        .collect();
    paths.sort();
    paths.iter().map(|p| Case::load(p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(pattern_matches("*", "x/a"));
        assert!(pattern_matches("x/*", "x/a"));
        assert!(!pattern_matches("y/*", "x/a"));
        assert!(pattern_matches("*/a", "z/a"));
        assert!(pattern_matches("x/a", "x/a"));
        assert!(!pattern_matches("x/b", "x/a"));
    }

    #[test]
    fn later_lines_override_and_self_is_allowed() {
        let dir = std::env::temp_dir().join(format!("moat-case-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("c.yaml");
        std::fs::write(
            &f,
            "# expect: allow-all\n# expect: deny * x/a\n# expect: allow y/* x/a 80/TCP\n",
        )
        .expect("write");
        let c = Case::load(&f).expect("case");
        assert!(c.expect("x/b", "x/b", 80, Proto::Tcp));
        assert!(!c.expect("x/b", "x/a", 80, Proto::Tcp));
        assert!(c.expect("y/c", "x/a", 80, Proto::Tcp));
        assert!(!c.expect("y/c", "x/a", 81, Proto::Tcp));
        assert!(c.expect("x/a", "x/a", 81, Proto::Udp));
        assert!(c.expect("x/a", "y/a", 81, Proto::Udp));
        std::fs::write(&f, "# expect: sometimes\n").expect("write");
        assert!(Case::load(&f).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

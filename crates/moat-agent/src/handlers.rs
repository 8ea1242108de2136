//! Runtime handlers, configured like containerd's runtimes: a handler name (what a
//! RuntimeClass's `handler` names) maps to an OCI runtime binary and its state root. Sans-IO:
//! parsing and lookup only; nothing here assumes the binary is runc.
//!
//! ```toml
//! default = "runc"
//! [handlers.runc]
//! binary = "/usr/sbin/runc"
//! root = "/run/moat/runtime/runc"   # optional: <run dir>/runtime/<name>
//! options = ["--systemd-cgroup"]    # optional: global flags before the command
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error("parsing runtime handler config {path}")]
    Parse {
        path: String,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("reading runtime handler config {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("runtime handler config: {0}")]
    Invalid(String),
    #[error("no runtime handler {0:?} is configured on this node (have: {1})")]
    Unknown(String, String),
}

/// Why a pod has no runtime handler yet: its RuntimeClass is missing or names no handler, or
/// the node has no such handler. The message becomes the container's Waiting reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unresolved {
    #[error("RuntimeClass {0:?} not found")]
    ClassNotFound(String),
    #[error("RuntimeClass {0} has no handler")]
    ClassWithoutHandler(String),
    #[error("no runtime handler {0:?} is configured on this node (have: {1})")]
    NotOnNode(String, String),
    /// A re-adopted record whose pod the API has not shown yet.
    #[error("no RuntimeClass resolved yet")]
    NotYet,
}

impl From<HandlerError> for Unresolved {
    fn from(e: HandlerError) -> Unresolved {
        match e {
            HandlerError::Unknown(n, have) => Unresolved::NotOnNode(n, have),
            // `get` only fails with Unknown; keep the message of anything else.
            other => Unresolved::NotOnNode(other.to_string(), String::new()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handler {
    pub name: String,
    pub binary: PathBuf,
    /// The runtime's `--root`: where it keeps container state.
    pub root: PathBuf,
    /// Global flags passed before every command.
    pub options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handlers {
    pub default: String,
    pub map: BTreeMap<String, Handler>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    default: Option<String>,
    #[serde(default)]
    handlers: BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    binary: PathBuf,
    root: Option<PathBuf>,
    #[serde(default)]
    options: Vec<String>,
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
}

impl Handlers {
    /// runc (/usr/sbin/runc, the default), crun (/usr/bin/crun) and kata: moat's VM runtime
    /// (/usr/local/bin/moat-runtime, installed by scripts/setup.sh), so a RuntimeClass with
    /// `handler: kata` puts pods in microVMs without any configuration.
    pub fn defaults(run_dir: &Path) -> Handlers {
        let mk = |name: &str, bin: &str| Handler {
            name: name.into(),
            binary: bin.into(),
            root: run_dir.join("runtime").join(name),
            options: Vec::new(),
        };
        Handlers {
            default: "runc".into(),
            map: [
                ("runc".to_string(), mk("runc", "/usr/sbin/runc")),
                ("crun".to_string(), mk("crun", "/usr/bin/crun")),
                (
                    "kata".to_string(),
                    mk("kata", "/usr/local/bin/moat-runtime"),
                ),
            ]
            .into_iter()
            .collect(),
        }
    }

    /// The defaults with the file's handlers added or replacing same-named ones.
    pub fn parse(text: &str, origin: &str, run_dir: &Path) -> Result<Handlers, HandlerError> {
        let f: File = toml::from_str(text).map_err(|e| HandlerError::Parse {
            path: origin.into(),
            source: Box::new(e),
        })?;
        let mut h = Handlers::defaults(run_dir);
        for (name, e) in f.handlers {
            if !valid_name(&name) {
                return Err(HandlerError::Invalid(format!(
                    "handler name {name:?} must be a DNS label"
                )));
            }
            if !e.binary.is_absolute() {
                return Err(HandlerError::Invalid(format!(
                    "handler {name}: binary {} must be an absolute path",
                    e.binary.display()
                )));
            }
            let root = e
                .root
                .unwrap_or_else(|| run_dir.join("runtime").join(&name));
            h.map.insert(
                name.clone(),
                Handler {
                    name,
                    binary: e.binary,
                    root,
                    options: e.options,
                },
            );
        }
        if let Some(d) = f.default {
            h.default = d;
        }
        if !h.map.contains_key(&h.default) {
            return Err(HandlerError::Invalid(format!(
                "default handler {:?} is not configured",
                h.default
            )));
        }
        Ok(h)
    }

    /// Reads `path` if given (a missing file is an error: it was asked for).
    pub fn load(path: Option<&Path>, run_dir: &Path) -> Result<Handlers, HandlerError> {
        match path {
            None => Ok(Handlers::defaults(run_dir)),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| HandlerError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                Handlers::parse(&text, &p.display().to_string(), run_dir)
            }
        }
    }

    /// The handler a RuntimeClass names, or the default one for pods without a class.
    pub fn get(&self, name: Option<&str>) -> Result<&Handler, HandlerError> {
        let n = name.filter(|n| !n.is_empty()).unwrap_or(&self.default);
        self.map.get(n).ok_or_else(|| {
            HandlerError::Unknown(
                n.to_string(),
                self.map.keys().cloned().collect::<Vec<_>>().join(", "),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_have_runc_default_and_crun() {
        let h = Handlers::defaults(Path::new("/run/x"));
        assert_eq!(h.get(None).unwrap().binary, Path::new("/usr/sbin/runc"));
        assert_eq!(
            h.get(Some("crun")).unwrap().binary,
            Path::new("/usr/bin/crun")
        );
        assert_eq!(
            h.get(Some("crun")).unwrap().root,
            Path::new("/run/x/runtime/crun")
        );
    }

    #[test]
    fn file_adds_and_overrides_handlers() {
        let text = r#"
default = "rec"
[handlers.rec]
binary = "/opt/rec-runtime"
options = ["--debug"]
[handlers.runc]
binary = "/usr/local/sbin/runc"
root = "/tmp/r"
"#;
        let h = Handlers::parse(text, "t.toml", Path::new("/run/y")).unwrap();
        let rec = h.get(None).unwrap();
        assert_eq!(rec.name, "rec");
        assert_eq!(rec.binary, Path::new("/opt/rec-runtime"));
        assert_eq!(rec.root, Path::new("/run/y/runtime/rec"));
        assert_eq!(rec.options, vec!["--debug"]);
        assert_eq!(h.get(Some("runc")).unwrap().root, Path::new("/tmp/r"));
        assert!(h.get(Some("crun")).is_ok());
    }

    #[test]
    fn unknown_handler_names_the_configured_ones() {
        let h = Handlers::defaults(Path::new("/r"));
        let e = h.get(Some("gvisor")).unwrap_err().to_string();
        assert!(
            e.contains("\"gvisor\"") && e.contains("crun, kata, runc"),
            "{e}"
        );
        assert_eq!(
            h.get(Some("kata")).unwrap().binary,
            Path::new("/usr/local/bin/moat-runtime")
        );
    }

    #[test]
    fn bad_files_are_rejected() {
        let r = Path::new("/r");
        assert!(Handlers::parse("default = \"nope\"", "t", r).is_err());
        assert!(Handlers::parse("[handlers.x]\nbinary = \"rel/bin\"", "t", r).is_err());
        assert!(Handlers::parse("[handlers.X_]\nbinary = \"/b\"", "t", r).is_err());
        assert!(Handlers::parse("[handlers.x]\nbinray = \"/b\"", "t", r).is_err());
    }
}

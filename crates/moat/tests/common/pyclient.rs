//! The official Kubernetes Python client (PyPI `kubernetes`), installed on first use into
//! a virtualenv under the test target dir, for tests that drive moat with a client no one
//! here wrote.

use std::path::{Path, PathBuf};
use std::process::Command;

pub const VERSION: &str = "37.0.2";

/// A virtualenv with the client, made once per target dir (built aside and renamed into
/// place, so concurrent runs never see half of one).
pub fn venv() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("pyclient-{VERSION}"));
    let python = dir.join("bin/python");
    let has_client = |py: &Path| {
        Command::new(py)
            .args([
                "-c",
                &format!("import kubernetes, sys; sys.exit(kubernetes.__version__ != '{VERSION}')"),
            ])
            .status()
            .is_ok_and(|s| s.success())
    };
    if has_client(&python) {
        return python;
    }
    let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let st = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&tmp)
        .status()
        .expect("python3 (scripts/deps.sh installs python3-venv)");
    assert!(st.success(), "python3 -m venv failed");
    let o = Command::new(tmp.join("bin/pip"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &format!("kubernetes=={VERSION}"),
        ])
        .output()
        .expect("pip");
    assert!(
        o.status.success(),
        "pip install kubernetes=={VERSION} (needs PyPI): {}",
        String::from_utf8_lossy(&o.stderr)
    );
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another run got there first.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    assert!(
        has_client(&python),
        "the client is not importable from {}",
        dir.display()
    );
    python
}

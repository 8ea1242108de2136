//! The official Kubernetes Python client (PyPI `kubernetes` 37.0.2, installed into a
//! virtualenv under the test target dir on first use, `common::pyclient`) drives moat through
//! `tests/pyclient/official_client.py`: namespaces, deployments (strategic-merge patch, the
//! scale subresource, a stale-resourceVersion 409), services, NetworkPolicies,
//! RuntimeClasses, ConfigMaps, Secrets with stringData, watch from a resourceVersion,
//! field and label selectors, limit/continue, foreground delete, a 422, discovery and
//! VersionApi. A client no one here wrote, with its own strict model decoding.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::path::Path;
use std::process::Command;

use common::Server;
use common::pyclient::venv;

#[test]
fn official_python_client_behaves_as_upstream() {
    let python = venv();
    let dir = tempfile::tempdir().expect("dir");
    let _s = Server::start(dir.path(), &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pyclient/official_client.py");
    let o = Command::new(&python)
        .arg(&script)
        .arg(dir.path().join("kubeconfig.yaml"))
        .current_dir(dir.path())
        .output()
        .expect("run the Python client");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("all steps passed"),
        "{out}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&o.stderr),
        std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
    );
}

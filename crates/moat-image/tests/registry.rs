//! Registry round trips against Debian's docker-registry on a free loopback port (anonymous
//! and htpasswd basic auth), and against an in-test registry that demands bearer tokens and can
//! serve a corrupted layer.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use moat_image::registry::{Client, Credentials, RegistryError};
use moat_image::{Reference, Store, StoreError};

fn busybox_oci(dir: &Path) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/busybox-image.sh");
    let out = Command::new("bash").arg(&script).arg(dir).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("busybox.oci.tar")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Registry {
    child: Child,
    port: u16,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_registry(dir: &Path, htpasswd: Option<&Path>) -> Registry {
    let auth = match htpasswd {
        Some(p) => format!(
            "auth:\n  htpasswd:\n    realm: moat-test\n    path: {}\n",
            p.display()
        ),
        None => String::new(),
    };
    start_registry_with(dir, &auth)
}

fn start_registry_with(dir: &Path, auth: &str) -> Registry {
    let port = free_port();
    let storage = dir.join("storage");
    fs::create_dir_all(&storage).unwrap();
    let cfg = format!(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
        storage.display()
    );
    let cfg_path = dir.join("config.yml");
    fs::write(&cfg_path, cfg).unwrap();
    let child = Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(&cfg_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let reg = Registry { child, port };
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return reg;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("docker-registry did not listen on {port}");
}

#[test]
fn push_then_pull_anonymous_and_run_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = start_registry(&tmp.path().join("reg"), None);
    let src = Store::open(tmp.path().join("src")).unwrap();
    let rec = src
        .import(&busybox_oci(&tmp.path().join("img")), None)
        .unwrap();
    let dest = Reference::parse(&format!("127.0.0.1:{}/test/busybox:v1", reg.port)).unwrap();
    let client = Client::new(None);
    let pushed = client.push(&src, &rec.name, &dest).unwrap();
    assert_eq!(pushed, rec.manifest);

    let dst = Store::open(tmp.path().join("dst")).unwrap();
    let mut seen = Vec::new();
    let got = client
        .pull(&dst, &dest, &mut |d, n, total| {
            seen.push((d.clone(), n, total))
        })
        .unwrap();
    assert_eq!(got.manifest, rec.manifest);
    assert_eq!(got.diff_ids, rec.diff_ids);
    assert!(
        dst.layer_path(&got.diff_ids[0])
            .join("bin/busybox")
            .is_file()
    );
    // Progress reached the full size of the layer.
    let layer = &rec.layers[0];
    assert!(
        seen.iter()
            .any(|(d, n, t)| d == layer && n == t && *t > 1_000_000)
    );

    // Pull by digest verifies the manifest digest too.
    let by_digest = Reference::parse(&format!(
        "127.0.0.1:{}/test/busybox@{}",
        reg.port, rec.manifest
    ))
    .unwrap();
    let got2 = client.pull(&dst, &by_digest, &mut |_, _, _| {}).unwrap();
    assert_eq!(got2.manifest, rec.manifest);

    // Missing tag: a clear 404 naming the step.
    let missing = Reference::parse(&format!("127.0.0.1:{}/test/busybox:nope", reg.port)).unwrap();
    let e = client.pull(&dst, &missing, &mut |_, _, _| {}).unwrap_err();
    assert!(
        matches!(e, RegistryError::Status { status: 404, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("fetching manifest"), "{e}");
}

#[test]
fn basic_auth_registry() {
    let tmp = tempfile::tempdir().unwrap();
    let htpasswd = tmp.path().join("htpasswd");
    let st = Command::new("htpasswd")
        .args(["-Bbc"])
        .arg(&htpasswd)
        .args(["moat", "s3cret"])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let reg = start_registry(&tmp.path().join("reg"), Some(&htpasswd));
    let src = Store::open(tmp.path().join("src")).unwrap();
    let rec = src
        .import(&busybox_oci(&tmp.path().join("img")), None)
        .unwrap();
    let dest = Reference::parse(&format!("127.0.0.1:{}/private/bb:1", reg.port)).unwrap();

    let anon = Client::new(None);
    let e = anon.push(&src, &rec.name, &dest).unwrap_err();
    assert!(e.to_string().contains("no credentials"), "{e}");
    let wrong = Client::new(Some(Credentials {
        username: "moat".into(),
        password: "wrong".into(),
    }));
    let e = wrong.push(&src, &rec.name, &dest).unwrap_err();
    assert!(
        matches!(e, RegistryError::Status { status: 401, .. }),
        "{e:?}"
    );

    let good = Client::new(Some(Credentials {
        username: "moat".into(),
        password: "s3cret".into(),
    }));
    good.push(&src, &rec.name, &dest).unwrap();
    let dst = Store::open(tmp.path().join("dst")).unwrap();
    let got = good.pull(&dst, &dest, &mut |_, _, _| {}).unwrap();
    assert_eq!(got.manifest, rec.manifest);
    assert_eq!(dst.list().unwrap()[0].name, dest.to_string());
}

/// A minimal read-only registry serving one oci-layout directory, demanding a bearer token
/// that its own /token endpoint hands out for the right basic credentials.
fn fake_token_registry(layout: PathBuf, corrupt_layer: Option<String>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut auth = String::new();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("authorization:") {
                    auth = v.trim().to_string();
                }
            }
            let (status, headers, body): (&str, String, Vec<u8>) = if path.starts_with("/token") {
                // base64("moat:tok-pass")
                if auth == "basic bw9hddp0b2stcgfzcw==" && path.contains("scope=repository") {
                    ("200 OK", String::new(), br#"{"token":"T0K3N"}"#.to_vec())
                } else {
                    ("401 Unauthorized", String::new(), b"bad creds".to_vec())
                }
            } else if auth != "bearer t0k3n" {
                (
                    "401 Unauthorized",
                    format!(
                        "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"fake\",scope=\"repository:x/bb:pull\"\r\n"
                    ),
                    Vec::new(),
                )
            } else if let Some(r) = path.strip_prefix("/v2/x/bb/manifests/") {
                let index: serde_json::Value =
                    serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
                let d = if r.starts_with("sha256:") {
                    r.to_string()
                } else {
                    index["manifests"][0]["digest"]
                        .as_str()
                        .unwrap()
                        .to_string()
                };
                match fs::read(layout.join("blobs/sha256").join(&d[7..])) {
                    Ok(b) => (
                        "200 OK",
                        format!(
                            "Content-Type: application/vnd.oci.image.manifest.v1+json\r\nDocker-Content-Digest: {d}\r\n"
                        ),
                        b,
                    ),
                    Err(_) => ("404 Not Found", String::new(), Vec::new()),
                }
            } else if let Some(d) = path.strip_prefix("/v2/x/bb/blobs/sha256:") {
                match fs::read(layout.join("blobs/sha256").join(d)) {
                    Ok(mut b) => {
                        if corrupt_layer.as_deref() == Some(d) {
                            let mid = b.len() / 2;
                            b[mid] ^= 0xff;
                        }
                        ("200 OK", String::new(), b)
                    }
                    Err(_) => ("404 Not Found", String::new(), Vec::new()),
                }
            } else {
                ("404 Not Found", String::new(), Vec::new())
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(&body);
            let _ = conn.flush();
            let mut rest = Vec::new();
            let _ = reader
                .get_mut()
                .set_read_timeout(Some(Duration::from_millis(10)));
            let _ = reader.read_to_end(&mut rest);
        }
    });
    port
}

fn count_files(p: &Path) -> usize {
    walk(p)
}
fn walk(p: &Path) -> usize {
    let mut n = 0;
    for e in fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        n += 1;
        if e.file_type().unwrap().is_dir() {
            n += walk(&e.path());
        }
    }
    n
}

#[test]
fn bearer_token_auth_and_corrupt_layer_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = busybox_oci(&tmp.path().join("img"));
    let layout = tmp.path().join("layout");
    fs::create_dir(&layout).unwrap();
    let st = Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout)
        .status()
        .unwrap();
    assert!(st.success());
    let good_port = fake_token_registry(layout.clone(), None);
    let creds = || {
        Some(Credentials {
            username: "moat".into(),
            password: "tok-pass".into(),
        })
    };
    let store = Store::open(tmp.path().join("store")).unwrap();
    let r = Reference::parse(&format!("127.0.0.1:{good_port}/x/bb:latest")).unwrap();
    let e = Client::new(None)
        .pull(&store, &r, &mut |_, _, _| {})
        .unwrap_err();
    assert!(e.to_string().contains("fetching bearer token"), "{e}");
    let rec = Client::new(creds())
        .pull(&store, &r, &mut |_, _, _| {})
        .unwrap();
    assert!(
        store
            .layer_path(&rec.diff_ids[0])
            .join("bin/sh")
            .symlink_metadata()
            .is_ok()
    );

    // Same image, but the registry flips a byte of the layer: rejected, nothing left behind.
    let layer_hex = rec.layers[0].hex().to_string();
    let bad_port = fake_token_registry(layout, Some(layer_hex.clone()));
    let store2 = Store::open(tmp.path().join("store2")).unwrap();
    let before = count_files(store2.root());
    let r2 = Reference::parse(&format!("127.0.0.1:{bad_port}/x/bb:latest")).unwrap();
    let e = Client::new(creds())
        .pull(&store2, &r2, &mut |_, _, _| {})
        .unwrap_err();
    assert!(
        matches!(e, RegistryError::Store(StoreError::DigestMismatch { .. })),
        "{e:?}"
    );
    assert!(store2.list().unwrap().is_empty());
    assert!(!store2.root().join("blobs/sha256").join(&layer_hex).exists());
    assert_eq!(count_files(&store2.root().join("tmp")), 0);
    assert_eq!(count_files(&store2.root().join("layers")), 0);
    // Only the verified config blob may remain (unreferenced, collected by the next gc).
    assert!(count_files(store2.root()) <= before + 1);
}

#[test]
fn pulls_oci_index_and_docker_schema2_manifests() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = start_registry(&tmp.path().join("reg"), None);
    let src = Store::open(tmp.path().join("src")).unwrap();
    let rec = src
        .import(&busybox_oci(&tmp.path().join("img")), None)
        .unwrap();
    let base = format!("127.0.0.1:{}/test/multi", reg.port);
    let client = Client::new(None);
    client
        .push(
            &src,
            &rec.name,
            &Reference::parse(&format!("{base}:plain")).unwrap(),
        )
        .unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&src.read_blob(&rec.manifest).unwrap()).unwrap();
    let put = |tag: &str, mt: &str, body: &serde_json::Value| {
        let url = format!(
            "http://{}/v2/test/multi/manifests/{tag}",
            base.split('/').next().unwrap()
        );
        ureq::put(&url)
            .set("Content-Type", mt)
            .send_bytes(&serde_json::to_vec(body).unwrap())
            .unwrap();
    };
    // The same content described as a Docker v2 schema2 manifest.
    let docker = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": manifest["config"]["digest"], "size": manifest["config"]["size"]},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar",
                    "digest": manifest["layers"][0]["digest"], "size": manifest["layers"][0]["size"]}],
    });
    put(
        "docker",
        "application/vnd.docker.distribution.manifest.v2+json",
        &docker,
    );
    let docker_bytes = serde_json::to_vec(&docker).unwrap();
    let docker_digest = moat_image::Digest::of(&docker_bytes);
    // An index whose amd64 entry is the OCI image, after an arm64 entry naming the docker one.
    let size = src.read_blob(&rec.manifest).unwrap().len();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": docker_digest.as_str(),
             "size": docker_bytes.len(), "platform": {"architecture": "arm64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": rec.manifest.as_str(),
             "size": size, "platform": {"architecture": "amd64", "os": "linux"}},
        ]
    });
    put("multi", "application/vnd.oci.image.index.v1+json", &index);

    let dst = Store::open(tmp.path().join("dst")).unwrap();
    let got = client
        .pull(
            &dst,
            &Reference::parse(&format!("{base}:multi")).unwrap(),
            &mut |_, _, _| {},
        )
        .unwrap();
    assert_eq!(
        got.manifest, rec.manifest,
        "index not resolved to the amd64 manifest"
    );
    let got = client
        .pull(
            &dst,
            &Reference::parse(&format!("{base}:docker")).unwrap(),
            &mut |_, _, _| {},
        )
        .unwrap();
    assert_eq!(got.manifest, docker_digest);
    assert_eq!(got.diff_ids, rec.diff_ids);
    assert_eq!(dst.list().unwrap().len(), 2);
    assert_eq!(
        std::fs::read_dir(dst.root().join("layers"))
            .unwrap()
            .count(),
        1
    );
}

fn b64url(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// An RS256 JWT the registry accepts: signed with a throwaway key whose self-signed
/// certificate is both the x5c chain and the registry's rootcertbundle.
fn signed_token(dir: &Path, repo: &str) -> String {
    use base64::Engine as _;
    let key = dir.join("key.pem");
    let cert = dir.join("cert.pem");
    let der = dir.join("cert.der");
    let run = |args: &[&str]| {
        let o = Command::new("openssl").args(args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o.stdout
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=moat-test-token",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
    run(&[
        "x509",
        "-in",
        cert.to_str().unwrap(),
        "-outform",
        "DER",
        "-out",
        der.to_str().unwrap(),
    ]);
    let x5c = base64::engine::general_purpose::STANDARD.encode(fs::read(&der).unwrap());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": "moat-test-issuer", "sub": "moat", "aud": "moat-registry",
        "exp": now + 3600, "nbf": now - 60, "iat": now - 60, "jti": format!("j{now}"),
        "access": [{"type": "repository", "name": repo, "actions": ["pull", "push"]}],
    });
    let input = format!(
        "{}.{}",
        b64url(&serde_json::to_vec(&header).unwrap()),
        b64url(&serde_json::to_vec(&claims).unwrap())
    );
    let input_file = dir.join("jwt-input");
    fs::write(&input_file, &input).unwrap();
    let sig = run(&[
        "dgst",
        "-sha256",
        "-sign",
        key.to_str().unwrap(),
        input_file.to_str().unwrap(),
    ]);
    format!("{input}.{}", b64url(&sig))
}

/// Token endpoint: hands out `token` for basic credentials moat:tok-pass.
fn token_server(token: String) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut auth = String::new();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("authorization:") {
                    auth = v.trim().to_string();
                }
            }
            let (status, body) = if auth == "basic bw9hddp0b2stcgfzcw==" {
                ("200 OK", serde_json::json!({"token": token}).to_string())
            } else {
                ("401 Unauthorized", "{}".to_string())
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn bearer_token_auth_against_docker_registry() {
    let tmp = tempfile::tempdir().unwrap();
    let token = signed_token(tmp.path(), "x/bb");
    let tport = token_server(token);
    let auth = format!(
        "auth:\n  token:\n    realm: http://127.0.0.1:{tport}/token\n    service: moat-registry\n    issuer: moat-test-issuer\n    rootcertbundle: {}\n",
        tmp.path().join("cert.pem").display()
    );
    let reg = start_registry_with(&tmp.path().join("reg"), &auth);
    let src = Store::open(tmp.path().join("src")).unwrap();
    let rec = src
        .import(&busybox_oci(&tmp.path().join("img")), None)
        .unwrap();
    let dest = Reference::parse(&format!("127.0.0.1:{}/x/bb:1", reg.port)).unwrap();
    let e = Client::new(None).push(&src, &rec.name, &dest).unwrap_err();
    assert!(e.to_string().contains("fetching bearer token"), "{e}");
    let client = Client::new(Some(Credentials {
        username: "moat".into(),
        password: "tok-pass".into(),
    }));
    client.push(&src, &rec.name, &dest).unwrap();
    let dst = Store::open(tmp.path().join("dst")).unwrap();
    let got = client.pull(&dst, &dest, &mut |_, _, _| {}).unwrap();
    assert_eq!(got.manifest, rec.manifest);
    // A repository the token does not cover is refused by the registry itself.
    let other = Reference::parse(&format!("127.0.0.1:{}/y/other:1", reg.port)).unwrap();
    let e = client.push(&src, &rec.name, &other).unwrap_err();
    assert!(
        matches!(e, RegistryError::Status { status: 401, .. }),
        "{e:?}"
    );
}

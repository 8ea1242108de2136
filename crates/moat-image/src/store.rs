//! The content-addressed store on disk.
//!
//! Layout under the root:
//! - `blobs/sha256/<hex>`: verified blobs (manifests, configs, layer blobs as fetched).
//! - `layers/<diffid hex>/`: unpacked layers, shared by every image that has them.
//! - `images.json`: ref → manifest digest (+ config, layers), rewritten atomically.
//! - `containers/<id>/{upper,work,image}`: per-container overlay state.
//! - `tmp/`: staging; anything here after a crash is garbage and is swept on open.
//!
//! Invariant: a path under `blobs/` or `layers/` only appears (by rename) after its digest was
//! verified, so readers never see partial content.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::oci::{self, AnyManifest, Descriptor, Manifest};
use crate::reference::{Digest, RefError, Reference};
use crate::rootfs::Mounter;
use crate::unpack::{self, UnpackError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{step}: {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("size mismatch for {what}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("parsing {what}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Reference(#[from] RefError),
    #[error("unpacking layer {layer}")]
    Unpack {
        layer: Digest,
        #[source]
        source: UnpackError,
    },
    #[error("image {0} not found in the store")]
    NotFound(String),
    #[error("image {image} is in use by container {container}")]
    InUse { image: String, container: String },
    #[error("invalid {0}: {1}")]
    Invalid(&'static str, String),
    #[error("mounting rootfs for container {container}")]
    Mount {
        container: String,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        step,
        path: path.to_path_buf(),
        source,
    }
}

fn json_err(what: &str) -> impl FnOnce(serde_json::Error) -> StoreError + '_ {
    move |source| StoreError::Json {
        what: what.to_string(),
        source,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    /// Normalized reference, `registry/repo:tag` (or `@digest`).
    pub name: String,
    pub manifest: Digest,
    pub config: Digest,
    pub layers: Vec<Digest>,
    pub diff_ids: Vec<Digest>,
    /// Sum of the manifest, config and layer blob sizes.
    pub size: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ImageIndex {
    images: Vec<ImageRecord>,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

pub struct Store {
    root: PathBuf,
}

/// Holds the store's exclusive lock; mutations of the index and GC happen under it so two
/// `moat` processes cannot interleave them.
struct Lock(#[allow(dead_code)] nix::fcntl::Flock<File>);

impl Store {
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let root = root.into();
        for d in ["blobs/sha256", "layers", "containers", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_err("creating store directory", &p))?;
        }
        let s = Store { root };
        let _l = s.lock()?;
        // Staging leftovers from a crash are never referenced: sweep them.
        let tmp = s.root.join("tmp");
        for e in fs::read_dir(&tmp).map_err(io_err("listing staging dir", &tmp))? {
            let e = e.map_err(io_err("listing staging dir", &tmp))?;
            remove_any(&e.path())?;
        }
        Ok(s)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock(&self) -> Result<Lock, StoreError> {
        let p = self.root.join("lock");
        let f = File::create(&p).map_err(io_err("opening store lock", &p))?;
        let l =
            nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| {
                StoreError::Io {
                    step: "locking store",
                    path: p.clone(),
                    source: e.into(),
                }
            })?;
        Ok(Lock(l))
    }

    pub fn tmp_path(&self, what: &str) -> PathBuf {
        let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{what}-{}-{n}", std::process::id()))
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Streams a blob into the store, verifying digest (and size when known) before it becomes
    /// visible. On any error the staging file is removed.
    pub fn put_blob(
        &self,
        expected: &Digest,
        expected_size: Option<u64>,
        r: &mut dyn Read,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, StoreError> {
        let tmp = self.tmp_path("blob");
        let res = self.put_blob_inner(expected, expected_size, r, progress, &tmp);
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    fn put_blob_inner(
        &self,
        expected: &Digest,
        expected_size: Option<u64>,
        r: &mut dyn Read,
        progress: &mut dyn FnMut(u64),
        tmp: &Path,
    ) -> Result<u64, StoreError> {
        let mut f = File::create(tmp).map_err(io_err("creating staging blob", tmp))?;
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0u64;
        loop {
            let k = r.read(&mut buf).map_err(io_err("reading blob", tmp))?;
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
            f.write_all(&buf[..k])
                .map_err(io_err("writing staging blob", tmp))?;
            n += k as u64;
            progress(n);
        }
        let actual = Digest::from_sha256(&h.finalize());
        if &actual != expected {
            return Err(StoreError::DigestMismatch {
                what: format!("blob {expected}"),
                expected: expected.clone(),
                actual,
            });
        }
        if let Some(s) = expected_size
            && s != n
        {
            return Err(StoreError::SizeMismatch {
                what: format!("blob {expected}"),
                expected: s,
                actual: n,
            });
        }
        f.sync_all().map_err(io_err("syncing staging blob", tmp))?;
        drop(f);
        let dst = self.blob_path(expected);
        fs::rename(tmp, &dst).map_err(io_err("publishing blob", &dst))?;
        sync_dir(dst.parent().unwrap_or(&self.root))?;
        Ok(n)
    }

    pub fn put_blob_bytes(&self, expected: &Digest, data: &[u8]) -> Result<(), StoreError> {
        if self.has_blob(expected) {
            return Ok(());
        }
        self.put_blob(
            expected,
            Some(data.len() as u64),
            &mut &data[..],
            &mut |_| {},
        )?;
        Ok(())
    }

    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>, StoreError> {
        let p = self.blob_path(d);
        fs::read(&p).map_err(io_err("reading blob", &p))
    }

    /// Unpacks a layer blob into `layers/<diffid>` unless already there (dedup across images).
    pub fn ensure_layer(&self, blob: &Digest, diff_id: &Digest) -> Result<(), StoreError> {
        let dst = self.layer_path(diff_id);
        if dst.is_dir() {
            return Ok(());
        }
        let tmp = self.tmp_path("layer");
        let res = (|| {
            fs::create_dir(&tmp).map_err(io_err("creating staging layer dir", &tmp))?;
            let src = self.blob_path(blob);
            let f = File::open(&src).map_err(io_err("opening layer blob", &src))?;
            let got = unpack::unpack_layer(io::BufReader::new(f), &tmp).map_err(|source| {
                StoreError::Unpack {
                    layer: blob.clone(),
                    source,
                }
            })?;
            if &got != diff_id {
                return Err(StoreError::DigestMismatch {
                    what: format!("uncompressed layer {blob} (diff_id)"),
                    expected: diff_id.clone(),
                    actual: got,
                });
            }
            // Flushes the unpacked files (only this filesystem) before the rename publishes
            // the directory.
            let d = File::open(&tmp).map_err(io_err("opening staging layer dir", &tmp))?;
            nix::unistd::syncfs(&d).map_err(|e| StoreError::Io {
                step: "syncing unpacked layer",
                path: tmp.clone(),
                source: e.into(),
            })?;
            fs::rename(&tmp, &dst).map_err(io_err("publishing layer", &dst))?;
            sync_dir(&self.root.join("layers"))
        })();
        if res.is_err() {
            let _ = remove_any(&tmp);
        }
        res
    }

    /// Records `name` → the manifest already stored as a blob, unpacking its layers first.
    pub fn commit_image(
        &self,
        name: &Reference,
        manifest_digest: &Digest,
    ) -> Result<ImageRecord, StoreError> {
        let mbytes = self.read_blob(manifest_digest)?;
        let manifest: Manifest =
            serde_json::from_slice(&mbytes).map_err(json_err("image manifest"))?;
        let cbytes = self.read_blob(&manifest.config.digest)?;
        let config: oci::ImageConfig =
            serde_json::from_slice(&cbytes).map_err(json_err("image config"))?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(StoreError::Invalid(
                "image",
                format!(
                    "manifest has {} layers but config lists {} diff_ids",
                    manifest.layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            ));
        }
        for (l, d) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
            self.ensure_layer(&l.digest, d)?;
        }
        let rec = ImageRecord {
            name: name.to_string(),
            manifest: manifest_digest.clone(),
            config: manifest.config.digest.clone(),
            layers: manifest.layers.iter().map(|l| l.digest.clone()).collect(),
            diff_ids: config.rootfs.diff_ids.clone(),
            size: mbytes.len() as u64
                + manifest.config.size
                + manifest.layers.iter().map(|l| l.size).sum::<u64>(),
        };
        let _l = self.lock()?;
        let mut ix = self.read_index()?;
        ix.images.retain(|i| i.name != rec.name);
        ix.images.push(rec.clone());
        ix.images.sort_by(|a, b| a.name.cmp(&b.name));
        self.write_index(&ix)?;
        Ok(rec)
    }

    fn read_index(&self) -> Result<ImageIndex, StoreError> {
        let p = self.root.join("images.json");
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(json_err("images.json")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(ImageIndex::default()),
            Err(e) => Err(io_err("reading image index", &p)(e)),
        }
    }

    fn write_index(&self, ix: &ImageIndex) -> Result<(), StoreError> {
        let data = serde_json::to_vec_pretty(ix).map_err(json_err("images.json"))?;
        write_atomic(
            &self.root.join("images.json"),
            &data,
            &self.tmp_path("index"),
        )
    }

    pub fn list(&self) -> Result<Vec<ImageRecord>, StoreError> {
        Ok(self.read_index()?.images)
    }

    /// Finds an image by reference (normalized: `busybox` finds docker.io/library/busybox:latest)
    /// or by manifest digest.
    pub fn get(&self, name: &str) -> Result<Option<ImageRecord>, StoreError> {
        let imgs = self.list()?;
        if let Ok(d) = Digest::parse(name) {
            return Ok(imgs.into_iter().find(|i| i.manifest == d));
        }
        let r = Reference::parse(name)?.to_string();
        Ok(imgs.into_iter().find(|i| i.name == r))
    }

    /// Drops a ref and garbage-collects blobs and layers nothing references any more.
    pub fn remove(&self, name: &str) -> Result<ImageRecord, StoreError> {
        let rec = self
            .get(name)?
            .ok_or_else(|| StoreError::NotFound(name.to_string()))?;
        let _l = self.lock()?;
        let mut ix = self.read_index()?;
        let still_shared = ix
            .images
            .iter()
            .any(|i| i.name != rec.name && i.manifest == rec.manifest);
        if !still_shared && let Some(c) = self.container_using(&rec.manifest)? {
            return Err(StoreError::InUse {
                image: rec.name.clone(),
                container: c,
            });
        }
        ix.images.retain(|i| i.name != rec.name);
        self.write_index(&ix)?;
        self.gc_locked(&ix)?;
        Ok(rec)
    }

    fn container_using(&self, manifest: &Digest) -> Result<Option<String>, StoreError> {
        let dir = self.root.join("containers");
        for e in fs::read_dir(&dir).map_err(io_err("listing containers", &dir))? {
            let e = e.map_err(io_err("listing containers", &dir))?;
            if let Ok(m) = fs::read_to_string(e.path().join("image"))
                && m.trim() == manifest.as_str()
            {
                return Ok(Some(e.file_name().to_string_lossy().into_owned()));
            }
        }
        Ok(None)
    }

    fn gc_locked(&self, ix: &ImageIndex) -> Result<(), StoreError> {
        let mut keep_blobs = std::collections::HashSet::new();
        let mut keep_layers = std::collections::HashSet::new();
        for i in &ix.images {
            keep_blobs.insert(i.manifest.hex().to_string());
            keep_blobs.insert(i.config.hex().to_string());
            keep_blobs.extend(i.layers.iter().map(|d| d.hex().to_string()));
            keep_layers.extend(i.diff_ids.iter().map(|d| d.hex().to_string()));
        }
        for (dir, keep) in [("blobs/sha256", &keep_blobs), ("layers", &keep_layers)] {
            let p = self.root.join(dir);
            for e in fs::read_dir(&p).map_err(io_err("listing for gc", &p))? {
                let e = e.map_err(io_err("listing for gc", &p))?;
                let name = e.file_name().to_string_lossy().into_owned();
                if !keep.contains(&name) {
                    remove_any(&e.path())?;
                }
            }
        }
        Ok(())
    }

    /// Imports an `oci-layout` directory. `name` overrides the ref; otherwise the
    /// `org.opencontainers.image.ref.name` annotation is used (a bare tag is applied to
    /// `localhost/<default_repo>`).
    pub fn import_oci_layout(
        &self,
        dir: &Path,
        name: Option<&str>,
        default_repo: &str,
    ) -> Result<ImageRecord, StoreError> {
        let ip = dir.join("index.json");
        let ib = fs::read(&ip).map_err(io_err("reading oci-layout index.json", &ip))?;
        let index: oci::Index = serde_json::from_slice(&ib).map_err(json_err("index.json"))?;
        let desc = match index.manifests.as_slice() {
            [one] => one.clone(),
            many => oci::pick_platform(&index)
                .cloned()
                .or_else(|| many.first().cloned())
                .ok_or_else(|| StoreError::Invalid("oci-layout", "index.json is empty".into()))?,
        };
        let ref_name = desc
            .annotations
            .as_ref()
            .and_then(|a| a.get(oci::ANNOTATION_REF_NAME))
            .cloned();
        let manifest_digest = self.import_manifest_from_dir(dir, &desc)?;
        let full = match (name, ref_name) {
            (Some(n), _) => n.to_string(),
            (None, Some(r)) if r.contains('/') => r,
            (None, Some(tag)) => format!("localhost/{default_repo}:{tag}"),
            (None, None) => format!("localhost/{default_repo}:latest"),
        };
        self.commit_image(&Reference::parse(&full)?, &manifest_digest)
    }

    fn copy_blob_from_dir(&self, dir: &Path, d: &Descriptor) -> Result<(), StoreError> {
        if self.has_blob(&d.digest) {
            return Ok(());
        }
        let p = dir.join("blobs/sha256").join(d.digest.hex());
        let mut f = File::open(&p).map_err(io_err("opening blob in oci-layout", &p))?;
        self.put_blob(&d.digest, Some(d.size), &mut f, &mut |_| {})?;
        Ok(())
    }

    fn import_manifest_from_dir(
        &self,
        dir: &Path,
        desc: &Descriptor,
    ) -> Result<Digest, StoreError> {
        self.copy_blob_from_dir(dir, desc)?;
        let bytes = self.read_blob(&desc.digest)?;
        match oci::parse_any(&bytes).map_err(json_err("manifest"))? {
            AnyManifest::Index(ix) => {
                let d = oci::pick_platform(&ix).cloned().ok_or_else(|| {
                    StoreError::Invalid("image index", "no linux/amd64 manifest".into())
                })?;
                self.import_manifest_from_dir(dir, &d)
            }
            AnyManifest::Image(m) => {
                self.copy_blob_from_dir(dir, &m.config)?;
                for l in &m.layers {
                    self.copy_blob_from_dir(dir, l)?;
                }
                Ok(desc.digest.clone())
            }
        }
    }

    /// Imports a docker-archive (`docker save` format): builds an OCI manifest for it.
    pub fn import_docker_dir(
        &self,
        dir: &Path,
        name: Option<&str>,
    ) -> Result<ImageRecord, StoreError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            #[serde(default)]
            repo_tags: Option<Vec<String>>,
            layers: Vec<String>,
        }
        let mp = dir.join("manifest.json");
        let mb = fs::read(&mp).map_err(io_err("reading docker-archive manifest.json", &mp))?;
        let entries: Vec<Entry> =
            serde_json::from_slice(&mb).map_err(json_err("docker-archive manifest.json"))?;
        let e = entries.into_iter().next().ok_or_else(|| {
            StoreError::Invalid("docker-archive", "manifest.json is empty".into())
        })?;
        let member = |rel: &str| -> Result<PathBuf, StoreError> {
            let n = unpack::normalize(Path::new(rel))
                .map_err(|_| StoreError::Invalid("docker-archive member", rel.to_string()))?;
            Ok(dir.join(n))
        };
        let put_file = |p: &Path| -> Result<(Digest, u64), StoreError> {
            let d = hash_file(p)?;
            let mut f = File::open(p).map_err(io_err("opening archive member", p))?;
            let n = if self.has_blob(&d) {
                fs::metadata(p)
                    .map_err(io_err("stat archive member", p))?
                    .len()
            } else {
                self.put_blob(&d, None, &mut f, &mut |_| {})?
            };
            Ok((d, n))
        };
        let (cd, cs) = put_file(&member(&e.config)?)?;
        let mut layers = Vec::new();
        for l in &e.layers {
            let p = member(l)?;
            let mut magic = [0u8; 2];
            let gz = File::open(&p)
                .and_then(|mut f| f.read(&mut magic))
                .map(|n| n == 2 && magic == [0x1f, 0x8b])
                .unwrap_or(false);
            let (d, s) = put_file(&p)?;
            layers.push(Descriptor {
                media_type: if gz {
                    oci::MT_OCI_LAYER_GZIP
                } else {
                    oci::MT_OCI_LAYER
                }
                .into(),
                digest: d,
                size: s,
                platform: None,
                annotations: None,
            });
        }
        let m = Manifest {
            schema_version: 2,
            media_type: Some(oci::MT_OCI_MANIFEST.into()),
            config: Descriptor {
                media_type: oci::MT_OCI_CONFIG.into(),
                digest: cd,
                size: cs,
                platform: None,
                annotations: None,
            },
            layers,
        };
        let mbytes = serde_json::to_vec(&m).map_err(json_err("manifest"))?;
        let md = Digest::of(&mbytes);
        self.put_blob_bytes(&md, &mbytes)?;
        let full = match name {
            Some(n) => n.to_string(),
            None => e
                .repo_tags
                .and_then(|t| t.into_iter().next())
                .unwrap_or_else(|| md.to_string()),
        };
        self.commit_image(&Reference::parse(&full)?, &md)
    }

    /// Imports an `oci-archive` or `docker-archive` tar file, or an `oci-layout` directory.
    pub fn import(&self, path: &Path, name: Option<&str>) -> Result<ImageRecord, StoreError> {
        let stem = path
            .file_name()
            .and_then(|f| f.to_str())
            .map(|f| f.split('.').next().unwrap_or(f).to_lowercase())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "image".into());
        if path.is_dir() {
            return self.import_oci_layout(path, name, &stem);
        }
        let tmp = self.tmp_path("import");
        let res = (|| {
            fs::create_dir(&tmp).map_err(io_err("creating import staging dir", &tmp))?;
            let f = File::open(path).map_err(io_err("opening archive", path))?;
            // The archive is untrusted too: unpack it with the same traversal checks.
            unpack::unpack_layer(io::BufReader::new(f), &tmp).map_err(|source| {
                StoreError::Invalid("archive", format!("{}: {source}", path.display()))
            })?;
            if tmp.join("oci-layout").exists() {
                self.import_oci_layout(&tmp, name, &stem)
            } else if tmp.join("manifest.json").exists() {
                self.import_docker_dir(&tmp, name)
            } else {
                Err(StoreError::Invalid(
                    "archive",
                    format!("{}: neither oci-archive nor docker-archive", path.display()),
                ))
            }
        })();
        let _ = remove_any(&tmp);
        res
    }

    /// Mounts an overlay rootfs for a container at `target`: the image's layers as lowerdirs
    /// (top layer first) and a per-container upper/work dir.
    pub fn prepare_rootfs(
        &self,
        mounter: &dyn Mounter,
        image: &str,
        container_id: &str,
        target: &Path,
    ) -> Result<(), StoreError> {
        if container_id.is_empty()
            || !container_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            || container_id.starts_with('.')
        {
            return Err(StoreError::Invalid(
                "container id",
                container_id.to_string(),
            ));
        }
        let rec = self
            .get(image)?
            .ok_or_else(|| StoreError::NotFound(image.to_string()))?;
        let cdir = self.root.join("containers").join(container_id);
        let upper = cdir.join("upper");
        let work = cdir.join("work");
        for d in [&upper, &work] {
            fs::create_dir_all(d).map_err(io_err("creating container overlay dir", d))?;
        }
        write_atomic(
            &cdir.join("image"),
            rec.manifest.as_str().as_bytes(),
            &self.tmp_path("cimage"),
        )?;
        fs::create_dir_all(target).map_err(io_err("creating rootfs mountpoint", target))?;
        let lower: Vec<PathBuf> = rec
            .diff_ids
            .iter()
            .rev()
            .map(|d| self.layer_path(d))
            .collect();
        mounter
            .mount_overlay(&lower, &upper, &work, target)
            .map_err(|source| StoreError::Mount {
                container: container_id.to_string(),
                source,
            })
    }

    /// Unmounts a container's rootfs and deletes its writable layer.
    pub fn release_rootfs(
        &self,
        mounter: &dyn Mounter,
        container_id: &str,
        target: &Path,
    ) -> Result<(), StoreError> {
        if container_id.is_empty() || container_id.contains('/') || container_id.starts_with('.') {
            return Err(StoreError::Invalid(
                "container id",
                container_id.to_string(),
            ));
        }
        mounter
            .unmount(target)
            .map_err(|source| StoreError::Mount {
                container: container_id.to_string(),
                source,
            })?;
        remove_any(&self.root.join("containers").join(container_id))
    }
}

fn hash_file(p: &Path) -> Result<Digest, StoreError> {
    let mut f = File::open(p).map_err(io_err("opening for hashing", p))?;
    let mut h = sha2::Sha256::new();
    io::copy(&mut f, &mut h).map_err(io_err("hashing", p))?;
    Ok(Digest::from_sha256(&h.finalize()))
}

fn remove_any(p: &Path) -> Result<(), StoreError> {
    let r = match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    r.map_err(io_err("removing", p))
}

fn sync_dir(p: &Path) -> Result<(), StoreError> {
    File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(io_err("syncing directory", p))
}

/// Temp file in the store's staging dir + fsync + rename + directory fsync: after a crash the
/// file is either the old or the new version.
pub fn write_atomic(dst: &Path, data: &[u8], tmp: &Path) -> Result<(), StoreError> {
    let res = (|| {
        let mut f = File::create(tmp).map_err(io_err("creating temp file", tmp))?;
        f.write_all(data)
            .map_err(io_err("writing temp file", tmp))?;
        f.sync_all().map_err(io_err("syncing temp file", tmp))?;
        fs::rename(tmp, dst).map_err(io_err("renaming into place", dst))?;
        sync_dir(dst.parent().unwrap_or(Path::new(".")))
    })();
    if res.is_err() {
        let _ = fs::remove_file(tmp);
    }
    res
}

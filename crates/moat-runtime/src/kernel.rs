//! `assets kernel`: moat's guest kernel, built from Debian's `linux-source-6.1` package with
//! the reviewed fragment `crates/moat-runtime/kernel/guest.config` on top of
//! `make allnoconfig` (x86_64), everything built in.
//!
//! Built once and cached by the hash of (fragment, source package version, recipe) in
//! `<cache>/kernel-<hash>/` (outside the source tree), so a second run only hashes. Each step
//! that can fail names itself; nothing is written to the cache until the kernel is built and
//! checked, and the asset directory is not touched here at all, so a failed build leaves
//! the previous assets in place.
//!
//! Sans-IO: [`cache_key`], [`unmet`]. IO: [`build`] (tar, make, dpkg-query).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Bumped when the way the kernel is built changes, so cached kernels are rebuilt.
const RECIPE: &str = "allnoconfig+fragment, ARCH=x86_64, make vmlinux, v1";

/// Debian's kernel source package and the tarball it installs.
pub const SOURCE_PACKAGE: &str = "linux-source-6.1";
pub const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";
pub const DEFAULT_CACHE: &str = "/var/cache/moat";

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("guest kernel build, {step}: {detail}")]
    Step { step: &'static str, detail: String },
    #[error("guest kernel build, {step} ({})", path.display())]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> KernelError {
    let path = path.to_path_buf();
    move |source| KernelError::Io { step, path, source }
}

pub struct KernelBuild<'a> {
    /// The config fragment (KCONFIG_ALLCONFIG).
    pub fragment: &'a Path,
    pub source_tarball: &'a Path,
    /// Debian version of the source package, part of the cache key.
    pub source_version: &'a str,
    pub cache: &'a Path,
    /// `make -j`.
    pub jobs: u32,
}

/// What [`build`] produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Built {
    pub vmlinux: PathBuf,
    /// False when the cached kernel was used.
    pub compiled: bool,
    /// Seconds the (cold) build took, as recorded when it was compiled.
    pub build_seconds: Option<f64>,
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

/// The cache key of a kernel: the fragment's bytes, the source version and the recipe.
pub fn cache_key(fragment: &[u8], source_version: &str) -> String {
    let mut all = Vec::with_capacity(fragment.len() + 128);
    all.extend(RECIPE.as_bytes());
    all.push(0);
    all.extend(source_version.as_bytes());
    all.push(0);
    all.extend(fragment);
    format!("{:016x}", fnv(&all))
}

/// Lines of the fragment the final `.config` does not honour (Kconfig silently drops a
/// symbol whose dependencies are off): `CONFIG_X=y` must appear as such, `CONFIG_X=n` must be
/// absent or "is not set".
pub fn unmet(fragment: &str, dotconfig: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in fragment.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((sym, want)) = line.split_once('=') else {
            out.push(format!("{line} (not a CONFIG_X=value line)"));
            continue;
        };
        let set = dotconfig
            .lines()
            .find_map(|l| l.strip_prefix(sym).and_then(|r| r.strip_prefix('=')));
        let ok = match want {
            "n" => set.is_none(),
            w => set == Some(w),
        };
        if !ok {
            out.push(format!(
                "{line} (got {})",
                set.map_or("not set".to_string(), |v| format!("{sym}={v}"))
            ));
        }
    }
    out
}

/// Runs a step; with `log`, its output streams there (a kernel build is long: the log shows
/// progress) and a failure quotes the log's tail.
fn run(step: &'static str, cmd: &mut Command, log: Option<&Path>) -> Result<(), KernelError> {
    if let Some(l) = log {
        let f = std::fs::File::create(l).map_err(io("creating the build log", l))?;
        let f2 = f.try_clone().map_err(io("creating the build log", l))?;
        cmd.stdout(f).stderr(f2);
    }
    let out = cmd.output().map_err(|e| KernelError::Step {
        step,
        detail: format!("running {cmd:?}: {e}"),
    })?;
    if !out.status.success() {
        let text = match log {
            Some(l) => std::fs::read_to_string(l).unwrap_or_default(),
            None => String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        return Err(KernelError::Step {
            step,
            detail: format!(
                "{cmd:?} failed ({}){}:\n{tail}",
                out.status,
                log.map_or(String::new(), |l| format!(", full log in {}", l.display())),
            ),
        });
    }
    Ok(())
}

/// The installed version of Debian's kernel source package.
pub fn source_version() -> Result<String, KernelError> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", SOURCE_PACKAGE])
        .output()
        .map_err(|e| KernelError::Step {
            step: "finding the kernel source",
            detail: format!("running dpkg-query: {e}"),
        })?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || v.is_empty() {
        return Err(KernelError::Step {
            step: "finding the kernel source",
            detail: format!(
                "{SOURCE_PACKAGE} is not installed (scripts/deps.sh installs it: apt-get install {SOURCE_PACKAGE})"
            ),
        });
    }
    Ok(v)
}

/// The cache entry's directory for `key`.
pub fn cache_dir(cache: &Path, key: &str) -> PathBuf {
    cache.join(format!("kernel-{key}"))
}

/// Builds (or finds in the cache) the kernel; returns the cached vmlinux.
pub fn build(b: &KernelBuild) -> Result<Built, KernelError> {
    let fragment =
        std::fs::read(b.fragment).map_err(io("reading the config fragment", b.fragment))?;
    let key = cache_key(&fragment, b.source_version);
    let done = cache_dir(b.cache, &key);
    let vmlinux = done.join("vmlinux");
    if vmlinux.is_file() {
        let build_seconds = std::fs::read_to_string(done.join("build-seconds"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        return Ok(Built {
            vmlinux,
            compiled: false,
            build_seconds,
        });
    }
    if !b.source_tarball.is_file() {
        return Err(KernelError::Step {
            step: "finding the kernel source",
            detail: format!(
                "{} missing (apt-get install {SOURCE_PACKAGE})",
                b.source_tarball.display()
            ),
        });
    }
    let started = std::time::Instant::now();
    std::fs::create_dir_all(b.cache).map_err(io("creating the cache", b.cache))?;
    let work = b.cache.join(format!("build-{key}"));
    // Leftovers of an interrupted build are never trusted.
    if work.exists() {
        std::fs::remove_dir_all(&work).map_err(io("removing a stale build", &work))?;
    }
    std::fs::create_dir_all(&work).map_err(io("creating the build directory", &work))?;
    let result = compile(b, &fragment, &work).and_then(|()| {
        let part = b.cache.join(format!("kernel-{key}.part"));
        if part.exists() {
            std::fs::remove_dir_all(&part).map_err(io("removing a stale cache entry", &part))?;
        }
        std::fs::create_dir_all(&part).map_err(io("storing in the cache", &part))?;
        for (from, to) in [("vmlinux", "vmlinux"), (".config", "config")] {
            std::fs::copy(work.join(from), part.join(to))
                .map_err(io("storing in the cache", &part.join(to)))?;
        }
        std::fs::write(
            part.join("build-seconds"),
            format!("{:.1}\n", started.elapsed().as_secs_f64()),
        )
        .map_err(io("storing in the cache", &part))?;
        std::fs::rename(&part, &done).map_err(io("storing in the cache", &done))
    });
    // The source tree is 1.3 GB; only the result is kept.
    let _ = std::fs::remove_dir_all(&work);
    result?;
    Ok(Built {
        vmlinux,
        compiled: true,
        build_seconds: Some(started.elapsed().as_secs_f64()),
    })
}

fn compile(b: &KernelBuild, fragment: &[u8], work: &Path) -> Result<(), KernelError> {
    run(
        "unpacking the kernel source",
        Command::new("tar")
            .arg("-xJf")
            .arg(b.source_tarball)
            .arg("-C")
            .arg(work)
            .arg("--strip-components=1"),
        None,
    )?;
    let frag = work.join("moat-guest.config");
    std::fs::write(&frag, fragment).map_err(io("writing the config fragment", &frag))?;
    let make = |target: &str| {
        let mut c = Command::new("nice");
        c.args(["-n", "10", "make", "ARCH=x86_64"])
            .arg(format!("-j{}", b.jobs.max(1)))
            .arg(target)
            .env("KCONFIG_ALLCONFIG", &frag)
            // Reproducible-ish: no host name or user baked into the version string.
            .env("KBUILD_BUILD_USER", "moat")
            .env("KBUILD_BUILD_HOST", "moat")
            .current_dir(work);
        c
    };
    run(
        "configuring (make allnoconfig with the fragment)",
        &mut make("allnoconfig"),
        Some(&b.cache.join("kernel-config.log")),
    )?;
    let dotconfig = std::fs::read_to_string(work.join(".config"))
        .map_err(io("reading the configuration", &work.join(".config")))?;
    let bad = unmet(&String::from_utf8_lossy(fragment), &dotconfig);
    if !bad.is_empty() {
        return Err(KernelError::Step {
            step: "checking the configuration",
            detail: format!("Kconfig did not take: {}", bad.join("; ")),
        });
    }
    run(
        "compiling (make vmlinux)",
        &mut make("vmlinux"),
        Some(&b.cache.join("kernel-build.log")),
    )?;
    let elf = std::fs::read(work.join("vmlinux")).map_err(io("reading", &work.join("vmlinux")))?;
    if !crate::vmlinux::has_pvh_note(&elf) {
        return Err(KernelError::Step {
            step: "checking the PVH entry",
            detail: "the vmlinux has no PVH note; QEMU microvm cannot boot it (CONFIG_PVH)".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_follows_fragment_and_source_version() {
        let k = cache_key(b"CONFIG_A=y\n", "6.1.1-1");
        assert_eq!(k, cache_key(b"CONFIG_A=y\n", "6.1.1-1"));
        assert_ne!(k, cache_key(b"CONFIG_A=n\n", "6.1.1-1"));
        assert_ne!(k, cache_key(b"CONFIG_A=y\n", "6.1.1-2"));
        assert_eq!(k.len(), 16);
    }

    #[test]
    fn unmet_lines_are_named() {
        let frag = "# comment\n\nCONFIG_A=y\nCONFIG_B=n\nCONFIG_C=y\nCONFIG_D=n\nCONFIG_E=64\n";
        let cfg = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_D=y\nCONFIG_E=64\nCONFIG_CC=y\n";
        assert_eq!(
            unmet(frag, cfg),
            vec![
                "CONFIG_C=y (got not set)".to_string(),
                "CONFIG_D=n (got CONFIG_D=y)".to_string()
            ]
        );
        assert_eq!(
            unmet("garbage\n", ""),
            vec!["garbage (not a CONFIG_X=value line)"]
        );
    }

    #[test]
    fn the_shipped_fragment_is_well_formed_and_has_no_modules() {
        let frag = include_str!("../kernel/guest.config");
        // Every line is a comment or CONFIG_X=value, so `unmet` checks all of them.
        for l in frag.lines().map(str::trim) {
            assert!(
                l.is_empty() || l.starts_with('#') || l.starts_with("CONFIG_") && l.contains('='),
                "{l}"
            );
        }
        assert!(frag.contains("CONFIG_MODULES=n"));
        for need in [
            "CONFIG_PVH=y",
            "CONFIG_VIRTIO_MMIO=y",
            "CONFIG_VIRTIO_CONSOLE=y",
            "CONFIG_9P_FS=y",
            "CONFIG_NET_9P_VIRTIO=y",
            "CONFIG_OVERLAY_FS=y",
            "CONFIG_VIRTIO_NET=y",
            "CONFIG_MEMCG=y",
            "CONFIG_CGROUP_PIDS=y",
            "CONFIG_CFS_BANDWIDTH=y",
            "CONFIG_VIRTIO_VSOCKETS=y",
        ] {
            assert!(frag.lines().any(|l| l == need), "{need}");
        }
    }

    #[test]
    fn a_cached_kernel_is_used_without_the_source() {
        let tmp = tempfile::tempdir().unwrap();
        let frag = tmp.path().join("f.config");
        std::fs::write(&frag, "CONFIG_A=y\n").unwrap();
        let key = cache_key(b"CONFIG_A=y\n", "v1");
        let d = cache_dir(tmp.path(), &key);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("vmlinux"), "elf").unwrap();
        std::fs::write(d.join("build-seconds"), "123.4\n").unwrap();
        let b = KernelBuild {
            fragment: &frag,
            source_tarball: Path::new("/nonexistent.tar.xz"),
            source_version: "v1",
            cache: tmp.path(),
            jobs: 2,
        };
        let built = build(&b).unwrap();
        assert!(!built.compiled);
        assert_eq!(built.vmlinux, d.join("vmlinux"));
        assert_eq!(built.build_seconds, Some(123.4));
        // Another source version is not in the cache, and its missing source is named.
        let b = KernelBuild {
            source_version: "v2",
            ..b
        };
        let e = build(&b).unwrap_err().to_string();
        assert!(e.contains("finding the kernel source"), "{e}");
    }
}

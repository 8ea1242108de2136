//! `assets build`: guest kernel + initramfs from Debian packages only.
//!
//! Steps: resolve the versioned linux-image package behind `linux-image-amd64` (apt-cache),
//! `apt-get download` it into a temp dir, `dpkg-deb -x` it (never installed on the host),
//! extract the PVH vmlinux, pick the modules, write the newc initramfs with `/init` = agent.

use crate::cpio::NewcWriter;
use crate::modules::{self, Compression};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum AssetsError {
    #[error("running {cmd}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{cmd} failed: {stderr}")]
    Failed { cmd: String, stderr: String },
    #[error("apt-cache depends linux-image-amd64 names no linux-image-*-amd64 package")]
    NoKernelPackage,
    #[error("{step} {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("extracting vmlinux")]
    Vmlinux(#[from] crate::vmlinux::ExtractError),
    #[error("choosing kernel modules")]
    Modules(#[from] modules::PlanError),
    #[error("module {0} is compressed ({1:?}); decompression is not implemented")]
    Compressed(String, Compression),
}

/// Picks `linux-image-<ver>-amd64` out of `apt-cache depends linux-image-amd64` output.
pub fn kernel_package(depends: &str) -> Option<String> {
    depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64") && !p.contains("dbg"))
        .map(str::to_string)
}

fn run(cmd: &mut Command) -> Result<String, AssetsError> {
    let name = format!("{cmd:?}");
    let out = cmd.output().map_err(|source| AssetsError::Spawn {
        cmd: name.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(AssetsError::Failed {
            cmd: name,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn io(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AssetsError {
    let path = path.to_path_buf();
    move |source| AssetsError::Io { step, path, source }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), AssetsError> {
    for ent in std::fs::read_dir(dir).map_err(io("listing", dir))? {
        let ent = ent.map_err(io("listing", dir))?;
        let p = ent.path();
        if ent.file_type().map_err(io("stat", &p))?.is_dir() {
            walk(root, &p, out)?;
        } else if let Ok(rel) = p.strip_prefix(root) {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

/// Builds `vmlinux` and `initramfs.cpio` in `out`; skips work when the stamp matches the
/// kernel package and agent already built. Returns whether anything was rebuilt.
/// The initramfs a sandbox boots: the plain one, or the one with a shell for the debug
/// console (`hypervisor.debug_console = true`).
pub fn initramfs_name(debug_console: bool) -> &'static str {
    if debug_console {
        "initramfs-debug.cpio"
    } else {
        "initramfs.cpio"
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

/// `debug_shell`: a static shell (Debian's busybox-static) for `initramfs-debug.cpio`, the
/// debug console's image; the plain initramfs never carries one.
pub fn build(out: &Path, agent: &Path, debug_shell: Option<&Path>) -> Result<bool, AssetsError> {
    let pkg = kernel_package(&run(
        Command::new("apt-cache").args(["depends", "linux-image-amd64"])
    )?)
    .ok_or(AssetsError::NoKernelPackage)?;
    let agent_bytes = std::fs::read(agent).map_err(io("reading agent", agent))?;
    let shell = match debug_shell {
        Some(p) => Some(std::fs::read(p).map_err(io("reading the debug shell", p))?),
        None => None,
    };
    let mut stamp = format!(
        "{pkg}\nagent {} bytes, {:016x}\n",
        agent_bytes.len(),
        fnv(&agent_bytes)
    );
    if let Some(sh) = &shell {
        stamp.push_str(&format!(
            "debug shell {} bytes, {:016x}\n",
            sh.len(),
            fnv(sh)
        ));
    }
    let stamp_path = out.join("stamp");
    if std::fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str())
        && out.join("vmlinux").is_file()
        && out.join(initramfs_name(false)).is_file()
        && (shell.is_none() || out.join(initramfs_name(true)).is_file())
    {
        return Ok(false);
    }
    std::fs::create_dir_all(out).map_err(io("creating", out))?;
    let tmp = out.join(".build");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io("creating", &tmp))?;
    run(Command::new("apt-get")
        .args(["download", &pkg])
        .current_dir(&tmp))?;
    let deb = std::fs::read_dir(&tmp)
        .map_err(io("listing", &tmp))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| AssetsError::Failed {
            cmd: format!("apt-get download {pkg}"),
            stderr: "no .deb produced".into(),
        })?;
    let x = tmp.join("x");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x))?;
    let mut files = Vec::new();
    walk(&x, &x, &mut files)?;
    let vmlinuz = files
        .iter()
        .find(|f| f.starts_with("boot/vmlinuz-"))
        .ok_or(AssetsError::NoKernelPackage)?;
    let img = std::fs::read(x.join(vmlinuz)).map_err(io("reading", &x.join(vmlinuz)))?;
    let elf = crate::vmlinux::extract_vmlinux(&img)?;
    let builtin_path = files
        .iter()
        .find(|f| f.ends_with("/modules.builtin"))
        .map(|f| x.join(f));
    let builtin = match builtin_path {
        Some(p) => std::fs::read_to_string(&p).map_err(io("reading", &p))?,
        None => String::new(),
    };
    let plan = modules::plan(&files, &builtin, modules::GUEST_MODULES)?;
    let cpio_err = |e| AssetsError::Io {
        step: "writing initramfs",
        path: out.join("initramfs.cpio"),
        source: e,
    };
    let mut modules_files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut deps = Vec::new();
    for m in &plan.load {
        if m.compression != Compression::None {
            return Err(AssetsError::Compressed(
                m.name.clone(),
                m.compression.clone(),
            ));
        }
        let p = x.join(&m.source);
        let data = std::fs::read(&p).map_err(io("reading module", &p))?;
        deps.push((m.name.clone(), modules::modinfo_depends(&data)));
        modules_files.push((
            format!("modules/{}.ko", m.name),
            modules::strip_signature(&data).to_vec(),
        ));
    }
    // One line per load level; the agent loads a line's modules in parallel.
    let mut order = String::new();
    for level in modules::levels(&deps)? {
        let files: Vec<String> = level.iter().map(|n| format!("{n}.ko")).collect();
        order.push_str(&files.join(" "));
        order.push('\n');
    }
    let cpio = |with_shell: Option<&[u8]>| -> Result<Vec<u8>, AssetsError> {
        let mut w = NewcWriter::new(Vec::new());
        w.file("init", 0o755, &agent_bytes).map_err(cpio_err)?;
        w.dir("modules", 0o755).map_err(cpio_err)?;
        for (name, data) in &modules_files {
            w.file(name, 0o644, data).map_err(cpio_err)?;
        }
        w.file("modules/order", 0o644, order.as_bytes())
            .map_err(cpio_err)?;
        if let Some(sh) = with_shell {
            w.dir("bin", 0o755).map_err(cpio_err)?;
            w.file("bin/busybox", 0o755, sh).map_err(cpio_err)?;
            w.symlink("bin/sh", "busybox").map_err(cpio_err)?;
        }
        w.finish().map_err(cpio_err)
    };
    let mut outputs = vec![("vmlinux", elf), (initramfs_name(false), cpio(None)?)];
    if let Some(sh) = &shell {
        outputs.push((initramfs_name(true), cpio(Some(sh))?));
    }
    for (name, data) in &outputs {
        let part = out.join(format!("{name}.part"));
        std::fs::write(&part, data).map_err(io("writing", &part))?;
        std::fs::rename(&part, out.join(name)).map_err(io("renaming", &part))?;
    }
    std::fs::write(&stamp_path, stamp).map_err(io("writing", &stamp_path))?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(true)
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_package_from_apt_cache_output() {
        let s = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n  Recommends: x\n";
        assert_eq!(
            super::kernel_package(s).as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        assert_eq!(super::kernel_package("linux-image-amd64\n"), None);
    }
}

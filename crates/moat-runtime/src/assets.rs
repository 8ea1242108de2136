//! `assets build`: guest kernels + initramfs images from Debian packages only.
//!
//! Debian's kernel: resolve the versioned linux-image package behind `linux-image-amd64`
//! (apt-cache), `apt-get download` it into a temp dir, `dpkg-deb -x` it (never installed on
//! the host), extract the PVH vmlinux, pick the modules, write the newc initramfs with
//! `/init` = agent. Ours (built by `crate::kernel` from `linux-source-6.1`): install the
//! vmlinux beside it with an initramfs that carries the agent and no modules.

use crate::config::KernelKind;
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
    #[error("{0} has no PVH entry note: QEMU microvm cannot boot it (CONFIG_PVH)")]
    NoPvh(PathBuf),
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

pub use crate::config::{initramfs_name, kernel_name};

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

/// Kernel modules for the initramfs: (`modules/<name>.ko`, bytes) and the load order file.
type Modules<'a> = (&'a [(String, Vec<u8>)], &'a str);

/// The initramfs: the agent as `/init`, the modules (Debian's kernel only) with their load
/// order, and for the debug console a static shell.
fn initramfs(
    agent: &[u8],
    modules: Option<Modules>,
    shell: Option<&[u8]>,
    path: &Path,
) -> Result<Vec<u8>, AssetsError> {
    let cpio_err = |e| AssetsError::Io {
        step: "writing initramfs",
        path: path.to_path_buf(),
        source: e,
    };
    let mut w = NewcWriter::new(Vec::new());
    w.file("init", 0o755, agent).map_err(cpio_err)?;
    if let Some((files, order)) = modules {
        w.dir("modules", 0o755).map_err(cpio_err)?;
        for (name, data) in files {
            w.file(name, 0o644, data).map_err(cpio_err)?;
        }
        w.file("modules/order", 0o644, order.as_bytes())
            .map_err(cpio_err)?;
    }
    if let Some(sh) = shell {
        w.dir("bin", 0o755).map_err(cpio_err)?;
        w.file("bin/busybox", 0o755, sh).map_err(cpio_err)?;
        w.symlink("bin/sh", "busybox").map_err(cpio_err)?;
    }
    w.finish().map_err(cpio_err)
}

/// Writes each output to `<name>.part`, then renames them all: a failure before the renames
/// leaves the previous assets as they were.
fn install(out: &Path, outputs: &[(&str, Vec<u8>)]) -> Result<(), AssetsError> {
    for (name, data) in outputs {
        let part = out.join(format!("{name}.part"));
        std::fs::write(&part, data).map_err(io("writing", &part))?;
    }
    for (name, _) in outputs {
        let part = out.join(format!("{name}.part"));
        std::fs::rename(&part, out.join(name)).map_err(io("renaming", &part))?;
    }
    Ok(())
}

fn stamp_of(head: &str, parts: &[(&str, &[u8])]) -> String {
    let mut stamp = format!("{head}\n");
    for (what, bytes) in parts {
        stamp.push_str(&format!(
            "{what} {} bytes, {:016x}\n",
            bytes.len(),
            fnv(bytes)
        ));
    }
    stamp
}

fn up_to_date(out: &Path, stamp_file: &str, stamp: &str, files: &[&str]) -> bool {
    std::fs::read_to_string(out.join(stamp_file))
        .ok()
        .as_deref()
        == Some(stamp)
        && files.iter().all(|f| out.join(f).is_file())
}

/// Builds the guest assets in `out`, each kernel's independently and only when its inputs
/// changed (a stamp per kernel). Debian's: `vmlinux` + `initramfs.cpio` (with modules) from
/// the linux-image package. Ours, when `our_kernel` (a vmlinux from [`crate::kernel::build`])
/// is given: `vmlinux-moat` + `initramfs-moat.cpio` (no modules). `debug_shell`: a static
/// shell (Debian's busybox-static) for the debug console's images; the plain initramfs
/// never carries one. Returns whether anything was rebuilt.
pub fn build(
    out: &Path,
    agent: &Path,
    debug_shell: Option<&Path>,
    our_kernel: Option<&Path>,
) -> Result<bool, AssetsError> {
    let agent_bytes = std::fs::read(agent).map_err(io("reading agent", agent))?;
    let shell = match debug_shell {
        Some(p) => Some(std::fs::read(p).map_err(io("reading the debug shell", p))?),
        None => None,
    };
    std::fs::create_dir_all(out).map_err(io("creating", out))?;
    let mut rebuilt = build_debian(out, &agent_bytes, shell.as_deref())?;
    if let Some(k) = our_kernel {
        rebuilt |= build_moat(out, k, &agent_bytes, shell.as_deref())?;
    }
    Ok(rebuilt)
}

fn build_moat(
    out: &Path,
    kernel: &Path,
    agent: &[u8],
    shell: Option<&[u8]>,
) -> Result<bool, AssetsError> {
    let elf = std::fs::read(kernel).map_err(io("reading our kernel", kernel))?;
    if !crate::vmlinux::has_pvh_note(&elf) {
        return Err(AssetsError::NoPvh(kernel.to_path_buf()));
    }
    let mut parts: Vec<(&str, &[u8])> = vec![("kernel", &elf), ("agent", agent)];
    if let Some(sh) = shell {
        parts.push(("debug shell", sh));
    }
    // The first line is the kernel release (what `uname -r` says in the guest).
    let release = crate::vmlinux::release(&elf).unwrap_or_else(|| "unknown".into());
    let stamp = stamp_of(&release, &parts);
    let kind = KernelKind::Moat;
    let mut files = vec![kernel_name(kind), initramfs_name(kind, false)];
    if shell.is_some() {
        files.push(initramfs_name(kind, true));
    }
    if up_to_date(out, "stamp-moat", &stamp, &files) {
        return Ok(false);
    }
    let path = out.join(initramfs_name(kind, false));
    let mut outputs = vec![
        (
            initramfs_name(kind, false),
            initramfs(agent, None, None, &path)?,
        ),
        (kernel_name(kind), elf),
    ];
    if let Some(sh) = shell {
        outputs.push((
            initramfs_name(kind, true),
            initramfs(agent, None, Some(sh), &path)?,
        ));
    }
    install(out, &outputs)?;
    let stamp_path = out.join("stamp-moat");
    std::fs::write(&stamp_path, stamp).map_err(io("writing", &stamp_path))?;
    Ok(true)
}

fn build_debian(out: &Path, agent: &[u8], shell: Option<&[u8]>) -> Result<bool, AssetsError> {
    let pkg = kernel_package(&run(
        Command::new("apt-cache").args(["depends", "linux-image-amd64"])
    )?)
    .ok_or(AssetsError::NoKernelPackage)?;
    let mut parts: Vec<(&str, &[u8])> = vec![("agent", agent)];
    if let Some(sh) = shell {
        parts.push(("debug shell", sh));
    }
    let stamp = stamp_of(&pkg, &parts);
    let kind = KernelKind::Debian;
    let mut files = vec![kernel_name(kind), initramfs_name(kind, false)];
    if shell.is_some() {
        files.push(initramfs_name(kind, true));
    }
    let stamp_path = out.join("stamp");
    if up_to_date(out, "stamp", &stamp, &files) {
        return Ok(false);
    }
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
    let path = out.join(initramfs_name(kind, false));
    let mods = Some((modules_files.as_slice(), order.as_str()));
    let mut outputs = vec![
        (kernel_name(kind), elf),
        (
            initramfs_name(kind, false),
            initramfs(agent, mods, None, &path)?,
        ),
    ];
    if let Some(sh) = shell {
        outputs.push((
            initramfs_name(kind, true),
            initramfs(agent, mods, Some(sh), &path)?,
        ));
    }
    install(out, &outputs)?;
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

//! Chooses the guest kernel modules for the initramfs from an extracted linux-image package.
//!
//! Sans-IO: it takes the package's file list and `modules.builtin`, so it is tested with
//! synthetic listings; the asset build feeds it the real `dpkg-deb -x` tree.

/// Load order required by the guest agent contract (`/modules/order`).
pub const GUEST_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_console",
    "failover",
    "net_failover",
    "virtio_net",
    "netfs",
    "fscache",
    "9pnet",
    "9pnet_virtio",
    "9p",
    "overlay",
];

const SIG_MAGIC: &[u8] = b"~Module signature appended~\n";

/// The module without its appended signature. The guest kernel does not enforce signatures,
/// and checking one (hash + RSA) under TCG costs more boot time than anything else the agent
/// does; an unsigned module only taints the guest kernel's log.
pub fn strip_signature(m: &[u8]) -> &[u8] {
    let Some(body) = m.strip_suffix(SIG_MAGIC) else {
        return m;
    };
    // struct module_signature: algo, hash, id_type, signer_len, key_id_len, pad[3], sig_len (BE).
    let Some(hdr) = body.len().checked_sub(12).map(|i| &body[i..]) else {
        return m;
    };
    let sig_len = u32::from_be_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as usize;
    let extra = hdr[3] as usize + hdr[4] as usize;
    match body.len().checked_sub(12 + sig_len + extra) {
        Some(end) => &body[..end],
        None => m,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compression {
    None,
    Xz,
    Zstd,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleChoice {
    pub name: String,
    /// Path inside the extracted package.
    pub source: String,
    pub compression: Compression,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// In load order; the initramfs stores each as `/modules/<name>.ko` (decompressed).
    pub load: Vec<ModuleChoice>,
    pub builtin: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("kernel module {0} is neither in the package nor built in")]
    Missing(String),
    #[error("kernel module {0} is part of a dependency cycle")]
    Cycle(String),
}

/// Kernel module names treat `-` and `_` alike.
fn norm(s: &str) -> String {
    s.replace('-', "_")
}

fn module_name(path: &str) -> Option<(String, Compression)> {
    let file = path.rsplit('/').next()?;
    let (stem, c) = if let Some(s) = file.strip_suffix(".ko.xz") {
        (s, Compression::Xz)
    } else if let Some(s) = file.strip_suffix(".ko.zst") {
        (s, Compression::Zstd)
    } else if let Some(s) = file.strip_suffix(".ko") {
        (s, Compression::None)
    } else {
        return None;
    };
    Some((norm(stem), c))
}

/// `files`: paths in the package; `builtin`: text of `modules.builtin` (one path per line).
pub fn plan(files: &[String], builtin: &str, wanted: &[&str]) -> Result<Plan, PlanError> {
    let builtin_names: Vec<String> = builtin
        .lines()
        .filter_map(module_name)
        .map(|(n, _)| n)
        .collect();
    let mut out = Plan::default();
    for w in wanted {
        let w = norm(w);
        if let Some((path, c)) = files
            .iter()
            .filter(|p| p.contains("/kernel/"))
            .find_map(|p| module_name(p).filter(|(n, _)| *n == w).map(|(_, c)| (p, c)))
        {
            out.load.push(ModuleChoice {
                name: w,
                source: path.clone(),
                compression: c,
            });
        } else if builtin_names.contains(&w) {
            out.builtin.push(w);
        } else {
            return Err(PlanError::Missing(w));
        }
    }
    Ok(out)
}

/// The `depends=` list of a module's `.modinfo` (NUL-separated `key=value` strings).
pub fn modinfo_depends(ko: &[u8]) -> Vec<String> {
    ko.split(|b| *b == 0)
        .find_map(|f| f.strip_prefix(b"depends="))
        .map(|d| {
            String::from_utf8_lossy(d)
                .split(',')
                .filter(|x| !x.is_empty())
                .map(norm)
                .collect()
        })
        .unwrap_or_default()
}

/// Groups modules into load levels: each module's dependencies (among these modules) are in
/// earlier levels, so the guest loads one level in parallel. That matters under TCG, where
/// each `init_module` mostly waits (RCU grace periods, device probes) rather than computes.
/// Keeps the given order within a level; a cycle is an error.
pub fn levels(mods: &[(String, Vec<String>)]) -> Result<Vec<Vec<String>>, PlanError> {
    let names: Vec<&str> = mods.iter().map(|(n, _)| n.as_str()).collect();
    let mut level: Vec<Option<usize>> = vec![None; mods.len()];
    for _ in 0..=mods.len() {
        let mut changed = false;
        for (i, (_, deps)) in mods.iter().enumerate() {
            if level[i].is_some() {
                continue;
            }
            let mut l = 0;
            let mut ready = true;
            for d in deps {
                if let Some(j) = names.iter().position(|n| n == d) {
                    match level[j] {
                        Some(lj) => l = l.max(lj + 1),
                        None => ready = false,
                    }
                }
            }
            if ready {
                level[i] = Some(l);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut out: Vec<Vec<String>> = Vec::new();
    for (i, l) in level.iter().enumerate() {
        let l = l.ok_or_else(|| PlanError::Cycle(mods[i].0.clone()))?;
        if out.len() <= l {
            out.resize(l + 1, Vec::new());
        }
        out[l].push(mods[i].0.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependency_levels_load_dependencies_first() {
        let m = |n: &str, d: &[&str]| (n.to_string(), d.iter().map(|x| x.to_string()).collect());
        let mods = vec![
            m("virtio_ring", &[]),
            m("virtio", &[]),
            m("virtio_mmio", &["virtio", "virtio_ring"]),
            m("9pnet", &["fscache_builtin_elsewhere"]),
            m("9pnet_virtio", &["9pnet", "virtio", "virtio_ring"]),
            m("overlay", &[]),
        ];
        let l = levels(&mods).unwrap();
        assert_eq!(l[0], ["virtio_ring", "virtio", "9pnet", "overlay"]);
        assert_eq!(l[1], ["virtio_mmio", "9pnet_virtio"]);
        let cyc = vec![m("a", &["b"]), m("b", &["a"])];
        assert!(matches!(levels(&cyc), Err(PlanError::Cycle(_))));
        let ko = b"\x7fELF...\0license=GPL\0depends=virtio,virtio-ring\0intree=Y\0";
        assert_eq!(modinfo_depends(ko), ["virtio", "virtio_ring"]);
        assert!(modinfo_depends(b"\0depends=\0").is_empty());
    }

    #[test]
    fn appended_signatures_are_stripped_and_unsigned_modules_kept() {
        let mut m = b"\x7fELF module body".to_vec();
        let body_len = m.len();
        m.extend_from_slice(&[0xAA; 5]); // the PKCS#7 blob
        m.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 5]);
        m.extend_from_slice(SIG_MAGIC);
        assert_eq!(strip_signature(&m), &m[..body_len]);
        assert_eq!(strip_signature(b"plain"), b"plain");
        // A bogus length never panics or cuts into nothing.
        let mut bad = vec![0u8; 3];
        bad.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        bad.extend_from_slice(SIG_MAGIC);
        assert_eq!(strip_signature(&bad), &bad[..]);
    }

    const K: &str = "lib/modules/6.1.0-27-amd64/kernel";

    #[test]
    fn picks_in_order_skips_builtin_and_sees_compression() {
        let files = vec![
            format!("{K}/net/9p/9pnet_virtio.ko.xz"),
            format!("{K}/drivers/virtio/virtio_mmio.ko"),
            format!("{K}/net/9p/9pnet.ko.zst"),
            format!("{K}/fs/overlayfs/overlay.ko"),
            "usr/share/doc/x.ko.txt".to_string(),
        ];
        let builtin = format!("{K}/drivers/virtio/virtio.ko\n{K}/drivers/virtio/virtio_ring.ko\n");
        let p = plan(
            &files,
            &builtin,
            &[
                "virtio_ring",
                "virtio",
                "virtio_mmio",
                "9pnet",
                "9pnet_virtio",
                "overlay",
            ],
        )
        .unwrap();
        let names: Vec<_> = p.load.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["virtio_mmio", "9pnet", "9pnet_virtio", "overlay"]);
        assert_eq!(p.builtin, ["virtio_ring", "virtio"]);
        assert_eq!(p.load[1].compression, Compression::Zstd);
        assert_eq!(p.load[2].compression, Compression::Xz);
        assert_eq!(p.load[0].compression, Compression::None);
    }

    #[test]
    fn missing_module_is_an_error() {
        let e = plan(&[], "", &["9p"]).unwrap_err();
        assert_eq!(e, PlanError::Missing("9p".into()));
    }

    #[test]
    fn dashes_and_underscores_match() {
        let files = vec![format!("{K}/drivers/net/net-failover.ko")];
        let p = plan(&files, "", &["net_failover"]).unwrap();
        assert_eq!(p.load[0].name, "net_failover");
    }
}

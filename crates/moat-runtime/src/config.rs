//! Runtime configuration, in the spirit of Kata's `configuration.toml`.
//!
//! Every field has a default so a missing file means "defaults"; unknown keys are rejected so a
//! typo does not silently fall back to a default.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where `moat-runtime` looks for its configuration unless `--config` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/moat/runtime.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading configuration file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing configuration file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Which accelerator QEMU uses. `Auto` means: KVM only when the probe verdict says a guest
/// actually boots under it (on this machine /dev/kvm exists but guests hang), TCG otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HypervisorConfig {
    pub path: PathBuf,
    pub accel: Accel,
    /// A sandbox's vCPUs and memory before its pod's limits are added (Kata's default_vcpus,
    /// default_memory): a VM gets these plus the sum of its containers' limits.
    pub vcpus: u32,
    pub memory_mib: u32,
    /// The most vCPUs one VM may get (Kata's default_maxvcpus; our guest kernel supports 64).
    /// Host CPUs may be overcommitted, as processes do; memory may not exceed the host's.
    pub max_vcpus: u32,
    /// Appended after the built-in kernel command line.
    pub kernel_params: String,
    /// Verbose guest console: the kernel logs at debug level (no `quiet`) into the sandbox's
    /// `console.log`, next to the agent's own messages. (Not yet an interactive shell.)
    pub debug_console: bool,
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        HypervisorConfig {
            path: PathBuf::from("/usr/bin/qemu-system-x86_64"),
            accel: Accel::Auto,
            vcpus: 1,
            memory_mib: 256,
            max_vcpus: 64,
            kernel_params: String::new(),
            debug_console: false,
        }
    }
}

/// Which guest kernel sandboxes boot. Both are built by `scripts/guest-assets.sh` into the
/// same asset directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KernelKind {
    /// Ours: built from Debian's `linux-source-6.1` with the reviewed fragment in
    /// `crates/moat-runtime/kernel/guest.config`; every driver built in, so its initramfs loads
    /// no modules.
    #[default]
    Moat,
    /// Debian's distribution kernel (`linux-image-amd64`); its initramfs loads the virtio, 9p
    /// and overlay modules. The fallback.
    Debian,
}

impl KernelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KernelKind::Moat => "moat",
            KernelKind::Debian => "debian",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AssetsConfig {
    /// Directory holding the kernels and initramfs images (`assets build` writes them).
    pub dir: PathBuf,
    /// `"moat"` (default) or `"debian"`.
    pub kernel: KernelKind,
}

impl Default for AssetsConfig {
    fn default() -> Self {
        AssetsConfig {
            dir: PathBuf::from("/var/lib/moat-runtime/assets"),
            kernel: KernelKind::default(),
        }
    }
}

impl AssetsConfig {
    /// The vmlinux sandboxes boot.
    pub fn kernel_path(&self) -> PathBuf {
        self.dir.join(kernel_name(self.kernel))
    }

    /// The initramfs that goes with [`Self::kernel_path`]; `debug_console` picks the one
    /// carrying a shell.
    pub fn initramfs_path(&self, debug_console: bool) -> PathBuf {
        self.dir.join(initramfs_name(self.kernel, debug_console))
    }
}

/// Kata's VM factory, template flavour: boot one VM to the point where its agent is ready,
/// save it, and start every sandbox by restoring that copy instead of booting a kernel.
/// Off by default, as in Kata: every restored VM starts from the same memory image (the same
/// kernel address layout; memory pages shared copy-on-write with the template), which
/// weakens the isolation between sandboxes that a fresh boot gives. The guest's clock and
/// random pool are refreshed from the host on restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct FactoryConfig {
    pub template: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub hypervisor: HypervisorConfig,
    pub assets: AssetsConfig,
    pub factory: FactoryConfig,
}

/// Kernel command line measured to boot fastest here (VM.md); `pit/pic/rtc=off` hang TCG guests.
pub const BASE_KERNEL_CMDLINE: &str = "console=ttyS0 quiet panic=-1 reboot=t cryptomgr.notests \
no_timer_check tsc=reliable i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd noreplace-smp";

impl Config {
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// A missing file yields the defaults; any other read error is reported.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let h = &self.hypervisor;
        if h.max_vcpus == 0 || h.max_vcpus > 64 {
            return Err(ConfigError::Invalid(format!(
                "hypervisor.max_vcpus must be 1..=64, got {}",
                h.max_vcpus
            )));
        }
        if h.vcpus == 0 || h.vcpus > h.max_vcpus {
            return Err(ConfigError::Invalid(format!(
                "hypervisor.vcpus must be 1..={} (max_vcpus), got {}",
                h.max_vcpus, h.vcpus
            )));
        }
        // Below ~64 MiB the Debian kernel plus the initramfs does not fit.
        if h.memory_mib < 64 {
            return Err(ConfigError::Invalid(format!(
                "hypervisor.memory_mib must be at least 64, got {}",
                h.memory_mib
            )));
        }
        Ok(())
    }

    /// The full guest kernel command line.
    pub fn kernel_cmdline(&self) -> String {
        let mut c = BASE_KERNEL_CMDLINE.to_string();
        if self.hypervisor.debug_console {
            // Later words win: this undoes `quiet`.
            c.push_str(" loglevel=7");
        }
        let extra = self.hypervisor.kernel_params.trim();
        if !extra.is_empty() {
            c.push(' ');
            c.push_str(extra);
        }
        c
    }
}

/// The vmlinux file of a kernel in the asset directory (Debian's keeps the historical name).
pub fn kernel_name(kind: KernelKind) -> &'static str {
    match kind {
        KernelKind::Debian => "vmlinux",
        KernelKind::Moat => "vmlinux-moat",
    }
}

/// The initramfs a sandbox boots with `kind`'s kernel: the plain one, or the one with a
/// shell for the debug console (`hypervisor.debug_console = true`). Debian's carries the
/// modules; ours carries none.
pub fn initramfs_name(kind: KernelKind, debug_console: bool) -> &'static str {
    match (kind, debug_console) {
        (KernelKind::Debian, false) => "initramfs.cpio",
        (KernelKind::Debian, true) => "initramfs-debug.cpio",
        (KernelKind::Moat, false) => "initramfs-moat.cpio",
        (KernelKind::Moat, true) => "initramfs-moat-debug.cpio",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factory_template_is_off_unless_asked_and_typos_are_refused() {
        let p = Path::new("t.toml");
        assert!(!Config::parse("", p).unwrap().factory.template);
        assert!(
            Config::parse("[factory]\ntemplate = true\n", p)
                .unwrap()
                .factory
                .template
        );
        assert!(Config::parse("[factory]\ntemplates = true\n", p).is_err());
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("", Path::new("x.toml")).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.kernel_cmdline(), BASE_KERNEL_CMDLINE);
    }

    #[test]
    fn fields_override_defaults() {
        let c = Config::parse(
            "[hypervisor]\nvcpus = 2\nmemory_mib = 512\naccel = \"tcg\"\nkernel_params = \"loglevel=7\"\ndebug_console = true\n[assets]\ndir = \"/tmp/a\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.hypervisor.vcpus, 2);
        assert_eq!(c.hypervisor.memory_mib, 512);
        assert_eq!(c.hypervisor.accel, Accel::Tcg);
        assert!(c.hypervisor.debug_console);
        assert!(c.kernel_cmdline().contains(" loglevel=7"));
        assert!(!Config::default().kernel_cmdline().contains("loglevel"));
        assert_eq!(c.assets.dir, PathBuf::from("/tmp/a"));
        assert!(c.kernel_cmdline().ends_with(" loglevel=7"));
    }

    #[test]
    fn our_kernel_by_default_debians_on_request() {
        let p = Path::new("x.toml");
        let c = Config::parse("[assets]\ndir = \"/a\"\n", p).unwrap();
        assert_eq!(c.assets.kernel, KernelKind::Moat);
        assert_eq!(c.assets.kernel_path(), PathBuf::from("/a/vmlinux-moat"));
        assert_eq!(
            c.assets.initramfs_path(false),
            PathBuf::from("/a/initramfs-moat.cpio")
        );
        let c = Config::parse("[assets]\ndir = \"/a\"\nkernel = \"debian\"\n", p).unwrap();
        assert_eq!(c.assets.kernel_path(), PathBuf::from("/a/vmlinux"));
        assert_eq!(
            c.assets.initramfs_path(true),
            PathBuf::from("/a/initramfs-debug.cpio")
        );
        assert!(Config::parse("[assets]\nkernel = \"mine\"\n", p).is_err());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        let e = Config::parse("[hypervisor]\nvcpu = 2\n", Path::new("x.toml")).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
        let e = Config::parse("[hypervisor]\nvcpus = 0\n", Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("vcpus"), "{e}");
        let e = Config::parse("[hypervisor]\naccel = \"xen\"\n", Path::new("x.toml")).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
    }

    #[test]
    fn missing_file_is_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(&dir.path().join("none.toml")).unwrap();
        assert_eq!(c, Config::default());
    }
}

//! A CNI 1.0 runtime (the part of libcni the node agent needs): load a network configuration
//! list, run its plugins in order for ADD (chaining `prevResult`), in reverse for DEL, and
//! CHECK; `runtimeConfig` is filled from capabilities the plugins declare. Plugin execution
//! sits behind [`Exec`] so the chaining logic is tested without root.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub const CNI_VERSION: &str = "1.0.0";
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";
pub const DEFAULT_BIN_DIR: &str = "/usr/lib/cni";

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("reading CNI config {path}")]
    ReadConf {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parsing CNI config {path}")]
    ParseConf {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("no CNI network config (*.conflist, *.conf, *.json) in {0}")]
    NoConfig(PathBuf),
    #[error("invalid CNI config: {0}")]
    Invalid(String),
    #[error("CNI plugin {plugin:?} not found in {path}")]
    PluginNotFound { plugin: String, path: String },
    #[error("running CNI plugin {plugin} ({command})")]
    Exec {
        plugin: String,
        command: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("CNI plugin {plugin} {command} failed: {err}")]
    Plugin {
        plugin: String,
        command: &'static str,
        err: PluginError,
    },
    #[error("CNI result cache {path}")]
    Cache {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("CNI plugin {plugin} {command} returned an unparsable result: {output}")]
    BadResult {
        plugin: String,
        command: &'static str,
        output: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The error object a plugin prints on failure (CNI spec "Error" section).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct PluginError {
    #[serde(default)]
    pub code: u32,
    #[serde(default)]
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "code {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct IpConfig {
    /// CIDR notation, e.g. `10.42.0.5/24`.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

/// A CNI 1.0 success result.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    #[serde(default)]
    pub cni_version: String,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Value,
}

impl CniResult {
    /// The first IP assigned inside the sandbox, without its prefix length.
    pub fn pod_ip(&self) -> Option<&str> {
        self.ips
            .iter()
            .find(|ip| {
                ip.interface
                    .and_then(|i| self.interfaces.get(i))
                    .is_none_or(|ifc| ifc.sandbox.is_some())
            })
            .map(|ip| ip.address.split('/').next().unwrap_or(&ip.address))
    }
}

/// A network configuration list (`*.conflist`); a single `*.conf` is wrapped into one.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkList {
    pub name: String,
    pub cni_version: String,
    /// Each plugin's config object verbatim (`type` names the binary).
    pub plugins: Vec<Value>,
}

impl NetworkList {
    pub fn parse(bytes: &[u8], path: &Path) -> Result<NetworkList, CniError> {
        let v: Value = serde_json::from_slice(bytes).map_err(|source| CniError::ParseConf {
            path: path.to_path_buf(),
            source,
        })?;
        let name = v["name"]
            .as_str()
            .ok_or_else(|| CniError::Invalid(format!("{}: missing name", path.display())))?
            .to_string();
        let cni_version = v["cniVersion"].as_str().unwrap_or(CNI_VERSION).to_string();
        let plugins = match v.get("plugins") {
            Some(Value::Array(p)) => p.clone(),
            Some(_) => {
                return Err(CniError::Invalid(format!(
                    "{}: plugins is not a list",
                    path.display()
                )));
            }
            None => vec![v.clone()],
        };
        if plugins.is_empty() {
            return Err(CniError::Invalid(format!("{}: no plugins", path.display())));
        }
        for p in &plugins {
            let t = p["type"].as_str().unwrap_or("");
            if t.is_empty() || t.contains('/') || t.starts_with('.') {
                return Err(CniError::Invalid(format!(
                    "{}: plugin type {t:?} is not a plain binary name",
                    path.display()
                )));
            }
        }
        Ok(NetworkList {
            name,
            cni_version,
            plugins,
        })
    }

    /// Like the kubelet: the lexically first `*.conflist`/`*.conf`/`*.json` in the directory.
    pub fn load_dir(dir: &Path) -> Result<NetworkList, CniError> {
        let rd = std::fs::read_dir(dir).map_err(|source| CniError::ReadConf {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e, "conflist" | "conf" | "json"))
            })
            .collect();
        files.sort();
        let first = files
            .first()
            .ok_or_else(|| CniError::NoConfig(dir.to_path_buf()))?;
        let bytes = std::fs::read(first).map_err(|source| CniError::ReadConf {
            path: first.clone(),
            source,
        })?;
        NetworkList::parse(&bytes, first)
    }

    /// The conflist moat writes for a node: bridge `cni0` (gateway, masquerade, hairpin) with
    /// host-local IPAM on the node's podCIDR, then portmap for hostPort.
    pub fn moat_default(pod_cidr: &str, data_dir: Option<&Path>) -> NetworkList {
        let mut ipam = json!({
            "type": "host-local",
            "ranges": [[{"subnet": pod_cidr}]],
            "routes": [{"dst": "0.0.0.0/0"}],
        });
        if let Some(d) = data_dir {
            ipam["dataDir"] = json!(d);
        }
        NetworkList {
            name: "moat".into(),
            cni_version: CNI_VERSION.into(),
            plugins: vec![
                json!({
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": true,
                    "ipMasq": true,
                    "hairpinMode": true,
                    "ipam": ipam,
                }),
                json!({"type": "portmap", "capabilities": {"portMappings": true}}),
            ],
        }
    }

    pub fn to_json(&self) -> Value {
        json!({"cniVersion": self.cni_version, "name": self.name, "plugins": self.plugins})
    }
}

/// One port mapping as CNI's `portMappings` capability carries it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
}

/// What the runtime knows about the attachment.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub container_id: String,
    /// Path of the pod's network namespace, e.g. `/run/netns/<name>`.
    pub netns: PathBuf,
    pub ifname: String,
    /// `CNI_ARGS` pairs (e.g. K8S_POD_NAMESPACE, K8S_POD_NAME).
    pub args: Vec<(String, String)>,
    /// Capability name → value; only passed to plugins declaring the capability.
    pub capabilities: BTreeMap<String, Value>,
}

impl Attachment {
    pub fn port_mappings(&mut self, ports: &[PortMapping]) {
        self.capabilities
            .insert("portMappings".into(), json!(ports));
    }
}

/// Runs one plugin binary; returns (success, stdout).
pub trait Exec {
    fn exec(
        &self,
        plugin: &Path,
        env: &[(String, String)],
        stdin: &[u8],
    ) -> io::Result<(bool, Vec<u8>)>;
}

/// Runs the plugin directly, with a clean environment holding only the CNI variables (and
/// PATH, which plugins such as portmap need to find iptables).
pub struct RealExec {
    /// Optional wrapper command prefix (e.g. `ip netns exec <node-ns>`).
    pub wrapper: Vec<String>,
}

impl Exec for RealExec {
    fn exec(
        &self,
        plugin: &Path,
        env: &[(String, String)],
        stdin: &[u8],
    ) -> io::Result<(bool, Vec<u8>)> {
        let mut cmd = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(plugin);
                c
            }
            None => Command::new(plugin),
        };
        cmd.env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn()?;
        if let Some(mut si) = child.stdin.take() {
            si.write_all(stdin)?;
        }
        let out = child.wait_with_output()?;
        Ok((out.status.success(), out.stdout))
    }
}

/// A recorded plugin call.
#[derive(Debug, Clone)]
pub struct ExecCall {
    pub plugin: PathBuf,
    pub env: BTreeMap<String, String>,
    pub stdin: Value,
}

/// Recording fake: answers each call from a queue of canned (success, stdout) replies.
#[derive(Default)]
pub struct FakeExec {
    pub calls: Mutex<Vec<ExecCall>>,
    pub replies: Mutex<Vec<(bool, Vec<u8>)>>,
}

impl Exec for FakeExec {
    fn exec(
        &self,
        plugin: &Path,
        env: &[(String, String)],
        stdin: &[u8],
    ) -> io::Result<(bool, Vec<u8>)> {
        let call = ExecCall {
            plugin: plugin.to_path_buf(),
            env: env.iter().cloned().collect(),
            stdin: serde_json::from_slice(stdin).map_err(io::Error::other)?,
        };
        self.calls
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .push(call);
        let mut r = self
            .replies
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?;
        if r.is_empty() {
            return Ok((true, Vec::new()));
        }
        Ok(r.remove(0))
    }
}

pub struct Cni<'a> {
    pub exec: &'a dyn Exec,
    /// Directories searched for plugin binaries (CNI_PATH).
    pub bin_dirs: Vec<PathBuf>,
}

#[derive(Clone, Copy)]
enum Cmd {
    Add,
    Del,
    Check,
}

impl Cmd {
    fn as_str(self) -> &'static str {
        match self {
            Cmd::Add => "ADD",
            Cmd::Del => "DEL",
            Cmd::Check => "CHECK",
        }
    }
}

impl Cni<'_> {
    fn find(&self, plugin: &str) -> Result<PathBuf, CniError> {
        self.bin_dirs
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| CniError::PluginNotFound {
                plugin: plugin.to_string(),
                path: self.cni_path(),
            })
    }

    fn cni_path(&self) -> String {
        self.bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The stdin config for one plugin: its own object plus name, cniVersion, runtimeConfig
    /// (declared capabilities only) and prevResult.
    pub fn plugin_config(
        list: &NetworkList,
        plugin: &Value,
        att: &Attachment,
        prev: Option<&CniResult>,
    ) -> Value {
        let mut conf = plugin.clone();
        conf["name"] = json!(list.name);
        conf["cniVersion"] = json!(list.cni_version);
        if let Some(obj) = conf.as_object_mut() {
            obj.remove("capabilities");
        }
        let mut rc = serde_json::Map::new();
        if let Some(caps) = plugin["capabilities"].as_object() {
            for (k, on) in caps {
                if on.as_bool() == Some(true)
                    && let Some(v) = att.capabilities.get(k)
                {
                    rc.insert(k.clone(), v.clone());
                }
            }
        }
        if !rc.is_empty() {
            conf["runtimeConfig"] = Value::Object(rc);
        }
        if let Some(p) = prev {
            conf["prevResult"] = json!(p);
        }
        conf
    }

    fn run(
        &self,
        cmd: Cmd,
        list: &NetworkList,
        plugin: &Value,
        att: &Attachment,
        prev: Option<&CniResult>,
    ) -> Result<Option<CniResult>, CniError> {
        let ty = plugin["type"].as_str().unwrap_or("").to_string();
        let bin = self.find(&ty)?;
        // Plugins reject CNI_ARGS keys they do not know unless IgnoreUnknown is set, which is
        // why container runtimes always send it with the K8S_POD_* keys.
        let mut pairs: Vec<String> = Vec::new();
        if !att.args.is_empty() && !att.args.iter().any(|(k, _)| k == "IgnoreUnknown") {
            pairs.push("IgnoreUnknown=1".into());
        }
        pairs.extend(att.args.iter().map(|(k, v)| format!("{k}={v}")));
        let args = pairs.join(";");
        let env = vec![
            ("CNI_COMMAND".to_string(), cmd.as_str().to_string()),
            ("CNI_CONTAINERID".into(), att.container_id.clone()),
            ("CNI_NETNS".into(), att.netns.display().to_string()),
            ("CNI_IFNAME".into(), att.ifname.clone()),
            ("CNI_ARGS".into(), args),
            ("CNI_PATH".into(), self.cni_path()),
        ];
        let conf = Self::plugin_config(list, plugin, att, prev);
        let stdin = serde_json::to_vec(&conf).map_err(|e| CniError::Invalid(e.to_string()))?;
        let (ok, out) = self
            .exec
            .exec(&bin, &env, &stdin)
            .map_err(|source| CniError::Exec {
                plugin: ty.clone(),
                command: cmd.as_str(),
                source,
            })?;
        if !ok {
            let err = serde_json::from_slice::<PluginError>(&out).unwrap_or_else(|_| PluginError {
                code: 999,
                msg: "plugin failed without a JSON error".into(),
                details: String::from_utf8_lossy(&out).trim().to_string(),
            });
            return Err(CniError::Plugin {
                plugin: ty,
                command: cmd.as_str(),
                err,
            });
        }
        if !matches!(cmd, Cmd::Add) {
            return Ok(None);
        }
        let r: CniResult = serde_json::from_slice(&out).map_err(|source| CniError::BadResult {
            plugin: ty,
            command: cmd.as_str(),
            output: String::from_utf8_lossy(&out).into_owned(),
            source,
        })?;
        Ok(Some(r))
    }

    /// ADD through the chain; each plugin gets the previous one's result. On failure the
    /// plugins already run are deleted again (best effort) so no half-attachment is left.
    pub fn add(&self, list: &NetworkList, att: &Attachment) -> Result<CniResult, CniError> {
        let mut prev: Option<CniResult> = None;
        for (i, p) in list.plugins.iter().enumerate() {
            match self.run(Cmd::Add, list, p, att, prev.as_ref()) {
                Ok(r) => prev = r.or(prev),
                Err(e) => {
                    for q in list.plugins[..=i].iter().rev() {
                        let _ = self.run(Cmd::Del, list, q, att, prev.as_ref());
                    }
                    return Err(e);
                }
            }
        }
        prev.ok_or_else(|| CniError::Invalid("ADD produced no result".into()))
    }

    /// DEL in reverse order with the cached ADD result; every plugin runs even if one fails,
    /// and the first error is returned.
    pub fn del(
        &self,
        list: &NetworkList,
        att: &Attachment,
        prev: Option<&CniResult>,
    ) -> Result<(), CniError> {
        let mut first = None;
        for p in list.plugins.iter().rev() {
            if let Err(e) = self.run(Cmd::Del, list, p, att, prev)
                && first.is_none()
            {
                first = Some(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    pub fn check(
        &self,
        list: &NetworkList,
        att: &Attachment,
        prev: &CniResult,
    ) -> Result<(), CniError> {
        for p in &list.plugins {
            self.run(Cmd::Check, list, p, att, Some(prev))?;
        }
        Ok(())
    }
}

/// ADD results kept on disk (like libcni's /var/lib/cni/results) so DEL after an agent
/// restart still hands plugins their prevResult. Files are replaced atomically.
pub struct ResultCache {
    pub dir: PathBuf,
}

impl ResultCache {
    fn path(&self, network: &str, att: &Attachment) -> Result<PathBuf, CniError> {
        for part in [network, att.container_id.as_str(), att.ifname.as_str()] {
            if part.is_empty() || part.contains('/') || part.starts_with('.') {
                return Err(CniError::Invalid(format!("cache key component {part:?}")));
            }
        }
        Ok(self
            .dir
            .join(format!("{network}-{}-{}", att.container_id, att.ifname)))
    }

    pub fn save(&self, network: &str, att: &Attachment, r: &CniResult) -> Result<(), CniError> {
        let p = self.path(network, att)?;
        let tmp = p.with_extension(format!("tmp{}", std::process::id()));
        let err = |source| CniError::Cache {
            path: p.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(err)?;
        let data = serde_json::to_vec(r).map_err(|e| err(io::Error::other(e)))?;
        let res = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &p)?;
            std::fs::File::open(&self.dir)?.sync_all()
        })();
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res.map_err(err)
    }

    pub fn load(&self, network: &str, att: &Attachment) -> Result<Option<CniResult>, CniError> {
        let p = self.path(network, att)?;
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| CniError::Cache {
                    path: p,
                    source: io::Error::other(e),
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CniError::Cache { path: p, source }),
        }
    }

    pub fn remove(&self, network: &str, att: &Attachment) -> Result<(), CniError> {
        let p = self.path(network, att)?;
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(CniError::Cache { path: p, source: e })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att() -> Attachment {
        let mut a = Attachment {
            container_id: "c1".into(),
            netns: "/run/netns/p1".into(),
            ifname: "eth0".into(),
            args: vec![("K8S_POD_NAME".into(), "web".into())],
            capabilities: BTreeMap::new(),
        };
        a.port_mappings(&[PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: None,
        }]);
        a
    }

    fn bins() -> (tempfile::TempDir, Vec<PathBuf>) {
        let d = tempfile::tempdir().unwrap();
        for b in ["bridge", "portmap"] {
            std::fs::write(d.path().join(b), "").unwrap();
        }
        let v = vec![d.path().to_path_buf()];
        (d, v)
    }

    const BRIDGE_RESULT: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"cni0","mac":"aa"},{"name":"vethx","mac":"bb"},{"name":"eth0","mac":"cc","sandbox":"/run/netns/p1"}],"ips":[{"address":"10.42.0.2/24","gateway":"10.42.0.1","interface":2}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{}}"#;

    #[test]
    fn add_chains_prev_result_and_runtime_config() {
        let (_d, bin_dirs) = bins();
        let fake = FakeExec::default();
        fake.replies.lock().unwrap().extend([
            (true, BRIDGE_RESULT.as_bytes().to_vec()),
            (true, BRIDGE_RESULT.as_bytes().to_vec()),
        ]);
        let cni = Cni {
            exec: &fake,
            bin_dirs,
        };
        let list = NetworkList::moat_default("10.42.0.0/24", None);
        let r = cni.add(&list, &att()).unwrap();
        assert_eq!(r.pod_ip(), Some("10.42.0.2"));
        let calls = fake.calls.lock().unwrap();
        assert_eq!(calls.len(), 2);
        assert!(calls[0].plugin.ends_with("bridge"));
        assert_eq!(calls[0].env["CNI_COMMAND"], "ADD");
        assert_eq!(calls[0].env["CNI_NETNS"], "/run/netns/p1");
        assert_eq!(calls[0].env["CNI_ARGS"], "IgnoreUnknown=1;K8S_POD_NAME=web");
        assert_eq!(calls[0].stdin["name"], "moat");
        assert!(calls[0].stdin.get("prevResult").is_none());
        // bridge declares no capabilities, so gets no runtimeConfig.
        assert!(calls[0].stdin.get("runtimeConfig").is_none());
        assert_eq!(
            calls[1].stdin["prevResult"]["ips"][0]["address"],
            "10.42.0.2/24"
        );
        assert_eq!(
            calls[1].stdin["runtimeConfig"]["portMappings"][0]["hostPort"],
            8080
        );
        assert!(calls[1].stdin.get("capabilities").is_none());
    }

    #[test]
    fn plugin_error_is_surfaced_and_chain_rolled_back() {
        let (_d, bin_dirs) = bins();
        let fake = FakeExec::default();
        fake.replies.lock().unwrap().extend([
            (true, BRIDGE_RESULT.as_bytes().to_vec()),
            (
                false,
                br#"{"code":7,"msg":"failed to set up portmap","details":"iptables missing"}"#
                    .to_vec(),
            ),
        ]);
        let cni = Cni {
            exec: &fake,
            bin_dirs,
        };
        let list = NetworkList::moat_default("10.42.0.0/24", None);
        let e = cni.add(&list, &att()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("portmap ADD failed: code 7: failed to set up portmap (iptables missing)"),
            "{msg}"
        );
        let calls = fake.calls.lock().unwrap();
        let cmds: Vec<_> = calls
            .iter()
            .map(|c| {
                (
                    c.plugin.file_name().unwrap().to_str().unwrap().to_string(),
                    c.env["CNI_COMMAND"].clone(),
                )
            })
            .collect();
        assert_eq!(
            cmds,
            [
                ("bridge".to_string(), "ADD".to_string()),
                ("portmap".into(), "ADD".into()),
                ("portmap".into(), "DEL".into()),
                ("bridge".into(), "DEL".into()),
            ]
        );
    }

    #[test]
    fn del_runs_in_reverse_and_missing_plugin_is_named() {
        let (_d, bin_dirs) = bins();
        let fake = FakeExec::default();
        let cni = Cni {
            exec: &fake,
            bin_dirs: bin_dirs.clone(),
        };
        let list = NetworkList::moat_default("10.42.0.0/24", None);
        cni.del(&list, &att(), None).unwrap();
        let calls = fake.calls.lock().unwrap();
        assert!(calls[0].plugin.ends_with("portmap"));
        assert!(calls[1].plugin.ends_with("bridge"));
        assert_eq!(calls[1].env["CNI_COMMAND"], "DEL");
        drop(calls);
        let mut l2 = list.clone();
        l2.plugins.insert(0, json!({"type": "nosuch"}));
        let e = cni.add(&l2, &att()).unwrap_err();
        assert!(matches!(e, CniError::PluginNotFound { .. }), "{e:?}");
    }

    #[test]
    fn result_cache_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let c = ResultCache {
            dir: d.path().join("results"),
        };
        let a = att();
        assert_eq!(c.load("moat", &a).unwrap(), None);
        let r: CniResult = serde_json::from_str(BRIDGE_RESULT).unwrap();
        c.save("moat", &a, &r).unwrap();
        assert_eq!(c.load("moat", &a).unwrap(), Some(r));
        assert_eq!(
            std::fs::read_dir(&c.dir).unwrap().count(),
            1,
            "temp file left"
        );
        c.remove("moat", &a).unwrap();
        c.remove("moat", &a).unwrap();
        assert_eq!(c.load("moat", &a).unwrap(), None);
        let mut bad = a.clone();
        bad.container_id = "../x".into();
        assert!(c.save("moat", &bad, &CniResult::default()).is_err());
    }

    #[test]
    fn load_dir_takes_lexically_first_and_wraps_single_conf() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("20-other.conflist"),
            NetworkList::moat_default("10.42.1.0/24", None)
                .to_json()
                .to_string(),
        )
        .unwrap();
        std::fs::write(
            d.path().join("10-single.conf"),
            r#"{"cniVersion":"1.0.0","name":"single","type":"bridge"}"#,
        )
        .unwrap();
        std::fs::write(d.path().join("00-ignored.txt"), "x").unwrap();
        let l = NetworkList::load_dir(d.path()).unwrap();
        assert_eq!(l.name, "single");
        assert_eq!(l.plugins.len(), 1);
        let e = NetworkList::parse(br#"{"name":"x","type":"../evil"}"#, Path::new("x"));
        assert!(e.is_err());
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            NetworkList::load_dir(empty.path()),
            Err(CniError::NoConfig(_))
        ));
    }
}

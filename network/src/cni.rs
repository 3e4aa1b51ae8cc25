//! A CNI runner in the manner of libcni: load the network list, run each plugin binary with
//! the CNI environment and its config on stdin, chain `prevResult`, inject runtime
//! capabilities the plugin declares, DEL in reverse, and cache each ADD's config and result so
//! that CHECK and DEL use what ADD used, even after a restart or a conf dir change.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};

/// Where configs, plugins and the result cache are.
#[derive(Debug, Clone)]
pub struct CniPaths {
    /// The config directory (`*.conflist`, `*.conf`, `*.json`).
    pub conf_dir: PathBuf,
    /// Plugin directories, searched in order.
    pub bin_dirs: Vec<PathBuf>,
    /// The result cache (`<cache_dir>/results/<network>-<container>-<ifname>`).
    pub cache_dir: PathBuf,
    /// How long one plugin run may take before it is killed.
    pub plugin_timeout: Duration,
}

/// A network list, as loaded from a `.conflist` (a `.conf` becomes a list of one).
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkList {
    /// The network's name.
    pub name: String,
    /// The spec version of the list.
    pub cni_version: String,
    /// The plugins, in ADD order.
    pub plugins: Vec<Map<String, Value>>,
    /// `disableCheck`.
    pub disable_check: bool,
    /// The file it came from.
    pub source: PathBuf,
}

impl NetworkList {
    /// Loads the lexicographically first config file of `dir`.
    pub fn load_first(dir: &Path) -> Result<NetworkList> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NoNetwork(dir.to_path_buf()));
            }
            Err(e) => return Err(Error::io(format!("read {}", dir.display()), e)),
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conflist" | "conf" | "json")
                )
            })
            .collect();
        files.sort();
        let first = files
            .first()
            .ok_or_else(|| Error::NoNetwork(dir.to_path_buf()))?;
        let text =
            std::fs::read(first).map_err(|e| Error::io(format!("read {}", first.display()), e))?;
        Self::parse(first, &text)
    }

    /// Parses a conflist, or a single-plugin conf.
    pub fn parse(file: &Path, text: &[u8]) -> Result<NetworkList> {
        let bad = |reason: String| Error::BadConfig {
            file: file.to_path_buf(),
            reason,
        };
        let v: Value =
            serde_json::from_slice(text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| bad("not a JSON object".into()))?;
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad("no network name".into()))?;
        let cni_version = obj
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("0.4.0")
            .to_string();
        let plugins: Vec<Map<String, Value>> = match obj.get("plugins") {
            Some(Value::Array(list)) => list
                .iter()
                .map(|p| {
                    p.as_object()
                        .cloned()
                        .ok_or_else(|| bad("a plugin is not an object".into()))
                })
                .collect::<Result<_>>()?,
            Some(_) => return Err(bad("plugins is not a list".into())),
            None => vec![obj.clone()],
        };
        if plugins.is_empty() {
            return Err(bad("defines no plugins".into()));
        }
        for p in &plugins {
            let ty = p.get("type").and_then(Value::as_str).unwrap_or_default();
            if ty.is_empty() || ty.contains('/') || ty.starts_with('.') {
                return Err(bad(format!(
                    "plugin type {ty:?} is not a plain binary name"
                )));
            }
        }
        Ok(NetworkList {
            name: name.to_string(),
            cni_version,
            plugins,
            disable_check: obj
                .get("disableCheck")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            source: file.to_path_buf(),
        })
    }

    fn to_json(&self) -> Value {
        json!({"cniVersion": self.cni_version, "name": self.name, "disableCheck": self.disable_check, "plugins": self.plugins})
    }

    /// Whether the spec version has CHECK and prevResult on DEL (0.4.0 and later).
    fn has_check(&self) -> bool {
        !matches!(
            self.cni_version.as_str(),
            "0.1.0" | "0.2.0" | "0.3.0" | "0.3.1"
        )
    }
}

/// One attachment of a container to the network.
#[derive(Debug, Clone, Default)]
pub struct Attachment {
    /// `CNI_CONTAINERID` (the sandbox id).
    pub container_id: String,
    /// `CNI_NETNS`.
    pub netns: PathBuf,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS` pairs (`K8S_POD_NAMESPACE`, …).
    pub args: Vec<(String, String)>,
    /// Runtime capabilities offered (e.g. `portMappings`); each plugin gets the ones it declares.
    pub capabilities: Map<String, Value>,
}

/// An IP address a plugin assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// `address/prefix`.
    pub address: String,
    /// The gateway, if any.
    pub gateway: Option<String>,
}

impl IpConfig {
    /// The address without the prefix length.
    pub fn ip(&self) -> &str {
        self.address.split('/').next().unwrap_or(&self.address)
    }
}

/// The final result of an ADD.
#[derive(Debug, Clone)]
pub struct CniResult {
    /// The raw result JSON.
    pub raw: Value,
    /// Its IPs, in order.
    pub ips: Vec<IpConfig>,
}

impl CniResult {
    fn from_json(raw: Value) -> Self {
        let ips = raw
            .get("ips")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|ip| {
                        Some(IpConfig {
                            address: ip.get("address")?.as_str()?.to_string(),
                            gateway: ip
                                .get("gateway")
                                .and_then(Value::as_str)
                                .map(str::to_string),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        CniResult { raw, ips }
    }
}

/// Runs plugins.
///
/// Operations are serialised: Debian's plugins (v1.1.1) race with themselves when two run at
/// once (portmap's shared iptables chains: `CHAIN_USER_ADD failed (File exists)`), and a CNI
/// operation takes tens of milliseconds, so one at a time costs little.
#[derive(Debug, Clone)]
pub struct Cni {
    paths: CniPaths,
    lock: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl Cni {
    /// A runner over `paths`.
    pub fn new(paths: CniPaths) -> Self {
        Cni {
            paths,
            lock: Default::default(),
        }
    }

    /// The configured network, read now (so edits to the conf dir apply to the next pod).
    pub fn network(&self) -> Result<NetworkList> {
        NetworkList::load_first(&self.paths.conf_dir)
    }

    fn cache_path(&self, net: &str, a: &Attachment) -> PathBuf {
        self.paths
            .cache_dir
            .join("results")
            .join(format!("{net}-{}-{}", a.container_id, a.ifname))
    }

    fn find_cache(&self, a: &Attachment) -> Option<(PathBuf, Value)> {
        let dir = self.paths.cache_dir.join("results");
        let suffix = format!("-{}-{}", a.container_id, a.ifname);
        for e in std::fs::read_dir(&dir).ok()?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(&suffix) {
                let v = std::fs::read(e.path())
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())?;
                return Some((e.path(), v));
            }
        }
        None
    }

    /// ADD: runs every plugin in order. On failure the partial attachment is torn down (DEL)
    /// before the plugin's error is returned.
    pub async fn add(&self, net: &NetworkList, a: &Attachment) -> Result<CniResult> {
        validate(a)?;
        let _one_at_a_time = self.lock.lock().await;
        let mut prev: Option<Value> = None;
        for plugin in &net.plugins {
            match self.exec(net, plugin, "ADD", a, prev.as_ref()).await {
                Ok(r) => prev = Some(r),
                Err(e) => {
                    if let Err(del) = self.del_with(net, a, None).await {
                        tracing::warn!(container = a.container_id, err = %del, "CNI DEL after a failed ADD also failed");
                    }
                    return Err(e);
                }
            }
        }
        let result = prev.unwrap_or_else(|| json!({"cniVersion": net.cni_version}));
        let cache = json!({
            "kind": "cniCacheV1",
            "containerId": a.container_id,
            "ifName": a.ifname,
            "networkName": net.name,
            "netns": a.netns,
            "config": net.to_json(),
            "cniArgs": a.args,
            "capabilityArgs": a.capabilities,
            "result": result,
        });
        let path = self.cache_path(&net.name, a);
        write_atomic(&path, &serde_json::to_vec(&cache).unwrap_or_default())?;
        Ok(CniResult::from_json(result))
    }

    /// CHECK against the cached ADD result (skipped for spec versions without CHECK).
    pub async fn check(&self, a: &Attachment) -> Result<()> {
        let _one_at_a_time = self.lock.lock().await;
        let (_, cache) = self.find_cache(a).ok_or_else(|| {
            Error::Invalid(format!("no CNI result cached for {}", a.container_id))
        })?;
        let net = cached_network(&cache)?;
        if !net.has_check() || net.disable_check {
            return Ok(());
        }
        let prev = cache.get("result").cloned();
        for plugin in &net.plugins {
            self.exec(&net, plugin, "CHECK", a, prev.as_ref()).await?;
        }
        Ok(())
    }

    /// The cached ADD result, if any (what PodSandboxStatus reports after a restart).
    pub fn cached_result(&self, a: &Attachment) -> Option<CniResult> {
        self.find_cache(a)
            .and_then(|(_, c)| c.get("result").cloned())
            .map(CniResult::from_json)
    }

    /// The (container id, interface) of every cached ADD result: what DEL is owed for.
    pub fn cached_attachments(&self) -> Vec<(String, String)> {
        let dir = self.paths.cache_dir.join("results");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| {
                let v: Value = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
                Some((
                    v.get("containerId")?.as_str()?.to_string(),
                    v.get("ifName")?.as_str()?.to_string(),
                ))
            })
            .collect()
    }

    /// DEL for a cached attachment whose owner berth no longer knows, with the netns, args
    /// and capabilities ADD was given (all in the cache); then forgets the cache entry.
    pub async fn del_cached(&self, container_id: &str, ifname: &str) -> Result<()> {
        let probe = Attachment {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
            ..Default::default()
        };
        let Some((_, cache)) = self.find_cache(&probe) else {
            return Ok(());
        };
        let args = cache
            .get("cniArgs")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|kv| {
                        let kv = kv.as_array()?;
                        Some((
                            kv.first()?.as_str()?.to_string(),
                            kv.get(1)?.as_str()?.to_string(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let a = Attachment {
            netns: cache
                .get("netns")
                .and_then(Value::as_str)
                .map(PathBuf::from)
                .unwrap_or_default(),
            args,
            capabilities: cache
                .get("capabilityArgs")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            ..probe
        };
        self.del(None, &a).await
    }

    /// DEL with the config ADD used (from the cache), else `fallback`. Idempotent: a second
    /// DEL, or one for a container never added, succeeds.
    pub async fn del(&self, fallback: Option<&NetworkList>, a: &Attachment) -> Result<()> {
        validate(a)?;
        let _one_at_a_time = self.lock.lock().await;
        let cached = self.find_cache(a);
        let (net, prev) = match &cached {
            Some((_, c)) => (cached_network(c)?, c.get("result").cloned()),
            None => match fallback {
                Some(n) => (n.clone(), None),
                None => return Ok(()),
            },
        };
        self.del_with(&net, a, prev.as_ref()).await?;
        if let Some((path, _)) = cached {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }

    async fn del_with(
        &self,
        net: &NetworkList,
        a: &Attachment,
        prev: Option<&Value>,
    ) -> Result<()> {
        let prev = if net.has_check() { prev } else { None };
        let mut first_err = None;
        for plugin in net.plugins.iter().rev() {
            if let Err(e) = self.exec(net, plugin, "DEL", a, prev).await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn find_plugin(&self, ty: &str) -> Result<PathBuf> {
        for d in &self.paths.bin_dirs {
            let p = d.join(ty);
            if p.is_file() {
                return Ok(p);
            }
        }
        Err(Error::PluginNotFound {
            plugin: ty.to_string(),
            dirs: self
                .paths
                .bin_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    async fn exec(
        &self,
        net: &NetworkList,
        plugin: &Map<String, Value>,
        command: &str,
        a: &Attachment,
        prev: Option<&Value>,
    ) -> Result<Value> {
        let ty = plugin
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let bin = self.find_plugin(&ty)?;
        let mut conf = plugin.clone();
        conf.insert("cniVersion".into(), json!(net.cni_version));
        conf.insert("name".into(), json!(net.name));
        if let Some(p) = prev {
            conf.insert("prevResult".into(), p.clone());
        }
        if let Some(Value::Object(caps)) = plugin.get("capabilities") {
            let mut rc = Map::new();
            for (k, on) in caps {
                if on.as_bool() == Some(true)
                    && let Some(v) = a.capabilities.get(k)
                {
                    rc.insert(k.clone(), v.clone());
                }
            }
            if !rc.is_empty() {
                conf.insert("runtimeConfig".into(), Value::Object(rc));
            }
        }
        let stdin = serde_json::to_vec(&conf).unwrap_or_default();
        let args = a
            .args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";");
        let path = std::env::join_paths(&self.paths.bin_dirs).unwrap_or_default();
        let mut child = tokio::process::Command::new(&bin)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &a.container_id)
            .env("CNI_NETNS", &a.netns)
            .env("CNI_IFNAME", &a.ifname)
            .env("CNI_ARGS", args)
            .env("CNI_PATH", path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::io(format!("run CNI plugin {}", bin.display()), e))?;
        if let Some(mut i) = child.stdin.take() {
            i.write_all(&stdin)
                .await
                .map_err(|e| Error::io(format!("write config to {ty}"), e))?;
        }
        let timeout = self.paths.plugin_timeout;
        let out = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .map_err(|_| Error::Plugin {
                plugin: ty.clone(),
                command: command.into(),
                message: format!("no answer within {timeout:?}; killed"),
            })?
            .map_err(|e| Error::io(format!("wait for CNI plugin {ty}"), e))?;
        tracing::debug!(plugin = ty, command, container = a.container_id, status = ?out.status, "CNI plugin ran");
        if !out.status.success() {
            let msg = match serde_json::from_slice::<Value>(&out.stdout) {
                Ok(v) if v.get("msg").is_some() => {
                    let m = v.get("msg").and_then(Value::as_str).unwrap_or_default();
                    match v
                        .get("details")
                        .and_then(Value::as_str)
                        .filter(|d| !d.is_empty())
                    {
                        Some(d) => format!("{m}: {d}"),
                        None => m.to_string(),
                    }
                }
                _ => {
                    let s = String::from_utf8_lossy(&out.stderr).trim().to_string();
                    if s.is_empty() {
                        format!("exited with {}", out.status)
                    } else {
                        s
                    }
                }
            };
            return Err(Error::Plugin {
                plugin: ty,
                command: command.into(),
                message: msg,
            });
        }
        if command != "ADD" || out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(prev.cloned().unwrap_or(Value::Null));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| Error::Plugin {
            plugin: ty,
            command: command.into(),
            message: format!("invalid result JSON: {e}"),
        })
    }
}

fn cached_network(cache: &Value) -> Result<NetworkList> {
    let cfg = cache
        .get("config")
        .ok_or_else(|| Error::Invalid("CNI cache without config".into()))?;
    NetworkList::parse(
        Path::new("<cni cache>"),
        &serde_json::to_vec(cfg).unwrap_or_default(),
    )
}

fn validate(a: &Attachment) -> Result<()> {
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    if !ok(&a.container_id) || !ok(&a.ifname) || a.ifname.len() > 15 {
        return Err(Error::Invalid(format!(
            "invalid CNI container id {:?} or interface {:?}",
            a.container_id, a.ifname
        )));
    }
    if a.args
        .iter()
        .any(|(k, v)| k.contains([';', '=']) || v.contains(';'))
    {
        return Err(Error::Invalid(
            "CNI_ARGS keys and values may not contain ';' (nor keys '=')".into(),
        ));
    }
    Ok(())
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).map_err(|e| Error::io(format!("write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(format!("rename {}", path.display()), e))
}

#[cfg(test)]
mod tests;

//! What CNI works with: the network config lists, a container's attachment to the network,
//! and the results plugins give.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value, json};

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

    pub(super) fn to_json(&self) -> Value {
        json!({"cniVersion": self.cni_version, "name": self.name, "disableCheck": self.disable_check, "plugins": self.plugins})
    }

    /// Whether the spec version has CHECK and prevResult on DEL (0.4.0 and later).
    pub(super) fn has_check(&self) -> bool {
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
    pub(super) fn from_json(raw: Value) -> Self {
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

//! Running one plugin: found in the bin dirs, given its config on stdin and the CNI
//! variables, bounded in time, its result or error read back.

use std::path::PathBuf;

use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};

use super::*;

impl Cni {
    pub(super) fn find_plugin(&self, ty: &str) -> Result<PathBuf> {
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

    pub(super) async fn exec(
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

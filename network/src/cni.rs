//! A CNI runner in the manner of libcni: load the network list, run each plugin binary with
//! the CNI environment and its config on stdin, chain `prevResult`, inject runtime
//! capabilities the plugin declares, DEL in reverse, and cache each ADD's config and result so
//! that CHECK and DEL use what ADD used, even after a restart or a conf dir change.
//!
//! `cni/config.rs` holds the config and result types, `cni/plugin.rs` runs one plugin.

mod config;
mod plugin;

pub use config::{Attachment, CniPaths, CniResult, IpConfig, NetworkList};

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{Value, json};

use crate::error::{Error, Result};

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
        let started = Instant::now();
        for plugin in &net.plugins {
            match self.exec(net, plugin, "ADD", a, prev.as_ref()).await {
                Ok(r) => prev = Some(r),
                Err(e) => {
                    let e = observed("ADD", started, Err(e));
                    if let Err(del) = self.del_with(net, a, None).await {
                        tracing::warn!(container = a.container_id, err = %del, "CNI DEL after a failed ADD also failed");
                    }
                    return e;
                }
            }
        }
        observed("ADD", started, Ok(()))?;
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
        let started = Instant::now();
        for plugin in &net.plugins {
            let r = self.exec(&net, plugin, "CHECK", a, prev.as_ref()).await;
            if r.is_err() {
                return observed("CHECK", started, r.map(drop));
            }
        }
        observed("CHECK", started, Ok(()))
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
        let started = Instant::now();
        let mut first_err = None;
        for plugin in net.plugins.iter().rev() {
            if let Err(e) = self.exec(net, plugin, "DEL", a, prev).await {
                first_err.get_or_insert(e);
            }
        }
        observed("DEL", started, first_err.map_or(Ok(()), Err))
    }
}

/// Counts one invocation of the chain for `verb` in berth's metrics, and passes `r` on.
fn observed<T>(verb: &'static str, started: Instant, r: Result<T>) -> Result<T> {
    berth_metrics::CNI_CALL_DURATION
        .with(&[verb])
        .observe_duration(started.elapsed());
    let kind = r.as_ref().err().map(|e| format!("{:?}", e.kind()));
    berth_metrics::CNI_CALLS
        .with(&[verb, &berth_metrics::result_label(kind.as_deref())])
        .inc();
    r
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

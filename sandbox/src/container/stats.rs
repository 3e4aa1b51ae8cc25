//! ContainerStats: cgroup usage and the writable layer's size.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::runtime::Runtime;

/// How long a measured writable-layer usage is reused.
pub const LAYER_USAGE_TTL: Duration = Duration::from_secs(10);

/// A container's usage as ContainerStats reports it.
#[derive(Debug, Clone, Default)]
pub struct ContainerUsage {
    /// When it was read, Unix nanoseconds.
    pub at_ns: i64,
    /// Its cgroup's counters (none when the container has no cgroup now).
    pub cgroup: Option<crate::stats::Usage>,
    /// CPU nanoseconds per second since the previous stats call (none on the first).
    pub nano_cores: Option<u64>,
    /// Its writable layer: (bytes, inodes).
    pub layer: (u64, u64),
}

impl Runtime {
    /// The container's cgroup usage, its CPU rate since the last call, and its writable
    /// layer's (bytes, inodes); the layer is measured at most once per [`LAYER_USAGE_TTL`]
    /// (the kubelet asks every few seconds).
    pub async fn container_usage(&self, id: &str) -> Result<ContainerUsage> {
        let rec = self.container(id)?;
        let layer = self.writable_layer_usage(id).await?;
        // The cgroup's counters are a few small kernel files, read in place.
        let cg = rec
            .cgroups_path()
            .and_then(|p| crate::stats::cgroup_usage(Path::new("/sys/fs/cgroup"), p));
        let at_ns = crate::now_ns();
        let prev = {
            let mut mem = self.stats_memory();
            let m = mem.entry(id.to_string()).or_default();
            let prev = m.cpu;
            if let Some(u) = &cg {
                m.cpu = Some((at_ns, u.cpu_ns));
            }
            prev
        };
        let nano_cores = cg.as_ref().and_then(|u| {
            let (t, c) = prev?;
            let dt = at_ns.checked_sub(t).filter(|d| *d > 0)? as u128;
            let dc = u.cpu_ns.checked_sub(c)? as u128;
            Some((dc * 1_000_000_000 / dt) as u64)
        });
        Ok(ContainerUsage {
            at_ns,
            cgroup: cg,
            nano_cores,
            layer,
        })
    }

    /// The container's writable layer: (bytes, inodes), measured at most once per
    /// [`LAYER_USAGE_TTL`] (its walk, which can be any number of files, on a blocking
    /// thread).
    pub(crate) async fn writable_layer_usage(&self, id: &str) -> Result<(u64, u64)> {
        let cached = self
            .stats_memory()
            .get(id)
            .and_then(|m| m.layer)
            .filter(|(at, _)| at.elapsed() < LAYER_USAGE_TTL)
            .map(|(_, layer)| layer);
        if let Some(layer) = cached {
            return Ok(layer);
        }
        let upper = self.images().snapshots().mounts(id).ok().and_then(|ms| {
            ms.into_iter().find_map(|m| {
                if m.kind == "bind" {
                    return Some(PathBuf::from(m.source));
                }
                m.options
                    .iter()
                    .find_map(|o| o.strip_prefix("upperdir=").map(PathBuf::from))
            })
        });
        let layer = match upper {
            Some(u) => tokio::task::spawn_blocking(move || crate::stats::dir_usage(&u))
                .await
                .map_err(|e| Error::io("measure a writable layer", std::io::Error::other(e)))?,
            None => (0, 0),
        };
        self.stats_memory().entry(id.to_string()).or_default().layer =
            Some((std::time::Instant::now(), layer));
        Ok(layer)
    }
}

//! ContainerStats: cgroup usage and the writable layer's size.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::runtime::Runtime;

/// How long a measured writable-layer usage is reused.
pub const LAYER_USAGE_TTL: Duration = Duration::from_secs(10);

impl Runtime {
    /// The container's cgroup usage and its writable layer's (bytes, inodes); the layer is
    /// measured at most once per [`LAYER_USAGE_TTL`] (the kubelet asks every few seconds).
    pub async fn container_usage(
        &self,
        id: &str,
    ) -> Result<(Option<crate::stats::Usage>, (u64, u64))> {
        let rec = self.container(id)?;
        let cgroup = rec.cgroups_path().map(str::to_string);
        let cached = self
            .layer_usage()
            .get(id)
            .filter(|(at, _)| at.elapsed() < LAYER_USAGE_TTL)
            .map(|(_, layer)| *layer);
        let upper = match cached {
            Some(_) => None,
            None => self.images().snapshots().mounts(id).ok().and_then(|ms| {
                ms.into_iter().find_map(|m| {
                    if m.kind == "bind" {
                        return Some(PathBuf::from(m.source));
                    }
                    m.options
                        .iter()
                        .find_map(|o| o.strip_prefix("upperdir=").map(PathBuf::from))
                })
            }),
        };
        // The cgroup's counters are a few small kernel files, read in place (as before this
        // call was async); the writable layer's walk, at most once per TTL, can be any number
        // of files: a blocking thread does it.
        let cg = cgroup.and_then(|p| crate::stats::cgroup_usage(Path::new("/sys/fs/cgroup"), &p));
        let layer = match (cached, upper) {
            (Some(layer), _) => layer,
            (None, upper) => {
                let layer = match upper {
                    Some(u) => tokio::task::spawn_blocking(move || crate::stats::dir_usage(&u))
                        .await
                        .map_err(|e| {
                            Error::io("measure a writable layer", std::io::Error::other(e))
                        })?,
                    None => (0, 0),
                };
                self.layer_usage()
                    .insert(id.to_string(), (std::time::Instant::now(), layer));
                layer
            }
        };
        Ok((cg, layer))
    }
}

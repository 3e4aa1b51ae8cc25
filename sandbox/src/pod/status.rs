//! PodSandboxStatus and ListPodSandbox: records by id, id prefix and filter.
use std::sync::Arc;

use super::{PodFilter, PodRecord};
use crate::error::{Error, Result};
use crate::runtime::Runtime;

impl Runtime {
    /// Finds a pod by id or unique id prefix.
    pub fn resolve(&self, id: &str) -> Result<String> {
        self.pods.resolve(id, "pod sandbox")
    }

    /// The record of pod `id` (exact).
    pub fn get(&self, id: &str) -> Result<Arc<PodRecord>> {
        self.pods
            .get(id)
            .ok_or_else(|| Error::NotFound(format!("pod sandbox {} not found", crate::shown(id))))
    }

    /// ListPodSandbox.
    pub fn list(&self, f: &PodFilter) -> Vec<Arc<PodRecord>> {
        let mut out = self.pods.filter(|r| {
            f.id.as_ref().is_none_or(|i| r.id.starts_with(i.as_str()))
                && f.state.is_none_or(|s| r.state == s)
                && f.labels
                    .iter()
                    .all(|(k, v)| r.config.labels.get(k) == Some(v))
        });
        out.sort_by_key(|r| r.created_ns);
        out
    }
}

//! ContainerStatus and ListContainers: records by id, id prefix and filter.

use std::sync::Arc;

use super::{ContainerFilter, ContainerRecord};
use crate::error::{Error, Result};
use crate::runtime::Runtime;

impl Runtime {
    /// The record of container `id` (exact).
    pub fn container(&self, id: &str) -> Result<Arc<ContainerRecord>> {
        self.containers()
            .get(id)
            .ok_or_else(|| Error::NotFound(format!("container {} not found", crate::shown(id))))
    }

    /// Finds a container by id or unique prefix.
    pub fn resolve_container(&self, id: &str) -> Result<String> {
        self.containers().resolve(id, "container")
    }

    /// ListContainers.
    pub fn list_containers(&self, f: &ContainerFilter) -> Vec<Arc<ContainerRecord>> {
        let mut out = self.containers().filter(|r| {
            f.id.as_ref().is_none_or(|i| r.id.starts_with(i.as_str()))
                && f.state.is_none_or(|s| r.state == s)
                && f.pod_id
                    .as_ref()
                    .is_none_or(|p| r.pod_id.starts_with(p.as_str()))
                && f.labels
                    .iter()
                    .all(|(k, v)| r.config.labels.get(k) == Some(v))
        });
        out.sort_by_key(|r| r.created_ns);
        out
    }

    /// The ids of a pod's containers.
    pub(crate) fn containers_of(&self, pod_id: &str) -> Vec<String> {
        self.containers()
            .filter(|r| r.pod_id == pod_id)
            .iter()
            .map(|r| r.id.clone())
            .collect()
    }
}

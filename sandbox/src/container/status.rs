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

    /// The image ContainerStatus names, as containerd names it: a tag of the container's
    /// image as it is now (the one the pod's author wrote when it is one of them, else the
    /// first), else what the caller named it by (the image id).
    pub fn container_image_name(&self, r: &ContainerRecord) -> String {
        let Ok(image) = self.images().resolve(&r.image_id) else {
            return r.config.image.clone();
        };
        let wanted = berth_image::reference::Reference::parse(&r.config.user_specified_image)
            .map(|x| x.to_string())
            .ok();
        wanted
            .filter(|w| image.repo_tags.contains(w))
            .or_else(|| image.repo_tags.first().cloned())
            .unwrap_or_else(|| r.config.image.clone())
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

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

    /// Pod `id` (exact), a pod whose RunPodSandbox is still under way included once its
    /// pause container's spec is built, with its pid once the task runs: the kubelet's
    /// cAdvisor asks about a pod's cgroup as soon as runc makes it, before the pod is ready
    /// (containerd has the container's metadata by then too). ListPodSandbox and every CRI
    /// call see a pod only once it is ready. The flag says whether it is still starting.
    pub fn get_even_starting(&self, id: &str) -> Option<(Arc<PodRecord>, bool)> {
        if let Some(r) = self.pods.get(id) {
            return Some((r, false));
        }
        self.starting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map(|r| (r.clone(), true))
    }

    /// Notes how far the RunPodSandbox of `rec` got (see [`Self::get_even_starting`]).
    pub(crate) fn note_starting(&self, rec: &PodRecord) {
        self.starting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(rec.id.clone(), Arc::new(rec.clone()));
    }

    /// Admits the user namespace of pod `rec` (starting): its host ids must not overlap
    /// another pod's (the kubelet keeps a pod's range across its sandboxes, so the same pod
    /// uid may). Notes the pod as starting under the same lock, so that two RunPodSandbox
    /// calls cannot both pass with overlapping ranges.
    pub(crate) fn admit_userns(
        &self,
        rec: &PodRecord,
        userns: &crate::userns::UserNamespace,
    ) -> Result<()> {
        let mut starting = self.starting.lock().unwrap_or_else(|p| p.into_inner());
        let others = self
            .pods
            .all()
            .into_iter()
            .chain(starting.values().cloned());
        for o in others {
            if o.id != rec.id
                && o.config.meta.uid != rec.config.meta.uid
                && o.config.userns.is_some_and(|u| u.overlaps(userns))
            {
                return Err(Error::Invalid(format!(
                    "linux.security_context.namespace_options.userns_options: host ids {}+{} (uids) and {}+{} (gids) overlap those of pod {}/{} ({}): pods must not share host ids",
                    userns.uids.host_id,
                    userns.uids.size,
                    userns.gids.host_id,
                    userns.gids.size,
                    o.config.meta.namespace,
                    o.config.meta.name,
                    o.id
                )));
            }
        }
        starting.insert(rec.id.clone(), Arc::new(rec.clone()));
        Ok(())
    }

    /// Notes the pause process's pid of a pod still starting.
    pub(crate) fn note_starting_pid(&self, id: &str, pid: u32) {
        if let Some(r) = self
            .starting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(id)
        {
            Arc::make_mut(r).pid = pid;
        }
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

//! RemovePodSandbox: stops the pod (if it was not), removes its containers, then its
//! rootfs, snapshot, directory, cgroup and record. An unknown pod is not an error.
use std::path::Path;

use super::files::unmount;
use crate::error::{Error, Result};
use crate::runtime::Runtime;

impl Runtime {
    /// RemovePodSandbox: stops the pod if needed and removes everything it had. An unknown id
    /// is not an error (CRI: idempotent).
    pub async fn remove(&self, id: &str) -> Result<()> {
        let id = match self.resolve(id) {
            Ok(i) => i,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        match self.remove_resolved(&id).await {
            // Another RemovePodSandbox removed it meanwhile: removed is what was asked.
            Err(e) if e.kind() == crate::ErrorKind::NotFound && self.get(&id).is_err() => Ok(()),
            r => r,
        }
    }

    async fn remove_resolved(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.stop(&id).await?;
        self.remove_pod_containers(&id).await?;
        let lock = self.pods.lock(&id);
        let _g = lock.lock().await;
        let Ok(rec) = self.get(&id) else {
            return Ok(()); // removed while this call waited for the lock
        };
        {
            let _sync = self.nri_block_sync().await;
            self.nri_pod_event(berth_nri::Event::RemovePodSandbox, &rec)
                .await;
        }
        unmount(&self.bundle(&id).join("rootfs"))?;
        // Its containers are gone: the idmapped view of the layers they used goes too.
        crate::userns::release_layers_view(&crate::userns::layers_view(self.state_dir(), &id))?;
        self.images
            .snapshots()
            .remove_active(&id)
            .map_err(Error::Image)?;
        crate::process::remove_dir_all_blocking(self.dir(&id)).await?;
        // From the config, not the spec: a pod berth died creating may have no spec recorded.
        let path = crate::spec::cgroups_path(&rec.config.cgroup_parent, &id);
        let _ = tokio::task::spawn_blocking(move || {
            crate::stats::remove_cgroup(Path::new("/sys/fs/cgroup"), &path)
        })
        .await;
        self.pods.remove(&id)
    }
}

//! RemoveContainer: stops it if needed, then deletes its task, snapshot, directory, cgroup
//! and record. An unknown container is not an error.

use std::path::Path;
use std::time::Duration;

use super::ContainerEventKind;
use crate::error::{Error, Result};
use crate::runtime::Runtime;

impl Runtime {
    /// RemoveContainer: stops it if it runs (as containerd does), then removes its task,
    /// snapshot, directory and record. An unknown id is not an error.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let id = match self.resolve_container(id) {
            Ok(i) => i,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        match self.remove_resolved_container(&id).await {
            // Another RemoveContainer (or its pod's removal) removed it meanwhile.
            Err(e) if e.kind() == crate::ErrorKind::NotFound && self.container(&id).is_err() => {
                Ok(())
            }
            r => r,
        }
    }

    async fn remove_resolved_container(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        let rec = self.container(&id)?;
        if rec.state.needs_stop() {
            self.stop_container(&id, Duration::ZERO).await?;
        }
        // Plugins hear that it stopped (if its exit has not told them yet), then that it goes.
        self.nri_stopped(&id).await;
        let lock = self.containers().lock(&id);
        let _g = lock.lock().await;
        // After the container's lock, as every call takes them (see `nri_block_sync`).
        let _sync = self.nri_block_sync().await;
        let Ok(rec) = self.container(&id) else {
            return Ok(()); // removed while this call waited for the lock
        };
        self.nri_container_event(berth_nri::Event::RemoveContainer, &rec)
            .await;
        self.reap_container(&id).await;
        let bundle = self.ctr_dir(&id).join("bundle");
        crate::pod::unmount(&bundle.join("rootfs"))?;
        // Left only by a berth that died while creating it.
        self.release_idmap_binds(&id).await;
        // What the container's snapshots stand on: layers whose image went meanwhile are
        // collected once nothing uses them.
        let mut stood_on: Vec<_> = self
            .images()
            .snapshots()
            .active_record(&id)
            .map_err(Error::Image)?
            .and_then(|a| a.parent)
            .into_iter()
            .collect();
        self.images()
            .snapshots()
            .remove_active(&id)
            .map_err(Error::Image)?;
        let dir = self.ctr_dir(&id);
        if rec.config.mounts.iter().any(|m| m.image.is_some()) {
            stood_on.extend(self.remove_image_volumes(&id, &dir)?);
        }
        if let Err(e) = self.images().gc_unless_referenced(&stood_on).await {
            tracing::warn!(container = id, err = %e, "cannot remove the layers of a removed image");
        }
        crate::process::remove_dir_all_blocking(dir).await?;
        if let Some(path) = rec.cgroups_path().map(str::to_string) {
            let _ = tokio::task::spawn_blocking(move || {
                crate::stats::remove_cgroup(Path::new("/sys/fs/cgroup"), &path)
            })
            .await;
        }
        self.containers().remove(&id)?;
        self.nri_forget(&id);
        self.note_reaped(&id, false);
        self.stats_memory().remove(&id);
        self.emit(&rec, ContainerEventKind::Deleted);
        Ok(())
    }

    /// Removes every container of a pod (its stop already killed them).
    pub(crate) async fn remove_pod_containers(&self, pod_id: &str) -> Result<()> {
        for c in self.containers_of(pod_id) {
            self.remove_container(&c).await?;
        }
        Ok(())
    }
}

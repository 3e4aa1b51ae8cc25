//! StopPodSandbox: the pod's containers, then the pause task and its shim, then the network
//! (CNI DEL with the cached result, else the network config) and the namespace. Idempotent:
//! what is already gone is skipped.

use super::files::unmount;
use super::state::netns_name;
use super::{PodRecord, PodState};
use crate::error::{Error, Result};
use crate::runtime::Runtime;
use crate::shim::{self, Shim};

use crate::shim::SIGKILL;

impl Runtime {
    /// StopPodSandbox: stops the pause container, tears down the network, unmounts shm.
    /// Idempotent; an unknown id is NotFound.
    pub async fn stop(&self, id: &str) -> Result<()> {
        // A pod that is gone has nothing left to stop (CRI: idempotent).
        let id = match self.resolve(id) {
            Err(Error::NotFound(_)) => return Ok(()),
            r => r?,
        };
        let lock = self.pods.lock(&id);
        let _g = lock.lock().await;
        let Ok(rec) = self.get(&id) else {
            return Ok(()); // removed while this call waited for the lock
        };
        self.stop_pod_containers(&id).await?;
        self.stop_task(&rec).await?;
        if !rec.stopped && self.nri().is_some() {
            // Its containers' stops first, then the pod's, while it still has its network.
            for c in self.containers_of(&id) {
                self.nri_stopped(&c).await;
            }
            let _sync = self.nri_block_sync().await;
            self.nri_pod_event(berth_nri::Event::StopPodSandbox, &rec)
                .await;
        }
        let network = rec.netns.as_ref().filter(|_| !rec.network_down);
        if let Some(ns) = network {
            let a = self.attachment(&rec);
            // DEL with the config ADD used (cached with its result); without a cached result
            // (berth died during ADD, or before it) with the network's config: the CNI spec
            // makes DEL idempotent, and host-local releases the pod's lease by its id.
            let current = self.cni.network().ok();
            // A file that is not a namespace: berth died between creating the pin file and
            // mounting the namespace on it, so no ADD ran. Removed first: plugins take a
            // missing namespace for one that is gone, but refuse a path that is no
            // namespace.
            let pinned = berth_network::netns::is_pinned(ns);
            if !pinned && ns.exists() {
                tracing::info!(pod = id, path = %ns.display(), "removing a network namespace pin file that was never mounted");
                let _ = std::fs::remove_file(ns);
            }
            if pinned {
                self.cni
                    .del(current.as_ref(), &a)
                    .await
                    .map_err(Error::Network)?;
            } else {
                // The namespace is gone (a reboot emptied the state dir, or someone removed
                // it). DEL still releases what plugins hold outside it (IPAM leases, port
                // mappings); a plugin that insists on the namespace must not keep the pod
                // from stopping.
                if let Err(e) = self.cni.del(current.as_ref(), &a).await {
                    tracing::warn!(pod = id, err = %e, "CNI DEL without the pod's network namespace failed");
                }
            }
            self.netns
                .remove(&netns_name(&id))
                .map_err(Error::Network)?;
        }
        unmount(&self.dir(&id).join("shm"))?;
        self.change_pod(&id, |r| {
            r.state = PodState::NotReady;
            r.network_down = r.netns.is_some();
            r.stopped = true;
        })
    }

    /// Kills the pause task, waits for it (at most 10 s), deletes it and shuts the shim down;
    /// then forgets the shim. Tasks that are already gone are fine.
    pub(crate) async fn shut_down_pause(&self, s: &Shim, id: &str) -> Result<()> {
        match s.kill(id, SIGKILL, true).await {
            Ok(()) => {}
            Err(e) if e.kind() == crate::ErrorKind::NotFound => {}
            Err(e) if e.shim_gone() => return Err(e),
            Err(e) => tracing::debug!(pod = id, err = %e, "kill failed (already stopped?)"),
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), s.wait(id)).await;
        let unknown = match s.delete(id).await {
            Ok(_) => false,
            Err(e) if e.kind() == crate::ErrorKind::NotFound => true,
            Err(e) => return Err(e),
        };
        let bundle = self.bundle(id);
        let watch = self
            .shim_pid(id, &s.address)
            .and_then(|p| shim::watch::Watch::open(p, &bundle).ok());
        s.shutdown(id).await?;
        // A shim exits on Shutdown only once it holds no task. One that stays holds a task
        // berth no longer knows (a container whose record went while berth was down): it
        // is killed, and the tasks it held are removed with the runtime's own orphans.
        let mut lingered = false;
        if let Some(w) = watch
            && tokio::time::timeout(std::time::Duration::from_secs(3), w.exited())
                .await
                .is_err()
        {
            tracing::warn!(
                pod = id,
                "the pod's shim did not exit on Shutdown; killing it"
            );
            self.kill_daemons_in(&bundle).await;
            lingered = true;
        }
        if unknown || lingered {
            // The shim did not know the pause task (berth died while the shim created it, and
            // runc may hold it still), or was killed with tasks in it.
            if let Ok(rec) = self.get(id) {
                self.delete_dead_tasks(&rec, lingered).await;
            }
        }
        let _ = std::fs::remove_file(bundle.join("address"));
        self.forget_shim(id);
        Ok(())
    }

    pub(crate) async fn stop_task(&self, rec: &PodRecord) -> Result<()> {
        let id = &rec.id;
        let dead = match self.shim_of(id) {
            Some(s) => match self.shut_down_pause(&s, id).await {
                Err(e) if e.shim_gone() => {
                    tracing::warn!(pod = id, err = %e, "the pod's shim died; cleaning up after it");
                    self.forget_shim(id);
                    true
                }
                other => {
                    other?;
                    false
                }
            },
            None => true,
        };
        if dead {
            // No shim berth can talk to (it died, berth restarted after it did, or berth died
            // while starting it): a daemon still working in the bundle is killed, and the
            // shim binary cleans up what runc left, if anything.
            let bundle = self.bundle(id);
            self.kill_daemons_in(&bundle).await;
            self.delete_dead_tasks(rec, true).await;
            let _ = std::fs::remove_file(bundle.join("address"));
        }
        Ok(())
    }
}

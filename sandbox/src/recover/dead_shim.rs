//! After a shim died (noticed through its pidfd) or could not be asked: its tasks deleted
//! through the shim binary, its containers' processes killed and reported exited.

use crate::container::ContainerState;
use crate::pod::{PodRecord, PodState};
use crate::runtime::Runtime;
use crate::shim::{self, Shim};
use std::time::Duration;

impl Runtime {
    /// Runs `<shim> delete` for a task whose shim cannot be asked, if its bundle is there.
    pub(crate) async fn delete_dead_task(
        &self,
        binary: &std::path::Path,
        id: &str,
        bundle: &std::path::Path,
    ) {
        if !bundle.join("config.json").exists() {
            return;
        }
        if let Err(e) = shim::delete_dead(binary, self.shim_env(), id, bundle).await {
            tracing::debug!(task = id, err = %e, "shim delete of a task without a shim");
        }
    }

    /// Has the shim binary delete what runc may still hold of pod `rec`: its pause task and,
    /// with `containers`, each of its containers' tasks (their shim is gone); then deletes the
    /// runtime's containers no record owns.
    pub(crate) async fn delete_dead_tasks(&self, rec: &PodRecord, containers: bool) {
        if containers {
            for c in self.containers_of(&rec.id) {
                // With the container's lock, and only while it has a record: a
                // RemoveContainer (a RemovePodSandbox's, which holds no pod lock then) removes
                // its bundle under that lock, and the shim binary's delete writes into it.
                let lock = self.containers().lock(&c);
                let _g = lock.lock().await;
                if self.container(&c).is_err() {
                    continue;
                }
                self.delete_dead_task(&rec.shim_binary, &c, &self.ctr_dir(&c).join("bundle"))
                    .await;
            }
        }
        self.delete_dead_task(&rec.shim_binary, &rec.id, &self.bundle(&rec.id))
            .await;
        self.sweep_runtime_state().await;
    }

    /// Marks a container exited with status 255 and `why`, unless it exited already.
    pub(super) fn mark_gone(&self, id: &str, why: &str) {
        self.mark_exited_unknown(id, "Unknown", why);
    }

    pub(super) fn mark_exited_unknown(&self, id: &str, reason: &'static str, why: &str) {
        if self.record_exit(id, (255, 0), |_| reason, Some(why)) {
            self.container_logs().remove(id);
        }
    }

    /// Starts watching the shim of pod `id` (at `address`): if its process dies while it is
    /// still the pod's shim, [`on_shim_death`](Self::on_shim_death) cleans up after it.
    pub(crate) fn watch_shim(&self, pod_id: &str, s: &Shim) {
        let me = self.me();
        let bundle = self.bundle(pod_id);
        let (pod_id, address, s) = (pod_id.to_string(), s.address.clone(), s.clone());
        tokio::spawn(async move {
            // The shim says who it is (Connect); the watch then checks that this process
            // works in the pod's bundle.
            let pid = match s.connect_info(&pod_id).await {
                Ok((pid, _)) => {
                    if let Some(m) = me.upgrade() {
                        m.note_shim_pid(&pod_id, &s.address, pid);
                    }
                    pid
                }
                Err(e) => {
                    tracing::debug!(pod = pod_id, err = %e, "cannot ask the shim its pid; it is not watched");
                    return;
                }
            };
            drop(s);
            match shim::watch::Watch::open(pid, &bundle) {
                Ok(w) => w.exited().await,
                Err(shim::watch::NotWatched::Gone) => {}
                Err(shim::watch::NotWatched::Unsupported(e)) => {
                    tracing::warn!(pod = pod_id, err = e, "cannot watch the pod's shim");
                    return;
                }
            }
            // The manager may be gone (berth is stopping): then nothing is left to do.
            if let Some(m) = me.upgrade() {
                m.on_shim_death(&pod_id, &address, pid).await;
            }
        });
    }

    /// The shim of pod `pod_id` at `address` (pid `pid`) exited. Unless the pod let it go
    /// (Stop shut it down and forgot it first), it died: the pod becomes NotReady, each of
    /// its containers still running is killed and deleted through the shim binary and
    /// recorded as exited with reason `ShimDied`, and the pause task goes the same way.
    pub(super) async fn on_shim_death(&self, pod_id: &str, address: &str, pid: u32) {
        let lock = self.pods().lock(pod_id);
        let _g = lock.lock().await;
        if self.shim_of(pod_id).is_none_or(|s| s.address != address) {
            return; // shut down on purpose, or replaced
        }
        let Ok(rec) = self.get(pod_id) else { return };
        tracing::warn!(
            pod = pod_id,
            shim_pid = pid,
            "the pod's shim died; its pod is NotReady and its containers exited"
        );
        berth_metrics::SHIM_DEATHS.with(&[&rec.handler]).inc();
        self.forget_shim(pod_id);
        shim::remove_dead_socket(address);
        // What runc still runs for the pod (its processes outlive the shim) is killed and
        // deleted first: once berth says a container exited, it has.
        let mut gone = Vec::new();
        for c in self.containers_of(pod_id) {
            let guard = self.containers().lock(&c).lock_owned().await;
            if self
                .container(&c)
                .is_ok_and(|r| r.state != ContainerState::Exited)
            {
                gone.push((c, guard));
            }
        }
        // Each container's init process and the pause process are killed first (a pid
        // namespace goes with its init), so that what berth then reports is true; what runc
        // keeps (state, cgroups) is deleted after, through the shim binary, all at once: each
        // is a run of the shim binary and of runc, and the pod's lock is held until they end.
        let inits: Vec<(u32, String)> = gone
            .iter()
            .filter_map(|(c, _)| self.container(c).ok())
            .map(|r| (r.pid, r.id.clone()))
            .chain([(rec.pid, rec.id.clone())])
            .filter(|(pid, _)| *pid > 1)
            .collect();
        let _ = tokio::task::spawn_blocking(move || {
            for (pid, id) in inits {
                kill_container_init(pid, &id);
            }
        })
        .await;
        if let Err(e) = self.set_pod_state(pod_id, PodState::NotReady) {
            tracing::error!(pod = pod_id, err = %e, "failed to record the pod as NotReady");
        }
        let why =
            format!("the pod's shim (pid {pid}) died; berth killed what was left of the container");
        let mut bundles: Vec<(String, std::path::PathBuf)> = Vec::new();
        for (c, _guard) in gone {
            self.mark_exited_unknown(&c, "ShimDied", &why);
            bundles.push((c.clone(), self.ctr_dir(&c).join("bundle")));
        }
        bundles.push((pod_id.to_string(), self.bundle(pod_id)));
        futures::future::join_all(
            bundles
                .iter()
                .map(|(id, bundle)| self.delete_dead_task(&rec.shim_binary, id, bundle)),
        )
        .await;
        let _ = std::fs::remove_file(self.bundle(pod_id).join("address"));
    }
}

/// Kills process `pid` if it is still the init process of container `id` (its cgroup names
/// the id: a recycled pid is left alone), and waits up to a second for it to go.
fn kill_container_init(pid: u32, id: &str) {
    crate::process::kill_checked(
        pid as i32,
        || std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c.contains(id)),
        Duration::from_secs(1),
    );
}

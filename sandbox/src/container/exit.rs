//! What the shim reports of a container: its exit (code, time, `OOMKilled` after an OOM
//! event) and the deletion of its task once it exited.

use std::time::Duration;

use super::{ContainerEventKind, ContainerRecord, ContainerState};
use crate::now_ns;
use crate::runtime::Runtime;

impl Runtime {
    /// Called on a `/tasks/exit` event of a container's init process.
    pub(crate) fn on_container_exit(&self, id: &str, status: u32, at_ns: i64) -> bool {
        let Ok(rec) = self.container(id) else {
            return false;
        };
        if rec.state == ContainerState::Exited {
            return true;
        }
        let cgroup_oom = status == 137 && self.oom_killed(&rec);
        self.record_exit(
            id,
            (status as i32, at_ns),
            |r| {
                if r.oom || cgroup_oom {
                    "OOMKilled"
                } else if status == 0 {
                    "Completed"
                } else {
                    "Error"
                }
            },
            None,
        );
        true
    }

    /// The one transition to Exited: with `code` at `at_ns` (0: now), the reason `reason`
    /// gives for the record, and `message` if any. Persisted, then told to event
    /// subscribers; nothing when the container had exited already. Returns whether it
    /// changed.
    pub(crate) fn record_exit(
        &self,
        id: &str,
        (code, at_ns): (i32, i64),
        reason: impl FnOnce(&ContainerRecord) -> &'static str,
        message: Option<&str>,
    ) -> bool {
        let mut changed = false;
        let res = self.observe_container(id, |r| {
            if r.state == ContainerState::Exited {
                return;
            }
            changed = true;
            r.state = ContainerState::Exited;
            r.exit_code = code;
            r.finished_ns = if at_ns > 0 { at_ns } else { now_ns() };
            r.reason = reason(r).into();
            if let Some(m) = message {
                r.message = m.into();
            }
        });
        if let Err(e) = &res {
            // Known in memory all the same (see observe_container).
            tracing::error!(container = id, err = %e, "failed to persist a container's exit");
        }
        if changed && let Ok(rec) = res.or_else(|_| self.container(id)) {
            self.emit(&rec, ContainerEventKind::Stopped);
            if self.nri().is_some() {
                let (me, id) = (self.me(), id.to_string());
                tokio::spawn(async move {
                    if let Some(m) = me.upgrade() {
                        m.nri_stopped(&id).await;
                    }
                });
            }
        }
        changed
    }

    pub(crate) fn on_container_oom(&self, id: &str) {
        let _ = self.observe_container(id, |r| {
            r.oom = true;
            if r.state == ContainerState::Exited && r.exit_code == 137 {
                r.reason = "OOMKilled".into();
            }
        });
    }

    /// cgroup v1: the memory controller counted an OOM kill in the container's cgroup.
    pub(crate) fn oom_killed(&self, rec: &ContainerRecord) -> bool {
        let Some(path) = rec.cgroups_path() else {
            return false;
        };
        let v1 = format!("/sys/fs/cgroup/memory{path}/memory.oom_control");
        let v2 = format!("/sys/fs/cgroup{path}/memory.events");
        for f in [v1, v2] {
            if let Ok(s) = std::fs::read_to_string(&f)
                && s.lines().any(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|n| n.trim().parse::<u64>().ok())
                        .is_some_and(|n| n > 0)
                })
            {
                return true;
            }
        }
        false
    }

    /// Deletes an exited container's task from its shim (the shim unmounts the rootfs) and
    /// waits for its output to drain into the log.
    pub(crate) async fn reap_container(&self, id: &str) {
        let Ok(rec) = self.container(id) else { return };
        if let Some(s) = self.shim_of(&rec.pod_id)
            && !self.note_reaped(id, true)
        {
            match s.delete(id).await {
                Ok(_) => {}
                Err(e) if e.kind() == crate::ErrorKind::NotFound => {
                    // The shim does not know the task, and berth did not delete it: runc may
                    // still hold it (berth died while the shim created it). The shim binary's
                    // delete removes it, if it is there.
                    if let Ok(pod) = self.get(&rec.pod_id) {
                        self.delete_dead_task(
                            &pod.shim_binary,
                            id,
                            &self.ctr_dir(id).join("bundle"),
                        )
                        .await;
                    }
                }
                Err(e) => {
                    tracing::debug!(container = id, err = %e, "delete exited task");
                    self.note_reaped(id, false);
                }
            }
        }
        let log = self.container_logs().remove(id);
        if let Some(mut l) = log {
            l.drained(Duration::from_secs(2)).await;
        }
    }
}

//! A pod's record as it changes, and where its files are.

use std::path::PathBuf;

use super::{PodRecord, PodState};
use crate::error::Result;
use crate::records::Durability;
use crate::runtime::Runtime;

impl Runtime {
    /// Records that pod `id` was found in `state` (its pause or its shim died): memory is
    /// changed whether or not the store takes the write, which is retried by the next change
    /// of the record; a restart learns the state again from the shim.
    pub(crate) fn set_pod_state(&self, id: &str, state: PodState) -> Result<()> {
        self.pods.observe(id, |r| r.state = state).map(|_| ())
    }

    /// Changes pod `id`'s record, durably, then in memory.
    pub(crate) fn change_pod(&self, id: &str, f: impl FnOnce(&mut PodRecord)) -> Result<()> {
        self.pods.update(id, Durability::Now, f).map(|_| ())
    }

    /// Handles an exit that may be a pause container's; false if `id` is no pod.
    pub(crate) fn on_pause_exit(&self, id: &str, status: u32) -> bool {
        let ready = match self.pods.get(id) {
            None => return false,
            Some(rec) => rec.state == PodState::Ready,
        };
        if ready {
            tracing::info!(
                pod = id,
                exit_status = status,
                "pause container exited; pod is NotReady"
            );
            if let Err(e) = self.set_pod_state(id, PodState::NotReady) {
                tracing::error!(pod = id, err = %e, "failed to persist pod state");
            }
        }
        true
    }

    pub(crate) fn pod_dir(&self, id: &str) -> PathBuf {
        self.dir(id)
    }

    pub(crate) fn dir(&self, id: &str) -> PathBuf {
        self.cfg.state_dir.join("sandboxes").join(id)
    }

    pub(crate) fn bundle(&self, id: &str) -> PathBuf {
        self.dir(id).join("bundle")
    }
}

pub(super) fn netns_name(id: &str) -> String {
    format!("cni-{}", &id[..id.len().min(32)])
}

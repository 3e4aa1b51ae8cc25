//! A container as berth records it, its states and events.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::config::ContainerConfig;
use crate::pod::PodRecord;
use crate::spec::oci::Spec;

/// Container state.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum ContainerState {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Exited (or failed to start).
    Exited,
    /// Unknown (its shim is gone and its fate was not heard).
    Unknown,
}

impl ContainerState {
    /// StartContainer: only a created container starts.
    pub fn can_start(self) -> bool {
        self == ContainerState::Created
    }

    /// Exec, Attach and ReopenContainerLog: a running container.
    pub fn can_exec(self) -> bool {
        self == ContainerState::Running
    }

    /// UpdateContainerResources: a created or running container.
    pub fn can_update(self) -> bool {
        matches!(self, ContainerState::Created | ContainerState::Running)
    }

    /// RemoveContainer stops a container first unless it already exited.
    pub fn needs_stop(self) -> bool {
        self != ContainerState::Exited
    }
}

/// A container as berth keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// Id.
    pub id: String,
    /// Its pod.
    pub pod_id: String,
    /// What was asked for (shared: only UpdateContainerResources changes it).
    pub config: Arc<ContainerConfig>,
    /// The image id (`sha256:…`).
    pub image_id: String,
    /// A repo digest of the image, else its first tag.
    pub image_ref: String,
    /// State.
    pub state: ContainerState,
    /// Created (Unix ns).
    pub created_ns: i64,
    /// Started (Unix ns), 0 if never.
    pub started_ns: i64,
    /// Finished (Unix ns), 0 if not.
    pub finished_ns: i64,
    /// Exit code.
    pub exit_code: i32,
    /// `Completed`, `Error`, `OOMKilled`, `StartError`.
    pub reason: String,
    /// A human message (start errors).
    pub message: String,
    /// The init process's pid.
    pub pid: u32,
    /// The full log path, if any.
    pub log_path: Option<PathBuf>,
    /// The image's stop signal.
    pub stop_signal: String,
    /// The OCI spec (written before the task is created; shared: only creation, exec and
    /// recovery read it).
    pub spec: Option<Arc<Spec>>,
    /// An OOM event was seen for it.
    #[serde(default)]
    pub oom: bool,
}

impl ContainerRecord {
    /// The container's cgroup, from its spec.
    pub fn cgroups_path(&self) -> Option<&str> {
        self.spec.as_ref()?.cgroups_path()
    }
}

/// A container lifecycle event (for GetContainerEvents).
#[derive(Debug, Clone)]
pub struct ContainerEvent {
    /// Container id.
    pub container_id: String,
    /// Its pod.
    pub pod_id: String,
    /// What happened.
    pub kind: ContainerEventKind,
    /// When (Unix ns).
    pub at_ns: i64,
}

/// The kinds of [`ContainerEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerEventKind {
    /// Created.
    Created,
    /// Started.
    Started,
    /// Stopped (exited).
    Stopped,
    /// Removed.
    Deleted,
}

/// Filters for ListContainers.
#[derive(Debug, Clone, Default)]
pub struct ContainerFilter {
    /// Id or prefix.
    pub id: Option<String>,
    /// State.
    pub state: Option<ContainerState>,
    /// Pod id or prefix.
    pub pod_id: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

pub(crate) fn container_name(c: &ContainerConfig, pod: &PodRecord) -> String {
    let m = &pod.config.meta;
    format!(
        "{}_{}_{}_{}_{}",
        c.name, m.name, m.namespace, m.uid, c.attempt
    )
}

pub(crate) const TABLE: &str = "containers";

impl crate::records::Record for ContainerRecord {
    const TABLE: &'static str = TABLE;
    fn id(&self) -> &str {
        &self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_each_state_allows() {
        use ContainerState::*;
        // (state, start, exec, update, needs stop)
        let table = [
            (Created, true, false, true, true),
            (Running, false, true, true, true),
            (Exited, false, false, false, false),
            (Unknown, false, false, false, true),
        ];
        for (s, start, exec, update, stop) in table {
            assert_eq!(
                (s.can_start(), s.can_exec(), s.can_update(), s.needs_stop()),
                (start, exec, update, stop),
                "{s:?}"
            );
        }
    }
}

//! A pod as berth records it, and its states:
//!
//! ```text
//!   RunPodSandbox ──► NotReady (recorded first, so a crash leaves a record to clean up)
//!        │  netns, CNI ADD, files, shm, snapshot, shim, task start
//!        ▼
//!      Ready [SANDBOX_READY] ──pause exits (event) / StopPodSandbox──► NotReady [SANDBOX_NOTREADY]
//!                                                                        │ RemovePodSandbox
//!                                                                        ▼
//!                                                                     (gone)
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::config::{PodConfig, PodMeta};
use crate::spec::oci::Spec;

/// Ready or not.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum PodState {
    /// The pause container runs.
    Ready,
    /// Stopped, failed half-way, or its pause container died.
    NotReady,
}

impl PodState {
    /// CreateContainer and PortForward need the pause container running.
    pub fn can_host_containers(self) -> bool {
        self == PodState::Ready
    }
}

/// A pod as berth keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    /// The sandbox id.
    pub id: String,
    /// What was asked for (shared: it never changes).
    pub config: Arc<PodConfig>,
    /// Creation time (Unix ns).
    pub created_ns: i64,
    /// State.
    pub state: PodState,
    /// The pinned netns, unless host network.
    pub netns: Option<PathBuf>,
    /// Stop has run CNI DEL and removed the netns: a later Stop (Remove stops first) need not.
    #[serde(default)]
    pub network_down: bool,
    /// StopPodSandbox has finished once: a later one changes nothing and tells no NRI
    /// plugin.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
    /// IPs from CNI, primary first.
    pub ips: Vec<String>,
    /// The pause process.
    pub pid: u32,
    /// The handler used.
    pub handler: String,
    /// The shim binary used.
    pub shim_binary: PathBuf,
    /// The CNI result (shared: only start-up and teardown read it).
    pub cni_result: Option<Arc<Value>>,
    /// The pause container's OCI spec (shared: only creation and recovery read it).
    pub spec: Option<Arc<Spec>>,
}

impl PodRecord {
    /// `<name>_<namespace>_<uid>_<attempt>`, the name the registrar holds.
    pub fn name(&self) -> String {
        pod_name(&self.config.meta)
    }
}

pub(super) fn pod_name(m: &PodMeta) -> String {
    format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
}

/// Filters for ListPodSandbox.
#[derive(Debug, Clone, Default)]
pub struct PodFilter {
    /// Id or id prefix.
    pub id: Option<String>,
    /// State.
    pub state: Option<PodState>,
    /// Labels that must all match.
    pub labels: BTreeMap<String, String>,
}

pub(crate) const TABLE: &str = "sandboxes";

impl crate::records::Record for PodRecord {
    const TABLE: &'static str = TABLE;
    fn id(&self) -> &str {
        &self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            pod_name(&PodMeta {
                name: "a".into(),
                namespace: "b".into(),
                uid: "c".into(),
                attempt: 1
            }),
            "a_b_c_1"
        );
        assert_eq!(super::super::state::netns_name(&"f".repeat(64)).len(), 36);
    }
}

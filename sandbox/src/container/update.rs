//! UpdateContainerResources, UpdatePodSandboxResources and ReopenContainerLog.

use std::sync::Arc;

use super::Resources;
use crate::error::{Error, Result};
use crate::runtime::Runtime;

impl Runtime {
    /// UpdateContainerResources.
    pub async fn update_container_resources(&self, id: &str, r: &Resources) -> Result<()> {
        let id = self.resolve_container(id)?;
        let lock = self.containers().lock(&id);
        let _g = lock.lock().await;
        let rec = self.container(&id)?;
        if !rec.state.can_update() {
            return Err(Error::Precondition(format!(
                "container {id} is not running or created; its resources cannot change"
            )));
        }
        let s = self.shim_of(&rec.pod_id).ok_or_else(|| {
            Error::Precondition(format!("the pod of container {id} has no running shim"))
        })?;
        use crate::spec::host::Host as _;
        let mut res =
            crate::spec::resources::linux_resources(r, crate::spec::host::RealHost.hugetlb());
        // Keep the device rules the container was created with.
        res.devices = rec
            .spec
            .as_ref()
            .and_then(|s| s.resources())
            .map(|r| r.devices.clone())
            .unwrap_or_default();
        if let Err(e) = s.update(&id, &res).await {
            // A shim that is gone or did not answer wrote nothing: its own error says so.
            if matches!(
                e.kind(),
                crate::ErrorKind::Unavailable
                    | crate::ErrorKind::NotFound
                    | crate::ErrorKind::DeadlineExceeded
            ) {
                return Err(e);
            }
            // The runtime may have written some cgroup files before one refused (a memory
            // limit below what the container uses): the ones it had are written back.
            let had = rec.spec.as_ref().and_then(|s| s.resources()).cloned();
            let restored = match had {
                Some(had) => s.update(&id, &had).await.is_ok(),
                None => false,
            };
            tracing::warn!(container = id, err = %e, restored, "resource update refused");
            return Err(Error::Precondition(format!(
                "container {id}: the runtime refused the new resources ({e}); {}",
                if restored {
                    "the previous ones are in force"
                } else {
                    "the previous ones could not all be written back"
                }
            )));
        }
        self.update_container(&id, |rec| {
            Arc::make_mut(&mut rec.config).resources = r.clone();
            if let Some(linux) = rec
                .spec
                .as_mut()
                .and_then(|s| Arc::make_mut(s).linux.as_mut())
            {
                linux.resources = Some(res);
            }
        })?;
        Ok(())
    }

    /// UpdatePodSandboxResources: the kubelet resizes the pod's cgroup itself (it owns the
    /// pod-level cgroup) and tells the runtime; berth records the pod's new resources and
    /// overhead (verbose PodSandboxStatus shows them). An unknown pod is NotFound.
    pub async fn update_pod_resources(
        &self,
        id: &str,
        overhead: Option<Resources>,
        resources: Option<Resources>,
    ) -> Result<()> {
        let id = self.resolve(id)?;
        let lock = self.pods().lock(&id);
        let _g = lock.lock().await;
        self.get(&id)?;
        self.change_pod(&id, |rec| {
            let c = Arc::make_mut(&mut rec.config);
            if overhead.is_some() {
                c.overhead = overhead;
            }
            if resources.is_some() {
                c.resources = resources;
            }
        })
    }

    /// ReopenContainerLog.
    pub fn reopen_container_log(&self, id: &str) -> Result<()> {
        let id = self.resolve_container(id)?;
        let rec = self.container(&id)?;
        if !rec.state.can_exec() {
            return Err(Error::Precondition(format!(
                "container {id} is not running; its log cannot be reopened"
            )));
        }
        match self.container_logs().get(&id) {
            Some(l) => l.reopen(),
            None => Err(Error::Precondition(format!(
                "container {id} has no log being written"
            ))),
        }
    }
}

//! UpdateContainerResources and ReopenContainerLog.

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
        s.update(&id, &res).await?;
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

//! UpdateContainerResources, UpdatePodSandboxResources and ReopenContainerLog.

use std::sync::Arc;

use super::Resources;
use crate::error::{Error, Result};
use crate::runtime::Runtime;

impl Runtime {
    /// UpdateContainerResources. NRI plugins see the request first (UpdateContainer) and may
    /// answer with other resources for this container, which replace it, or updates to
    /// others; they hear PostUpdateContainer once it is done.
    pub async fn update_container_resources(&self, id: &str, r: &Resources) -> Result<()> {
        let id = self.resolve_container(id)?;
        let lock = self.containers().lock(&id);
        let _g = lock.lock().await;
        let _sync = self.nri_block_sync().await;
        let rec = self.container(&id)?;
        if !rec.state.can_update() {
            return Err(Error::Precondition(format!(
                "container {id} is not running or created; its resources cannot change"
            )));
        }
        use crate::spec::host::Host as _;
        let mut res =
            crate::spec::resources::linux_resources(r, crate::spec::host::RealHost.hugetlb());
        let mut others = vec![];
        if let Some(nri) = self.nri()
            && let Ok(pod) = self.get(&rec.pod_id)
        {
            let updates = nri
                .update_container(
                    &crate::nri::pod(&pod),
                    &crate::nri::container(&rec, rec.spec.as_deref()),
                    Some(crate::nri::oci_resources(&res)),
                )
                .await
                .map_err(Error::Nri)?;
            for u in updates {
                match u.linux.as_ref().and_then(|l| l.resources.as_ref()) {
                    Some(nr) if u.container_id == id => crate::nri::merge_resources(&mut res, nr),
                    _ => others.push(u),
                }
            }
        }
        self.write_resources(&rec, res, Some(r.clone())).await?;
        drop(_sync);
        drop(_g);
        if !others.is_empty() {
            let failed = self.apply_nri_updates(others).await;
            if !failed.is_empty() {
                tracing::warn!(
                    container = id,
                    failed = failed.len(),
                    "updates NRI plugins asked for with this one failed"
                );
            }
        }
        if let Ok(rec) = self.container(&id) {
            self.nri_container_event(berth_nri::Event::PostUpdateContainer, &rec)
                .await;
        }
        Ok(())
    }

    /// Applies the resources an NRI plugin asks for (only the fields it names change).
    pub(crate) async fn update_resources_from_nri(
        &self,
        id: &str,
        r: &berth_nri::api::LinuxResources,
    ) -> Result<()> {
        let id = self.resolve_container(id)?;
        let lock = self.containers().lock(&id);
        let _g = lock.lock().await;
        let rec = self.container(&id)?;
        if !rec.state.can_update() {
            return Err(Error::Precondition(format!(
                "container {id} is not running or created; its resources cannot change"
            )));
        }
        let mut res = rec
            .spec
            .as_ref()
            .and_then(|s| s.resources())
            .cloned()
            .unwrap_or_default();
        crate::nri::merge_resources(&mut res, r);
        self.write_resources(&rec, res, None).await
    }

    /// Writes `res` into the container's cgroup through its shim and records it (and the
    /// CRI resources asked for, when a CRI call asked). A refusal writes the previous
    /// resources back.
    async fn write_resources(
        &self,
        rec: &super::ContainerRecord,
        mut res: crate::spec::oci::Resources,
        asked: Option<Resources>,
    ) -> Result<()> {
        let id = &rec.id;
        let s = self.shim_of(&rec.pod_id).ok_or_else(|| {
            Error::Precondition(format!("the pod of container {id} has no running shim"))
        })?;
        // Keep the device rules the container was created with.
        res.devices = rec
            .spec
            .as_ref()
            .and_then(|s| s.resources())
            .map(|r| r.devices.clone())
            .unwrap_or_default();
        if let Err(e) = s.update(id, &res).await {
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
                Some(had) => s.update(id, &had).await.is_ok(),
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
        self.update_container(id, |rec| {
            if let Some(r) = &asked {
                Arc::make_mut(&mut rec.config).resources = r.clone();
            }
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
        let _sync = self.nri_block_sync().await;
        let rec = self.get(&id)?;
        if let Some(nri) = self.nri() {
            let conv = |r: &Option<Resources>| {
                r.as_ref().map(|r| {
                    use crate::spec::host::Host as _;
                    crate::nri::oci_resources(&crate::spec::resources::linux_resources(
                        r,
                        crate::spec::host::RealHost.hugetlb(),
                    ))
                })
            };
            nri.update_pod(&crate::nri::pod(&rec), conv(&overhead), conv(&resources))
                .await
                .map_err(Error::Nri)?;
        }
        self.change_pod(&id, |rec| {
            let c = Arc::make_mut(&mut rec.config);
            if overhead.is_some() {
                c.overhead = overhead;
            }
            if resources.is_some() {
                c.resources = resources;
            }
        })?;
        if let Ok(rec) = self.get(&id) {
            self.nri_pod_event(berth_nri::Event::PostUpdatePodSandbox, &rec)
                .await;
        }
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

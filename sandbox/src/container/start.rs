//! StartContainer: starts the created task; a start that fails records the container
//! exited with reason `StartError`.

use super::{ContainerEventKind, ContainerState};
use crate::error::{Error, Result};
use crate::now_ns;
use crate::runtime::Runtime;

impl Runtime {
    /// StartContainer.
    pub async fn start_container(&self, id: &str) -> Result<()> {
        let id = self.resolve_container(id)?;
        let lock = self.containers().lock(&id);
        let _g = lock.lock().await;
        let rec = self.container(&id)?;
        if !rec.state.can_start() {
            return Err(Error::Precondition(format!(
                "container {id} is {:?}, not Created: only a created container can be started",
                rec.state
            )));
        }
        let shim = self.shim_of(&rec.pod_id).ok_or_else(|| {
            Error::Precondition(format!(
                "the pod {} of container {id} has no running shim",
                rec.pod_id
            ))
        })?;
        // Stamped before the call: a process that exits at once must not look as if it
        // finished before it started.
        let started = now_ns();
        let steps = berth_metrics::Steps::start("start_container");
        let _sync = self.nri_block_sync().await;
        // Plugins hear of the start first; one that refuses it fails it.
        let refused = match (self.nri(), self.get(&rec.pod_id)) {
            (Some(nri), Ok(pod)) => nri
                .container(
                    berth_nri::Event::StartContainer,
                    &crate::nri::pod(&pod),
                    &crate::nri::container(&rec, rec.spec.as_deref()),
                )
                .await
                .err()
                .map(Error::Nri),
            _ => None,
        };
        let res = match refused {
            Some(e) => Err(e),
            None => shim.start(&id).await,
        };
        steps.lap("shim_start");
        match res {
            Ok(pid) => {
                // The exit event may be handled while (or before) this runs: the record is
                // changed in one step, never from a stale copy. Deferred: after a crash the
                // shim still says the task runs, and /proc when it started.
                let rec = self.update_container_deferred(&id, |r| {
                    r.pid = pid;
                    if r.state == ContainerState::Exited {
                        r.started_ns = started.min(r.finished_ns);
                    } else {
                        r.started_ns = started;
                        r.state = ContainerState::Running;
                    }
                })?;
                self.emit(&rec, ContainerEventKind::Started);
                steps.lap("record");
                self.nri_container_event(berth_nri::Event::PostStartContainer, &rec)
                    .await;
                Ok(())
            }
            Err(e) => {
                self.update_container(&id, |r| {
                    r.state = ContainerState::Exited;
                    r.finished_ns = now_ns();
                    r.exit_code = 128;
                    r.reason = "StartError".into();
                    r.message = e.to_string();
                })?;
                let _ = shim.delete(&id).await;
                Err(e)
            }
        }
    }
}

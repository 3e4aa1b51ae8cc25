//! A container's record as it changes, its events, and its directory.

use std::path::PathBuf;
use std::sync::Arc;

use super::{ContainerEvent, ContainerEventKind, ContainerRecord};
use crate::error::{Error, Result};
use crate::now_ns;
use crate::records::Durability;
use crate::runtime::Runtime;

impl Runtime {
    pub(crate) fn ctr_dir(&self, id: &str) -> PathBuf {
        self.state_dir().join("containers").join(id)
    }

    /// Changes container `id`'s record, durably, then in memory (one change at a time, so
    /// an exit event racing StartContainer never undoes it).
    pub(crate) fn update_container(
        &self,
        id: &str,
        f: impl FnOnce(&mut ContainerRecord),
    ) -> Result<Arc<ContainerRecord>> {
        self.change_container(id, Durability::Now, f)
    }

    /// As [`update_container`](Self::update_container), but the record reaches the disk
    /// with the next durable write: for what a restarted berth can learn again from the shim
    /// and `/proc` (recover_containers) if it crashed first.
    pub(crate) fn update_container_deferred(
        &self,
        id: &str,
        f: impl FnOnce(&mut ContainerRecord),
    ) -> Result<Arc<ContainerRecord>> {
        self.change_container(id, Durability::Soon, f)
    }

    pub(crate) fn change_container(
        &self,
        id: &str,
        durability: Durability,
        f: impl FnOnce(&mut ContainerRecord),
    ) -> Result<Arc<ContainerRecord>> {
        self.containers()
            .update(id, durability, f)?
            .ok_or_else(|| Error::NotFound(format!("container {} not found", crate::shown(id))))
    }

    /// Records what berth observed of container `id` (an exit, an OOM): see
    /// [`Records::observe`](crate::records::Records::observe).
    pub(crate) fn observe_container(
        &self,
        id: &str,
        f: impl FnOnce(&mut ContainerRecord),
    ) -> Result<Arc<ContainerRecord>> {
        self.containers()
            .observe(id, f)?
            .ok_or_else(|| Error::NotFound(format!("container {} not found", crate::shown(id))))
    }

    pub(crate) fn emit(&self, rec: &ContainerRecord, kind: ContainerEventKind) {
        let _ = self.container_events().send(ContainerEvent {
            container_id: rec.id.clone(),
            pod_id: rec.pod_id.clone(),
            kind,
            at_ns: now_ns(),
        });
    }
}

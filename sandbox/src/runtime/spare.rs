//! Taking, refilling and releasing the spare shim ([`Spare`]).

use std::path::Path;

use super::Runtime;
use crate::shim::spare::{Spare, fill_spare};
use crate::shim::{self, Shim};

impl Runtime {
    /// The spare slot, unless a spare is being started right now.
    pub(crate) fn spare_guard(&self) -> Option<tokio::sync::MutexGuard<'_, Option<Spare>>> {
        self.spare.try_lock().ok()
    }

    /// Shuts the spare shim down (berth is stopping: a spare is of use to no one else).
    pub async fn release_spare(&self) {
        let sp = self.spare.lock().await.take();
        if let Some(sp) = sp {
            let address = sp.shim.address.clone();
            sp.discard().await;
            // berth is about to exit: the watch Shutdown started would die with it.
            shim::remove_socket_when_closed(address, shim::SOCKET_LINGER).await;
        }
    }

    /// Starts a spare shim in the background for the default handler's shim binary.
    pub(crate) fn refill_spare(&self) {
        if let Some(fill) = self.spare_fill() {
            tokio::spawn(fill);
        }
    }

    /// Starts the spare shim and waits until it is ready (or failed): the last step of
    /// recovery.
    pub(crate) async fn fill_spare_now(&self) {
        if let Some(fill) = self.spare_fill() {
            fill.await;
        }
    }

    pub(crate) fn spare_fill(&self) -> Option<impl std::future::Future<Output = ()> + use<>> {
        if !self.cfg.warm_shim {
            return None;
        }
        let (_, _, binary) = self.resolve_handler("").ok()?;
        Some(fill_spare(
            self.spare.clone(),
            self.cfg.state_dir.clone(),
            self.cfg.shim_env.clone(),
            binary,
        ))
    }

    /// Takes the spare shim for `binary`, if one is ready, moving its directory to `dir`. A
    /// spare still starting is not waited for: it starts at the lowest priority, which on a
    /// busy node may take long, so the pod starts its own shim and the spare serves a later one.
    pub(crate) async fn take_spare(
        &self,
        binary: &Path,
        dir: &Path,
    ) -> Option<(Shim, shim::ShimLog)> {
        let sp = {
            let Ok(mut g) = self.spare.try_lock() else {
                tracing::debug!("the spare shim is still starting; the pod starts its own");
                return None;
            };
            match g.as_ref() {
                Some(sp) if sp.binary == binary => g.take(),
                _ => None,
            }
        }?;
        if let Err(e) = shim::foreground(sp.pid) {
            tracing::warn!(err = %e, "could not give the spare shim normal priority; shutting it down");
            sp.discard().await;
            return None;
        }
        if let Err(e) = std::fs::rename(&sp.dir, dir) {
            tracing::warn!(err = %e, "could not move the spare shim's directory; shutting it down");
            sp.discard().await;
            return None;
        }
        Some((sp.shim, sp.log))
    }
}

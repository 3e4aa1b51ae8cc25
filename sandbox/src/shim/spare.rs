//! The spare shim: one shim started ahead of time, at background priority, so that
//! RunPodSandbox does not wait for `shim start`.
use std::path::PathBuf;
use std::sync::Arc;

use crate::error::Error;
use crate::shim::{self, Shim, ShimEnv};

/// A runc shim started before any pod asked for it, in a bundle directory of its own under
/// `<state>/spare/`. RunPodSandbox renames that directory to the pod's (the shim's working
/// directory moves with it) and sends the task there: `shim start` (~10 ms of a pod's
/// start-up) is then off the pod's path. The shim binary takes the runtime's options with
/// each task, so one spare serves every handler that uses the same shim binary.
pub(crate) struct Spare {
    /// `<state>/spare/<spare id>`: holds `bundle/` (the shim's working directory).
    pub(crate) dir: PathBuf,
    pub(crate) binary: PathBuf,
    pub(crate) shim: Shim,
    /// The shim process, running at background priority until taken.
    pub(crate) pid: u32,
    pub(crate) log: shim::ShimLog,
}

impl Spare {
    /// Shuts the shim down and removes its directory.
    pub(crate) async fn discard(self) {
        let id = self
            .dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let _ = self.shim.shutdown(&id).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Spare shim ids start with this (tests and operators tell them from pods' shims by it).
pub const SPARE_PREFIX: &str = "spare-";

/// Starts a spare shim for `binary` unless one is there.
pub(crate) async fn fill_spare(
    slot: Arc<tokio::sync::Mutex<Option<Spare>>>,
    state_dir: PathBuf,
    env: ShimEnv,
    binary: PathBuf,
) {
    let mut g = slot.lock().await;
    if g.is_some() {
        return;
    }
    let id = format!("{SPARE_PREFIX}{}", hex::encode(rand::random::<[u8; 8]>()));
    let dir = state_dir.join("spare").join(&id);
    let bundle = dir.join("bundle");
    let res = async {
        std::fs::create_dir_all(bundle.join("rootfs"))
            .map_err(|e| Error::io(format!("create {}", bundle.display()), e))?;
        // `shim start` reads the bundle's spec for the pod grouping annotation.
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": {"io.kubernetes.cri.sandbox-id": id},
        });
        std::fs::write(bundle.join("config.json"), spec.to_string())
            .map_err(|e| Error::io("write spare config.json", e))?;
        let log = shim::open_log(&bundle, &id)?;
        let shim = shim::start_and_connect(&binary, &env, &id, &bundle, &[], true).await?;
        let pid = match shim.connect_info(&id).await {
            Ok((pid, _)) => {
                if let Err(e) = shim::background(pid) {
                    tracing::debug!(err = %e, "could not lower the spare shim's priority");
                }
                pid
            }
            Err(e) => {
                let _ = shim.shutdown(&id).await;
                if let Ok(address) = std::fs::read_to_string(bundle.join("address")) {
                    shim::kill_unreachable(&env, &id, address.trim()).await;
                }
                return Err(e);
            }
        };
        Ok::<_, Error>(Spare {
            dir: dir.clone(),
            binary: binary.clone(),
            shim,
            pid,
            log,
        })
    }
    .await;
    match res {
        Ok(sp) => *g = Some(sp),
        Err(e) => {
            tracing::warn!(err = %e, "could not start a spare shim; pods start their own");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

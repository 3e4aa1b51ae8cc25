//! The runtime: pods and containers in their record tables, their shims, the spare shim,
//! images, networks and events. Each lifecycle call is a method in a file named after it
//! (`pod/run.rs`, `container/start.rs`); this file holds what they share.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod features;
mod node;
mod spare;

pub use features::{OciFeatures, kernel_version};

pub use node::{HandlerStatus, NetworkStatus};

use berth_image::ImageService;
use berth_network::cni::{Cni, CniPaths};
use berth_network::netns::NetnsDir;
use berth_store::Store;

use crate::error::{Error, Result};
use crate::pod::PodRecord;
use crate::records::Records;
use crate::shim::events::{EventHub, TaskEvent};
use crate::shim::registry::Shims;
use crate::shim::spare::Spare;
use crate::shim::{self, RuncOptions, Shim, ShimEnv};

/// A RuntimeClass handler, resolved from the config.
#[derive(Debug, Clone)]
pub struct Handler {
    /// `io.containerd.runc.v2`, …
    pub runtime_type: String,
    /// The shim binary name it implies (`containerd-shim-runc-v2`).
    pub shim: String,
    /// An explicit shim path.
    pub runtime_path: Option<PathBuf>,
    /// runc shim options.
    pub options: RuncOptions,
    /// Its runtime can make a mount read-only recursively (runc's `rro`: runc 1.1 on
    /// Linux 5.12 and later).
    pub recursive_read_only: bool,
    /// Its runtime can run pods in user namespaces of their own (runc 1.2 or crun 1.8 on
    /// Linux 6.3 and later: see [`OciFeatures`]).
    pub user_namespaces: bool,
    /// Its runtime idmaps bind mounts itself; otherwise berth does
    /// ([`crate::userns::binds`]).
    pub idmap_mounts: bool,
}

/// How the pod manager is set up.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// berth's runtime state directory.
    pub state_dir: PathBuf,
    /// The pause image.
    pub sandbox_image: String,
    /// The handler for pods that name none.
    pub default_handler: String,
    /// Handlers by name.
    pub handlers: BTreeMap<String, Handler>,
    /// What shims are told about berth.
    pub shim_env: ShimEnv,
    /// CNI directories.
    pub cni: CniPaths,
    /// Container log rotation.
    pub log_rotation: crate::logs::Rotation,
    /// Keep one shim started ahead of time, so RunPodSandbox skips `shim start`.
    pub warm_shim: bool,
    /// Where CDI spec files are, later ones winning; empty when CDI is off.
    pub cdi_spec_dirs: Vec<PathBuf>,
    /// NRI, when it is on.
    pub nri: Option<berth_nri::Nri>,
}

/// What the stats calls remember of a container between calls; it goes with the container.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct StatsMemory {
    /// When its writable layer was last measured, and its (bytes, inodes) then.
    pub(crate) layer: Option<(std::time::Instant, (u64, u64))>,
    /// The last CPU sample (time ns, CPU ns), for the usage rate.
    pub(crate) cpu: Option<(i64, u64)>,
}

/// Container id → what its stats calls remember.
type StatsCache = HashMap<String, StatsMemory>;

/// Runs, stops, removes and reports pod sandboxes.
pub struct Runtime {
    pub(crate) cfg: RuntimeConfig,
    pub(crate) images: Arc<ImageService>,
    pub(crate) cni: Cni,
    pub(crate) netns: NetnsDir,
    pub(crate) pods: Records<PodRecord>,
    pub(crate) shims: Shims,
    pub(crate) hub: EventHub,
    /// Each container's NRI StopContainer delivery (see [`crate::nri`]).
    pub(crate) nri_stops: crate::nri::StopOnce,
    pub(crate) containers: Records<crate::container::ContainerRecord>,
    pub(crate) container_logs: std::sync::Mutex<HashMap<String, crate::logs::ContainerLog>>,
    pub(crate) container_events: tokio::sync::broadcast::Sender<crate::container::ContainerEvent>,
    /// Per container: its writable layer's usage with when it was measured (walking a layer
    /// is too slow to repeat on every stats call), and its last CPU sample.
    pub(crate) stats_memory: std::sync::Mutex<StatsCache>,
    /// A shim started ahead of time (see [`Spare`]).
    pub(crate) spare: Arc<tokio::sync::Mutex<Option<Spare>>>,
    /// The manager itself, for tasks it starts (shim watches).
    pub(crate) me: std::sync::Weak<Runtime>,
    /// Pods still to reconcile after a restart, plus one for the orphan sweep that follows.
    pub(crate) recovering: std::sync::atomic::AtomicUsize,
    /// Containers whose task this berth has deleted from their shim.
    pub(crate) reaped: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Pods whose RunPodSandbox is under way, as far as it got (see
    /// [`Runtime::get_even_starting`]).
    pub(crate) starting: std::sync::Mutex<HashMap<String, Arc<PodRecord>>>,
}

impl Runtime {
    /// Loads pods and containers from their records and starts following shim events; then,
    /// in the background, reconnects to their shims (see [`crate::recover`]), removes what no
    /// record owns and starts the spare shim. Returns as soon as the records are loaded.
    pub async fn open(
        cfg: RuntimeConfig,
        store: Store,
        images: Arc<ImageService>,
        hub: EventHub,
    ) -> Result<Arc<Self>> {
        let netns = NetnsDir::new(cfg.state_dir.join("netns"));
        let cni = Cni::new(cfg.cni.clone());
        let mgr = Arc::new_cyclic(|me| Runtime {
            cfg,
            images,
            cni,
            netns,
            pods: Records::new(store.clone()),
            shims: Shims::default(),
            hub,
            nri_stops: Default::default(),
            containers: Records::new(store.clone()),
            container_logs: Default::default(),
            container_events: tokio::sync::broadcast::channel(1024).0,
            stats_memory: Default::default(),
            spare: Default::default(),
            me: me.clone(),
            recovering: Default::default(),
            reaped: Default::default(),
            starting: Default::default(),
        });
        // Subscribed before recovery: an exit published while berth reconnects is buffered,
        // not lost.
        let mut events = mgr.hub.subscribe();
        let pending = mgr.load()?;
        let weak = Arc::downgrade(&mgr);
        tokio::spawn(async move {
            loop {
                let ev = match events.recv().await {
                    Ok(e) => e,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "shim events were dropped");
                        continue;
                    }
                    Err(_) => return,
                };
                let Some(m) = weak.upgrade() else { return };
                match ev {
                    TaskEvent::Exit {
                        container_id,
                        id,
                        exit_status,
                        exited_at_ns,
                        ..
                    } if container_id == id
                        && !m.on_pause_exit(&container_id, exit_status)
                        && m.on_container_exit(&container_id, exit_status, exited_at_ns) =>
                    {
                        // Delete the task (the shim unmounts its rootfs) off this loop.
                        let m = m.clone();
                        tokio::spawn(async move {
                            let lock = m.containers.lock(&container_id);
                            let _g = lock.lock().await;
                            m.reap_container(&container_id).await;
                        });
                    }
                    TaskEvent::Oom { container_id } => m.on_container_oom(&container_id),
                    _ => {}
                }
            }
        });
        tokio::spawn(mgr.clone().reconcile(pending));
        Ok(mgr)
    }

    /// How much of the recovery after a restart is still to do: pods to reconcile, plus one
    /// for the sweep of orphans that follows and one for starting the spare shim. 0 once
    /// berth is fully back.
    pub fn recovering(&self) -> usize {
        self.recovering.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn set_recovering(&self, pods: usize) {
        // Each pod, the orphan sweep, the spare shim.
        self.recovering
            .store(pods + 2, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn recovered_one(&self) {
        let _ = self.recovering.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |n| n.checked_sub(1),
        );
    }

    /// Notes (or, with `reaped` false, forgets) that container `id`'s task was deleted;
    /// returns whether it was noted before.
    pub(crate) fn note_reaped(&self, id: &str, reaped: bool) -> bool {
        let mut set = self.reaped.lock().unwrap_or_else(|p| p.into_inner());
        if reaped {
            !set.insert(id.to_string())
        } else {
            set.remove(id)
        }
    }

    pub(crate) fn me(&self) -> std::sync::Weak<Runtime> {
        self.me.clone()
    }

    /// The pod table.
    pub(crate) fn pods(&self) -> &Records<PodRecord> {
        &self.pods
    }

    /// The container table.
    pub(crate) fn containers(&self) -> &Records<crate::container::ContainerRecord> {
        &self.containers
    }

    pub(crate) fn state_dir(&self) -> &Path {
        &self.cfg.state_dir
    }

    pub(crate) fn images(&self) -> &ImageService {
        &self.images
    }

    /// Where containers' writable layers live: the filesystem their stats report.
    pub fn writable_layer_fs(&self) -> PathBuf {
        self.images.snapshots_dir()
    }

    /// The handlers by name, and under the name "" the default one (pods that name no
    /// handler run there; containerd lists it so too), for the Status call.
    pub fn listed_handlers(&self) -> Vec<(String, &Handler)> {
        let mut v: Vec<(String, &Handler)> = self
            .cfg
            .handlers
            .iter()
            .map(|(n, h)| (n.clone(), h))
            .collect();
        if let Some(h) = self.cfg.handlers.get(&self.cfg.default_handler) {
            v.insert(0, (String::new(), h));
        }
        v
    }

    pub(crate) fn handler_options(&self, handler: &str) -> Option<RuncOptions> {
        self.cfg.handlers.get(handler).map(|h| h.options.clone())
    }

    pub(crate) fn log_rotation(&self) -> crate::logs::Rotation {
        self.cfg.log_rotation
    }

    pub(crate) fn container_logs(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, crate::logs::ContainerLog>> {
        self.container_logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Container lifecycle events, for GetContainerEvents.
    pub fn container_events(
        &self,
    ) -> &tokio::sync::broadcast::Sender<crate::container::ContainerEvent> {
        &self.container_events
    }

    pub(crate) fn stats_memory(&self) -> std::sync::MutexGuard<'_, StatsCache> {
        self.stats_memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The handlers and whether each one's shim binary is installed.
    pub fn handlers(&self) -> &BTreeMap<String, Handler> {
        &self.cfg.handlers
    }

    /// Resolves a handler name to its shim binary.
    pub fn resolve_handler(&self, name: &str) -> Result<(String, &Handler, PathBuf)> {
        let name = if name.is_empty() {
            self.cfg.default_handler.as_str()
        } else {
            name
        };
        let h = self.cfg.handlers.get(name).ok_or_else(|| {
            Error::Invalid(format!(
                "no runtime handler {name:?} is configured (configured: {})",
                self.cfg
                    .handlers
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let bin = shim::find_shim(&h.shim, h.runtime_path.as_deref())?;
        Ok((name.to_string(), h, bin))
    }

    /// The ids of every pod (records only).
    pub(crate) fn pod_ids(&self) -> Vec<String> {
        self.pods.ids()
    }

    /// The cgroup parents pods asked for.
    pub(crate) fn pod_cgroup_parents(&self) -> Vec<String> {
        self.pods
            .all()
            .iter()
            .map(|r| r.config.cgroup_parent.clone())
            .filter(|p| !p.is_empty())
            .collect()
    }

    pub(crate) fn cni(&self) -> &Cni {
        &self.cni
    }

    pub(crate) fn shim_env(&self) -> &shim::ShimEnv {
        &self.cfg.shim_env
    }

    /// Notes the pid of pod `id`'s shim at `address`.
    pub(crate) fn note_shim_pid(&self, id: &str, address: &str, pid: u32) {
        self.shims.note_pid(id, address, pid);
    }

    /// The pid of pod `id`'s shim at `address`, if its watch learned it.
    pub(crate) fn shim_pid(&self, id: &str, address: &str) -> Option<u32> {
        self.shims.pid(id, address)
    }

    pub(crate) fn keep_shim_log(&self, id: &str, log: shim::ShimLog) {
        self.shims.keep_log(id, log);
    }

    /// Makes `s` the shim of pod `id` and watches its process.
    pub(crate) fn register_shim(&self, id: &str, s: Shim) {
        self.watch_shim(id, &s);
        self.shims.insert(id, s);
    }

    pub(crate) fn shim_of(&self, pod_id: &str) -> Option<Shim> {
        self.shims.get(pod_id)
    }

    pub(crate) fn forget_shim(&self, id: &str) {
        self.shims.forget(id);
    }

    /// How many pods have a shim now, by their handler (berth's metrics).
    pub fn shims_by_handler(&self) -> std::collections::BTreeMap<String, usize> {
        let mut out = std::collections::BTreeMap::new();
        for id in self.shims.pods() {
            if let Ok(rec) = self.get(&id) {
                *out.entry(rec.handler.clone()).or_insert(0) += 1;
            }
        }
        out
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

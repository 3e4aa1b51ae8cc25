//! Pod sandboxes: the pause container under a shim v2, its network namespace and CNI
//! attachment, its files (`hostname`, `resolv.conf`, `hosts`, `/dev/shm`), its snapshot.
//!
//! State machine (persisted in the `sandboxes` table; CRI state in brackets):
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
//!
//! Every step of RunPodSandbox registers its undo; a failure runs them in reverse and, if an
//! undo itself fails, keeps the pod as NotReady so a later Stop/Remove finishes the job.

use crate::now_ns;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use berth_image::ImageService;
use berth_image::store::Store;
use berth_network::cni::{Attachment, Cni, CniPaths};
use berth_network::netns::NetnsDir;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::records::{Durability, Records};
use crate::shim::events::{EventHub, TaskEvent};
use crate::shim::{self, RuncOptions, Shim, ShimEnv};
use crate::spec::oci::Spec;
use crate::spec::own_oom_score_adj;
use crate::spec::pause::SandboxSpec;

mod config;

pub use config::*;

pub(crate) const TABLE: &str = "sandboxes";
const SIGKILL: u32 = 9;

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
}

/// How the pod manager is set up.
#[derive(Debug, Clone)]
pub struct PodManagerConfig {
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
}

/// Ready or not.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum PodState {
    /// The pause container runs.
    Ready,
    /// Stopped, failed half-way, or its pause container died.
    NotReady,
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

impl crate::records::Record for PodRecord {
    const TABLE: &'static str = TABLE;
    fn id(&self) -> &str {
        &self.id
    }
}

impl PodRecord {
    /// `<name>_<namespace>_<uid>_<attempt>`, the name the registrar holds.
    pub fn name(&self) -> String {
        pod_name(&self.config.meta)
    }
}

fn pod_name(m: &PodMeta) -> String {
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

/// Container id → (when measured, (bytes, inodes)) of its writable layer.
type LayerUsageCache = HashMap<String, (std::time::Instant, (u64, u64))>;

/// Runs, stops, removes and reports pod sandboxes.
pub struct PodManager {
    cfg: PodManagerConfig,
    images: Arc<ImageService>,
    cni: Cni,
    netns: NetnsDir,
    pods: Records<PodRecord>,
    shims: RwLock<HashMap<String, Shim>>,
    logs: std::sync::Mutex<HashMap<String, shim::ShimLog>>,
    hub: EventHub,
    containers: Records<crate::container::ContainerRecord>,
    container_logs: std::sync::Mutex<HashMap<String, crate::logs::ContainerLog>>,
    container_events: tokio::sync::broadcast::Sender<crate::container::ContainerEvent>,
    /// Writable-layer usage per container, with when it was measured: walking a layer is
    /// too slow to repeat on every stats call.
    layer_usage: std::sync::Mutex<LayerUsageCache>,
    /// A shim started ahead of time (see [`Spare`]).
    spare: Arc<tokio::sync::Mutex<Option<Spare>>>,
    /// The manager itself, for tasks it starts (shim watches).
    me: std::sync::Weak<PodManager>,
    /// Pods still to reconcile after a restart, plus one for the orphan sweep that follows.
    recovering: std::sync::atomic::AtomicUsize,
    /// Containers whose task this berth has deleted from their shim.
    reaped: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Pod id → (shim address, shim pid), as each shim's watch learned it.
    shim_pids: std::sync::Mutex<HashMap<String, (String, u32)>>,
}

/// A runc shim started before any pod asked for it, in a bundle directory of its own under
/// `<state>/spare/`. RunPodSandbox renames that directory to the pod's (the shim's working
/// directory moves with it) and sends the task there: `shim start` (~10 ms of a pod's
/// start-up) is then off the pod's path. The shim binary takes the runtime's options with
/// each task, so one spare serves every handler that uses the same shim binary.
pub(crate) struct Spare {
    /// `<state>/spare/<spare id>`: holds `bundle/` (the shim's working directory).
    pub(crate) dir: PathBuf,
    binary: PathBuf,
    shim: Shim,
    /// The shim process, running at background priority until taken.
    pid: u32,
    log: shim::ShimLog,
}

impl Spare {
    /// Shuts the shim down and removes its directory.
    async fn discard(self) {
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
async fn fill_spare(
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

impl std::fmt::Debug for PodManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodManager").finish_non_exhaustive()
    }
}

enum Undo {
    Record,
    Netns(String),
    Cni(Attachment),
    Dir(PathBuf),
    Shm(PathBuf),
    Snapshot(String),
    Shim(Shim),
}

impl PodManager {
    /// Loads pods and containers from their records and starts following shim events; then,
    /// in the background, reconnects to their shims (see [`crate::recover`]), removes what no
    /// record owns and starts the spare shim. Returns as soon as the records are loaded.
    pub async fn open(
        cfg: PodManagerConfig,
        store: Store,
        images: Arc<ImageService>,
        hub: EventHub,
    ) -> Result<Arc<Self>> {
        let netns = NetnsDir::new(cfg.state_dir.join("netns"));
        let cni = Cni::new(cfg.cni.clone());
        let mgr = Arc::new_cyclic(|me| PodManager {
            cfg,
            images,
            cni,
            netns,
            pods: Records::new(store.clone()),
            shims: RwLock::new(HashMap::new()),
            logs: Default::default(),
            hub,
            containers: Records::new(store.clone()),
            container_logs: Default::default(),
            container_events: tokio::sync::broadcast::channel(1024).0,
            layer_usage: Default::default(),
            spare: Default::default(),
            me: me.clone(),
            recovering: Default::default(),
            reaped: Default::default(),
            shim_pids: Default::default(),
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

    /// Notes the pid of pod `id`'s shim at `address`.
    pub(crate) fn note_shim_pid(&self, id: &str, address: &str, pid: u32) {
        self.shim_pids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), (address.to_string(), pid));
    }

    /// The pid of pod `id`'s shim at `address`, if its watch learned it.
    fn shim_pid(&self, id: &str, address: &str) -> Option<u32> {
        self.shim_pids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .filter(|(a, _)| a == address)
            .map(|(_, p)| *p)
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

    pub(crate) fn me(&self) -> std::sync::Weak<PodManager> {
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

    pub(crate) fn keep_shim_log(&self, id: &str, log: shim::ShimLog) {
        self.logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), log);
    }

    /// Makes `s` the shim of pod `id` and watches its process.
    pub(crate) fn register_shim(&self, id: &str, s: Shim) {
        self.watch_shim(id, &s);
        self.shims
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), s);
    }

    /// Records that pod `id` was found in `state` (its pause or its shim died): memory is
    /// changed whether or not the store takes the write, which is retried by the next change
    /// of the record; a restart learns the state again from the shim.
    pub(crate) fn set_pod_state(&self, id: &str, state: PodState) -> Result<()> {
        self.pods.observe(id, |r| r.state = state).map(|_| ())
    }

    /// Changes pod `id`'s record, durably, then in memory.
    fn change_pod(&self, id: &str, f: impl FnOnce(&mut PodRecord)) -> Result<()> {
        self.pods.update(id, Durability::Now, f).map(|_| ())
    }

    /// Handles an exit that may be a pause container's; false if `id` is no pod.
    fn on_pause_exit(&self, id: &str, status: u32) -> bool {
        let ready = match self.pods.get(id) {
            None => return false,
            Some(rec) => rec.state == PodState::Ready,
        };
        if ready {
            tracing::info!(
                pod = id,
                exit_status = status,
                "pause container exited; pod is NotReady"
            );
            if let Err(e) = self.set_pod_state(id, PodState::NotReady) {
                tracing::error!(pod = id, err = %e, "failed to persist pod state");
            }
        }
        true
    }

    pub(crate) fn state_dir(&self) -> &Path {
        &self.cfg.state_dir
    }

    pub(crate) fn pod_dir(&self, id: &str) -> PathBuf {
        self.dir(id)
    }

    pub(crate) fn images(&self) -> &ImageService {
        &self.images
    }

    /// Where containers' writable layers live: the filesystem their stats report.
    pub fn writable_layer_fs(&self) -> PathBuf {
        self.images.snapshots_dir()
    }

    pub(crate) fn shim_of(&self, pod_id: &str) -> Option<Shim> {
        self.shims
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(pod_id)
            .cloned()
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

    pub(crate) fn layer_usage(&self) -> std::sync::MutexGuard<'_, LayerUsageCache> {
        self.layer_usage.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.cfg.state_dir.join("sandboxes").join(id)
    }

    pub(crate) fn bundle(&self, id: &str) -> PathBuf {
        self.dir(id).join("bundle")
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

    /// The spare slot, unless a spare is being started right now.
    pub(crate) fn spare_guard(&self) -> Option<tokio::sync::MutexGuard<'_, Option<Spare>>> {
        self.spare.try_lock().ok()
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

    fn spare_fill(&self) -> Option<impl std::future::Future<Output = ()> + use<>> {
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
    async fn take_spare(&self, binary: &Path, dir: &Path) -> Option<(Shim, shim::ShimLog)> {
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

    /// RunPodSandbox.
    pub async fn run(&self, config: PodConfig) -> Result<String> {
        let (handler_name, handler, shim_binary) = self.resolve_handler(&config.runtime_handler)?;
        let handler = handler.clone();
        let id = hex::encode(rand::random::<[u8; 32]>());
        let name = pod_name(&config.meta);
        let reservation = self.pods.names().reserve(&name, &id)?;
        let lock = self.pods.lock(&id);
        let _g = lock.lock().await;

        let image = match self.images.resolve(&self.cfg.sandbox_image) {
            Ok(r) => r,
            Err(_) => self
                .images
                .pull(&self.cfg.sandbox_image, None)
                .await
                .map_err(|error| Error::SandboxImage {
                    image: self.cfg.sandbox_image.clone(),
                    error,
                })?,
        };
        let image_config = self.images.config(&image).map_err(Error::Image)?;

        let mut rec = PodRecord {
            id: id.clone(),
            config: Arc::new(config.clone()),
            created_ns: now_ns(),
            state: PodState::NotReady,
            netns: None,
            network_down: false,
            ips: vec![],
            pid: 0,
            handler: handler_name,
            shim_binary: shim_binary.clone(),
            cni_result: None,
            spec: None,
        };
        let mut undo: Vec<Undo> = Vec::new();
        let res = self
            .run_steps(&mut rec, &handler, &image, &image_config, &mut undo)
            .await;
        match res {
            Ok(()) => {
                rec.state = PodState::Ready;
                self.pods.put(rec)?;
                reservation.commit();
                Ok(id)
            }
            Err(e) => {
                let mut failed_undo = false;
                for step in undo.into_iter().rev() {
                    if let Err(ue) = self.undo(&id, step).await {
                        tracing::error!(pod = id, err = %ue, "rollback step failed; pod kept as NotReady for a later Stop/Remove");
                        failed_undo = true;
                    }
                }
                if failed_undo {
                    self.pods.keep(rec);
                    reservation.commit();
                }
                Err(e)
            }
        }
    }

    /// The pause container's bundle: the pod's files (hostname, hosts, resolv.conf), its shm
    /// mount, its root filesystem snapshot and its spec (written to `config.json`). Returns
    /// the rootfs mounts, the spec and the bundle directory; what it made is in `undo`.
    fn prepare_pause_bundle(
        &self,
        rec: &PodRecord,
        dir: &Path,
        image: &berth_image::ImageRecord,
        image_config: &berth_image::manifest::ImageConfig,
        undo: &mut Vec<Undo>,
        lap: &dyn Fn(&str),
    ) -> Result<(Vec<berth_image::snapshot::MountSpec>, Spec, PathBuf)> {
        let (id, cfg) = (&rec.id, &rec.config);
        write_pod_files(dir, cfg)?;
        lap("files");
        let shm = if cfg.host_ipc {
            None
        } else {
            let shm = dir.join("shm");
            mount_shm(&shm)?;
            undo.push(Undo::Shm(shm.clone()));
            Some(shm)
        };
        lap("shm");

        let mounts = self
            .images
            .snapshots()
            .prepare(id, image.top_chain())
            .map_err(Error::Image)?;
        undo.push(Undo::Snapshot(id.clone()));
        lap("snapshot");

        let cc = image_config.config.clone().unwrap_or_default();
        let mut args = cc.entrypoint.clone().unwrap_or_default();
        args.extend(cc.cmd.clone().unwrap_or_default());
        // The pause user is resolved as a container's is: through the image's own
        // /etc/passwd and /etc/group, so a named USER works.
        let ids = crate::users::Accounts::from_mounts(&mounts)?.resolve(
            &cc.user,
            cfg.run_as_user,
            "",
            cfg.run_as_group,
            &cfg.supplemental_groups,
        )?;
        let mut annotations = cfg.annotations.clone();
        annotations.insert("io.kubernetes.cri.container-type".into(), "sandbox".into());
        annotations.insert("io.kubernetes.cri.sandbox-id".into(), id.clone());
        annotations.insert(
            "io.kubernetes.cri.sandbox-name".into(),
            cfg.meta.name.clone(),
        );
        annotations.insert(
            "io.kubernetes.cri.sandbox-namespace".into(),
            cfg.meta.namespace.clone(),
        );
        annotations.insert("io.kubernetes.cri.sandbox-uid".into(), cfg.meta.uid.clone());
        annotations.insert(
            "io.kubernetes.cri.sandbox-log-directory".into(),
            cfg.log_directory.clone(),
        );
        let spec = SandboxSpec {
            id: id.clone(),
            args,
            env: cc.env.clone().unwrap_or_default(),
            user: (ids.uid, ids.gid, ids.additional),
            hostname: cfg.hostname.clone(),
            netns: rec.netns.clone(),
            host_ipc: cfg.host_ipc,
            host_pid: cfg.host_pid,
            shm,
            cgroup_parent: cfg.cgroup_parent.clone(),
            sysctls: cfg.sysctls.clone(),
            readonly_rootfs: cfg.readonly_rootfs,
            privileged: cfg.privileged,
            seccomp: cfg.seccomp.clone(),
            annotations,
            daemon_oom_score_adj: own_oom_score_adj(),
        }
        .build("rootfs")?;
        let bundle = dir.join("bundle");
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec(&spec).unwrap_or_default(),
        )
        .map_err(|e| Error::io("write config.json", e))?;
        lap("spec");
        Ok((mounts, spec, bundle))
    }

    async fn run_steps(
        &self,
        rec: &mut PodRecord,
        handler: &Handler,
        image: &berth_image::ImageRecord,
        image_config: &berth_image::manifest::ImageConfig,
        undo: &mut Vec<Undo>,
    ) -> Result<()> {
        let id = rec.id.clone();
        let cfg = rec.config.clone();
        let t0 = std::time::Instant::now();
        let lap = |step: &str| {
            tracing::trace!(
                pod = id,
                step,
                us = t0.elapsed().as_micros() as u64,
                "run step"
            )
        };
        // Recorded before any network work: whatever happens next, a record exists that a
        // later Stop/Remove (or the rollback) uses to release the IP and the namespace (whose
        // path is known before it exists; removing a namespace never made is not an error).
        if !cfg.host_network {
            rec.netns = Some(self.netns.path(&netns_name(&id)));
        }
        self.pods.persist(rec)?;
        undo.push(Undo::Record);

        let dir = self.dir(&id);
        let spare = if self.cfg.warm_shim {
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| Error::io(format!("create {}", parent.display()), e))?;
            }
            self.take_spare(&rec.shim_binary, &dir).await
        } else {
            None
        };
        if spare.is_some() {
            self.refill_spare();
        }
        std::fs::create_dir_all(dir.join("bundle/rootfs"))
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        undo.push(Undo::Dir(dir.clone()));
        // A spare taken is a shim to shut down on failure from here on.
        let spare = spare.map(|(s, log)| {
            undo.push(Undo::Shim(s.clone()));
            (s, log)
        });
        let shim_undo_pushed = spare.is_some();
        lap("record+dir");

        // The namespace is made on a blocking thread (netns-rs makes it on a thread of its own,
        // whose exit costs ~1 ms) while the pod's files, shm, snapshot and spec are prepared:
        // its path is known already, and only CNI and runc need it to exist.
        let netns_job = (!cfg.host_network).then(|| {
            let (dir, name) = (self.netns.clone(), netns_name(&id));
            tokio::task::spawn_blocking(move || dir.create(&name))
        });
        let prepared = self.prepare_pause_bundle(rec, &dir, image, image_config, undo, &lap);
        if let Some(job) = netns_job {
            let made = job.await;
            // Also when preparing failed: the rollback must remove a namespace that was made.
            if !matches!(made, Ok(Err(_))) {
                undo.push(Undo::Netns(netns_name(&id)));
            }
            let path = made
                .map_err(|e| Error::io("create the pod's network namespace", e.into()))?
                .map_err(Error::Network)?;
            if rec.netns.as_ref() != Some(&path) {
                rec.netns = Some(path);
                self.pods.persist(rec)?;
            }
            lap("netns");
        }
        let (mounts, spec, bundle) = prepared?;
        rec.spec = Some(Arc::new(spec));

        // The network and the pause container are independent until the pod is reported
        // ready: runc only needs the (empty) netns to exist. CNI ADD runs while the shim starts
        // and runc creates the task; both must succeed, and both are undone on failure.
        let rootfs = crate::shim::rootfs_mounts(mounts);
        let network = async {
            if cfg.host_network {
                return (None, Ok(None));
            }
            let a = self.attachment(rec);
            let net = match self.cni.network() {
                Ok(n) => n,
                Err(e) => return (None, Err(Error::Network(e))),
            };
            let r = self
                .cni
                .add(&net, &a)
                .await
                .map_err(Error::Network)
                .map(Some);
            lap("cni add");
            (Some(Undo::Cni(a)), r)
        };
        let task = async {
            let s = match spare {
                Some((s, log)) => {
                    self.logs
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id.clone(), log);
                    s
                }
                None => {
                    let log = match shim::open_log(&bundle, &id) {
                        Ok(l) => l,
                        Err(e) => return (None, Err(e)),
                    };
                    self.logs
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id.clone(), log);
                    match shim::start_and_connect(
                        &rec.shim_binary,
                        &self.cfg.shim_env,
                        &id,
                        &bundle,
                        &[],
                        false,
                    )
                    .await
                    {
                        Ok(s) => s,
                        Err(e) => return (None, Err(e)),
                    }
                }
            };
            lap("shim started");
            let started = async {
                let pid = s
                    .create(
                        &id,
                        &bundle,
                        rootfs,
                        ["", "", ""],
                        false,
                        Some(handler.options.clone()),
                    )
                    .await?;
                lap("task created");
                s.start(&id).await?;
                lap("task started");
                Ok(pid)
            }
            .await;
            let undo = (!shim_undo_pushed).then(|| Undo::Shim(s.clone()));
            (undo, started.map(|pid| (s, pid)))
        };
        let ((net_undo, net_res), (task_undo, task_res)) = tokio::join!(network, task);
        undo.extend(net_undo);
        undo.extend(task_undo);
        // When both fail, the network's error is the one to report: it is usually the cause.
        let net = net_res?;
        let (s, pid) = task_res?;
        if let Some(result) = net {
            rec.ips = result.ips.iter().map(|i| i.ip().to_string()).collect();
            rec.cni_result = Some(Arc::new(result.raw));
        }
        rec.pid = pid;
        self.register_shim(&id, s);
        Ok(())
    }

    fn attachment(&self, rec: &PodRecord) -> Attachment {
        let m = &rec.config.meta;
        let mut caps = serde_json::Map::new();
        if !rec.config.port_mappings.is_empty() {
            let pm: Vec<Value> = rec
                .config
                .port_mappings
                .iter()
                .filter(|p| p.host_port > 0)
                .map(|p| serde_json::json!({"hostPort": p.host_port, "containerPort": p.container_port, "protocol": p.protocol, "hostIP": p.host_ip}))
                .collect();
            caps.insert("portMappings".into(), Value::Array(pm));
        }
        Attachment {
            container_id: rec.id.clone(),
            netns: rec.netns.clone().unwrap_or_default(),
            ifname: "eth0".into(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), m.namespace.clone()),
                ("K8S_POD_NAME".into(), m.name.clone()),
                ("K8S_POD_INFRA_CONTAINER_ID".into(), rec.id.clone()),
                ("K8S_POD_UID".into(), m.uid.clone()),
            ],
            capabilities: caps,
        }
    }

    async fn undo(&self, id: &str, step: Undo) -> Result<()> {
        match step {
            // The name stays reserved: the failed RunPodSandbox releases it.
            Undo::Record => self.pods.remove_record(id),
            Undo::Netns(name) => self.netns.remove(&name).map_err(Error::Network),
            Undo::Cni(a) => {
                let current = self.cni.network().ok();
                self.cni
                    .del(current.as_ref(), &a)
                    .await
                    .map_err(Error::Network)
            }
            Undo::Dir(d) => match std::fs::remove_dir_all(&d) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(Error::io(format!("remove {}", d.display()), e))
                }
                _ => Ok(()),
            },
            Undo::Shm(p) => unmount(&p),
            Undo::Snapshot(key) => self
                .images
                .snapshots()
                .remove_active(&key)
                .map_err(Error::Image),
            Undo::Shim(s) => self.shut_down_pause(&s, id).await,
        }
    }

    /// StopPodSandbox: stops the pause container, tears down the network, unmounts shm.
    /// Idempotent; an unknown id is NotFound.
    pub async fn stop(&self, id: &str) -> Result<()> {
        let id = self.resolve(id)?;
        let lock = self.pods.lock(&id);
        let _g = lock.lock().await;
        let rec = self.get(&id)?;
        self.stop_pod_containers(&id).await?;
        self.stop_task(&rec).await?;
        let network = rec.netns.as_ref().filter(|_| !rec.network_down);
        if let Some(ns) = network {
            let a = self.attachment(&rec);
            // DEL with the config ADD used (cached with its result); without a cached result
            // (berth died during ADD, or before it) with the network's config: the CNI spec
            // makes DEL idempotent, and host-local releases the pod's lease by its id.
            let current = self.cni.network().ok();
            if ns.exists() {
                self.cni
                    .del(current.as_ref(), &a)
                    .await
                    .map_err(Error::Network)?;
            } else {
                // The namespace is gone (a reboot emptied the state dir, or someone removed
                // it). DEL still releases what plugins hold outside it (IPAM leases, port
                // mappings); a plugin that insists on the namespace must not keep the pod
                // from stopping.
                if let Err(e) = self.cni.del(current.as_ref(), &a).await {
                    tracing::warn!(pod = id, err = %e, "CNI DEL without the pod's network namespace failed");
                }
            }
            self.netns
                .remove(&netns_name(&id))
                .map_err(Error::Network)?;
        }
        unmount(&self.dir(&id).join("shm"))?;
        self.change_pod(&id, |r| {
            r.state = PodState::NotReady;
            r.network_down = r.netns.is_some();
        })
    }

    /// Kills the pause task, waits for it (at most 10 s), deletes it and shuts the shim down;
    /// then forgets the shim. Tasks that are already gone are fine.
    async fn shut_down_pause(&self, s: &Shim, id: &str) -> Result<()> {
        match s.kill(id, SIGKILL, true).await {
            Ok(()) => {}
            Err(e) if e.kind() == crate::ErrorKind::NotFound => {}
            Err(e) if e.shim_gone() => return Err(e),
            Err(e) => tracing::debug!(pod = id, err = %e, "kill failed (already stopped?)"),
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), s.wait(id)).await;
        let unknown = match s.delete(id).await {
            Ok(_) => false,
            Err(e) if e.kind() == crate::ErrorKind::NotFound => true,
            Err(e) => return Err(e),
        };
        let bundle = self.bundle(id);
        let watch = self
            .shim_pid(id, &s.address)
            .and_then(|p| shim::watch::Watch::open(p, &bundle).ok());
        s.shutdown(id).await?;
        // A shim exits on Shutdown only once it holds no task. One that stays holds a task
        // berth no longer knows (a container whose record went while berth was down): it
        // is killed, and the tasks it held are removed with the runtime's own orphans.
        let mut lingered = false;
        if let Some(w) = watch
            && tokio::time::timeout(std::time::Duration::from_secs(3), w.exited())
                .await
                .is_err()
        {
            tracing::warn!(
                pod = id,
                "the pod's shim did not exit on Shutdown; killing it"
            );
            self.kill_daemons_in(&bundle).await;
            lingered = true;
        }
        if unknown || lingered {
            // The shim did not know the pause task (berth died while the shim created it, and
            // runc may hold it still), or was killed with tasks in it.
            if let Ok(rec) = self.get(id) {
                self.delete_dead_tasks(&rec, lingered).await;
            }
        }
        let _ = std::fs::remove_file(bundle.join("address"));
        self.forget_shim(id);
        Ok(())
    }

    pub(crate) fn shim_env(&self) -> &shim::ShimEnv {
        &self.cfg.shim_env
    }

    pub(crate) fn forget_shim(&self, id: &str) {
        self.shim_pids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.shims
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    async fn stop_task(&self, rec: &PodRecord) -> Result<()> {
        let id = &rec.id;
        let dead = match self.shim_of(id) {
            Some(s) => match self.shut_down_pause(&s, id).await {
                Err(e) if e.shim_gone() => {
                    tracing::warn!(pod = id, err = %e, "the pod's shim died; cleaning up after it");
                    self.forget_shim(id);
                    true
                }
                other => {
                    other?;
                    false
                }
            },
            None => true,
        };
        if dead {
            // No shim berth can talk to (it died, berth restarted after it did, or berth died
            // while starting it): a daemon still working in the bundle is killed, and the
            // shim binary cleans up what runc left, if anything.
            let bundle = self.bundle(id);
            self.kill_daemons_in(&bundle).await;
            self.delete_dead_tasks(rec, true).await;
            let _ = std::fs::remove_file(bundle.join("address"));
        }
        Ok(())
    }

    /// RemovePodSandbox: stops the pod if needed and removes everything it had. An unknown id
    /// is not an error (CRI: idempotent).
    pub async fn remove(&self, id: &str) -> Result<()> {
        let id = match self.resolve(id) {
            Ok(i) => i,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.stop(&id).await?;
        self.remove_pod_containers(&id).await?;
        let lock = self.pods.lock(&id);
        let _g = lock.lock().await;
        let rec = self.get(&id)?;
        unmount(&self.bundle(&id).join("rootfs"))?;
        self.images
            .snapshots()
            .remove_active(&id)
            .map_err(Error::Image)?;
        crate::process::remove_dir_all_blocking(self.dir(&id)).await?;
        // From the config, not the spec: a pod berth died creating may have no spec recorded.
        let path = crate::spec::cgroups_path(&rec.config.cgroup_parent, &id);
        let _ = tokio::task::spawn_blocking(move || {
            crate::stats::remove_cgroup(Path::new("/sys/fs/cgroup"), &path)
        })
        .await;
        self.pods.remove(&id)
    }

    /// Finds a pod by id or unique id prefix.
    pub fn resolve(&self, id: &str) -> Result<String> {
        self.pods.resolve(id, "pod sandbox")
    }

    /// The record of pod `id` (exact).
    pub fn get(&self, id: &str) -> Result<Arc<PodRecord>> {
        self.pods
            .get(id)
            .ok_or_else(|| Error::NotFound(format!("pod sandbox {} not found", crate::shown(id))))
    }

    /// PortForward: connects to `port` on the pod's loopback (the host's, for a
    /// host-network pod). The pod must be ready.
    pub async fn port_forward(&self, id: &str, port: u16) -> Result<tokio::net::TcpStream> {
        let id = self.resolve(id)?;
        let rec = self.get(&id)?;
        if rec.state != PodState::Ready {
            return Err(Error::Precondition(format!(
                "pod sandbox {id} is not ready; port forwarding needs a running pod"
            )));
        }
        berth_network::netns::connect_loopback(rec.netns.as_deref(), port)
            .await
            .map_err(|e| Error::io(format!("connect to port {port} in pod {id}"), e))
    }

    /// ListPodSandbox.
    pub fn list(&self, f: &PodFilter) -> Vec<Arc<PodRecord>> {
        let mut out = self.pods.filter(|r| {
            f.id.as_ref().is_none_or(|i| r.id.starts_with(i.as_str()))
                && f.state.is_none_or(|s| r.state == s)
                && f.labels
                    .iter()
                    .all(|(k, v)| r.config.labels.get(k) == Some(v))
        });
        out.sort_by_key(|r| r.created_ns);
        out
    }
}

fn netns_name(id: &str) -> String {
    format!("cni-{}", &id[..id.len().min(32)])
}

/// Writes `hostname`, `resolv.conf` and `hosts` for the pod's containers.
fn write_pod_files(dir: &Path, cfg: &PodConfig) -> Result<()> {
    let w = |name: &str, data: &str| {
        std::fs::write(dir.join(name), data).map_err(|e| Error::io(format!("write {name}"), e))
    };
    let hostname = if cfg.host_network {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .to_string()
    } else {
        cfg.hostname.clone()
    };
    w("hostname", &format!("{hostname}\n"))?;
    let resolv = match &cfg.dns {
        Some(d) if !(d.servers.is_empty() && d.searches.is_empty() && d.options.is_empty()) => {
            let mut s = String::new();
            if !d.searches.is_empty() {
                s.push_str(&format!("search {}\n", d.searches.join(" ")));
            }
            for n in &d.servers {
                s.push_str(&format!("nameserver {n}\n"));
            }
            if !d.options.is_empty() {
                s.push_str(&format!("options {}\n", d.options.join(" ")));
            }
            s
        }
        _ => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    };
    w("resolv.conf", &resolv)?;
    let hosts = if cfg.host_network {
        std::fs::read_to_string("/etc/hosts").unwrap_or_default()
    } else {
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n".to_string()
    };
    w("hosts", &hosts)
}

fn mount_shm(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path)
        .map_err(|e| Error::io(format!("create {}", path.display()), e))?;
    use rustix::mount::{MountFlags, mount};
    mount(
        "shm",
        path,
        "tmpfs",
        MountFlags::NODEV | MountFlags::NOEXEC | MountFlags::NOSUID,
        c"mode=1777,size=65536k",
    )
    .map_err(|e| Error::io(format!("mount shm at {}", path.display()), e.into()))
}

/// Unmounts `path` if it is a mount point; anything else is success.
pub(crate) fn unmount(path: &Path) -> Result<()> {
    match rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH) {
        Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(Error::io(format!("unmount {}", path.display()), e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_and_hosts() {
        let d = tempfile::tempdir().unwrap();
        let cfg = PodConfig {
            hostname: "web-0".into(),
            dns: Some(Dns {
                servers: vec!["10.96.0.10".into()],
                searches: vec!["ns.svc.cluster.local".into(), "svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            ..Default::default()
        };
        write_pod_files(d.path(), &cfg).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("hostname")).unwrap(),
            "web-0\n"
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("resolv.conf")).unwrap(),
            "search ns.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
        assert!(
            std::fs::read_to_string(d.path().join("hosts"))
                .unwrap()
                .starts_with("127.0.0.1\tlocalhost\n")
        );
    }

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
        assert_eq!(netns_name(&"f".repeat(64)).len(), 36);
    }
}

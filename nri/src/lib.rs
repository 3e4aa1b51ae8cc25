//! berth as an NRI runtime (the Node Resource Interface of containerd 2 and CRI-O): plugins
//! connect to `nri.socket_path` or are started from `nri.plugin_path`, subscribe to pod and
//! container events, and answer CreateContainer (and UpdateContainer, StopContainer) with
//! adjustments berth applies to the container before it exists.
//!
//! ```text
//!  lib.rs      Nri: the plugins, the socket, pre-installed plugins, event delivery, the sync
//!              gate, the Host trait (what NRI needs from the sandbox runtime)
//!  plugin.rs   one plugin: registration, Configure, Synchronize, calls with their timeout
//!  adjust.rs   the adjustments of several plugins to one container, checked for conflicts
//!  wire.rs     NRI's connection multiplexer and ttrpc (client to the plugin, server of the
//!              Runtime service), bounded against a hostile plugin
//! ```
//!
//! The sandbox crate turns its records into NRI's messages and applies adjustments to the
//! OCI spec (`berth_sandbox::nri`). A plugin that fails to answer in time, or whose
//! connection breaks, is dropped and the call goes on without it, as containerd does; a
//! plugin named in `nri.required_plugins` fails the call instead. An answer that is an error
//! fails the call (RunPodSandbox, CreateContainer, StartContainer, UpdateContainerResources)
//! or is logged (the other events).

pub mod adjust;
mod plugin;
pub mod wire;

/// NRI's messages, compiled from `proto/api.proto`.
pub mod proto {
    pub mod api {
        tonic::include_proto!("nri.pkg.api.v1alpha1");
    }
    pub mod ttrpc {
        tonic::include_proto!("ttrpc");
    }
}

pub use proto::api;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use berth_errdefs::{Classify, ErrorKind};

use plugin::Plugin;
use wire::CallError;

/// The NRI version berth speaks (the release its `api.proto` comes from).
pub const NRI_VERSION: &str = include_str!("../proto/VERSION");

/// How long plugins get.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// From connecting to registering.
    pub registration: Duration,
    /// Each call.
    pub request: Duration,
}

/// NRI's settings (containerd's `[plugins."io.containerd.nri.v1.nri"]`).
#[derive(Debug, Clone)]
pub struct NriConfig {
    /// Where external plugins connect; `None`: they cannot.
    pub socket_path: Option<PathBuf>,
    /// Plugins started at berth's start: executables named `NN-name`.
    pub plugin_path: PathBuf,
    /// Their configuration: `NN-name.conf` or `name.conf`.
    pub plugin_config_path: PathBuf,
    pub timeouts: Timeouts,
    /// Plugins (`NN-name` or `name`) whose failure fails the call instead of being skipped.
    pub required_plugins: Vec<String>,
}

/// What NRI needs from the runtime it runs in.
pub trait Host: Send + Sync + 'static {
    /// Every pod and container now (what a new plugin is synchronized with).
    fn snapshot(&self) -> (Vec<api::PodSandbox>, Vec<api::Container>);
    /// Applies the resource updates plugins ask for; returns those that failed.
    fn update(
        &self,
        updates: Vec<api::ContainerUpdate>,
    ) -> Pin<Box<dyn Future<Output = Vec<api::ContainerUpdate>> + Send + '_>>;
}

/// NRI's errors, as CRI calls report them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A plugin answered the event with an error.
    #[error("NRI plugin {plugin} failed {event}: {message}")]
    Refused {
        plugin: String,
        event: &'static str,
        message: String,
    },
    /// A required plugin did not answer (timed out, crashed).
    #[error("required NRI plugin {plugin} failed {event}: {err}")]
    RequiredFailed {
        plugin: String,
        event: &'static str,
        err: CallError,
    },
    /// Two plugins adjusted the same thing.
    #[error("NRI: {0}")]
    Conflict(String),
    /// An adjustment berth cannot make.
    #[error("NRI plugin {plugin}: {what}")]
    Unsupported { plugin: String, what: String },
    #[error("NRI: {context}: {error}")]
    Io {
        context: String,
        error: std::io::Error,
    },
}

impl Classify for Error {
    fn kind(&self) -> ErrorKind {
        match self {
            Error::Refused { .. } | Error::Conflict(_) | Error::Unsupported { .. } => {
                ErrorKind::FailedPrecondition
            }
            Error::RequiredFailed { .. } => ErrorKind::Unavailable,
            Error::Io { .. } => ErrorKind::Internal,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// The event calls berth makes, with their name as NRI's API has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    RunPodSandbox,
    UpdatePodSandbox,
    PostUpdatePodSandbox,
    StopPodSandbox,
    RemovePodSandbox,
    CreateContainer,
    PostCreateContainer,
    StartContainer,
    PostStartContainer,
    UpdateContainer,
    PostUpdateContainer,
    StopContainer,
    RemoveContainer,
}

impl Event {
    fn api(self) -> api::Event {
        match self {
            Event::RunPodSandbox => api::Event::RunPodSandbox,
            Event::UpdatePodSandbox => api::Event::UpdatePodSandbox,
            Event::PostUpdatePodSandbox => api::Event::PostUpdatePodSandbox,
            Event::StopPodSandbox => api::Event::StopPodSandbox,
            Event::RemovePodSandbox => api::Event::RemovePodSandbox,
            Event::CreateContainer => api::Event::CreateContainer,
            Event::PostCreateContainer => api::Event::PostCreateContainer,
            Event::StartContainer => api::Event::StartContainer,
            Event::PostStartContainer => api::Event::PostStartContainer,
            Event::UpdateContainer => api::Event::UpdateContainer,
            Event::PostUpdateContainer => api::Event::PostUpdateContainer,
            Event::StopContainer => api::Event::StopContainer,
            Event::RemoveContainer => api::Event::RemoveContainer,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Event::RunPodSandbox => "RunPodSandbox",
            Event::UpdatePodSandbox => "UpdatePodSandbox",
            Event::PostUpdatePodSandbox => "PostUpdatePodSandbox",
            Event::StopPodSandbox => "StopPodSandbox",
            Event::RemovePodSandbox => "RemovePodSandbox",
            Event::CreateContainer => "CreateContainer",
            Event::PostCreateContainer => "PostCreateContainer",
            Event::StartContainer => "StartContainer",
            Event::PostStartContainer => "PostStartContainer",
            Event::UpdateContainer => "UpdateContainer",
            Event::PostUpdateContainer => "PostUpdateContainer",
            Event::StopContainer => "StopContainer",
            Event::RemoveContainer => "RemoveContainer",
        }
    }

    /// Events a plugin built against an older NRI gets through `StateChange`, when it says
    /// it does not implement the event's own call.
    fn has_state_change(self) -> bool {
        !matches!(
            self,
            Event::CreateContainer
                | Event::UpdateContainer
                | Event::StopContainer
                | Event::UpdatePodSandbox
        )
    }
}

/// NRI in berth: cheap to clone.
#[derive(Clone)]
pub struct Nri {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: NriConfig,
    /// Connected plugins, in index order.
    plugins: RwLock<Vec<Arc<Plugin>>>,
    /// Event delivery is one event at a time, as containerd delivers them.
    events: tokio::sync::Mutex<()>,
    /// Held for reading by CRI calls while they change pods or containers and tell plugins,
    /// for writing while a new plugin is synchronized: a plugin sees each pod and container
    /// either in its Synchronize or in an event after it.
    sync: Arc<tokio::sync::RwLock<()>>,
    /// Whether berth listens on the socket (and removes it when it stops).
    listening: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Nri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nri")
            .field("plugins", &self.plugin_names())
            .finish()
    }
}

/// What a CRI call holds while it changes pods or containers (see [`Nri::block_sync`]).
pub type SyncGuard = tokio::sync::OwnedRwLockReadGuard<()>;

/// What plugins answered CreateContainer.
#[derive(Debug, Default)]
pub struct Created {
    /// Each plugin's adjustment, in plugin order; no two touch the same thing.
    pub adjustments: Vec<(String, api::ContainerAdjustment)>,
    /// Updates to other (or this) containers.
    pub updates: Vec<api::ContainerUpdate>,
}

impl Nri {
    /// NRI with no plugin yet; [`start`](Self::start) launches and listens.
    pub fn new(cfg: NriConfig) -> Nri {
        Nri {
            inner: Arc::new(Inner {
                cfg,
                plugins: RwLock::new(vec![]),
                events: tokio::sync::Mutex::new(()),
                sync: Arc::new(tokio::sync::RwLock::new(())),
                listening: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Starts the plugins in the plugin directory (each synchronized before the next) and
    /// listens for external ones. A plugin that fails to start is logged and left out.
    pub async fn start(&self, host: Arc<dyn Host>) -> Result<()> {
        for (idx, base, path) in discover(&self.inner.cfg.plugin_path) {
            let name = format!("{idx}-{base}");
            match self.launch(&idx, &base, &path, host.clone()).await {
                Ok(()) => tracing::info!(plugin = name, "pre-installed NRI plugin started"),
                Err(e) => {
                    tracing::warn!(
                        plugin = name,
                        err = e,
                        "pre-installed NRI plugin not started"
                    )
                }
            }
        }
        if let Some(socket) = &self.inner.cfg.socket_path {
            let Some(listener) = bind(socket)? else {
                tracing::warn!(socket = %socket.display(), "NRI: another runtime serves plugins on this socket; plugins berth did not start cannot reach berth (set nri.socket_path)");
                return Ok(());
            };
            tracing::info!(socket = %socket.display(), "NRI: plugins may connect");
            self.inner
                .listening
                .store(true, std::sync::atomic::Ordering::Relaxed);
            let me = self.clone();
            tokio::spawn(async move {
                loop {
                    let stream = match listener.accept().await {
                        Ok((s, _)) => s,
                        Err(e) => {
                            tracing::warn!(err = %e, "NRI: accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let (me, host) = (me.clone(), host.clone());
                    tokio::spawn(async move {
                        if let Err(e) = me.admit(stream, None, host).await {
                            tracing::warn!(
                                err = e,
                                "NRI: a plugin that connected was not admitted"
                            );
                        }
                    });
                }
            });
        }
        Ok(())
    }

    async fn launch(
        &self,
        idx: &str,
        base: &str,
        path: &Path,
        host: Arc<dyn Host>,
    ) -> std::result::Result<(), String> {
        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
        ours.set_nonblocking(true)
            .map_err(|e| format!("socketpair: {e}"))?;
        let mut cmd = tokio::process::Command::new(path);
        cmd.env_clear()
            .env("NRI_PLUGIN_NAME", base)
            .env("NRI_PLUGIN_IDX", idx)
            .env("NRI_PLUGIN_SOCKET", "3")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true);
        let fd = std::os::fd::OwnedFd::from(theirs);
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        // SAFETY: between fork and exec only async-signal-safe calls are made (dup2, fcntl),
        // on a descriptor that stays open in the parent until the child is spawned.
        unsafe {
            cmd.pre_exec(move || {
                if raw == 3 {
                    let flags = libc::fcntl(3, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(raw, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("start {}: {e}", path.display()))?;
        drop(fd);
        let stream = tokio::net::UnixStream::from_std(ours).map_err(|e| e.to_string())?;
        self.admit(stream, Some((idx.into(), base.into(), child)), host)
            .await
    }

    /// Registers, configures and synchronizes a plugin, then delivers events to it.
    async fn admit(
        &self,
        stream: tokio::net::UnixStream,
        launched: Option<(String, String, tokio::process::Child)>,
        host: Arc<dyn Host>,
    ) -> std::result::Result<(), String> {
        let conf_dir = self.inner.cfg.plugin_config_path.clone();
        let is_launched = launched.is_some();
        let p = Plugin::connect(
            stream,
            launched,
            move |idx, base| {
                if is_launched {
                    plugin_config(&conf_dir, idx, base)
                } else {
                    String::new()
                }
            },
            host.clone(),
            &self.inner.cfg.timeouts,
        )
        .await?;
        let name = p.name();
        let p = Arc::new(p);
        // No pod or container changes while the plugin learns what exists. Synchronizing is
        // the end of registering: it has the registration timeout (the longer one), during
        // which CRI calls that change pods and containers wait.
        let _sync = self.inner.sync.clone().write_owned().await;
        let (pods, containers) = host.snapshot();
        let t = &self.inner.cfg.timeouts;
        let updates = match p
            .synchronize(pods, containers, t.registration.max(t.request))
            .await
        {
            Ok(u) => u,
            Err(e) => {
                p.close();
                return Err(format!("{name}: Synchronize: {e}"));
            }
        };
        if !updates.is_empty() {
            let failed = host.update(updates).await;
            if !failed.is_empty() {
                tracing::warn!(
                    plugin = name,
                    failed = failed.len(),
                    "NRI: updates a plugin asked for at synchronization failed"
                );
            }
        }
        {
            let mut list = self
                .inner
                .plugins
                .write()
                .unwrap_or_else(|e| e.into_inner());
            list.retain(|q| !q.is_closed());
            list.push(p.clone());
            list.sort_by(|a, b| a.idx.cmp(&b.idx));
        }
        berth_metrics::NRI_PLUGINS
            .with(&[])
            .set(self.plugin_names().len() as f64);
        tracing::info!(
            plugin = name,
            events = format!("{:#x}", p.events()),
            "NRI plugin connected and synchronized"
        );
        // Forgotten when its connection closes, whoever closed it.
        let me = self.clone();
        tokio::spawn(async move {
            p.closed().await;
            me.forget(&p);
        });
        Ok(())
    }

    fn forget(&self, p: &Arc<Plugin>) {
        let mut list = self
            .inner
            .plugins
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let before = list.len();
        list.retain(|q| !Arc::ptr_eq(q, p));
        if list.len() != before {
            tracing::info!(plugin = p.name(), "NRI plugin disconnected");
        }
        berth_metrics::NRI_PLUGINS.with(&[]).set(list.len() as f64);
    }

    /// The connected plugins' names, in the order they are called.
    pub fn plugin_names(&self) -> Vec<String> {
        self.inner
            .plugins
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|p| !p.is_closed())
            .map(|p| p.name())
            .collect()
    }

    /// Keeps new plugins from synchronizing until the guard drops: held by a CRI call from
    /// before it tells plugins about a change until the change is recorded.
    pub async fn block_sync(&self) -> SyncGuard {
        self.inner.sync.clone().read_owned().await
    }

    fn subscribers(&self, e: Event) -> Vec<Arc<Plugin>> {
        self.inner
            .plugins
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|p| !p.is_closed() && p.subscribed(e.api()))
            .cloned()
            .collect()
    }

    fn required(&self, p: &Plugin) -> bool {
        let r = &self.inner.cfg.required_plugins;
        r.contains(&p.name()) || r.contains(&p.base)
    }

    /// Sends `req` for event `e` to each subscribed plugin in order; returns each answer.
    async fn deliver<Req, Resp>(
        &self,
        e: Event,
        req: &Req,
        state_change: impl Fn() -> api::StateChangeEvent,
    ) -> Result<Vec<(String, Resp)>>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let plugins = self.subscribers(e);
        if plugins.is_empty() {
            return Ok(vec![]);
        }
        let _one = self.inner.events.lock().await;
        let timeout = self.inner.cfg.timeouts.request;
        let mut out = Vec::with_capacity(plugins.len());
        for p in plugins {
            let started = std::time::Instant::now();
            let mut res = p.call::<Req, Resp>(e.name(), req, timeout).await;
            if e.has_state_change() && res.as_ref().is_err_and(CallError::is_unimplemented) {
                res = p
                    .call::<_, api::Empty>("StateChange", &state_change(), timeout)
                    .await
                    .map(|_| Resp::default());
            }
            let result = match &res {
                Ok(_) => "ok",
                Err(CallError::Status { .. }) => "error",
                Err(CallError::Timeout(_)) => "timeout",
                Err(_) => "closed",
            };
            berth_metrics::NRI_CALLS.with(&[e.name(), result]).inc();
            berth_metrics::NRI_CALL_DURATION
                .with(&[e.name()])
                .observe_duration(started.elapsed());
            match res {
                Ok(r) => out.push((p.name(), r)),
                Err(err) if err.is_fatal() => {
                    tracing::warn!(plugin = p.name(), event = e.name(), err = %err, "NRI plugin failed to answer; it is closed and the call goes on without it");
                    p.close();
                    self.forget(&p);
                    if self.required(&p) {
                        return Err(Error::RequiredFailed {
                            plugin: p.name(),
                            event: e.name(),
                            err,
                        });
                    }
                }
                Err(CallError::Status { message, .. }) => {
                    return Err(Error::Refused {
                        plugin: p.name(),
                        event: e.name(),
                        message,
                    });
                }
                Err(_) => unreachable!("every other error is fatal"),
            }
        }
        Ok(out)
    }

    fn pod_event(e: Event, pod: &api::PodSandbox) -> impl Fn() -> api::StateChangeEvent + '_ {
        move || api::StateChangeEvent {
            event: e.api() as i32,
            pod: Some(pod.clone()),
            container: None,
        }
    }

    fn container_event<'a>(
        e: Event,
        pod: &'a api::PodSandbox,
        ctr: &'a api::Container,
    ) -> impl Fn() -> api::StateChangeEvent + 'a {
        move || api::StateChangeEvent {
            event: e.api() as i32,
            pod: Some(pod.clone()),
            container: Some(ctr.clone()),
        }
    }

    /// A pod event (RunPodSandbox, StopPodSandbox, RemovePodSandbox, PostUpdatePodSandbox).
    pub async fn pod(&self, e: Event, pod: &api::PodSandbox) -> Result<()> {
        let req = api::RunPodSandboxRequest {
            pod: Some(pod.clone()),
        };
        // The four requests are the same message: one field, the pod.
        self.deliver::<_, api::Empty>(e, &req, Self::pod_event(e, pod))
            .await
            .map(drop)
    }

    /// UpdatePodSandbox, with the pod's new resources.
    pub async fn update_pod(
        &self,
        pod: &api::PodSandbox,
        overhead: Option<api::LinuxResources>,
        resources: Option<api::LinuxResources>,
    ) -> Result<()> {
        let req = api::UpdatePodSandboxRequest {
            pod: Some(pod.clone()),
            overhead_linux_resources: overhead,
            linux_resources: resources,
        };
        self.deliver::<_, api::Empty>(Event::UpdatePodSandbox, &req, unreachable_state)
            .await
            .map(drop)
    }

    /// A container event without an answer (PostCreateContainer, StartContainer,
    /// PostStartContainer, PostUpdateContainer, RemoveContainer).
    pub async fn container(
        &self,
        e: Event,
        pod: &api::PodSandbox,
        ctr: &api::Container,
    ) -> Result<()> {
        let req = api::StartContainerRequest {
            pod: Some(pod.clone()),
            container: Some(ctr.clone()),
        };
        self.deliver::<_, api::Empty>(e, &req, Self::container_event(e, pod, ctr))
            .await
            .map(drop)
    }

    /// CreateContainer: each plugin's adjustment, checked against the others'.
    pub async fn create_container(
        &self,
        pod: &api::PodSandbox,
        ctr: &api::Container,
    ) -> Result<Created> {
        let req = api::CreateContainerRequest {
            pod: Some(pod.clone()),
            container: Some(ctr.clone()),
        };
        let answers = self
            .deliver::<_, api::CreateContainerResponse>(
                Event::CreateContainer,
                &req,
                unreachable_state,
            )
            .await?;
        let mut claims = adjust::Claims::default();
        let mut out = Created::default();
        for (plugin, rpl) in answers {
            if let Some(a) = rpl.adjust {
                claims.adjustment(&ctr.id, &a, &plugin)?;
                out.adjustments.push((plugin.clone(), a));
            }
            for u in &rpl.update {
                claims.update(u, &plugin)?;
            }
            out.updates.extend(rpl.update);
            if !rpl.evict.is_empty() {
                tracing::warn!(
                    plugin,
                    "NRI plugin asked for evictions, which berth does not do"
                );
            }
        }
        Ok(out)
    }

    /// UpdateContainer: the updates plugins answer with (the container's own resources
    /// among them, which replace what the caller asked for).
    pub async fn update_container(
        &self,
        pod: &api::PodSandbox,
        ctr: &api::Container,
        resources: Option<api::LinuxResources>,
    ) -> Result<Vec<api::ContainerUpdate>> {
        let req = api::UpdateContainerRequest {
            pod: Some(pod.clone()),
            container: Some(ctr.clone()),
            linux_resources: resources,
        };
        let answers = self
            .deliver::<_, api::UpdateContainerResponse>(
                Event::UpdateContainer,
                &req,
                unreachable_state,
            )
            .await?;
        let mut claims = adjust::Claims::default();
        let mut out = vec![];
        for (plugin, rpl) in answers {
            for u in &rpl.update {
                claims.update(u, &plugin)?;
            }
            out.extend(rpl.update);
        }
        Ok(out)
    }

    /// StopContainer: the updates plugins answer with (to other containers).
    pub async fn stop_container(
        &self,
        pod: &api::PodSandbox,
        ctr: &api::Container,
    ) -> Result<Vec<api::ContainerUpdate>> {
        let req = api::StopContainerRequest {
            pod: Some(pod.clone()),
            container: Some(ctr.clone()),
        };
        let answers = self
            .deliver::<_, api::StopContainerResponse>(Event::StopContainer, &req, unreachable_state)
            .await?;
        Ok(answers.into_iter().flat_map(|(_, r)| r.update).collect())
    }

    /// Closes every plugin (berth is stopping): the ones berth started exit.
    pub fn shutdown(&self) {
        let list = std::mem::take(
            &mut *self
                .inner
                .plugins
                .write()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for p in list {
            p.close();
        }
        if self
            .inner
            .listening
            .load(std::sync::atomic::Ordering::Relaxed)
            && let Some(s) = &self.inner.cfg.socket_path
        {
            let _ = std::fs::remove_file(s);
        }
    }
}

/// Events that always had their own call never fall back to StateChange.
fn unreachable_state() -> api::StateChangeEvent {
    api::StateChangeEvent::default()
}

/// The executables `NN-name` in `dir`, in name order.
fn discover(dir: &Path) -> Vec<(String, String, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut out = vec![];
    for e in rd.flatten() {
        let path = e.path();
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        use std::os::unix::fs::PermissionsExt;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            continue;
        }
        let file = e.file_name().to_string_lossy().to_string();
        match plugin::parse_file_name(&file) {
            Ok((idx, base)) => out.push((idx, base, path)),
            Err(err) => {
                tracing::warn!(file = %path.display(), err, "NRI: not a plugin name; skipped")
            }
        }
    }
    out.sort();
    out
}

/// A pre-installed plugin's configuration: `NN-name.conf`, else `name.conf`, else empty.
fn plugin_config(dir: &Path, idx: &str, base: &str) -> String {
    for f in [format!("{idx}-{base}.conf"), format!("{base}.conf")] {
        match std::fs::read(dir.join(&f)) {
            // Bounded: a configuration is a small text file.
            Ok(b) if b.len() <= 1 << 20 => return String::from_utf8_lossy(&b).into(),
            Ok(_) => {
                tracing::warn!(file = %dir.join(&f).display(), "NRI plugin configuration over 1 MiB; ignored");
                return String::new();
            }
            Err(_) => continue,
        }
    }
    String::new()
}

/// Listens on `path` (its directory made if missing, a stale socket replaced), mode 0600;
/// `None` when a live server answers there.
fn bind(path: &Path) -> Result<Option<tokio::net::UnixListener>> {
    let io = |context: String| move |error| Error::Io { context, error };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Ok(None);
    }
    let _ = std::fs::remove_file(path);
    let l = tokio::net::UnixListener::bind(path)
        .map_err(io(format!("listen on {}", path.display())))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io(format!("chmod {}", path.display())))?;
    Ok(Some(l))
}

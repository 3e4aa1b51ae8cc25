//! Containers inside pods: a second (third, …) task in the pod's shim, joining the pause
//! container's namespaces, on its own writable snapshot over the image's layers.
//!
//! ```text
//!   CreateContainer ──► Created ──StartContainer──► Running ──exit (event)──► Exited
//!                          │                                                   │
//!                          └──────────────── RemoveContainer ◄─────────────────┘
//! ```
//!
//! The shim writes the container's stdout/stderr to fifos in the container's directory;
//! berth copies them into the CRI log ([`crate::logs`]). When the init process exits the
//! shim's exit event records exit code, time and reason (`OOMKilled` after an OOM event), and
//! the task is deleted from the shim so the shim unmounts the rootfs.

use crate::now_ns;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::logs::{ContainerLog, mkfifo, open_fifo_reader, open_fifo_writer};
use crate::pod::{PodManager, PodRecord, PodState};
use crate::records::Durability;
use crate::shim::Shim;
use crate::spec::container::ContainerSpec;
use crate::spec::oci::Spec;
use crate::users::Accounts;

mod config;

pub use config::*;

pub(crate) const TABLE: &str = "containers";
/// How long a measured writable-layer usage is reused.
pub const LAYER_USAGE_TTL: Duration = Duration::from_secs(10);
const SIGKILL: u32 = 9;

/// Container state.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum ContainerState {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Exited (or failed to start).
    Exited,
    /// Unknown (its shim is gone and its fate was not heard).
    Unknown,
}

/// A container as berth keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// Id.
    pub id: String,
    /// Its pod.
    pub pod_id: String,
    /// What was asked for (shared: only UpdateContainerResources changes it).
    pub config: Arc<ContainerConfig>,
    /// The image id (`sha256:…`).
    pub image_id: String,
    /// A repo digest of the image, else its first tag.
    pub image_ref: String,
    /// State.
    pub state: ContainerState,
    /// Created (Unix ns).
    pub created_ns: i64,
    /// Started (Unix ns), 0 if never.
    pub started_ns: i64,
    /// Finished (Unix ns), 0 if not.
    pub finished_ns: i64,
    /// Exit code.
    pub exit_code: i32,
    /// `Completed`, `Error`, `OOMKilled`, `StartError`.
    pub reason: String,
    /// A human message (start errors).
    pub message: String,
    /// The init process's pid.
    pub pid: u32,
    /// The full log path, if any.
    pub log_path: Option<PathBuf>,
    /// The image's stop signal.
    pub stop_signal: String,
    /// The OCI spec (written before the task is created; shared: only creation, exec and
    /// recovery read it).
    pub spec: Option<Arc<Spec>>,
    /// An OOM event was seen for it.
    #[serde(default)]
    pub oom: bool,
}

/// A container lifecycle event (for GetContainerEvents).
#[derive(Debug, Clone)]
pub struct ContainerEvent {
    /// Container id.
    pub container_id: String,
    /// Its pod.
    pub pod_id: String,
    /// What happened.
    pub kind: ContainerEventKind,
    /// When (Unix ns).
    pub at_ns: i64,
}

/// The kinds of [`ContainerEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerEventKind {
    /// Created.
    Created,
    /// Started.
    Started,
    /// Stopped (exited).
    Stopped,
    /// Removed.
    Deleted,
}

/// Filters for ListContainers.
#[derive(Debug, Clone, Default)]
pub struct ContainerFilter {
    /// Id or prefix.
    pub id: Option<String>,
    /// State.
    pub state: Option<ContainerState>,
    /// Pod id or prefix.
    pub pod_id: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// What ExecSync returns.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    /// stdout.
    pub stdout: Vec<u8>,
    /// stderr.
    pub stderr: Vec<u8>,
    /// Exit code.
    pub exit_code: i32,
}

/// Most output ExecSync keeps of each stream: both together, with the reply's framing, stay
/// under the 16 MiB a gRPC message may carry to the kubelet, so a chatty command still gets
/// its answer (the start of each stream) instead of failing the call. The rest is read and
/// dropped, so the process never blocks on a full pipe.
pub const EXEC_OUTPUT_LIMIT: usize = (16 * 1024 * 1024 - 4096) / 2;

pub(crate) fn container_name(c: &ContainerConfig, pod: &PodRecord) -> String {
    let m = &pod.config.meta;
    format!(
        "{}_{}_{}_{}_{}",
        c.name, m.name, m.namespace, m.uid, c.attempt
    )
}

fn signal_number(name: &str) -> Option<u32> {
    let n = name.trim().to_ascii_uppercase();
    let n = n.strip_prefix("SIG").unwrap_or(&n);
    if let Ok(v) = n.parse::<u32>() {
        return (1..=64).contains(&v).then_some(v);
    }
    Some(match n {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "ILL" => 4,
        "TRAP" => 5,
        "ABRT" | "IOT" => 6,
        "BUS" => 7,
        "FPE" => 8,
        "KILL" => 9,
        "USR1" => 10,
        "SEGV" => 11,
        "USR2" => 12,
        "PIPE" => 13,
        "ALRM" => 14,
        "TERM" => 15,
        "STKFLT" => 16,
        "CHLD" => 17,
        "CONT" => 18,
        "STOP" => 19,
        "TSTP" => 20,
        "TTIN" => 21,
        "TTOU" => 22,
        "URG" => 23,
        "XCPU" => 24,
        "XFSZ" => 25,
        "VTALRM" => 26,
        "PROF" => 27,
        "WINCH" => 28,
        "IO" | "POLL" => 29,
        "PWR" => 30,
        "SYS" => 31,
        _ => return None,
    })
}

impl crate::records::Record for ContainerRecord {
    const TABLE: &'static str = TABLE;
    fn id(&self) -> &str {
        &self.id
    }
}

impl ContainerRecord {
    /// The container's cgroup, from its spec.
    pub fn cgroups_path(&self) -> Option<&str> {
        self.spec.as_ref()?.cgroups_path()
    }
}

impl PodManager {
    pub(crate) fn ctr_dir(&self, id: &str) -> PathBuf {
        self.state_dir().join("containers").join(id)
    }

    /// The record of container `id` (exact).
    pub fn container(&self, id: &str) -> Result<Arc<ContainerRecord>> {
        self.containers()
            .get(id)
            .ok_or_else(|| Error::NotFound(format!("container {} not found", crate::shown(id))))
    }

    /// Finds a container by id or unique prefix.
    pub fn resolve_container(&self, id: &str) -> Result<String> {
        self.containers().resolve(id, "container")
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
    fn update_container_deferred(
        &self,
        id: &str,
        f: impl FnOnce(&mut ContainerRecord),
    ) -> Result<Arc<ContainerRecord>> {
        self.change_container(id, Durability::Soon, f)
    }

    fn change_container(
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

    /// CreateContainer.
    pub async fn create_container(&self, pod_id: &str, config: ContainerConfig) -> Result<String> {
        let pod_id = self.resolve(pod_id)?;
        let lock = self.pods().lock(&pod_id);
        let _g = lock.lock().await;
        let pod = self.get(&pod_id)?;
        if pod.state != PodState::Ready {
            return Err(Error::Precondition(format!(
                "pod sandbox {pod_id} is not ready; containers can only be created in a ready pod"
            )));
        }
        let shim = self.shim_of(&pod_id).ok_or_else(|| {
            Error::Precondition(format!("pod sandbox {pod_id} has no running shim"))
        })?;
        let image = self.images().resolve(&config.image).map_err(|e| {
            Error::NotFound(format!(
                "image {:?} is not present on this node (pull it first): {e}",
                config.image
            ))
        })?;
        let image_config = self.images().config(&image).map_err(Error::Image)?;
        let id = hex::encode(rand::random::<[u8; 32]>());
        let name = container_name(&config, &pod);
        let reservation = self.containers().names().reserve(&name, &id)?;

        let dir = self.ctr_dir(&id);
        let bundle = dir.join("bundle");
        let mut rec = ContainerRecord {
            id: id.clone(),
            pod_id: pod_id.clone(),
            config: Arc::new(config.clone()),
            image_id: image.id.to_string(),
            image_ref: image
                .repo_digests
                .first()
                .or(image.repo_tags.first())
                .cloned()
                .unwrap_or_else(|| image.id.to_string()),
            state: ContainerState::Created,
            created_ns: now_ns(),
            started_ns: 0,
            finished_ns: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            pid: 0,
            log_path: (!pod.config.log_directory.is_empty() && !config.log_path.is_empty())
                .then(|| Path::new(&pod.config.log_directory).join(&config.log_path)),
            stop_signal: image_config
                .config
                .as_ref()
                .map(|c| c.stop_signal.clone())
                .unwrap_or_default(),
            spec: None,
            oom: false,
        };

        let t0 = std::time::Instant::now();
        let lap = |step: &str| {
            tracing::trace!(
                container = id,
                step,
                us = t0.elapsed().as_micros() as u64,
                "create step"
            )
        };
        let res: Result<()> = async {
            std::fs::create_dir_all(bundle.join("rootfs"))
                .map_err(|e| Error::io(format!("create {}", bundle.display()), e))?;
            let mounts = self
                .images()
                .snapshots()
                .prepare(&id, image.top_chain())
                .map_err(Error::Image)?;
            lap("snapshot");
            let accounts = {
                let mounts = mounts.clone();
                tokio::task::spawn_blocking(move || Accounts::from_mounts(&mounts))
                    .await
                    .map_err(|e| Error::io("read the image's accounts", e.into()))??
            };
            let icfg = image_config.config.clone().unwrap_or_default();
            let sec = &config.security;
            let ids = accounts.resolve(
                &icfg.user,
                sec.run_as_user,
                &sec.run_as_username,
                sec.run_as_group,
                &sec.supplemental_groups,
            )?;
            let target_pid = match &sec.pid {
                PidMode::Target(t) => {
                    let t = self.resolve_container(t)?;
                    let tr = self.container(&t)?;
                    (tr.state == ContainerState::Running && tr.pod_id == pod_id).then_some(tr.pid)
                }
                _ => None,
            };
            let own_capabilities = crate::spec::caps::own_capabilities();
            let spec = ContainerSpec {
                id: &id,
                config: &config,
                pod_id: &pod.id,
                pod: &pod.config,
                pause_pid: pod.pid,
                pod_dir: &self.pod_dir(&pod_id),
                image: &icfg,
                ids,
                target_pid,
                own_capabilities: &own_capabilities,
                daemon_oom_score_adj: crate::spec::own_oom_score_adj(),
            }
            .build(&crate::spec::host::RealHost)?;
            std::fs::write(
                bundle.join("config.json"),
                serde_json::to_vec(&spec).unwrap_or_default(),
            )
            .map_err(|e| Error::io("write config.json", e))?;
            rec.spec = Some(Arc::new(spec));
            lap("spec");

            // Recorded before the shim holds anything, so a crash leaves a record to clean.
            self.containers().put(rec.clone())?;
            lap("record");
            let (stdin, stdout, stderr) =
                (dir.join("stdin"), dir.join("stdout"), dir.join("stderr"));
            mkfifo(&stdout)?;
            let out_rx = open_fifo_reader(&stdout)?;
            let err_rx = if config.tty {
                None
            } else {
                mkfifo(&stderr)?;
                Some(open_fifo_reader(&stderr)?)
            };
            // berth holds the write side of stdin (read-write, so opening never blocks)
            // for Attach; the container reads end-of-file once it is closed.
            let stdin_tx = if config.stdin {
                mkfifo(&stdin)?;
                Some(open_fifo_writer(&stdin)?)
            } else {
                None
            };
            let rootfs = crate::shim::rootfs_mounts(mounts);
            let s = |p: &Path, on: bool| {
                if on {
                    p.display().to_string()
                } else {
                    String::new()
                }
            };
            let handler = self.handler_options(&pod.handler);
            // Under the runsc adapter the sandbox reads the stdin fifo itself (from
            // `runsc start`); the shim must not read it too, or it takes the input.
            let runsc = handler
                .as_ref()
                .and_then(|h| h.binary_name.as_deref())
                .is_some_and(crate::runsc::is_adapter);
            let stdio = [
                s(&stdin, config.stdin && !runsc),
                s(&stdout, true),
                s(&stderr, !config.tty),
            ];
            rec.pid = shim
                .create(
                    &id,
                    &bundle,
                    rootfs,
                    [&stdio[0], &stdio[1], &stdio[2]],
                    config.tty,
                    handler,
                )
                .await?;
            lap("shim create");
            let log = ContainerLog::start(
                rec.log_path.as_deref(),
                self.log_rotation(),
                Some(out_rx),
                err_rx,
                stdin_tx,
            )?;
            self.container_logs().insert(id.clone(), log);
            // Only the pid changed since the record was written, and the shim keeps that:
            // a restarted berth asks it (recover_containers), so no second disk write here.
            self.containers().keep(rec.clone());
            lap("log");
            Ok(())
        }
        .await;
        match res {
            Ok(()) => {
                reservation.commit();
                self.emit(&rec, ContainerEventKind::Created);
                Ok(id)
            }
            Err(e) => {
                let _ = shim.delete(&id).await;
                self.container_logs().remove(&id);
                let _ = self.images().snapshots().remove_active(&id);
                let _ = crate::process::remove_dir_all_blocking(dir).await;
                let _ = self.containers().remove_record(&id);
                Err(e)
            }
        }
    }

    /// StartContainer.
    pub async fn start_container(&self, id: &str) -> Result<()> {
        let id = self.resolve_container(id)?;
        let lock = self.containers().lock(&id);
        let _g = lock.lock().await;
        let rec = self.container(&id)?;
        if rec.state != ContainerState::Created {
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
        match shim.start(&id).await {
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

    /// Called on a `/tasks/exit` event of a container's init process.
    pub(crate) fn on_container_exit(&self, id: &str, status: u32, at_ns: i64) -> bool {
        let Ok(rec) = self.container(id) else {
            return false;
        };
        if rec.state == ContainerState::Exited {
            return true;
        }
        let cgroup_oom = status == 137 && self.oom_killed(&rec);
        let mut changed = false;
        let res = self.observe_container(id, |r| {
            if r.state == ContainerState::Exited {
                return;
            }
            changed = true;
            r.state = ContainerState::Exited;
            r.exit_code = status as i32;
            r.finished_ns = if at_ns > 0 { at_ns } else { now_ns() };
            r.reason = if r.oom || cgroup_oom {
                "OOMKilled".into()
            } else if status == 0 {
                "Completed".into()
            } else {
                "Error".into()
            };
        });
        match res {
            Ok(rec) if changed => self.emit(&rec, ContainerEventKind::Stopped),
            Ok(_) => {}
            Err(e) => {
                // Known in memory all the same (see observe_container).
                tracing::error!(container = id, err = %e, "failed to persist container exit");
                if let (true, Ok(rec)) = (changed, self.container(id)) {
                    self.emit(&rec, ContainerEventKind::Stopped);
                }
            }
        }
        true
    }

    pub(crate) fn on_container_oom(&self, id: &str) {
        let _ = self.observe_container(id, |r| {
            r.oom = true;
            if r.state == ContainerState::Exited && r.exit_code == 137 {
                r.reason = "OOMKilled".into();
            }
        });
    }

    /// cgroup v1: the memory controller counted an OOM kill in the container's cgroup.
    fn oom_killed(&self, rec: &ContainerRecord) -> bool {
        let Some(path) = rec.cgroups_path() else {
            return false;
        };
        let v1 = format!("/sys/fs/cgroup/memory{path}/memory.oom_control");
        let v2 = format!("/sys/fs/cgroup{path}/memory.events");
        for f in [v1, v2] {
            if let Ok(s) = std::fs::read_to_string(&f)
                && s.lines().any(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|n| n.trim().parse::<u64>().ok())
                        .is_some_and(|n| n > 0)
                })
            {
                return true;
            }
        }
        false
    }

    /// Deletes an exited container's task from its shim (the shim unmounts the rootfs) and
    /// waits for its output to drain into the log.
    pub(crate) async fn reap_container(&self, id: &str) {
        let Ok(rec) = self.container(id) else { return };
        if let Some(s) = self.shim_of(&rec.pod_id)
            && !self.note_reaped(id, true)
        {
            match s.delete(id).await {
                Ok(_) => {}
                Err(e) if e.kind() == crate::ErrorKind::NotFound => {
                    // The shim does not know the task, and berth did not delete it: runc may
                    // still hold it (berth died while the shim created it). The shim binary's
                    // delete removes it, if it is there.
                    if let Ok(pod) = self.get(&rec.pod_id) {
                        self.delete_dead_task(
                            &pod.shim_binary,
                            id,
                            &self.ctr_dir(id).join("bundle"),
                        )
                        .await;
                    }
                }
                Err(e) => {
                    tracing::debug!(container = id, err = %e, "delete exited task");
                    self.note_reaped(id, false);
                }
            }
        }
        let log = self.container_logs().remove(id);
        if let Some(mut l) = log {
            l.drained(Duration::from_secs(2)).await;
        }
    }

    /// StopContainer: the stop signal, `timeout` to exit, then SIGKILL. Idempotent.
    pub async fn stop_container(&self, id: &str, timeout: Duration) -> Result<()> {
        let id = self.resolve_container(id)?;
        let lock = self.containers().lock(&id);
        let _g = lock.lock().await;
        let rec = self.container(&id)?;
        match rec.state {
            ContainerState::Exited => return Ok(()),
            ContainerState::Created => {
                // Never started: nothing runs; mark it exited so it can be removed.
                if let Some(s) = self.shim_of(&rec.pod_id) {
                    let _ = s.kill(&id, SIGKILL, false).await;
                }
                self.on_container_exit(&id, 0, 0);
                self.reap_container(&id).await;
                return Ok(());
            }
            _ => {}
        }
        let Some(s) = self.shim_of(&rec.pod_id) else {
            self.on_container_exit(&id, 255, 0);
            return Ok(());
        };
        let sig = signal_number(&rec.stop_signal).unwrap_or(15);
        if !timeout.is_zero() {
            match s.kill(&id, sig, false).await {
                Ok(()) => {}
                Err(e) if e.kind() == crate::ErrorKind::NotFound => {}
                Err(e) if e.shim_gone() => {
                    self.shim_died(&rec, &e).await;
                    return Ok(());
                }
                Err(e) => tracing::debug!(container = id, err = %e, "stop signal"),
            }
            if tokio::time::timeout(timeout, s.wait(&id)).await.is_ok() {
                self.finish_stop(&s, &id).await;
                return Ok(());
            }
        }
        match s.kill(&id, SIGKILL, true).await {
            Ok(()) => {}
            Err(e) if e.kind() == crate::ErrorKind::NotFound => {}
            Err(e) if e.shim_gone() => {
                self.shim_died(&rec, &e).await;
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), s.wait(&id)).await;
        self.finish_stop(&s, &id).await;
        Ok(())
    }

    /// The pod's shim died under a running container: the container's processes live on
    /// without it, so the shim binary's `delete` kills them and removes the runc container.
    async fn shim_died(&self, rec: &ContainerRecord, e: &Error) {
        tracing::warn!(container = rec.id, err = %e, "the pod's shim is gone; deleting the container's task without it");
        if let Ok(pod) = self.get(&rec.pod_id) {
            let bundle = self.ctr_dir(&rec.id).join("bundle");
            if let Err(e) =
                crate::shim::delete_dead(&pod.shim_binary, self.shim_env(), &rec.id, &bundle).await
            {
                tracing::warn!(container = rec.id, err = %e, "shim delete of a dead container task");
            }
        }
        self.on_container_exit(&rec.id, 255, 0);
    }

    async fn finish_stop(&self, s: &Shim, id: &str) {
        // The exit event normally lands first; if it was missed, ask the shim.
        if self.container(id).ok().map(|r| r.state) != Some(ContainerState::Exited) {
            let status = s.state(id).await.map(|st| st.exit_status).unwrap_or(137);
            self.on_container_exit(id, status, 0);
        }
        self.reap_container(id).await;
    }

    /// RemoveContainer: stops it if it runs (as containerd does), then removes its task,
    /// snapshot, directory and record. An unknown id is not an error.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let id = match self.resolve_container(id) {
            Ok(i) => i,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let rec = self.container(&id)?;
        if rec.state != ContainerState::Exited {
            self.stop_container(&id, Duration::ZERO).await?;
        }
        let lock = self.containers().lock(&id);
        let _g = lock.lock().await;
        self.reap_container(&id).await;
        let bundle = self.ctr_dir(&id).join("bundle");
        crate::pod::unmount(&bundle.join("rootfs"))?;
        self.images()
            .snapshots()
            .remove_active(&id)
            .map_err(Error::Image)?;
        let dir = self.ctr_dir(&id);
        crate::process::remove_dir_all_blocking(dir).await?;
        if let Some(path) = rec.cgroups_path().map(str::to_string) {
            let _ = tokio::task::spawn_blocking(move || {
                crate::stats::remove_cgroup(Path::new("/sys/fs/cgroup"), &path)
            })
            .await;
        }
        self.containers().remove(&id)?;
        self.note_reaped(&id, false);
        self.layer_usage().remove(&id);
        self.emit(&rec, ContainerEventKind::Deleted);
        Ok(())
    }

    /// ListContainers.
    pub fn list_containers(&self, f: &ContainerFilter) -> Vec<Arc<ContainerRecord>> {
        let mut out = self.containers().filter(|r| {
            f.id.as_ref().is_none_or(|i| r.id.starts_with(i.as_str()))
                && f.state.is_none_or(|s| r.state == s)
                && f.pod_id
                    .as_ref()
                    .is_none_or(|p| r.pod_id.starts_with(p.as_str()))
                && f.labels
                    .iter()
                    .all(|(k, v)| r.config.labels.get(k) == Some(v))
        });
        out.sort_by_key(|r| r.created_ns);
        out
    }

    /// The ids of a pod's containers.
    pub(crate) fn containers_of(&self, pod_id: &str) -> Vec<String> {
        self.containers()
            .filter(|r| r.pod_id == pod_id)
            .iter()
            .map(|r| r.id.clone())
            .collect()
    }

    /// ReopenContainerLog.
    pub fn reopen_container_log(&self, id: &str) -> Result<()> {
        let id = self.resolve_container(id)?;
        let rec = self.container(&id)?;
        if rec.state != ContainerState::Running {
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

    /// UpdateContainerResources.
    pub async fn update_container_resources(&self, id: &str, r: &Resources) -> Result<()> {
        let id = self.resolve_container(id)?;
        let lock = self.containers().lock(&id);
        let _g = lock.lock().await;
        let rec = self.container(&id)?;
        if !matches!(rec.state, ContainerState::Created | ContainerState::Running) {
            return Err(Error::Precondition(format!(
                "container {id} is not running or created; its resources cannot change"
            )));
        }
        let s = self.shim_of(&rec.pod_id).ok_or_else(|| {
            Error::Precondition(format!("the pod of container {id} has no running shim"))
        })?;
        let mut res = crate::spec::resources::linux_resources(r);
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

    /// ExecSync: runs `cmd` in the container, returns its output (each stream cut at
    /// [`EXEC_OUTPUT_LIMIT`]) and exit code; after `timeout` (zero: none) the process is
    /// killed and the call fails. When `caller_gone` is cancelled (the client went away) the
    /// process is killed too, timeout or not. The streaming exec with no stdin and no client.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
        caller_gone: tokio_util::sync::CancellationToken,
    ) -> Result<ExecOutput> {
        let collect = |mut rx: tokio::sync::mpsc::Receiver<bytes::Bytes>| {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                // Read to the end, keeping the first EXEC_OUTPUT_LIMIT bytes: the process
                // never blocks on a full pipe.
                while let Some(b) = rx.recv().await {
                    let room = EXEC_OUTPUT_LIMIT.saturating_sub(buf.len());
                    buf.extend_from_slice(&b[..b.len().min(room)]);
                }
                buf
            })
        };
        let (out_tx, out_rx) = tokio::sync::mpsc::channel(16);
        let (err_tx, err_rx) = tokio::sync::mpsc::channel(16);
        let (out_t, err_t) = (collect(out_rx), collect(err_rx));
        let stop = caller_gone.child_token();
        let timer = (!timeout.is_zero()).then(|| {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                stop.cancel();
            })
        });
        let io = crate::session::SessionIo {
            stdin: None,
            stdout: Some(out_tx),
            stderr: Some(err_tx),
            tty: false,
            resize: None,
            disconnected: stop.clone(),
        };
        let res = self.exec_stream(id, cmd.clone(), io).await;
        if let Some(t) = timer {
            t.abort();
        }
        let (stdout, stderr) = (
            out_t.await.unwrap_or_default(),
            err_t.await.unwrap_or_default(),
        );
        if caller_gone.is_cancelled() {
            return Err(Error::Timeout(format!(
                "command {cmd:?} in container {id} was killed: its caller went away"
            )));
        }
        if stop.is_cancelled() {
            return Err(Error::Timeout(format!(
                "command {cmd:?} in container {id} timed out after {timeout:?}"
            )));
        }
        Ok(ExecOutput {
            stdout,
            stderr,
            exit_code: res? as i32,
        })
    }

    /// Exec with a client attached (the streaming server's `/exec`): runs `cmd` with the
    /// session's stdio (a terminal when `io.tty`), passes resizes on, and returns the exit
    /// code once the process exited and its output was delivered. A client that goes away
    /// kills the process.
    pub async fn exec_stream(
        &self,
        id: &str,
        cmd: Vec<String>,
        io: crate::session::SessionIo,
    ) -> Result<u32> {
        let id = self.resolve_container(id)?;
        let rec = self.container(&id)?;
        if rec.state != ContainerState::Running {
            return Err(Error::Precondition(format!(
                "container {id} is not running; exec needs a running container"
            )));
        }
        if cmd.is_empty() {
            return Err(Error::Invalid("exec command is empty".into()));
        }
        let s = self.shim_of(&rec.pod_id).ok_or_else(|| {
            Error::Precondition(format!("the pod of container {id} has no running shim"))
        })?;
        let crate::session::SessionIo {
            stdin,
            stdout,
            stderr,
            tty,
            resize,
            disconnected,
        } = io;
        let exec_id = hex::encode(rand::random::<[u8; 8]>());
        let dir = self.ctr_dir(&id).join("exec");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create exec dir", e))?;
        let path = |name: &str, on: bool| on.then(|| dir.join(format!("{exec_id}-{name}")));
        let in_p = path("stdin", stdin.is_some());
        let out_p = path("stdout", stdout.is_some());
        let err_p = path("stderr", stderr.is_some() && !tty);
        let paths: Vec<PathBuf> = [&in_p, &out_p, &err_p]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let cleanup = || {
            for p in &paths {
                let _ = std::fs::remove_file(p);
            }
        };
        let res = async {
            for p in &paths {
                mkfifo(p)?;
            }
            let out_rx = out_p.as_deref().map(open_fifo_reader).transpose()?;
            let err_rx = err_p.as_deref().map(open_fifo_reader).transpose()?;
            let in_tx = in_p.as_deref().map(open_fifo_writer).transpose()?;
            // The container's own process settings (user, env, capabilities, cwd) with the
            // exec's argv and terminal.
            let mut process = rec
                .spec
                .as_ref()
                .and_then(|s| s.process.clone())
                .ok_or_else(|| Error::Precondition(format!("container {id} has no spec")))?;
            process.args = cmd;
            process.terminal = tty;
            let show = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
            let stdio = [show(&in_p), show(&out_p), show(&err_p)];
            let permit = s.exec_permit().await;
            s.exec(&id, &exec_id, &process, [&stdio[0], &stdio[1], &stdio[2]], tty)
                .await?;
            let pump = |rx: Option<tokio::net::unix::pipe::Receiver>,
                        tx: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>| {
                let (Some(mut rx), Some(tx)) = (rx, tx) else {
                    return None;
                };
                Some(tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let mut buf = vec![0u8; 32 * 1024];
                    while let Ok(n) = rx.read(&mut buf).await {
                        if n == 0 || tx.send(bytes::Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                            break;
                        }
                    }
                }))
            };
            let outputs: Vec<_> = [pump(out_rx, stdout), pump(err_rx, stderr)]
                .into_iter()
                .flatten()
                .collect();
            let started = s.start_process(&id, &exec_id).await;
            drop(permit);
            if let Err(e) = started {
                let _ = s.delete_process(&id, &exec_id).await;
                outputs.iter().for_each(|t| t.abort());
                return Err(e);
            }
            let feeder = match (stdin, in_tx) {
                (Some(mut rx), Some(mut w)) => {
                    let (s, id, exec_id) = (s.clone(), id.clone(), exec_id.clone());
                    Some(tokio::spawn(async move {
                        use tokio::io::AsyncWriteExt;
                        while let Some(b) = rx.recv().await {
                            if w.write_all(&b).await.is_err() {
                                break;
                            }
                        }
                        if tty {
                            // A terminal's end is a hangup, not end-of-file: keep it open
                            // (as containerd does) until the process exits.
                            std::future::pending::<()>().await;
                        }
                        drop(w);
                        // End-of-file for the process, through the shim's copy.
                        let _ = s.close_stdin(&id, &exec_id).await;
                    }))
                }
                _ => None,
            };
            let resizer = resize.filter(|_| tty).map(|mut rx| {
                let (s, id, exec_id) = (s.clone(), id.clone(), exec_id.clone());
                tokio::spawn(async move {
                    while let Some(sz) = rx.recv().await {
                        if let Err(e) = s
                            .resize_pty(&id, &exec_id, u32::from(sz.width), u32::from(sz.height))
                            .await
                        {
                            tracing::debug!(container = id, err = %e, "resize exec terminal");
                        }
                    }
                })
            });
            let waited = tokio::select! {
                r = s.wait_process(&id, &exec_id) => r,
                _ = disconnected.cancelled() => {
                    tracing::info!(container = id, exec_id, "exec cancelled (its client went away, or its time is up); killing the process");
                    let _ = s.kill_process(&id, &exec_id, SIGKILL, false).await;
                    tokio::time::timeout(Duration::from_secs(10), s.wait_process(&id, &exec_id))
                        .await
                        .unwrap_or_else(|_| Err(Error::Timeout("exec process did not die".into())))
                }
            };
            for t in feeder.iter().chain(resizer.iter()) {
                t.abort();
            }
            // The output ends once the shim has copied the last of it; a background child
            // that inherited it could hold it open, so the wait is bounded.
            for t in outputs {
                let abort = t.abort_handle();
                if tokio::time::timeout(Duration::from_secs(2), t).await.is_err() {
                    abort.abort();
                }
            }
            let _ = s.delete_process(&id, &exec_id).await;
            waited
        }
        .await;
        cleanup();
        res
    }

    /// Attach (the streaming server's `/attach`): connects the session to the container's
    /// own stdio until the container's output ends, the client closes its stdin (closing
    /// the container's stdin too when `stdin_once`), or the client goes away.
    pub async fn attach(&self, id: &str, io: crate::session::SessionIo) -> Result<()> {
        let id = self.resolve_container(id)?;
        let rec = self.container(&id)?;
        if rec.state != ContainerState::Running {
            return Err(Error::Precondition(format!(
                "container {id} is not running; attach needs a running container"
            )));
        }
        let points = self
            .container_logs()
            .get(&id)
            .map(|l| l.stdio.clone())
            .ok_or_else(|| {
                Error::Precondition(format!("container {id} has no output to attach to"))
            })?;
        let crate::session::SessionIo {
            stdin,
            stdout,
            stderr,
            resize,
            disconnected,
            ..
        } = io;
        let tty = rec.config.tty;
        let follow = |rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
                      tx: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>| {
            let mut rx = rx;
            tokio::spawn(async move {
                while let Some(b) = rx.recv().await {
                    // Output the client did not ask for is read and dropped.
                    if let Some(tx) = &tx
                        && tx.send(b).await.is_err()
                    {
                        return;
                    }
                }
            })
        };
        let out = follow(points.stdout.subscribe(), stdout);
        let err = follow(points.stderr.subscribe(), stderr.filter(|_| !tty));
        let resizer = resize.filter(|_| tty).and_then(|mut rx| {
            let s = self.shim_of(&rec.pod_id)?;
            let id = id.clone();
            Some(tokio::spawn(async move {
                while let Some(sz) = rx.recv().await {
                    let _ = s
                        .resize_pty(&id, "", u32::from(sz.width), u32::from(sz.height))
                        .await;
                }
            }))
        });
        let stdin_once = rec.config.stdin_once;
        let feed = async {
            let Some(mut rx) = stdin else {
                return std::future::pending::<()>().await;
            };
            while let Some(b) = rx.recv().await {
                if !points.write_stdin(&b).await {
                    // No stdin (or it was closed): what the client types goes nowhere.
                    continue;
                }
            }
            if stdin_once && !tty {
                // The shim holds a writer too (so a berth restart is no EOF): closing ours
                // and then the shim's gives the container its end-of-file.
                points.close_stdin().await;
                if let Some(s) = self.shim_of(&rec.pod_id)
                    && let Err(e) = s.close_stdin(&id, "").await
                {
                    tracing::warn!(container = id, err = %e, "close the container's stdin");
                }
            }
        };
        let (out_abort, err_abort) = (out.abort_handle(), err.abort_handle());
        let outputs = async {
            let _ = out.await;
            let _ = err.await;
        };
        tokio::select! {
            _ = outputs => {}
            _ = feed => {}
            _ = disconnected.cancelled() => {}
        }
        out_abort.abort();
        err_abort.abort();
        if let Some(r) = resizer {
            r.abort();
        }
        Ok(())
    }

    /// Removes every container of a pod (its stop already killed them).
    pub(crate) async fn remove_pod_containers(&self, pod_id: &str) -> Result<()> {
        for c in self.containers_of(pod_id) {
            self.remove_container(&c).await?;
        }
        Ok(())
    }

    /// Stops every container of a pod, at once (SIGKILL), and deletes their tasks: the pod is
    /// going away, and its shim exits on Shutdown only once it holds no task.
    pub(crate) async fn stop_pod_containers(&self, pod_id: &str) -> Result<()> {
        for c in self.containers_of(pod_id) {
            self.stop_container(&c, Duration::ZERO).await?;
            let lock = self.containers().lock(&c);
            let _g = lock.lock().await;
            self.reap_container(&c).await;
        }
        Ok(())
    }
}

impl PodManager {
    /// The container's cgroup usage and its writable layer's (bytes, inodes); the layer is
    /// measured at most once per [`LAYER_USAGE_TTL`] (the kubelet asks every few seconds).
    pub async fn container_usage(
        &self,
        id: &str,
    ) -> Result<(Option<crate::stats::Usage>, (u64, u64))> {
        let rec = self.container(id)?;
        let cgroup = rec.cgroups_path().map(str::to_string);
        let cached = self
            .layer_usage()
            .get(id)
            .filter(|(at, _)| at.elapsed() < LAYER_USAGE_TTL)
            .map(|(_, layer)| *layer);
        let upper = match cached {
            Some(_) => None,
            None => self.images().snapshots().mounts(id).ok().and_then(|ms| {
                ms.into_iter().find_map(|m| {
                    if m.kind == "bind" {
                        return Some(PathBuf::from(m.source));
                    }
                    m.options
                        .iter()
                        .find_map(|o| o.strip_prefix("upperdir=").map(PathBuf::from))
                })
            }),
        };
        // cgroup files and, at most once per TTL, a walk of the writable layer: files, on a
        // blocking thread.
        let (cg, walked) = tokio::task::spawn_blocking(move || {
            let cg =
                cgroup.and_then(|p| crate::stats::cgroup_usage(Path::new("/sys/fs/cgroup"), &p));
            (cg, upper.map(|u| crate::stats::dir_usage(&u)))
        })
        .await
        .map_err(|e| Error::io("measure a container", std::io::Error::other(e)))?;
        let layer = match (cached, walked) {
            (Some(layer), _) => layer,
            (None, walked) => {
                let layer = walked.unwrap_or((0, 0));
                self.layer_usage()
                    .insert(id.to_string(), (std::time::Instant::now(), layer));
                layer
            }
        };
        Ok((cg, layer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals() {
        assert_eq!(signal_number(""), None);
        assert_eq!(signal_number("SIGTERM"), Some(15));
        assert_eq!(signal_number("sigquit"), Some(3));
        assert_eq!(signal_number("9"), Some(9));
        assert_eq!(signal_number("SIGRTMIN+3"), None);
    }
}

//! What berth does after a restart, and when a shim dies under it.
//!
//! **Restart.** [`Runtime::load`] reads every pod and container record into memory, reserves
//! their names and takes each one's lock, all before berth serves: Lists answer at once with
//! what the records say, and any call on a pod or container waits for that one object to be
//! reconciled, never for the rest. [`Runtime::reconcile`] then runs in the background, a
//! bounded number of pods at a time, every shim call bounded:
//!
//! ```text
//!   pod record ──connect + State (bounded)──► shim answers:  task running   → Ready stays
//!                                                            task stopped/unknown → NotReady
//!                                           ► no shim / refused / no answer (killed) → NotReady
//!   container record (not exited) ─State──►  created/running → pid and state from the shim,
//!                                                              output reattached
//!                                            stopped → exited, task deleted
//!                                            unknown / shim gone → exited (255), and what runc
//!                                              may still hold is deleted through the shim binary
//! ```
//!
//! A container's output fifos are opened before any shim is asked anything: a shim that was
//! creating a container when berth died waits for a reader on them.
//!
//! **A shim that dies** is noticed through a pidfd on its process ([`crate::shim::watch`]):
//! the pod becomes NotReady, its containers exit with reason `ShimDied` (what runc still runs
//! for them is killed and deleted through the shim binary), and the kubelet sees it all at its
//! next relist.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::unix::pipe;
use tokio::sync::OwnedMutexGuard;

use crate::container::{ContainerRecord, ContainerState};
use crate::error::Result;
use crate::logs::{ContainerLog, open_fifo_reader, open_fifo_writer};
use crate::now_ns;
use crate::pod::{PodRecord, PodState};
use crate::runtime::Runtime;
use crate::shim::{self, SIGKILL, Shim};

mod dead_shim;

/// Pods reconciled at once after a restart (kuasar's figure).
const RECOVERY_CONCURRENCY: usize = 32;
/// How long a shim gets to answer a recovery call; one that does not is killed.
const RECOVERY_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The task states a shim reports (containerd's `task.Status`).
const TASK_CREATED: i32 = 1;
const TASK_RUNNING: i32 = 2;
const TASK_STOPPED: i32 = 3;

/// A pod loaded from its record and not reconciled yet; its lock is held.
pub(crate) struct PendingPod {
    id: String,
    _lock: OwnedMutexGuard<()>,
    containers: Vec<PendingContainer>,
}

/// A container whose record says it was created or running; its lock is held and its output
/// fifos are open.
pub(crate) struct PendingContainer {
    id: String,
    _lock: OwnedMutexGuard<()>,
    stdout: Option<pipe::Receiver>,
    stderr: Option<pipe::Receiver>,
    stdin: Option<pipe::Sender>,
}

/// What a pod's shim said when berth came back.
enum ShimAnswer {
    /// The shim serves, and knows the pause task in this state.
    Task(Shim, i32),
    /// The shim serves but does not know the pause task (berth died before creating it).
    NoTask(Shim),
    /// No shim, or none that answers (one that did not answer in time was killed).
    Gone,
}

impl Runtime {
    /// Loads every record, reserves names and takes every lock: what is left to reconcile.
    /// Runs before berth serves, and does no I/O but the store's and opening fifos.
    pub(crate) fn load(&self) -> Result<Vec<PendingPod>> {
        // An earlier berth's children die with it only if they are killed: shim helpers that
        // could still start a daemon, CNI plugins that could still add a pod to the network
        // after berth deleted it.
        let pods: Vec<PodRecord> = self.pods().load()?;
        let ids: std::collections::HashSet<String> = pods.iter().map(|p| p.id.clone()).collect();
        self.kill_leftover_children(&ids);
        let containers: Vec<ContainerRecord> = self.containers().load()?;
        let mut pending = Vec::new();
        for rec in pods {
            self.pods().names().reserve(&rec.name(), &rec.id)?.commit();
            let Ok(guard) = self.pods().lock(&rec.id).try_lock_owned() else {
                continue; // nothing runs yet: every lock is free
            };
            pending.push(PendingPod {
                id: rec.id.clone(),
                _lock: guard,
                containers: Vec::new(),
            });
            self.pods().keep(rec);
        }
        for rec in containers {
            let id = rec.id.clone();
            if let Ok(p) = self.get(&rec.pod_id) {
                let _ = self
                    .containers()
                    .names()
                    .reserve(&crate::container::container_name(&rec.config, &p), &id)
                    .map(|r| r.commit());
            }
            let unfinished = rec.state != ContainerState::Exited;
            let pod_id = rec.pod_id.clone();
            let tty = rec.config.tty;
            let stdin = rec.config.stdin;
            self.containers().keep(rec);
            if !unfinished {
                continue;
            }
            let Ok(guard) = self.containers().lock(&id).try_lock_owned() else {
                continue;
            };
            let dir = self.ctr_dir(&id);
            let c = PendingContainer {
                _lock: guard,
                stdout: open_fifo_reader(&dir.join("stdout")).ok(),
                stderr: (!tty)
                    .then(|| open_fifo_reader(&dir.join("stderr")).ok())
                    .flatten(),
                stdin: stdin
                    .then(|| open_fifo_writer(&dir.join("stdin")).ok())
                    .flatten(),
                id,
            };
            match pending.iter_mut().find(|p| p.id == pod_id) {
                Some(p) => p.containers.push(c),
                None => {
                    // A container whose pod record is gone: nothing can run it.
                    tracing::warn!(
                        container = c.id,
                        pod = pod_id,
                        "container of an unknown pod; marking it exited"
                    );
                    self.mark_gone(&c.id, "its pod was gone when berth restarted");
                }
            }
        }
        self.set_recovering(pending.len());
        Ok(pending)
    }

    /// Reconciles what [`load`](Self::load) left, a few pods at a time, then cleans up what
    /// no record owns and starts the spare shim.
    pub(crate) async fn reconcile(self: Arc<Self>, pending: Vec<PendingPod>) {
        let started = std::time::Instant::now();
        let count = pending.len();
        let gate = Arc::new(tokio::sync::Semaphore::new(RECOVERY_CONCURRENCY));
        let mut tasks = tokio::task::JoinSet::new();
        for p in pending {
            let (m, gate) = (self.clone(), gate.clone());
            tasks.spawn(async move {
                let _turn = gate.acquire_owned().await;
                m.reconcile_pod(p).await;
                m.recovered_one();
            });
        }
        while tasks.join_next().await.is_some() {}
        berth_metrics::RECOVERY_DURATION
            .with(&[])
            .set(started.elapsed().as_secs_f64());
        tracing::info!(
            pods = count,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "recovery finished"
        );
        self.reap_orphans().await;
        self.fill_spare_now().await;
        self.recovered_one();
    }

    async fn reconcile_pod(self: &Arc<Self>, p: PendingPod) {
        let Ok(rec) = self.get(&p.id) else { return };
        let bundle = self.bundle(&p.id);
        let answer = match std::fs::read_to_string(bundle.join("address")) {
            Err(_) => ShimAnswer::Gone,
            Ok(address) => self.ask_shim(&p.id, address.trim()).await,
        };
        let (shim, running) = match answer {
            ShimAnswer::Task(s, status) => (Some(s), status == TASK_RUNNING),
            ShimAnswer::NoTask(s) => (Some(s), false),
            ShimAnswer::Gone => (None, false),
        };
        if let Some(s) = &shim {
            // A NotReady pod's shim still holds its dead task until Stop deletes it.
            match shim::open_log(&bundle, &p.id) {
                Ok(log) => self.keep_shim_log(&p.id, log),
                Err(e) => tracing::debug!(pod = p.id, err = %e, "reopen the shim's log"),
            }
            self.register_shim(&p.id, s.clone());
            tracing::info!(pod = p.id, running, "reconnected to the pod's shim");
        }
        if rec.state == PodState::Ready && !running {
            tracing::warn!(
                pod = p.id,
                "the pod's shim or pause process is gone; pod is NotReady"
            );
            if let Err(e) = self.set_pod_state(&p.id, PodState::NotReady) {
                tracing::error!(pod = p.id, err = %e, "failed to record the pod as NotReady");
            }
        }
        for c in p.containers {
            self.reconcile_container(shim.as_ref(), &rec, c).await;
        }
    }

    /// Connects to a pod's shim and asks it for the pause task, within
    /// [`RECOVERY_CALL_TIMEOUT`] each. A shim that accepts but does not answer is killed.
    async fn ask_shim(&self, pod_id: &str, address: &str) -> ShimAnswer {
        let s = match Shim::connect(address).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(pod = pod_id, err = %e, "cannot connect to the pod's shim");
                self.kill_pod_shim(pod_id, address).await;
                return ShimAnswer::Gone;
            }
        };
        match s.state_within(pod_id, RECOVERY_CALL_TIMEOUT).await {
            Ok(st) => ShimAnswer::Task(s, st.status.value()),
            Err(e) if e.kind() == crate::ErrorKind::NotFound => {
                tracing::warn!(pod = pod_id, "the pod's shim does not know its pause task");
                ShimAnswer::NoTask(s)
            }
            Err(e) => {
                tracing::warn!(pod = pod_id, err = %e, "the pod's shim does not answer; killing it");
                self.kill_pod_shim(pod_id, address).await;
                ShimAnswer::Gone
            }
        }
    }

    /// Kills a pod's shim daemon, which may have been started under a spare's id: it is
    /// found by its working directory (the pod's bundle).
    async fn kill_pod_shim(&self, pod_id: &str, address: &str) {
        self.kill_daemons_in(&self.bundle(pod_id)).await;
        shim::remove_dead_socket(address);
    }

    async fn reconcile_container(&self, s: Option<&Shim>, pod: &PodRecord, c: PendingContainer) {
        let id = c.id.clone();
        let Ok(rec) = self.container(&id) else { return };
        let state = match s {
            Some(s) => Some(s.state_within(&id, RECOVERY_CALL_TIMEOUT).await),
            None => None,
        };
        match state {
            Some(Ok(st))
                if st.status.value() == TASK_RUNNING || st.status.value() == TASK_CREATED =>
            {
                // The record may lag the shim: its pid is not written after Create, and berth
                // may have stopped between the shim's Start and the record of it.
                let running = st.status.value() == TASK_RUNNING;
                if rec.pid != st.pid || (running && rec.state == ContainerState::Created) {
                    let res = self.update_container(&id, |r| {
                        r.pid = st.pid;
                        if running && r.state == ContainerState::Created {
                            r.state = ContainerState::Running;
                            r.started_ns =
                                crate::stats::process_start_ns(st.pid).unwrap_or_else(now_ns);
                        }
                    });
                    if let Err(e) = res {
                        tracing::error!(container = id, err = %e, "failed to record the recovered state");
                    }
                }
                match ContainerLog::start(
                    rec.log_path.as_deref(),
                    self.log_rotation(),
                    c.stdout,
                    c.stderr,
                    c.stdin,
                ) {
                    Ok(l) => {
                        self.container_logs().insert(id.clone(), l);
                    }
                    Err(e) => tracing::warn!(container = id, err = %e, "reattach log"),
                }
                self.end_orphaned_execs(s, &id).await;
                tracing::info!(container = id, running, "recovered container");
            }
            Some(Ok(st)) if st.status.value() == TASK_STOPPED => {
                let at = st
                    .exited_at
                    .as_ref()
                    .map(|t| t.seconds * 1_000_000_000 + i64::from(t.nanos))
                    .unwrap_or(0);
                self.on_container_exit(&id, st.exit_status, at);
                self.reap_container(&id).await;
            }
            other => {
                if let Some(Err(e)) = &other {
                    tracing::warn!(container = id, err = %e, "the shim does not know the container's task");
                }
                // The task may still exist in runc (berth died while the shim created it, and
                // the shim lost it): the shim binary's delete kills and removes it.
                self.delete_dead_task(&pod.shim_binary, &id, &self.ctr_dir(&id).join("bundle"))
                    .await;
                self.mark_gone(&id, "the container's task was gone when berth restarted");
            }
        }
    }

    /// Kills the exec processes the previous berth started in container `id` (their FIFOs
    /// are still in its exec directory): their clients were that berth's connections, which
    /// died with it, and an exec outlives nobody who asked for it.
    async fn end_orphaned_execs(&self, s: Option<&Shim>, id: &str) {
        let Some(s) = s else { return };
        let dir = self.ctr_dir(id).join("exec");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let mut execs: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                Some(name.split_once('-')?.0.to_string())
            })
            .collect();
        execs.sort();
        execs.dedup();
        for exec_id in execs {
            tracing::info!(
                container = id,
                exec_id,
                "killing an exec whose client went with the previous berth"
            );
            let _ = s.kill_process(id, &exec_id, SIGKILL, false).await;
            let _ = tokio::time::timeout(RECOVERY_CALL_TIMEOUT, s.wait_process(id, &exec_id)).await;
            let _ = s.delete_process(id, &exec_id).await;
            for kind in ["stdin", "stdout", "stderr"] {
                let _ = std::fs::remove_file(dir.join(format!("{exec_id}-{kind}")));
            }
        }
    }
}

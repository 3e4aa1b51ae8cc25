//! The task API client: one connection to a shim, `containerd.task.v2.Task` over ttrpc,
//! each call bounded.

use std::path::Path;
use std::time::Duration;

use containerd_shim_protos::api;
use containerd_shim_protos::shim_async::{Client, TaskClient};

use super::binary::{
    BACKGROUND_NICE, SOCKET_LINGER, kill_unreachable, remove_socket_when_closed, start,
};
use super::env::{CALL_TIMEOUT, CONNECT_TIMEOUT, RUNTIME_CALL_TIMEOUT, ShimEnv};
use crate::error::{Error, Result};

/// Snapshot mounts as the task API's rootfs mounts.
pub fn rootfs_mounts(mounts: Vec<berth_image::snapshot::MountSpec>) -> Vec<api::Mount> {
    mounts
        .into_iter()
        .map(|m| api::Mount {
            type_: m.kind,
            source: m.source,
            options: m.options,
            ..Default::default()
        })
        .collect()
}

/// Runs `<shim> start` (see [`start`]) and connects to the shim. A shim that started but
/// cannot be reached is killed and its socket removed: no shim outlives the failure unseen.
pub async fn start_and_connect(
    binary: &Path,
    env: &ShimEnv,
    id: &str,
    bundle: &Path,
    options: &[u8],
    background: bool,
) -> Result<Shim> {
    let address = start(binary, env, id, bundle, options, background).await?;
    match Shim::connect(&address).await {
        Ok(s) => Ok(s),
        Err(e) => {
            kill_unreachable(env, id, &address).await;
            Err(e)
        }
    }
}

/// runc shim options (`containerd.runc.v1.Options`), as a handler's `options` table sets them.
#[derive(Debug, Clone, Default)]
pub struct RuncOptions {
    /// The runtime binary (`runc`, `/usr/bin/runsc`, …).
    pub binary_name: Option<String>,
    /// The runtime's state root.
    pub root: Option<String>,
    /// Use the systemd cgroup driver.
    pub systemd_cgroup: bool,
}

/// A connection to one shim.
#[derive(Clone)]
pub struct Shim {
    task: TaskClient,
    /// The shim's ttrpc address.
    pub address: String,
    /// Bounds exec set-ups (Exec + Start) in flight on this shim; see [`Shim::exec_permit`].
    exec_gate: std::sync::Arc<tokio::sync::Semaphore>,
}

/// Exec set-ups in flight per shim. Debian's containerd 1.6 runc shim stalls for seconds
/// (its exit reaper, task lock and event lock wait on each other until a timeout) once
/// some 27 execs start at once; a few at a time keeps it out of that.
const EXEC_SETUPS_IN_FLIGHT: usize = 4;

impl std::fmt::Debug for Shim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shim")
            .field("address", &self.address)
            .finish()
    }
}

fn ctx(timeout: Duration) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(timeout.as_nanos() as i64)
}

fn task_err(call: &'static str, id: &str, e: ttrpc::Error) -> Error {
    let (reason, not_found) = match &e {
        ttrpc::Error::RpcStatus(s) => (s.message.clone(), s.code() == ttrpc::Code::NOT_FOUND),
        other => (other.to_string(), false),
    };
    let gone = matches!(
        e,
        ttrpc::Error::LocalClosed
            | ttrpc::Error::RemoteClosed
            | ttrpc::Error::Eof
            | ttrpc::Error::Socket(_)
    );
    Error::Task {
        call,
        id: id.to_string(),
        reason,
        not_found,
        gone,
    }
}

/// Gives the shim process `pid`, started in the background, berth's own CPU priority (what a
/// shim started in the foreground inherits): see [`set_nice`].
pub fn foreground(pid: u32) -> Result<()> {
    let nice = rustix::process::getpriority_process(None)
        .map_err(|e| Error::io("read berth's own priority", e.into()))?;
    set_nice(pid, nice)
}

/// Puts every thread of the shim process `pid` at the lowest CPU priority, as [`start`]
/// in the background began to: threads it started before that took effect are caught here.
pub fn background(pid: u32) -> Result<()> {
    set_nice(pid, BACKGROUND_NICE)
}

/// Sets the niceness of every thread of `pid` (niceness is per thread on Linux, and new
/// threads inherit their creator's), twice over, so that a thread created during the first
/// pass is caught by the second.
fn set_nice(pid: u32, nice: i32) -> Result<()> {
    for _ in 0..2 {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map_err(|e| Error::io(format!("list the threads of shim {pid}"), e))?;
        for t in tasks.flatten() {
            let Some(tid) = t
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
                .and_then(rustix::process::Pid::from_raw)
            else {
                continue;
            };
            match rustix::process::setpriority_process(Some(tid), nice) {
                Ok(()) | Err(rustix::io::Errno::SRCH) => {}
                Err(e) => {
                    return Err(Error::io(
                        format!("renice thread {tid:?} of shim {pid}"),
                        e.into(),
                    ));
                }
            }
        }
    }
    Ok(())
}

impl Shim {
    /// Connects to a shim's ttrpc address.
    pub async fn connect(address: &str) -> Result<Self> {
        let failed = |reason: String| Error::Task {
            call: "connect",
            id: address.into(),
            reason,
            not_found: false,
            gone: false,
        };
        let client = tokio::time::timeout(CONNECT_TIMEOUT, Client::connect(address))
            .await
            .map_err(|_| failed(format!("no connection within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| failed(e.to_string()))?;
        Ok(Shim {
            task: TaskClient::new(client),
            address: address.to_string(),
            exec_gate: std::sync::Arc::new(tokio::sync::Semaphore::new(EXEC_SETUPS_IN_FLIGHT)),
        })
    }

    /// Creates a task from the bundle's `config.json`, on `rootfs` mounts (empty: the spec's
    /// root path is used as is). Returns the task's pid.
    pub async fn create(
        &self,
        id: &str,
        bundle: &Path,
        rootfs: Vec<api::Mount>,
        stdio: [&str; 3],
        terminal: bool,
        options: Option<RuncOptions>,
    ) -> Result<u32> {
        let options = match options {
            Some(o) => {
                use containerd_shim_protos::protobuf::Message;
                let opts = containerd_shim_protos::shim::oci::Options {
                    binary_name: o.binary_name.unwrap_or_default(),
                    root: o.root.unwrap_or_default(),
                    systemd_cgroup: o.systemd_cgroup,
                    ..Default::default()
                };
                let value = opts.write_to_bytes().map_err(|e| Error::Task {
                    call: "Create",
                    id: id.into(),
                    reason: format!("encode options: {e}"),
                    not_found: false,
                    gone: false,
                })?;
                let any = containerd_shim_protos::protobuf::well_known_types::any::Any {
                    type_url: "containerd.runc.v1.Options".into(),
                    value,
                    ..Default::default()
                };
                containerd_shim_protos::protobuf::MessageField::some(any)
            }
            None => containerd_shim_protos::protobuf::MessageField::none(),
        };
        let req = api::CreateTaskRequest {
            id: id.into(),
            bundle: bundle.display().to_string(),
            rootfs,
            terminal,
            stdin: stdio[0].into(),
            stdout: stdio[1].into(),
            stderr: stdio[2].into(),
            options,
            ..Default::default()
        };
        Ok(self
            .task
            .create(ctx(RUNTIME_CALL_TIMEOUT), &req)
            .await
            .map_err(|e| task_err("Create", id, e))?
            .pid)
    }

    /// Starts the created task.
    pub async fn start(&self, id: &str) -> Result<u32> {
        self.start_process(id, "").await
    }

    /// Starts the task's init process (`exec_id` empty) or one of its execs.
    pub async fn start_process(&self, id: &str, exec_id: &str) -> Result<u32> {
        let req = api::StartRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        Ok(self
            .task
            .start(ctx(RUNTIME_CALL_TIMEOUT), &req)
            .await
            .map_err(|e| task_err("Start", id, e))?
            .pid)
    }

    /// Sends `signal` to the task (`all`: to every process in it).
    pub async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        self.kill_process(id, "", signal, all).await
    }

    /// Sends `signal` to the task's init process or one of its execs.
    pub async fn kill_process(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<()> {
        let req = api::KillRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            signal,
            all,
            ..Default::default()
        };
        self.task
            .kill(ctx(CALL_TIMEOUT), &req)
            .await
            .map_err(|e| task_err("Kill", id, e))?;
        Ok(())
    }

    /// Waits for the task to exit; returns its exit status.
    pub async fn wait(&self, id: &str) -> Result<u32> {
        self.wait_process(id, "").await
    }

    /// Waits for the task's init process or one of its execs to exit.
    pub async fn wait_process(&self, id: &str, exec_id: &str) -> Result<u32> {
        let req = api::WaitRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        Ok(self
            .task
            .wait(ctx(Duration::ZERO), &req)
            .await
            .map_err(|e| task_err("Wait", id, e))?
            .exit_status)
    }

    /// The task's state.
    pub async fn state(&self, id: &str) -> Result<api::StateResponse> {
        self.state_within(id, CALL_TIMEOUT).await
    }

    /// The task's state, asked with a deadline of its own (recovery's, shorter than a
    /// call's usual one).
    pub async fn state_within(&self, id: &str, timeout: Duration) -> Result<api::StateResponse> {
        let req = api::StateRequest {
            id: id.into(),
            ..Default::default()
        };
        self.task
            .state(ctx(timeout), &req)
            .await
            .map_err(|e| task_err("State", id, e))
    }

    /// Deletes the (exited) task; returns its exit status.
    pub async fn delete(&self, id: &str) -> Result<u32> {
        self.delete_process(id, "").await
    }

    /// Deletes the exited task (`exec_id` empty) or one of its exited execs.
    pub async fn delete_process(&self, id: &str, exec_id: &str) -> Result<u32> {
        let req = api::DeleteRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        Ok(self
            .task
            .delete(ctx(CALL_TIMEOUT), &req)
            .await
            .map_err(|e| task_err("Delete", id, e))?
            .exit_status)
    }

    /// The shim's own pid and the task's.
    pub async fn connect_info(&self, id: &str) -> Result<(u32, u32)> {
        let req = api::ConnectRequest {
            id: id.into(),
            ..Default::default()
        };
        let r = self
            .task
            .connect(ctx(CALL_TIMEOUT), &req)
            .await
            .map_err(|e| task_err("Connect", id, e))?;
        Ok((r.shim_pid, r.task_pid))
    }

    /// Waits for a turn to set an exec up (Exec, then Start); hold the permit until Start
    /// returned.
    pub async fn exec_permit(&self) -> tokio::sync::OwnedSemaphorePermit {
        loop {
            if let Ok(p) = self.exec_gate.clone().acquire_owned().await {
                return p;
            }
        }
    }

    /// Adds an exec process to task `id`; `process` is its OCI process spec (JSON).
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process: &crate::spec::oci::Process,
        stdio: [&str; 3],
        terminal: bool,
    ) -> Result<()> {
        let any = containerd_shim_protos::protobuf::well_known_types::any::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: serde_json::to_vec(process).unwrap_or_default(),
            ..Default::default()
        };
        let req = api::ExecProcessRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            terminal,
            stdin: stdio[0].into(),
            stdout: stdio[1].into(),
            stderr: stdio[2].into(),
            spec: containerd_shim_protos::protobuf::MessageField::some(any),
            ..Default::default()
        };
        self.task
            .exec(ctx(RUNTIME_CALL_TIMEOUT), &req)
            .await
            .map_err(|e| task_err("Exec", id, e))?;
        Ok(())
    }

    /// Closes the stdin of the task's init process or of one of its execs.
    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        let req = api::CloseIORequest {
            id: id.into(),
            exec_id: exec_id.into(),
            stdin: true,
            ..Default::default()
        };
        self.task
            .close_io(ctx(CALL_TIMEOUT), &req)
            .await
            .map_err(|e| task_err("CloseIO", id, e))?;
        Ok(())
    }

    /// Resizes a process's terminal.
    pub async fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let req = api::ResizePtyRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            width,
            height,
            ..Default::default()
        };
        self.task
            .resize_pty(ctx(CALL_TIMEOUT), &req)
            .await
            .map_err(|e| task_err("ResizePty", id, e))?;
        Ok(())
    }

    /// Applies new Linux resources (OCI `LinuxResources` JSON) to the task.
    pub async fn update(&self, id: &str, resources: &crate::spec::oci::Resources) -> Result<()> {
        let any = containerd_shim_protos::protobuf::well_known_types::any::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
            value: serde_json::to_vec(resources).unwrap_or_default(),
            ..Default::default()
        };
        let req = api::UpdateTaskRequest {
            id: id.into(),
            resources: containerd_shim_protos::protobuf::MessageField::some(any),
            ..Default::default()
        };
        self.task
            .update(ctx(CALL_TIMEOUT), &req)
            .await
            .map_err(|e| task_err("Update", id, e))?;
        Ok(())
    }

    /// Asks the shim to exit (it does once it has no tasks left).
    pub async fn shutdown(&self, id: &str) -> Result<()> {
        let req = api::ShutdownRequest {
            id: id.into(),
            now: false,
            ..Default::default()
        };
        match self.task.shutdown(ctx(CALL_TIMEOUT), &req).await {
            // The shim exits while answering: a closed connection is success.
            Ok(_)
            | Err(ttrpc::Error::Socket(_))
            | Err(ttrpc::Error::LocalClosed)
            | Err(ttrpc::Error::RemoteClosed) => {
                tokio::spawn(remove_socket_when_closed(
                    self.address.clone(),
                    SOCKET_LINGER,
                ));
                Ok(())
            }
            Err(e) => Err(task_err("Shutdown", id, e)),
        }
    }
}

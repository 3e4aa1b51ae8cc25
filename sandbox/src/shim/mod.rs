//! containerd shim v2: launching a shim binary, talking `containerd.task.v2.Task` to it over
//! ttrpc, and cleaning up after one that died.
//!
//! Launch follows containerd: `<shim> -namespace <ns> -address <berth grpc socket>
//! -publish-binary <berth> -id <id> start`, run in the bundle directory with `TTRPC_ADDRESS`,
//! `GRPC_ADDRESS` and `NAMESPACE` set; the shim daemonizes and prints its own address. A plain
//! `unix://…` means task API v2 (Debian's 1.6 runc shim, the Kata and runsc shims); JSON with
//! `"version":3` is containerd 2.x's task v3, which berth reports as unsupported for now.
//! The address is written to `<bundle>/address` so a restarted berth can reconnect.

pub mod events;
pub(crate) mod registry;
pub(crate) mod spare;
pub mod watch;

use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_shim_protos::api;
use containerd_shim_protos::shim_async::{Client, TaskClient};
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};

/// Deadline of `<shim> start` and `<shim> delete` (each runs the shim binary, which exits).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of the task API calls that run the OCI runtime to create or start a process
/// (Create, Start, Exec): runc can be slow on a loaded node.
const RUNTIME_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of every other task API call (State, Kill, Delete, Connect, Update, CloseIO,
/// ResizePty, Shutdown): a shim that cannot answer one of these in this long is broken.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of connecting to a shim's socket: a stopped shim's listen backlog fills up, and
/// connecting then waits for as long as it stays stopped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How shims are started: what berth tells them about itself.
#[derive(Debug, Clone)]
pub struct ShimEnv {
    /// The containerd namespace (`k8s.io`, as the kubelet's containerd uses).
    pub namespace: String,
    /// berth's gRPC socket: passed as `-address`; shims derive their socket names from it.
    pub grpc_address: PathBuf,
    /// berth's ttrpc socket serving `containerd.services.events.ttrpc.v1.Events`.
    pub ttrpc_address: PathBuf,
    /// The binary shims may call to publish events (berth itself).
    pub publish_binary: PathBuf,
}

/// Finds a shim binary: an explicit path, else `$PATH`.
pub fn find_shim(binary: &str, explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(Error::ShimNotFound {
                binary: binary.into(),
                searched: p.display().to_string(),
            })
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    for d in &dirs {
        let p = d.join(binary);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(Error::ShimNotFound {
        binary: binary.into(),
        searched: format!(
            "$PATH ({})",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(":")
        ),
    })
}

fn base_command(binary: &Path, env: &ShimEnv, id: &str, bundle: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(binary);
    cmd.arg("-namespace")
        .arg(&env.namespace)
        .arg("-address")
        .arg(&env.grpc_address)
        .arg("-publish-binary")
        .arg(&env.publish_binary)
        .arg("-id")
        .arg(id)
        .current_dir(bundle)
        .env("TTRPC_ADDRESS", &env.ttrpc_address)
        .env("GRPC_ADDRESS", &env.grpc_address)
        .env("NAMESPACE", &env.namespace)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Forwards what a shim writes to its `log` fifo into berth's log; stops when dropped.
#[derive(Debug)]
pub struct ShimLog(tokio::task::AbortHandle);

impl Drop for ShimLog {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Opens (creating it if needed) the `log` fifo in `bundle` that a shim writes its own log to,
/// as containerd does; a shim that cannot open it exits at once.
pub fn open_log(bundle: &Path, id: &str) -> Result<ShimLog> {
    use tokio::io::AsyncBufReadExt;
    let path = bundle.join("log");
    match rustix::fs::mknodat(
        rustix::fs::CWD,
        &path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o700),
        0,
    ) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(Error::io(format!("create {}", path.display()), e.into())),
    }
    // Read-write, so that the reader never sees EOF between one shim writer and the next.
    let rx = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&path)
        .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    let id = id.to_string();
    let task = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(rx).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::debug!(target: "berth::shim", id, "{line}");
        }
    });
    Ok(ShimLog(task.abort_handle()))
}

/// How a shim started ahead of need runs until it is given work: at the lowest CPU priority,
/// so that starting it never slows the pods being created meanwhile. [`foreground`] gives it
/// berth's own priority back.
const BACKGROUND_NICE: i32 = 19;

/// Runs `<shim> start` for task `id` in `bundle` and returns the shim's ttrpc address.
/// `options` (a protobuf `Any`, e.g. runc options) go to the shim's stdin. Open the bundle's
/// log fifo with [`open_log`] first. A `background` shim (a spare) runs at the lowest CPU
/// priority, as does the shim daemon it forks, until [`foreground`].
pub async fn start(
    binary: &Path,
    env: &ShimEnv,
    id: &str,
    bundle: &Path,
    options: &[u8],
    background: bool,
) -> Result<String> {
    let shown = binary.display().to_string();
    let mut cmd = base_command(binary, env, id, bundle);
    cmd.arg("start");
    // No pre_exec hook: with none, the process is spawned with vfork semantics (no copy of
    // berth's page tables, and the wait for its exec is short, not at the lowest priority).
    let mut child = cmd.spawn().map_err(|e| Error::ShimStart {
        binary: shown.clone(),
        reason: e.to_string(),
    })?;
    if background && let Some(pid) = child.id() {
        // At once, before the Go runtime starts its threads (they inherit the niceness of
        // the thread that makes them); `background` sweeps up any it missed.
        let _ = rustix::process::setpriority_process(
            rustix::process::Pid::from_raw(pid as i32),
            BACKGROUND_NICE,
        );
    }
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(options)
            .await
            .map_err(|e| Error::ShimStart {
                binary: shown.clone(),
                reason: format!("write options: {e}"),
            })?;
    }
    let out = tokio::time::timeout(START_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| Error::ShimStart {
            binary: shown.clone(),
            reason: format!("no answer within {START_TIMEOUT:?}"),
        })?
        .map_err(|e| Error::ShimStart {
            binary: shown.clone(),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(Error::ShimStart {
            binary: shown,
            reason: if stderr.is_empty() {
                format!("exited with {}", out.status)
            } else {
                stderr
            },
        });
    }
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let address = parse_start_output(&shown, &stdout)?;
    std::fs::write(bundle.join("address"), &address)
        .map_err(|e| Error::io(format!("write {}/address", bundle.display()), e))?;
    Ok(address)
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

/// Kills the daemon of shim `id` that berth cannot talk to, found by its command line
/// (`-namespace <ns>` and `-id <id>`, as [`start`] gave them; ids are unique random hex), and
/// removes its socket. The kill goes through a pidfd, so a recycled pid is never hit. The
/// /proc scan and the wait for the exit run on a blocking thread.
pub async fn kill_unreachable(env: &ShimEnv, id: &str, address: &str) {
    let (namespace, id, address) = (env.namespace.clone(), id.to_string(), address.to_string());
    let _ = tokio::task::spawn_blocking(move || kill_daemons(&namespace, &id, &address)).await;
}

fn kill_daemons(namespace: &str, id: &str, address: &str) {
    for pid in daemons_of(namespace, id) {
        // Checked again once the pidfd is open: still the same shim? Until it is gone its
        // socket may still accept connections, so the kill is waited for.
        if crate::process::kill_checked(
            pid,
            || daemons_of(namespace, id).contains(&pid),
            Duration::from_secs(2),
        ) {
            tracing::warn!(id, pid, "killed a shim berth could not connect to");
        }
    }
    remove_dead_socket(address);
}

/// The pids of shim daemons started for task `id` in `namespace`.
fn daemons_of(namespace: &str, id: &str) -> Vec<i32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let has = |flag: &str, value: &str| {
                args.windows(2)
                    .any(|w| w[0] == flag.as_bytes() && w[1] == value.as_bytes())
            };
            has("-id", id)
                && has("-namespace", namespace)
                && !args.iter().any(|a| *a == b"start" || *a == b"delete")
        })
        .collect()
}

/// Removes the socket file a shim listened on at `address` (`unix://<path>`), if nothing
/// listens there any more: a shim that dies, or is killed, leaves it behind.
pub fn remove_dead_socket(address: &str) {
    use std::os::unix::fs::FileTypeExt;
    let Some(path) = address.strip_prefix("unix://") else {
        return;
    };
    let path = Path::new(path);
    let is_socket = std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false);
    if is_socket
        && matches!(
            std::os::unix::net::UnixStream::connect(path),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
        )
    {
        let _ = std::fs::remove_file(path);
    }
}

/// How long after Shutdown berth watches for a shim's socket to close.
pub const SOCKET_LINGER: Duration = Duration::from_secs(5);

/// After a shim's Shutdown: the shim removes its socket as it exits, but Debian's 1.6 runc
/// shim does so in a shutdown callback that its exit can outrun (about one pod in a hundred
/// under critest), leaving a socket nothing listens on. Waits up to `within` for the socket
/// to stop answering, then removes it; one that is already gone is left so.
pub async fn remove_socket_when_closed(address: String, within: Duration) {
    let Some(path) = address.strip_prefix("unix://").map(PathBuf::from) else {
        return;
    };
    let deadline = tokio::time::Instant::now() + within;
    while std::fs::symlink_metadata(&path).is_ok() {
        remove_dead_socket(&address);
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Interprets what `<shim> start` printed.
pub fn parse_start_output(binary: &str, stdout: &str) -> Result<String> {
    if stdout.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(stdout).map_err(|e| Error::ShimStart {
            binary: binary.into(),
            reason: format!("unparsable bootstrap {stdout:?}: {e}"),
        })?;
        let version = v.get("version").map(|v| v.to_string()).unwrap_or_default();
        return Err(Error::UnsupportedShim {
            binary: binary.into(),
            version: format!("v{version}"),
        });
    }
    if stdout.starts_with("unix://") && stdout.len() > 7 && !stdout.contains(char::is_whitespace) {
        return Ok(stdout.to_string());
    }
    Err(Error::ShimStart {
        binary: binary.into(),
        reason: format!("unexpected output {stdout:?} (want unix://…)"),
    })
}

/// Runs `<shim> -bundle <bundle> delete` for a task whose shim is gone: the shim binary
/// cleans up what its runtime left (runc state, mounts) and reports the exit. The dead shim's
/// socket (named in the bundle's `address`, when the task had a shim of its own) goes too.
pub async fn delete_dead(binary: &Path, env: &ShimEnv, id: &str, bundle: &Path) -> Result<()> {
    if let Ok(address) = std::fs::read_to_string(bundle.join("address")) {
        remove_dead_socket(address.trim());
    }
    // The 1.6 runc shim finds the task's files at `dirname($PWD)/<id>` (containerd's layout,
    // where the bundle directory is named after the task). berth's bundles are not, so it
    // runs the shim from a link named `<id>` to the bundle, and says so in $PWD (which Go's
    // os.Getwd trusts when it names the same directory).
    let parent = bundle.parent().unwrap_or(bundle);
    let links = parent.join(".shim-delete");
    let link = links.join(id);
    let _ = std::fs::remove_dir_all(&links);
    std::fs::create_dir_all(&links).map_err(|e| Error::io("create shim-delete dir", e))?;
    std::os::unix::fs::symlink(bundle, &link)
        .map_err(|e| Error::io(format!("link {}", link.display()), e))?;
    // Bounded: a shim binary that hangs is killed (kill_on_drop) when the wait gives up.
    let out = tokio::time::timeout(
        START_TIMEOUT,
        base_command(binary, env, id, bundle)
            .current_dir(&link)
            .env("PWD", &link)
            .arg("-bundle")
            .arg(bundle)
            .arg("delete")
            .output(),
    )
    .await;
    let _ = std::fs::remove_dir_all(&links);
    let out = out
        .map_err(|_| {
            Error::Timeout(format!(
                "{} delete of {id}: no answer within {START_TIMEOUT:?}",
                binary.display()
            ))
        })?
        .map_err(|e| Error::io(format!("run {} delete", binary.display()), e))?;
    if !out.status.success() {
        return Err(Error::Task {
            call: "delete (shim binary)",
            id: id.into(),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            not_found: false,
            gone: false,
        });
    }
    Ok(())
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_output() {
        assert_eq!(
            parse_start_output("s", "unix:///run/containerd/s/abc").unwrap(),
            "unix:///run/containerd/s/abc"
        );
        assert!(matches!(
            parse_start_output(
                "s",
                r#"{"version":3,"address":"unix:///x","protocol":"ttrpc"}"#
            ),
            Err(Error::UnsupportedShim { .. })
        ));
        assert!(parse_start_output("s", "").is_err());
        assert!(parse_start_output("s", "tcp://1.2.3.4:5").is_err());
        assert!(parse_start_output("s", "unix:///a b").is_err());
    }

    #[test]
    fn missing_shim_names_the_binary_and_where_berth_looked() {
        let e = find_shim("containerd-shim-kata-v2", None).unwrap_err();
        assert!(
            e.to_string().contains("containerd-shim-kata-v2") && e.to_string().contains("$PATH"),
            "{e}"
        );
        let e = find_shim("x", Some(Path::new("/opt/nope/x"))).unwrap_err();
        assert!(e.to_string().contains("/opt/nope/x"));
        assert_eq!(e.kind(), crate::ErrorKind::FailedPrecondition);
    }
}

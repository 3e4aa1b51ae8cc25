//! The task API: containers (each an init process and its execs) and what each call does.
//!
//! Exits come from the reaper and are handled on a thread of their own, in order, under the
//! same lock a `Start` holds while it starts a process and publishes that it did: a task's
//! exit event never overtakes its start event.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use containerd_shim_protos::api;
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::{Message, MessageField};

use crate::events::{Publisher, timestamp};
use crate::log::{debug, info, warning};
use crate::oom::OomWatcher;
use crate::reaper::{Reaper, exit_code};
use crate::runtime::{Runtime, args};
use crate::stdio::{Kept, Paths};

/// The task API's service name.
const TASK_SERVICE: &str = "containerd.task.v2.Task";
/// How long an exit waits for a terminal's last output to be copied.
const TTY_DRAIN: Duration = Duration::from_secs(1);

/// A ttrpc error status.
#[derive(Debug)]
pub struct Status {
    code: ttrpc::proto::Code,
    message: String,
}

impl Status {
    fn new(code: ttrpc::proto::Code, message: impl Into<String>) -> Self {
        Status {
            code,
            message: message.into(),
        }
    }
    pub fn invalid(m: impl Into<String>) -> Self {
        Self::new(ttrpc::proto::Code::INVALID_ARGUMENT, m)
    }
    fn not_found(m: impl Into<String>) -> Self {
        Self::new(ttrpc::proto::Code::NOT_FOUND, m)
    }
    fn exists(m: impl Into<String>) -> Self {
        Self::new(ttrpc::proto::Code::ALREADY_EXISTS, m)
    }
    fn precondition(m: impl Into<String>) -> Self {
        Self::new(ttrpc::proto::Code::FAILED_PRECONDITION, m)
    }
    fn failed(m: impl Into<String>) -> Self {
        Self::new(ttrpc::proto::Code::UNKNOWN, m)
    }
    fn unimplemented(m: impl Into<String>) -> Self {
        Self::new(ttrpc::proto::Code::UNIMPLEMENTED, m)
    }
    /// As the ttrpc response's status.
    pub fn into_proto(self) -> ttrpc::proto::Status {
        ttrpc::proto::Status {
            code: self.code.into(),
            message: self.message,
            ..Default::default()
        }
    }
}

/// What the server does after answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Continue,
    /// Exit the daemon (`Shutdown` with no tasks left).
    Exit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProcStatus {
    Created,
    Running,
    Paused,
    Stopped,
}

struct ProcState {
    status: ProcStatus,
    pid: u32,
    exit: Option<(u32, SystemTime)>,
}

/// A container's init process or one of its execs.
struct Process {
    container_id: String,
    /// Empty for the init process.
    exec_id: String,
    paths: Paths,
    /// An exec's OCI process (JSON).
    spec: Vec<u8>,
    state: Mutex<ProcState>,
    exited: Condvar,
    io: Mutex<Option<Arc<Kept>>>,
    /// Signals go through it: it names this process even after its pid was reaped.
    pidfd: Mutex<Option<OwnedFd>>,
}

impl Process {
    fn new(container_id: &str, exec_id: &str, paths: Paths, spec: Vec<u8>) -> Arc<Process> {
        Arc::new(Process {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            paths,
            spec,
            state: Mutex::new(ProcState {
                status: ProcStatus::Created,
                pid: 0,
                exit: None,
            }),
            exited: Condvar::new(),
            io: Mutex::new(None),
            pidfd: Mutex::new(None),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ProcState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn io(&self) -> Option<Arc<Kept>> {
        self.io.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The id events name: the exec id, or the container id for the init process.
    fn event_id(&self) -> &str {
        if self.exec_id.is_empty() {
            &self.container_id
        } else {
            &self.exec_id
        }
    }

    fn signal(&self, sig: u32) -> Result<(), Status> {
        let g = self.pidfd.lock().unwrap_or_else(|p| p.into_inner());
        let Some(fd) = g.as_ref() else {
            return Err(Status::not_found("process already finished"));
        };
        // SAFETY: pidfd_send_signal on an open pidfd, no siginfo.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                sig as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::ESRCH) {
                Status::not_found("process already finished")
            } else {
                Status::failed(format!("signal {sig}: {e}"))
            });
        }
        Ok(())
    }
}

struct Container {
    id: String,
    bundle: PathBuf,
    runtime: Runtime,
    /// The shim mounted its rootfs (and unmounts it on Delete).
    mounted: bool,
    /// No pid namespace of its own: when init exits, what it left behind is killed.
    shared_pid_ns: bool,
    init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    /// The cgroups its init process was created in (Stats, OOM events).
    cgroups: OnceLock<crate::stats::Cgroups>,
}

impl Container {
    fn log(&self) -> PathBuf {
        self.bundle.join("log.json")
    }

    fn process(&self, exec_id: &str) -> Result<Arc<Process>, Status> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(exec_id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("exec {exec_id} of {} not found", self.id)))
    }
}

/// The task service.
pub struct Service {
    namespace: String,
    events: Publisher,
    socket: Option<PathBuf>,
    reaper: OnceLock<Arc<Reaper>>,
    oom: Option<Arc<OomWatcher>>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    pids: Mutex<HashMap<i32, Arc<Process>>>,
    exits: Mutex<mpsc::Sender<(i32, i32, SystemTime)>>,
    /// Held while a process is started and its start published, and while an exit is
    /// published.
    order: Mutex<()>,
}

fn valid_id(kind: &str, id: &str) -> Result<(), Status> {
    if id.is_empty() || id.len() > 256 || id.contains('/') || id == "." || id == ".." {
        return Err(Status::invalid(format!("invalid {kind} {id:?}")));
    }
    Ok(())
}

impl Service {
    pub fn new(namespace: String, events: Publisher, socket: Option<PathBuf>) -> Arc<Service> {
        let (tx, rx) = mpsc::channel();
        let svc = Arc::new_cyclic(|me: &Weak<Service>| {
            let oom_me = me.clone();
            let oom = OomWatcher::start(Box::new(move |id| {
                if let Some(s) = oom_me.upgrade() {
                    info!("container {id} ran out of memory");
                    s.events.publish(
                        "/tasks/oom",
                        "TaskOOM",
                        &ev::TaskOOM {
                            container_id: id.to_string(),
                            ..Default::default()
                        },
                    );
                }
            }))
            .map_err(|e| warning!("no OOM events: {e}"))
            .ok();
            Service {
                namespace,
                events,
                socket,
                reaper: OnceLock::new(),
                oom,
                containers: Mutex::new(HashMap::new()),
                pids: Mutex::new(HashMap::new()),
                exits: Mutex::new(tx),
                order: Mutex::new(()),
            }
        });
        let exits = svc.exits.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let reaper = Reaper::start(Box::new(move |pid, status| {
            let _ = exits.send((pid, status, SystemTime::now()));
        }));
        let _ = svc.reaper.set(reaper);
        let me = Arc::downgrade(&svc);
        std::thread::Builder::new()
            .name("exits".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                for (pid, status, at) in rx {
                    let Some(s) = me.upgrade() else { return };
                    s.on_exit(pid, status, at);
                }
            })
            .expect("spawn the exits thread");
        svc
    }

    fn reaper(&self) -> &Reaper {
        self.reaper
            .get()
            .expect("the reaper starts with the service")
    }

    fn containers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn container(&self, id: &str) -> Result<Arc<Container>, Status> {
        self.containers()
            .get(id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("container {id} not found")))
    }

    fn order(&self) -> std::sync::MutexGuard<'_, ()> {
        self.order.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Exits the daemon (after `Shutdown` was answered).
    pub fn exit(&self) -> ! {
        if let Some(s) = &self.socket {
            let _ = std::fs::remove_file(s);
        }
        info!("shut down");
        std::process::exit(0)
    }

    /// Decodes a request, runs it, encodes the answer.
    pub fn dispatch(
        &self,
        service: &str,
        method: &str,
        payload: &[u8],
    ) -> (Result<Vec<u8>, Status>, Reply) {
        if service != TASK_SERVICE {
            return (
                Err(Status::unimplemented(format!(
                    "service {service} is not served here"
                ))),
                Reply::Continue,
            );
        }
        macro_rules! call {
            ($req:ty, $f:ident) => {
                (|| {
                    let req = <$req>::parse_from_bytes(payload)
                        .map_err(|e| Status::invalid(format!("{method}: bad request: {e}")))?;
                    let resp = self.$f(req)?;
                    resp.write_to_bytes()
                        .map_err(|e| Status::failed(format!("{method}: encode: {e}")))
                })()
            };
        }
        debug!("{method}");
        let res = match method {
            "Create" => call!(api::CreateTaskRequest, create),
            "Start" => call!(api::StartRequest, start),
            "Delete" => call!(api::DeleteRequest, delete),
            "State" => call!(api::StateRequest, state),
            "Pids" => call!(api::PidsRequest, pids),
            "Pause" => call!(api::PauseRequest, pause),
            "Resume" => call!(api::ResumeRequest, resume),
            "Kill" => call!(api::KillRequest, kill),
            "Exec" => call!(api::ExecProcessRequest, exec),
            "ResizePty" => call!(api::ResizePtyRequest, resize_pty),
            "CloseIO" => call!(api::CloseIORequest, close_io),
            "Update" => call!(api::UpdateTaskRequest, update),
            "Wait" => call!(api::WaitRequest, wait),
            "Stats" => call!(api::StatsRequest, stats),
            "Connect" => call!(api::ConnectRequest, connect),
            "Checkpoint" => Err(Status::unimplemented(
                "checkpoint is not supported by containerd-shim-berth-v1",
            )),
            "Shutdown" => {
                let req = match api::ShutdownRequest::parse_from_bytes(payload) {
                    Ok(r) => r,
                    Err(e) => {
                        return (
                            Err(Status::invalid(format!("Shutdown: bad request: {e}"))),
                            Reply::Continue,
                        );
                    }
                };
                let busy = !self.containers().is_empty();
                let empty = api::Empty::new().write_to_bytes().unwrap_or_default();
                return if busy && !req.now {
                    (Ok(empty), Reply::Continue)
                } else {
                    (Ok(empty), Reply::Exit)
                };
            }
            other => Err(Status::unimplemented(format!(
                "method {other} is not served here"
            ))),
        };
        if let Err(e) = &res {
            debug!("{method} failed: {}", e.message);
        }
        (res, Reply::Continue)
    }

    fn create(&self, req: api::CreateTaskRequest) -> Result<api::CreateTaskResponse, Status> {
        valid_id("container id", &req.id)?;
        let bundle = PathBuf::from(&req.bundle);
        if !bundle.is_absolute() || !bundle.is_dir() {
            return Err(Status::invalid(format!(
                "bundle {:?} is not an absolute path to a directory",
                req.bundle
            )));
        }
        if self.containers().contains_key(&req.id) {
            return Err(Status::exists(format!(
                "container {} already exists",
                req.id
            )));
        }
        let opts = match req.options.as_ref() {
            Some(any) if !any.value.is_empty() => {
                containerd_shim_protos::shim::oci::Options::parse_from_bytes(&any.value)
                    .map_err(|e| Status::invalid(format!("runtime options: {e}")))?
            }
            _ => Default::default(),
        };
        let runtime = Runtime::new(
            &opts.binary_name,
            &opts.root,
            opts.systemd_cgroup,
            &self.namespace,
        );
        runtime
            .save(&bundle)
            .map_err(|e| Status::failed(format!("record the runtime in the bundle: {e}")))?;
        let spec: serde_json::Value = std::fs::read(bundle.join("config.json"))
            .ok()
            .and_then(|t| serde_json::from_slice(&t).ok())
            .ok_or_else(|| Status::invalid(format!("{}/config.json: no valid spec", req.bundle)))?;
        let rootfs = bundle.join("rootfs");
        let mounts: Vec<crate::mount::Mount> = req
            .rootfs
            .iter()
            .map(|m| crate::mount::Mount {
                kind: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        let mounted = !mounts.is_empty();
        if mounted {
            std::fs::create_dir_all(&rootfs)
                .map_err(|e| Status::failed(format!("create {}: {e}", rootfs.display())))?;
            crate::mount::mount_all(&mounts, &rootfs).map_err(Status::failed)?;
        }
        let undo = || {
            if mounted {
                crate::mount::unmount_all(&rootfs);
            }
        };
        let paths = Paths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let init = Process::new(&req.id, "", paths.clone(), Vec::new());
        let container = Arc::new(Container {
            id: req.id.clone(),
            bundle: bundle.clone(),
            runtime,
            mounted,
            shared_pid_ns: !private_pid_ns(&spec),
            init: init.clone(),
            execs: Mutex::new(HashMap::new()),
            cgroups: OnceLock::new(),
        });
        let pid_file = bundle.join("init.pid");
        let mut a = args([&"create", &"--bundle", &bundle, &"--pid-file", &pid_file]);
        if opts.no_pivot_root {
            a.push("--no-pivot".into());
        }
        let res = self.run_process(&container, &paths, a, &pid_file);
        let (kept, pid) = match res {
            Ok(v) => v,
            Err(e) => {
                // What the runtime may have left of the container goes too.
                let _ = container.runtime.run(
                    Some(self.reaper()),
                    None,
                    &args([&"delete", &"--force", &req.id]),
                    None,
                );
                undo();
                return Err(Status::failed(e));
            }
        };
        *init.io.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(kept));
        match std::fs::read_to_string(format!("/proc/{pid}/cgroup")) {
            Ok(text) => {
                let cgroups = container
                    .cgroups
                    .get_or_init(|| crate::stats::Cgroups::parse(&text));
                if let Some(oom) = &self.oom
                    && let Err(e) = oom.watch(&req.id, cgroups)
                {
                    warning!("no OOM events for {}: {e}", req.id);
                }
            }
            Err(e) => warning!("no OOM events or stats for {}: its cgroups: {e}", req.id),
        }
        self.containers().insert(req.id.clone(), container);
        let early = self.track(&init, pid);
        self.events.publish(
            "/tasks/create",
            "TaskCreate",
            &ev::TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(ev::TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                checkpoint: req.checkpoint.clone(),
                pid,
                ..Default::default()
            },
        );
        if let Some(status) = early {
            self.on_exit(pid as i32, status, SystemTime::now());
        }
        info!("created {} (pid {pid})", req.id);
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    /// Runs `<runtime> <a…> [--console-socket …] <container id>` with a process's stdio
    /// (`create` or `exec --detach`), takes its terminal, and reads the pid it wrote.
    fn run_process(
        &self,
        c: &Container,
        paths: &Paths,
        mut a: Vec<std::ffi::OsString>,
        pid_file: &Path,
    ) -> Result<(Kept, u32), String> {
        let mut prepared = crate::stdio::prepare(paths)?;
        if let Some(s) = &prepared.console {
            a.extend(args([&"--console-socket", &s.path()]));
        }
        a.push(c.id.clone().into());
        c.runtime.run(
            Some(self.reaper()),
            Some(&c.log()),
            &a,
            prepared.stdio.take(),
        )?;
        let kept = prepared.finish()?;
        Ok((kept, read_pid(pid_file)?))
    }

    /// Notes `pid` as process `p`'s and watches it; returns its wait status if it already
    /// exited (the caller then handles the exit, after publishing what came before it).
    fn track(&self, p: &Arc<Process>, pid: u32) -> Option<i32> {
        p.state().pid = pid;
        // SAFETY: pidfd_open returns a new descriptor we then own (or fails).
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd >= 0 {
            // SAFETY: fd is fresh and owned by nothing else.
            *p.pidfd.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        }
        self.pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pid as i32, p.clone());
        self.reaper().watch(pid as i32)
    }

    fn on_exit(&self, pid: i32, status: i32, at: SystemTime) {
        let Some(p) = self
            .pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pid)
        else {
            return;
        };
        let code = exit_code(status);
        // A terminal's last output is copied before the exit is told (and before the lock
        // that would hold up other tasks' starts meanwhile).
        if let Some(io) = p.io() {
            io.finish_after_exit(if p.paths.terminal {
                TTY_DRAIN
            } else {
                Duration::ZERO
            });
        }
        let _order = self.order();
        {
            let mut st = p.state();
            st.status = ProcStatus::Stopped;
            st.exit = Some((code, at));
        }
        p.exited.notify_all();
        if p.exec_id.is_empty()
            && let Ok(c) = self.container(&p.container_id)
            && c.shared_pid_ns
        {
            // What the container left in the pod's pid namespace dies with it.
            let _ = c.runtime.run(
                Some(self.reaper()),
                Some(&c.log()),
                &args([&"kill", &"--all", &p.container_id, &"KILL"]),
                None,
            );
        }
        info!(
            "{} {} exited with {code}",
            p.container_id,
            if p.exec_id.is_empty() {
                "init"
            } else {
                &p.exec_id
            }
        );
        self.events.publish(
            "/tasks/exit",
            "TaskExit",
            &ev::TaskExit {
                container_id: p.container_id.clone(),
                id: p.event_id().to_string(),
                pid: pid as u32,
                exit_status: code,
                exited_at: MessageField::some(timestamp(at)),
                ..Default::default()
            },
        );
    }

    fn start(&self, req: api::StartRequest) -> Result<api::StartResponse, Status> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if p.state().status != ProcStatus::Created {
            return Err(Status::precondition(format!(
                "{} {} is not in the created state",
                req.id,
                if req.exec_id.is_empty() {
                    ""
                } else {
                    &req.exec_id
                }
            )));
        }
        if req.exec_id.is_empty() {
            let _order = self.order();
            c.runtime
                .run(
                    Some(self.reaper()),
                    Some(&c.log()),
                    &args([&"start", &req.id]),
                    None,
                )
                .map_err(Status::failed)?;
            let pid = {
                let mut st = p.state();
                if st.status == ProcStatus::Created {
                    st.status = ProcStatus::Running;
                }
                st.pid
            };
            self.events.publish(
                "/tasks/start",
                "TaskStart",
                &ev::TaskStart {
                    container_id: req.id.clone(),
                    pid,
                    ..Default::default()
                },
            );
            return Ok(api::StartResponse {
                pid,
                ..Default::default()
            });
        }
        // An exec: the runtime runs it detached; its pid comes from the pid file.
        if c.init.state().status == ProcStatus::Stopped {
            return Err(Status::precondition(format!(
                "container {} is not running",
                req.id
            )));
        }
        let spec_file = c.bundle.join(format!("exec-{}.json", req.exec_id));
        let pid_file = c.bundle.join(format!("exec-{}.pid", req.exec_id));
        let res = (|| {
            std::fs::write(&spec_file, &p.spec).map_err(|e| format!("write the process: {e}"))?;
            let a = args([
                &"exec",
                &"--process",
                &spec_file,
                &"--detach",
                &"--pid-file",
                &pid_file,
            ]);
            let _order = self.order();
            let (kept, pid) = self.run_process(&c, &p.paths, a, &pid_file)?;
            *p.io.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(kept));
            p.state().status = ProcStatus::Running;
            let early = self.track(&p, pid);
            self.events.publish(
                "/tasks/exec-started",
                "TaskExecStarted",
                &ev::TaskExecStarted {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    pid,
                    ..Default::default()
                },
            );
            Ok::<_, String>((pid, early))
        })();
        let _ = std::fs::remove_file(&spec_file);
        let _ = std::fs::remove_file(&pid_file);
        let (pid, early) = res.map_err(Status::failed)?;
        if let Some(status) = early {
            self.on_exit(pid as i32, status, SystemTime::now());
        }
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn delete(&self, req: api::DeleteRequest) -> Result<api::DeleteResponse, Status> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let (status, pid, exit) = {
            let st = p.state();
            (st.status, st.pid, st.exit)
        };
        if matches!(status, ProcStatus::Running | ProcStatus::Paused) {
            return Err(Status::precondition(format!(
                "cannot delete a running process ({} {})",
                req.id, req.exec_id
            )));
        }
        let (code, at) = exit.unwrap_or((0, SystemTime::now()));
        let resp = api::DeleteResponse {
            pid,
            exit_status: code,
            exited_at: MessageField::some(timestamp(at)),
            ..Default::default()
        };
        if !req.exec_id.is_empty() {
            c.execs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&req.exec_id);
            return Ok(resp);
        }
        // A created task's init is still waiting in the runtime: force kills it.
        let force = status == ProcStatus::Created;
        let mut a = args([&"delete"]);
        if force {
            a.push("--force".into());
        }
        a.push(req.id.clone().into());
        if let Err(e) = c.runtime.run(Some(self.reaper()), Some(&c.log()), &a, None)
            && !e.contains("does not exist")
            && !e.contains("not found")
        {
            return Err(Status::failed(e));
        }
        if c.mounted {
            crate::mount::unmount_all(&c.bundle.join("rootfs"));
        }
        if let Some(oom) = &self.oom {
            oom.unwatch(&req.id);
        }
        if let Some(io) = p.io() {
            io.finish_after_exit(Duration::ZERO);
        }
        self.containers().remove(&req.id);
        self.pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, q| q.container_id != req.id);
        self.events.publish(
            "/tasks/delete",
            "TaskDelete",
            &ev::TaskDelete {
                container_id: req.id.clone(),
                pid,
                exit_status: code,
                exited_at: MessageField::some(timestamp(at)),
                ..Default::default()
            },
        );
        info!("deleted {}", req.id);
        Ok(resp)
    }

    fn state(&self, req: api::StateRequest) -> Result<api::StateResponse, Status> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let st = p.state();
        let status = match st.status {
            ProcStatus::Created => api::Status::CREATED,
            ProcStatus::Running => api::Status::RUNNING,
            ProcStatus::Paused => api::Status::PAUSED,
            ProcStatus::Stopped => api::Status::STOPPED,
        };
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle: c.bundle.display().to_string(),
            pid: st.pid,
            status: status.into(),
            stdin: p.paths.stdin.clone(),
            stdout: p.paths.stdout.clone(),
            stderr: p.paths.stderr.clone(),
            terminal: p.paths.terminal,
            exit_status: st.exit.map_or(0, |e| e.0),
            exited_at: st
                .exit
                .map(|e| timestamp(e.1))
                .map_or(MessageField::none(), MessageField::some),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    fn pids(&self, req: api::PidsRequest) -> Result<api::PidsResponse, Status> {
        let c = self.container(&req.id)?;
        let out = c
            .runtime
            .run(
                Some(self.reaper()),
                Some(&c.log()),
                &args([&"ps", &"--format", &"json", &req.id]),
                None,
            )
            .map_err(Status::failed)?;
        let pids: Vec<u32> = serde_json::from_slice::<Option<Vec<u32>>>(&out)
            .map_err(|e| Status::failed(format!("runtime ps: {e}")))?
            .unwrap_or_default();
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| api::ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn pause_or_resume(&self, id: &str, pause: bool) -> Result<api::Empty, Status> {
        let c = self.container(id)?;
        let (cmd, from, to, topic, name) = if pause {
            (
                "pause",
                ProcStatus::Running,
                ProcStatus::Paused,
                "/tasks/paused",
                "TaskPaused",
            )
        } else {
            (
                "resume",
                ProcStatus::Paused,
                ProcStatus::Running,
                "/tasks/resumed",
                "TaskResumed",
            )
        };
        if c.init.state().status != from {
            return Err(Status::precondition(format!(
                "container {id} cannot {cmd} now"
            )));
        }
        c.runtime
            .run(
                Some(self.reaper()),
                Some(&c.log()),
                &args([&cmd, &id]),
                None,
            )
            .map_err(Status::failed)?;
        {
            let mut st = c.init.state();
            if st.status == from {
                st.status = to;
            }
        }
        if pause {
            self.events.publish(
                topic,
                name,
                &ev::TaskPaused {
                    container_id: id.to_string(),
                    ..Default::default()
                },
            );
        } else {
            self.events.publish(
                topic,
                name,
                &ev::TaskResumed {
                    container_id: id.to_string(),
                    ..Default::default()
                },
            );
        }
        Ok(api::Empty::new())
    }

    fn pause(&self, req: api::PauseRequest) -> Result<api::Empty, Status> {
        self.pause_or_resume(&req.id, true)
    }

    fn resume(&self, req: api::ResumeRequest) -> Result<api::Empty, Status> {
        self.pause_or_resume(&req.id, false)
    }

    fn kill(&self, req: api::KillRequest) -> Result<api::Empty, Status> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if req.signal == 0 || req.signal > 64 {
            return Err(Status::invalid(format!("invalid signal {}", req.signal)));
        }
        if req.exec_id.is_empty() && (req.all || c.runtime.signals_through_itself()) {
            if !req.all && p.state().status == ProcStatus::Stopped {
                return Err(Status::not_found("process already finished"));
            }
            let mut a = args([&"kill"]);
            if req.all {
                a.push("--all".into());
            }
            a.extend(args([&req.id, &req.signal.to_string()]));
            c.runtime
                .run(Some(self.reaper()), Some(&c.log()), &a, None)
                .map_err(Status::failed)?;
            return Ok(api::Empty::new());
        }
        if p.state().status == ProcStatus::Stopped {
            return Err(Status::not_found("process already finished"));
        }
        p.signal(req.signal)?;
        Ok(api::Empty::new())
    }

    fn exec(&self, req: api::ExecProcessRequest) -> Result<api::Empty, Status> {
        valid_id("exec id", &req.exec_id)?;
        let c = self.container(&req.id)?;
        if c.init.state().status == ProcStatus::Stopped {
            return Err(Status::precondition(format!(
                "container {} is not running",
                req.id
            )));
        }
        let spec = req
            .spec
            .as_ref()
            .map(|s| s.value.clone())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Status::invalid("exec without a process spec"))?;
        serde_json::from_slice::<serde_json::Value>(&spec)
            .map_err(|e| Status::invalid(format!("exec process spec: {e}")))?;
        let mut execs = c.execs.lock().unwrap_or_else(|e| e.into_inner());
        if execs.contains_key(&req.exec_id) {
            return Err(Status::exists(format!(
                "exec {} of {} already exists",
                req.exec_id, req.id
            )));
        }
        let paths = Paths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        execs.insert(
            req.exec_id.clone(),
            Process::new(&req.id, &req.exec_id, paths, spec),
        );
        drop(execs);
        self.events.publish(
            "/tasks/exec-added",
            "TaskExecAdded",
            &ev::TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            },
        );
        Ok(api::Empty::new())
    }

    fn resize_pty(&self, req: api::ResizePtyRequest) -> Result<api::Empty, Status> {
        let p = self.container(&req.id)?.process(&req.exec_id)?;
        let io = p
            .io()
            .ok_or_else(|| Status::precondition("the process is not started"))?;
        io.resize(req.width, req.height)
            .map_err(Status::precondition)?;
        Ok(api::Empty::new())
    }

    fn close_io(&self, req: api::CloseIORequest) -> Result<api::Empty, Status> {
        let p = self.container(&req.id)?.process(&req.exec_id)?;
        if req.stdin
            && let Some(io) = p.io()
        {
            io.close_stdin();
        }
        Ok(api::Empty::new())
    }

    fn update(&self, req: api::UpdateTaskRequest) -> Result<api::Empty, Status> {
        let c = self.container(&req.id)?;
        let resources = req
            .resources
            .as_ref()
            .map(|r| r.value.clone())
            .ok_or_else(|| Status::invalid("update without resources"))?;
        serde_json::from_slice::<serde_json::Value>(&resources)
            .map_err(|e| Status::invalid(format!("resources: {e}")))?;
        let file = c.bundle.join("update-resources.json");
        std::fs::write(&file, &resources)
            .map_err(|e| Status::failed(format!("write {}: {e}", file.display())))?;
        let res = c.runtime.run(
            Some(self.reaper()),
            Some(&c.log()),
            &args([&"update", &"--resources", &file, &req.id]),
            None,
        );
        let _ = std::fs::remove_file(&file);
        res.map_err(Status::failed)?;
        Ok(api::Empty::new())
    }

    fn wait(&self, req: api::WaitRequest) -> Result<api::WaitResponse, Status> {
        let p = self.container(&req.id)?.process(&req.exec_id)?;
        let mut st = p.state();
        while st.exit.is_none() {
            st = p.exited.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        let (code, at) = st.exit.unwrap_or((0, SystemTime::now()));
        Ok(api::WaitResponse {
            exit_status: code,
            exited_at: MessageField::some(timestamp(at)),
            ..Default::default()
        })
    }

    fn stats(&self, req: api::StatsRequest) -> Result<api::StatsResponse, Status> {
        let c = self.container(&req.id)?;
        let cgroups = c
            .cgroups
            .get()
            .ok_or_else(|| Status::precondition(format!("{}: its cgroups are unknown", req.id)))?;
        let any = cgroups
            .metrics()
            .map_err(|e| Status::precondition(format!("{}: {e}", req.id)))?;
        Ok(api::StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    fn connect(&self, req: api::ConnectRequest) -> Result<api::ConnectResponse, Status> {
        let task_pid = match self.containers().get(&req.id) {
            Some(c) => c.init.state().pid,
            None => 0,
        };
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }
}

/// Whether the spec gives the container a pid namespace of its own (one without a path).
fn private_pid_ns(spec: &serde_json::Value) -> bool {
    spec.pointer("/linux/namespaces")
        .and_then(|n| n.as_array())
        .is_some_and(|ns| {
            ns.iter().any(|n| {
                n.get("type").and_then(|t| t.as_str()) == Some("pid")
                    && n.get("path")
                        .and_then(|p| p.as_str())
                        .is_none_or(|p| p.is_empty())
            })
        })
}

fn read_pid(path: &Path) -> Result<u32, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{}: no pid in {text:?}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_namespaces_of_specs() {
        let own =
            serde_json::json!({"linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}});
        let pods = serde_json::json!({"linux": {"namespaces": [{"type": "pid", "path": "/proc/1/ns/pid"}]}});
        let host = serde_json::json!({"linux": {"namespaces": [{"type": "mount"}]}});
        assert!(private_pid_ns(&own));
        assert!(!private_pid_ns(&pods));
        assert!(!private_pid_ns(&host));
    }

    #[test]
    fn pid_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("pid");
        std::fs::write(&p, "1234").unwrap();
        assert_eq!(read_pid(&p).unwrap(), 1234);
        std::fs::write(&p, "0").unwrap();
        assert!(read_pid(&p).is_err());
        assert!(read_pid(&d.path().join("none")).is_err());
    }
}

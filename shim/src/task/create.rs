//! Create: a container from its bundle, its init process created (not started) by the OCI
//! runtime with its stdio, and watched.

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use containerd_shim_protos::api;
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::{Message, MessageField};

use crate::container::Container;
use crate::log::{info, warning};
use crate::process::Process;
use crate::runtime::{Runtime, args};
use crate::status::Status;
use crate::stdio::{Kept, Paths};

use super::{Service, private_pid_ns, read_pid, valid_id};

impl Service {
    pub(super) fn create(
        &self,
        req: api::CreateTaskRequest,
    ) -> Result<api::CreateTaskResponse, Status> {
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
    pub(super) fn run_process(
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
    pub(super) fn track(&self, p: &Arc<Process>, pid: u32) -> Option<i32> {
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
}

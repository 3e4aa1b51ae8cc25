//! The task API service (`containerd.task.v2.Task`): it decodes a call, runs the verb, and
//! encodes the answer. One file per verb group; the containers and processes they act on,
//! with the states a process passes through, are in `container.rs` and `process.rs`.
//!
//! Exits come from the reaper and are handled on a thread of their own, in order, under the
//! same lock a `Start` holds while it starts a process and publishes that it did: a task's
//! exit event never overtakes its start event.

mod create;
mod exec;
mod exit;
mod query;
mod resources;
mod signal;
mod start;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::SystemTime;

use containerd_shim_protos::api;
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::Message;

use crate::container::Container;
use crate::events::Publisher;
use crate::log::{debug, info, warning};
use crate::oom::OomWatcher;
use crate::process::Process;
use crate::reaper::Reaper;
use crate::status::{Reply, Status};

/// The task API's service name.
const TASK_SERVICE: &str = "containerd.task.v2.Task";
/// How long an exit waits for a terminal's last output to be copied.
pub(crate) const TTY_DRAIN: std::time::Duration = std::time::Duration::from_secs(1);

/// The task service.
pub struct Service {
    pub(crate) namespace: String,
    pub(crate) events: Publisher,
    socket: Option<PathBuf>,
    reaper: OnceLock<Arc<Reaper>>,
    pub(crate) oom: Option<Arc<OomWatcher>>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    pub(crate) pids: Mutex<HashMap<i32, Arc<Process>>>,
    exits: Mutex<mpsc::Sender<(i32, i32, SystemTime)>>,
    /// Held while a process is started and its start published, and while an exit is
    /// published.
    order: Mutex<()>,
}

pub(crate) fn valid_id(kind: &str, id: &str) -> Result<(), Status> {
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

    pub(crate) fn reaper(&self) -> &Reaper {
        self.reaper
            .get()
            .expect("the reaper starts with the service")
    }

    pub(crate) fn containers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn container(&self, id: &str) -> Result<Arc<Container>, Status> {
        self.containers()
            .get(id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("container {id} not found")))
    }

    pub(crate) fn order(&self) -> std::sync::MutexGuard<'_, ()> {
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
}

/// Whether the spec gives the container a pid namespace of its own (one without a path).
pub(crate) fn private_pid_ns(spec: &serde_json::Value) -> bool {
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

pub(crate) fn read_pid(path: &Path) -> Result<u32, String> {
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

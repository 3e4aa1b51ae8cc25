//! One task of the shim: a container, with its init process and its execs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use crate::process::Process;
use crate::runtime::Runtime;
use crate::status::Status;

/// A task: its bundle, the OCI runtime that runs it, its init process and its execs.
pub(crate) struct Container {
    pub(crate) id: String,
    pub(crate) bundle: PathBuf,
    pub(crate) runtime: Runtime,
    /// The shim mounted its rootfs (and unmounts it on Delete).
    pub(crate) mounted: bool,
    /// No pid namespace of its own: when init exits, what it left behind is killed.
    pub(crate) shared_pid_ns: bool,
    pub(crate) init: Arc<Process>,
    pub(crate) execs: Mutex<HashMap<String, Arc<Process>>>,
    /// The cgroups its init process was created in (Stats, OOM events).
    pub(crate) cgroups: OnceLock<crate::stats::Cgroups>,
}

impl Container {
    /// The runtime's log file.
    pub(crate) fn log(&self) -> PathBuf {
        self.bundle.join("log.json")
    }

    /// Its init (`exec_id` empty) or one of its execs.
    pub(crate) fn process(&self, exec_id: &str) -> Result<Arc<Process>, Status> {
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

//! Exec (an exec added to a running container; Start runs it), ResizePty and CloseIO.

use containerd_shim_protos::api;
use containerd_shim_protos::events::task as ev;

use crate::process::{Process, Verb};
use crate::status::Status;
use crate::stdio::Paths;

use super::{Service, valid_id};

impl Service {
    pub(super) fn exec(&self, req: api::ExecProcessRequest) -> Result<api::Empty, Status> {
        valid_id("exec id", &req.exec_id)?;
        let c = self.container(&req.id)?;
        c.init.check(Verb::Exec)?;
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

    pub(super) fn resize_pty(&self, req: api::ResizePtyRequest) -> Result<api::Empty, Status> {
        let p = self.container(&req.id)?.process(&req.exec_id)?;
        let io = p
            .io()
            .ok_or_else(|| Status::precondition("the process is not started"))?;
        io.resize(req.width, req.height)
            .map_err(Status::precondition)?;
        Ok(api::Empty::new())
    }

    pub(super) fn close_io(&self, req: api::CloseIORequest) -> Result<api::Empty, Status> {
        let p = self.container(&req.id)?.process(&req.exec_id)?;
        if req.stdin
            && let Some(io) = p.io()
        {
            io.close_stdin();
        }
        Ok(api::Empty::new())
    }
}

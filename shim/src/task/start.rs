//! Start (an init process, or an exec the runtime runs detached) and Delete.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use containerd_shim_protos::api;
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::MessageField;

use crate::events::timestamp;
use crate::log::info;
use crate::process::{ProcStatus, Verb};
use crate::runtime::args;
use crate::status::Status;

use super::Service;

impl Service {
    pub(super) fn start(&self, req: api::StartRequest) -> Result<api::StartResponse, Status> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        p.check(Verb::Start)?;
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
            p.advance(Verb::Start);
            let pid = p.state().pid;
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
        c.init.check(Verb::Exec)?;
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
            p.advance(Verb::Start);
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

    pub(super) fn delete(&self, req: api::DeleteRequest) -> Result<api::DeleteResponse, Status> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        p.check(Verb::Delete)?;
        let (status, pid, exit) = {
            let st = p.state();
            (st.status, st.pid, st.exit)
        };
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
}

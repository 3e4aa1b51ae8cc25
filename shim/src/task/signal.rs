//! Pause, Resume and Kill.

use containerd_shim_protos::api;
use containerd_shim_protos::events::task as ev;

use crate::process::Verb;
use crate::runtime::args;
use crate::status::Status;

use super::Service;

impl Service {
    pub(super) fn pause_or_resume(&self, id: &str, pause: bool) -> Result<api::Empty, Status> {
        let c = self.container(id)?;
        let (cmd, verb, topic, name) = if pause {
            ("pause", Verb::Pause, "/tasks/paused", "TaskPaused")
        } else {
            ("resume", Verb::Resume, "/tasks/resumed", "TaskResumed")
        };
        c.init.check(verb)?;
        c.runtime
            .run(
                Some(self.reaper()),
                Some(&c.log()),
                &args([&cmd, &id]),
                None,
            )
            .map_err(Status::failed)?;
        c.init.advance(verb);
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

    pub(super) fn pause(&self, req: api::PauseRequest) -> Result<api::Empty, Status> {
        self.pause_or_resume(&req.id, true)
    }

    pub(super) fn resume(&self, req: api::ResumeRequest) -> Result<api::Empty, Status> {
        self.pause_or_resume(&req.id, false)
    }

    pub(super) fn kill(&self, req: api::KillRequest) -> Result<api::Empty, Status> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if req.signal == 0 || req.signal > 64 {
            return Err(Status::invalid(format!("invalid signal {}", req.signal)));
        }
        if req.exec_id.is_empty() && (req.all || c.runtime.signals_through_itself()) {
            if !req.all {
                p.check(Verb::Signal)?;
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
        p.check(Verb::Signal)?;
        p.signal(req.signal)?;
        Ok(api::Empty::new())
    }
}

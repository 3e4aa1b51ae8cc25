//! A process exited (the reaper saw it): its state, what it left in a shared pid namespace,
//! and the exit event, in order after its start event.

use std::time::{Duration, SystemTime};

use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::MessageField;

use crate::events::timestamp;
use crate::log::info;
use crate::reaper::exit_code;
use crate::runtime::args;

use super::{Service, TTY_DRAIN};

impl Service {
    pub(super) fn on_exit(&self, pid: i32, status: i32, at: SystemTime) {
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
        p.exited_with(code, at);
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
}

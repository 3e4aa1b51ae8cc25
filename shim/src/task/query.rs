//! State and Pids: what the task's processes are.

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::MessageField;

use crate::events::timestamp;
use crate::process::ProcStatus;
use crate::runtime::args;
use crate::status::Status;

use super::Service;

impl Service {
    pub(super) fn state(&self, req: api::StateRequest) -> Result<api::StateResponse, Status> {
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

    pub(super) fn pids(&self, req: api::PidsRequest) -> Result<api::PidsResponse, Status> {
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
}

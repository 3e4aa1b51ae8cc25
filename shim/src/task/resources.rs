//! Update, Wait, Stats and Connect.

use std::time::SystemTime;

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::MessageField;

use crate::events::timestamp;
use crate::runtime::args;
use crate::status::Status;

use super::Service;

impl Service {
    pub(super) fn update(&self, req: api::UpdateTaskRequest) -> Result<api::Empty, Status> {
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

    pub(super) fn wait(&self, req: api::WaitRequest) -> Result<api::WaitResponse, Status> {
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

    pub(super) fn stats(&self, req: api::StatsRequest) -> Result<api::StatsResponse, Status> {
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

    pub(super) fn connect(&self, req: api::ConnectRequest) -> Result<api::ConnectResponse, Status> {
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

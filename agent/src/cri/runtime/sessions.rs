//! Exec, Attach and PortForward (which hand out a streaming URL) and ExecSync.

use berth_cri_api::v1 as cri;
use tonic::{Request, Response, Status};

use super::super::{Kind, call, detached};
use super::RuntimeCri;

pub(super) async fn exec(
    this: &RuntimeCri,
    req: Request<cri::ExecRequest>,
) -> Result<Response<cri::ExecResponse>, Status> {
    let req = req.into_inner();
    let span = tracing::info_span!("Exec", container_id = %req.container_id, tty = req.tty, stdin = req.stdin);
    call(span, Kind::Mutation, async {
        super::super::stream::exec_url(&this.pods, &this.stream, req)
    })
    .await
}

pub(super) async fn attach(
    this: &RuntimeCri,
    req: Request<cri::AttachRequest>,
) -> Result<Response<cri::AttachResponse>, Status> {
    let req = req.into_inner();
    let span = tracing::info_span!("Attach", container_id = %req.container_id, tty = req.tty, stdin = req.stdin);
    call(span, Kind::Mutation, async {
        super::super::stream::attach_url(&this.pods, &this.stream, req)
    })
    .await
}

pub(super) async fn port_forward(
    this: &RuntimeCri,
    req: Request<cri::PortForwardRequest>,
) -> Result<Response<cri::PortForwardResponse>, Status> {
    let req = req.into_inner();
    let span =
        tracing::info_span!("PortForward", pod_sandbox_id = %req.pod_sandbox_id, ports = ?req.port);
    call(span, Kind::Mutation, async {
        super::super::stream::port_forward_url(&this.pods, &this.stream, req)
    })
    .await
}

pub(super) async fn exec_sync(
    this: &RuntimeCri,
    req: Request<cri::ExecSyncRequest>,
) -> Result<Response<cri::ExecSyncResponse>, Status> {
    let req = req.into_inner();
    let span =
        tracing::debug_span!("ExecSync", container_id = %req.container_id, timeout = req.timeout);
    let pods = this.pods.clone();
    // The exec runs on its own task (so the process is always waited for and its exec
    // deleted); when this handler is dropped, its client went away and the guard tells
    // that task to kill the process.
    let caller_gone = tokio_util::sync::CancellationToken::new();
    let _kill_when_dropped = caller_gone.clone().drop_guard();
    call(
        span,
        Kind::Read,
        detached(async move {
            let timeout = std::time::Duration::from_secs(req.timeout.max(0) as u64);
            let out = pods
                .exec_sync(&req.container_id, req.cmd, timeout, caller_gone)
                .await
                .map_err(super::super::status)?;
            Ok(cri::ExecSyncResponse {
                stdout: out.stdout,
                stderr: out.stderr,
                exit_code: out.exit_code,
            })
        }),
    )
    .await
}

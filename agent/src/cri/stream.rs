//! Exec, Attach and PortForward: the CRI calls check the request and hand out a one-time
//! URL of the streaming server; [`StreamBackend`] does the work once the client connects.

use std::sync::Arc;

use berth_cri_api::v1 as cri;
use berth_errdefs::ErrorKind;
use berth_sandbox::runtime::Runtime;
use berth_stream::{BackendError, Io, Request, StdioOptions, StreamServer};
use tonic::Status;

use super::status;

/// The runtime side of the streaming server.
pub struct StreamBackend {
    pub pods: Arc<Runtime>,
}

/// A sandbox error as the streaming server reports it to its client.
fn backend_error(e: berth_sandbox::Error) -> BackendError {
    let message = e.to_string();
    match e.kind() {
        ErrorKind::NotFound => BackendError::NotFound(message),
        ErrorKind::FailedPrecondition => BackendError::Unavailable(message),
        _ => BackendError::Failed(message),
    }
}

#[async_trait::async_trait]
impl berth_stream::Backend for StreamBackend {
    async fn exec(&self, container_id: &str, cmd: Vec<String>, io: Io) -> Result<(), BackendError> {
        match self.pods.exec_stream(container_id, cmd, io).await {
            Ok(0) => Ok(()),
            Ok(code) => Err(BackendError::Exit(code as i32)),
            Err(e) => Err(backend_error(e)),
        }
    }

    async fn attach(&self, container_id: &str, io: Io) -> Result<(), BackendError> {
        self.pods
            .attach(container_id, io)
            .await
            .map_err(backend_error)
    }

    async fn port_forward(
        &self,
        pod_id: &str,
        port: u16,
    ) -> Result<tokio::net::TcpStream, BackendError> {
        self.pods
            .port_forward(pod_id, port)
            .await
            .map_err(backend_error)
    }
}

/// The container `id` names, which must be running.
fn running_container(pods: &Runtime, id: &str) -> Result<String, Status> {
    let id = pods.resolve_container(id).map_err(super::status)?;
    let rec = pods.container(&id).map_err(super::status)?;
    if !rec.state.can_exec() {
        return Err(Status::failed_precondition(format!(
            "container {id} is {:?}, not running",
            rec.state
        )));
    }
    Ok(id)
}

fn stdio(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> StdioOptions {
    StdioOptions {
        stdin,
        stdout,
        stderr,
        tty,
    }
}

/// Checks `req` (InvalidArgument first, whatever the container's state), that its
/// container runs, and hands out its URL.
fn container_url(
    pods: &Runtime,
    server: &StreamServer,
    mut req: Request,
) -> Result<String, Status> {
    req.validate().map_err(status)?;
    if let Request::Exec { container_id, .. } | Request::Attach { container_id, .. } = &mut req {
        *container_id = running_container(pods, container_id)?;
    }
    server.url(req).map_err(status)
}

pub(crate) fn exec_url(
    pods: &Runtime,
    server: &StreamServer,
    req: cri::ExecRequest,
) -> Result<cri::ExecResponse, Status> {
    let opts = stdio(req.stdin, req.stdout, req.stderr, req.tty);
    let url = container_url(
        pods,
        server,
        Request::Exec {
            container_id: req.container_id,
            cmd: req.cmd,
            opts,
        },
    )?;
    Ok(cri::ExecResponse { url })
}

pub(crate) fn attach_url(
    pods: &Runtime,
    server: &StreamServer,
    req: cri::AttachRequest,
) -> Result<cri::AttachResponse, Status> {
    let opts = stdio(req.stdin, req.stdout, req.stderr, req.tty);
    let url = container_url(
        pods,
        server,
        Request::Attach {
            container_id: req.container_id,
            opts,
        },
    )?;
    Ok(cri::AttachResponse { url })
}

pub(crate) fn port_forward_url(
    pods: &Runtime,
    server: &StreamServer,
    req: cri::PortForwardRequest,
) -> Result<cri::PortForwardResponse, Status> {
    let mut ports = Vec::with_capacity(req.port.len());
    for p in &req.port {
        match u16::try_from(*p) {
            Ok(p) if p != 0 => ports.push(p),
            _ => {
                return Err(Status::invalid_argument(format!(
                    "port {p} is not a TCP port (1 to 65535)"
                )));
            }
        }
    }
    let id = pods.resolve(&req.pod_sandbox_id).map_err(super::status)?;
    let rec = pods.get(&id).map_err(super::status)?;
    if !rec.state.can_host_containers() {
        return Err(Status::failed_precondition(format!(
            "pod sandbox {id} is not ready"
        )));
    }
    let url = server
        .url(Request::PortForward { pod_id: id, ports })
        .map_err(status)?;
    Ok(cri::PortForwardResponse { url })
}

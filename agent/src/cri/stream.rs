//! Exec, Attach and PortForward: the CRI calls check the request and hand out a one-time
//! URL of the streaming server; [`StreamBackend`] does the work once the client connects.

use std::sync::Arc;

use berth_cri_api::v1 as cri;
use berth_sandbox::pod::PodManager;
use berth_stream::{ExecError, Io, Request, StdioOptions, StreamServer, server::UrlError};
use tonic::Status;

use super::chain;
use super::sandbox::sandbox_status;

/// The runtime side of the streaming server.
pub struct StreamBackend {
    pub pods: Arc<PodManager>,
}

#[async_trait::async_trait]
impl berth_stream::Backend for StreamBackend {
    async fn exec(&self, container_id: &str, cmd: Vec<String>, io: Io) -> Result<(), ExecError> {
        match self.pods.exec_stream(container_id, cmd, io).await {
            Ok(0) => Ok(()),
            Ok(code) => Err(ExecError::Exit(code as i32)),
            Err(e) => Err(ExecError::Failed(chain(&e))),
        }
    }

    async fn attach(&self, container_id: &str, io: Io) -> Result<(), String> {
        self.pods
            .attach(container_id, io)
            .await
            .map_err(|e| chain(&e))
    }

    async fn port_forward(&self, pod_id: &str, port: u16) -> Result<tokio::net::TcpStream, String> {
        self.pods
            .port_forward(pod_id, port)
            .await
            .map_err(|e| chain(&e))
    }
}

fn url_status(e: UrlError) -> Status {
    match e {
        UrlError::Invalid(m) => Status::invalid_argument(m),
        UrlError::Exhausted(_) => Status::resource_exhausted(e.to_string()),
    }
}

/// The container `id` names, which must be running.
fn running_container(pods: &PodManager, id: &str) -> Result<String, Status> {
    let id = pods.resolve_container(id).map_err(sandbox_status)?;
    let rec = pods.container(&id).map_err(sandbox_status)?;
    if rec.state != berth_sandbox::container::ContainerState::Running {
        return Err(Status::failed_precondition(format!(
            "container {id} is {:?}, not running",
            rec.state
        )));
    }
    Ok(id)
}

pub(crate) fn exec_url(
    pods: &PodManager,
    server: &StreamServer,
    req: cri::ExecRequest,
) -> Result<cri::ExecResponse, Status> {
    let opts = StdioOptions {
        stdin: req.stdin,
        stdout: req.stdout,
        stderr: req.stderr,
        tty: req.tty,
    };
    // Options first: a bad request is InvalidArgument whatever the container's state.
    if req.cmd.is_empty() {
        return Err(Status::invalid_argument("cmd is empty"));
    }
    if req.container_id.is_empty() {
        return Err(Status::invalid_argument("container_id is empty"));
    }
    check(opts)?;
    let container_id = running_container(pods, &req.container_id)?;
    let url = server
        .url(Request::Exec {
            container_id,
            cmd: req.cmd,
            opts,
        })
        .map_err(url_status)?;
    Ok(cri::ExecResponse { url })
}

pub(crate) fn attach_url(
    pods: &PodManager,
    server: &StreamServer,
    req: cri::AttachRequest,
) -> Result<cri::AttachResponse, Status> {
    let opts = StdioOptions {
        stdin: req.stdin,
        stdout: req.stdout,
        stderr: req.stderr,
        tty: req.tty,
    };
    if req.container_id.is_empty() {
        return Err(Status::invalid_argument("container_id is empty"));
    }
    check(opts)?;
    let container_id = running_container(pods, &req.container_id)?;
    let url = server
        .url(Request::Attach { container_id, opts })
        .map_err(url_status)?;
    Ok(cri::AttachResponse { url })
}

pub(crate) fn port_forward_url(
    pods: &PodManager,
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
    let id = pods.resolve(&req.pod_sandbox_id).map_err(sandbox_status)?;
    let rec = pods.get(&id).map_err(sandbox_status)?;
    if rec.state != berth_sandbox::pod::PodState::Ready {
        return Err(Status::failed_precondition(format!(
            "pod sandbox {id} is not ready"
        )));
    }
    let url = server
        .url(Request::PortForward { pod_id: id, ports })
        .map_err(url_status)?;
    Ok(cri::PortForwardResponse { url })
}

fn check(o: StdioOptions) -> Result<(), Status> {
    if !(o.stdin || o.stdout || o.stderr) {
        return Err(Status::invalid_argument(
            "one of stdin, stdout and stderr must be set",
        ));
    }
    if o.tty && o.stderr {
        return Err(Status::invalid_argument(
            "tty and stderr cannot both be set: a terminal has one output stream",
        ));
    }
    Ok(())
}

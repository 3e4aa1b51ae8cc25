//! The container calls: Create, Start, Stop, Remove, Status, the lists, resource updates,
//! log reopening and the event stream.

use berth_cri_api::v1 as cri;
use berth_cri_api::v1::runtime_service_server::RuntimeService;
use tonic::{Request, Response, Status};

use super::super::container_config as ctr_in;
use super::super::container_status as ctr;
use super::super::sandbox::to_status;
use super::super::{Kind, call, chunked, detached};
use super::{EventStream, RuntimeCri};

pub(super) async fn create_container(
    this: &RuntimeCri,
    req: Request<cri::CreateContainerRequest>,
) -> Result<Response<cri::CreateContainerResponse>, Status> {
    let (pod_id, cfg) = ctr_in::container_config(req.into_inner())?;
    let span = tracing::info_span!("CreateContainer", pod_sandbox_id = %pod_id, name = %cfg.name, image = %cfg.image);
    let pods = this.pods.clone();
    call(
        span,
        Kind::Mutation,
        detached(async move {
            let id = pods
                .create_container(&pod_id, cfg)
                .await
                .map_err(super::super::status)?;
            tracing::info!(container_id = %id, "container created");
            Ok(cri::CreateContainerResponse { container_id: id })
        }),
    )
    .await
}

pub(super) async fn start_container(
    this: &RuntimeCri,
    req: Request<cri::StartContainerRequest>,
) -> Result<Response<cri::StartContainerResponse>, Status> {
    let id = req.into_inner().container_id;
    let span = tracing::info_span!("StartContainer", container_id = %id);
    let pods = this.pods.clone();
    call(
        span,
        Kind::Mutation,
        detached(async move {
            pods.start_container(&id)
                .await
                .map_err(super::super::status)?;
            Ok(cri::StartContainerResponse {})
        }),
    )
    .await
}

pub(super) async fn stop_container(
    this: &RuntimeCri,
    req: Request<cri::StopContainerRequest>,
) -> Result<Response<cri::StopContainerResponse>, Status> {
    let req = req.into_inner();
    let span = tracing::info_span!("StopContainer", container_id = %req.container_id, timeout = req.timeout);
    let pods = this.pods.clone();
    call(
        span,
        Kind::Mutation,
        detached(async move {
            let timeout = std::time::Duration::from_secs(req.timeout.max(0) as u64);
            pods.stop_container(&req.container_id, timeout)
                .await
                .map_err(super::super::status)?;
            Ok(cri::StopContainerResponse {})
        }),
    )
    .await
}

pub(super) async fn remove_container(
    this: &RuntimeCri,
    req: Request<cri::RemoveContainerRequest>,
) -> Result<Response<cri::RemoveContainerResponse>, Status> {
    let id = req.into_inner().container_id;
    let span = tracing::info_span!("RemoveContainer", container_id = %id);
    let pods = this.pods.clone();
    call(
        span,
        Kind::Mutation,
        detached(async move {
            if id.is_empty() {
                return Err(Status::invalid_argument("container_id is empty"));
            }
            pods.remove_container(&id)
                .await
                .map_err(super::super::status)?;
            Ok(cri::RemoveContainerResponse {})
        }),
    )
    .await
}

pub(super) async fn list_containers(
    this: &RuntimeCri,
    req: Request<cri::ListContainersRequest>,
) -> Result<Response<cri::ListContainersResponse>, Status> {
    let f = ctr::filter(req.into_inner().filter);
    call(tracing::trace_span!("ListContainers"), Kind::Read, async {
        Ok(cri::ListContainersResponse {
            containers: this
                .pods
                .list_containers(&f)
                .iter()
                .map(|r| ctr::to_container(r))
                .collect(),
        })
    })
    .await
}

pub(super) async fn container_status(
    this: &RuntimeCri,
    req: Request<cri::ContainerStatusRequest>,
) -> Result<Response<cri::ContainerStatusResponse>, Status> {
    let req = req.into_inner();
    let span = tracing::trace_span!("ContainerStatus", container_id = %req.container_id);
    call(span, Kind::Read, async {
        let id = this
            .pods
            .resolve_container(&req.container_id)
            .map_err(super::super::status)?;
        let rec = this.pods.container(&id).map_err(super::super::status)?;
        Ok(cri::ContainerStatusResponse {
            status: Some(ctr::to_container_status(
                &rec,
                this.pods.container_image_name(&rec),
            )),
            info: if req.verbose {
                ctr::verbose_info(&rec)
            } else {
                Default::default()
            },
        })
    })
    .await
}

pub(super) async fn update_container_resources(
    this: &RuntimeCri,
    req: Request<cri::UpdateContainerResourcesRequest>,
) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
    let req = req.into_inner();
    let span = tracing::info_span!("UpdateContainerResources", container_id = %req.container_id);
    let pods = this.pods.clone();
    call(
        span,
        Kind::Mutation,
        detached(async move {
            let r = ctr_in::resources(req.linux)?;
            pods.update_container_resources(&req.container_id, &r)
                .await
                .map_err(super::super::status)?;
            Ok(cri::UpdateContainerResourcesResponse {})
        }),
    )
    .await
}

pub(super) async fn update_pod_sandbox_resources(
    this: &RuntimeCri,
    req: Request<cri::UpdatePodSandboxResourcesRequest>,
) -> Result<Response<cri::UpdatePodSandboxResourcesResponse>, Status> {
    let req = req.into_inner();
    let span =
        tracing::info_span!("UpdatePodSandboxResources", pod_sandbox_id = %req.pod_sandbox_id);
    let pods = this.pods.clone();
    call(
        span,
        Kind::Mutation,
        detached(async move {
            let overhead = req
                .overhead
                .map(|r| ctr_in::resources(Some(r)))
                .transpose()?;
            let resources = req
                .resources
                .map(|r| ctr_in::resources(Some(r)))
                .transpose()?;
            pods.update_pod_resources(&req.pod_sandbox_id, overhead, resources)
                .await
                .map_err(super::super::status)?;
            Ok(cri::UpdatePodSandboxResourcesResponse {})
        }),
    )
    .await
}

pub(super) async fn reopen_container_log(
    this: &RuntimeCri,
    req: Request<cri::ReopenContainerLogRequest>,
) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
    let id = req.into_inner().container_id;
    let span = tracing::info_span!("ReopenContainerLog", container_id = %id);
    call(span, Kind::Mutation, async {
        this.pods
            .reopen_container_log(&id)
            .map_err(super::super::status)?;
        Ok(cri::ReopenContainerLogResponse {})
    })
    .await
}

pub(super) async fn stream_containers(
    this: &RuntimeCri,
    req: Request<cri::StreamContainersRequest>,
) -> Result<Response<tonic::codegen::BoxStream<cri::StreamContainersResponse>>, Status> {
    let filter = req.into_inner().filter;
    let items = this
        .list_containers(Request::new(cri::ListContainersRequest { filter }))
        .await?
        .into_inner()
        .containers;
    Ok(Response::new(chunked(items, |containers| {
        cri::StreamContainersResponse { containers }
    })))
}

pub(super) async fn get_container_events(
    this: &RuntimeCri,
    _req: Request<cri::GetEventsRequest>,
) -> Result<Response<EventStream>, Status> {
    let mut rx = this.pods.container_events().subscribe();
    let pods = this.pods.clone();
    let stream = async_stream::stream! {
        loop {
            match rx.recv().await {
                Ok(e) => {
                    let status = pods
                        .container(&e.container_id)
                        .ok()
                        .map(|r| ctr::to_container_status(&r, pods.container_image_name(&r)));
                    let pod = pods.get(&e.pod_id).ok().map(|p| to_status(&p));
                    yield Ok(ctr::to_event(&e, status, pod));
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "a container event subscriber fell behind");
                }
                Err(_) => break,
            }
        }
    };
    Ok(Response::new(Box::pin(stream)))
}

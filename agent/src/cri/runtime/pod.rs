//! RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus and the pod lists.

use berth_cri_api::v1 as cri;
use berth_cri_api::v1::runtime_service_server::RuntimeService;
use berth_sandbox::now_ns;
use tonic::{Request, Response, Status};

use super::super::sandbox::{filter, pod_config, to_pod, to_status, verbose_info};
use super::super::{Kind, call, chunked, detached};
use super::RuntimeCri;

pub(super) async fn run_pod_sandbox(
    this: &RuntimeCri,
    req: Request<cri::RunPodSandboxRequest>,
) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
    let cfg = pod_config(req.into_inner())?;
    let span = tracing::info_span!("RunPodSandbox", pod = %format!("{}/{}", cfg.meta.namespace, cfg.meta.name), handler = %cfg.runtime_handler);
    let pods = this.pods.clone();
    call(
        span,
        Kind::Mutation,
        detached(async move {
            let id = pods.run(cfg).await.map_err(super::super::status)?;
            tracing::info!(pod_sandbox_id = %id, "pod sandbox ready");
            Ok(cri::RunPodSandboxResponse { pod_sandbox_id: id })
        }),
    )
    .await
}

pub(super) async fn stop_pod_sandbox(
    this: &RuntimeCri,
    req: Request<cri::StopPodSandboxRequest>,
) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
    let id = req.into_inner().pod_sandbox_id;
    let span = tracing::info_span!("StopPodSandbox", pod_sandbox_id = %id);
    let pods = this.pods.clone();
    call(
        span,
        Kind::Mutation,
        detached(async move {
            pods.stop(&id).await.map_err(super::super::status)?;
            Ok(cri::StopPodSandboxResponse {})
        }),
    )
    .await
}

pub(super) async fn remove_pod_sandbox(
    this: &RuntimeCri,
    req: Request<cri::RemovePodSandboxRequest>,
) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
    let id = req.into_inner().pod_sandbox_id;
    let span = tracing::info_span!("RemovePodSandbox", pod_sandbox_id = %id);
    let pods = this.pods.clone();
    call(
        span,
        Kind::Mutation,
        detached(async move {
            if id.is_empty() {
                return Err(Status::invalid_argument("pod_sandbox_id is empty"));
            }
            pods.remove(&id).await.map_err(super::super::status)?;
            Ok(cri::RemovePodSandboxResponse {})
        }),
    )
    .await
}

pub(super) async fn pod_sandbox_status(
    this: &RuntimeCri,
    req: Request<cri::PodSandboxStatusRequest>,
) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
    let req = req.into_inner();
    let span = tracing::trace_span!("PodSandboxStatus", pod_sandbox_id = %req.pod_sandbox_id);
    call(span, Kind::Read, async {
        let id = this
            .pods
            .resolve(&req.pod_sandbox_id)
            .map_err(super::super::status)?;
        let rec = this.pods.get(&id).map_err(super::super::status)?;
        let info = if req.verbose {
            verbose_info(&rec)
        } else {
            Default::default()
        };
        Ok(cri::PodSandboxStatusResponse {
            status: Some(to_status(&rec)),
            info,
            containers_statuses: vec![],
            timestamp: now_ns(),
        })
    })
    .await
}

pub(super) async fn list_pod_sandbox(
    this: &RuntimeCri,
    req: Request<cri::ListPodSandboxRequest>,
) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
    let f = filter(req.into_inner().filter);
    call(tracing::trace_span!("ListPodSandbox"), Kind::Read, async {
        Ok(cri::ListPodSandboxResponse {
            items: this.pods.list(&f).iter().map(|r| to_pod(r)).collect(),
        })
    })
    .await
}

pub(super) async fn stream_pod_sandboxes(
    this: &RuntimeCri,
    req: Request<cri::StreamPodSandboxesRequest>,
) -> Result<Response<tonic::codegen::BoxStream<cri::StreamPodSandboxesResponse>>, Status> {
    let filter = req.into_inner().filter;
    let items = this
        .list_pod_sandbox(Request::new(cri::ListPodSandboxRequest { filter }))
        .await?
        .into_inner()
        .items;
    Ok(Response::new(chunked(items, |pod_sandboxes| {
        cri::StreamPodSandboxesResponse { pod_sandboxes }
    })))
}

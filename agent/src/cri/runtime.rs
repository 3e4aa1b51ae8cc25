//! CRI `RuntimeService`.
//!
//! `Version`, `Status` and `RuntimeConfig` are served now. Pod sandboxes, containers and
//! streaming arrive in later work; until then those calls answer `Unimplemented` saying so,
//! never a fake success.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use berth_cri_api::v1 as cri;
use berth_cri_api::v1::runtime_service_server::RuntimeService;
use tonic::{Request, Response, Status};

use super::sandbox::{filter, pod_config, sandbox_status, to_pod, to_status, verbose_info};
use super::{Kind, call, detached};
use crate::config::Config;

/// Serves the CRI runtime API.
#[derive(Debug, Clone)]
pub struct RuntimeCri {
    config: Arc<Config>,
    pods: Arc<berth_sandbox::pod::PodManager>,
}

impl RuntimeCri {
    pub fn new(config: Arc<Config>, pods: Arc<berth_sandbox::pod::PodManager>) -> Self {
        RuntimeCri { config, pods }
    }

    fn network_condition(&self) -> cri::RuntimeCondition {
        // Read anew on every call, so a conflist dropped in later is picked up.
        let (ok, reason, message) =
            match berth_network::cni::NetworkList::load_first(&self.config.cni.conf_dir) {
                Ok(net) => (
                    true,
                    String::new(),
                    format!("network {:?} from {}", net.name, net.source.display()),
                ),
                Err(e) => (false, "NetworkPluginNotReady".to_string(), e.to_string()),
            };
        cri::RuntimeCondition {
            r#type: "NetworkReady".into(),
            status: ok,
            reason,
            message,
        }
    }
}

macro_rules! not_yet {
    ($($method:ident($req:ident) -> $resp:ident, $rpc:literal, $when:literal;)*) => {$(
        // Spelled as `#[async_trait]` would expand it: that attribute does not reach into
        // methods a macro generates.
        fn $method<'life0, 'async_trait>(
            &'life0 self,
            _req: Request<cri::$req>,
        ) -> Pin<Box<dyn std::future::Future<Output = Result<Response<cri::$resp>, Status>> + Send + 'async_trait>>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async { Err(Status::unimplemented(concat!("berth does not implement ", $rpc, " yet: ", $when))) })
        }
    )*};
}

type EventStream =
    Pin<Box<dyn futures::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RuntimeService for RuntimeCri {
    async fn version(
        &self,
        _req: Request<cri::VersionRequest>,
    ) -> Result<Response<cri::VersionResponse>, Status> {
        call(tracing::trace_span!("Version"), Kind::Read, async {
            Ok(cri::VersionResponse {
                version: "0.1.0".into(),
                runtime_name: "berth".into(),
                runtime_version: env!("CARGO_PKG_VERSION").into(),
                runtime_api_version: berth_cri_api::CRI_API_VERSION.into(),
            })
        })
        .await
    }

    async fn status(
        &self,
        req: Request<cri::StatusRequest>,
    ) -> Result<Response<cri::StatusResponse>, Status> {
        let verbose = req.into_inner().verbose;
        call(tracing::trace_span!("Status"), Kind::Read, async {
            let runtime = cri::RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            };
            let mut info = HashMap::new();
            if verbose {
                let cfg = serde_json::to_string(&*self.config)
                    .map_err(|e| Status::internal(e.to_string()))?;
                info.insert("config".to_string(), cfg);
            }
            let runtime_handlers = self
                .config
                .runtime
                .handlers
                .keys()
                .map(|name| cri::RuntimeHandler {
                    name: name.clone(),
                    features: Some(cri::RuntimeHandlerFeatures {
                        recursive_read_only_mounts: false,
                        user_namespaces: false,
                    }),
                })
                .collect();
            Ok(cri::StatusResponse {
                status: Some(cri::RuntimeStatus {
                    conditions: vec![runtime, self.network_condition()],
                }),
                info,
                runtime_handlers,
                features: Some(cri::RuntimeFeatures {
                    supplemental_groups_policy: false,
                }),
            })
        })
        .await
    }

    async fn runtime_config(
        &self,
        _req: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        call(tracing::trace_span!("RuntimeConfig"), Kind::Read, async {
            Ok(cri::RuntimeConfigResponse {
                linux: Some(cri::LinuxRuntimeConfiguration {
                    cgroup_driver: cri::CgroupDriver::Cgroupfs as i32,
                }),
            })
        })
        .await
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        let cfg = pod_config(req.into_inner())?;
        let span = tracing::info_span!("RunPodSandbox", pod = %format!("{}/{}", cfg.meta.namespace, cfg.meta.name), handler = %cfg.runtime_handler);
        let pods = self.pods.clone();
        call(
            span,
            Kind::Mutation,
            detached(async move {
                let id = pods.run(cfg).await.map_err(sandbox_status)?;
                tracing::info!(pod_sandbox_id = %id, "pod sandbox ready");
                Ok(cri::RunPodSandboxResponse { pod_sandbox_id: id })
            }),
        )
        .await
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        let id = req.into_inner().pod_sandbox_id;
        let span = tracing::info_span!("StopPodSandbox", pod_sandbox_id = %id);
        let pods = self.pods.clone();
        call(
            span,
            Kind::Mutation,
            detached(async move {
                pods.stop(&id).await.map_err(sandbox_status)?;
                Ok(cri::StopPodSandboxResponse {})
            }),
        )
        .await
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        let id = req.into_inner().pod_sandbox_id;
        let span = tracing::info_span!("RemovePodSandbox", pod_sandbox_id = %id);
        let pods = self.pods.clone();
        call(
            span,
            Kind::Mutation,
            detached(async move {
                if id.is_empty() {
                    return Err(Status::invalid_argument("pod_sandbox_id is empty"));
                }
                pods.remove(&id).await.map_err(sandbox_status)?;
                Ok(cri::RemovePodSandboxResponse {})
            }),
        )
        .await
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        let req = req.into_inner();
        let span = tracing::trace_span!("PodSandboxStatus", pod_sandbox_id = %req.pod_sandbox_id);
        call(span, Kind::Read, async {
            let id = self
                .pods
                .resolve(&req.pod_sandbox_id)
                .map_err(sandbox_status)?;
            let rec = self.pods.get(&id).map_err(sandbox_status)?;
            let info = if req.verbose {
                verbose_info(&rec)
            } else {
                Default::default()
            };
            Ok(cri::PodSandboxStatusResponse {
                status: Some(to_status(&rec)),
                info,
                containers_statuses: vec![],
                timestamp: 0,
            })
        })
        .await
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        let f = filter(req.into_inner().filter);
        call(tracing::trace_span!("ListPodSandbox"), Kind::Read, async {
            Ok(cri::ListPodSandboxResponse {
                items: self.pods.list(&f).iter().map(to_pod).collect(),
            })
        })
        .await
    }

    not_yet! {
        create_container(CreateContainerRequest) -> CreateContainerResponse, "CreateContainer", "containers are not built yet";
        start_container(StartContainerRequest) -> StartContainerResponse, "StartContainer", "containers are not built yet";
        stop_container(StopContainerRequest) -> StopContainerResponse, "StopContainer", "containers are not built yet";
        remove_container(RemoveContainerRequest) -> RemoveContainerResponse, "RemoveContainer", "containers are not built yet";
        list_containers(ListContainersRequest) -> ListContainersResponse, "ListContainers", "containers are not built yet";
        container_status(ContainerStatusRequest) -> ContainerStatusResponse, "ContainerStatus", "containers are not built yet";
        update_container_resources(UpdateContainerResourcesRequest) -> UpdateContainerResourcesResponse, "UpdateContainerResources", "containers are not built yet";
        reopen_container_log(ReopenContainerLogRequest) -> ReopenContainerLogResponse, "ReopenContainerLog", "containers are not built yet";
        exec_sync(ExecSyncRequest) -> ExecSyncResponse, "ExecSync", "containers are not built yet";
        exec(ExecRequest) -> ExecResponse, "Exec", "the streaming server is not built yet";
        attach(AttachRequest) -> AttachResponse, "Attach", "the streaming server is not built yet";
        port_forward(PortForwardRequest) -> PortForwardResponse, "PortForward", "the streaming server is not built yet";
        container_stats(ContainerStatsRequest) -> ContainerStatsResponse, "ContainerStats", "containers are not built yet";
        list_container_stats(ListContainerStatsRequest) -> ListContainerStatsResponse, "ListContainerStats", "containers are not built yet";
        pod_sandbox_stats(PodSandboxStatsRequest) -> PodSandboxStatsResponse, "PodSandboxStats", "pod sandboxes are not built yet";
        list_pod_sandbox_stats(ListPodSandboxStatsRequest) -> ListPodSandboxStatsResponse, "ListPodSandboxStats", "pod sandboxes are not built yet";
        update_runtime_config(UpdateRuntimeConfigRequest) -> UpdateRuntimeConfigResponse, "UpdateRuntimeConfig", "pod networking is not built yet";
        checkpoint_container(CheckpointContainerRequest) -> CheckpointContainerResponse, "CheckpointContainer", "checkpointing is not supported";
        list_metric_descriptors(ListMetricDescriptorsRequest) -> ListMetricDescriptorsResponse, "ListMetricDescriptors", "pod metrics are not supported";
        list_pod_sandbox_metrics(ListPodSandboxMetricsRequest) -> ListPodSandboxMetricsResponse, "ListPodSandboxMetrics", "pod metrics are not supported";
    }

    type GetContainerEventsStream = EventStream;

    async fn get_container_events(
        &self,
        _req: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        Err(Status::unimplemented(
            "berth does not implement GetContainerEvents yet: containers are not built yet",
        ))
    }
}

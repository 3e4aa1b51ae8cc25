//! CRI `RuntimeService`: each call converts its request, calls one method of the sandbox
//! runtime, and converts the answer back; nothing here keeps state between calls.
//!
//! Every call is served except checkpointing, which answers `Unimplemented` saying so, never
//! a fake success.

mod containers;
mod pod;
mod sessions;
mod stats;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use berth_cri_api::v1 as cri;
use berth_cri_api::v1::runtime_service_server::RuntimeService;
use tonic::{Request, Response, Status};

use super::{Kind, call};
use crate::config::Config;

/// Serves the CRI runtime API.
#[derive(Debug, Clone)]
pub struct RuntimeCri {
    config: Arc<Config>,
    pods: Arc<berth_sandbox::runtime::Runtime>,
    stream: berth_stream::StreamServer,
    /// The filesystem containers' writable layers are on (their stats name it).
    layer_fs: std::path::PathBuf,
}

impl RuntimeCri {
    pub fn new(
        config: Arc<Config>,
        pods: Arc<berth_sandbox::runtime::Runtime>,
        stream: berth_stream::StreamServer,
    ) -> Self {
        RuntimeCri {
            config,
            layer_fs: pods.writable_layer_fs(),
            pods,
            stream,
        }
    }
}

/// Each handler, its shim and whether that shim is here (Status, verbose).
fn handler_report(pods: &berth_sandbox::runtime::Runtime) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for h in pods.handler_status() {
        let mut v = serde_json::json!({
            "runtimeType": h.runtime_type,
            "shim": h.shim,
            "available": h.missing.is_none(),
        });
        if let Some(m) = h.missing {
            v["message"] = m.into();
        }
        out.insert(h.name, v);
    }
    serde_json::Value::Object(out)
}

fn network_condition(pods: &berth_sandbox::runtime::Runtime) -> cri::RuntimeCondition {
    let n = pods.network_status();
    cri::RuntimeCondition {
        r#type: "NetworkReady".into(),
        status: n.ready,
        reason: n.reason,
        message: n.message,
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

pub(super) type EventStream =
    Pin<Box<dyn futures::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RuntimeService for RuntimeCri {
    not_yet! {
        checkpoint_container(CheckpointContainerRequest) -> CheckpointContainerResponse, "CheckpointContainer", "checkpointing is not supported";
    }

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
                // Pods still being reconciled after a restart, plus the orphan sweep and the
                // spare shim that follow: 0 once berth is fully back.
                info.insert(
                    "recovery".to_string(),
                    serde_json::json!({ "pending": self.pods.recovering() }).to_string(),
                );
                let cfg = serde_json::to_string(&*self.config)
                    .map_err(|e| Status::internal(e.to_string()))?;
                info.insert("config".to_string(), cfg);
                info.insert("handlers".to_string(), handler_report(&self.pods).to_string());
                info.insert(
                    "apparmor".to_string(),
                    if std::path::Path::new("/sys/kernel/security/apparmor").exists() {
                        "available"
                    } else {
                        "not available on this kernel: AppArmor profiles in pod specs are not applied"
                    }
                    .to_string(),
                );
            }
            let runtime_handlers = self
                .pods
                .listed_handlers()
                .into_iter()
                .map(|(name, h)| cri::RuntimeHandler {
                    name,
                    features: Some(cri::RuntimeHandlerFeatures {
                        recursive_read_only_mounts: h.recursive_read_only,
                        user_namespaces: h.user_namespaces,
                    }),
                })
                .collect();
            Ok(cri::StatusResponse {
                status: Some(cri::RuntimeStatus {
                    conditions: vec![runtime, network_condition(&self.pods)],
                }),
                info,
                runtime_handlers,
                features: Some(cri::RuntimeFeatures {
                    supplemental_groups_policy: true,
                    user_namespaces_host_network: false,
                    mount_options: true,
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
        pod::run_pod_sandbox(self, req).await
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        pod::stop_pod_sandbox(self, req).await
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        pod::remove_pod_sandbox(self, req).await
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        pod::pod_sandbox_status(self, req).await
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        pod::list_pod_sandbox(self, req).await
    }

    async fn stream_pod_sandboxes(
        &self,
        req: Request<cri::StreamPodSandboxesRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<cri::StreamPodSandboxesResponse>>, Status> {
        pod::stream_pod_sandboxes(self, req).await
    }

    async fn stream_containers(
        &self,
        req: Request<cri::StreamContainersRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<cri::StreamContainersResponse>>, Status> {
        containers::stream_containers(self, req).await
    }

    async fn stream_container_stats(
        &self,
        req: Request<cri::StreamContainerStatsRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<cri::StreamContainerStatsResponse>>, Status>
    {
        stats::stream_container_stats(self, req).await
    }

    async fn stream_pod_sandbox_stats(
        &self,
        req: Request<cri::StreamPodSandboxStatsRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<cri::StreamPodSandboxStatsResponse>>, Status>
    {
        stats::stream_pod_sandbox_stats(self, req).await
    }

    async fn stream_pod_sandbox_metrics(
        &self,
        _req: Request<cri::StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<cri::StreamPodSandboxMetricsResponse>>, Status>
    {
        stats::stream_pod_sandbox_metrics(self, _req).await
    }

    async fn list_metric_descriptors(
        &self,
        _req: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        stats::list_metric_descriptors(self, _req).await
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _req: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        stats::list_pod_sandbox_metrics(self, _req).await
    }

    async fn get_container_events(
        &self,
        _req: Request<cri::GetEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        containers::get_container_events(self, _req).await
    }

    async fn create_container(
        &self,
        req: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        containers::create_container(self, req).await
    }

    async fn start_container(
        &self,
        req: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        containers::start_container(self, req).await
    }

    async fn stop_container(
        &self,
        req: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        containers::stop_container(self, req).await
    }

    async fn remove_container(
        &self,
        req: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        containers::remove_container(self, req).await
    }

    async fn list_containers(
        &self,
        req: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        containers::list_containers(self, req).await
    }

    async fn container_status(
        &self,
        req: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        containers::container_status(self, req).await
    }

    async fn update_container_resources(
        &self,
        req: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        containers::update_container_resources(self, req).await
    }

    async fn update_pod_sandbox_resources(
        &self,
        req: Request<cri::UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<cri::UpdatePodSandboxResourcesResponse>, Status> {
        containers::update_pod_sandbox_resources(self, req).await
    }

    async fn reopen_container_log(
        &self,
        req: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        containers::reopen_container_log(self, req).await
    }

    async fn exec(
        &self,
        req: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        sessions::exec(self, req).await
    }

    async fn attach(
        &self,
        req: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        sessions::attach(self, req).await
    }

    async fn port_forward(
        &self,
        req: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        sessions::port_forward(self, req).await
    }

    async fn exec_sync(
        &self,
        req: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        sessions::exec_sync(self, req).await
    }

    async fn container_stats(
        &self,
        req: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        stats::container_stats(self, req).await
    }

    async fn list_container_stats(
        &self,
        req: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        stats::list_container_stats(self, req).await
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        stats::pod_sandbox_stats(self, req).await
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        stats::list_pod_sandbox_stats(self, req).await
    }

    async fn update_runtime_config(
        &self,
        req: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        let cidr = req
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        call(
            tracing::info_span!("UpdateRuntimeConfig", pod_cidr = %cidr),
            Kind::Mutation,
            async {
                // The pod CIDR matters to CNI configs templated from it; berth uses the conflist
                // as written, as containerd does without a conf template.
                Ok(cri::UpdateRuntimeConfigResponse {})
            },
        )
        .await
    }
}

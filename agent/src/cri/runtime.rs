//! CRI `RuntimeService`: each call converts its request, calls one method of the sandbox
//! runtime, and converts the answer back; nothing here keeps state between calls.
//!
//! Every call is served except checkpointing, which answers `Unimplemented` saying so, never
//! a fake success.

use berth_sandbox::now_ns;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use berth_cri_api::v1 as cri;
use berth_cri_api::v1::runtime_service_server::RuntimeService;
use tonic::{Request, Response, Status};

use super::container as ctr;
use super::sandbox::{filter, pod_config, to_pod, to_status, verbose_info};
use super::{Kind, call, chunked, detached};
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
                        user_namespaces: false,
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
        let cfg = pod_config(req.into_inner())?;
        let span = tracing::info_span!("RunPodSandbox", pod = %format!("{}/{}", cfg.meta.namespace, cfg.meta.name), handler = %cfg.runtime_handler);
        let pods = self.pods.clone();
        call(
            span,
            Kind::Mutation,
            detached(async move {
                let id = pods.run(cfg).await.map_err(super::status)?;
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
                pods.stop(&id).await.map_err(super::status)?;
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
                pods.remove(&id).await.map_err(super::status)?;
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
                .map_err(super::status)?;
            let rec = self.pods.get(&id).map_err(super::status)?;
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

    async fn list_pod_sandbox(
        &self,
        req: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        let f = filter(req.into_inner().filter);
        call(tracing::trace_span!("ListPodSandbox"), Kind::Read, async {
            Ok(cri::ListPodSandboxResponse {
                items: self.pods.list(&f).iter().map(|r| to_pod(r)).collect(),
            })
        })
        .await
    }

    not_yet! {
        checkpoint_container(CheckpointContainerRequest) -> CheckpointContainerResponse, "CheckpointContainer", "checkpointing is not supported";
    }

    async fn stream_pod_sandboxes(
        &self,
        req: Request<cri::StreamPodSandboxesRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<cri::StreamPodSandboxesResponse>>, Status> {
        let filter = req.into_inner().filter;
        let items = self
            .list_pod_sandbox(Request::new(cri::ListPodSandboxRequest { filter }))
            .await?
            .into_inner()
            .items;
        Ok(Response::new(chunked(items, |pod_sandboxes| {
            cri::StreamPodSandboxesResponse { pod_sandboxes }
        })))
    }

    async fn stream_containers(
        &self,
        req: Request<cri::StreamContainersRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<cri::StreamContainersResponse>>, Status> {
        let filter = req.into_inner().filter;
        let items = self
            .list_containers(Request::new(cri::ListContainersRequest { filter }))
            .await?
            .into_inner()
            .containers;
        Ok(Response::new(chunked(items, |containers| {
            cri::StreamContainersResponse { containers }
        })))
    }

    async fn stream_container_stats(
        &self,
        req: Request<cri::StreamContainerStatsRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<cri::StreamContainerStatsResponse>>, Status>
    {
        let filter = req.into_inner().filter;
        let items = self
            .list_container_stats(Request::new(cri::ListContainerStatsRequest { filter }))
            .await?
            .into_inner()
            .stats;
        Ok(Response::new(chunked(items, |container_stats| {
            cri::StreamContainerStatsResponse { container_stats }
        })))
    }

    async fn stream_pod_sandbox_stats(
        &self,
        req: Request<cri::StreamPodSandboxStatsRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<cri::StreamPodSandboxStatsResponse>>, Status>
    {
        let filter = req.into_inner().filter;
        let items = self
            .list_pod_sandbox_stats(Request::new(cri::ListPodSandboxStatsRequest { filter }))
            .await?
            .into_inner()
            .stats;
        Ok(Response::new(chunked(items, |pod_sandbox_stats| {
            cri::StreamPodSandboxStatsResponse { pod_sandbox_stats }
        })))
    }

    async fn stream_pod_sandbox_metrics(
        &self,
        _req: Request<cri::StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<cri::StreamPodSandboxMetricsResponse>>, Status>
    {
        let items = self
            .list_pod_sandbox_metrics(Request::new(cri::ListPodSandboxMetricsRequest {}))
            .await?
            .into_inner()
            .pod_metrics;
        Ok(Response::new(chunked(items, |pod_sandbox_metrics| {
            cri::StreamPodSandboxMetricsResponse {
                pod_sandbox_metrics,
            }
        })))
    }

    async fn list_metric_descriptors(
        &self,
        _req: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        call(
            tracing::trace_span!("ListMetricDescriptors"),
            Kind::Read,
            async {
                Ok(cri::ListMetricDescriptorsResponse {
                    descriptors: berth_sandbox::metrics::DESCRIPTORS
                        .iter()
                        .map(|d| cri::MetricDescriptor {
                            name: d.name.into(),
                            help: d.help.into(),
                            label_keys: d.labels.iter().map(|k| k.to_string()).collect(),
                        })
                        .collect(),
                })
            },
        )
        .await
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _req: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        call(
            tracing::trace_span!("ListPodSandboxMetrics"),
            Kind::Read,
            async {
                let now = now_ns();
                let metric = |name: &'static str, labels: &[&str], value: u64| {
                    let kind = match berth_sandbox::metrics::descriptor(name).map(|d| d.kind) {
                        Some(berth_sandbox::metrics::Kind::Gauge) => cri::MetricType::Gauge,
                        _ => cri::MetricType::Counter,
                    };
                    cri::Metric {
                        name: name.into(),
                        timestamp: now,
                        metric_type: kind as i32,
                        label_values: labels.iter().map(|l| l.to_string()).collect(),
                        value: Some(cri::UInt64Value { value }),
                    }
                };
                let pod_metrics = self
                    .pods
                    .pod_metrics()
                    .await
                    .into_iter()
                    .map(|p| {
                        // Pod-level (network) labels: no container, the sandbox as the id,
                        // no image; then the interface.
                        let metrics = p
                            .network
                            .iter()
                            .flat_map(|dev| {
                                let labels =
                                    [&*p.name, &*p.namespace, "", &*p.pod_id, "", &*dev.interface];
                                berth_sandbox::metrics::network_samples(dev)
                                    .into_iter()
                                    .map(move |(n, v)| metric(n, &labels, v))
                            })
                            .collect();
                        let container_metrics = p
                            .containers
                            .iter()
                            .map(|c| {
                                let base = [&*p.name, &*p.namespace, &*c.name, &*c.id, &*c.image];
                                cri::ContainerMetrics {
                                    container_id: c.id.clone(),
                                    metrics: c
                                        .samples
                                        .iter()
                                        .map(|(n, extra, v)| {
                                            let labels: Vec<&str> = base
                                                .iter()
                                                .copied()
                                                .chain(extra.iter().map(String::as_str))
                                                .collect();
                                            metric(n, &labels, *v)
                                        })
                                        .collect(),
                                }
                            })
                            .collect();
                        cri::PodSandboxMetrics {
                            pod_sandbox_id: p.pod_id.clone(),
                            metrics,
                            container_metrics,
                        }
                    })
                    .collect();
                Ok(cri::ListPodSandboxMetricsResponse { pod_metrics })
            },
        )
        .await
    }

    async fn get_container_events(
        &self,
        _req: Request<cri::GetEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let mut rx = self.pods.container_events().subscribe();
        let pods = self.pods.clone();
        let stream = async_stream::stream! {
            loop {
                match rx.recv().await {
                    Ok(e) => {
                        let status = pods.container(&e.container_id).ok().map(|r| ctr::to_container_status(&r));
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

    async fn create_container(
        &self,
        req: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        let (pod_id, cfg) = ctr::container_config(req.into_inner())?;
        let span = tracing::info_span!("CreateContainer", pod_sandbox_id = %pod_id, name = %cfg.name, image = %cfg.image);
        let pods = self.pods.clone();
        call(
            span,
            Kind::Mutation,
            detached(async move {
                let id = pods
                    .create_container(&pod_id, cfg)
                    .await
                    .map_err(super::status)?;
                tracing::info!(container_id = %id, "container created");
                Ok(cri::CreateContainerResponse { container_id: id })
            }),
        )
        .await
    }

    async fn start_container(
        &self,
        req: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        let id = req.into_inner().container_id;
        let span = tracing::info_span!("StartContainer", container_id = %id);
        let pods = self.pods.clone();
        call(
            span,
            Kind::Mutation,
            detached(async move {
                pods.start_container(&id).await.map_err(super::status)?;
                Ok(cri::StartContainerResponse {})
            }),
        )
        .await
    }

    async fn stop_container(
        &self,
        req: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        let req = req.into_inner();
        let span = tracing::info_span!("StopContainer", container_id = %req.container_id, timeout = req.timeout);
        let pods = self.pods.clone();
        call(
            span,
            Kind::Mutation,
            detached(async move {
                let timeout = std::time::Duration::from_secs(req.timeout.max(0) as u64);
                pods.stop_container(&req.container_id, timeout)
                    .await
                    .map_err(super::status)?;
                Ok(cri::StopContainerResponse {})
            }),
        )
        .await
    }

    async fn remove_container(
        &self,
        req: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        let id = req.into_inner().container_id;
        let span = tracing::info_span!("RemoveContainer", container_id = %id);
        let pods = self.pods.clone();
        call(
            span,
            Kind::Mutation,
            detached(async move {
                if id.is_empty() {
                    return Err(Status::invalid_argument("container_id is empty"));
                }
                pods.remove_container(&id).await.map_err(super::status)?;
                Ok(cri::RemoveContainerResponse {})
            }),
        )
        .await
    }

    async fn list_containers(
        &self,
        req: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        let f = ctr::filter(req.into_inner().filter);
        call(tracing::trace_span!("ListContainers"), Kind::Read, async {
            Ok(cri::ListContainersResponse {
                containers: self
                    .pods
                    .list_containers(&f)
                    .iter()
                    .map(|r| ctr::to_container(r))
                    .collect(),
            })
        })
        .await
    }

    async fn container_status(
        &self,
        req: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        let req = req.into_inner();
        let span = tracing::trace_span!("ContainerStatus", container_id = %req.container_id);
        call(span, Kind::Read, async {
            let id = self
                .pods
                .resolve_container(&req.container_id)
                .map_err(super::status)?;
            let rec = self.pods.container(&id).map_err(super::status)?;
            Ok(cri::ContainerStatusResponse {
                status: Some(ctr::to_container_status(&rec)),
                info: if req.verbose {
                    ctr::verbose_info(&rec)
                } else {
                    Default::default()
                },
            })
        })
        .await
    }

    async fn update_container_resources(
        &self,
        req: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        let req = req.into_inner();
        let span =
            tracing::info_span!("UpdateContainerResources", container_id = %req.container_id);
        let pods = self.pods.clone();
        call(
            span,
            Kind::Mutation,
            detached(async move {
                let r = ctr::resources(req.linux);
                pods.update_container_resources(&req.container_id, &r)
                    .await
                    .map_err(super::status)?;
                Ok(cri::UpdateContainerResourcesResponse {})
            }),
        )
        .await
    }

    async fn reopen_container_log(
        &self,
        req: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        let id = req.into_inner().container_id;
        let span = tracing::info_span!("ReopenContainerLog", container_id = %id);
        call(span, Kind::Mutation, async {
            self.pods.reopen_container_log(&id).map_err(super::status)?;
            Ok(cri::ReopenContainerLogResponse {})
        })
        .await
    }

    async fn exec(
        &self,
        req: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        let req = req.into_inner();
        let span = tracing::info_span!("Exec", container_id = %req.container_id, tty = req.tty, stdin = req.stdin);
        call(span, Kind::Mutation, async {
            super::stream::exec_url(&self.pods, &self.stream, req)
        })
        .await
    }

    async fn attach(
        &self,
        req: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        let req = req.into_inner();
        let span = tracing::info_span!("Attach", container_id = %req.container_id, tty = req.tty, stdin = req.stdin);
        call(span, Kind::Mutation, async {
            super::stream::attach_url(&self.pods, &self.stream, req)
        })
        .await
    }

    async fn port_forward(
        &self,
        req: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        let req = req.into_inner();
        let span = tracing::info_span!("PortForward", pod_sandbox_id = %req.pod_sandbox_id, ports = ?req.port);
        call(span, Kind::Mutation, async {
            super::stream::port_forward_url(&self.pods, &self.stream, req)
        })
        .await
    }

    async fn exec_sync(
        &self,
        req: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        let req = req.into_inner();
        let span = tracing::debug_span!("ExecSync", container_id = %req.container_id, timeout = req.timeout);
        let pods = self.pods.clone();
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
                    .map_err(super::status)?;
                Ok(cri::ExecSyncResponse {
                    stdout: out.stdout,
                    stderr: out.stderr,
                    exit_code: out.exit_code,
                })
            }),
        )
        .await
    }

    async fn container_stats(
        &self,
        req: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        let id = req.into_inner().container_id;
        let span = tracing::trace_span!("ContainerStats", container_id = %id);
        call(span, Kind::Read, async {
            let id = self.pods.resolve_container(&id).map_err(super::status)?;
            let rec = self.pods.container(&id).map_err(super::status)?;
            Ok(cri::ContainerStatsResponse {
                stats: Some(self.stats_of(&rec).await),
            })
        })
        .await
    }

    async fn list_container_stats(
        &self,
        req: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        let f = req.into_inner().filter.unwrap_or_default();
        call(
            tracing::trace_span!("ListContainerStats"),
            Kind::Read,
            async {
                let filter = berth_sandbox::container::ContainerFilter {
                    id: (!f.id.is_empty()).then_some(f.id),
                    pod_id: (!f.pod_sandbox_id.is_empty()).then_some(f.pod_sandbox_id),
                    labels: f.label_selector.into_iter().collect(),
                    state: None,
                };
                let mut stats = Vec::new();
                for r in self.pods.list_containers(&filter) {
                    stats.push(self.stats_of(&r).await);
                }
                Ok(cri::ListContainerStatsResponse { stats })
            },
        )
        .await
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        let id = req.into_inner().pod_sandbox_id;
        let span = tracing::trace_span!("PodSandboxStats", pod_sandbox_id = %id);
        call(span, Kind::Read, async {
            let id = self.pods.resolve(&id).map_err(super::status)?;
            let rec = self.pods.get(&id).map_err(super::status)?;
            Ok(cri::PodSandboxStatsResponse {
                stats: Some(self.pod_stats_of(&rec).await),
            })
        })
        .await
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        let f = req.into_inner().filter.unwrap_or_default();
        call(
            tracing::trace_span!("ListPodSandboxStats"),
            Kind::Read,
            async {
                let filter = berth_sandbox::pod::PodFilter {
                    id: (!f.id.is_empty()).then_some(f.id),
                    state: None,
                    labels: f.label_selector.into_iter().collect(),
                };
                let mut stats = Vec::new();
                for p in self.pods.list(&filter) {
                    stats.push(self.pod_stats_of(&p).await);
                }
                Ok(cri::ListPodSandboxStatsResponse { stats })
            },
        )
        .await
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

impl RuntimeCri {
    async fn stats_of(&self, r: &berth_sandbox::container::ContainerRecord) -> cri::ContainerStats {
        let usage = self.pods.container_usage(&r.id).await.unwrap_or_else(|_| {
            berth_sandbox::container::ContainerUsage {
                at_ns: now_ns(),
                ..Default::default()
            }
        });
        ctr::to_stats(r, &usage, &self.layer_fs)
    }

    async fn pod_stats_of(&self, p: &berth_sandbox::pod::PodRecord) -> cri::PodSandboxStats {
        let mut containers: Vec<cri::ContainerStats> = Vec::new();
        for r in self
            .pods
            .list_containers(&berth_sandbox::container::ContainerFilter {
                pod_id: Some(p.id.clone()),
                ..Default::default()
            })
            .iter()
            .filter(|r| r.state == berth_sandbox::container::ContainerState::Running)
        {
            containers.push(self.stats_of(r).await);
        }
        let now = now_ns();
        let sum = |f: &dyn Fn(&cri::ContainerStats) -> Option<u64>| -> Option<cri::UInt64Value> {
            Some(cri::UInt64Value {
                value: containers.iter().filter_map(f).sum(),
            })
        };
        let cpu = cri::CpuUsage {
            timestamp: now,
            usage_core_nano_seconds: sum(&|c| {
                c.cpu
                    .as_ref()?
                    .usage_core_nano_seconds
                    .as_ref()
                    .map(|v| v.value)
            }),
            usage_nano_cores: sum(&|c| c.cpu.as_ref()?.usage_nano_cores.as_ref().map(|v| v.value)),
            psi: None,
        };
        let memory = cri::MemoryUsage {
            timestamp: now,
            working_set_bytes: sum(&|c| {
                c.memory
                    .as_ref()?
                    .working_set_bytes
                    .as_ref()
                    .map(|v| v.value)
            }),
            usage_bytes: sum(&|c| c.memory.as_ref()?.usage_bytes.as_ref().map(|v| v.value)),
            rss_bytes: sum(&|c| c.memory.as_ref()?.rss_bytes.as_ref().map(|v| v.value)),
            page_faults: sum(&|c| c.memory.as_ref()?.page_faults.as_ref().map(|v| v.value)),
            major_page_faults: sum(&|c| {
                c.memory
                    .as_ref()?
                    .major_page_faults
                    .as_ref()
                    .map(|v| v.value)
            }),
            available_bytes: None,
            psi: None,
        };
        let m = &p.config.meta;
        cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: p.id.clone(),
                metadata: Some(cri::PodSandboxMetadata {
                    name: m.name.clone(),
                    uid: m.uid.clone(),
                    namespace: m.namespace.clone(),
                    attempt: m.attempt,
                }),
                labels: p.config.labels.clone().into_iter().collect(),
                annotations: p.config.annotations.clone().into_iter().collect(),
            }),
            linux: Some(cri::LinuxPodSandboxStats {
                cpu: Some(cpu),
                memory: Some(memory),
                network: None,
                process: None,
                containers,
                io: None,
            }),
            windows: None,
        }
    }
}

//! Stats and metrics of containers and pods.

use berth_cri_api::v1 as cri;
use berth_cri_api::v1::runtime_service_server::RuntimeService;
use berth_sandbox::now_ns;
use tonic::{Request, Response, Status};

use super::super::container_status as ctr;
use super::super::{Kind, call, chunked};
use super::RuntimeCri;

pub(super) async fn container_stats(
    this: &RuntimeCri,
    req: Request<cri::ContainerStatsRequest>,
) -> Result<Response<cri::ContainerStatsResponse>, Status> {
    let id = req.into_inner().container_id;
    let span = tracing::trace_span!("ContainerStats", container_id = %id);
    call(span, Kind::Read, async {
        let id = this
            .pods
            .resolve_container(&id)
            .map_err(super::super::status)?;
        let rec = this.pods.container(&id).map_err(super::super::status)?;
        Ok(cri::ContainerStatsResponse {
            stats: Some(this.stats_of(&rec).await),
        })
    })
    .await
}

pub(super) async fn list_container_stats(
    this: &RuntimeCri,
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
            for r in this.pods.list_containers(&filter) {
                stats.push(this.stats_of(&r).await);
            }
            Ok(cri::ListContainerStatsResponse { stats })
        },
    )
    .await
}

pub(super) async fn pod_sandbox_stats(
    this: &RuntimeCri,
    req: Request<cri::PodSandboxStatsRequest>,
) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
    let id = req.into_inner().pod_sandbox_id;
    let span = tracing::trace_span!("PodSandboxStats", pod_sandbox_id = %id);
    call(span, Kind::Read, async {
        let id = this.pods.resolve(&id).map_err(super::super::status)?;
        let rec = this.pods.get(&id).map_err(super::super::status)?;
        Ok(cri::PodSandboxStatsResponse {
            stats: Some(this.pod_stats_of(&rec).await),
        })
    })
    .await
}

pub(super) async fn list_pod_sandbox_stats(
    this: &RuntimeCri,
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
            for p in this.pods.list(&filter) {
                stats.push(this.pod_stats_of(&p).await);
            }
            Ok(cri::ListPodSandboxStatsResponse { stats })
        },
    )
    .await
}

pub(super) async fn stream_container_stats(
    this: &RuntimeCri,
    req: Request<cri::StreamContainerStatsRequest>,
) -> Result<Response<tonic::codegen::BoxStream<cri::StreamContainerStatsResponse>>, Status> {
    let filter = req.into_inner().filter;
    let items = this
        .list_container_stats(Request::new(cri::ListContainerStatsRequest { filter }))
        .await?
        .into_inner()
        .stats;
    Ok(Response::new(chunked(items, |container_stats| {
        cri::StreamContainerStatsResponse { container_stats }
    })))
}

pub(super) async fn stream_pod_sandbox_stats(
    this: &RuntimeCri,
    req: Request<cri::StreamPodSandboxStatsRequest>,
) -> Result<Response<tonic::codegen::BoxStream<cri::StreamPodSandboxStatsResponse>>, Status> {
    let filter = req.into_inner().filter;
    let items = this
        .list_pod_sandbox_stats(Request::new(cri::ListPodSandboxStatsRequest { filter }))
        .await?
        .into_inner()
        .stats;
    Ok(Response::new(chunked(items, |pod_sandbox_stats| {
        cri::StreamPodSandboxStatsResponse { pod_sandbox_stats }
    })))
}

pub(super) async fn list_metric_descriptors(
    _this: &RuntimeCri,
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

pub(super) async fn list_pod_sandbox_metrics(
    this: &RuntimeCri,
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
            let pod_metrics = this
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

pub(super) async fn stream_pod_sandbox_metrics(
    this: &RuntimeCri,
    _req: Request<cri::StreamPodSandboxMetricsRequest>,
) -> Result<Response<tonic::codegen::BoxStream<cri::StreamPodSandboxMetricsResponse>>, Status> {
    let items = this
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

impl RuntimeCri {
    pub(super) async fn stats_of(
        &self,
        r: &berth_sandbox::container::ContainerRecord,
    ) -> cri::ContainerStats {
        let usage = self.pods.container_usage(&r.id).await.unwrap_or_else(|_| {
            berth_sandbox::container::ContainerUsage {
                at_ns: now_ns(),
                ..Default::default()
            }
        });
        ctr::to_stats(r, &usage, &self.layer_fs)
    }

    pub(super) async fn pod_stats_of(
        &self,
        p: &berth_sandbox::pod::PodRecord,
    ) -> cri::PodSandboxStats {
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

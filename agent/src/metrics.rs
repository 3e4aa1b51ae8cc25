//! The Prometheus endpoint (`metrics.address`): berth's catalogue of metrics
//! (`berth_metrics`), the families counted when scraped (pods, containers and shims from the
//! sandbox runtime; the process), and the tower layer that counts and times every CRI call.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use berth_metrics::{Collect, Computed, Format, Sample, Type, Value};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::config::MetricsConfig;

/// Connections served at once: a scraper needs one; the bound keeps a flood of them from
/// costing more than a few tasks.
const MAX_CONNECTIONS: usize = 32;

/// The families counted from the runtime's records when scraped.
const COMPUTED: [&str; 3] = ["berth_pods", "berth_containers", "berth_shims"];

/// Every family served: the catalogue, what the runtime holds, the process.
pub struct Families {
    computed: Vec<Computed>,
}

impl Families {
    pub fn new(pods: Arc<berth_sandbox::runtime::Runtime>) -> Families {
        let p = pods.clone();
        let pods_now = Computed::new(
            COMPUTED[0],
            "Pod sandboxes berth holds, by state (ready, notready) and runtime handler.",
            &["state", "handler"],
            Type::Gauge,
            move || by_state_and_handler(&p, Kind::Pods),
        );
        let p = pods.clone();
        let containers_now = Computed::new(
            COMPUTED[1],
            "Containers berth holds, by state (created, running, exited, unknown) and their pod's runtime handler.",
            &["state", "handler"],
            Type::Gauge,
            move || by_state_and_handler(&p, Kind::Containers),
        );
        let p = pods;
        let shims_now = Computed::new(
            COMPUTED[2],
            "Shims alive now (one per pod), by runtime handler.",
            &["handler"],
            Type::Gauge,
            move || {
                let mut by: std::collections::BTreeMap<String, usize> =
                    handler_names(&p).into_iter().map(|h| (h, 0)).collect();
                by.extend(p.shims_by_handler());
                by.into_iter()
                    .map(|(h, n)| (vec![h], Value::Number(n as f64)))
                    .collect()
            },
        );
        Families {
            computed: vec![pods_now, containers_now, shims_now],
        }
    }

    /// All of them in `format`. Reads `/proc` and the records: call it off the async workers.
    pub fn encode(&self, format: Format) -> String {
        let mut all: Vec<&dyn Collect> = berth_metrics::catalogue();
        all.extend(self.computed.iter().map(|c| c as &dyn Collect));
        all.extend(
            berth_metrics::process::families()
                .iter()
                .map(|c| c as &dyn Collect),
        );
        berth_metrics::encode(&all, format)
    }
}

enum Kind {
    Pods,
    Containers,
}

fn handler_names(pods: &berth_sandbox::runtime::Runtime) -> Vec<String> {
    pods.listed_handlers()
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| !n.is_empty())
        .collect()
}

/// Counts by (state, handler), with a zero for every configured handler in every state, so
/// that a rate or a sum over them exists before the first pod.
fn by_state_and_handler(pods: &berth_sandbox::runtime::Runtime, kind: Kind) -> Vec<Sample> {
    use berth_sandbox::container::ContainerState as C;
    use berth_sandbox::pod::PodState as P;
    let states: &[&str] = match kind {
        Kind::Pods => &["ready", "notready"],
        Kind::Containers => &["created", "running", "exited", "unknown"],
    };
    let mut counts = std::collections::BTreeMap::new();
    for h in handler_names(pods) {
        for s in states {
            counts.insert((s.to_string(), h.clone()), 0usize);
        }
    }
    let all_pods = pods.list(&Default::default());
    match kind {
        Kind::Pods => {
            for p in &all_pods {
                let s = match p.state {
                    P::Ready => "ready",
                    P::NotReady => "notready",
                };
                *counts
                    .entry((s.to_string(), p.handler.clone()))
                    .or_default() += 1;
            }
        }
        Kind::Containers => {
            let handler: std::collections::HashMap<&str, &str> = all_pods
                .iter()
                .map(|p| (p.id.as_str(), p.handler.as_str()))
                .collect();
            for c in pods.list_containers(&Default::default()) {
                let s = match c.state {
                    C::Created => "created",
                    C::Running => "running",
                    C::Exited => "exited",
                    C::Unknown => "unknown",
                };
                let h = handler.get(c.pod_id.as_str()).copied().unwrap_or_default();
                *counts.entry((s.to_string(), h.to_string())).or_default() += 1;
            }
        }
    }
    counts
        .into_iter()
        .map(|((s, h), n)| (vec![s, h], Value::Number(n as f64)))
        .collect()
}

/// Serves `/metrics` on `cfg.address` until berth stops; `None` when no address is set.
pub async fn serve(
    cfg: &MetricsConfig,
    families: Arc<Families>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if cfg.address.is_empty() {
        return Ok(None);
    }
    let tls = if cfg.tls_cert.as_os_str().is_empty() {
        None
    } else {
        Some(berth_stream::server::tls_acceptor(
            "metrics",
            &cfg.tls_cert,
            &cfg.tls_key,
        )?)
    };
    let listener = tokio::net::TcpListener::bind(&cfg.address)
        .await
        .with_context(|| format!("listen on {} (metrics.address)", cfg.address))?;
    // Port 0 takes a free one: the log says which.
    let bound = listener
        .local_addr()
        .map_or_else(|_| cfg.address.clone(), |a| a.to_string());
    tracing::info!(address = %bound, tls = tls.is_some(), "serving metrics on /metrics");
    let gate = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    Ok(Some(tokio::spawn(async move {
        loop {
            let Ok(turn) = gate.clone().acquire_owned().await else {
                return;
            };
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(err = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (families, tls) = (families.clone(), tls.clone());
            tokio::spawn(async move {
                let _turn = turn;
                let svc = hyper::service::service_fn(move |req| {
                    let families = families.clone();
                    async move { Ok::<_, Infallible>(answer(&families, req).await) }
                });
                let http = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .to_owned();
                let res = match tls {
                    None => http.serve_connection(TokioIo::new(tcp), svc).await,
                    Some(tls) => {
                        match tokio::time::timeout(Duration::from_secs(10), tls.accept(tcp)).await {
                            Ok(Ok(s)) => http.serve_connection(TokioIo::new(s), svc).await,
                            Ok(Err(e)) => {
                                tracing::debug!(peer = %peer, err = %e, "metrics: TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        }
                    }
                };
                if let Err(e) = res {
                    tracing::debug!(peer = %peer, err = %e, "metrics connection ended");
                }
            });
        }
    })))
}

async fn answer(
    families: &Arc<Families>,
    req: http::Request<Incoming>,
) -> http::Response<Full<Bytes>> {
    let reply = |status: http::StatusCode, body: String, ctype: &'static str| {
        let mut r = http::Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(ctype),
        );
        r
    };
    if req.uri().path() != "/metrics" {
        return reply(
            http::StatusCode::NOT_FOUND,
            "berth serves its metrics on /metrics\n".into(),
            "text/plain; charset=utf-8",
        );
    }
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return reply(
            http::StatusCode::METHOD_NOT_ALLOWED,
            "use GET\n".into(),
            "text/plain; charset=utf-8",
        );
    }
    let format = Format::negotiate(
        req.headers()
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok()),
    );
    let f = families.clone();
    match tokio::task::spawn_blocking(move || f.encode(format)).await {
        Ok(body) => reply(http::StatusCode::OK, body, format.content_type()),
        Err(e) => reply(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("collecting metrics failed: {e}\n"),
            "text/plain; charset=utf-8",
        ),
    }
}

/// The CRI's methods, by service: the `method` label takes only these values (anything else
/// a client sends is `other`), so a hostile client cannot grow the label set.
const RUNTIME_METHODS: &[&str] = &[
    "Attach",
    "CheckpointContainer",
    "CheckpointPod",
    "ContainerStats",
    "ContainerStatus",
    "CreateContainer",
    "Exec",
    "ExecSync",
    "GetContainerEvents",
    "ListContainerStats",
    "ListContainers",
    "ListMetricDescriptors",
    "ListPodSandbox",
    "ListPodSandboxMetrics",
    "ListPodSandboxStats",
    "PodSandboxStats",
    "PodSandboxStatus",
    "PortForward",
    "RemoveContainer",
    "RemovePodSandbox",
    "ReopenContainerLog",
    "RestorePod",
    "RunPodSandbox",
    "RuntimeConfig",
    "StartContainer",
    "Status",
    "StopContainer",
    "StopPodSandbox",
    "StreamContainerStats",
    "StreamContainers",
    "StreamPodSandboxMetrics",
    "StreamPodSandboxStats",
    "StreamPodSandboxes",
    "UpdateContainerResources",
    "UpdatePodSandboxResources",
    "UpdateRuntimeConfig",
    "Version",
];
const IMAGE_METHODS: &[&str] = &[
    "ImageFsInfo",
    "ImageStatus",
    "ListImages",
    "PullImage",
    "RemoveImage",
    "StreamImages",
];

/// (service, method) labels of a request path.
fn labels_of(path: &str) -> (&'static str, &'static str) {
    let known = |list: &'static [&'static str], m: &str| {
        list.binary_search(&m).map_or("other", |i| list[i])
    };
    match path.trim_start_matches('/').split_once('/') {
        Some(("runtime.v1.RuntimeService", m)) => ("RuntimeService", known(RUNTIME_METHODS, m)),
        Some(("runtime.v1.ImageService", m)) => ("ImageService", known(IMAGE_METHODS, m)),
        _ => ("other", "other"),
    }
}

/// gRPC's name for a status code, as grpc-go and containerd's metrics spell it.
fn code_name(code: &[u8]) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    std::str::from_utf8(code)
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .and_then(|i| NAMES.get(i).copied())
        .unwrap_or("Unknown")
}

/// The [`tower::Layer`] of [`Observe`].
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsLayer;

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner }
    }
}

/// Counts and times each CRI call by service, method and gRPC code, to the end of its answer
/// (for a stream, to its last message).
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Observe<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: http_body::Body + Unpin + Send + 'static,
{
    type Response = http::Response<Observed<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let (service, method) = labels_of(req.uri().path());
        let call = Call {
            service,
            method,
            start: Instant::now(),
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await?;
            // A trailers-only answer (every error) carries its status in the headers.
            let mut call = Some(call);
            if let Some(code) = res.headers().get("grpc-status")
                && let Some(c) = call.take()
            {
                c.finish(code_name(code.as_bytes()));
            }
            Ok(res.map(|inner| Observed { inner, call }))
        })
    }
}

/// A call being timed.
#[derive(Debug)]
struct Call {
    service: &'static str,
    method: &'static str,
    start: Instant,
}

impl Call {
    fn finish(self, code: &'static str) {
        let labels = [self.service, self.method, code];
        berth_metrics::CRI_REQUESTS.with(&labels).inc();
        berth_metrics::CRI_REQUEST_DURATION
            .with(&labels)
            .observe_duration(self.start.elapsed());
    }
}

/// An answer's body that finishes its call's timing at its trailers (the status of a normal
/// answer); a body dropped before them is a call the client gave up (`Canceled`).
#[derive(Debug)]
pub struct Observed<B> {
    inner: B,
    call: Option<Call>,
}

impl<B> Drop for Observed<B> {
    fn drop(&mut self) {
        if let Some(c) = self.call.take() {
            c.finish("Canceled");
        }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for Observed<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(t) = f.trailers_ref()
                    && let Some(c) = self.call.take()
                {
                    c.finish(
                        t.get("grpc-status")
                            .map_or("Unknown", |v| code_name(v.as_bytes())),
                    );
                }
            }
            Some(Err(_)) | None => {
                if let Some(c) = self.call.take() {
                    c.finish("Unknown");
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cri_method_has_its_label() {
        let proto = include_str!("../../cri-api/proto/api.proto");
        let mut service = "";
        let (mut runtime, mut image) = (vec![], vec![]);
        for line in proto.lines().map(str::trim) {
            if let Some(s) = line.strip_prefix("service ") {
                service = s.split_whitespace().next().unwrap_or_default();
            } else if let Some(r) = line.strip_prefix("rpc ") {
                let name = r.split('(').next().unwrap_or_default().trim().to_string();
                match service {
                    "RuntimeService" => runtime.push(name),
                    "ImageService" => image.push(name),
                    _ => {}
                }
            }
        }
        runtime.sort();
        image.sort();
        assert_eq!(
            RUNTIME_METHODS, runtime,
            "RUNTIME_METHODS: sorted, as the proto has them"
        );
        assert_eq!(IMAGE_METHODS, image);
    }

    #[test]
    fn readme_documents_every_metric() {
        let readme = include_str!("../../README.md");
        let mut names: Vec<String> = berth_metrics::catalogue()
            .iter()
            .chain(
                berth_metrics::process::families()
                    .iter()
                    .map(|c| c as &dyn Collect)
                    .collect::<Vec<_>>()
                    .iter(),
            )
            .map(|f| match f.desc().kind {
                Type::Counter => format!("{}_total", f.desc().name),
                _ => f.desc().name.to_string(),
            })
            .collect();
        names.extend(COMPUTED.iter().map(|n| n.to_string()));
        for n in names {
            assert!(
                readme.contains(&format!("`{n}`")),
                "README's metrics table lacks {n}"
            );
        }
    }

    #[test]
    fn labels_are_bounded() {
        assert_eq!(
            labels_of("/runtime.v1.RuntimeService/RunPodSandbox"),
            ("RuntimeService", "RunPodSandbox")
        );
        assert_eq!(
            labels_of("/runtime.v1.ImageService/PullImage"),
            ("ImageService", "PullImage")
        );
        assert_eq!(
            labels_of("/runtime.v1.RuntimeService/Hostile\"Name"),
            ("RuntimeService", "other")
        );
        assert_eq!(
            labels_of("/grpc.health.v1.Health/Check"),
            ("other", "other")
        );
        assert_eq!(code_name(b"0"), "OK");
        assert_eq!(code_name(b"5"), "NotFound");
        assert_eq!(code_name(b"99"), "Unknown");
        assert_eq!(code_name(b"x"), "Unknown");
    }
}

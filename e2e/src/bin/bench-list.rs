//! List benchmark: the kubelet relists pods and containers every second, so what a List costs
//! on a full node matters. Fills berth and containerd 1.6 (same world as `bench-pods`) with
//! `BERTH_LIST_PODS` pods (default 100) of two running containers each, then times
//! ListPodSandbox, ListContainers and, as the floor of a call's own cost (gRPC, the unix
//! socket, the client), Version, `CALLS` times each, alternating. Prints medians, the List
//! medians less the Version median (what a List costs beyond an empty call: the handler,
//! encoding the reply and decoding it in the client), and berth's ratio to containerd.
//! berth's own handler time is in its trace log (`BERTH_E2E_LOG_LEVEL=warn,berth::cri=trace
//! BERTH_E2E_KEEP_LOG=<file>`: `elapsed_ms` of each List's `done` line).
//!
//! `cargo build --release -p berth -p berth-e2e && BERTH_BIN=target/release/berth target/release/bench-list`

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use anyhow::Context;
use berth_cri_api::v1 as cri;
use berth_e2e::pods::{PAUSE_IMAGE, SideBySide, pod_config};
use berth_e2e::{Cri, ImageBuilder, Layer, percentile_ms};

const APP: &str = "pause.invalid/berth-e2e/app:1";
const CONTAINERS_PER_POD: usize = 2;
const CALLS: usize = 300;

fn container(name: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        labels: [("app".to_string(), name.to_string())].into(),
        ..berth_e2e::apps::ctr_of(APP, name, &["sleep", "3600"])
    }
}

/// Runs `pods` pods with their containers; returns the pod ids.
async fn fill(cri: &Cri, tag: &str, pods: usize) -> anyhow::Result<Vec<String>> {
    let mut rt = cri.runtime.clone();
    let mut ids = Vec::new();
    for p in 0..pods {
        let mut cfg = pod_config(&format!("list-{tag}-{p}"));
        cfg.labels.insert("tier".into(), "bench".into());
        let pod = rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg.clone()),
                runtime_handler: String::new(),
            })
            .await
            .context("RunPodSandbox")?
            .into_inner()
            .pod_sandbox_id;
        for c in 0..CONTAINERS_PER_POD {
            let id = rt
                .create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: pod.clone(),
                    config: Some(container(&format!("c{c}"))),
                    sandbox_config: Some(cfg.clone()),
                })
                .await
                .context("CreateContainer")?
                .into_inner()
                .container_id;
            rt.start_container(cri::StartContainerRequest { container_id: id })
                .await
                .context("StartContainer")?;
        }
        ids.push(pod);
    }
    Ok(ids)
}

async fn empty(cri: &Cri, pods: Vec<String>) -> anyhow::Result<()> {
    let mut rt = cri.runtime.clone();
    for id in pods {
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await?;
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await?;
    }
    Ok(())
}

#[derive(Default)]
struct Times {
    pods: Vec<Duration>,
    containers: Vec<Duration>,
    version: Vec<Duration>,
}

/// One of each call, timed; checks that the lists are whole.
async fn sample(cri: &Cri, t: &mut Times, pods: usize) -> anyhow::Result<()> {
    let mut rt = cri.runtime.clone();
    let s = Instant::now();
    let n = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items
        .len();
    t.pods.push(s.elapsed());
    anyhow::ensure!(n == pods, "ListPodSandbox returned {n} pods, not {pods}");
    let s = Instant::now();
    let n = rt
        .list_containers(cri::ListContainersRequest { filter: None })
        .await?
        .into_inner()
        .containers
        .len();
    t.containers.push(s.elapsed());
    anyhow::ensure!(
        n == pods * CONTAINERS_PER_POD,
        "ListContainers returned {n}"
    );
    let s = Instant::now();
    rt.version(cri::VersionRequest::default()).await?;
    t.version.push(s.elapsed());
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let pods: usize = std::env::var("BERTH_LIST_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let side = SideBySide::start("berth-bench-list-").await?;
    ImageBuilder::new(vec![Layer::busybox()?])
        .push(&side.registry, "berth-e2e/app", Some("1"))
        .await?;
    let (b, c) = (side.berth.cri().await?, side.containerd.cri().await?);
    for cri in [&b, &c] {
        cri.pull(PAUSE_IMAGE).await?;
        cri.pull(APP).await?;
    }
    let bp = fill(&b, "b", pods).await?;
    let cp = fill(&c, "c", pods).await?;
    let (mut tb, mut tc) = (Times::default(), Times::default());
    for _ in 0..CALLS {
        sample(&b, &mut tb, pods).await?;
        sample(&c, &mut tc, pods).await?;
    }
    println!(
        "{pods} pods, {} running containers per daemon; {CALLS} calls of each, alternating",
        pods * CONTAINERS_PER_POD
    );
    let m = |v: &[Duration]| percentile_ms(v, 50);
    for (name, t) in [("berth", &tb), ("containerd", &tc)] {
        println!(
            "{name:<11} ListPodSandbox {:>6.3} ms  ListContainers {:>6.3} ms  Version {:>6.3} ms | beyond Version: pods {:>6.3} ms, containers {:>6.3} ms",
            m(&t.pods),
            m(&t.containers),
            m(&t.version),
            m(&t.pods) - m(&t.version),
            m(&t.containers) - m(&t.version),
        );
    }
    println!(
        "ratio berth/containerd (medians): ListPodSandbox {:.2}x, ListContainers {:.2}x",
        m(&tb.pods) / m(&tc.pods),
        m(&tb.containers) / m(&tc.containers),
    );
    empty(&b, bp).await?;
    empty(&c, cp).await?;
    Ok(())
}

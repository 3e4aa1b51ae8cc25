//! What berth's metrics and NRI cost: three berths in one run, on their own networks with the
//! same pause and app images: one with neither (`[metrics]` off, `[nri] enable = false`), one
//! serving metrics to a real Prometheus that scrapes it every second, one with NRI on and no
//! plugin connected. Rounds alternate between them; each round runs 20 pods, one container
//! each (RunPodSandbox, CreateContainer + StartContainer), then removes them. Prints each
//! one's medians and their ratios to the first (goal: <= 1.02 for metrics).
//!
//! `cargo build --release -p berth -p berth-e2e && BERTH_BIN=target/release/berth BERTH_E2E_LOG_LEVEL=warn target/release/bench-metrics`

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use anyhow::Context;
use berth_cri_api::v1 as cri;
use berth_e2e::apps::{ctr, env_with};
use berth_e2e::pods::pod_config;
use berth_e2e::prometheus::Prometheus;
use berth_e2e::{PodEnv, percentile_ms};

const PODS: usize = 20;
const ROUNDS: usize = 9;

#[derive(Default)]
struct Times {
    run: Vec<Duration>,
    create_start: Vec<Duration>,
}

async fn round(env: &PodEnv, tag: &str, t: &mut Times) -> anyhow::Result<()> {
    let mut c = env.cri.runtime.clone();
    let mut pods = Vec::new();
    for i in 0..PODS {
        let cfg = pod_config(&format!("bench-{tag}-{i}"));
        let s = Instant::now();
        let pod = c
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg.clone()),
                runtime_handler: String::new(),
            })
            .await
            .context("RunPodSandbox")?
            .into_inner()
            .pod_sandbox_id;
        t.run.push(s.elapsed());
        let s = Instant::now();
        let id = c
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(ctr("c", &["sleep", "3600"])),
                sandbox_config: Some(cfg),
            })
            .await
            .context("CreateContainer")?
            .into_inner()
            .container_id;
        c.start_container(cri::StartContainerRequest { container_id: id })
            .await
            .context("StartContainer")?;
        t.create_start.push(s.elapsed());
        pods.push(pod);
    }
    for pod in pods {
        c.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await?;
        c.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let base = env_with("[nri]\nenable = false\n").await;
    // A port of its own (its log, at warn, does not say which port 0 took).
    let address = format!("127.0.0.1:{}", berth_e2e::free_port());
    let metrics = env_with(&format!(
        "[nri]\nenable = false\n[metrics]\naddress = \"{address}\"\n"
    ))
    .await;
    let nri = env_with("").await;
    let prom = Prometheus::start(std::slice::from_ref(&address)).await?;
    let envs = [("neither", &base), ("metrics", &metrics), ("nri", &nri)];
    let mut times: Vec<Times> = envs.iter().map(|_| Times::default()).collect();
    let cpu = |e: &PodEnv| e.berth.cpu_time().unwrap_or_default();
    // Warm-up: one round each, not counted.
    for (name, env) in envs {
        round(env, &format!("warm-{name}"), &mut Times::default()).await?;
    }
    let cpu_before: Vec<Duration> = envs.iter().map(|(_, e)| cpu(e)).collect();
    // Each round starts with another berth: none always runs first (after an idle pause)
    // or last.
    for r in 0..ROUNDS {
        for k in 0..envs.len() {
            let i = (r + k) % envs.len();
            let (name, env) = envs[i];
            round(env, &format!("{name}-{r}"), &mut times[i]).await?;
        }
    }
    let cpu_per_pod: Vec<f64> = envs
        .iter()
        .zip(&cpu_before)
        .map(|((_, e), b)| (cpu(e) - *b).as_secs_f64() * 1000.0 / (PODS * ROUNDS) as f64)
        .collect();
    let scrapes = prom
        .value("count_over_time(up{job=\"berth\"}[1h])")
        .await?
        .unwrap_or(0.0);
    let failed = prom
        .value("count_over_time(up{job=\"berth\"}[1h]) - sum_over_time(up{job=\"berth\"}[1h])")
        .await?
        .unwrap_or(0.0);
    println!(
        "{PODS} pods x {ROUNDS} rounds per berth, alternating; one container each; Prometheus scraped the metrics berth {scrapes} times, {failed} failed"
    );
    for (((name, _), t), c) in envs.iter().zip(&times).zip(&cpu_per_pod) {
        println!(
            "{name:<8} RunPodSandbox median {:>6.1} ms  p90 {:>6.1} ms | CreateContainer+StartContainer median {:>6.1} ms  p90 {:>6.1} ms | berth CPU per pod {c:>5.2} ms",
            percentile_ms(&t.run, 50),
            percentile_ms(&t.run, 90),
            percentile_ms(&t.create_start, 50),
            percentile_ms(&t.create_start, 90),
        );
    }
    for (i, goal) in [(1, " (goal <= 1.02)"), (2, "")] {
        println!(
            "ratio {}/neither: RunPodSandbox median {:.3}x, CreateContainer+StartContainer median {:.3}x{goal}; berth CPU per pod {:.3}x",
            envs[i].0,
            percentile_ms(&times[i].run, 50) / percentile_ms(&times[0].run, 50),
            percentile_ms(&times[i].create_start, 50) / percentile_ms(&times[0].create_start, 50),
            cpu_per_pod[i] / cpu_per_pod[0],
        );
    }
    Ok(())
}

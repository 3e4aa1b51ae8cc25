//! Pod sandbox benchmark: 20 pods created and destroyed through berth and through containerd
//! 1.6 (Debian's package, own root/state/socket) in one run, on the same CNI conflist
//! (bridge + host-local + portmap + loopback) and the same pause image from a local registry.
//! berth runs its pods under its own shim with crun and under containerd's runc shim. Prints
//! RunPodSandbox median and p90 for each, their ratio, each daemon's RSS with 10 pods running,
//! and what each pod's shim costs (RSS and PSS) with 10 and 50 pods running.
//!
//! `cargo build --release -p berth -p berth-e2e && BERTH_BIN=target/release/berth target/release/bench-pods`

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use anyhow::Context;
use berth_cri_api::v1 as cri;
use berth_e2e::pods::{PAUSE_IMAGE, SideBySide, pod_config};
use berth_e2e::{Cri, percentile_ms};

const PODS: usize = 20;
const ROUNDS: usize = 4;
const RSS_AT: usize = 10;
/// Pods running when the shims' memory is measured.
const SHIM_MEM_AT: [usize; 2] = [10, 50];

struct Round {
    run: Vec<Duration>,
    stop_remove: Vec<Duration>,
    rss_kib: u64,
}

async fn round(
    cri: &Cri,
    tag: &str,
    handler: &str,
    rss: impl Fn() -> Option<u64>,
) -> anyhow::Result<Round> {
    let mut c = cri.runtime.clone();
    let mut ids = Vec::new();
    let mut run = Vec::new();
    let mut rss_kib = 0;
    for i in 0..PODS {
        let cfg = pod_config(&format!("bench-{tag}-{i}"));
        let t = Instant::now();
        let id = c
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg),
                runtime_handler: handler.into(),
            })
            .await
            .context("RunPodSandbox")?
            .into_inner()
            .pod_sandbox_id;
        run.push(t.elapsed());
        ids.push(id);
        if ids.len() == RSS_AT {
            rss_kib = rss().unwrap_or(0);
        }
    }
    let mut stop_remove = Vec::new();
    for id in ids {
        let t = Instant::now();
        c.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .context("StopPodSandbox")?;
        c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await
            .context("RemovePodSandbox")?;
        stop_remove.push(t.elapsed());
    }
    Ok(Round {
        run,
        stop_remove,
        rss_kib,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let side = SideBySide::start_with_containerd2("berth-bench-containerd-").await?;
    let (berth, containerd) = (&side.berth, &side.containerd);
    let (b, c) = (berth.cri().await?, containerd.cri().await?);
    let c2 = match &side.containerd2 {
        Some(d) => Some(d.cri().await?),
        None => None,
    };
    b.pull(PAUSE_IMAGE).await?;
    c.pull(PAUSE_IMAGE).await?;
    if let Some(c2) = &c2 {
        c2.pull(PAUSE_IMAGE).await?;
    }

    // Warm-up: one pod each (first CNI/iptables setup, page cache).
    round1(&b, "warm-b", "crun").await?;
    round1(&c, "warm-c", "").await?;
    if let Some(c2) = &c2 {
        round1(c2, "warm-d", "").await?;
    }
    round1(&b, "warm-bg", "runc").await?;
    let (mut rb, mut rg, mut rc, mut rd) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in 0..ROUNDS {
        rb.push(round(&b, &format!("b{r}"), "crun", || berth.rss_kib()).await?);
        rg.push(round(&b, &format!("g{r}"), "runc", || berth.rss_kib()).await?);
        rc.push(round(&c, &format!("c{r}"), "", || containerd.rss_kib()).await?);
        if let (Some(c2), Some(d)) = (&c2, &side.containerd2) {
            rd.push(round(c2, &format!("d{r}"), "", || d.rss_kib()).await?);
        }
    }
    // What each pod's shim costs, with 10 and with 50 pods running.
    let mut mem = Vec::new();
    for n in SHIM_MEM_AT {
        mem.push((
            "berth, own shim+crun",
            n,
            shim_memory(&b, "crun", n, || berth.shim_pids()).await?,
        ));
        mem.push((
            "berth, runc shim",
            n,
            shim_memory(&b, "runc", n, || berth.shim_pids()).await?,
        ));
        mem.push((
            "containerd 1.6",
            n,
            shim_memory(&c, "", n, || containerd.shim_pids()).await?,
        ));
    }
    let all = |v: &[Round], f: fn(&Round) -> &Vec<Duration>| -> Vec<Duration> {
        v.iter().flat_map(|r| f(r).iter().copied()).collect()
    };
    let rss = |v: &[Round]| v.iter().map(|r| r.rss_kib).max().unwrap_or(0);
    let (brun, grun, crun, drun) = (
        all(&rb, |r| &r.run),
        all(&rg, |r| &r.run),
        all(&rc, |r| &r.run),
        all(&rd, |r| &r.run),
    );
    let (bsr, gsr, csr, dsr) = (
        all(&rb, |r| &r.stop_remove),
        all(&rg, |r| &r.stop_remove),
        all(&rc, |r| &r.stop_remove),
        all(&rd, |r| &r.stop_remove),
    );
    let (brss, crss, drss) = (rss(&rb), rss(&rc), rss(&rd));
    println!(
        "{PODS} pods x {ROUNDS} rounds per daemon, alternating; same conflist and pause image"
    );
    let mut rows = vec![
        ("berth own+crun", &brun, &bsr, brss),
        ("berth runc shim", &grun, &gsr, rss(&rg)),
        ("containerd 1.6", &crun, &csr, crss),
    ];
    if !rd.is_empty() {
        rows.push(("containerd 2.4", &drun, &dsr, drss));
    }
    for (name, run, sr, rss) in rows {
        println!(
            "{name:<15} RunPodSandbox median {:>6.1} ms  p90 {:>6.1} ms | Stop+Remove median {:>6.1} ms | RSS with {RSS_AT} pods {:>6.1} MiB",
            percentile_ms(run, 50),
            percentile_ms(run, 90),
            percentile_ms(sr, 50),
            rss as f64 / 1024.0
        );
    }
    println!(
        "ratio berth (own shim+crun)/containerd 1.6: RunPodSandbox median {:.2}x (goal <= 0.35x), p90 {:.2}x, RSS {:.2}x (goal <= 0.25x); under the runc shim: median {:.2}x",
        percentile_ms(&brun, 50) / percentile_ms(&crun, 50),
        percentile_ms(&brun, 90) / percentile_ms(&crun, 90),
        brss as f64 / crss.max(1) as f64,
        percentile_ms(&grun, 50) / percentile_ms(&crun, 50),
    );
    for (name, n, (rss, pss)) in &mem {
        println!(
            "{name:<21} shim memory per pod with {n:>2} pods: RSS {:>5.2} MiB, PSS {:>5.2} MiB (goal for berth's shim: RSS <= 2 MiB)",
            rss / 1024.0,
            pss / 1024.0
        );
    }
    if !rd.is_empty() {
        println!(
            "ratio berth/containerd 2.4: RunPodSandbox median {:.2}x, p90 {:.2}x, RSS {:.2}x",
            percentile_ms(&brun, 50) / percentile_ms(&drun, 50),
            percentile_ms(&brun, 90) / percentile_ms(&drun, 90),
            brss as f64 / drss.max(1) as f64
        );
    }
    Ok(())
}

/// Runs `n` pods under `handler`, then returns the mean (RSS, PSS) in KiB of the shims
/// `shims` finds, per pod, and removes the pods.
async fn shim_memory(
    cri: &Cri,
    handler: &str,
    n: usize,
    shims: impl Fn() -> Vec<u32>,
) -> anyhow::Result<(f64, f64)> {
    let mut c = cri.runtime.clone();
    let mut ids = Vec::new();
    for i in 0..n {
        let id = c
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pod_config(&format!("mem-{handler}-{n}-{i}"))),
                runtime_handler: handler.into(),
            })
            .await
            .context("RunPodSandbox")?
            .into_inner()
            .pod_sandbox_id;
        ids.push(id);
    }
    // Settled: a shim's first seconds include its start-up's transient pages.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pids = shims();
    let rss: u64 = pids.iter().filter_map(|p| berth_e2e::rss_kib(*p)).sum();
    let pss: u64 = pids.iter().filter_map(|p| berth_e2e::pss_kib(*p)).sum();
    for id in ids {
        c.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await?;
        c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await?;
    }
    Ok((rss as f64 / n as f64, pss as f64 / n as f64))
}

async fn round1(cri: &Cri, tag: &str, handler: &str) -> anyhow::Result<()> {
    let mut c = cri.runtime.clone();
    let id = c
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config(tag)),
            runtime_handler: handler.into(),
        })
        .await
        .context("RunPodSandbox")?
        .into_inner()
        .pod_sandbox_id;
    c.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await?;
    c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
        .await?;
    Ok(())
}

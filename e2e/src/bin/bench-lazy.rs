//! Lazy-pull benchmark: time to a running container (RunPodSandbox + PullImage +
//! CreateContainer + StartContainer, until the entrypoint's first line is in its log) for a
//! 120 MiB image whose big layer was converted to eStargz by the upstream estargz package.
//! Three ways in one run, alternating, each from an empty image store: berth pulling it
//! lazily, berth pulling the same image the normal way (its registry not in
//! `lazy_pull.registries`), and containerd 1.6 (and 2.x when installed) pulling it. Prints
//! medians, ratios, and the bytes berth fetched before the container ran.
//!
//! `cargo build --release -p berth -p berth-e2e && scripts/build-shim.sh release && BERTH_BIN=target/release/berth target/release/bench-lazy`

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use anyhow::Context;
use berth_cri_api::v1 as cri;
use berth_e2e::image::noise;
use berth_e2e::pods::{SideBySide, mirror_hosts, pod_config};
use berth_e2e::stargz::convert;
use berth_e2e::{Cri, ImageBuilder, Layer};

const ROUNDS: usize = 3;
const FILES: usize = 24;
const FILE_BYTES: usize = 5 << 20;
const HELLO: &str = "hello from the entrypoint";

/// Half incompressible, half text-like, as bench-pull's layers.
fn big_layer() -> Layer {
    let mut l = Layer::new()
        .dir("app/")
        .dir("data/")
        .file("app/hello", format!("{HELLO}\n"));
    for i in 0..FILES {
        let data = if i % 2 == 0 {
            noise(FILE_BYTES, i as u64)
        } else {
            let line =
                format!("file {i}: the quick brown fox jumps over the lazy dog 0123456789\n");
            line.repeat(FILE_BYTES / line.len() + 1).into_bytes()[..FILE_BYTES].to_vec()
        };
        l = l.file(&format!("data/f{i}"), data);
    }
    l
}

/// One cold start: the time until the entrypoint printed, then everything removed.
async fn cold_start(cri: &Cri, image: &str, round: usize, who: &str) -> anyhow::Result<Duration> {
    let logs = tempfile::tempdir()?;
    let mut pcfg = pod_config(&format!("lazy-{who}-{round}").replace([' ', '.'], "-"));
    pcfg.log_directory = logs.path().display().to_string();
    let mut rt = cri.runtime.clone();
    let mut img = cri.image.clone();
    let spec = Some(cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    });
    let t = Instant::now();
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pcfg.clone()),
            runtime_handler: String::new(),
        })
        .await
        .context("RunPodSandbox")?
        .into_inner()
        .pod_sandbox_id;
    img.pull_image(cri::PullImageRequest {
        image: spec.clone(),
        ..Default::default()
    })
    .await
    .context("PullImage")?;
    let mut c = berth_e2e::apps::ctr_of(image, "main", &["sh", "-c", "cat /app/hello; sleep 3600"]);
    c.log_path = "main.log".into();
    let id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(c),
            sandbox_config: Some(pcfg),
        })
        .await
        .context("CreateContainer")?
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest { container_id: id })
        .await
        .context("StartContainer")?;
    let log = logs.path().join("main.log");
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(HELLO)
    {
        anyhow::ensure!(t.elapsed() < Duration::from_secs(120), "{who}: no output");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = t.elapsed();
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await?;
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await?;
    img.remove_image(cri::RemoveImageRequest { image: spec })
        .await?;
    Ok(took)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let side = SideBySide::start_with_config(
        "berth-bench-lazy-",
        "[lazy_pull]\nregistries = [\"lazy.invalid\"]\n",
    )
    .await?;
    println!(
        "converting a {} MiB layer to eStargz ...",
        (FILES * FILE_BYTES) >> 20
    );
    let esgz = convert(&big_layer(), &["app/hello"], 0)?;
    ImageBuilder::new(vec![Layer::busybox()?, esgz.layer()])
        .push(&side.registry, "bench/big", Some("1"))
        .await?;
    for host in ["lazy.invalid", "whole.invalid"] {
        let hosts = mirror_hosts(host, &side.registry.addr);
        side.berth.hosts_toml(host, &hosts)?;
        let dir = side.work.path().join("certs.d").join(host);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("hosts.toml"), hosts)?;
    }
    let berth = side.berth.cri().await?;
    let mut runs: Vec<(String, Cri, &str)> = vec![
        (
            "berth lazy".into(),
            berth.clone(),
            "lazy.invalid/bench/big:1",
        ),
        (
            "berth whole".into(),
            berth.clone(),
            "whole.invalid/bench/big:1",
        ),
        (
            "containerd 1.6".into(),
            side.containerd.cri().await?,
            "whole.invalid/bench/big:1",
        ),
    ];
    if let Some(c2) = &side.containerd2 {
        runs.push((
            "containerd 2.4".into(),
            c2.cri().await?,
            "whole.invalid/bench/big:1",
        ));
    }
    // Warm-up (connections, page cache of the registry's files), not counted.
    for (who, cri, image) in &runs {
        cold_start(cri, image, 99, who).await?;
    }
    let mut times = vec![Vec::new(); runs.len()];
    for round in 0..ROUNDS {
        for (i, (who, cri, image)) in runs.iter().enumerate() {
            times[i].push(cold_start(cri, image, round, who).await?);
        }
    }
    println!(
        "image: busybox + a {} MiB eStargz layer ({} bytes compressed, {FILES} files; the entrypoint reads one small file); {ROUNDS} rounds, each from an empty store",
        (FILES * FILE_BYTES) >> 20,
        esgz.blob.len()
    );
    let medians: Vec<Duration> = times.iter_mut().map(|t| median(t)).collect();
    for ((who, _, _), (t, m)) in runs.iter().zip(times.iter().zip(&medians)) {
        println!(
            "{who:<15} to running, median {:>8.1} ms  (all: {:?})",
            m.as_secs_f64() * 1e3,
            t.iter().map(|d| d.as_millis()).collect::<Vec<_>>()
        );
    }
    let lazy = medians[0].as_secs_f64();
    for ((who, _, _), m) in runs.iter().zip(&medians).skip(1) {
        println!(
            "ratio berth lazy / {who}: {:.2}x{}",
            lazy / m.as_secs_f64(),
            if who == "berth whole" {
                " (goal <= 0.30x)"
            } else {
                ""
            }
        );
    }
    // What a lazy start needs before its entrypoint runs (footer, TOC, the prefetched files),
    // measured on a berth without the background fetch, which would add to it as it runs.
    let probe = berth_e2e::Berth::start_for_bench(
        "[lazy_pull]\nregistries = [\"lazy.invalid\"]\nbackground_fetch = false\n",
    )?;
    probe.hosts_toml(
        "lazy.invalid",
        &mirror_hosts("lazy.invalid", &side.registry.addr),
    )?;
    let pc = probe.cri().await?;
    let spec = Some(cri::ImageSpec {
        image: "lazy.invalid/bench/big:1".into(),
        ..Default::default()
    });
    pc.image
        .clone()
        .pull_image(cri::PullImageRequest {
            image: spec.clone(),
            ..Default::default()
        })
        .await?;
    let st = pc
        .image
        .clone()
        .image_status(cri::ImageStatusRequest {
            image: spec,
            verbose: true,
        })
        .await?
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&st.info["info"])?;
    let max = info["lazy"]["fetchedBytes"].as_u64().unwrap_or(0);
    println!(
        "fetched by a lazy pull before the entrypoint can run (footer, TOC, prefetched files): {max} bytes, {:.2}% of the layer blob (goal <= 10%)",
        max as f64 * 100.0 / esgz.blob.len() as f64
    );
    Ok(())
}

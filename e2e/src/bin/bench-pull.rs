//! Pull benchmark: the same multi-layer image (built here, pushed to a local registry) pulled
//! through berth, containerd 1.6 and (when installed) containerd 2.x in one run, alternating,
//! each pull from an empty store (the image was removed after the pull before). Then the same
//! for a small image (busybox, one layer), where per-pull overheads dominate. Prints PullImage
//! and RemoveImage medians and the berth/containerd time ratios. Last, the cost of decryption:
//! the large image encrypted by skopeo (JWE, RSA-OAEP) against the same image in the clear,
//! both pulled by berth, alternating. Then what a signature policy costs: the small image,
//! signed by cosign, pulled by a berth whose policy asks for the signature, and under a scope
//! that accepts anything, against a berth without a policy, alternating.
//!
//! `cargo build --release -p berth -p berth-e2e && BERTH_BIN=target/release/berth target/release/bench-pull`

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use anyhow::Context;
use berth_cri_api::v1::{ImageSpec, PullImageRequest, RemoveImageRequest};
use berth_e2e::containerd::{Containerd, Flavor};
use berth_e2e::crypt::{KeyPairs, LayerFormat, skopeo_encrypt};
use berth_e2e::image::noise;
use berth_e2e::{Berth, Compression, Cri, ImageBuilder, Layer, Registry};

const LAYERS: usize = 6;
const LAYER_MB: usize = 20;
const ROUNDS: usize = 5;
/// Rounds of the small image.
const SMALL_ROUNDS: usize = 15;

/// Half incompressible, half text-like: closer to real layers than pure noise.
fn layer(i: usize) -> Layer {
    let mut l = Layer::new().compression(Compression::Gzip);
    for f in 0..8 {
        let size = LAYER_MB * (1 << 20) / 8;
        let data = if f % 2 == 0 {
            noise(size, (i * 100 + f) as u64)
        } else {
            let line = format!(
                "layer {i} file {f}: the quick brown fox jumps over the lazy dog 0123456789\n"
            );
            line.repeat(size / line.len() + 1).into_bytes()[..size].to_vec()
        };
        l = l.file_mode(&format!("usr/share/bench/l{i}/f{f}"), data, 0o644);
    }
    l
}

/// (PullImage, RemoveImage) of `image`, from an empty store back to one.
async fn timed_pull(cri: &Cri, image: &str) -> anyhow::Result<(Duration, Duration)> {
    let mut c = cri.image.clone();
    let spec = Some(ImageSpec {
        image: image.into(),
        ..Default::default()
    });
    let start = Instant::now();
    c.pull_image(PullImageRequest {
        image: spec.clone(),
        auth: None,
        sandbox_config: None,
    })
    .await
    .context("pull")?;
    let took = start.elapsed();
    let start = Instant::now();
    c.remove_image(RemoveImageRequest { image: spec })
        .await
        .context("remove")?;
    Ok((took, start.elapsed()))
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let reg = Registry::start()?;
    println!("building {LAYERS} layers x {LAYER_MB} MiB (gzip) ...");
    let img = ImageBuilder::new((0..LAYERS).map(layer).collect());
    let pushed = img.push(&reg, "bench/pull", Some("1")).await?;
    let image = format!("{}/bench/pull:1", reg.addr);
    ImageBuilder::new(vec![Layer::busybox()?])
        .push(&reg, "bench/small", Some("1"))
        .await?;
    let small = format!("{}/bench/small:1", reg.addr);

    let keys = KeyPairs::new()?;
    keys.rsa("node", 2048)?;
    let keys_dir = tempfile::tempdir()?;
    keys.install(keys_dir.path(), &["node"])?;
    let berth = Berth::start_for_bench(&format!(
        "[image_decryption]\nkeys_dir = \"{}\"\n",
        keys_dir.path().display()
    ))?;
    berth.hosts_toml(&reg.addr, &format!("server = \"http://{}\"\n", reg.addr))?;
    let work = tempfile::Builder::new()
        .prefix("berth-bench-containerd-")
        .tempdir_in("/var/tmp")?;
    let certs = work.path().join("certs.d");
    std::fs::create_dir_all(certs.join(&reg.addr))?;
    std::fs::write(
        certs.join(&reg.addr).join("hosts.toml"),
        format!("server = \"http://{}\"\n", reg.addr),
    )?;
    let containerd = Containerd::start(&work.path().join("containerd"), &certs)?;
    let v2 = Flavor::V2;
    let containerd2 = if v2.installed() {
        Some(Containerd::start_flavor(
            v2,
            &work.path().join("containerd2"),
            &certs,
            "registry.k8s.io/pause:3.9",
            &work.path().join("cni"),
        )?)
    } else {
        None
    };
    let mut daemons = vec![
        ("berth", berth.cri().await?),
        ("containerd 1.6", containerd.cri().await?),
    ];
    if let Some(d) = &containerd2 {
        daemons.push(("containerd 2.4", d.cri().await?));
    }

    // One warm-up pull each (connection setup, page cache of the registry's files).
    for (_, d) in &daemons {
        timed_pull(d, &image).await?;
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); daemons.len()];
    let mut removes: Vec<Vec<Duration>> = vec![Vec::new(); daemons.len()];
    for _ in 0..ROUNDS {
        for (i, (_, d)) in daemons.iter().enumerate() {
            let (p, r) = timed_pull(d, &image).await?;
            times[i].push(p);
            removes[i].push(r);
        }
    }
    let mut small_pulls: Vec<Vec<Duration>> = vec![Vec::new(); daemons.len()];
    let mut small_removes: Vec<Vec<Duration>> = vec![Vec::new(); daemons.len()];
    for (_, d) in &daemons {
        timed_pull(d, &small).await?;
    }
    for _ in 0..SMALL_ROUNDS {
        for (i, (_, d)) in daemons.iter().enumerate() {
            let (p, r) = timed_pull(d, &small).await?;
            small_pulls[i].push(p);
            small_removes[i].push(r);
        }
    }
    // Every pull fetched every layer: nothing was served from a cache.
    for l in &pushed.layers {
        anyhow::ensure!(
            reg.blob_gets(l) == daemons.len() * (ROUNDS + 1),
            "layer {l} fetched {} times",
            reg.blob_gets(l)
        );
    }
    let total: u64 = (LAYERS * LAYER_MB) as u64;
    println!(
        "image: {LAYERS} layers, {total} MiB uncompressed, {ROUNDS} rounds, each pull from an empty store"
    );
    let medians: Vec<Duration> = times.iter_mut().map(|t| median(t)).collect();
    for ((name, _), (t, m)) in daemons.iter().zip(times.iter().zip(&medians)) {
        println!(
            "{name:<15} PullImage median {:>8.1} ms  (all: {:?})",
            m.as_secs_f64() * 1e3,
            t.iter().map(|d| d.as_millis()).collect::<Vec<_>>()
        );
    }
    for ((name, _), m) in daemons.iter().zip(&medians).skip(1) {
        println!(
            "ratio berth/{name}: {:.2}x{}",
            medians[0].as_secs_f64() / m.as_secs_f64(),
            if *name == "containerd 1.6" {
                " (goal <= 0.80x)"
            } else {
                ""
            }
        );
    }
    for (what, v) in [
        ("RemoveImage of the large image", &mut removes),
        ("PullImage of the small image", &mut small_pulls),
        ("RemoveImage of the small image", &mut small_removes),
    ] {
        let m: Vec<Duration> = v.iter_mut().map(|t| median(t)).collect();
        let line: Vec<String> = daemons
            .iter()
            .zip(&m)
            .map(|((name, _), d)| format!("{name} {:.1} ms", d.as_secs_f64() * 1e3))
            .collect();
        let ratios: Vec<String> = daemons
            .iter()
            .zip(&m)
            .skip(1)
            .map(|((name, _), d)| {
                format!("berth/{name} {:.2}x", m[0].as_secs_f64() / d.as_secs_f64())
            })
            .collect();
        println!("{what}, median: {}; {}", line.join(", "), ratios.join(", "));
    }
    // Decryption: the same layers, encrypted, against the clear image, berth only.
    skopeo_encrypt(
        &reg,
        &keys,
        "bench/pull:1",
        "bench/pull:enc",
        &["node"],
        LayerFormat::AsSource,
    )?;
    let encrypted = format!("{}/bench/pull:enc", reg.addr);
    let cri = berth.cri().await?;
    timed_pull(&cri, &encrypted).await?;
    let (mut clear, mut enc) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        clear.push(timed_pull(&cri, &image).await?.0);
        enc.push(timed_pull(&cri, &encrypted).await?.0);
    }
    let (clear, enc) = (median(&mut clear), median(&mut enc));
    println!(
        "encrypted (skopeo, JWE RSA-OAEP 2048, AES-256-CTR + HMAC-SHA256): berth PullImage median {:.1} ms vs {:.1} ms in the clear: {:.2}x",
        enc.as_secs_f64() * 1e3,
        clear.as_secs_f64() * 1e3,
        enc.as_secs_f64() / clear.as_secs_f64()
    );
    // Signature verification: a second berth with a policy; the first has none.
    let keys = tempfile::tempdir()?;
    let key = berth_e2e::cosign::KeyPair::generate(&keys.path().join("k"))?;
    let small_digest = ImageBuilder::new(vec![Layer::busybox()?])
        .push(&reg, "bench/signed", Some("1"))
        .await?
        .digest;
    key.sign(
        &reg.addr,
        "bench/signed",
        &small_digest,
        &format!("{}/bench/signed", reg.addr),
    )?;
    ImageBuilder::new(vec![Layer::busybox()?])
        .push(&reg, "bench/open", Some("1"))
        .await?;
    let policy = keys.path().join("policy.json");
    std::fs::write(
        &policy,
        serde_json::json!({
            "default": [{"type": "reject"}],
            "transports": {"docker": {
                format!("{}/bench/signed", reg.addr): [{
                    "type": "sigstoreSigned", "keyPath": key.public(),
                    "signedIdentity": {"type": "matchRepository"}
                }],
                format!("{}/bench/open", reg.addr): [{"type": "insecureAcceptAnything"}]
            }}
        })
        .to_string(),
    )?;
    let verifying = Berth::start_for_bench(&format!(
        "[image_policy]\npath = \"{}\"\n",
        policy.display()
    ))?;
    verifying.hosts_toml(&reg.addr, &format!("server = \"http://{}\"\n", reg.addr))?;
    let vcri = verifying.cri().await?;
    let (signed, open) = (
        format!("{}/bench/signed:1", reg.addr),
        format!("{}/bench/open:1", reg.addr),
    );
    timed_pull(&vcri, &signed).await?;
    timed_pull(&vcri, &open).await?;
    timed_pull(&cri, &signed).await?;
    let (mut plain, mut checked, mut accepted) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..SMALL_ROUNDS {
        plain.push(timed_pull(&cri, &signed).await?.0);
        checked.push(timed_pull(&vcri, &signed).await?.0);
        accepted.push(timed_pull(&vcri, &open).await?.0);
    }
    let ms = |v: &mut Vec<Duration>| median(v).as_secs_f64() * 1e3;
    let (plain, checked, accepted) = (ms(&mut plain), ms(&mut checked), ms(&mut accepted));
    println!(
        "signature policy, small image ({SMALL_ROUNDS} rounds): PullImage median {checked:.1} ms verifying a cosign signature, {accepted:.1} ms under insecureAcceptAnything, {plain:.1} ms without a policy: verification costs {:+.1} ms (goal <= 20 ms), accept-anything {:+.1} ms (goal 0)",
        checked - plain,
        accepted - plain,
    );
    println!(
        "RSS after the run: berth {} KiB, containerd 1.6 {} KiB, containerd 2.4 {} KiB",
        berth.rss_kib().unwrap_or(0),
        containerd.rss_kib().unwrap_or(0),
        containerd2
            .as_ref()
            .and_then(|d| d.rss_kib())
            .map_or("-".to_string(), |k| k.to_string())
    );
    Ok(())
}

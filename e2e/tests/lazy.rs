//! Lazy pulling end to end: an image whose big layer was converted to eStargz by the
//! upstream estargz package, in the test registry, pulled by berth with lazy pulling on for
//! its registry, run in pods; a registry without byte ranges; a corrupted chunk.

use std::time::Duration;

use berth_cri_api::v1 as cri;
use berth_e2e::apps::{
    create, ctr_of, env_with, exec, in_userns, pod_userns, remove, run_to_exit, start, stop,
    with_pod_namespaces,
};
use berth_e2e::image::noise;
use berth_e2e::pods::{mirror_hosts, pod_config};
use berth_e2e::proxy::{Fault, FaultyProxy, Plan};
use berth_e2e::stargz::{Converted, convert};
use berth_e2e::{ImageBuilder, Layer, PodEnv, wait_until};
use sha2::{Digest as _, Sha256};

const IMAGE: &str = "lazy.invalid/berth-e2e/lazy:1";
const FILES: usize = 8;
const FILE_BYTES: usize = 5 << 20;
const HELLO: &str = "hello from a lazily pulled layer\n";

struct World {
    env: PodEnv,
    layer: Converted,
    _proxy: Option<FaultyProxy>,
}

fn big(i: usize) -> Vec<u8> {
    noise(FILE_BYTES, 1000 + i as u64)
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Container `id` reads big file `i` whole, and it is what was pushed.
async fn assert_reads_big(env: &PodEnv, id: &str, i: usize) {
    let path = format!("/data/big-{i}");
    let cmd = format!("sha256sum {path}");
    let r = exec(env, id, &["sh", "-c", &cmd], 60).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        format!("{}  {path}\n", sha(&big(i))),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
}

impl World {
    /// A berth pulling `lazy.invalid` lazily (`extra` config added), reaching the registry
    /// through a faulty proxy when `plan` is given; the image pushed.
    async fn start(extra: &str, plan: impl FnOnce(&Converted) -> Option<Plan>) -> World {
        let env = env_with(&format!(
            "[lazy_pull]\nregistries = [\"lazy.invalid\"]\n{extra}\n"
        ))
        .await;
        let mut layer = Layer::new()
            .dir("app/")
            .dir("data/")
            .file("app/hello", HELLO);
        for i in 0..FILES {
            layer = layer.file(&format!("data/big-{i}"), big(i));
        }
        let converted = convert(&layer, &["app/hello"], 0).unwrap();
        ImageBuilder::new(vec![Layer::busybox().unwrap(), converted.layer()])
            .cmd(&["cat", "/app/hello"])
            .push(&env.registry, "berth-e2e/lazy", Some("1"))
            .await
            .unwrap();
        let proxy = plan(&converted).map(|p| FaultyProxy::start(&env.registry.addr, p).unwrap());
        let addr = proxy
            .as_ref()
            .map_or(env.registry.addr.clone(), |p| p.addr.to_string());
        env.berth
            .hosts_toml("lazy.invalid", &mirror_hosts("lazy.invalid", &addr))
            .unwrap();
        World {
            env,
            layer: converted,
            _proxy: proxy,
        }
    }

    async fn info(&self) -> serde_json::Value {
        self.env.cri.image_info(IMAGE).await.unwrap()
    }

    fn fuse_mounts(&self) -> Vec<String> {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(" - fuse.berth-lazy "))
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
            .filter(|p| p.starts_with(self.env.berth.root.to_str().unwrap()))
            .collect()
    }

    async fn remove_image(&self) {
        self.env
            .cri
            .image
            .clone()
            .remove_image(cri::RemoveImageRequest {
                image: Some(cri::ImageSpec {
                    image: IMAGE.into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_starts_from_a_lazily_pulled_layer_and_reads_chunks_never_fetched_before() {
    let w = World::start("background_fetch = false", |_| None).await;
    w.env.cri.pull(IMAGE).await.unwrap();
    let lazy = w.info().await["lazy"].clone();
    assert_eq!(lazy["layers"], 1, "{lazy}");
    let fetched = lazy["fetchedBytes"].as_u64().unwrap();
    let total = lazy["fileBytes"].as_u64().unwrap();
    assert!(total >= (FILES * FILE_BYTES) as u64, "{lazy}");
    // Before start: the footer, the TOC and the prefetched file.
    assert!(
        fetched * 10 <= w.layer.blob.len() as u64,
        "fetched {fetched} of a {}-byte blob before the pod started",
        w.layer.blob.len()
    );
    assert_eq!(w.fuse_mounts().len(), 1, "{:?}", w.fuse_mounts());
    // ImageFsInfo counts what is on disk, not the layer's full size.
    let fs = w
        .env
        .cri
        .image
        .clone()
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .image_filesystems;
    let used = fs[0].used_bytes.as_ref().unwrap().value;
    assert!(used < total / 4, "ImageFsInfo says {used} bytes used");

    // The entrypoint reads the prefetched file; sha256sum reads a file nothing fetched yet.
    let (code, out) = run_to_exit(
        &w.env,
        "lazy",
        IMAGE,
        &["sh", "-c", "cat /app/hello && sha256sum /data/big-5"],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, format!("{HELLO}{}  /data/big-5\n", sha(&big(5))));
    let after = w.info().await["lazy"].clone();
    let on_disk = after["fileBytesOnDisk"].as_u64().unwrap();
    assert!(
        on_disk >= FILE_BYTES as u64 && on_disk < total,
        "only what was read is on disk: {after}"
    );

    // Removing the image unmounts its layer.
    w.remove_image().await;
    assert!(w.fuse_mounts().is_empty(), "{:?}", w.fuse_mounts());
    w.env.assert_clean();
}

/// A pod in a user namespace of its own sees the lazily pulled layer through an idmapped
/// clone of its mount, staged for each container's create only (its overlay keeps its own
/// copy): the files are its root's, their contents fetched as they are read, nothing chowned
/// on the host, nothing of the layer left mounted under berth's state; a berth crash changes
/// nothing; image removal and GC find nothing pinning the layer.
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_in_its_own_user_namespace_reads_a_lazily_pulled_layer() {
    let mut w = World::start("background_fetch = false", |_| None).await;
    w.env.cri.pull(IMAGE).await.unwrap();
    let pcfg = in_userns(pod_config("lazy-userns"), pod_userns(200_000, 65_536));
    let pod = w.env.run(pcfg.clone()).await.unwrap();
    let c = with_pod_namespaces(ctr_of(IMAGE, "main", &["sleep", "3600"]), &pcfg);
    let id = create(&w.env, &pod, &pcfg, c).await.unwrap();
    start(&w.env, &id).await;
    let r = exec(
        &w.env,
        &id,
        &[
            "sh",
            "-c",
            "cat /proc/self/uid_map && stat -c %u:%g /app/hello /data/big-5 && cat /app/hello && sha256sum /data/big-5",
        ],
        30,
    )
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&r.stdout);
    let lines: Vec<String> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        (r.exit_code, lines),
        (
            0,
            vec![
                "0 200000 65536".to_string(),
                "0:0".into(),
                "0:0".into(),
                HELLO.trim_end().into(),
                format!("{} /data/big-5", sha(&big(5))),
            ]
        ),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    // On the host the layer is the host root's, as it was pulled.
    let hello = w
        .fuse_mounts()
        .iter()
        .map(|m| std::path::Path::new(m).join("app/hello"))
        .find(|p| p.exists())
        .expect("the lazy layer's mount");
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&hello).unwrap()),
        0
    );
    // The staged clone went once the create returned.
    let in_state = |w: &World| {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(" - fuse.berth-lazy "))
            .filter(|l| l.contains(w.env.berth.state.to_str().unwrap()))
            .count()
    };
    assert_eq!(in_state(&w), 0);

    // Across a berth crash: the clone shares the layer's connection, which the holder keeps
    // and the new berth serves; a second container reuses the clone.
    w.env.berth.kill();
    w.env.berth.restart().unwrap();
    w.env.reconnect().await.unwrap();
    let c = with_pod_namespaces(ctr_of(IMAGE, "second", &["sleep", "3600"]), &pcfg);
    let second = create(&w.env, &pod, &pcfg, c).await.unwrap();
    start(&w.env, &second).await;
    for id in [&id, &second] {
        assert_reads_big(&w.env, id, 6).await;
    }
    assert_eq!(in_state(&w), 0);

    // Its containers gone and its image removed while the pod lives: nothing of the pod
    // holds the layer's directory, which the trash empties.
    for id in [&id, &second] {
        stop(&w.env, id, 0).await;
        remove(&w.env, id).await;
    }
    w.remove_image().await;
    assert!(w.fuse_mounts().is_empty(), "{:?}", w.fuse_mounts());
    let trash = w.env.berth.root.join("trash");
    let emptied = wait_until(Duration::from_secs(10), || {
        std::fs::read_dir(&trash).is_ok_and(|mut d| d.next().is_none())
    });
    assert!(
        emptied,
        "{:?}",
        std::fs::read_dir(&trash).map(|d| d.count())
    );
    w.env.stop(&pod).await.unwrap();
    w.env.remove(&pod).await.unwrap();
    w.env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_background_fetch_brings_the_layer_to_disk_and_then_the_registry_is_not_needed() {
    let plan = |_: &Converted| {
        Some(Plan {
            path_contains: "/nothing-is-harmed".into(),
            fault: Fault::FlipAt(0),
            times: 0,
            strip_range: false,
        })
    };
    let mut w = World::start("", plan).await;
    w.env.cri.pull(IMAGE).await.unwrap();
    let mut info = serde_json::Value::Null;
    let done = wait_until(Duration::from_secs(30), || {
        info = tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(w.info()))
            ["lazy"]
            .clone();
        info["fileBytesOnDisk"] == info["fileBytes"]
    });
    assert!(done, "not all on disk: {info}");
    // The registry goes away: every file still reads, from local disk.
    w._proxy = None;
    let (code, out) = run_to_exit(
        &w.env,
        "offline",
        IMAGE,
        &["sh", "-c", "cat /app/hello && cat /data/* | sha256sum"],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let all: Vec<u8> = (0..FILES).flat_map(big).collect();
    assert_eq!(out, format!("{HELLO}{}  -\n", sha(&all)));
    w.remove_image().await;
    assert!(w.fuse_mounts().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_chunk_fails_the_read_with_eio_and_is_logged() {
    // Responses of the eStargz blob longer than 200 KB (chunks, not the footer or the TOC)
    // get a byte flipped.
    let plan = |c: &Converted| {
        Some(Plan {
            path_contains: c.digest.clone(),
            fault: Fault::FlipAt(200_000),
            times: usize::MAX,
            strip_range: false,
        })
    };
    let w = World::start("background_fetch = false", plan).await;
    w.env.cri.pull(IMAGE).await.unwrap();
    let (code, out) = run_to_exit(
        &w.env,
        "corrupt",
        IMAGE,
        &[
            "sh",
            "-c",
            "cat /app/hello; cat /data/big-3 > /dev/null; echo rc=$?",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with(HELLO), "{out}");
    assert!(
        // stdout and stderr are separate streams: their lines may come in either order.
        out.contains("Input/output error") && out.contains("rc=1\n"),
        "{out}"
    );
    let log = w.env.berth.log();
    assert!(
        log.lines().any(|l| l.contains("lazy read failed")
            && l.contains("data/big-3")
            && l.contains(&w.layer.digest)),
        "berth did not log the failed read with its layer and file"
    );
    w.remove_image().await;
    assert!(w.fuse_mounts().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_without_byte_ranges_gets_a_normal_pull() {
    let plan = |_: &Converted| {
        Some(Plan {
            path_contains: "/blobs/".into(),
            fault: Fault::FlipAt(0),
            times: 0,
            strip_range: true,
        })
    };
    let w = World::start("", plan).await;
    w.env.cri.pull(IMAGE).await.unwrap();
    assert!(w.info().await.get("lazy").is_none());
    assert!(w.fuse_mounts().is_empty());
    assert!(
        w.env.berth.log().contains("pulling it whole"),
        "the fallback is not logged"
    );
    let (code, out) = run_to_exit(&w.env, "whole", IMAGE, &[]).await;
    assert_eq!((code, out.as_str()), (0, HELLO));
    w.env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_container_keeps_reading_its_lazy_layer_across_a_berth_crash() {
    let mut w = World::start("background_fetch = false", |_| None).await;
    w.env.cri.pull(IMAGE).await.unwrap();
    let pcfg = berth_e2e::pods::pod_config("survivor");
    let pod = w.env.run(pcfg.clone()).await.unwrap();
    let id = create(
        &w.env,
        &pod,
        &pcfg,
        ctr_of(IMAGE, "main", &["sh", "-c", "cat /app/hello; sleep 3600"]),
    )
    .await
    .unwrap();
    start(&w.env, &id).await;
    let holder = w.env.berth.state.join("lazy-holder.sock");
    assert_eq!(berth_e2e::berth::fuse_holders(&holder).len(), 1);

    w.env.berth.kill();
    w.env.berth.restart().unwrap();
    w.env.reconnect().await.unwrap();

    // A file no one read before the crash: its chunks come through the connection the
    // holder kept, served by the new berth. No second mount.
    assert_reads_big(&w.env, &id, 6).await;
    assert_eq!(w.fuse_mounts().len(), 1, "{:?}", w.fuse_mounts());
    assert!(
        w.env
            .berth
            .log()
            .contains("lazily pulled layer served again")
    );

    // The container's first read may have been in flight when berth died: the new berth
    // answers it too (the kernel resends it), so nothing waits for good and the pod stops.
    w.env.stop(&pod).await.unwrap();
    w.env.remove(&pod).await.unwrap();
    w.remove_image().await;
    assert!(w.fuse_mounts().is_empty(), "{:?}", w.fuse_mounts());
    // The holder lets go of the connection and, holding nothing, exits.
    let gone = wait_until(Duration::from_secs(15), || {
        berth_e2e::berth::fuse_holders(&holder).is_empty()
    });
    assert!(gone, "the FUSE holder is still there");
    w.env.assert_clean();
}

//! Crash safety: berth killed at random moments inside every mutating call, shims killed or
//! stopped under it. After each fault berth must serve again at once, and once the kubelet's
//! clean-up ran nothing may be left: no record, lease, veth, namespace, mount, shim, runtime
//! container, cgroup, bundle or writable snapshot.
//!
//! The times asserted here have a wide margin: these tests run a debug build, two at a time,
//! on two cores. The goals themselves (serving within 1 s, a dead shim noticed within 2 s)
//! are measured on a release build by `bench-faults`.

use std::time::{Duration, Instant};

use berth_cri_api::v1 as cri;
use berth_e2e::apps::{create, ctr, env_with, start, status};
use berth_e2e::faults::{self, CgroupParent, Rng, Rpc};
use berth_e2e::wait_until;

/// How soon a restarted berth must answer here (see the module's note).
const SERVE_BOUND: Duration = Duration::from_secs(3);
/// How soon a dead shim's containers must be reported exited here.
const DEAD_SHIM_BOUND: Duration = Duration::from_secs(5);

/// A storm of `count` kills inside calls drawn from `rpcs`; every fault must leave nothing
/// and be followed by a berth that serves within a second.
async fn storm(rpcs: &[Rpc], count: usize, what: &str) {
    let mut env = env_with("").await;
    faults::push_big(&env).await.unwrap();
    let cgroups = CgroupParent::new(0);
    let mut rng = Rng::from_env(what);
    let outcomes = faults::storm(&mut env, rpcs, count, &mut rng, &cgroups, true)
        .await
        .unwrap();
    let mut failed = Vec::new();
    for o in &outcomes {
        if !o.leaks.is_empty() || o.serve > SERVE_BOUND {
            failed.push(format!(
                "{:?} killed after {:?}: served after {:?}, leaks {:?}",
                o.rpc, o.after, o.serve, o.leaks
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    assert_eq!(outcomes.len(), count);
}

#[tokio::test(flavor = "multi_thread")]
async fn kills_inside_pod_calls_leak_nothing() {
    storm(
        &[
            Rpc::RunPodSandbox,
            Rpc::StopPodSandbox,
            Rpc::RemovePodSandbox,
        ],
        12,
        "pod calls",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kills_inside_container_calls_leak_nothing() {
    storm(
        &[
            Rpc::CreateContainer,
            Rpc::StartContainer,
            Rpc::StopContainer,
            Rpc::RemoveContainer,
        ],
        12,
        "container calls",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kills_inside_image_calls_leak_nothing() {
    let mut env = env_with("").await;
    faults::push_big(&env).await.unwrap();
    let before = faults::image_data(&env);
    let cgroups = CgroupParent::new(3);
    let mut rng = Rng::from_env("image calls");
    for n in 0..6 {
        let rpc = [Rpc::PullImage, Rpc::RemoveImage][rng.below(2) as usize];
        let after = Duration::from_millis(rng.below(600));
        let o = faults::kill_inside(&mut env, rpc, after, &cgroups, n)
            .await
            .unwrap();
        assert!(o.serve < SERVE_BOUND, "{o:?}");
        assert!(o.leaks.is_empty(), "{o:?}");
        // Whatever the kill cut short, once the image is removed its blobs and layers are
        // gone, and what it shares with other images stays.
        faults::remove_big(&env).await;
        assert_eq!(faults::image_data(&env), before, "after {o:?}");
    }
}

/// The pid of the one shim daemon serving pods of `env`.
fn pod_shim(env: &berth_e2e::PodEnv) -> u32 {
    let pids = env.berth.shim_pids();
    assert_eq!(pids.len(), 1, "{pids:?}");
    pids[0]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shim_that_dies_is_noticed_at_once() {
    let env = env_with("").await;
    let cgroups = CgroupParent::new(1);
    let pcfg = faults::pod("dead-shim", &cgroups.0);
    let pod = env.run(pcfg.clone()).await.unwrap();
    let id = create(&env, &pod, &pcfg, ctr("c", &["sleep", "3600"]))
        .await
        .unwrap();
    start(&env, &id).await;
    let shim = pod_shim(&env);

    berth_e2e::signal(shim, libc::SIGKILL);
    let t0 = Instant::now();
    let noticed = wait_until(DEAD_SHIM_BOUND * 2, || {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                let s = status(&env, &id).await;
                s.state == cri::ContainerState::ContainerExited as i32
            })
        })
    });
    let took = t0.elapsed();
    assert!(noticed, "the container still runs after its shim died");
    assert!(took < DEAD_SHIM_BOUND, "noticed after {took:?}");
    let s = status(&env, &id).await;
    assert_eq!(s.reason, "ShimDied", "{s:?}");
    assert_eq!(s.exit_code, 255);
    assert_eq!(
        env.status(&pod).await.unwrap().0.state,
        cri::PodSandboxState::SandboxNotready as i32
    );
    // What runc ran for the pod is gone with its shim (before its state said so): no process
    // is left in its cgroups.
    let procs: Vec<String> = cgroups
        .children()
        .iter()
        .flat_map(|c| {
            std::fs::read_to_string(c.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(procs.is_empty(), "processes left: {procs:?}");

    faults::remove_everything(&env).await;
    let leaks = faults::leaks(&env, &cgroups).await;
    assert!(leaks.is_empty(), "{leaks:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn berth_serves_at_once_whatever_its_shims_do() {
    let mut env = env_with("").await;
    let cgroups = CgroupParent::new(2);
    let a = env.run(faults::pod("a", &cgroups.0)).await.unwrap();
    let stopped_shim = pod_shim(&env);
    let b = env.run(faults::pod("b", &cgroups.0)).await.unwrap();
    // a's shim is stopped: it accepts connections and never answers.
    berth_e2e::signal(stopped_shim, libc::SIGSTOP);

    env.berth.kill();
    let serve = env.berth.spawn_only().unwrap();
    assert!(serve < SERVE_BOUND, "served after {serve:?}");
    env.reconnect().await.unwrap();
    // Until reconciled, pods are listed as their records say.
    let listed = env.list(None).await;
    assert_eq!(listed.len(), 2);

    env.berth.wait_recovered().unwrap();
    // The shim that did not answer was killed; its pod is NotReady, the other Ready.
    assert_eq!(
        env.status(&a).await.unwrap().0.state,
        cri::PodSandboxState::SandboxNotready as i32
    );
    assert_eq!(
        env.status(&b).await.unwrap().0.state,
        cri::PodSandboxState::SandboxReady as i32
    );
    assert!(
        berth_e2e::dead(stopped_shim),
        "the shim that did not answer is still there"
    );
    faults::remove_everything(&env).await;
    let leaks = faults::leaks(&env, &cgroups).await;
    assert!(leaks.is_empty(), "{leaks:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_fails_calls_and_berth_works_again_once_there_is_space() {
    let env = berth_e2e::PodEnv::start_small_root(48).await.unwrap();
    let a = env
        .run(berth_e2e::pods::pod_config("before"))
        .await
        .unwrap();
    // Fill berth's root.
    let filler = env.berth.root.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 1 << 20];
        while f.write_all(&block).is_ok() {}
    }
    // Calls that write fail, with a message, and nothing is half made; reads still answer.
    for i in 0..3 {
        let e = env
            .run(berth_e2e::pods::pod_config(&format!("full-{i}")))
            .await
            .unwrap_err();
        // A local write failed: Internal, with the store's or the file's own message.
        assert_eq!(e.code(), tonic::Code::Internal, "{e:?}");
        assert!(e.message().contains("No space left on device"), "{e:?}");
        // Said once: no cause printed twice.
        assert_eq!(e.message().matches("No space left").count(), 1, "{e:?}");
    }
    // The pod made before is as it was. (A pod whose rollback could not write its record's
    // removal is kept NotReady for the kubelet to remove, as after any failed rollback.)
    assert_eq!(
        env.status(&a).await.unwrap().0.state,
        cri::PodSandboxState::SandboxReady as i32
    );
    // Space is back: berth works again without a restart.
    std::fs::remove_file(&filler).unwrap();
    let b = env.run(berth_e2e::pods::pod_config("after")).await.unwrap();
    assert_eq!(
        env.status(&b).await.unwrap().0.state,
        cri::PodSandboxState::SandboxReady as i32
    );
    assert!(env.berth.pid().is_some());
    faults::remove_everything(&env).await;
    assert!(env.list(None).await.is_empty());
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cni_plugin_that_hangs_or_crashes_leaks_nothing() {
    // After the bridge (which leases an IP and makes a veth): a plugin that, by the content
    // of a mode file, hangs on ADD or dies by SIGKILL in it.
    let net =
        berth_e2e::TestNet::with_plugins(&[serde_json::json!({"type": "e2e-fault"})]).unwrap();
    let mode = net.dir().join("mode");
    net.plugin_script(
        "e2e-fault",
        &format!(
            "#!/bin/sh\ncat >/dev/null\nif [ \"$CNI_COMMAND\" = ADD ]; then\n  case $(cat {}) in\n    hang) exec sleep 4343 ;;\n    *) kill -9 $$ ;;\n  esac\nfi\nexit 0\n",
            mode.display()
        ),
    )
    .unwrap();
    let env = berth_e2e::PodEnv::start_with(net, "[cni]\nplugin_timeout_seconds = 2\n")
        .await
        .unwrap();
    for m in ["hang", "crash"] {
        std::fs::write(&mode, m).unwrap();
        let t0 = Instant::now();
        let e = env
            .run(berth_e2e::pods::pod_config(&format!("cni-{m}")))
            .await
            .unwrap_err();
        assert!(e.message().contains("e2e-fault"), "{m}: {e:?}");
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{m}: {:?}",
            t0.elapsed()
        );
        // The hung plugin was killed; the pod was rolled back: no lease, veth or netns.
        let left = berth_e2e::processes(&["sleep", "4343"]);
        assert!(left.is_empty(), "{m}: plugin left running: {left:?}");
        assert!(env.list(None).await.is_empty(), "{m}");
        env.assert_clean();
    }
}

/// Entries of `dir` (0 when it does not exist).
fn count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

/// A registry that resets connections in the middle of a layer or sends corrupt bytes: the
/// pull resumes where a broken download stopped (with a `Range` request, or by reading past
/// what it has when the host ignores ranges), gives up on a host that brings nothing, and
/// never commits a byte it did not verify. Nothing is left in the content store's ingest
/// area or among the snapshots after a failed pull, and the same pull works once the
/// registry behaves.
#[tokio::test(flavor = "multi_thread")]
async fn a_registry_that_resets_or_corrupts_costs_a_retry_not_a_bad_layer() {
    use berth_e2e::proxy::{Fault, FaultyProxy, Plan};
    use berth_e2e::{ImageBuilder, Layer, image::noise, pods::mirror_hosts};
    use std::sync::atomic::Ordering::Relaxed;

    let env = env_with("").await;
    let mut layers = Vec::new();
    for (i, name) in ["resumed", "unranged", "stalled", "corrupt"]
        .iter()
        .enumerate()
    {
        let pushed = ImageBuilder::new(vec![
            Layer::new().file("data", noise(12 << 20, 100 + i as u64)),
        ])
        .cmd(&["/data"])
        .push(&env.registry, &format!("berth-e2e/{name}"), Some("1"))
        .await
        .unwrap();
        layers.push(pushed.layers[0].clone());
    }
    let flaky = |name: &str, layer: &str, fault: Fault, times: usize, strip_range: bool| {
        let plan = Plan {
            path_contains: format!("/blobs/{layer}"),
            fault,
            times,
            strip_range,
        };
        let proxy = FaultyProxy::start(&env.registry.addr, plan).unwrap();
        let host = format!("{name}.invalid");
        env.berth
            .hosts_toml(&host, &mirror_hosts(&host, &proxy.addr))
            .unwrap();
        (proxy, format!("{host}/berth-e2e/{name}:1"))
    };
    let root = env.berth.root.clone();
    let leftovers = || {
        (
            count(&root.join("content/ingest")),
            std::fs::read_dir(root.join("snapshots"))
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("tmp"))
                .count(),
        )
    };

    // Every response for the layer is cut after 3 MiB: four resumptions by range.
    let (proxy, image) = flaky(
        "resumed",
        &layers[0],
        Fault::ResetAfter(3 << 20),
        usize::MAX,
        false,
    );
    env.cri.pull(&image).await.unwrap();
    let c = proxy.counts();
    assert!(c.harmed.load(Relaxed) >= 4, "{c:?}");
    assert_eq!(
        c.ranged.load(Relaxed),
        c.requests.load(Relaxed) - 1,
        "{c:?}"
    );

    // A host that ignores ranges: the resumed response starts over and what the pull has
    // already is skipped.
    let (proxy, image) = flaky("unranged", &layers[1], Fault::ResetAfter(5 << 20), 2, true);
    env.cri.pull(&image).await.unwrap();
    let c = proxy.counts();
    assert_eq!(c.harmed.load(Relaxed), 2, "{c:?}");
    assert_eq!(c.requests.load(Relaxed), 3, "{c:?}");

    // A host that cuts every response after a few hundred bytes: the pull gives up after
    // three resumptions without progress, at once, with Unavailable, and keeps no byte of
    // the layer. The verified manifest and config stay for the kubelet's retry (as in
    // containerd) and go with the next garbage collection.
    let before = faults::image_data(&env);
    let (proxy, image) = flaky(
        "stalled",
        &layers[2],
        Fault::ResetAfter(1000),
        usize::MAX,
        false,
    );
    let t0 = Instant::now();
    let err = env.cri.pull(&image).await.unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&layers[2]) && msg.contains("without progress"),
        "{msg}"
    );
    let status = err.downcast_ref::<tonic::Status>().expect("a gRPC status");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(proxy.counts().harmed.load(Relaxed), 4);
    assert_eq!(faults::image_data(&env), (before.0 + 2, before.1));
    assert_eq!(leftovers(), (0, 0));
    let before = faults::image_data(&env);

    // One corrupt byte in the layer: the pull fails with DataLoss naming the layer, nothing
    // is committed, and the next pull (the registry now behaves) gets the real layer.
    let (proxy, image) = flaky("corrupt", &layers[3], Fault::FlipAt(2 << 20), 1, false);
    let err = env.cri.pull(&image).await.unwrap_err();
    let status = err.downcast_ref::<tonic::Status>().expect("a gRPC status");
    assert_eq!(status.code(), tonic::Code::DataLoss, "{status:?}");
    assert!(status.message().contains(&layers[3]), "{status:?}");
    assert_eq!(proxy.counts().harmed.load(Relaxed), 1);
    assert_eq!(faults::image_data(&env), (before.0 + 2, before.1));
    assert_eq!(leftovers(), (0, 0));
    env.cri.pull(&image).await.unwrap();
    assert_eq!(faults::image_data(&env), (before.0 + 3, before.1 + 1));
}

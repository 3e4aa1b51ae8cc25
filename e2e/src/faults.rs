//! Fault injection against a real berth: SIGKILL at a random moment inside a mutating CRI
//! call, then a restart, the kubelet's clean-up (stop and remove every pod), and an audit of
//! everything a pod or container can leave behind. Used by the fault tests and by
//! `bench-faults`.
//!
//! "Random" is a seeded generator: a failing run prints its seed, and `BERTH_FAULT_SEED`
//! replays it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_cri_api::v1 as cri;

use crate::PodEnv;
use crate::apps::{create, ctr, start};
use crate::pods::pod_config;

/// A small deterministic generator (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from `BERTH_FAULT_SEED`, else from the clock; the seed is printed.
    pub fn from_env(what: &str) -> Self {
        let seed = std::env::var("BERTH_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        #[allow(clippy::print_stderr)]
        {
            eprintln!("{what}: BERTH_FAULT_SEED={seed}");
        }
        Rng(seed.max(1))
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The mutating calls a fault can land in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    /// RunPodSandbox.
    RunPodSandbox,
    /// StopPodSandbox of a pod with a running container.
    StopPodSandbox,
    /// RemovePodSandbox of a pod with a running container.
    RemovePodSandbox,
    /// CreateContainer.
    CreateContainer,
    /// StartContainer.
    StartContainer,
    /// StopContainer (the container ignores SIGTERM: the call waits out its timeout).
    StopContainer,
    /// RemoveContainer of a running container.
    RemoveContainer,
    /// PullImage of an image with a large layer.
    PullImage,
    /// RemoveImage.
    RemoveImage,
}

impl Rpc {
    /// Every kind.
    pub const ALL: [Rpc; 9] = [
        Rpc::RunPodSandbox,
        Rpc::StopPodSandbox,
        Rpc::RemovePodSandbox,
        Rpc::CreateContainer,
        Rpc::StartContainer,
        Rpc::StopContainer,
        Rpc::RemoveContainer,
        Rpc::PullImage,
        Rpc::RemoveImage,
    ];

    /// How long the call usually takes here (debug build, loaded machine) and a little more:
    /// the kill lands anywhere in `0..window`.
    fn window(self) -> Duration {
        Duration::from_millis(match self {
            Rpc::RunPodSandbox | Rpc::StopPodSandbox | Rpc::RemovePodSandbox => 300,
            Rpc::CreateContainer | Rpc::StartContainer | Rpc::RemoveContainer => 200,
            Rpc::StopContainer => 2500,
            Rpc::PullImage => 600,
            Rpc::RemoveImage => 60,
        })
    }
}

/// The image pulled and removed by image faults: one 24 MiB layer, so that a kill lands
/// inside the download.
pub const BIG: &str = "app.invalid/berth-e2e/big:1";

/// Pushes [`BIG`] to the env's registry (the app image's mirror serves it).
pub async fn push_big(env: &PodEnv) -> anyhow::Result<()> {
    crate::ImageBuilder::new(vec![
        crate::Layer::busybox()?,
        crate::Layer::new().file("big", crate::image::noise(24 << 20, 11)),
    ])
    .cmd(&["/bin/sleep", "3600"])
    .push(&env.registry, "berth-e2e/big", Some("1"))
    .await?;
    Ok(())
}

/// (blobs, snapshots) in berth's stores: after an image fault and the image's removal,
/// both must be back where they were before it.
pub fn image_data(env: &PodEnv) -> (usize, usize) {
    (
        names(&env.berth.root.join("content/blobs/sha256")).len(),
        names(&env.berth.root.join("snapshots")).len(),
    )
}

/// RemoveImage of [`BIG`] (present or not).
pub async fn remove_big(env: &PodEnv) {
    let _ = env
        .cri
        .image
        .clone()
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: BIG.into(),
                ..Default::default()
            }),
        })
        .await;
}

/// What one fault did.
#[derive(Debug)]
pub struct Outcome {
    /// The call it landed in.
    pub rpc: Rpc,
    /// How long after the call started berth was killed.
    pub after: Duration,
    /// From starting berth again to its first answer (ListPodSandbox).
    pub serve: Duration,
    /// From starting berth again to the end of its recovery.
    pub recovered: Duration,
    /// What the audit found left behind after the kubelet's clean-up.
    pub leaks: Vec<String>,
}

/// A pod config for fault tests: its cgroups under `parent`, so that the audit can see
/// every cgroup the test made (and only those).
pub fn pod(name: &str, parent: &str) -> cri::PodSandboxConfig {
    let mut p = pod_config(name);
    p.linux
        .as_mut()
        .expect("pod_config has linux")
        .cgroup_parent = parent.to_string();
    p
}

/// A cgroup parent of the test's own, removed (with whatever is under it) on drop.
pub struct CgroupParent(pub String);

impl CgroupParent {
    /// `/berth-e2e-<pid>-<n>-<random>`: tests of one process run side by side.
    pub fn new(n: u64) -> Self {
        let r: u32 = rand::random();
        CgroupParent(format!("/berth-e2e-{}-{n}-{r:08x}", std::process::id()))
    }

    /// Its directories on every hierarchy.
    pub fn dirs(&self) -> Vec<PathBuf> {
        hierarchies()
            .into_iter()
            .map(|h| h.join(self.0.trim_start_matches('/')))
            .filter(|d| d.exists())
            .collect()
    }

    /// The cgroups below it.
    pub fn children(&self) -> Vec<PathBuf> {
        self.dirs()
            .into_iter()
            .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect()
    }
}

impl Drop for CgroupParent {
    fn drop(&mut self) {
        for d in self.dirs() {
            for c in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if c.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir(c.path());
                }
            }
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn hierarchies() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut v = vec![root.to_path_buf()];
    v.extend(
        std::fs::read_dir(root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path()),
    );
    v
}

fn names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Everything a pod or container of `env` could leave behind, described; empty when
/// nothing is. Records, namespaces, bundles, mounts, shims (a spare apart), runtime state,
/// cgroups under `cgroups`, writable snapshots, IP leases, veths.
pub async fn leaks(env: &PodEnv, cgroups: &CgroupParent) -> Vec<String> {
    let mut out = Vec::new();
    let mut rt = env.cri.runtime.clone();
    if let Ok(r) = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
    {
        let items = r.into_inner().items;
        if !items.is_empty() {
            out.push(format!(
                "pod records: {:?}",
                items.iter().map(|p| &p.id).collect::<Vec<_>>()
            ));
        }
    }
    if let Ok(r) = rt
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
    {
        let items = r.into_inner().containers;
        if !items.is_empty() {
            out.push(format!(
                "container records: {:?}",
                items.iter().map(|c| &c.id).collect::<Vec<_>>()
            ));
        }
    }
    let state = &env.berth.state;
    for (what, dir) in [
        ("netns", state.join("netns")),
        ("pod dirs", state.join("sandboxes")),
        ("container dirs", state.join("containers")),
    ] {
        let n = names(&dir);
        if !n.is_empty() {
            out.push(format!("{what}: {n:?}"));
        }
    }
    for handler in names(&state.join("runtime")) {
        let dir = state.join("runtime").join(&handler).join("k8s.io");
        let n: Vec<String> = names(&dir).into_iter().filter(|n| n.len() == 64).collect();
        if !n.is_empty() {
            out.push(format!("runtime state ({handler}): {n:?}"));
        }
    }
    let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|p| {
            let p = Path::new(p);
            p.starts_with(env.berth.dir()) && p != state.join("netns") && p != state
        })
        .collect();
    if !mounts.is_empty() {
        out.push(format!("mounts: {mounts:?}"));
    }
    // Shims: the pods' are gone with them; at most the spare is left.
    let ok = crate::wait_until(Duration::from_secs(5), || env.berth.shim_pids().is_empty());
    if !ok {
        out.push(format!("shims: {:?}", env.berth.shim_pids()));
    }
    let spares = env.berth.spare_shim_pids();
    if spares.len() > 1 {
        out.push(format!("spare shims: {spares:?}"));
    }
    let cg = cgroups.children();
    if !cg.is_empty() {
        out.push(format!("cgroups: {cg:?}"));
    }
    let snapshots = env.berth.root.join("snapshots");
    let active: Vec<String> = names(&snapshots)
        .into_iter()
        .filter(|n| snapshots.join(n).join("work").exists())
        .collect();
    if !active.is_empty() {
        out.push(format!("writable snapshots: {active:?}"));
    }
    // Unpacks and downloads that were cut short.
    let unfinished: Vec<String> = names(&snapshots)
        .into_iter()
        .filter(|n| n.parse::<u64>().is_err())
        .collect();
    if !unfinished.is_empty() {
        out.push(format!("unfinished snapshots: {unfinished:?}"));
    }
    let ingest = names(&env.berth.root.join("content/ingest"));
    if !ingest.is_empty() {
        out.push(format!("partial downloads: {ingest:?}"));
    }
    let leases = env.net.leases();
    if !leases.is_empty() {
        out.push(format!("IP leases: {leases:?}"));
    }
    let veths = env.net.veths();
    if !veths.is_empty() {
        out.push(format!("veths: {veths:?}"));
    }
    out
}

/// The kubelet's clean-up: every pod stopped and removed (tried a few times: a call can
/// fail while berth finishes what the crash left).
pub async fn remove_everything(env: &PodEnv) {
    crate::cleanup::remove_all_pods(&mut env.cri.runtime.clone()).await;
}

async fn running_container(
    env: &PodEnv,
    pod_id: &str,
    pcfg: &cri::PodSandboxConfig,
) -> anyhow::Result<String> {
    let id = create(env, pod_id, pcfg, ctr("c", &["sleep", "3600"])).await?;
    start(env, &id).await;
    Ok(id)
}

/// Sets up what `rpc` needs, starts it, kills berth `after` into it, starts berth again
/// and measures how soon it serves, lets it recover, removes everything as the kubelet
/// would, and audits. `env` must have the app image pulled and [`BIG`] pushed.
pub async fn kill_inside(
    env: &mut PodEnv,
    rpc: Rpc,
    after: Duration,
    cgroups: &CgroupParent,
    n: u64,
) -> anyhow::Result<Outcome> {
    let name = format!("f{n}");
    let pcfg = pod(&name, &cgroups.0);
    let mut rt = env.cri.runtime.clone();
    let mut img = env.cri.image.clone();
    // The state the call needs.
    let (pod_id, ctr_id) = match rpc {
        Rpc::RunPodSandbox | Rpc::PullImage | Rpc::RemoveImage => (String::new(), String::new()),
        Rpc::CreateContainer => (env.run(pcfg.clone()).await?, String::new()),
        Rpc::StartContainer => {
            let p = env.run(pcfg.clone()).await?;
            let c = create(env, &p, &pcfg, ctr("c", &["sleep", "3600"])).await?;
            (p, c)
        }
        Rpc::StopPodSandbox | Rpc::RemovePodSandbox | Rpc::StopContainer | Rpc::RemoveContainer => {
            let p = env.run(pcfg.clone()).await?;
            let c = running_container(env, &p, &pcfg).await?;
            (p, c)
        }
    };
    match rpc {
        Rpc::PullImage => {
            let _ = img
                .remove_image(cri::RemoveImageRequest {
                    image: Some(cri::ImageSpec {
                        image: BIG.into(),
                        ..Default::default()
                    }),
                })
                .await;
        }
        Rpc::RemoveImage => {
            env.cri.pull(BIG).await?;
        }
        _ => {}
    }
    let image = |s: &str| {
        Some(cri::ImageSpec {
            image: s.into(),
            ..Default::default()
        })
    };
    let call = {
        let (pcfg, pod_id, ctr_id) = (pcfg.clone(), pod_id.clone(), ctr_id.clone());
        async move {
            let r: Result<(), tonic::Status> = match rpc {
                Rpc::RunPodSandbox => rt
                    .run_pod_sandbox(cri::RunPodSandboxRequest {
                        config: Some(pcfg),
                        runtime_handler: String::new(),
                    })
                    .await
                    .map(|_| ()),
                Rpc::StopPodSandbox => rt
                    .stop_pod_sandbox(cri::StopPodSandboxRequest {
                        pod_sandbox_id: pod_id,
                    })
                    .await
                    .map(|_| ()),
                Rpc::RemovePodSandbox => rt
                    .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                        pod_sandbox_id: pod_id,
                    })
                    .await
                    .map(|_| ()),
                Rpc::CreateContainer => rt
                    .create_container(cri::CreateContainerRequest {
                        pod_sandbox_id: pod_id,
                        config: Some(ctr("c", &["sleep", "3600"])),
                        sandbox_config: Some(pcfg),
                    })
                    .await
                    .map(|_| ()),
                Rpc::StartContainer => rt
                    .start_container(cri::StartContainerRequest {
                        container_id: ctr_id,
                    })
                    .await
                    .map(|_| ()),
                Rpc::StopContainer => rt
                    .stop_container(cri::StopContainerRequest {
                        container_id: ctr_id,
                        timeout: 2,
                    })
                    .await
                    .map(|_| ()),
                Rpc::RemoveContainer => rt
                    .remove_container(cri::RemoveContainerRequest {
                        container_id: ctr_id,
                    })
                    .await
                    .map(|_| ()),
                Rpc::PullImage => img
                    .pull_image(cri::PullImageRequest {
                        image: image(BIG),
                        ..Default::default()
                    })
                    .await
                    .map(|_| ()),
                Rpc::RemoveImage => img
                    .remove_image(cri::RemoveImageRequest { image: image(BIG) })
                    .await
                    .map(|_| ()),
            };
            r
        }
    };
    let task = tokio::spawn(call);
    tokio::time::sleep(after).await;
    env.berth.kill();
    let _ = task.await;

    let t0 = Instant::now();
    let serve = env.berth.spawn_only()?;
    env.reconnect().await?;
    env.berth.wait_recovered()?;
    let recovered = t0.elapsed();
    remove_everything(env).await;
    let leaks = leaks(env, cgroups).await;
    Ok(Outcome {
        rpc,
        after,
        serve,
        recovered,
        leaks,
    })
}

/// Runs `count` faults, each in a call drawn from `rpcs` at a random moment, and returns
/// their outcomes; with `stop_at_leak`, stops after the first fault that left something
/// (what later faults find would include it).
pub async fn storm(
    env: &mut PodEnv,
    rpcs: &[Rpc],
    count: usize,
    rng: &mut Rng,
    cgroups: &CgroupParent,
    stop_at_leak: bool,
) -> anyhow::Result<Vec<Outcome>> {
    let mut out = Vec::new();
    for n in 0..count {
        let rpc = rpcs[rng.below(rpcs.len() as u64) as usize];
        let after = Duration::from_millis(rng.below(rpc.window().as_millis() as u64 + 1));
        let o = kill_inside(env, rpc, after, cgroups, n as u64).await?;
        let leaked = !o.leaks.is_empty();
        out.push(o);
        if leaked && stop_at_leak {
            break;
        }
    }
    Ok(out)
}

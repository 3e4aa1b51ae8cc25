//! Everything a pod test needs: a registry holding a pause image built here, a private CNI
//! network, and a berth configured for both. Dropped in that order's reverse: berth first (its
//! drop stops and removes every pod over CRI, so CNI DEL runs), then the network, then the
//! registry.

use std::collections::HashMap;

use berth_cri_api::v1 as cri;

use crate::{Berth, Cri, ImageBuilder, Layer, Registry, TestNet};

/// The sandbox image reference berth is configured with. Its registry host does not exist: a
/// hosts.toml mirrors it to the test registry, as a node mirrors registry.k8s.io.
pub const PAUSE_IMAGE: &str = "pause.invalid/berth-e2e/pause:1";

/// A hosts.toml for `host` that pulls and resolves through the test registry at `addr`.
pub fn mirror_hosts(host: &str, addr: &impl std::fmt::Display) -> String {
    format!(
        "server = \"https://{host}\"\n[host.\"http://{addr}\"]\ncapabilities = [\"pull\", \"resolve\"]\n"
    )
}

/// berth, containerd 1.6 and (where `scripts/install-containerd.sh` installed it) containerd
/// 2.x side by side for the benchmarks: one registry with the pause image (and whatever the
/// caller pushes), one CNI network, every daemon pulling through the same mirror. Dropped
/// daemons first, then the network and the registry.
/// The handlers benchmarks compare, by shim and runtime: `runc` (containerd's runc shim
/// with runc), `crun` (berth's shim with crun) and `berth-runc` (berth's shim with runc).
pub const BENCH_HANDLERS: &str = r#"
[runtime.handlers.runc]
runtime_type = "io.containerd.runc.v2"
[runtime.handlers.crun]
runtime_type = "io.containerd.berth.v1"
options = { BinaryName = "crun" }
[runtime.handlers.berth-runc]
runtime_type = "io.containerd.berth.v1"
options = { BinaryName = "runc" }
"#;

pub struct SideBySide {
    /// berth (log level warn).
    pub berth: Berth,
    /// containerd 1.6, with its own root, state and socket under `work`.
    pub containerd: crate::containerd::Containerd,
    /// containerd 2.x, likewise, when installed.
    pub containerd2: Option<crate::containerd::Containerd>,
    /// The shared network.
    pub net: TestNet,
    /// The registry.
    pub registry: Registry,
    /// Scratch space under /var/tmp (containerd's directories, the caller's files).
    pub work: tempfile::TempDir,
}

impl SideBySide {
    /// Starts berth and containerd 1.6; `prefix` names the scratch directory.
    pub async fn start(prefix: &str) -> anyhow::Result<Self> {
        Self::start_daemons(prefix, false, "").await
    }

    /// As [`Self::start`], with containerd 2.x too when it is installed (benchmarks that
    /// report it as a second baseline; the others leave it off, so that an idle daemon does
    /// not weigh on what they measure).
    pub async fn start_with_containerd2(prefix: &str) -> anyhow::Result<Self> {
        Self::start_daemons(prefix, true, "").await
    }

    /// As [`Self::start_with_containerd2`], with `extra` in berth's config.
    pub async fn start_with_config(prefix: &str, extra: &str) -> anyhow::Result<Self> {
        Self::start_daemons(prefix, true, extra).await
    }

    async fn start_daemons(prefix: &str, with_v2: bool, extra: &str) -> anyhow::Result<Self> {
        let registry = Registry::start()?;
        pause_image()?
            .push(&registry, "berth-e2e/pause", Some("1"))
            .await?;
        let net = TestNet::new()?;
        let hosts = mirror_hosts("pause.invalid", &registry.addr);
        let berth = Berth::start_for_bench(&format!(
            "sandbox_image = \"{PAUSE_IMAGE}\"\n{extra}\n{}\n{BENCH_HANDLERS}",
            net.config_toml()
        ))?;
        berth.hosts_toml("pause.invalid", &hosts)?;
        let work = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/var/tmp")?;
        let certs = work.path().join("certs.d");
        std::fs::create_dir_all(certs.join("pause.invalid"))?;
        std::fs::write(certs.join("pause.invalid").join("hosts.toml"), &hosts)?;
        let containerd = crate::containerd::Containerd::start_with(
            &work.path().join("containerd"),
            &certs,
            PAUSE_IMAGE,
            &net.conf_dir,
        )?;
        let v2 = crate::containerd::Flavor::V2;
        let containerd2 = if with_v2 && v2.installed() {
            Some(crate::containerd::Containerd::start_flavor(
                v2,
                &work.path().join("containerd2"),
                &certs,
                PAUSE_IMAGE,
                &net.conf_dir,
            )?)
        } else {
            None
        };
        Ok(SideBySide {
            berth,
            containerd,
            containerd2,
            net,
            registry,
            work,
        })
    }
}

/// A berth ready to run pods.
pub struct PodEnv {
    /// The daemon.
    pub berth: Berth,
    /// Its CNI network.
    pub net: TestNet,
    /// The registry with the pause image.
    pub registry: Registry,
    /// CRI clients.
    pub cri: Cri,
    /// The sockets of the shims of the pods run through [`run`](Self::run): all must be
    /// gone once the pods are.
    shim_sockets: std::sync::Mutex<Vec<std::path::PathBuf>>,
}

/// A pause stand-in from Debian's static busybox: sleeps as uid 65535, as the real pause does.
pub fn pause_image() -> anyhow::Result<ImageBuilder> {
    Ok(ImageBuilder::new(vec![Layer::busybox()?])
        .cmd(&["/bin/sleep", "2147483647"])
        .user("65535:65535"))
}

impl PodEnv {
    /// A berth on a fresh network.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(TestNet::new()?, "").await
    }

    /// A berth on `net`, with `extra` appended to its config.
    pub async fn start_with(net: TestNet, extra: &str) -> anyhow::Result<Self> {
        Self::start_with_pause(net, extra, pause_image()?).await
    }

    /// A berth whose root is a tmpfs of `size_mib` MiB (for filling its disk).
    pub async fn start_small_root(size_mib: u64) -> anyhow::Result<Self> {
        Self::assemble(TestNet::new()?, "", pause_image()?, Some(size_mib)).await
    }

    /// A berth on `net` with `extra` in its config, whose sandbox image is `pause`.
    pub async fn start_with_pause(
        net: TestNet,
        extra: &str,
        pause: ImageBuilder,
    ) -> anyhow::Result<Self> {
        Self::assemble(net, extra, pause, None).await
    }

    /// The registry with `pause`, and a berth on `net` with `extra` in its config (its root
    /// a tmpfs of `root_mib` MiB, if given).
    async fn assemble(
        net: TestNet,
        extra: &str,
        pause: ImageBuilder,
        root_mib: Option<u64>,
    ) -> anyhow::Result<Self> {
        let registry = Registry::start()?;
        pause.push(&registry, "berth-e2e/pause", Some("1")).await?;
        // A `[cni]` table of the caller's gets the network's keys; else the network's own.
        let config = match extra.split_once("[cni]\n") {
            Some((before, after)) => format!(
                "sandbox_image = \"{PAUSE_IMAGE}\"\n{before}[cni]\n{}{after}",
                net.config_toml().trim_start_matches("[cni]\n")
            ),
            None => format!(
                "sandbox_image = \"{PAUSE_IMAGE}\"\n{extra}\n{}",
                net.config_toml()
            ),
        };
        let berth = match root_mib {
            Some(mib) => Berth::start_small_root(&config, mib)?,
            None => Berth::start_with_config(&config)?,
        };
        berth.hosts_toml(
            "pause.invalid",
            &mirror_hosts("pause.invalid", &registry.addr),
        )?;
        let cri = berth.cri().await?;
        Ok(PodEnv {
            berth,
            net,
            registry,
            cri,
            shim_sockets: Default::default(),
        })
    }

    /// RunPodSandbox.
    pub async fn run(&self, config: cri::PodSandboxConfig) -> Result<String, tonic::Status> {
        self.run_with_handler(config, "").await
    }

    /// RunPodSandbox with a RuntimeClass handler.
    pub async fn run_with_handler(
        &self,
        config: cri::PodSandboxConfig,
        handler: &str,
    ) -> Result<String, tonic::Status> {
        let mut c = self.cri.runtime.clone();
        let id = c
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: handler.into(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id;
        let address = self
            .berth
            .state
            .join("sandboxes")
            .join(&id)
            .join("bundle/address");
        if let Ok(a) = std::fs::read_to_string(address) {
            self.shim_sockets
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(a.trim().trim_start_matches("unix://").into());
        }
        Ok(id)
    }

    /// StopPodSandbox.
    pub async fn stop(&self, id: &str) -> Result<(), tonic::Status> {
        let mut c = self.cri.runtime.clone();
        c.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .map(|_| ())
    }

    /// RemovePodSandbox.
    pub async fn remove(&self, id: &str) -> Result<(), tonic::Status> {
        let mut c = self.cri.runtime.clone();
        c.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .map(|_| ())
    }

    /// PodSandboxStatus (verbose): the status and the info map.
    pub async fn status(
        &self,
        id: &str,
    ) -> Result<(cri::PodSandboxStatus, HashMap<String, String>), tonic::Status> {
        let mut c = self.cri.runtime.clone();
        let r = c
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: true,
            })
            .await?
            .into_inner();
        Ok((r.status.unwrap_or_default(), r.info))
    }

    /// The pause process's pid, from the verbose status.
    pub async fn pid(&self, id: &str) -> anyhow::Result<u32> {
        let (_, info) = self.status(id).await?;
        let v: serde_json::Value = serde_json::from_str(info.get("info").map_or("{}", |s| s))?;
        v["pid"]
            .as_u64()
            .map(|p| p as u32)
            .ok_or_else(|| anyhow::anyhow!("no pid in verbose status: {v}"))
    }

    /// ListPodSandbox.
    pub async fn list(&self, filter: Option<cri::PodSandboxFilter>) -> Vec<cri::PodSandbox> {
        let mut c = self.cri.runtime.clone();
        c.list_pod_sandbox(cri::ListPodSandboxRequest { filter })
            .await
            .expect("ListPodSandbox")
            .into_inner()
            .items
    }

    /// Reconnects the CRI clients (after a berth restart).
    pub async fn reconnect(&mut self) -> anyhow::Result<()> {
        self.cri = self.berth.cri().await?;
        Ok(())
    }

    /// Asserts that nothing of any pod is left: no netns, no sandbox dirs, no mounts under the
    /// state dir, no shims, no leases, no veths.
    pub fn assert_clean(&self) {
        let state = &self.berth.state;
        let netns: Vec<_> = std::fs::read_dir(state.join("netns"))
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(netns.is_empty(), "netns left: {netns:?}");
        let dirs: Vec<_> = std::fs::read_dir(state.join("sandboxes"))
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(dirs.is_empty(), "sandbox dirs left: {dirs:?}");
        let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
            .filter(|p| {
                let p = std::path::Path::new(p);
                p.starts_with(state) && p != state.join("netns")
            })
            .collect();
        assert!(mounts.is_empty(), "mounts left: {mounts:?}");
        let ok = crate::wait_until(std::time::Duration::from_secs(5), || {
            self.berth.shim_pids().is_empty()
        });
        assert!(ok, "shims left: {:?}", self.berth.shim_pids());
        let sockets = self
            .shim_sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let left = || -> Vec<_> { sockets.iter().filter(|s| s.exists()).collect() };
        let ok = crate::wait_until(std::time::Duration::from_secs(6), || left().is_empty());
        assert!(ok, "shim sockets left: {:?}", left());
        assert!(
            self.net.leases().is_empty(),
            "leases left: {:?}",
            self.net.leases()
        );
        assert!(
            self.net.veths().is_empty(),
            "veths left: {:?}",
            self.net.veths()
        );
    }
}

/// A pod config with the given name (uid derived from it) and nothing else.
pub fn pod_config(name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            namespace: "e2e".into(),
            uid: format!("uid-{name}"),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: String::new(),
        linux: Some(cri::LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

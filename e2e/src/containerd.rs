//! A private containerd for same-run baselines in benchmarks: Debian's 1.6, or the 2.x that
//! `scripts/install-containerd.sh` builds (what nodes run today). Its own config, root, state
//! and socket, so it can never touch a system containerd.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

/// Which containerd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Debian 12's containerd 1.6 (`containerd` on PATH, config version 2).
    Debian16,
    /// containerd 2.x from `scripts/install-containerd.sh` (config version 3), with its own
    /// runc shim first on its PATH.
    V2,
}

/// The containerd 2.x version the project's script builds.
pub const V2_VERSION: &str = "v2.4.2";

impl Flavor {
    /// How the benchmarks name it.
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Debian16 => "containerd 1.6",
            Flavor::V2 => "containerd 2.4",
        }
    }

    /// The directory holding containerd 2.x and its shim: `$BERTH_CONTAINERD2_DIR`, else the
    /// install script's cache.
    pub fn v2_dir() -> PathBuf {
        std::env::var_os("BERTH_CONTAINERD2_DIR").map_or_else(
            || crate::tools::cache().join(format!("containerd-{V2_VERSION}")),
            PathBuf::from,
        )
    }

    /// Whether this flavor is installed here.
    pub fn installed(self) -> bool {
        match self {
            Flavor::Debian16 => true,
            Flavor::V2 => Self::v2_dir().join("containerd").exists(),
        }
    }

    fn command(self) -> Command {
        match self {
            Flavor::Debian16 => Command::new("containerd"),
            Flavor::V2 => {
                let dir = Self::v2_dir();
                let mut c = Command::new(dir.join("containerd"));
                let path = std::env::var("PATH").unwrap_or_default();
                c.env("PATH", format!("{}:{path}", dir.display()));
                c
            }
        }
    }
}

/// A running containerd; stopped and its directory removed on drop.
pub struct Containerd {
    child: Option<Child>,
    dir: PathBuf,
    flavor: Flavor,
    /// Its gRPC socket (CRI is served there).
    pub socket: PathBuf,
}

impl Containerd {
    /// Starts containerd under `dir` with `certs_d` as its registry config_path.
    pub fn start(dir: &Path, certs_d: &Path) -> anyhow::Result<Self> {
        Self::start_with(dir, certs_d, "registry.k8s.io/pause:3.9", &dir.join("cni"))
    }

    /// As [`Self::start`], with a sandbox image and a CNI conf dir.
    pub fn start_with(
        dir: &Path,
        certs_d: &Path,
        sandbox_image: &str,
        cni_conf_dir: &Path,
    ) -> anyhow::Result<Self> {
        Self::start_flavor(Flavor::Debian16, dir, certs_d, sandbox_image, cni_conf_dir)
    }

    /// As [`Self::start_with`], for either containerd.
    pub fn start_flavor(
        flavor: Flavor,
        dir: &Path,
        certs_d: &Path,
        sandbox_image: &str,
        cni_conf_dir: &Path,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("containerd.sock");
        // What both versions share: paths, sockets, quiet logs, no metrics or tracing.
        let (version, aufs) = match flavor {
            Flavor::V2 => (3, ""),
            Flavor::Debian16 => (2, "\"io.containerd.snapshotter.v1.aufs\", "),
        };
        let common = format!(
            r#"version = {version}
root = "{root}"
state = "{state}"
disabled_plugins = [{aufs}"io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
  level = "warn"
[metrics]
  address = ""
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{dir}/opt"
"#,
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = socket.display(),
            dir = dir.display(),
        );
        // The CRI plugin: one table in 1.6, split into images and runtime in 2.x.
        let cri = if flavor == Flavor::V2 {
            format!(
                r#"  [plugins."io.containerd.cri.v1.images"]
    snapshotter = "overlayfs"
    [plugins."io.containerd.cri.v1.images".pinned_images]
      sandbox = "{sandbox_image}"
    [plugins."io.containerd.cri.v1.images".registry]
      config_path = "{certs}"
  [plugins."io.containerd.cri.v1.runtime"]
    restrict_oom_score_adj = true
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    # What node CI configures for the node e2e suite's RuntimeClass specs.
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.test-handler]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.cri.v1.runtime".cni]
      bin_dirs = ["/usr/lib/cni"]
      conf_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri"]
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
"#,
                certs = certs_d.display(),
                cni = cni_conf_dir.display(),
            )
        } else {
            format!(
                r#"  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{sandbox_image}"
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    restrict_oom_score_adj = true
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "{cni}"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "{certs}"
"#,
                certs = certs_d.display(),
                cni = cni_conf_dir.display(),
            )
        };
        let config = common + &cri;
        let cfg = dir.join("config.toml");
        std::fs::write(&cfg, config)?;
        let log = std::fs::File::create(dir.join("containerd.log"))?;
        // Its state on a tmpfs, as `/run/containerd` is on a node: mounted last, so that only
        // a failed spawn (below) or drop has it to unmount.
        if crate::bench_state_on_tmpfs() {
            crate::mount_tmpfs(&dir.join("state"))?;
        }
        let child = match flavor
            .command()
            .arg("--config")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                crate::unmount_under(dir);
                return Err(e).context("start containerd (apt-get install containerd)");
            }
        };
        let mut c = Containerd {
            child: Some(child),
            dir: dir.to_path_buf(),
            flavor,
            socket,
        };
        let sock = c.socket.clone();
        if !crate::wait_until(Duration::from_secs(30), || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        }) {
            c.stop();
            bail!(
                "containerd did not come up; see {}",
                dir.join("containerd.log").display()
            );
        }
        Ok(c)
    }

    /// CRI clients on containerd's socket.
    pub async fn cri(&self) -> anyhow::Result<crate::Cri> {
        crate::berth::connect(&self.socket).await
    }

    /// The daemon's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// RSS of the daemon in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        self.child.as_ref().and_then(|c| crate::rss_kib(c.id()))
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts containerd again on the same config; returns how long it took until its CRI
    /// answered a ListPodSandbox.
    pub async fn restart(&mut self) -> anyhow::Result<Duration> {
        let t0 = std::time::Instant::now();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("containerd.log"))?;
        let child = self
            .flavor
            .command()
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start containerd again")?;
        self.child = Some(child);
        for _ in 0..6000 {
            if let Ok(c) = self.cri().await {
                let mut rt = c.runtime.clone();
                if rt
                    .list_pod_sandbox(berth_cri_api::v1::ListPodSandboxRequest { filter: None })
                    .await
                    .is_ok()
                {
                    return Ok(t0.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        bail!("containerd did not serve within 30 s after a restart")
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            crate::signal(c.id(), libc::SIGTERM);
            let stopped = crate::wait_until(Duration::from_secs(10), || {
                matches!(c.try_wait(), Ok(Some(_)))
            });
            if !stopped {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

impl Containerd {
    /// Stops and removes every pod over CRI, as the kubelet would, so that CNI DEL runs
    /// (the pods' network namespaces, leases and veths go) before containerd stops.
    pub fn remove_all_pods(&mut self) {
        if self
            .child
            .as_mut()
            .is_none_or(|c| !matches!(c.try_wait(), Ok(None)))
        {
            return;
        }
        let socket = self.socket.clone();
        let _ = crate::berth::on_own_runtime(async move {
            let mut cri = crate::berth::connect(&socket).await.ok()?;
            tokio::time::timeout(
                Duration::from_secs(60),
                crate::cleanup::remove_all_pods(&mut cri.runtime),
            )
            .await
            .ok()
        });
    }

    /// The shims this containerd runs (each names this daemon's socket as its `-address`).
    pub fn shim_pids(&self) -> Vec<u32> {
        self.leftover_shims()
    }

    /// The shims this containerd started that outlive it (a SIGKILLed containerd, or pods
    /// its clean-up did not reach): each names this daemon's socket as its `-address`.
    fn leftover_shims(&self) -> Vec<u32> {
        let sock = self.dir.join("containerd.sock");
        let sock = sock.to_string_lossy();
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return vec![];
        };
        rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let Ok(c) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                    return false;
                };
                let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                args.first()
                    .is_some_and(|a| a.ends_with(b"containerd-shim-runc-v2"))
                    && args
                        .windows(2)
                        .any(|w| w[0] == b"-address" && w[1] == sock.as_bytes())
            })
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.remove_all_pods();
        self.stop();
        for pid in self.leftover_shims() {
            crate::signal(pid, libc::SIGKILL);
        }
        crate::unmount_under(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

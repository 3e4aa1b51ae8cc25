//! A real `berth` process with its own root, state, socket and certs.d, and a CRI client for it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use berth_cri_api::v1::image_service_client::ImageServiceClient;
use berth_cri_api::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

/// The berth binary under test: `$BERTH_BIN`, else the workspace's debug build.
pub fn berth_bin() -> PathBuf {
    match std::env::var_os("BERTH_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/berth"),
    }
}

/// What one hostile input (an image, a TOC, a session) may grow berth's RSS by: 64 MiB.
pub const HOSTILE_RSS_BOUND_KIB: u64 = 64 << 10;

/// A running berth; stopped (SIGTERM, then SIGKILL) and its directories removed on drop.
pub struct Berth {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// The CRI socket.
    pub socket: PathBuf,
    /// `--root`.
    pub root: PathBuf,
    /// `--state`.
    pub state: PathBuf,
    /// The certs.d directory in the config.
    pub certs_d: PathBuf,
    config: PathBuf,
    /// `--log-level`: debug for tests (their failure shows the log), warn for benchmarks (as
    /// their containerd runs); `BERTH_E2E_LOG_LEVEL` overrides either.
    log_level: &'static str,
    /// This berth as a target of the suite-wide Prometheus, when there is one.
    scrape: Option<crate::scrape::Target>,
}

/// CRI clients over berth's socket.
#[derive(Clone)]
pub struct Cri {
    /// RuntimeService.
    pub runtime: RuntimeServiceClient<Channel>,
    /// ImageService.
    pub image: ImageServiceClient<Channel>,
}

/// An ImageService client over a bare HTTP/2 connection to `socket`: unlike a tonic
/// channel, it sends a request's `grpc-timeout` without enforcing it, so that what comes back
/// is berth's own answer to a passed deadline.
pub async fn image_client_without_deadlines(
    socket: &Path,
) -> anyhow::Result<
    ImageServiceClient<
        tower::util::BoxCloneService<
            http::Request<tonic::body::Body>,
            http::Response<hyper::body::Incoming>,
            hyper::Error,
        >,
    >,
> {
    let io = hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(socket).await?);
    let (send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await?;
    tokio::spawn(conn);
    let svc = tower::service_fn(move |req: http::Request<tonic::body::Body>| {
        let mut send = send.clone();
        async move { send.send_request(req).await }
    });
    Ok(ImageServiceClient::with_origin(
        tower::util::BoxCloneService::new(svc),
        "http://localhost".parse()?,
    ))
}

impl Cri {
    /// PullImage `image` with no credentials; the image ref on success.
    pub async fn pull(&self, image: &str) -> anyhow::Result<String> {
        let r = self
            .image
            .clone()
            .pull_image(berth_cri_api::v1::PullImageRequest {
                image: Some(berth_cri_api::v1::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .with_context(|| format!("pull {image}"))?;
        Ok(r.into_inner().image_ref)
    }
}

impl Cri {
    /// ImageStatus (verbose) of `image`: its `info` JSON, `null` when absent.
    pub async fn image_info(&self, image: &str) -> anyhow::Result<serde_json::Value> {
        let r = self
            .image
            .clone()
            .image_status(berth_cri_api::v1::ImageStatusRequest {
                image: Some(berth_cri_api::v1::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                verbose: true,
            })
            .await
            .with_context(|| format!("image status {image}"))?
            .into_inner();
        Ok(match r.info.get("info") {
            Some(i) => serde_json::from_str(i)?,
            None => serde_json::Value::Null,
        })
    }
}

impl Berth {
    /// Starts berth with a config that points `registry.config_path` at a fresh certs.d.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with_config("")
    }

    /// Starts berth; `extra` (top-level keys first, then tables) leads the generated config.
    pub fn start_with_config(extra: &str) -> anyhow::Result<Self> {
        Self::start_at_level(extra, "debug")
    }

    /// Starts berth for a benchmark: as [`Berth::start_with_config`], logging at warn, its
    /// state on a tmpfs as on a node (see [`crate::bench_state_on_tmpfs`]).
    pub fn start_for_bench(extra: &str) -> anyhow::Result<Self> {
        Self::start_in(extra, "warn", crate::bench_state_on_tmpfs())
    }

    /// As [`Berth::start_with_config`], logging at `log_level`.
    pub fn start_at_level(extra: &str, log_level: &'static str) -> anyhow::Result<Self> {
        Self::start_in(extra, log_level, false)
    }

    /// Starts berth with its root on a tmpfs of `size_mib` MiB, for tests that fill its disk.
    pub fn start_small_root(extra: &str, size_mib: u64) -> anyhow::Result<Self> {
        Self::start_full(extra, "debug", false, Some(size_mib))
    }

    fn start_in(extra: &str, log_level: &'static str, state_tmpfs: bool) -> anyhow::Result<Self> {
        Self::start_full(extra, log_level, state_tmpfs, None)
    }

    fn start_full(
        extra: &str,
        log_level: &'static str,
        state_tmpfs: bool,
        root_mib: Option<u64>,
    ) -> anyhow::Result<Self> {
        let bin = berth_bin();
        if !bin.exists() {
            bail!(
                "{} does not exist: build it first (cargo build -p berth) or set BERTH_BIN",
                bin.display()
            );
        }
        let dir = tempfile::Builder::new().prefix("berth-e2e-").tempdir()?;
        let certs_d = dir.path().join("certs.d");
        std::fs::create_dir_all(&certs_d)?;
        let config = dir.path().join("config.toml");
        // The certs.d path joins a `[registry]` table the caller wrote, or gets its own.
        let path_line = format!("config_path = \"{}\"\n", certs_d.display());
        let text = if extra.contains("[registry]\n") {
            extra.replacen("[registry]\n", &format!("[registry]\n{path_line}"), 1)
        } else {
            format!("{extra}\n[registry]\n{path_line}")
        };
        // The containerd calls of the kubelet's cAdvisor are answered in the temp dir unless
        // the caller says where (the host's path is the node's, not a test's).
        let text = if text.contains("[cadvisor]\n") {
            text
        } else {
            format!(
                "{text}\n[cadvisor]\ncontainerd_socket = \"{}\"\n",
                dir.path().join("containerd.sock").display()
            )
        };
        // NRI's socket and plugin directory are the test's own unless the caller says (the
        // host's are the node's).
        let text = if text.contains("[nri]\n") {
            text
        } else {
            format!(
                "{text}\n[nri]\nsocket_path = \"{}\"\nplugin_path = \"{}\"\nplugin_config_path = \"{}\"\n",
                dir.path().join("nri.sock").display(),
                dir.path().join("nri-plugins").display(),
                dir.path().join("nri-conf.d").display()
            )
        };
        let text = with_default_handler(&text);
        // Under the suite-wide scrape, metrics on a port of its own, unless the test has
        // its own `[metrics]`.
        let scrape = if text.contains("[metrics]\n") {
            None
        } else {
            crate::scrape::Target::for_berth(dir.path())
        };
        let text = match &scrape {
            Some(t) => format!("{text}{}", t.config()),
            None => text,
        };
        std::fs::write(&config, text)?;
        let mut b = Berth {
            child: None,
            socket: dir.path().join("berth.sock"),
            root: dir.path().join("root"),
            state: dir.path().join("state"),
            certs_d,
            config,
            dir,
            log_level,
            scrape,
        };
        // Unmounted with the rest of the temp dir's mounts on drop.
        if state_tmpfs {
            crate::mount_tmpfs(&b.state)?;
        }
        if let Some(mib) = root_mib {
            std::fs::create_dir_all(&b.root)?;
            let status = Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={mib}m,mode=0711"),
                    "tmpfs",
                ])
                .arg(&b.root)
                .status()?;
            anyhow::ensure!(status.success(), "mount a tmpfs on {}", b.root.display());
        }
        b.spawn()?;
        Ok(b)
    }

    /// The command line of this berth.
    fn command(&self) -> Command {
        let mut c = Command::new(berth_bin());
        c.arg("--config")
            .arg(&self.config)
            .arg("--root")
            .arg(&self.root)
            .arg("--state")
            .arg(&self.state)
            .arg("--address")
            .arg(&self.socket)
            .arg("--log-level")
            .arg(std::env::var("BERTH_E2E_LOG_LEVEL").unwrap_or_else(|_| self.log_level.into()))
            .stdin(Stdio::null());
        // As on a node where a current runc is installed ahead of the distribution's on $PATH
        // (scripts/install-runc.sh): the `runc` handler's shim, and berth's feature probe,
        // find it first.
        if let Some(dir) = crate::tools::runc()
            .parent()
            .filter(|d| d.join("runc").exists())
        {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut dirs = vec![dir.to_path_buf()];
            dirs.extend(std::env::split_paths(&path));
            if let Ok(p) = std::env::join_paths(dirs) {
                c.env("PATH", p);
            }
        }
        c
    }

    /// The pid of the running daemon.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Starts the process, its output appended to `berth.log`; returns its pid.
    fn launch(&mut self) -> anyhow::Result<u32> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("berth.log"))?;
        let child = self
            .command()
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start berth")?;
        let pid = child.id();
        self.child = Some(child);
        Ok(pid)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let pid = self.launch()?;
        let sock = self.socket.clone();
        let up = crate::wait_until(Duration::from_secs(30), || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        });
        if !up || !self.running() {
            bail!(
                "berth (pid {pid}) did not start serving on {}; log:\n{}",
                self.socket.display(),
                self.log()
            );
        }
        self.wait_recovered()?;
        self.scrape_up();
        Ok(())
    }

    /// Tells the suite-wide Prometheus this berth serves again.
    fn scrape_up(&self) {
        if let Some(t) = &self.scrape {
            t.up();
        }
    }

    /// Tells the suite-wide Prometheus this berth goes down on purpose.
    fn scrape_down(&self) {
        if let Some(t) = &self.scrape {
            t.down();
        }
    }

    /// Waits (60 s at most) until berth reports its recovery done: every pod reconciled with
    /// its shim, and the orphan sweep over (`Status` verbose, `recovery.pending` 0).
    pub fn wait_recovered(&self) -> anyhow::Result<()> {
        let socket = self.socket.clone();
        let done = on_own_runtime(async move {
            let mut cri = connect(&socket).await.ok()?;
            for _ in 0..1200 {
                let info = cri
                    .runtime
                    .status(berth_cri_api::v1::StatusRequest { verbose: true })
                    .await
                    .ok()?
                    .into_inner()
                    .info;
                // A berth without the key (an older build under test) recovers before
                // it serves.
                let Some(recovery) = info.get("recovery") else {
                    return Some(());
                };
                let pending = serde_json::from_str::<serde_json::Value>(recovery)
                    .ok()
                    .and_then(|v| v["pending"].as_u64());
                if pending == Some(0) {
                    return Some(());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            None
        });
        match done {
            Some(()) => Ok(()),
            None => bail!(
                "berth did not finish its recovery within 60 s; log:\n{}",
                self.log()
            ),
        }
    }

    /// Starts berth again on the same root, state and socket without waiting for its
    /// recovery: it serves within a second, whatever its shims do.
    pub fn spawn_only(&mut self) -> anyhow::Result<std::time::Duration> {
        let t0 = std::time::Instant::now();
        self.launch()?;
        let sock = self.socket.clone();
        let served = on_own_runtime(async move {
            for _ in 0..600 {
                if let Ok(mut cri) = connect(&sock).await
                    && cri
                        .runtime
                        .list_pod_sandbox(berth_cri_api::v1::ListPodSandboxRequest { filter: None })
                        .await
                        .is_ok()
                {
                    return Some(());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            None
        });
        match served {
            Some(()) => {
                let serving = t0.elapsed();
                self.scrape_up();
                Ok(serving)
            }
            None => bail!("berth did not serve within 3 s; log:\n{}", self.log()),
        }
    }

    /// True while the process is alive.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// berth's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("berth.log")).unwrap_or_default()
    }

    /// Writes `<certs.d>/<host>/hosts.toml`.
    pub fn hosts_toml(&self, host: &str, content: &str) -> anyhow::Result<()> {
        let d = self.certs_d.join(host);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join("hosts.toml"), content)?;
        Ok(())
    }

    /// Connects CRI clients.
    pub async fn cri(&self) -> anyhow::Result<Cri> {
        connect(&self.socket).await
    }

    /// Open file descriptors of the daemon, but for the suite's Prometheus's connections to
    /// its metrics port (opened whenever Prometheus first scrapes it, kept alive after).
    pub fn fd_count(&self) -> Option<usize> {
        let pid = self.child.as_ref()?.id();
        let scraper = self
            .scrape
            .as_ref()
            .map(|t| crate::scrape::connections_on(pid, t.port))
            .unwrap_or_default();
        let socket_inode = |p: &Path| -> Option<u64> {
            let link = std::fs::read_link(p).ok()?;
            let s = link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?;
            s.parse().ok()
        };
        Some(
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .ok()?
                .flatten()
                .filter(|e| !socket_inode(&e.path()).is_some_and(|i| scraper.contains(&i)))
                .count(),
        )
    }

    /// RSS of the daemon in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        self.child.as_ref().and_then(|c| crate::rss_kib(c.id()))
    }

    /// Starts measuring the daemon's peak RSS afresh (`/proc/<pid>/clear_refs`), and returns
    /// its RSS now (KiB): what [`Self::peak_rss_kib`] is to be compared with.
    pub fn reset_peak_rss(&self) -> u64 {
        if let Some(c) = &self.child {
            let _ = std::fs::write(format!("/proc/{}/clear_refs", c.id()), "5");
        }
        self.rss_kib().unwrap_or(0)
    }

    /// The daemon's peak RSS (KiB) since it started or [`Self::reset_peak_rss`].
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        crate::status_kib(pid, "VmHWM:")
    }

    /// Panics unless the daemon's peak RSS since [`Self::reset_peak_rss`] (which returned
    /// `before`) grew by less than [`HOSTILE_RSS_BOUND_KIB`]: issue 24's bound for what one
    /// hostile input may cost.
    pub fn assert_rss_bounded(&self, before: u64, what: &str) {
        let peak = self.peak_rss_kib().expect("berth is not running");
        #[allow(clippy::print_stderr)]
        {
            eprintln!("{what}: RSS {before} KiB before, peak {peak} KiB");
        }
        assert!(
            peak.saturating_sub(before) < HOSTILE_RSS_BOUND_KIB,
            "{what}: RSS {before} KiB before, peak {peak} KiB (more than {} MiB grown)",
            HOSTILE_RSS_BOUND_KIB >> 10
        );
    }

    /// CPU time the daemon has used (user and system).
    pub fn cpu_time(&self) -> Option<Duration> {
        let pid = self.child.as_ref()?.id();
        crate::cpu_time(pid)
    }

    /// SIGTERM, and wait for a clean exit; returns the exit status.
    pub fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("berth is not running")?;
        self.scrape_down();
        crate::signal(child.id(), libc::SIGTERM);
        let end = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = child.try_wait()? {
                return Ok(st);
            }
            if std::time::Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                bail!("berth did not stop within 15 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: as if the node's berth crashed.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            self.scrape_down();
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts berth again on the same root, state and socket.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            self.stop()?;
        }
        self.spawn()
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        // For benchmark analysis: `BERTH_E2E_KEEP_LOG=<file>` (with `BERTH_E2E_LOG_LEVEL=trace`
        // for berth's step timings) keeps the daemon's log after its scratch directory goes.
        if let Some(keep) = std::env::var_os("BERTH_E2E_KEEP_LOG") {
            let _ = std::fs::copy(self.dir.path().join("berth.log"), keep);
        }
        if std::thread::panicking() {
            #[allow(clippy::print_stderr)]
            {
                eprintln!(
                    "---- berth log ({}) ----\n{}",
                    self.dir.path().display(),
                    self.log()
                );
            }
        }
        self.remove_all_pods();
        let sockets = self.shim_sockets();
        if self.child.is_some() && self.stop().is_err() {
            self.kill();
        }
        // (`stop` or `kill` above, or earlier, journalled it down.)
        if let Some(t) = &self.scrape {
            t.remove();
        }
        // Whatever a failed test left behind: shims started for this berth (matched by the
        // socket they were given) and their sockets, then every mount under the temp dir
        // (netns, shm, rootfs).
        kill_shims_of(&self.socket);
        crate::wait_until(Duration::from_secs(2), || shims_of(&self.socket).is_empty());
        for s in sockets {
            berth_sandbox::shim::remove_dead_socket(&format!("unix://{}", s.display()));
        }
        crate::unmount_under(self.dir.path());
        // The FUSE holder of lazily pulled layers outlives berth by design; not this test's.
        let holder = self.state.join("lazy-holder.sock");
        for pid in fuse_holders(&holder) {
            crate::signal(pid, libc::SIGKILL);
        }
    }
}

impl Berth {
    /// Stops and removes every pod over CRI, as the kubelet would, so that CNI DEL runs
    /// (leases, veths and portmap rules are released) even when a test failed half-way.
    pub fn remove_all_pods(&mut self) {
        if !self.running() {
            return;
        }
        let socket = self.socket.clone();
        // Bounded: a berth that froze (what some tests look for) must not hang the clean-up;
        // it is killed after this.
        let _ = on_own_runtime(async move {
            let mut cri = connect(&socket).await.ok()?;
            tokio::time::timeout(
                Duration::from_secs(60),
                crate::cleanup::remove_all_pods(&mut cri.runtime),
            )
            .await
            .ok()
        });
    }

    /// Pids of live pod shims started with `-address <this berth's socket>` (the spare
    /// shim berth keeps ready is not one of them; a spare a pod took is).
    pub fn shim_pids(&self) -> Vec<u32> {
        let spares = self.spare_shim_pids();
        shims_of(&self.socket)
            .into_iter()
            .filter(|(p, _)| !spares.contains(p))
            .map(|(p, _)| p)
            .collect()
    }

    /// Pids of the spare shims berth keeps ready: `-id spare-…` with its directory still
    /// under `<state>/spare/`.
    pub fn spare_shim_pids(&self) -> Vec<u32> {
        shims_of(&self.socket)
            .into_iter()
            .filter(|(_, id)| {
                id.starts_with("spare-") && self.state.join("spare").join(id).exists()
            })
            .map(|(p, _)| p)
            .collect()
    }

    /// The sockets of the shims this berth runs, pods' and the spare's, as their bundles'
    /// `address` files name them.
    pub fn shim_sockets(&self) -> Vec<PathBuf> {
        ["sandboxes", "spare"]
            .iter()
            .flat_map(|d| std::fs::read_dir(self.state.join(d)).into_iter().flatten())
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("bundle/address")).ok())
            .map(|a| a.trim().trim_start_matches("unix://").into())
            .collect()
    }

    /// Where this berth answers the containerd calls of the kubelet's cAdvisor, unless the
    /// test's config named another place.
    pub fn cadvisor_socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// The berth temp directory (root, state, socket and config live under it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The handler the e2e tests run pods under unless a test names one: `$BERTH_E2E_HANDLER`
/// (e.g. `crun`, berth's own shim with crun), else berth's default.
pub fn e2e_handler() -> Option<String> {
    std::env::var("BERTH_E2E_HANDLER")
        .ok()
        .filter(|h| !h.is_empty())
}

/// The handler pods run under when they name none: [`e2e_handler`], else berth's default
/// (`crun`: berth's own shim with crun).
pub fn default_handler() -> String {
    e2e_handler().unwrap_or_else(|| "crun".into())
}

/// Makes [`e2e_handler`] the default handler of a config text that sets none.
fn with_default_handler(text: &str) -> String {
    let Some(h) = e2e_handler() else {
        return text.to_string();
    };
    if text.contains("default_handler") {
        return text.to_string();
    }
    let line = format!("default_handler = \"{h}\"\n");
    if text.contains("[runtime]\n") {
        text.replacen("[runtime]\n", &format!("[runtime]\n{line}"), 1)
    } else {
        format!("{text}\n[runtime]\n{line}")
    }
}

/// Runs `fut` to its end on a runtime of its own, on a thread of its own: the fixture is
/// used from synchronous code and from `Drop`, which may run inside a test's runtime.
pub(crate) fn on_own_runtime<T: Send + 'static>(
    fut: impl std::future::Future<Output = Option<T>> + Send + 'static,
) -> Option<T> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?
            .block_on(fut)
    })
    .join()
    .ok()
    .flatten()
}

/// (pid, task id) of the shims serving berth at `socket`.
fn shims_of(socket: &Path) -> Vec<(u32, String)> {
    let want = socket.as_os_str().as_encoded_bytes();
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).filter(|a| !a.is_empty()).collect();
        // The daemons only: `<shim> … start` (which forks the daemon and exits) and
        // `<shim> … delete` are short-lived helpers with the same flags; a test that took one
        // for the shim would find it gone a moment later.
        let helper = args
            .last()
            .is_some_and(|a| *a == b"start" || *a == b"delete");
        if !helper
            && args.first().is_some_and(|a| {
                a.ends_with(b"containerd-shim-runc-v2") || a.ends_with(b"containerd-shim-berth-v1")
            })
            && args.windows(2).any(|w| w[0] == b"-address" && w[1] == want)
        {
            let id = args
                .windows(2)
                .find(|w| w[0] == b"-id")
                .map(|w| String::from_utf8_lossy(w[1]).into_owned())
                .unwrap_or_default();
            out.push((pid, id));
        }
    }
    out
}

/// The FUSE holders serving `socket` (`berth fuse-holder --socket <socket>`).
pub fn fuse_holders(socket: &Path) -> Vec<u32> {
    let want = socket.as_os_str().as_encoded_bytes();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                args.contains(&&b"fuse-holder"[..]) && args.contains(&want)
            })
        })
        .collect()
}

fn kill_shims_of(socket: &Path) {
    for (pid, _) in shims_of(socket) {
        // The shim's children (runc's container processes) are in the shim's process group
        // only sometimes; kill the shim's direct children first, then the shim.
        if let Ok(children) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
            for c in children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok())
            {
                crate::signal(c, libc::SIGKILL);
            }
        }
        crate::signal(pid, libc::SIGKILL);
    }
}

/// CRI clients over the unix socket at `path`.
pub async fn connect(path: &Path) -> anyhow::Result<Cri> {
    let channel = berth_cri_api::unix_channel(path, None).await?;
    Ok(Cri {
        runtime: RuntimeServiceClient::new(channel.clone()),
        image: ImageServiceClient::new(channel),
    })
}

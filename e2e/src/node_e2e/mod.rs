//! Runs Kubernetes' node e2e suite (`e2e_node.test`, from `scripts/install-e2e-node.sh`)
//! against a runtime on this machine: the suite's own etcd, API server and namespace
//! controller, the real kubelet, and berth (under a chosen default handler) or containerd
//! 2.x, all pulling the suite's images from a local registry through a `certs.d` mirror.
//!
//! What a run leaves behind is removed whatever happened: the suite's process group (the
//! kubelet included), the runtime's pods, every mount under the kubelet's root, and the
//! kubelet's root, cgroups and pod logs that the run created. SIGINT and SIGTERM interrupt
//! the suite and then tear down as usual ([`catch_interrupts`]); what a run that was killed
//! outright left, the next one removes, from its [`Journal`].
//!
//! - `mod.rs`: the runtimes, the shared world, one run of the suite;
//! - `host.rs`: the host state a run changes (cgroups, the kubelet's root and logs);
//! - `journal.rs`: the record of it on the host, and the one-run-at-a-time lock;
//! - `report.rs`: reading ginkgo's JUnit report, the table of results.

mod host;
mod journal;
mod report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::containerd::{Containerd, Flavor};
use crate::node_images::{self, PAUSE, UPSTREAMS};
use crate::{Berth, Registry, TestNet};

pub use journal::Journal;
pub use report::{parse_junit, table};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// From now on SIGINT and SIGTERM do not kill this process before it cleans up: the suite
/// is told (ginkgo reports what ran and stops), the run is torn down, no further runtime
/// is run ([`interrupted`]).
pub fn catch_interrupts() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, on_interrupt as *const () as libc::sighandler_t);
        }
    }
}

/// What the suite's kubelet keeps free on its filesystem before it evicts pods, in absolute
/// terms. The suite's own configuration says 10% (`nodefs.available`), which ties every
/// spec's outcome to how full the host's disk happens to be: a CI host at 89% would have
/// every pod evicted for disk pressure, a spec failing for that alone.
const NODEFS_RESERVE_GIB: u64 = 2;

/// What a run writes at most (images, logs, emptyDirs), on top of the reserve.
const RUN_ROOM_GIB: u64 = 3;

/// The kubelet flags that make the suite's disk-driven behaviour depend on what the run
/// itself needs, not on the host: hard eviction at [`NODEFS_RESERVE_GIB`] free (memory and
/// inodes as the suite sets them), and image garbage collection off (it starts at 85% used
/// and would remove images specs have just pulled). Command-line flags override the
/// kubelet's config file; a `--kubelet-flag` given by the caller comes after and wins.
pub fn disk_flags() -> Vec<String> {
    vec![
        format!(
            "--eviction-hard=memory.available<250Mi,nodefs.available<{NODEFS_RESERVE_GIB}Gi,nodefs.inodesFree<5%"
        ),
        "--image-gc-high-threshold=100".into(),
    ]
}

/// Fails, saying what to do, when the kubelet's filesystem has too little room for a run:
/// its pods would be evicted for disk pressure and fail for that alone.
pub fn check_disk() -> anyhow::Result<()> {
    let at = Path::new(KUBELET_ROOT)
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let c = std::ffi::CString::new(at.as_os_str().as_encoded_bytes())?;
    // SAFETY: statvfs(3) fills the zeroed struct for a NUL-terminated path.
    let st = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return Err(std::io::Error::last_os_error())
                .context(format!("statvfs {}", at.display()));
        }
        st
    };
    let free_gib = st.f_bavail * st.f_frsize / (1 << 30);
    let need = NODEFS_RESERVE_GIB + RUN_ROOM_GIB;
    anyhow::ensure!(
        free_gib >= need,
        "{} has {free_gib} GiB free: the suite's kubelet evicts every pod below \
         {NODEFS_RESERVE_GIB} GiB and a run writes up to {RUN_ROOM_GIB} GiB; free {} GiB \
         or more before running it",
        at.display(),
        need - free_gib
    );
    let inodes_free = st.f_favail * 100 / st.f_files.max(1);
    anyhow::ensure!(
        st.f_files == 0 || inodes_free >= 10,
        "{} has {inodes_free}% of its inodes free: the suite's kubelet evicts every pod below 5%",
        at.display()
    );
    Ok(())
}

/// Whether SIGINT or SIGTERM came.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Where the suite puts the kubelet's root (fixed in the suite).
pub const KUBELET_ROOT: &str = "/var/lib/kubelet";

/// The runtimes a run can be against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// berth with its default handler (its own shim with crun).
    Berth,
    /// berth with `runc` (containerd's runc shim) as its default handler.
    BerthRunc,
    /// containerd 2.x with its runc shim (`scripts/install-containerd.sh`).
    Containerd,
}

impl Runtime {
    /// The name on the command line and in the table.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Berth => "berth",
            Runtime::BerthRunc => "berth-runc",
            Runtime::Containerd => "containerd",
        }
    }

    /// Parses [`Self::name`].
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "berth" => Runtime::Berth,
            "berth-runc" => Runtime::BerthRunc,
            "containerd" => Runtime::Containerd,
            _ => anyhow::bail!("unknown runtime {s:?}: berth, berth-runc or containerd"),
        })
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Ginkgo's `--focus`.
    pub focus: String,
    /// Ginkgo's `--skip`.
    pub skip: String,
    /// Parallel ginkgo processes.
    pub procs: usize,
    /// The whole run's time limit (ginkgo's `--timeout`).
    pub timeout: Duration,
    /// Where reports and logs go (one directory per runtime under it).
    pub report_dir: PathBuf,
    /// Extra flags for the kubelet (`--kubelet-flags`).
    pub kubelet_flags: Vec<String>,
    /// Feature gates for the suite's API server and kubelet (`--feature-gates`), e.g.
    /// `ImageVolume=true`.
    pub feature_gates: String,
}

/// The outcome of one spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// It ran and passed.
    Passed,
    /// It ran and failed (or timed out, or panicked).
    Failed,
    /// It did not run.
    Skipped,
}

/// One runtime's results.
#[derive(Debug, Clone)]
pub struct Report {
    /// Which runtime.
    pub runtime: Runtime,
    /// Every spec by its full name.
    pub specs: BTreeMap<String, Outcome>,
    /// How long the suite ran.
    pub took: Duration,
    /// The directory with its JUnit report and logs.
    pub dir: PathBuf,
}

impl Report {
    /// How many specs (`[It]` nodes, not the suite's set-up and tear-down) had `o`.
    pub fn count(&self, o: Outcome) -> usize {
        self.specs
            .iter()
            .filter(|(n, x)| n.starts_with("[It]") && **x == o)
            .count()
    }

    /// What failed: specs, and the suite's own nodes (a failed `[SynchronizedBeforeSuite]`
    /// fails the run).
    pub fn failed(&self) -> Vec<&str> {
        self.specs
            .iter()
            .filter(|(_, o)| **o == Outcome::Failed)
            .map(|(n, _)| n.as_str())
            .collect()
    }
}

/// The suite's binaries.
pub struct Suite {
    /// `e2e_node.test`.
    pub test: PathBuf,
    /// The ginkgo CLI of the suite's ginkgo version.
    pub ginkgo: PathBuf,
    /// The directory holding the kubelet (`--k8s-bin-dir`).
    pub k8s_bin_dir: PathBuf,
    /// The static agnhost for the images.
    pub agnhost: PathBuf,
}

impl Suite {
    /// Finds what the install scripts built.
    pub fn find() -> anyhow::Result<Self> {
        let dir = crate::tools::node_e2e_dir();
        let kubelet = crate::tools::kubelet();
        let s = Suite {
            test: dir.join("e2e_node.test"),
            ginkgo: dir.join("ginkgo"),
            agnhost: dir.join("agnhost"),
            k8s_bin_dir: kubelet
                .parent()
                .context("the kubelet's directory")?
                .to_path_buf(),
        };
        for p in [&s.test, &s.ginkgo, &s.agnhost] {
            crate::tools::require(p, "install-e2e-node.sh")?;
        }
        crate::tools::require(&kubelet, "install-kubelet.sh")?;
        Ok(s)
    }
}

/// The world every run shares: the registry with the suite's images and the CNI network.
pub struct World {
    /// The registry.
    pub registry: Registry,
    /// The pods' network.
    pub net: TestNet,
    /// `certs.d` for containerd (berth writes its own).
    certs_d: tempfile::TempDir,
}

impl World {
    /// Starts the registry, pushes the images, creates the network.
    pub async fn start(suite: &Suite, journal: &mut Journal) -> anyhow::Result<Self> {
        let registry = Registry::start()?;
        journal.process(registry.pid())?;
        journal.dir(registry.dir())?;
        let mut bins = node_images::Binaries::find()?;
        bins.agnhost = suite.agnhost.clone();
        node_images::push_all(&registry, &bins).await?;
        let net = TestNet::new()?;
        journal.dir(net.dir())?;
        journal.bridge(&net.bridge)?;
        let certs_d = tempfile::Builder::new()
            .prefix("berth-node-e2e-certs-")
            .tempdir()?;
        journal.dir(certs_d.path())?;
        for h in UPSTREAMS {
            let host = certs_d.path().join(h);
            std::fs::create_dir_all(&host)?;
            std::fs::write(
                host.join("hosts.toml"),
                node_images::mirror_hosts(h, &registry.addr),
            )?;
        }
        Ok(World {
            registry,
            net,
            certs_d,
        })
    }
}

/// Where a node's containerd listens, which the kubelet's cAdvisor asks about containers.
const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";

/// A runtime started for one run.
enum Running {
    Berth(Box<Berth>),
    Containerd(Containerd),
}

impl Running {
    fn start(rt: Runtime, world: &World, dir: &Path) -> anyhow::Result<Self> {
        Ok(match rt {
            Runtime::Berth | Runtime::BerthRunc => {
                let handler = if rt == Runtime::Berth { "crun" } else { "runc" };
                // The RuntimeClass specs ask for the handler `test-handler`, which node CI
                // configures as the default one (containerd's, below, too).
                let test_handler = if rt == Runtime::Berth {
                    "runtime_type = \"io.containerd.berth.v1\"\noptions = { BinaryName = \"crun\" }"
                } else {
                    "runtime_type = \"io.containerd.runc.v2\""
                };
                // The kubelet's cAdvisor asks about containers where a node's containerd
                // listens: berth answers there, as it would on a node.
                let b = Berth::start_at_level(
                    &format!(
                        "sandbox_image = \"{PAUSE}\"\n{}\n[runtime]\ndefault_handler = \"{handler}\"\n\
                         [runtime.handlers.crun]\nruntime_type = \"io.containerd.berth.v1\"\n\
                         options = {{ BinaryName = \"crun\" }}\n\
                         [runtime.handlers.runc]\nruntime_type = \"io.containerd.runc.v2\"\n\
                         [runtime.handlers.test-handler]\n{test_handler}\n\
                         [cadvisor]\ncontainerd_socket = \"{CONTAINERD_SOCKET}\"\n",
                        world.net.config_toml()
                    ),
                    "info",
                )?;
                for h in UPSTREAMS {
                    b.hosts_toml(h, &node_images::mirror_hosts(h, &world.registry.addr))?;
                }
                Running::Berth(Box::new(b))
            }
            Runtime::Containerd => Running::Containerd(Containerd::start_flavor(
                Flavor::V2,
                &dir.join("containerd"),
                world.certs_d.path(),
                PAUSE,
                &world.net.conf_dir,
            )?),
        })
    }

    fn socket(&self) -> PathBuf {
        match self {
            Running::Berth(b) => b.socket.clone(),
            Running::Containerd(c) => c.socket.clone(),
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Running::Berth(b) => b.pid(),
            Running::Containerd(c) => c.pid(),
        }
    }

    /// Notes the runtime's process and its directory (berth's; containerd's is in the run's).
    fn record(&self, journal: &mut Journal) -> anyhow::Result<()> {
        if let Some(pid) = self.pid() {
            journal.process(pid)?;
        }
        if let Running::Berth(b) = self {
            journal.dir(b.dir())?;
        }
        Ok(())
    }

    /// Where a node's containerd listens, which the kubelet's cAdvisor asks about containers
    /// (their labels, their network): the baseline containerd is reached there too, through
    /// a link, as on a node. None for berth, or when something else is there.
    fn standard_socket_link(&self, journal: &mut Journal) -> Option<PathBuf> {
        let Running::Containerd(c) = self else {
            return None;
        };
        let std = PathBuf::from(CONTAINERD_SOCKET);
        if std.symlink_metadata().is_ok() {
            return None;
        }
        journal.link(&std).ok()?;
        std::fs::create_dir_all("/run/containerd").ok()?;
        std::os::unix::fs::symlink(&c.socket, &std).ok()?;
        Some(std)
    }

    fn remove_all_pods(&mut self) {
        match self {
            Running::Berth(b) => b.remove_all_pods(),
            Running::Containerd(c) => c.remove_all_pods(),
        }
    }

    fn process_name(&self) -> &'static str {
        match self {
            Running::Berth(_) => "berth",
            Running::Containerd(_) => "containerd",
        }
    }
}

/// Runs the suite against `rt` and tears everything down.
pub fn run(
    suite: &Suite,
    world: &World,
    rt: Runtime,
    opts: &Options,
    journal: &mut Journal,
) -> anyhow::Result<Report> {
    // Absolute: ginkgo and the suite run in the work directory.
    let dir = std::path::absolute(opts.report_dir.join(rt.name()))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let work = tempfile::Builder::new()
        .prefix("berth-node-e2e-")
        .tempdir_in("/var/tmp")?;
    journal.dir(work.path())?;
    // berth takes the containerd socket when it is free (and removes it when it stops);
    // containerd leaves its shims' sockets and runc's state under the socket's directory
    // whatever its own state directory is.
    let socket_dir = Path::new(CONTAINERD_SOCKET)
        .parent()
        .unwrap_or(Path::new("/run"));
    if !socket_dir.exists() {
        journal.dir(socket_dir)?;
    }
    if rt != Runtime::Containerd && Path::new(CONTAINERD_SOCKET).symlink_metadata().is_err() {
        journal.link(Path::new(CONTAINERD_SOCKET))?;
    }
    let mut runtime = host::in_runtime_cgroup(|| Running::start(rt, world, work.path()))?;
    let recorded = runtime.record(journal);
    let link = runtime.standard_socket_link(journal);
    let r = recorded.and_then(|()| run_suite(suite, &runtime, opts, &dir, work.path(), journal));
    if let Some(l) = link {
        let _ = std::fs::remove_file(l);
    }
    if let Running::Berth(b) = &runtime {
        let _ = std::fs::write(dir.join("berth.log"), b.log());
    }
    if let Running::Containerd(_) = &runtime {
        let _ = std::fs::copy(
            work.path().join("containerd/containerd.log"),
            dir.join("containerd.log"),
        );
    }
    // The pods the suite left (it was interrupted, or the kubelet died), removed through
    // CRI as the kubelet would: their networks are released before the runtime stops.
    runtime.remove_all_pods();
    drop(runtime);
    host::remove_runtime_cgroup();
    journal.host().restore();
    let took = r?;
    let xml = std::fs::read_to_string(dir.join("junit.xml"))
        .with_context(|| format!("no JUnit report in {}", dir.display()))?;
    Ok(Report {
        runtime: rt,
        specs: parse_junit(&xml),
        took,
        dir,
    })
}

fn run_suite(
    suite: &Suite,
    runtime: &Running,
    opts: &Options,
    dir: &Path,
    work: &Path,
    journal: &mut Journal,
) -> anyhow::Result<Duration> {
    let endpoint = format!("unix://{}", runtime.socket().display());
    let pid_file = work.join("runtime.pid");
    std::fs::write(&pid_file, runtime.pid().unwrap_or(0).to_string())?;
    let path = host::path_without_systemd_run(work)?;
    let mut cmd = Command::new(&suite.ginkgo);
    cmd.current_dir(work)
        .env("PATH", path)
        .arg(format!("--procs={}", opts.procs))
        .arg(format!("--timeout={}s", opts.timeout.as_secs()))
        .arg(format!("--output-dir={}", dir.display()))
        .arg("--junit-report=junit.xml")
        .arg("--no-color")
        .arg(format!("--focus={}", opts.focus));
    if !opts.skip.is_empty() {
        cmd.arg(format!("--skip={}", opts.skip));
    }
    cmd.arg(&suite.test)
        .arg("--")
        .arg(format!("--container-runtime-endpoint={endpoint}"))
        .arg(format!("--image-service-endpoint={endpoint}"))
        .arg(format!(
            "--container-runtime-process-name={}",
            runtime.process_name()
        ))
        .arg(format!(
            "--container-runtime-pid-file={}",
            pid_file.display()
        ))
        .arg(format!("--k8s-bin-dir={}", suite.k8s_bin_dir.display()))
        .arg("--prepull-images=false")
        .arg(format!("--report-dir={}", dir.display()))
        .arg(format!(
            "--kubelet-flags={}",
            disk_flags()
                .iter()
                .chain(&opts.kubelet_flags)
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        ));
    if !opts.feature_gates.is_empty() {
        // The kubelet's, and the in-process API server's (which drops the fields of a
        // disabled feature from the pods it stores).
        cmd.arg(format!("--feature-gates={}", opts.feature_gates))
            .arg(format!("--service-feature-gates={}", opts.feature_gates));
    }
    let log = std::fs::File::create(dir.join("ginkgo.log"))?;
    // Its own process group: the suite's processes and the kubelet it starts are killed
    // together, never anything else.
    use std::os::unix::process::CommandExt;
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let t0 = Instant::now();
    let mut child = cmd.spawn().context("start ginkgo")?;
    let group = child.id() as i32;
    if let Err(e) = journal.group(child.id()) {
        append_log(
            dir,
            &format!("node-e2e: ginkgo's group not journaled: {e:#}\n"),
        );
    }
    let status = wait_for_suite(&mut child, group);
    // Whatever the suite left running in its group (a kubelet after a crash).
    // SAFETY: kill(2) on the process group this run created.
    unsafe {
        libc::kill(-group, libc::SIGTERM);
    }
    let gone = crate::wait_until(Duration::from_secs(10), || {
        // SAFETY: signal 0 only checks whether the group still exists.
        unsafe { libc::kill(-group, 0) != 0 }
    });
    if !gone {
        // SAFETY: as above.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
    }
    let took = t0.elapsed();
    let status = status.context("wait for ginkgo")?;
    append_log(dir, &format!("ginkgo exited: {status}\n"));
    Ok(took)
}

/// Waits for ginkgo to end; on SIGINT or SIGTERM, interrupts it (it runs the specs'
/// clean-up, stops the kubelet and reports), again a minute later, and kills its group if it
/// is still there a minute after that.
fn wait_for_suite(
    child: &mut std::process::Child,
    group: i32,
) -> std::io::Result<std::process::ExitStatus> {
    let mut since: Option<Instant> = None;
    let mut sent = 0;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if interrupted() {
            let t = *since.get_or_insert_with(Instant::now);
            let due = match sent {
                0 => true,
                1 => t.elapsed() > Duration::from_secs(60),
                2 => t.elapsed() > Duration::from_secs(120),
                _ => false,
            };
            if due {
                let sig = if sent < 2 {
                    libc::SIGINT
                } else {
                    libc::SIGKILL
                };
                // SAFETY: kill(2) on the process group this run created.
                unsafe {
                    libc::kill(-group, sig);
                }
                sent += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn append_log(dir: &Path, s: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join("ginkgo.log"))
    {
        let _ = f.write_all(s.as_bytes());
    }
}

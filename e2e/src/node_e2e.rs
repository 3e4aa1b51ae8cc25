//! Runs Kubernetes' node e2e suite (`e2e_node.test`, from `scripts/install-e2e-node.sh`)
//! against a runtime on this machine: the suite's own etcd, API server and namespace
//! controller, the real kubelet, and berth (under a chosen default handler) or containerd
//! 2.x, all pulling the suite's images from a local registry through a `certs.d` mirror.
//!
//! What a run leaves behind is removed whatever happened: the suite's process group (the
//! kubelet included), the runtime's pods, every mount under the kubelet's root, and the
//! kubelet's root, cgroups and pod logs that the run created.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::containerd::{Containerd, Flavor};
use crate::node_images::{self, PAUSE, UPSTREAMS};
use crate::{Berth, Registry, TestNet};

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
    pub async fn start(suite: &Suite) -> anyhow::Result<Self> {
        let registry = Registry::start()?;
        let mut bins = node_images::Binaries::find()?;
        bins.agnhost = suite.agnhost.clone();
        node_images::push_all(&registry, &bins).await?;
        let net = TestNet::new()?;
        let certs_d = tempfile::Builder::new()
            .prefix("berth-node-e2e-certs-")
            .tempdir()?;
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
                let b = Berth::start_at_level(
                    &format!(
                        "sandbox_image = \"{PAUSE}\"\n{}\n[runtime]\ndefault_handler = \"{handler}\"\n",
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

    /// Where a node's containerd listens, which the kubelet's cAdvisor asks about containers
    /// (their labels, their network): the baseline containerd is reached there too, through
    /// a link, as on a node. None for berth, or when something else is there.
    fn standard_socket_link(&self) -> Option<PathBuf> {
        let Running::Containerd(c) = self else {
            return None;
        };
        let std = PathBuf::from("/run/containerd/containerd.sock");
        if std.symlink_metadata().is_ok() {
            return None;
        }
        std::fs::create_dir_all("/run/containerd").ok()?;
        std::os::unix::fs::symlink(&c.socket, &std).ok()?;
        Some(std)
    }

    fn process_name(&self) -> &'static str {
        match self {
            Running::Berth(_) => "berth",
            Running::Containerd(_) => "containerd",
        }
    }
}

/// The cgroup the runtime and its shims run in (in every hierarchy), as a node's service
/// manager gives a runtime one: the suite's resource collector reports its CPU and memory by
/// it, and the kubelet leaves it alone (it moves the processes of the root cgroup into its
/// system cgroup).
const RUNTIME_CGROUP: &str = "node-e2e-runtime";

/// Each cgroup hierarchy's directory, with the cgroup this process is in there.
fn own_cgroups() -> Vec<(PathBuf, String)> {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let root = Path::new("/sys/fs/cgroup");
    text.lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            let dir = if controllers.is_empty() {
                if root.join("unified").is_dir() {
                    root.join("unified")
                } else {
                    root.to_path_buf()
                }
            } else if let Some(name) = controllers.strip_prefix("name=") {
                root.join(name)
            } else {
                root.join(controllers)
            };
            dir.join("cgroup.procs")
                .exists()
                .then(|| (dir, path.to_string()))
        })
        .collect()
}

/// Runs `start` (which starts the runtime) with this process in [`RUNTIME_CGROUP`], so that
/// what it starts is there; this process goes back where it was, whatever happened.
fn in_runtime_cgroup<T>(start: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let own = own_cgroups();
    let entered = (|| {
        for (dir, _) in &own {
            let c = dir.join(RUNTIME_CGROUP);
            std::fs::create_dir_all(&c)?;
            // A v1 cpuset starts empty, and no process may join it until it has CPUs and
            // memory nodes: those of its parent.
            for f in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(v) = std::fs::read_to_string(c.join(f))
                    && v.trim().is_empty()
                {
                    let parent = std::fs::read_to_string(dir.join(f))?;
                    std::fs::write(c.join(f), parent.trim())?;
                }
            }
            std::fs::write(c.join("cgroup.procs"), "0")
                .with_context(|| format!("enter {}", c.display()))?;
        }
        anyhow::Ok(())
    })();
    let r = entered.and_then(|()| start());
    for (dir, path) in &own {
        let back = dir.join(path.trim_start_matches('/')).join("cgroup.procs");
        if let Err(e) = std::fs::write(&back, "0") {
            remove_runtime_cgroup();
            return Err(e).with_context(|| format!("go back to {}", back.display()));
        }
    }
    if r.is_err() {
        remove_runtime_cgroup();
    }
    r
}

fn remove_runtime_cgroup() {
    for (dir, _) in own_cgroups() {
        crate::kubelet::remove_cgroup_tree(&dir.join(RUNTIME_CGROUP));
    }
}

/// A directory for `PATH` holding every command of `PATH` but `systemd-run`: where the suite
/// finds `systemd-run` it starts the kubelet through it, which fails on a machine whose PID
/// 1 is not systemd.
fn path_without_systemd_run(dir: &Path) -> anyhow::Result<String> {
    let bin = dir.join("path");
    std::fs::create_dir_all(&bin)?;
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    for d in path.split(':').filter(|d| !d.is_empty()) {
        let Ok(rd) = std::fs::read_dir(d) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            if name == "systemd-run" || bin.join(&name).symlink_metadata().is_ok() {
                continue;
            }
            std::os::unix::fs::symlink(e.path(), bin.join(&name))?;
        }
    }
    Ok(bin.display().to_string())
}

/// What the run changes on the host outside its own directories, noted before it starts.
struct HostState {
    kubelet_root_existed: bool,
    cgroups: Vec<PathBuf>,
    /// What was in the kubelet's fixed log directories.
    logs: Vec<PathBuf>,
}

/// Where a kubelet keeps its pods' logs, and links them, whatever its root.
const KUBELET_LOG_DIRS: [&str; 2] = ["/var/log/pods", "/var/log/containers"];

fn kubelet_logs() -> Vec<PathBuf> {
    KUBELET_LOG_DIRS
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|rd| rd.flatten().map(|e| e.path()))
        .collect()
}

/// The cgroup directories the kubelet creates at the top of each hierarchy.
const KUBELET_CGROUPS: [&str; 4] = ["kubepods", "kubelet", "system", "docker-daemon"];

fn top_cgroups() -> Vec<PathBuf> {
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else {
        return v;
    };
    for h in rd.flatten() {
        for c in KUBELET_CGROUPS {
            let p = h.path().join(c);
            if p.is_dir() {
                v.push(p);
            }
        }
    }
    v
}

impl HostState {
    fn note() -> Self {
        HostState {
            kubelet_root_existed: Path::new(KUBELET_ROOT).exists(),
            cgroups: top_cgroups(),
            logs: kubelet_logs(),
        }
    }

    /// Unmounts what the kubelet left mounted; removes its root and cgroups if the run made
    /// them (a cgroup only once empty: its processes moved back to the root first).
    fn restore(&self) {
        crate::unmount_under(Path::new(KUBELET_ROOT));
        if !self.kubelet_root_existed {
            let _ = std::fs::remove_dir_all(KUBELET_ROOT);
        }
        for c in top_cgroups() {
            if !self.cgroups.contains(&c) {
                crate::kubelet::remove_cgroup_tree(&c);
            }
        }
        for p in kubelet_logs() {
            if !self.logs.contains(&p) {
                let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
            }
        }
    }
}

/// Parses the JUnit report ginkgo writes: every `<testcase>` by name, with its status.
pub fn parse_junit(xml: &str) -> BTreeMap<String, Outcome> {
    let mut out = BTreeMap::new();
    for tc in xml.split("<testcase ").skip(1) {
        let head = tc.split('>').next().unwrap_or("");
        let attr = |k: &str| {
            let key = format!("{k}=\"");
            head.find(&key).map(|i| {
                let rest = &head[i + key.len()..];
                unescape(&rest[..rest.find('"').unwrap_or(rest.len())])
            })
        };
        let Some(name) = attr("name") else { continue };
        let outcome = match attr("status").as_deref() {
            Some("passed") => Outcome::Passed,
            Some("skipped") | Some("pending") => Outcome::Skipped,
            _ => Outcome::Failed,
        };
        // Ginkgo's suite-level nodes (BeforeSuite and the like) are reported too: keep them,
        // a failure there is a failure of the run.
        out.insert(name, outcome);
    }
    out
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// Runs the suite against `rt` and tears everything down.
pub fn run(suite: &Suite, world: &World, rt: Runtime, opts: &Options) -> anyhow::Result<Report> {
    let dir = opts.report_dir.join(rt.name());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let work = tempfile::Builder::new()
        .prefix("berth-node-e2e-")
        .tempdir_in("/var/tmp")?;
    let host = HostState::note();
    let runtime = in_runtime_cgroup(|| Running::start(rt, world, work.path()))?;
    let link = runtime.standard_socket_link();
    let r = run_suite(suite, &runtime, opts, &dir, work.path());
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
    drop(runtime);
    remove_runtime_cgroup();
    host.restore();
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
) -> anyhow::Result<Duration> {
    let endpoint = format!("unix://{}", runtime.socket().display());
    let pid_file = work.join("runtime.pid");
    std::fs::write(&pid_file, runtime.pid().unwrap_or(0).to_string())?;
    let path = path_without_systemd_run(work)?;
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
        .arg(format!("--kubelet-flags={}", opts.kubelet_flags.join(" ")));
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
    let status = child.wait();
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

/// The results as a Markdown table, one row per runtime.
pub fn table(reports: &[Report]) -> String {
    let mut s = String::from(
        "| runtime | specs run | passed | failed | skipped | time |\n|---|---|---|---|---|---|\n",
    );
    for r in reports {
        let (p, f, sk) = (
            r.count(Outcome::Passed),
            r.count(Outcome::Failed),
            r.count(Outcome::Skipped),
        );
        s.push_str(&format!(
            "| {} | {} | {p} | {f} | {sk} | {}m{:02}s |\n",
            r.runtime.name(),
            p + f,
            r.took.as_secs() / 60,
            r.took.as_secs() % 60
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junit_testcases_are_read_with_their_status() {
        let xml = r#"<testsuites><testsuite name="E2eNode Suite">
<testcase name="[It] a &amp; b [NodeConformance]" classname="E2eNode Suite" status="passed" time="1.2"></testcase>
<testcase name="[It] fails" classname="E2eNode Suite" status="failed" time="3"><failure message="x">boom</failure></testcase>
<testcase name="[It] not run" classname="E2eNode Suite" status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
<testcase name="[SynchronizedBeforeSuite]" classname="E2eNode Suite" status="timedout" time="9"></testcase>
</testsuite></testsuites>"#;
        let m = parse_junit(xml);
        assert_eq!(m.len(), 4);
        assert_eq!(m["[It] a & b [NodeConformance]"], Outcome::Passed);
        assert_eq!(m["[It] fails"], Outcome::Failed);
        assert_eq!(m["[It] not run"], Outcome::Skipped);
        assert_eq!(m["[SynchronizedBeforeSuite]"], Outcome::Failed);
    }
}

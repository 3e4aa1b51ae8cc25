//! A real kubelet in standalone mode (no API server) driving a real berth: static pods from a
//! manifest directory of the test's own, its API on 127.0.0.1 opened to the test (anonymous
//! authentication, `AlwaysAllow`), its cgroups under a root of the test's own, its pod logs
//! and state in a temp dir.
//!
//! The kubelet is built by `scripts/install-kubelet.sh` ([`crate::tools::kubelet`]).
//!
//! A kubelet changes a few kernel tunables on start (`vm.overcommit_memory=1`,
//! `kernel.panic=10`, `kernel.panic_on_oops=1`) as it does on every node it runs on; that is
//! its behaviour, not the test's.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::PodEnv;

/// What a test changes in the kubelet's configuration.
#[derive(Default, Clone)]
pub struct KubeletOptions {
    /// Lines of YAML appended to the KubeletConfiguration (top-level keys).
    pub config: String,
    /// Feature gates turned on.
    pub feature_gates: Vec<&'static str>,
    /// `--v` (default 2).
    pub verbosity: Option<u8>,
    /// The `evictionHard` thresholds, as YAML lines under it (default: memory 100Mi, 1% of
    /// the filesystems and their inodes, so that a busy test machine does not evict).
    pub eviction_hard: Option<String>,
}

/// A berth ready to run pods ([`PodEnv`], the app image pulled) and a kubelet pointed at it.
/// Dropped kubelet first (so it stops recreating pods), then berth (which removes every pod
/// over CRI), then the kubelet's cgroups and directory.
pub struct KubeletEnv {
    /// The kubelet.
    pub kubelet: Kubelet,
    env: Option<PodEnv>,
    /// One kubelet at a time in a test binary: a kubelet also uses a few fixed host paths
    /// (its device plugin socket under /var/lib/kubelet), whatever its root dir.
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl KubeletEnv {
    /// A berth with the app image ([`crate::apps::env_with`]) and a kubelet on it.
    pub async fn start(opts: KubeletOptions) -> anyhow::Result<Self> {
        Self::start_with("", opts).await
    }

    /// As [`Self::start`], with `berth_config` in berth's config.
    pub async fn start_with(berth_config: &str, opts: KubeletOptions) -> anyhow::Result<Self> {
        let serial = SERIAL.lock().await;
        let env = crate::apps::env_with(berth_config).await;
        let kubelet = Kubelet::start(&env.berth.socket, opts)?;
        Ok(KubeletEnv {
            kubelet,
            env: Some(env),
            _serial: serial,
        })
    }

    /// The berth side.
    pub fn env(&self) -> &PodEnv {
        self.env.as_ref().expect("env is dropped only with self")
    }

    /// The berth side, mutably (to restart berth).
    pub fn env_mut(&mut self) -> &mut PodEnv {
        self.env.as_mut().expect("env is dropped only with self")
    }
}

impl Drop for KubeletEnv {
    fn drop(&mut self) {
        // The whole log is kept for a post-mortem (and with BERTH_E2E_KEEP_KUBELET_LOG set, for
        // a review of what the kubelet logs); the end of it goes with a failure.
        let keep = std::env::temp_dir().join(format!("{}.kubelet.log", self.kubelet.node));
        if std::thread::panicking() || std::env::var_os("BERTH_E2E_KEEP_KUBELET_LOG").is_some() {
            let _ = std::fs::write(&keep, self.kubelet.log());
        }
        if std::thread::panicking() {
            #[allow(clippy::print_stderr)]
            {
                eprintln!(
                    "---- kubelet log (last 60 lines; all of it in {}) ----\n{}",
                    keep.display(),
                    self.kubelet.log_tail(60)
                );
            }
        }
        self.kubelet.kill();
        // berth stops and removes what the kubelet left, then its processes are out of the
        // kubelet's cgroups and those can go.
        drop(self.env.take());
        self.kubelet.remove_cgroups();
    }
}

/// A running kubelet; killed, its mounts and directory removed on drop (its cgroups are
/// removed by [`KubeletEnv`] once berth has removed the pods in them).
pub struct Kubelet {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// The static pod directory.
    pub manifests: PathBuf,
    /// `podLogsDir`.
    pub pod_logs: PathBuf,
    /// The node name (`--hostname-override`); static pods are named `<name>-<node>`.
    pub node: String,
    /// The API port (HTTPS, self-signed).
    pub port: u16,
    /// The healthz port (HTTP).
    pub healthz_port: u16,
    /// `cgroupRoot`, e.g. `/berth-e2e-1a2b3c`.
    pub cgroup_root: String,
    /// The CA of the kubelet's serving certificate (for 127.0.0.1): clients can verify it.
    pub ca: PathBuf,
    config: PathBuf,
    http: reqwest::Client,
    verbosity: u8,
}

/// The cgroup v1 hierarchies mounted under /sys/fs/cgroup (a v2 host has one, "unified").
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        // The comounted aliases (cpu -> cpu,cpuacct) are symlinks; the named `systemd`
        // hierarchy counts (the kubelet checks it too).
        .filter(|p| p.is_dir() && !p.is_symlink())
        .collect();
    if out.is_empty() || Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        out = vec![PathBuf::from("/sys/fs/cgroup")];
    }
    out
}

/// Removes the cgroup directory `dir` and everything below it, deepest first; a process
/// still in one (the kubelet moves processes into its system cgroups) goes back to the root
/// of its hierarchy first.
pub(crate) fn remove_cgroup_tree(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&e.path());
        }
    }
    let root = dir
        .ancestors()
        .find(|a| a.parent() == Some(Path::new("/sys/fs/cgroup")));
    if let (Some(root), Ok(procs)) = (root, std::fs::read_to_string(dir.join("cgroup.procs"))) {
        for pid in procs.lines() {
            let _ = std::fs::write(root.join("cgroup.procs"), pid);
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// The kubelet links every container's log from here (a fixed path, whatever its root dir);
/// a kubelet's garbage collection asks its runtime about every dangling link in it.
const LEGACY_LOG_LINKS: &str = "/var/log/containers";

/// Removes the links in [`LEGACY_LOG_LINKS`] whose target is under `dir`, or, with `None`,
/// under a kubelet test directory that is gone (left by a test run that was killed).
fn remove_log_links(dir: Option<&Path>) {
    let Ok(rd) = std::fs::read_dir(LEGACY_LOG_LINKS) else {
        return;
    };
    for e in rd.flatten() {
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        let ours = match dir {
            Some(d) => target.starts_with(d),
            None => {
                target.starts_with(std::env::temp_dir())
                    && target.components().any(|c| {
                        c.as_os_str()
                            .to_str()
                            .is_some_and(|s| s.starts_with("berth-e2e-kubelet-"))
                    })
                    && !target.exists()
            }
        };
        if ours {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

impl Kubelet {
    /// Starts a kubelet on berth's CRI socket.
    pub fn start(berth_socket: &Path, opts: KubeletOptions) -> anyhow::Result<Self> {
        remove_log_links(None);
        crate::tools::require(&crate::tools::kubelet(), "install-kubelet.sh")?;
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-kubelet-")
            .tempdir()?;
        let tag: String = dir
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("x")
            .trim_start_matches("berth-e2e-kubelet-")
            .to_ascii_lowercase()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let manifests = dir.path().join("manifests");
        let pod_logs = dir.path().join("pods");
        std::fs::create_dir_all(&manifests)?;
        std::fs::create_dir_all(&pod_logs)?;
        let cgroup_root = format!("/berth-e2e-{tag}");
        // The kubelet refuses a cgroupRoot that does not exist in every hierarchy.
        for h in cgroup_hierarchies() {
            std::fs::create_dir_all(h.join(cgroup_root.trim_start_matches('/')))
                .with_context(|| format!("create cgroup {cgroup_root} in {}", h.display()))?;
        }
        let port = crate::free_port();
        let healthz_port = crate::free_port();
        // A serving certificate for 127.0.0.1 (the kubelet's own self-signed one names only
        // the node), so that streaming clients can check whom they talk to.
        let pki = dir.path().join("serving");
        std::fs::create_dir_all(&pki)?;
        let (ca, cert, key) = crate::tls::ca_and_server_cert(&pki);
        let gates: String = opts
            .feature_gates
            .iter()
            .map(|g| format!("  {g}: true\n"))
            .collect();
        let config = dir.path().join("kubelet.yaml");
        std::fs::write(
            &config,
            format!(
                "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: {port}
readOnlyPort: 0
tlsCertFile: {cert}
tlsPrivateKeyFile: {key}
healthzBindAddress: 127.0.0.1
healthzPort: {healthz_port}
staticPodPath: {manifests}
fileCheckFrequency: 1s
syncFrequency: 5s
cgroupDriver: cgroupfs
cgroupRoot: {cgroup_root}
failSwapOn: false
containerRuntimeEndpoint: unix://{socket}
podLogsDir: {pod_logs}
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
evictionHard:
{eviction}
featureGates:
{gates_or_empty}
{extra}
",
                manifests = manifests.display(),
                cert = cert.display(),
                key = key.display(),
                socket = berth_socket.display(),
                pod_logs = pod_logs.display(),
                gates_or_empty = if gates.is_empty() {
                    "  {}".to_string()
                } else {
                    gates
                },
                extra = opts.config,
                eviction = opts.eviction_hard.as_deref().unwrap_or(
                    "  memory.available: 100Mi\n  nodefs.available: 1%\n  imagefs.available: 1%\n  nodefs.inodesFree: 1%"
                ),
            )
            .replace("featureGates:\n  {}", "featureGates: {}"),
        )?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(30))
            .build()?;
        let mut k = Kubelet {
            child: None,
            manifests,
            pod_logs,
            node: format!("berth-e2e-{tag}"),
            port,
            healthz_port,
            cgroup_root,
            ca,
            config,
            http,
            dir,
            verbosity: opts.verbosity.unwrap_or(2),
        };
        if let Err(e) = k.launch() {
            k.kill();
            k.remove_cgroups();
            return Err(e);
        }
        Ok(k)
    }

    /// Starts the process (again), its output appended to `kubelet.log`, and waits for its
    /// healthz.
    pub fn launch(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("kubelet.log"))?;
        let child = Command::new(crate::tools::kubelet())
            .arg("--config")
            .arg(&self.config)
            .arg("--root-dir")
            .arg(self.dir.path().join("root"))
            .arg("--cert-dir")
            .arg(self.dir.path().join("pki"))
            .arg("--hostname-override")
            .arg(&self.node)
            .arg(format!("--v={}", self.verbosity))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start the kubelet")?;
        let pid = child.id();
        self.child = Some(child);
        let url = format!("http://127.0.0.1:{}/healthz", self.healthz_port);
        let up = crate::wait_until(Duration::from_secs(60), || {
            !self.running()
                || std::net::TcpStream::connect(("127.0.0.1", self.healthz_port)).is_ok()
        });
        if !up || !self.running() {
            bail!(
                "the kubelet (pid {pid}) did not serve {url} within 60 s; log:\n{}",
                self.log_tail(80)
            );
        }
        Ok(())
    }

    /// True while the process is alive.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The pid of the kubelet.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The kubelet's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kubelet.log")).unwrap_or_default()
    }

    /// The last `n` lines of its log (the flag dump it starts with left out).
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().filter(|l| !l.contains("flags.go")).collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The kubelet's root directory.
    pub fn root_dir(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Writes the static pod manifest `<name>.json` (the pod will be `<name>-<node>`).
    pub fn add_pod(&self, pod: &Value) -> anyhow::Result<()> {
        let name = pod["metadata"]["name"]
            .as_str()
            .context("a pod manifest needs metadata.name")?;
        // Written aside and renamed: the kubelet must never read half a manifest.
        let tmp = self.dir.path().join(format!(".{name}.json"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(pod)?)?;
        std::fs::rename(&tmp, self.manifests.join(format!("{name}.json")))?;
        Ok(())
    }

    /// Removes the manifest of pod `name`.
    pub fn remove_pod(&self, name: &str) -> anyhow::Result<()> {
        std::fs::remove_file(self.manifests.join(format!("{name}.json")))?;
        Ok(())
    }

    /// The full name the kubelet gives static pod `name`.
    pub fn pod_name(&self, name: &str) -> String {
        format!("{name}-{}", self.node)
    }

    async fn get(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        let url = format!("https://127.0.0.1:{}{path}", self.port);
        let r = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        Ok(r)
    }

    /// GET `path` of the kubelet API as JSON.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let r = self.get(path).await?;
        let status = r.status();
        let body = r.text().await?;
        if !status.is_success() {
            bail!("GET {path}: {status}: {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON: {body}"))
    }

    /// GET `path` of the kubelet API as text, with its HTTP status.
    pub async fn get_text(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let r = self.get(path).await?;
        Ok((r.status().as_u16(), r.text().await?))
    }

    /// The kubelet's `/pods`: the static pods with the statuses it computed.
    pub async fn pods(&self) -> anyhow::Result<Vec<Value>> {
        let v = self.get_json("/pods").await?;
        Ok(v["items"].as_array().cloned().unwrap_or_default())
    }

    /// Static pod `name` as `/pods` shows it.
    pub async fn pod(&self, name: &str) -> anyhow::Result<Option<Value>> {
        let full = self.pod_name(name);
        Ok(self
            .pods()
            .await?
            .into_iter()
            .find(|p| p["metadata"]["name"] == full.as_str()))
    }

    /// Polls `/pods` every 250 ms until `pred` holds for pod `name`; returns that pod.
    pub async fn wait_pod(
        &self,
        name: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let end = tokio::time::Instant::now() + timeout;
        let mut last = None;
        while tokio::time::Instant::now() < end {
            if let Ok(Some(p)) = self.pod(name).await {
                if pred(&p) {
                    return Ok(p);
                }
                last = Some(p);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!(
            "pod {name}: not {what} within {timeout:?}; last seen: {}",
            last.map_or("never".into(), |p| serde_json::to_string_pretty(
                &p["status"]
            )
            .unwrap_or_default())
        )
    }

    /// `/containerLogs/<ns>/<pod>/<ctr>` with `query` (e.g. `tailLines=5`).
    pub async fn container_logs(
        &self,
        name: &str,
        container: &str,
        query: &str,
    ) -> anyhow::Result<String> {
        let (status, body) = self
            .get_text(&format!(
                "/containerLogs/default/{}/{container}?{query}",
                self.pod_name(name)
            ))
            .await?;
        if status != 200 {
            bail!("containerLogs {name}/{container}: {status}: {body}");
        }
        Ok(body)
    }

    /// `/run/<ns>/<pod>/<ctr>?cmd=…`: a command run in the container (ExecSync); its output.
    pub async fn run_in(&self, name: &str, container: &str, cmd: &str) -> anyhow::Result<String> {
        let url = format!(
            "https://127.0.0.1:{}/run/default/{}/{container}?cmd={}",
            self.port,
            self.pod_name(name),
            query_escape(cmd)
        );
        let r = self
            .http
            .post(&url)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = r.status();
        let body = r.text().await?;
        if !status.is_success() {
            bail!("run {cmd:?} in {name}/{container}: {status}: {body}");
        }
        Ok(body)
    }

    /// The kubelet's `/healthz` on its healthz port.
    pub async fn healthz(&self) -> anyhow::Result<String> {
        let url = format!("http://127.0.0.1:{}/healthz", self.healthz_port);
        Ok(self.http.get(&url).send().await?.text().await?)
    }

    /// Lines of the kubelet's log from `from` (a byte offset of [`Self::log`]) on that report
    /// a CRI call failing or a runtime error: what the issue calls bugs of berth's. Left out,
    /// with their reasons:
    /// - "no imagefs label for configured runtime": the eviction manager asks cAdvisor, which
    ///   has labels for CRI-O's image store only (the kubelet logs it with containerd too, and
    ///   ignores it);
    /// - ContainerStatus answering NotFound for a container the kubelet had already removed
    ///   (its pod container deletor removes a dead container once per pod sync and asks
    ///   again; containerd's kubelets log the same: containerd/containerd#8303);
    /// - an exec probe answered FailedPrecondition ("is not running") for a container the
    ///   kubelet had begun to kill: its probe workers run on the status it cached before the
    ///   kill (containerd answers those with an error too);
    /// - "Skipping pod synchronization" in the kubelet's first second, before its first
    ///   runtime status check and PLEG relist ("may not have completed yet", "has yet to be
    ///   successful").
    pub fn runtime_errors_since(&self, from: usize) -> Vec<String> {
        let log = self.log();
        let lines: Vec<&str> = log.get(from..).unwrap_or_default().lines().collect();
        let removed: std::collections::HashSet<&str> = lines
            .iter()
            .filter(|l| l.contains("\"RemoveContainer\""))
            .filter_map(|l| l.split("containerID=\"").nth(1)?.split('"').next())
            .collect();
        let killed: std::collections::HashSet<&str> = lines
            .iter()
            .filter(|l| l.contains("\"Killing container with a grace period\""))
            .filter_map(|l| l.split("containerID=\"").nth(1)?.split('"').next())
            .filter_map(|id| id.rsplit("://").next())
            .collect();
        lines
            .iter()
            .filter(|l| l.starts_with('E') || l.starts_with('W'))
            .filter(|l| {
                !((l.contains("ExecSync cmd from runtime service failed")
                    || l.contains("\"Probe errored\""))
                    && l.contains("code = FailedPrecondition")
                    && l.contains("is not running")
                    && killed.iter().any(|id| l.contains(id)))
            })
            .filter(|l| {
                l.contains("rpc error")
                    || l.contains("remote_runtime")
                    || l.contains("remote_image")
                    || l.contains("CRI")
                    || l.contains("runtime")
            })
            .filter(|l| !l.contains("no imagefs label for configured runtime"))
            .filter(|l| {
                !(l.contains("Skipping pod synchronization")
                    && l.split("err=")
                        .nth(1)
                        .unwrap_or_default()
                        .split(", ")
                        .all(|e| {
                            e.contains("may not have completed yet")
                                || e.contains("has yet to be successful")
                        }))
            })
            .filter(|l| {
                !(l.contains("ContainerStatus from runtime service failed")
                    && l.contains("code = NotFound")
                    && removed.iter().any(|id| l.contains(id)))
            })
            .map(|l| l.to_string())
            .collect()
    }

    /// Fails the test with every line [`Self::runtime_errors_since`] finds.
    pub fn assert_no_runtime_errors_since(&self, from: usize) {
        let errors = self.runtime_errors_since(from);
        assert!(
            errors.is_empty(),
            "the kubelet logged runtime errors:\n{}",
            errors.join("\n")
        );
    }

    /// Removes the kubelet's cgroup root, deepest first (call once its pods are gone).
    pub fn remove_cgroups(&self) {
        for h in cgroup_hierarchies() {
            remove_cgroup_tree(&h.join(self.cgroup_root.trim_start_matches('/')));
        }
    }

    /// The path of pod `uid`'s cgroup under `hierarchy` (e.g. "memory") for `qos` ("guaranteed"
    /// pods sit directly under kubepods; "burstable" and "besteffort" have their own level).
    pub fn pod_cgroup(&self, hierarchy: &str, qos: &str, uid: &str) -> PathBuf {
        let mut p = Path::new("/sys/fs/cgroup")
            .join(hierarchy)
            .join(self.cgroup_root.trim_start_matches('/'))
            .join("kubepods");
        if qos != "guaranteed" {
            p = p.join(qos);
        }
        p.join(format!("pod{uid}"))
    }
}

/// `s` percent-encoded for a URL query value.
pub fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What a kubelet leaves at fixed host paths whatever its root dir: its device plugin socket
/// (and the directories made for it). Removed only when no other kubelet runs here; the
/// directories only when empty.
fn remove_fixed_paths() {
    let others = std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten().any(|e| {
                std::fs::read_link(e.path().join("exe"))
                    .is_ok_and(|x| x.file_name().is_some_and(|n| n == "kubelet"))
            })
        })
        .unwrap_or(false);
    if others {
        return;
    }
    let _ = std::fs::remove_file("/var/lib/kubelet/device-plugins/kubelet.sock");
    let _ = std::fs::remove_dir("/var/lib/kubelet/device-plugins");
    let _ = std::fs::remove_dir("/var/lib/kubelet");
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.kill();
        remove_log_links(Some(self.dir.path()));
        remove_fixed_paths();
        crate::unmount_under(self.dir.path());
    }
}

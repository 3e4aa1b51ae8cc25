//! What a run changes on the host outside its own directories: the runtime's cgroup, the
//! kubelet's root, cgroups and pod logs, and a `PATH` the suite can use here.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::KUBELET_ROOT;

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
pub fn in_runtime_cgroup<T>(start: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
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

pub fn remove_runtime_cgroup() {
    for (dir, _) in own_cgroups() {
        crate::kubelet::remove_cgroup_tree(&dir.join(RUNTIME_CGROUP));
    }
}

/// A directory for `PATH` holding every command of `PATH` but `systemd-run`: where the suite
/// finds `systemd-run` it starts the kubelet through it, which fails on a machine whose PID
/// 1 is not systemd.
pub fn path_without_systemd_run(dir: &Path) -> anyhow::Result<String> {
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
#[derive(Debug, Default, PartialEq)]
pub struct HostState {
    /// Whether the kubelet's root was there.
    pub kubelet_root_existed: bool,
    /// The kubelet's cgroups that were there.
    pub cgroups: Vec<PathBuf>,
    /// What was in the kubelet's fixed log directories.
    pub logs: Vec<PathBuf>,
    /// The named network namespaces there were.
    pub netns: Vec<String>,
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

/// Those of [`KUBELET_CGROUPS`] that hold only what the run started.
const RUN_OWN_CGROUPS: [&str; 2] = ["kubepods", "kubelet"];

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

/// Where `ip netns` keeps named network namespaces (containerd's pods' among them).
const NETNS_DIR: &str = "/run/netns";

/// A runtime's pods' network namespaces, by the name containerd and CRI-O give them.
fn is_pod_netns(name: &str) -> bool {
    name.starts_with("cni-")
}

fn named_netns() -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// The cgroups whose processes are the run's own, there and not in `before`: the pods'
/// (`kubepods`), the kubelet's, and the runtime's with its shims. Never the kubelet's
/// `system` cgroup: without systemd the kubelet moves every process of the root cgroup into
/// it, the host's own and whoever started the run among them.
pub fn cgroups_of_the_run(before: &HostState) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = top_cgroups()
        .into_iter()
        .filter(|c| !before.cgroups.contains(c))
        .filter(|c| {
            c.file_name()
                .is_some_and(|n| RUN_OWN_CGROUPS.iter().any(|o| n == *o))
        })
        .collect();
    v.extend(
        own_cgroups()
            .into_iter()
            .map(|(dir, _)| dir.join(RUNTIME_CGROUP))
            .filter(|c| c.is_dir()),
    );
    v
}

/// The processes in the cgroups `dirs` and their descendants.
pub fn processes_in(dirs: &[PathBuf]) -> Vec<u32> {
    fn walk(dir: &Path, out: &mut Vec<u32>) {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            out.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), out);
            }
        }
    }
    let mut out = Vec::new();
    for d in dirs {
        walk(d, &mut out);
    }
    out.sort_unstable();
    out.dedup();
    out
}

impl HostState {
    /// The host as it is now.
    pub fn note() -> Self {
        HostState {
            kubelet_root_existed: Path::new(KUBELET_ROOT).exists(),
            cgroups: top_cgroups(),
            logs: kubelet_logs(),
            netns: named_netns(),
        }
    }

    /// Unmounts what the kubelet left mounted; removes its root and cgroups if the run made
    /// them (a cgroup only once empty: its processes moved back to the root first), and the
    /// pods' network namespaces a runtime left.
    pub fn restore(&self) {
        for n in named_netns() {
            if is_pod_netns(&n) && !self.netns.contains(&n) {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "delete", &n])
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
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

//! Removing what no record owns: what a crash of berth (or a rollback that itself failed)
//! left behind. Runs once recovery has reconciled every pod, and then periodically.
//!
//! What berth makes for a pod or container is always made after its id is reserved (the
//! registrar) and removed before the id is released, so anything found on disk or in `/proc`
//! whose id is neither a record nor reserved is an orphan. Each sweep lists what is there
//! first and asks for the known ids second: an object made in between is reserved by then.
//!
//! An orphan is, with what is done to it:
//! - a shim daemon of this berth (its `-address`) working in no known pod's bundle, nor in the
//!   spare's: killed, its socket removed;
//! - a runc (or runsc) container in a handler's runtime root: `delete --force`, which kills
//!   its processes and removes its cgroup and state;
//! - a pod or container directory under the state dir: its mounts unmounted, then removed;
//! - a cached CNI result: DEL with what ADD was given (the IP lease is released), then removed;
//! - a pinned network namespace: unpinned;
//! - a container or pod snapshot: removed;
//! - a spare shim directory of an earlier berth: removed;
//! - an empty cgroup named like an id under berth's cgroup parents: removed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::runtime::Runtime;
use crate::shim;

/// How often the sweep runs after the first one.
pub(crate) const REAP_INTERVAL: Duration = Duration::from_secs(600);
/// How long one `runc delete` may take.
const RUNTIME_DELETE_TIMEOUT: Duration = Duration::from_secs(10);

fn orphan(what: &str, name: &str, why: &str) {
    tracing::warn!(what, name, why, "removed an orphan");
}

fn dir_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A shim process of this berth.
struct ShimProcess {
    pid: i32,
    /// Its working directory (a daemon's is its bundle).
    cwd: Option<PathBuf>,
}

/// What process `pid` is to this berth, by its command line: a shim started with
/// `-address <address>` and `-namespace <namespace>`, and whether it is a `start`/`delete`
/// helper (short-lived, berth's child) rather than the daemon.
fn shim_role(pid: i32, namespace: &str, address: &[u8]) -> Option<bool> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .collect();
    let has = |flag: &[u8], value: &[u8]| args.windows(2).any(|w| w[0] == flag && w[1] == value);
    (has(b"-address", address) && has(b"-namespace", namespace.as_bytes())).then(|| {
        args.last()
            .is_some_and(|a| *a == b"start" || *a == b"delete")
    })
}

fn pids() -> impl Iterator<Item = i32> {
    dir_names(Path::new("/proc"))
        .into_iter()
        .filter_map(|p| p.parse::<i32>().ok())
}

/// The shim daemons started with `-address <address>` and `-namespace <namespace>`.
fn shim_daemons(namespace: &str, address: &Path) -> Vec<ShimProcess> {
    let address = address.as_os_str().as_encoded_bytes();
    pids()
        .filter(|pid| shim_role(*pid, namespace, address) == Some(false))
        .map(|pid| ShimProcess {
            pid,
            cwd: std::fs::read_link(format!("/proc/{pid}/cwd")).ok(),
        })
        .collect()
}

/// Kills shim daemon `pid` and removes the sockets it listened on.
fn kill_shim_daemon(pid: i32) {
    let sockets = unix_sockets_of(pid);
    kill_and_wait(pid);
    for s in sockets {
        shim::remove_dead_socket(&format!("unix://{}", s.display()));
    }
}

/// The paths of the unix sockets process `pid` holds.
fn unix_sockets_of(pid: i32) -> Vec<PathBuf> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let l = std::fs::read_link(e.path()).ok()?;
                    let l = l.to_str()?;
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    std::fs::read_to_string("/proc/net/unix")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Num RefCount Protocol Flags Type St Inode [Path]
            let (inode, path) = (f.get(6)?, f.get(7)?);
            (inodes.contains(*inode) && path.starts_with('/')).then(|| PathBuf::from(path))
        })
        .collect()
}

/// Kills process `pid` (found just before by its command line or directory) and waits up
/// to 2 s.
fn kill_and_wait(pid: i32) {
    crate::process::kill_checked(pid, || true, Duration::from_secs(2));
}

/// The pod id process `pid` runs a CNI plugin for, if it is one of `pod_ids`.
fn cni_plugin_of(pid: i32, pod_ids: &HashSet<String>) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
    if !vars.iter().any(|v| v.starts_with(b"CNI_COMMAND=")) {
        return None;
    }
    vars.iter()
        .find_map(|v| v.strip_prefix(b"CNI_CONTAINERID="))
        .and_then(|id| std::str::from_utf8(id).ok())
        .filter(|id| pod_ids.contains(*id))
        .map(str::to_string)
}

/// Unmounts `path` (detached) if it is a mount point.
fn unmount(path: &Path) {
    let _ = crate::pod::unmount(path);
}

impl Runtime {
    /// Every id berth knows: pods and containers, recorded or being made.
    fn known_ids(&self) -> HashSet<String> {
        let mut ids: HashSet<String> = self.pod_ids().into_iter().collect();
        ids.extend(self.containers().ids());
        ids.extend(self.pods().names().keys());
        ids.extend(self.containers().names().keys());
        ids
    }

    /// Runs the first sweep (ending recovery), then one every [`REAP_INTERVAL`].
    pub(crate) async fn reap_orphans(&self) {
        self.sweep().await;
        self.recovered_one();
        let me = self.me();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REAP_INTERVAL).await;
                let Some(m) = me.upgrade() else { return };
                m.sweep().await;
            }
        });
    }

    /// One pass over everything an orphan could be.
    pub(crate) async fn sweep(&self) {
        let started = std::time::Instant::now();
        self.sweep_shims().await;
        self.sweep_runtime_state().await;
        self.sweep_cni().await;
        self.sweep_dirs().await;
        self.sweep_idmap_views().await;
        self.sweep_idmap_binds().await;
        self.sweep_snapshots();
        self.sweep_cgroups().await;
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "orphan sweep done"
        );
    }

    /// Shim daemons working in no known pod's bundle, and spare directories other than the
    /// current spare's. Skipped while a spare is being started (its shim is not known yet).
    async fn sweep_shims(&self) {
        let Some(spare) = self.spare_guard() else {
            tracing::debug!("a spare shim is starting; shims are swept next time");
            return;
        };
        let spare_dir = spare.as_ref().map(|s| s.dir.clone());
        let (ns, address) = (
            self.shim_env().namespace.clone(),
            self.shim_env().grpc_address.clone(),
        );
        let daemons = tokio::task::spawn_blocking(move || shim_daemons(&ns, &address))
            .await
            .unwrap_or_default();
        let known = self.known_ids();
        // /proc shows working directories with every symbolic link resolved.
        let state = std::fs::canonicalize(self.state_dir())
            .unwrap_or_else(|_| self.state_dir().to_path_buf());
        let sandboxes = state.join("sandboxes");
        let spare_dir =
            spare_dir.map(|d| state.join(d.strip_prefix(self.state_dir()).unwrap_or(&d)));
        let owned = |cwd: &Path| -> bool {
            if let Some(spare) = &spare_dir
                && cwd.starts_with(spare)
            {
                return true;
            }
            cwd.strip_prefix(&sandboxes)
                .ok()
                .and_then(|rest| rest.iter().next())
                .and_then(|id| id.to_str())
                .is_some_and(|id| known.contains(id))
        };
        for d in daemons {
            // A cwd that is gone (" (deleted)") or elsewhere is no pod's.
            if d.cwd.as_deref().is_some_and(owned) {
                continue;
            }
            let pid = d.pid;
            let cwd = d.cwd.clone();
            let _ = tokio::task::spawn_blocking(move || kill_shim_daemon(pid)).await;
            orphan(
                "shim",
                &format!("pid {pid} in {}", cwd.unwrap_or_default().display()),
                "it serves no pod berth knows",
            );
        }
        let spares = state.join("spare");
        for name in dir_names(&spares) {
            let dir = spares.join(&name);
            if spare_dir.as_ref() != Some(&dir) {
                let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
                orphan("spare shim directory", &name, "an earlier berth's spare");
            }
        }
    }

    /// Kills every shim daemon of this berth working in `bundle` (and removes its socket).
    pub(crate) async fn kill_daemons_in(&self, bundle: &Path) {
        let (ns, address) = (
            self.shim_env().namespace.clone(),
            self.shim_env().grpc_address.clone(),
        );
        let bundle = std::fs::canonicalize(bundle).unwrap_or_else(|_| bundle.to_path_buf());
        let _ = tokio::task::spawn_blocking(move || {
            for d in shim_daemons(&ns, &address) {
                if d.cwd.as_deref() == Some(bundle.as_path()) {
                    kill_shim_daemon(d.pid);
                    tracing::warn!(pid = d.pid, bundle = %bundle.display(), "killed a shim berth had no connection to");
                }
            }
        })
        .await;
    }

    /// Kills what an earlier berth left running as its children, in one pass over `/proc`:
    /// `shim start` and `shim delete` helpers (one could still start a shim daemon after the
    /// sweep looked) and CNI plugins working for one of `pod_ids` (an ADD that finished after
    /// berth ran the pod's DEL would hold its IP for ever). Each is waited for (2 s at most).
    pub(crate) fn kill_leftover_children(&self, pod_ids: &HashSet<String>) {
        let address = self.shim_env().grpc_address.as_os_str().as_encoded_bytes();
        let ns = &self.shim_env().namespace;
        for pid in pids() {
            if shim_role(pid, ns, address) == Some(true) {
                if crate::process::kill_checked(
                    pid,
                    || shim_role(pid, ns, address) == Some(true),
                    Duration::from_secs(2),
                ) {
                    tracing::warn!(pid, "killed a shim helper an earlier berth left running");
                }
            } else if !pod_ids.is_empty()
                && let Some(id) = cni_plugin_of(pid, pod_ids)
                && crate::process::kill_checked(
                    pid,
                    || cni_plugin_of(pid, pod_ids).is_some(),
                    Duration::from_secs(2),
                )
            {
                tracing::warn!(
                    pid,
                    container = id,
                    "killed a CNI plugin an earlier berth left running"
                );
            }
        }
    }

    /// Containers the OCI runtimes hold under each handler's root that no record owns.
    pub(crate) async fn sweep_runtime_state(&self) {
        let ns = self.shim_env().namespace.clone();
        let mut roots: Vec<(PathBuf, String)> = Vec::new();
        for h in self.handlers().values() {
            let Some(root) = &h.options.root else {
                continue;
            };
            let dir = Path::new(root).join(&ns);
            let bin = h
                .options
                .binary_name
                .clone()
                .unwrap_or_else(|| "runc".into());
            if !roots.iter().any(|(d, _)| *d == dir) {
                roots.push((dir, bin));
            }
        }
        for (dir, bin) in roots {
            let candidates = dir_names(&dir);
            if candidates.is_empty() {
                continue;
            }
            let known = self.known_ids();
            for id in candidates.into_iter().filter(|i| !known.contains(i)) {
                let out = tokio::time::timeout(
                    RUNTIME_DELETE_TIMEOUT,
                    tokio::process::Command::new(&bin)
                        .arg("--root")
                        .arg(&dir)
                        .args(["delete", "--force", &id])
                        .kill_on_drop(true)
                        .output(),
                )
                .await;
                match out {
                    Ok(Ok(o)) if o.status.success() => {
                        orphan("runtime container", &id, "no record owns it");
                    }
                    Ok(Ok(o)) => tracing::warn!(
                        container = id,
                        root = %dir.display(),
                        err = %String::from_utf8_lossy(&o.stderr).trim(),
                        "could not delete an orphaned runtime container"
                    ),
                    Ok(Err(e)) => {
                        tracing::warn!(container = id, err = %e, "could not run {bin} delete")
                    }
                    Err(_) => tracing::warn!(container = id, "{bin} delete did not finish in time"),
                }
            }
        }
    }

    /// Cached CNI results and pinned namespaces of pods berth does not know.
    async fn sweep_cni(&self) {
        let cached = self.cni().cached_attachments();
        let known = self.known_ids();
        for (id, ifname) in cached.into_iter().filter(|(i, _)| !known.contains(i)) {
            match self.cni().del_cached(&id, &ifname).await {
                Ok(()) => orphan(
                    "CNI attachment",
                    &id,
                    "no pod owns it (its lease is released)",
                ),
                Err(e) => {
                    tracing::warn!(pod = id, err = %e, "CNI DEL of an orphaned attachment failed; tried again at the next sweep")
                }
            }
        }
        let dir = self.state_dir().join("netns");
        let names = dir_names(&dir);
        let known = self.known_ids();
        for name in names {
            let prefix = name.strip_prefix("cni-").unwrap_or(&name);
            if known.iter().any(|id| id.starts_with(prefix)) {
                continue;
            }
            match berth_network::netns::remove_path(&dir.join(&name)) {
                Ok(()) => orphan("network namespace", &name, "no pod owns it"),
                Err(e) => {
                    tracing::warn!(netns = name, err = %e, "could not remove an orphaned network namespace")
                }
            }
        }
    }

    /// Pod and container directories under the state dir without an owner.
    async fn sweep_dirs(&self) {
        for (kind, sub, mounts) in [
            ("pod directory", "sandboxes", &["bundle/rootfs", "shm"][..]),
            ("container directory", "containers", &["bundle/rootfs"][..]),
        ] {
            let parent = self.state_dir().join(sub);
            let names = dir_names(&parent);
            let known = self.known_ids();
            for name in names.into_iter().filter(|n| is_id(n) && !known.contains(n)) {
                let dir = parent.join(&name);
                let mounts: Vec<PathBuf> = mounts.iter().map(|m| dir.join(m)).collect();
                let removed = tokio::task::spawn_blocking(move || {
                    crate::container::volumes::unmount_image_volumes(&dir);
                    mounts.iter().for_each(|m| unmount(m));
                    std::fs::remove_dir_all(&dir)
                })
                .await;
                match removed {
                    Ok(Ok(())) => orphan(kind, &name, "no record owns it"),
                    Ok(Err(e)) => {
                        tracing::warn!(name, err = %e, "could not remove an orphaned {kind}")
                    }
                    Err(_) => {}
                }
            }
        }
    }

    /// Idmapped views of the layers (pods in user namespaces) whose pod is gone: detached,
    /// never recursed into.
    async fn sweep_idmap_views(&self) {
        let parent = self.state_dir().join("idmap");
        let names = dir_names(&parent);
        if names.is_empty() {
            return;
        }
        let known = self.known_ids();
        for name in names {
            if known.iter().any(|id| id.starts_with(&name)) {
                continue;
            }
            let at = parent.join(&name);
            let released =
                tokio::task::spawn_blocking(move || crate::userns::release_layers_view(&at)).await;
            match released {
                Ok(Ok(())) => orphan("idmapped layer view", &name, "its pod is gone"),
                Ok(Err(e)) => {
                    tracing::warn!(name, err = %e, "could not release an orphaned idmapped view")
                }
                Err(_) => {}
            }
        }
    }

    /// Idmapped binds staged for containers berth does not know (a berth that died while
    /// creating one, before its record was written).
    async fn sweep_idmap_binds(&self) {
        let parent = crate::userns::binds::parent(self.state_dir());
        let names = dir_names(&parent);
        if names.is_empty() {
            return;
        }
        let known = self.known_ids();
        for name in names.into_iter().filter(|n| !known.contains(n)) {
            let at = parent.join(&name);
            let released =
                tokio::task::spawn_blocking(move || crate::userns::binds::release(&at)).await;
            match released {
                Ok(Ok(())) => orphan("idmapped binds", &name, "no container owns them"),
                Ok(Err(e)) => {
                    tracing::warn!(name, err = %e, "could not release orphaned idmapped binds")
                }
                Err(_) => {}
            }
        }
    }

    /// Writable snapshots of pods and containers berth does not know.
    fn sweep_snapshots(&self) {
        let Ok(active) = self.images().snapshots().active() else {
            return;
        };
        let known = self.known_ids();
        // An image volume's view belongs to its container.
        let owned = |k: &str| known.contains(crate::container::volumes::owner_of(k));
        for (key, _) in active.into_iter().filter(|(k, _)| !owned(k)) {
            match self.images().snapshots().remove_active(&key) {
                Ok(()) => orphan("snapshot", &key, "no pod or container owns it"),
                Err(e) => {
                    tracing::warn!(snapshot = key, err = %e, "could not remove an orphaned snapshot")
                }
            }
        }
    }

    /// Empty cgroups named like a berth id under the cgroup parents berth uses (its default
    /// and every known pod's), on every hierarchy.
    async fn sweep_cgroups(&self) {
        let mut parents: HashSet<String> = HashSet::from(["/k8s.io".to_string()]);
        parents.extend(self.pod_cgroup_parents());
        let candidates = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let root = Path::new("/sys/fs/cgroup");
            // cgroup v1: one hierarchy per controller directory; v2: the root itself.
            let mut hierarchies = vec![root.to_path_buf()];
            hierarchies.extend(dir_names(root).into_iter().map(|d| root.join(d)));
            for h in hierarchies {
                for p in &parents {
                    let dir = h.join(p.trim_start_matches('/'));
                    for name in dir_names(&dir).into_iter().filter(|n| is_id(n)) {
                        out.push((name.clone(), dir.join(name)));
                    }
                }
            }
            out
        })
        .await
        .unwrap_or_default();
        if candidates.is_empty() {
            return;
        }
        let known = self.known_ids();
        let orphans: Vec<(String, PathBuf)> = candidates
            .into_iter()
            .filter(|(id, _)| !known.contains(id))
            .collect();
        let _ = tokio::task::spawn_blocking(move || {
            for (id, path) in orphans {
                // rmdir removes only an empty cgroup; one with processes stays.
                if std::fs::remove_dir(&path).is_ok() {
                    orphan(
                        "cgroup",
                        &path.display().to_string(),
                        &format!("no container {id} exists"),
                    );
                }
            }
        })
        .await;
    }
}

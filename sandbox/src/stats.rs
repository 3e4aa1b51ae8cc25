//! Resource usage of a container: its cgroup's (read by `berth-cgroups`), its processes'
//! start time, its writable layer's.

use std::path::Path;

/// One sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Cumulative CPU time (ns).
    pub cpu_ns: u64,
    /// Memory usage (bytes).
    pub memory_usage: u64,
    /// Working set: usage minus inactive file pages.
    pub working_set: u64,
    /// Anonymous + swap-cache RSS.
    pub rss: u64,
    /// Page faults.
    pub page_faults: u64,
    /// Major page faults.
    pub major_page_faults: u64,
}

use berth_cgroups::{read_cgroup, stat_field};

/// When process `pid` started (ns since the epoch), from `/proc` (to the clock tick).
pub fn process_start_ns(pid: u32) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields resume after its last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // Field 22 (starttime), the 20th after the name.
    let ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let btime: i64 = stat_field(&boot, "btime")?.try_into().ok()?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    let since_boot_ns = i64::try_from(ticks.checked_mul(1_000_000_000)? / hz).ok()?;
    btime.checked_mul(1_000_000_000)?.checked_add(since_boot_ns)
}

/// Reads the usage of the cgroup at `cgroups_path` (as in the OCI spec, e.g.
/// `/k8s.io/<id>`), under `root` (normally `/sys/fs/cgroup`): what ContainerStats reports.
pub fn cgroup_usage(root: &Path, cgroups_path: &str) -> Option<Usage> {
    read_cgroup(root, cgroups_path).map(|c| Usage {
        cpu_ns: c.cpu_ns,
        memory_usage: c.memory,
        working_set: c.memory.saturating_sub(c.inactive_file),
        rss: c.rss,
        page_faults: c.page_faults,
        major_page_faults: c.major_page_faults,
    })
}

/// Removes the cgroup at `cgroups_path` (as in the OCI spec) from every hierarchy under `root`
/// where it is empty; one with processes in it stays. runc removes a container's cgroups when
/// it deletes the container, but not those of a `runc create` that was killed half-way.
/// Blocking: a few `rmdir`s.
pub fn remove_cgroup(root: &Path, cgroups_path: &str) {
    let rel = cgroups_path.trim_start_matches('/');
    if rel.is_empty() || rel.split('/').any(|c| c == ".." || c == ".") {
        return;
    }
    let mut hierarchies = vec![root.to_path_buf()];
    if let Ok(rd) = std::fs::read_dir(root) {
        hierarchies.extend(rd.flatten().map(|e| e.path()));
    }
    for h in hierarchies {
        let dir = h.join(rel);
        match std::fs::remove_dir(&dir) {
            Ok(()) => tracing::debug!(cgroup = %dir.display(), "removed a cgroup runc left"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::debug!(cgroup = %dir.display(), err = %e, "cannot remove cgroup"),
        }
    }
}

/// Bytes and inodes used under `dir` (not following symlinks, not crossing mounts).
pub fn dir_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(root) = std::fs::symlink_metadata(dir) else {
        return (0, 0);
    };
    let dev = root.dev();
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            inodes += 1;
            bytes += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (bytes, inodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_start_time_is_when_it_started() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let at = process_start_ns(child.id());
        let _ = child.kill();
        let _ = child.wait();
        let at = at.expect("a live process has a start time");
        // btime is whole seconds and starttime whole ticks: allow a second either way.
        assert!(
            (at - before).abs() < 1_000_000_000,
            "started {at}, spawned after {before}"
        );
        assert_eq!(process_start_ns(u32::MAX), None);
    }

    #[test]
    fn v1_and_v2_layouts() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("cpuacct/k8s.io/c1")).unwrap();
        std::fs::create_dir_all(r.join("memory/k8s.io/c1")).unwrap();
        std::fs::write(r.join("cpuacct/k8s.io/c1/cpuacct.usage"), "12345\n").unwrap();
        std::fs::write(r.join("memory/k8s.io/c1/memory.usage_in_bytes"), "1000\n").unwrap();
        std::fs::write(
            r.join("memory/k8s.io/c1/memory.stat"),
            "cache 1\ntotal_inactive_file 300\ntotal_rss 600\ntotal_pgfault 7\n",
        )
        .unwrap();
        let u = cgroup_usage(r, "/k8s.io/c1").unwrap();
        assert_eq!(
            (
                u.cpu_ns,
                u.memory_usage,
                u.working_set,
                u.rss,
                u.page_faults
            ),
            (12345, 1000, 700, 600, 7)
        );
        assert!(cgroup_usage(r, "/k8s.io/none").is_none());

        let d2 = tempfile::tempdir().unwrap();
        let r2 = d2.path();
        std::fs::create_dir_all(r2.join("k8s.io/c1")).unwrap();
        std::fs::write(r2.join("k8s.io/c1/cgroup.controllers"), "cpu memory\n").unwrap();
        std::fs::write(r2.join("k8s.io/c1/cpu.stat"), "usage_usec 5\nuser_usec 3\n").unwrap();
        std::fs::write(r2.join("k8s.io/c1/memory.current"), "2000\n").unwrap();
        std::fs::write(
            r2.join("k8s.io/c1/memory.stat"),
            "anon 900\ninactive_file 500\n",
        )
        .unwrap();
        let u = cgroup_usage(r2, "/k8s.io/c1").unwrap();
        assert_eq!((u.cpu_ns, u.working_set, u.rss), (5000, 1500, 900));
    }
}

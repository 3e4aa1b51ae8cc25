//! Reading cgroups, for berth and its shim: a cgroup's counters (CPU, memory, pids, I/O) on
//! a v1 host (one hierarchy per controller, hybrid hosts included) or a v2 one, and the
//! processes in it. The one place cgroup files are read; what each caller
//! makes of the counters (CRI stats, Prometheus-style metrics, containerd's metrics
//! messages) is its own.
#![warn(missing_docs)]

use std::collections::HashMap;
use std::path::Path;

/// A cgroup file's text, or nothing (the cgroup or its controller is not there).
pub fn read_text(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// A number from a cgroup file (`max` and what cannot be read: `None`).
pub fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// A `key value` line's value (memory.stat, cpu.stat, cpuacct.stat, memory.events).
pub fn stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Every `key value` line of a cgroup file.
pub fn read_kv(p: &Path) -> HashMap<String, u64> {
    read_text(p)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

fn num(p: &Path) -> u64 {
    read_u64(p).unwrap_or(0)
}

fn field(text: &str, key: &str) -> u64 {
    stat_field(text, key).unwrap_or(0)
}

fn read(p: &Path) -> String {
    read_text(p)
}

/// `pids.max`: a number or `max`.
fn pids_max(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// Nanoseconds per clock tick (cpuacct.stat counts ticks).
fn tick_ns() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1_000_000_000 / u64::try_from(hz).unwrap_or(100).max(1)
}

/// A cgroup's counters (v1 controllers or the v2 unified hierarchy).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cgroup {
    /// CPU time, total, user and system (ns).
    pub cpu_ns: u64,
    /// User CPU time (ns).
    pub cpu_user_ns: u64,
    /// System CPU time (ns).
    pub cpu_system_ns: u64,
    /// CFS periods elapsed.
    pub periods: u64,
    /// CFS periods throttled.
    pub throttled_periods: u64,
    /// Time throttled (ns).
    pub throttled_ns: u64,
    /// Memory usage, page cache included.
    pub memory: u64,
    /// Inactive page cache.
    pub inactive_file: u64,
    /// Highest usage.
    pub memory_max: u64,
    /// Page cache.
    pub cache: u64,
    /// Anonymous memory.
    pub rss: u64,
    /// Mapped files.
    pub mapped_file: u64,
    /// Swap.
    pub swap: u64,
    /// Kernel memory.
    pub kernel: u64,
    /// Times the limit was hit.
    pub failcnt: u64,
    /// Page faults (every one, the major ones included).
    pub page_faults: u64,
    /// Major page faults.
    pub major_page_faults: u64,
    /// OOM kills.
    pub oom_kills: u64,
    /// The pids limit (None: unlimited).
    pub pids_max: Option<u64>,
}

/// Reads the cgroup at `rel` (the spec's `cgroupsPath`) under `root` (`/sys/fs/cgroup`);
/// None when it is not there (the container is gone).
pub fn read_cgroup(root: &Path, rel: &str) -> Option<Cgroup> {
    let rel = rel.trim_start_matches('/');
    if rel.split('/').any(|c| c == "..") {
        return None;
    }
    let unified = root.join(rel);
    if !root.join("memory").exists() {
        let cpu = std::fs::read_to_string(unified.join("cpu.stat")).ok()?;
        let mem = read(&unified.join("memory.stat"));
        let events = read(&unified.join("memory.events"));
        let usage = num(&unified.join("memory.current"));
        return Some(Cgroup {
            cpu_ns: field(&cpu, "usage_usec") * 1000,
            cpu_user_ns: field(&cpu, "user_usec") * 1000,
            cpu_system_ns: field(&cpu, "system_usec") * 1000,
            periods: field(&cpu, "nr_periods"),
            throttled_periods: field(&cpu, "nr_throttled"),
            throttled_ns: field(&cpu, "throttled_usec") * 1000,
            memory: usage,
            inactive_file: field(&mem, "inactive_file"),
            memory_max: num(&unified.join("memory.peak")).max(usage),
            cache: field(&mem, "file"),
            rss: field(&mem, "anon"),
            mapped_file: field(&mem, "file_mapped"),
            swap: num(&unified.join("memory.swap.current")),
            kernel: field(&mem, "kernel"),
            failcnt: field(&events, "max"),
            page_faults: field(&mem, "pgfault"),
            major_page_faults: field(&mem, "pgmajfault"),
            oom_kills: field(&events, "oom_kill"),
            pids_max: pids_max(&read(&unified.join("pids.max"))),
        });
    }
    let h = |c: &str| root.join(c).join(rel);
    let cpu_ns = read_u64(&h("cpuacct").join("cpuacct.usage"))?;
    // cpuacct.stat is in clock ticks.
    let ticks = read(&h("cpuacct").join("cpuacct.stat"));
    let tick_ns = tick_ns();
    let cpu = read(&h("cpu").join("cpu.stat"));
    let mem = read(&h("memory").join("memory.stat"));
    let m = |f: &str| num(&h("memory").join(f));
    let memsw = m("memory.memsw.usage_in_bytes");
    let usage = m("memory.usage_in_bytes");
    Some(Cgroup {
        cpu_ns,
        cpu_user_ns: field(&ticks, "user") * tick_ns,
        cpu_system_ns: field(&ticks, "system") * tick_ns,
        periods: field(&cpu, "nr_periods"),
        throttled_periods: field(&cpu, "nr_throttled"),
        throttled_ns: field(&cpu, "throttled_time"),
        memory: usage,
        inactive_file: field(&mem, "total_inactive_file"),
        memory_max: m("memory.max_usage_in_bytes"),
        cache: field(&mem, "total_cache"),
        rss: field(&mem, "total_rss"),
        mapped_file: field(&mem, "total_mapped_file"),
        swap: memsw.saturating_sub(usage),
        kernel: m("memory.kmem.usage_in_bytes"),
        failcnt: m("memory.failcnt"),
        page_faults: field(&mem, "total_pgfault"),
        major_page_faults: field(&mem, "total_pgmajfault"),
        oom_kills: field(&read(&h("memory").join("memory.oom_control")), "oom_kill"),
        pids_max: pids_max(&read(&h("pids").join("pids.max"))),
    })
}

/// One block device's I/O by a cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceIo {
    /// Device major and minor numbers.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Reads.
    pub reads: u64,
    /// Writes.
    pub writes: u64,
}

/// Adds `value` to the `major:minor` entry of `out`.
fn device_entry(out: &mut Vec<DeviceIo>, dev: &str) -> Option<usize> {
    let (ma, mi) = dev.split_once(':')?;
    let (major, minor) = (ma.parse().ok()?, mi.parse().ok()?);
    Some(
        match out
            .iter()
            .position(|d| (d.major, d.minor) == (major, minor))
        {
            Some(i) => i,
            None => {
                out.push(DeviceIo {
                    major,
                    minor,
                    ..Default::default()
                });
                out.len() - 1
            }
        },
    )
}

/// cgroup v1 `blkio.throttle.io_service_bytes` and `…io_serviced` (`8:0 Read 4096` lines).
pub fn parse_blkio_v1(bytes: &str, ops: &str) -> Vec<DeviceIo> {
    let mut out = Vec::new();
    for (text, is_bytes) in [(bytes, true), (ops, false)] {
        for l in text.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [dev, op, v] = f[..] else { continue };
            let Some(i) = device_entry(&mut out, dev) else {
                continue;
            };
            let v: u64 = v.parse().unwrap_or(0);
            let d = &mut out[i];
            match (op, is_bytes) {
                ("Read", true) => d.read_bytes = v,
                ("Write", true) => d.write_bytes = v,
                ("Read", false) => d.reads = v,
                ("Write", false) => d.writes = v,
                _ => {}
            }
        }
    }
    out
}

/// cgroup v2 `io.stat` (`8:0 rbytes=… wbytes=… rios=… wios=…` lines).
pub fn parse_io_stat(text: &str) -> Vec<DeviceIo> {
    let mut out = Vec::new();
    for l in text.lines() {
        let mut f = l.split_whitespace();
        let Some(i) = f.next().and_then(|dev| device_entry(&mut out, dev)) else {
            continue;
        };
        for kv in f {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let v: u64 = v.parse().unwrap_or(0);
            let d = &mut out[i];
            match k {
                "rbytes" => d.read_bytes = v,
                "wbytes" => d.write_bytes = v,
                "rios" => d.reads = v,
                "wios" => d.writes = v,
                _ => {}
            }
        }
    }
    out
}

/// The I/O of the cgroup at `rel` per block device.
pub fn read_io(root: &Path, rel: &str) -> Vec<DeviceIo> {
    let rel = rel.trim_start_matches('/');
    if rel.split('/').any(|c| c == "..") {
        return Vec::new();
    }
    if root.join("blkio").exists() {
        let b = root.join("blkio").join(rel);
        parse_blkio_v1(
            &read(&b.join("blkio.throttle.io_service_bytes")),
            &read(&b.join("blkio.throttle.io_serviced")),
        )
    } else {
        parse_io_stat(&read(&root.join(rel).join("io.stat")))
    }
}

/// The processes in the cgroup at `rel` (read from the `pids` or `memory` hierarchy, or the
/// unified one).
pub fn cgroup_pids(root: &Path, rel: &str) -> Vec<u32> {
    let rel = rel.trim_start_matches('/');
    ["pids", "memory", ""]
        .iter()
        .map(|h| root.join(h).join(rel).join("cgroup.procs"))
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_io_from_either_cgroup_version() {
        let v1 = parse_blkio_v1(
            "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Total 12288\nTotal 12288\n",
            "8:0 Read 1\n8:0 Write 2\n8:0 Total 3\nTotal 3\n",
        );
        let want = DeviceIo {
            major: 8,
            minor: 0,
            read_bytes: 4096,
            write_bytes: 8192,
            reads: 1,
            writes: 2,
        };
        assert_eq!(v1, vec![want]);
        let v2 = parse_io_stat("8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n");
        assert_eq!(v2, vec![want]);
    }
}

//! Pod and container metrics for `ListMetricDescriptors` and `ListPodSandboxMetrics`, named
//! and measured as cAdvisor exposes them (the kubelet serves them on `/metrics/cadvisor` when
//! it takes its stats from the runtime). Values are the CRI's unsigned integers: counters in
//! seconds are whole seconds, as containerd reports them.
//!
//! Everything here reads small kernel files (cgroup, `/proc`) and is blocking: callers run it
//! on a blocking thread.

use std::path::Path;

mod descriptors;
pub use descriptors::*;

pub use berth_cgroups::{
    Cgroup, DeviceIo, cgroup_pids, parse_blkio_v1, parse_io_stat, read_cgroup, read_io,
};

/// The device's name (`/dev/vda`) from sysfs, else `major:minor`.
pub fn device_name(major: u32, minor: u32) -> String {
    read(Path::new(&format!("/sys/dev/block/{major}:{minor}/uevent")))
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .map_or_else(|| format!("{major}:{minor}"), |n| format!("/dev/{n}"))
}

/// The samples of one device: each with the labels it adds to the base ones.
pub fn device_samples(d: &DeviceIo, name: &str) -> Vec<(&'static str, Vec<String>, u64)> {
    let dev = || vec![name.to_string()];
    let op = |o: &str| {
        vec![
            name.to_string(),
            d.major.to_string(),
            d.minor.to_string(),
            o.to_string(),
        ]
    };
    vec![
        ("container_fs_reads_bytes_total", dev(), d.read_bytes),
        ("container_fs_reads_total", dev(), d.reads),
        ("container_fs_writes_bytes_total", dev(), d.write_bytes),
        ("container_fs_writes_total", dev(), d.writes),
        (
            "container_blkio_device_usage_total",
            op("Read"),
            d.read_bytes,
        ),
        (
            "container_blkio_device_usage_total",
            op("Write"),
            d.write_bytes,
        ),
    ]
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// What the container's processes hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Processes {
    /// Processes.
    pub processes: u64,
    /// Threads.
    pub threads: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// Open sockets.
    pub sockets: u64,
}

/// Counts the threads, descriptors and sockets of `pids` from `/proc` (a process that
/// exits meanwhile counts for what was read of it).
pub fn processes(proc_root: &Path, pids: &[u32]) -> Processes {
    let mut p = Processes {
        processes: pids.len() as u64,
        ..Default::default()
    };
    for pid in pids {
        let dir = proc_root.join(pid.to_string());
        p.threads += read(&dir.join("status"))
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .map_or(0, |v| v.trim().parse().unwrap_or(0));
        if let Ok(fds) = std::fs::read_dir(dir.join("fd")) {
            for fd in fds.flatten() {
                p.fds += 1;
                if std::fs::read_link(fd.path())
                    .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
                {
                    p.sockets += 1;
                }
            }
        }
    }
    p
}

/// One interface's counters from `/proc/<pid>/net/dev`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetDev {
    /// Interface name.
    pub interface: String,
    /// Received bytes, packets, errors, drops.
    pub rx: [u64; 4],
    /// Sent bytes, packets, errors, drops.
    pub tx: [u64; 4],
}

/// The interfaces of `/proc/<pid>/net/dev` but loopback.
pub fn parse_net_dev(text: &str) -> Vec<NetDev> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let name = name.trim();
            if name == "lo" {
                return None;
            }
            let v: Vec<u64> = rest
                .split_whitespace()
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            (v.len() >= 12).then(|| NetDev {
                interface: name.to_string(),
                rx: [v[0], v[1], v[2], v[3]],
                tx: [v[8], v[9], v[10], v[11]],
            })
        })
        .collect()
}

/// The network samples of one interface.
pub fn network_samples(dev: &NetDev) -> Vec<(&'static str, u64)> {
    vec![
        ("container_network_receive_bytes_total", dev.rx[0]),
        ("container_network_receive_packets_total", dev.rx[1]),
        ("container_network_receive_errors_total", dev.rx[2]),
        ("container_network_receive_packets_dropped_total", dev.rx[3]),
        ("container_network_transmit_bytes_total", dev.tx[0]),
        ("container_network_transmit_packets_total", dev.tx[1]),
        ("container_network_transmit_errors_total", dev.tx[2]),
        (
            "container_network_transmit_packets_dropped_total",
            dev.tx[3],
        ),
    ]
}

/// The filesystem side of a container: its writable layer and the filesystem holding it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fs {
    /// Bytes the writable layer uses.
    pub usage: u64,
    /// Inodes the writable layer uses.
    pub inodes_used: u64,
    /// Size of the filesystem.
    pub limit: u64,
}

/// Size of the filesystem holding `dir`.
pub fn filesystem(dir: &Path) -> Fs {
    match rustix::fs::statvfs(dir) {
        Ok(s) => Fs {
            usage: 0,
            inodes_used: 0,
            limit: s.f_blocks.saturating_mul(s.f_frsize),
        },
        Err(_) => Fs::default(),
    }
}

/// What the container was configured with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// CFS period (µs).
    pub cpu_period: u64,
    /// Shares.
    pub cpu_shares: u64,
    /// Memory limit (bytes; 0: none).
    pub memory: u64,
    /// Memory and swap limit (bytes; 0: none).
    pub memory_swap: u64,
}

/// One reading of a container.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reading {
    /// Its cgroup.
    pub cgroup: Cgroup,
    /// Its processes.
    pub processes: Processes,
    /// Its filesystem.
    pub fs: Fs,
    /// Its limits.
    pub limits: Limits,
    /// When it started (s since the epoch).
    pub started_s: u64,
    /// When this was read (s since the epoch).
    pub now_s: u64,
}

const NS: u64 = 1_000_000_000;

/// The container samples of a reading, one per container descriptor, in [`DESCRIPTORS`]
/// order.
pub fn container_samples(r: &Reading) -> Vec<(&'static str, u64)> {
    let c = &r.cgroup;
    let p = &r.processes;
    vec![
        ("container_cpu_usage_seconds_total", c.cpu_ns / NS),
        ("container_cpu_user_seconds_total", c.cpu_user_ns / NS),
        ("container_cpu_system_seconds_total", c.cpu_system_ns / NS),
        ("container_cpu_cfs_periods_total", c.periods),
        (
            "container_cpu_cfs_throttled_periods_total",
            c.throttled_periods,
        ),
        (
            "container_cpu_cfs_throttled_seconds_total",
            c.throttled_ns / NS,
        ),
        ("container_memory_usage_bytes", c.memory),
        (
            "container_memory_working_set_bytes",
            c.memory.saturating_sub(c.inactive_file),
        ),
        ("container_memory_max_usage_bytes", c.memory_max),
        ("container_memory_cache", c.cache),
        ("container_memory_rss", c.rss),
        ("container_memory_mapped_file", c.mapped_file),
        ("container_memory_swap", c.swap),
        ("container_memory_kernel_usage", c.kernel),
        ("container_memory_failcnt", c.failcnt),
        // pgfault counts every fault, the major ones too.
        ("container_memory_failures_total", c.page_faults),
        ("container_oom_events_total", c.oom_kills),
        ("container_fs_usage_bytes", r.fs.usage),
        ("container_fs_limit_bytes", r.fs.limit),
        // As cAdvisor reports a container's filesystem (and the kubelet's /metrics/cadvisor
        // shows it): the inodes its writable layer uses as the "total", no free count.
        ("container_fs_inodes_total", r.fs.inodes_used),
        ("container_fs_inodes_free", 0),
        ("container_processes", p.processes),
        ("container_threads", p.threads),
        ("container_threads_max", c.pids_max.unwrap_or(0)),
        ("container_file_descriptors", p.fds),
        ("container_sockets", p.sockets),
        ("container_spec_cpu_period", r.limits.cpu_period),
        ("container_spec_cpu_shares", r.limits.cpu_shares),
        ("container_spec_memory_limit_bytes", r.limits.memory),
        (
            "container_spec_memory_swap_limit_bytes",
            r.limits.memory_swap,
        ),
        ("container_start_time_seconds", r.started_s),
        ("container_last_seen", r.now_s),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_has_a_descriptor_and_every_descriptor_a_sample() {
        let mut names: Vec<&str> = container_samples(&Reading::default())
            .into_iter()
            .chain(network_samples(&NetDev::default()))
            .map(|(n, _)| n)
            .chain(
                device_samples(&DeviceIo::default(), "/dev/x")
                    .into_iter()
                    .map(|(n, _, _)| n),
            )
            .collect();
        // Every device sample carries exactly the labels its descriptor adds.
        for (n, extra, _) in device_samples(&DeviceIo::default(), "/dev/x") {
            assert_eq!(
                BASE_LABELS.len() + extra.len(),
                descriptor(n).unwrap().labels.len()
            );
        }
        for n in &names {
            let d = descriptor(n).unwrap_or_else(|| panic!("{n} has no descriptor"));
            assert!(!d.help.is_empty() && !d.labels.is_empty());
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DESCRIPTORS.len());
    }

    #[test]
    fn a_v1_cgroup_reads_as_cadvisor_counts() {
        let root = tempfile::tempdir().unwrap();
        let w = |h: &str, f: &str, t: &str| {
            let d = root.path().join(h).join("kubepods/pod1/c1");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(f), t).unwrap();
        };
        w("cpuacct", "cpuacct.usage", "3500000000\n");
        let hz = rustix::param::clock_ticks_per_second();
        w(
            "cpuacct",
            "cpuacct.stat",
            &format!("user {}\nsystem {}\n", 2 * hz, hz),
        );
        w(
            "cpu",
            "cpu.stat",
            "nr_periods 10\nnr_throttled 4\nthrottled_time 2500000000\n",
        );
        w(
            "memory",
            "memory.stat",
            "cache 1\ntotal_cache 4096\ntotal_rss 8192\ntotal_mapped_file 512\ntotal_inactive_file 1024\ntotal_pgfault 7\ntotal_pgmajfault 1\n",
        );
        w("memory", "memory.usage_in_bytes", "20480\n");
        w("memory", "memory.memsw.usage_in_bytes", "24576\n");
        w("memory", "memory.max_usage_in_bytes", "40960\n");
        w("memory", "memory.failcnt", "2\n");
        w(
            "memory",
            "memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        );
        w("memory", "cgroup.procs", "12\n34\n");
        w("pids", "pids.max", "max\n");
        let c = read_cgroup(root.path(), "/kubepods/pod1/c1").unwrap();
        assert_eq!(
            (c.cpu_ns, c.cpu_user_ns, c.cpu_system_ns),
            (3_500_000_000, 2 * NS, NS)
        );
        assert_eq!(
            (c.periods, c.throttled_periods, c.throttled_ns),
            (10, 4, 2_500_000_000)
        );
        assert_eq!(
            (c.memory, c.cache, c.rss, c.mapped_file),
            (20480, 4096, 8192, 512)
        );
        // total_pgfault already counts the major faults: not added twice.
        assert_eq!(
            (
                c.swap,
                c.memory_max,
                c.failcnt,
                c.page_faults,
                c.major_page_faults
            ),
            (4096, 40960, 2, 7, 1)
        );
        assert_eq!((c.oom_kills, c.pids_max), (1, None));
        let s = container_samples(&Reading {
            cgroup: c,
            ..Default::default()
        });
        let v = |n: &str| s.iter().find(|(m, _)| *m == n).unwrap().1;
        assert_eq!(v("container_cpu_usage_seconds_total"), 3);
        assert_eq!(v("container_cpu_cfs_throttled_seconds_total"), 2);
        assert_eq!(v("container_memory_working_set_bytes"), 20480 - 1024);
        assert_eq!(v("container_memory_failures_total"), 7);
        assert_eq!(cgroup_pids(root.path(), "/kubepods/pod1/c1"), vec![12, 34]);
        // A path that climbs out is refused; a container that is gone reads as None.
        assert!(read_cgroup(root.path(), "/kubepods/../../etc").is_none());
        assert!(read_cgroup(root.path(), "/kubepods/pod1/gone").is_none());
    }

    #[test]
    fn net_dev_leaves_out_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0
  eth0:    5000      40    1    2    0     0          0         0     3000      30    3    4    0     0       0          0
";
        assert_eq!(
            parse_net_dev(text),
            vec![NetDev {
                interface: "eth0".into(),
                rx: [5000, 40, 1, 2],
                tx: [3000, 30, 3, 4],
            }]
        );
    }

    #[test]
    fn this_process_has_threads_and_descriptors() {
        let me = std::process::id();
        let p = processes(Path::new("/proc"), &[me]);
        assert_eq!(p.processes, 1);
        assert!(p.threads >= 1 && p.fds >= 3, "{p:?}");
        let fs = filesystem(Path::new("/"));
        assert!(fs.limit > 0, "{fs:?}");
    }
}

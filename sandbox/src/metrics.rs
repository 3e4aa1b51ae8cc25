//! Pod and container metrics for `ListMetricDescriptors` and `ListPodSandboxMetrics`, named
//! and measured as cAdvisor exposes them (the kubelet serves them on `/metrics/cadvisor` when
//! it takes its stats from the runtime). Values are the CRI's unsigned integers: counters in
//! seconds are whole seconds, as containerd reports them.
//!
//! Everything here reads small kernel files (cgroup, `/proc`) and is blocking: callers run it
//! on a blocking thread.

use std::path::Path;

pub use berth_cgroups::{
    Cgroup, DeviceIo, cgroup_pids, parse_blkio_v1, parse_io_stat, read_cgroup, read_io,
};

/// Counter or gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only grows.
    Counter,
    /// Goes up and down.
    Gauge,
}

/// The label keys of a container metric: pod, namespace, container, container id, image.
pub const BASE_LABELS: &[&str] = &["pod", "namespace", "container", "id", "image"];
/// The label keys of a network metric: the base ones and the interface.
pub const NETWORK_LABELS: &[&str] = &["pod", "namespace", "container", "id", "image", "interface"];
/// The label keys of a block device metric: the base ones and the device.
pub const DISK_LABELS: &[&str] = &["pod", "namespace", "container", "id", "image", "device"];
/// The label keys of `container_blkio_device_usage_total`.
pub const BLKIO_LABELS: &[&str] = &[
    "pod",
    "namespace",
    "container",
    "id",
    "image",
    "device",
    "major",
    "minor",
    "operation",
];

/// A metric berth reports.
#[derive(Debug, Clone, Copy)]
pub struct Descriptor {
    /// Its name.
    pub name: &'static str,
    /// What it measures.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: Kind,
    /// Its label keys ([`BASE_LABELS`] or [`NETWORK_LABELS`]).
    pub labels: &'static [&'static str],
}

const fn d(name: &'static str, help: &'static str, kind: Kind) -> Descriptor {
    Descriptor {
        name,
        help,
        kind,
        labels: BASE_LABELS,
    }
}

const fn n(name: &'static str, help: &'static str) -> Descriptor {
    Descriptor {
        name,
        help,
        kind: Kind::Counter,
        labels: NETWORK_LABELS,
    }
}

const fn io(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Descriptor {
    Descriptor {
        name,
        help,
        kind: Kind::Counter,
        labels,
    }
}

use Kind::{Counter, Gauge};

/// Every metric berth reports.
pub const DESCRIPTORS: &[Descriptor] = &[
    d(
        "container_cpu_usage_seconds_total",
        "Cumulative CPU time consumed, in seconds.",
        Counter,
    ),
    d(
        "container_cpu_user_seconds_total",
        "Cumulative user CPU time consumed, in seconds.",
        Counter,
    ),
    d(
        "container_cpu_system_seconds_total",
        "Cumulative system CPU time consumed, in seconds.",
        Counter,
    ),
    d(
        "container_cpu_cfs_periods_total",
        "Number of elapsed CFS enforcement periods.",
        Counter,
    ),
    d(
        "container_cpu_cfs_throttled_periods_total",
        "Number of CFS periods in which the container was throttled.",
        Counter,
    ),
    d(
        "container_cpu_cfs_throttled_seconds_total",
        "Total time the container was throttled, in seconds.",
        Counter,
    ),
    d(
        "container_memory_usage_bytes",
        "Memory in use, page cache included, in bytes.",
        Gauge,
    ),
    d(
        "container_memory_working_set_bytes",
        "Memory in use less inactive page cache, in bytes.",
        Gauge,
    ),
    d(
        "container_memory_max_usage_bytes",
        "Highest memory use recorded, in bytes.",
        Gauge,
    ),
    d("container_memory_cache", "Page cache, in bytes.", Gauge),
    d(
        "container_memory_rss",
        "Anonymous memory and swap cache, in bytes.",
        Gauge,
    ),
    d(
        "container_memory_mapped_file",
        "Memory-mapped files, in bytes.",
        Gauge,
    ),
    d("container_memory_swap", "Swap in use, in bytes.", Gauge),
    d(
        "container_memory_kernel_usage",
        "Kernel memory in use, in bytes.",
        Gauge,
    ),
    d(
        "container_memory_failcnt",
        "Number of times memory use hit the limit.",
        Counter,
    ),
    d(
        "container_memory_failures_total",
        "Cumulative page faults (minor and major).",
        Counter,
    ),
    d(
        "container_oom_events_total",
        "Number of processes of the container the OOM killer killed.",
        Counter,
    ),
    d(
        "container_fs_usage_bytes",
        "Bytes the container's writable layer uses.",
        Gauge,
    ),
    d(
        "container_fs_limit_bytes",
        "Size of the filesystem holding the container's writable layer, in bytes.",
        Gauge,
    ),
    d(
        "container_fs_inodes_total",
        "Inodes of the filesystem holding the container's writable layer.",
        Gauge,
    ),
    d(
        "container_fs_inodes_free",
        "Free inodes of the filesystem holding the container's writable layer.",
        Gauge,
    ),
    d(
        "container_processes",
        "Number of processes in the container.",
        Gauge,
    ),
    d(
        "container_threads",
        "Number of threads in the container.",
        Gauge,
    ),
    d(
        "container_threads_max",
        "Most tasks the container may have (its pids limit; 0 when unlimited).",
        Gauge,
    ),
    d(
        "container_file_descriptors",
        "Open file descriptors of the container's processes.",
        Gauge,
    ),
    d(
        "container_sockets",
        "Open sockets of the container's processes.",
        Gauge,
    ),
    d(
        "container_spec_cpu_period",
        "CFS period of the container, in microseconds.",
        Gauge,
    ),
    d(
        "container_spec_cpu_shares",
        "CPU shares of the container.",
        Gauge,
    ),
    d(
        "container_spec_memory_limit_bytes",
        "Memory limit of the container, in bytes (0: none).",
        Gauge,
    ),
    d(
        "container_spec_memory_swap_limit_bytes",
        "Memory and swap limit of the container, in bytes (0: none).",
        Gauge,
    ),
    d(
        "container_start_time_seconds",
        "When the container started, in seconds since the Unix epoch.",
        Gauge,
    ),
    d(
        "container_last_seen",
        "When these values were read, in seconds since the Unix epoch.",
        Gauge,
    ),
    io(
        "container_fs_reads_bytes_total",
        "Bytes read from a block device.",
        DISK_LABELS,
    ),
    io(
        "container_fs_reads_total",
        "Reads completed from a block device.",
        DISK_LABELS,
    ),
    io(
        "container_fs_writes_bytes_total",
        "Bytes written to a block device.",
        DISK_LABELS,
    ),
    io(
        "container_fs_writes_total",
        "Writes completed to a block device.",
        DISK_LABELS,
    ),
    io(
        "container_blkio_device_usage_total",
        "Bytes of block device I/O, by operation.",
        BLKIO_LABELS,
    ),
    n(
        "container_network_receive_bytes_total",
        "Bytes received by the pod.",
    ),
    n(
        "container_network_receive_packets_total",
        "Packets received by the pod.",
    ),
    n(
        "container_network_receive_errors_total",
        "Receive errors of the pod.",
    ),
    n(
        "container_network_receive_packets_dropped_total",
        "Received packets of the pod dropped.",
    ),
    n(
        "container_network_transmit_bytes_total",
        "Bytes sent by the pod.",
    ),
    n(
        "container_network_transmit_packets_total",
        "Packets sent by the pod.",
    ),
    n(
        "container_network_transmit_errors_total",
        "Send errors of the pod.",
    ),
    n(
        "container_network_transmit_packets_dropped_total",
        "Sent packets of the pod dropped.",
    ),
];

/// The descriptor named `name`.
pub fn descriptor(name: &str) -> Option<&'static Descriptor> {
    DESCRIPTORS.iter().find(|d| d.name == name)
}

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
    /// Size of the filesystem.
    pub limit: u64,
    /// Its inodes.
    pub inodes: u64,
    /// Its free inodes.
    pub inodes_free: u64,
}

/// Size and inodes of the filesystem holding `dir`.
pub fn filesystem(dir: &Path) -> Fs {
    match rustix::fs::statvfs(dir) {
        Ok(s) => Fs {
            usage: 0,
            limit: s.f_blocks.saturating_mul(s.f_frsize),
            inodes: s.f_files,
            inodes_free: s.f_ffree,
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
        ("container_fs_inodes_total", r.fs.inodes),
        ("container_fs_inodes_free", r.fs.inodes_free),
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
        assert!(fs.limit > 0 && fs.inodes >= fs.inodes_free, "{fs:?}");
    }
}

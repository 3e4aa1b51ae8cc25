//! Every metric berth reports (ListMetricDescriptors), with its kind and label keys.

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

//! OCI runtime specs, built as containerd builds them: typed ([`oci`]), from already
//! validated CRI input, by functions that read nothing from the host themselves.
//!
//! - [`pause`]: the pod sandbox's pause container, which holds the pod's namespaces.
//! - [`container`]: an application container, by the kubelet's rules (command and args
//!   over the image's entrypoint and cmd, env precedence, user mounts over defaults,
//!   privileged, capabilities, seccomp, namespaces per mode); what it needs to know of the
//!   host (mount sources, their propagation, device nodes) comes through [`host::Host`].
//! - [`caps`]: capability names and sets; [`resources`]: cgroup limits.
//!
//! Common to both: sysctls are checked against the namespace they live in (one that would
//! change the host is refused), and `oom_score_adj` is clamped to what berth itself may set
//! (containerd's `restrict_oom_score_adj`: root without `CAP_SYS_RESOURCE` cannot go below
//! its own value).

pub mod caps;
pub mod container;
pub mod host;
pub mod oci;
pub mod pause;
pub mod resources;

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use oci::Mount;

pub use caps::DEFAULT_CAPABILITIES;

/// containerd's default `oom_score_adj` for sandboxes.
pub const SANDBOX_OOM_SCORE_ADJ: i64 = -998;

/// Paths masked in unprivileged containers.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];

/// Paths made read-only in unprivileged containers.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Which namespace a sysctl belongs to, if any.
fn sysctl_namespace(name: &str) -> Option<&'static str> {
    const IPC: &[&str] = &[
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
    ];
    if IPC.contains(&name) || name.starts_with("fs.mqueue.") {
        Some("ipc")
    } else if name.starts_with("net.") {
        Some("network")
    } else {
        None
    }
}

/// Refuses sysctls that would reach the host: unnamespaced ones, and those of a namespace the
/// pod shares with the host.
pub fn validate_sysctls(
    sysctls: &BTreeMap<String, String>,
    host_network: bool,
    host_ipc: bool,
) -> Result<()> {
    for (k, v) in sysctls {
        if k.is_empty()
            || k.contains("..")
            || k.contains('/') && k.contains('.')
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
        {
            return Err(Error::Invalid(format!("sysctl {k:?} is not a valid name")));
        }
        if v.contains('\n') {
            return Err(Error::Invalid(format!(
                "sysctl {k}: value contains a newline"
            )));
        }
        let name = k.replace('/', ".");
        match sysctl_namespace(&name) {
            None => {
                return Err(Error::Invalid(format!(
                    "sysctl {k} is not namespaced: setting it would change the host"
                )));
            }
            Some("network") if host_network => {
                return Err(Error::Invalid(format!(
                    "sysctl {k} needs the pod's own network namespace, but the pod uses the host's"
                )));
            }
            Some("ipc") if host_ipc => {
                return Err(Error::Invalid(format!(
                    "sysctl {k} needs the pod's own IPC namespace, but the pod uses the host's"
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// containerd's `restrict_oom_score_adj`: never below what this process has.
pub fn clamp_oom_score_adj(wanted: i64, daemon: i64) -> i64 {
    wanted.clamp(daemon.max(-1000), 1000)
}

/// The oom_score_adj berth runs with.
pub fn own_oom_score_adj() -> i64 {
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The cgroup of container or pod `id` under `parent` (berth's `/k8s.io` when empty).
pub fn cgroups_path(parent: &str, id: &str) -> String {
    let parent = if parent.is_empty() {
        "/k8s.io"
    } else {
        parent.trim_end_matches('/')
    };
    format!("{parent}/{id}")
}

/// The kernel filesystems every container gets: `/proc`, `/dev`, `/dev/pts`, `/dev/mqueue`,
/// and `/sys` (`sys_mode`: `ro`, or `rw` for a privileged container).
fn kernel_mounts(sys_mode: &str) -> Vec<Mount> {
    vec![
        Mount::new("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        Mount::new(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        Mount::new(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        Mount::new(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        Mount::new(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", sys_mode],
        ),
    ]
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_score_adj_is_clamped_to_the_daemons_own() {
        assert_eq!(clamp_oom_score_adj(-998, 0), 0);
        assert_eq!(clamp_oom_score_adj(-998, -999), -998);
        assert_eq!(clamp_oom_score_adj(500, -100), 500);
        assert_eq!(clamp_oom_score_adj(-5000, -2000), -1000);
    }

    #[test]
    fn sysctls_are_checked_against_their_namespace() {
        let one = |k: &str| BTreeMap::from([(k.to_string(), "1".to_string())]);
        assert!(validate_sysctls(&one("net.ipv4.ip_forward"), false, false).is_ok());
        assert!(
            validate_sysctls(&one("net/ipv4/ip_unprivileged_port_start"), false, false).is_ok()
        );
        assert!(validate_sysctls(&one("kernel.shm_rmid_forced"), false, false).is_ok());
        assert!(validate_sysctls(&one("fs.mqueue.msg_max"), false, false).is_ok());
        let e = validate_sysctls(&one("net.ipv4.ip_forward"), true, false).unwrap_err();
        assert!(e.to_string().contains("host's"), "{e}");
        assert!(validate_sysctls(&one("kernel.msgmax"), false, true).is_err());
        let e = validate_sysctls(&one("vm.swappiness"), false, false).unwrap_err();
        assert!(e.to_string().contains("not namespaced"), "{e}");
        assert!(validate_sysctls(&one("../../etc/passwd"), false, false).is_err());
        assert!(
            validate_sysctls(
                &BTreeMap::from([("net.core.somaxconn".into(), "1\n2".into())]),
                false,
                false
            )
            .is_err()
        );
    }
}

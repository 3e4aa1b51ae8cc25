//! OCI runtime specs for pod sandboxes (the pause container), built as containerd builds them.
//!
//! The pause container holds the pod's namespaces: new network (the pinned netns path), IPC
//! and UTS namespaces unless the pod asks for the host's, its own mount and pid namespaces
//! (the host's pid namespace with `host_pid`). Sysctls are checked against the namespace they
//! live in: one that would change the host is refused. `oom_score_adj` is clamped to what
//! berth itself may set (containerd's `restrict_oom_score_adj`): root without
//! `CAP_SYS_RESOURCE` cannot go below its own value.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Value, json};

use crate::error::{Error, Result};

/// containerd's default `oom_score_adj` for sandboxes.
pub const SANDBOX_OOM_SCORE_ADJ: i64 = -998;

/// The capabilities a non-privileged container starts with (containerd's default set).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

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

/// What a sandbox spec is built from (already validated CRI input).
#[derive(Debug, Clone, Default)]
pub struct SandboxSpec {
    /// The sandbox id (for the cgroup path).
    pub id: String,
    /// The pause image's entrypoint + cmd.
    pub args: Vec<String>,
    /// The image's env.
    pub env: Vec<String>,
    /// uid, gid and additional gids the pause process runs as.
    pub user: (u32, u32, Vec<u32>),
    /// The pod's hostname (ignored with the host's network namespace).
    pub hostname: String,
    /// The pinned network namespace, or `None` for `host_network`.
    pub netns: Option<PathBuf>,
    /// Share the host's IPC namespace.
    pub host_ipc: bool,
    /// Share the host's pid namespace.
    pub host_pid: bool,
    /// The pod's shared `/dev/shm` (bind-mounted), unless `host_ipc`.
    pub shm: Option<PathBuf>,
    /// The cgroup parent (cgroupfs path), e.g. `/kubepods/besteffort/pod<uid>`.
    pub cgroup_parent: String,
    /// Sysctls to set.
    pub sysctls: BTreeMap<String, String>,
    /// Read-only root filesystem.
    pub readonly_rootfs: bool,
    /// Privileged sandbox.
    pub privileged: bool,
    /// A seccomp profile (OCI JSON) or `None` for unconfined.
    pub seccomp: Option<Value>,
    /// Annotations passed to the shim.
    pub annotations: BTreeMap<String, String>,
    /// The oom_score_adj berth itself runs with (the floor of the clamp).
    pub daemon_oom_score_adj: i64,
}

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

impl SandboxSpec {
    /// The OCI `config.json` for the pause container. `rootfs` is the bundle's rootfs path.
    pub fn build(&self, rootfs: &str) -> Result<Value> {
        validate_sysctls(&self.sysctls, self.netns.is_none(), self.host_ipc)?;
        if self.args.is_empty() {
            return Err(Error::Invalid(
                "the sandbox image has no entrypoint or command".into(),
            ));
        }
        let caps: Vec<&str> = DEFAULT_CAPABILITIES.to_vec();
        let mut namespaces = vec![json!({"type": "mount"})];
        if !self.host_pid {
            namespaces.push(json!({"type": "pid"}));
        }
        if !self.host_ipc {
            namespaces.push(json!({"type": "ipc"}));
        }
        if let Some(p) = &self.netns {
            namespaces.push(json!({"type": "network", "path": p}));
            namespaces.push(json!({"type": "uts"}));
        }

        let mut mounts = vec![
            json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
            json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
            json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
            json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
            json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        ];
        match (&self.shm, self.host_ipc) {
            (_, true) => mounts.push(json!({"destination": "/dev/shm", "type": "bind", "source": "/dev/shm", "options": ["rbind", "rw"]})),
            (Some(shm), false) => mounts.push(json!({"destination": "/dev/shm", "type": "bind", "source": shm, "options": ["rbind", "ro"]})),
            (None, false) => mounts.push(json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]})),
        }
        let cgroups_path = cgroups_path(&self.cgroup_parent, &self.id);
        let mut linux = json!({
            "cgroupsPath": cgroups_path,
            "namespaces": namespaces,
            "resources": {"cpu": {"shares": 2}, "devices": [{"allow": false, "access": "rwm"}]},
            "sysctl": self.sysctls,
        });
        if !self.privileged {
            linux["maskedPaths"] = json!(MASKED_PATHS);
            linux["readonlyPaths"] = json!(READONLY_PATHS);
        }
        if let Some(profile) = &self.seccomp {
            linux["seccomp"] = profile.clone();
        }
        let (uid, gid, groups) = &self.user;
        let mut spec = json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": uid, "gid": gid, "additionalGids": groups},
                "args": self.args,
                "env": self.env,
                "cwd": "/",
                "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
                "noNewPrivileges": !self.privileged,
                "oomScoreAdj": clamp_oom_score_adj(SANDBOX_OOM_SCORE_ADJ, self.daemon_oom_score_adj),
            },
            "root": {"path": rootfs, "readonly": self.readonly_rootfs},
            "mounts": mounts,
            "annotations": self.annotations,
            "linux": linux,
        });
        if self.netns.is_some() && !self.hostname.is_empty() {
            spec["hostname"] = json!(self.hostname);
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> SandboxSpec {
        SandboxSpec {
            id: "abc".into(),
            args: vec!["/pause".into()],
            hostname: "pod-a".into(),
            netns: Some("/run/berth/netns/abc".into()),
            shm: Some("/run/berth/sandboxes/abc/shm".into()),
            user: (65535, 65535, vec![]),
            ..Default::default()
        }
    }

    fn ns_types(spec: &Value) -> Vec<String> {
        spec["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn pod_namespaces() {
        let s = base().build("/b/rootfs").unwrap();
        assert_eq!(ns_types(&s), ["mount", "pid", "ipc", "network", "uts"]);
        assert_eq!(s["linux"]["namespaces"][3]["path"], "/run/berth/netns/abc");
        assert_eq!(s["hostname"], "pod-a");
        assert_eq!(s["linux"]["cgroupsPath"], "/k8s.io/abc");
        assert_eq!(s["process"]["user"]["uid"], 65535);
        assert!(
            s["linux"]["maskedPaths"]
                .as_array()
                .unwrap()
                .contains(&json!("/proc/kcore"))
        );

        let host = SandboxSpec {
            netns: None,
            host_ipc: true,
            host_pid: true,
            cgroup_parent: "/kubepods/pod1/".into(),
            ..base()
        };
        let s = host.build("/b/rootfs").unwrap();
        assert_eq!(ns_types(&s), ["mount"]);
        assert!(
            s.get("hostname").is_none(),
            "the host's UTS namespace keeps the host's name"
        );
        assert_eq!(s["linux"]["cgroupsPath"], "/kubepods/pod1/abc");
        let shm = s["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/dev/shm")
            .unwrap()
            .clone();
        assert_eq!(shm["source"], "/dev/shm");
    }

    #[test]
    fn oom_score_adj_is_clamped_to_the_daemons_own() {
        assert_eq!(clamp_oom_score_adj(-998, 0), 0);
        assert_eq!(clamp_oom_score_adj(-998, -999), -998);
        assert_eq!(clamp_oom_score_adj(500, -100), 500);
        assert_eq!(clamp_oom_score_adj(-5000, -2000), -1000);
        let s = SandboxSpec {
            daemon_oom_score_adj: 0,
            ..base()
        }
        .build("/r")
        .unwrap();
        assert_eq!(s["process"]["oomScoreAdj"], 0);
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
        let bad = SandboxSpec {
            sysctls: one("kernel.panic"),
            ..base()
        };
        assert_eq!(
            bad.build("/r").unwrap_err().kind(),
            crate::ErrorKind::InvalidArgument
        );
    }

    #[test]
    fn privileged_sandboxes_are_unmasked() {
        let s = SandboxSpec {
            privileged: true,
            ..base()
        }
        .build("/r")
        .unwrap();
        assert!(s["linux"].get("maskedPaths").is_none());
        assert_eq!(s["process"]["noNewPrivileges"], false);
    }
}

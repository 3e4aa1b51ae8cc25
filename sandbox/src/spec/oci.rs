//! The part of the OCI runtime spec (`config.json`, runtime-spec 1.0.2) that berth writes
//! and reads back, as typed structs with the spec's JSON names.
//!
//! berth does not use the `oci-spec` crate's runtime types: deserialising its `Process`
//! links in the `regex` engine (it checks `execCPUAffinity` with one), which berth's
//! resident memory (mostly its own code) was cut by leaving out, and its builders fill
//! every field left unset from its own default spec (mounts, capabilities, rlimits), where
//! berth wants a field nobody asked for to be absent. What is here is what runc, crun and
//! runsc read from berth; a field berth never sets is not modelled.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The runtime-spec version berth writes.
pub const OCI_VERSION: &str = "1.0.2";

/// A bundle's `config.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    /// The runtime-spec version.
    pub oci_version: String,
    /// The container's process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    /// Its root filesystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<Root>,
    /// Its hostname (only with a UTS namespace of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Mounts, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// Annotations (the shim and runsc read some).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Linux specifics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linux: Option<Linux>,
    /// Hooks the runtime runs (CDI devices bring some).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<Hooks>,
}

/// The runtime's hooks, by when they run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hooks {
    /// Deprecated `prestart` (as `createRuntime`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prestart: Vec<Hook>,
    /// After the namespaces are made, in the runtime's namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub create_runtime: Vec<Hook>,
    /// After the namespaces are made, in the container's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub create_container: Vec<Hook>,
    /// Before the process starts, in the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub start_container: Vec<Hook>,
    /// After the process started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub poststart: Vec<Hook>,
    /// After the container is deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub poststop: Vec<Hook>,
}

/// One hook: a program to run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hook {
    /// The program (absolute).
    pub path: String,
    /// Its argv.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Its environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Seconds it may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
}

impl Spec {
    /// The container's cgroup path, if the spec names one.
    pub fn cgroups_path(&self) -> Option<&str> {
        self.linux.as_ref()?.cgroups_path.as_deref()
    }

    /// The container's resources, if any.
    pub fn resources(&self) -> Option<&Resources> {
        self.linux.as_ref()?.resources.as_ref()
    }
}

/// The process to run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    /// Whether it gets a terminal.
    #[serde(default)]
    pub terminal: bool,
    /// Who it runs as.
    #[serde(default)]
    pub user: User,
    /// Its argv.
    #[serde(default)]
    pub args: Vec<String>,
    /// Its environment, `NAME=value`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Its working directory (absolute).
    #[serde(default)]
    pub cwd: String,
    /// Its capability sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
    /// `no_new_privs`.
    #[serde(default)]
    pub no_new_privileges: bool,
    /// Its `oom_score_adj`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_score_adj: Option<i64>,
    /// Its resource limits (`RLIMIT_NOFILE`, …), set by NRI plugins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rlimits: Vec<Rlimit>,
}

/// A POSIX resource limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// `RLIMIT_NOFILE`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// The hard limit.
    pub hard: u64,
    /// The soft limit.
    pub soft: u64,
}

/// uid, gid and supplementary groups.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// The uid.
    #[serde(default)]
    pub uid: u32,
    /// The gid.
    #[serde(default)]
    pub gid: u32,
    /// Supplementary gids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_gids: Vec<u32>,
}

/// Capability sets, by OCI name (`CAP_CHOWN`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// The bounding set.
    #[serde(default)]
    pub bounding: Vec<String>,
    /// The effective set.
    #[serde(default)]
    pub effective: Vec<String>,
    /// The permitted set.
    #[serde(default)]
    pub permitted: Vec<String>,
}

impl Capabilities {
    /// `caps` as bounding, effective and permitted set (as containerd sets them).
    pub fn all(caps: Vec<String>) -> Self {
        Capabilities {
            bounding: caps.clone(),
            effective: caps.clone(),
            permitted: caps,
        }
    }
}

/// The root filesystem.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root {
    /// Its path, absolute or relative to the bundle.
    pub path: String,
    /// Mounted read-only.
    #[serde(default)]
    pub readonly: bool,
}

/// One mount.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Where, in the container.
    pub destination: String,
    /// The filesystem type (`bind` for bind mounts).
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The source: a device, a filesystem name or a host path.
    #[serde(default)]
    pub source: String,
    /// mount(8) options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    /// An idmapped bind mount's uid mappings (runtime-spec 1.1; runc 1.2 makes it).
    #[serde(rename = "uidMappings", default, skip_serializing_if = "Vec::is_empty")]
    pub uid_mappings: Vec<IdMapping>,
    /// An idmapped bind mount's gid mappings.
    #[serde(rename = "gidMappings", default, skip_serializing_if = "Vec::is_empty")]
    pub gid_mappings: Vec<IdMapping>,
}

/// One id mapping of a user namespace or an idmapped mount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdMapping {
    /// First id in the container.
    #[serde(rename = "containerID")]
    pub container_id: u32,
    /// First id on the host.
    #[serde(rename = "hostID")]
    pub host_id: u32,
    /// How many.
    pub size: u32,
}

impl Mount {
    /// A mount of `kind` from `source` at `destination` with `options`.
    pub fn new(destination: &str, kind: &str, source: &str, options: &[&str]) -> Self {
        Mount {
            destination: destination.into(),
            kind: kind.into(),
            source: source.into(),
            options: options.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    /// A bind mount of `source` at `destination`.
    pub fn bind(destination: &str, source: impl Into<String>, options: &[&str]) -> Self {
        Mount {
            source: source.into(),
            ..Mount::new(destination, "bind", "", options)
        }
    }
}

/// Linux specifics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Linux {
    /// The cgroup (cgroupfs path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroups_path: Option<String>,
    /// Namespaces to create or join.
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    /// The uid mappings of a user namespace the runtime makes (or joins: the same ones).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uid_mappings: Vec<IdMapping>,
    /// The gid mappings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gid_mappings: Vec<IdMapping>,
    /// cgroup limits and the device cgroup's rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Device nodes to create.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<Device>,
    /// Sysctls to set.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctl: BTreeMap<String, String>,
    /// Paths masked from the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masked_paths: Option<Vec<String>>,
    /// Paths made read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readonly_paths: Option<Vec<String>>,
    /// The seccomp filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<Seccomp>,
    /// The propagation of the root mount (`rslave`, `rshared`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs_propagation: Option<String>,
}

/// The kinds of namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceKind {
    /// Mounts.
    Mount,
    /// Process ids.
    Pid,
    /// System V IPC and POSIX queues.
    Ipc,
    /// The network.
    Network,
    /// Hostname and domain name.
    Uts,
    /// User and group ids.
    User,
    /// The cgroup root.
    Cgroup,
}

/// A namespace: a new one, or the one at `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    /// Its kind.
    #[serde(rename = "type")]
    pub kind: NamespaceKind,
    /// The namespace to join (`/proc/<pid>/ns/net`, a pinned file), or a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

impl Namespace {
    /// A new namespace of `kind`.
    pub fn new(kind: NamespaceKind) -> Self {
        Namespace { kind, path: None }
    }

    /// The namespace of `kind` at `path`.
    pub fn join(kind: NamespaceKind, path: impl Into<PathBuf>) -> Self {
        Namespace {
            kind,
            path: Some(path.into()),
        }
    }
}

/// cgroup limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// The device cgroup's rules, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceRule>,
    /// Memory limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    /// CPU limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    /// Huge page limits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hugepage_limits: Vec<HugepageLimit>,
    /// cgroup v2 files to write.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unified: BTreeMap<String, String>,
    /// The pids limit (set by NRI plugins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<Pids>,
}

/// The pids cgroup's limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pids {
    /// At most this many tasks.
    pub limit: i64,
}

/// A device cgroup rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRule {
    /// Allow or deny.
    pub allow: bool,
    /// `c`, `b`, or every kind when absent.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The major number, or every one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major: Option<i64>,
    /// The minor number, or every one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor: Option<i64>,
    /// `r`, `w`, `m` in any combination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<String>,
}

impl DeviceRule {
    /// A rule for every device: all allowed (`allow`) or all denied.
    pub fn every(allow: bool) -> Self {
        DeviceRule {
            allow,
            access: Some("rwm".into()),
            ..Default::default()
        }
    }
}

/// Memory limits, in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    /// The limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// Memory plus swap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap: Option<i64>,
}

/// CPU limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cpu {
    /// Relative weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shares: Option<u64>,
    /// CFS quota per period, in µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<i64>,
    /// CFS period, in µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<u64>,
    /// CPUs to run on (`0-3,7`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<String>,
    /// Memory nodes to use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mems: Option<String>,
}

/// A huge page limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HugepageLimit {
    /// The page size (`2MB`).
    pub page_size: String,
    /// The limit in bytes.
    pub limit: u64,
}

/// A device node to create in the container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    /// Its path in the container.
    pub path: String,
    /// `c` or `b`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Major number.
    pub major: i64,
    /// Minor number.
    pub minor: i64,
    /// Permission bits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_mode: Option<u32>,
    /// Owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

/// A seccomp filter. A profile file may carry more (Docker's `archMap`, `includes`); what
/// is not here is ignored, as containerd ignores it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Seccomp {
    /// What a syscall no rule names gets (`SCMP_ACT_ERRNO`).
    #[serde(default)]
    pub default_action: String,
    /// The errno of `defaultAction` when it is `SCMP_ACT_ERRNO`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    /// Architectures (`SCMP_ARCH_X86_64`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    /// Filter flags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// Rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub syscalls: Vec<Syscall>,
}

/// A seccomp rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Syscall {
    /// The syscalls it applies to.
    #[serde(default)]
    pub names: Vec<String>,
    /// What they get (`SCMP_ACT_ALLOW`).
    #[serde(default)]
    pub action: String,
    /// The errno, for `SCMP_ACT_ERRNO`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    /// Conditions on the arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<SyscallArg>,
}

impl Syscall {
    /// `names` get `action`, whatever their arguments.
    pub fn new(names: &[&str], action: &str) -> Self {
        Syscall {
            names: names.iter().map(|s| s.to_string()).collect(),
            action: action.into(),
            ..Default::default()
        }
    }
}

/// A condition on one argument.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyscallArg {
    /// Which argument.
    pub index: u32,
    /// The value compared with.
    pub value: u64,
    /// The second value (the mask's result for `SCMP_CMP_MASKED_EQ`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_two: Option<u64>,
    /// The comparison (`SCMP_CMP_EQ`).
    pub op: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_names_are_the_specs() {
        let spec = Spec {
            oci_version: OCI_VERSION.into(),
            process: Some(Process {
                user: User {
                    uid: 1,
                    gid: 2,
                    additional_gids: vec![3],
                },
                args: vec!["sh".into()],
                cwd: "/".into(),
                no_new_privileges: true,
                oom_score_adj: Some(5),
                capabilities: Some(Capabilities::all(vec!["CAP_KILL".into()])),
                ..Default::default()
            }),
            root: Some(Root {
                path: "rootfs".into(),
                readonly: true,
            }),
            mounts: vec![Mount::bind("/etc/hosts", "/p/hosts", &["rbind", "ro"])],
            linux: Some(Linux {
                cgroups_path: Some("/k8s.io/c1".into()),
                namespaces: vec![
                    Namespace::new(NamespaceKind::Mount),
                    Namespace::join(NamespaceKind::Network, "/proc/7/ns/net"),
                ],
                resources: Some(Resources {
                    devices: vec![DeviceRule::every(false)],
                    hugepage_limits: vec![HugepageLimit {
                        page_size: "2MB".into(),
                        limit: 4,
                    }],
                    ..Default::default()
                }),
                masked_paths: Some(vec![]),
                rootfs_propagation: Some("rslave".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["ociVersion"], "1.0.2");
        assert_eq!(v["process"]["user"]["additionalGids"], json!([3]));
        assert_eq!(v["process"]["noNewPrivileges"], true);
        assert_eq!(v["process"]["oomScoreAdj"], 5);
        assert_eq!(
            v["process"]["capabilities"]["bounding"],
            json!(["CAP_KILL"])
        );
        assert_eq!(v["mounts"][0]["type"], "bind");
        assert_eq!(v["linux"]["cgroupsPath"], "/k8s.io/c1");
        assert_eq!(v["linux"]["namespaces"][0], json!({"type": "mount"}));
        assert_eq!(v["linux"]["namespaces"][1]["path"], "/proc/7/ns/net");
        assert_eq!(
            v["linux"]["resources"]["devices"][0],
            json!({"allow": false, "access": "rwm"})
        );
        assert_eq!(
            v["linux"]["resources"]["hugepageLimits"][0]["pageSize"],
            "2MB"
        );
        // An empty list of masked paths is said (nothing masked), not left out.
        assert_eq!(v["linux"]["maskedPaths"], json!([]));
        assert!(v["linux"].get("readonlyPaths").is_none());
        assert_eq!(v["linux"]["rootfsPropagation"], "rslave");
        assert!(v.get("hostname").is_none());
        let back: Spec = serde_json::from_value(v).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn docker_style_profiles_parse_and_their_extras_are_ignored() {
        let p: Seccomp = serde_json::from_value(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "archMap": [{"architecture": "SCMP_ARCH_X86_64"}],
            "syscalls": [{"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
                "includes": {}, "excludes": {}}],
        }))
        .unwrap();
        assert_eq!(p.syscalls[0].args[0].value_two, Some(0));
        assert!(serde_json::from_value::<Seccomp>(json!({"syscalls": "x"})).is_err());
    }
}

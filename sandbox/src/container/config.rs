//! What CreateContainer asks for, as berth's own types (the agent converts the CRI
//! message, validated, into these).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::spec::oci;

/// How a host path's mount propagates.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum Propagation {
    /// `rprivate`.
    #[default]
    Private,
    /// `rslave`: host mounts appear in the container.
    HostToContainer,
    /// `rshared`: both ways.
    Bidirectional,
}

/// A CRI mount.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Mount {
    /// Path in the container.
    pub container_path: String,
    /// Path on the host.
    pub host_path: String,
    /// Read-only.
    pub readonly: bool,
    /// Read-only all the way down: the mounts under the source too (runc's `rro`). Only
    /// with `readonly` and private propagation.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recursive_read_only: bool,
    /// Propagation.
    pub propagation: Propagation,
    /// An image volume: the image's files, read-only, instead of a host path (`host_path`
    /// is filled in by CreateContainer with where berth mounted them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageMount>,
    /// Extra bind mount options: `noexec`, `nodev`, `nosuid`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    /// Seen through the pod's user namespace (an idmapped mount): the mappings the kubelet
    /// sent with it, which must be the pod's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idmap: Option<crate::userns::UserNamespace>,
}

/// The image of an image volume (KEP-4639).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageMount {
    /// The image as the CRI named it (`ImageSpec.image`: an id, digest or reference).
    pub image: String,
    /// The image as the user wrote it (`ImageSpec.user_specified_image`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user_specified: String,
    /// A directory (or file) of the image to mount instead of its root; relative.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sub_path: String,
    /// The image id it was resolved to (filled in by CreateContainer).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image_id: String,
}

/// A CRI device.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Device {
    /// Path in the container.
    pub container_path: String,
    /// Path on the host.
    pub host_path: String,
    /// Cgroup permissions (`rwm`).
    pub permissions: String,
}

/// Linux resources (CRI `LinuxContainerResources`; zero means unset).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Resources {
    /// CFS period (µs).
    pub cpu_period: i64,
    /// CFS quota (µs).
    pub cpu_quota: i64,
    /// CPU shares.
    pub cpu_shares: i64,
    /// Memory limit (bytes).
    pub memory_limit: i64,
    /// Memory + swap limit (bytes).
    pub memory_swap_limit: i64,
    /// oom_score_adj.
    pub oom_score_adj: i64,
    /// cpuset.cpus.
    pub cpuset_cpus: String,
    /// cpuset.mems.
    pub cpuset_mems: String,
    /// Hugepage limits: page size (`2MB`) → bytes.
    pub hugepage_limits: Vec<(String, u64)>,
    /// cgroup v2 unified settings.
    pub unified: BTreeMap<String, String>,
}

/// How the container's pid namespace is chosen.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum PidMode {
    /// Its own.
    #[default]
    Container,
    /// The pod's (the pause container's).
    Pod,
    /// The host's.
    Node,
    /// Another container's.
    Target(String),
}

/// Seccomp for a pod or a container.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub enum Seccomp {
    /// No filter.
    #[default]
    Unconfined,
    /// berth's default profile.
    RuntimeDefault,
    /// The profile in this host file (an absolute path, as the CRI names it): read when the
    /// pod or container is made, and recorded as the [`Seccomp::Profile`] it held.
    Localhost(String),
    /// A profile, as read from its file.
    Profile(oci::Seccomp),
}

/// The container's security context.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Security {
    /// Privileged.
    pub privileged: bool,
    /// Capabilities to add (`CAP_` prefix optional, `ALL`).
    pub add_capabilities: Vec<String>,
    /// Capabilities to drop (`ALL`).
    pub drop_capabilities: Vec<String>,
    /// Read-only rootfs.
    pub readonly_rootfs: bool,
    /// no_new_privs.
    pub no_new_privs: bool,
    /// uid.
    pub run_as_user: Option<u32>,
    /// User name from the image's passwd.
    pub run_as_username: String,
    /// gid.
    pub run_as_group: Option<u32>,
    /// Supplemental groups.
    pub supplemental_groups: Vec<u32>,
    /// Whether the image's /etc/group adds groups.
    #[serde(default, skip_serializing_if = "is_merge")]
    pub supplemental_groups_policy: crate::users::GroupsPolicy,
    /// Masked paths (`None`: the default set).
    pub masked_paths: Option<Vec<String>>,
    /// Read-only paths (`None`: the default set).
    pub readonly_paths: Option<Vec<String>>,
    /// Seccomp.
    pub seccomp: Seccomp,
    /// Pid namespace.
    pub pid: PidMode,
    /// User namespace (the pod's: see [`crate::userns::UsernsMode::check_against`]).
    #[serde(default, skip_serializing_if = "is_unset")]
    pub userns: crate::userns::UsernsMode,
}

fn is_unset(m: &crate::userns::UsernsMode) -> bool {
    *m == crate::userns::UsernsMode::Unset
}

/// What CreateContainer asked for (validated by the agent).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ContainerConfig {
    /// Name.
    pub name: String,
    /// Attempt.
    pub attempt: u32,
    /// The image as the caller named it (the kubelet names it by id).
    pub image: String,
    /// The image as the pod's author wrote it (`ImageSpec.user_specified_image`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user_specified_image: String,
    /// Replaces the image's entrypoint.
    pub command: Vec<String>,
    /// Replaces the image's cmd.
    pub args: Vec<String>,
    /// Working directory.
    pub working_dir: String,
    /// Environment, in order.
    pub envs: Vec<(String, String)>,
    /// Mounts.
    pub mounts: Vec<Mount>,
    /// Devices.
    pub devices: Vec<Device>,
    /// CDI devices by fully qualified name (`vendor.com/class=name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cdi_devices: Vec<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Log path relative to the pod's log directory.
    pub log_path: String,
    /// Keep stdin open.
    pub stdin: bool,
    /// Close stdin after the first attach ends.
    pub stdin_once: bool,
    /// Allocate a terminal.
    pub tty: bool,
    /// Resources.
    pub resources: Resources,
    /// Security.
    pub security: Security,
    /// The signal that stops it (`SIGTERM`, `SIGRTMIN+3`, …), replacing the image's
    /// (KEP-4960); empty: the image's, else SIGTERM.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stop_signal: String,
}

fn is_merge(p: &crate::users::GroupsPolicy) -> bool {
    *p == crate::users::GroupsPolicy::Merge
}

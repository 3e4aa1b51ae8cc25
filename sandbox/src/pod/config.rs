//! What RunPodSandbox asks for, as berth's own types (the agent converts the CRI message,
//! validated, into these).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::spec::oci;

/// Pod metadata, as the kubelet names a pod.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PodMeta {
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod UID.
    pub uid: String,
    /// Attempt number.
    pub attempt: u32,
}

/// DNS settings for the pod's resolv.conf.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Dns {
    /// Name servers.
    pub servers: Vec<String>,
    /// Search domains.
    pub searches: Vec<String>,
    /// Resolver options.
    pub options: Vec<String>,
}

/// A host port mapping.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortMapping {
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// Port in the pod.
    pub container_port: i32,
    /// Port on the host.
    pub host_port: i32,
    /// Host address to bind, empty for all.
    pub host_ip: String,
}

/// What RunPodSandbox asked for (validated by the agent).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PodConfig {
    /// Metadata.
    pub meta: PodMeta,
    /// Hostname.
    pub hostname: String,
    /// Where container logs go.
    pub log_directory: String,
    /// DNS, or `None` for the host's resolv.conf.
    pub dns: Option<Dns>,
    /// Port mappings.
    pub port_mappings: Vec<PortMapping>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Use the host's network namespace.
    pub host_network: bool,
    /// Use the host's IPC namespace.
    pub host_ipc: bool,
    /// Use the host's pid namespace.
    pub host_pid: bool,
    /// Cgroup parent.
    pub cgroup_parent: String,
    /// Sysctls.
    pub sysctls: BTreeMap<String, String>,
    /// Privileged.
    pub privileged: bool,
    /// Read-only root filesystem for the pause container.
    pub readonly_rootfs: bool,
    /// uid override.
    pub run_as_user: Option<u32>,
    /// gid override.
    pub run_as_group: Option<u32>,
    /// Supplemental groups.
    pub supplemental_groups: Vec<u32>,
    /// A seccomp profile (OCI JSON), `None` for unconfined.
    pub seccomp: Option<oci::Seccomp>,
    /// RuntimeClass handler.
    pub runtime_handler: String,
}

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
    /// A user namespace of the pod's own (CRI mode POD), or the node's (`None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userns: Option<crate::userns::UserNamespace>,
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
    /// The pause container's seccomp. Recorded as the filter itself (`null` for
    /// unconfined), as records have always held it.
    #[serde(
        serialize_with = "seccomp_as_filter",
        deserialize_with = "seccomp_of_any_version"
    )]
    pub seccomp: crate::container::Seccomp,
    /// RuntimeClass handler.
    pub runtime_handler: String,
    /// The pod's resources (the sum of its containers'), as UpdatePodSandboxResources last
    /// said: the kubelet sizes the pod's cgroup itself; berth keeps them for what it reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<crate::container::Resources>,
    /// The pod's overhead (its RuntimeClass's), as UpdatePodSandboxResources last said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overhead: Option<crate::container::Resources>,
}

/// A pod's seccomp as its record holds it: the filter the pause container runs with.
fn seccomp_as_filter<S: serde::Serializer>(
    s: &crate::container::Seccomp,
    ser: S,
) -> Result<S::Ok, S::Error> {
    let caps: Vec<String> = crate::spec::DEFAULT_CAPABILITIES
        .iter()
        .map(|c| c.to_string())
        .collect();
    crate::seccomp::filter(s, &caps)
        .map_err(serde::ser::Error::custom)?
        .serialize(ser)
}

/// A pod record's seccomp: the filter itself (`null` for unconfined), or the setting.
fn seccomp_of_any_version<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<crate::container::Seccomp, D::Error> {
    use crate::container::Seccomp;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Any {
        Now(Seccomp),
        Before(Option<oci::Seccomp>),
    }
    Ok(match Any::deserialize(d)? {
        Any::Now(s) => s,
        Any::Before(None) => Seccomp::Unconfined,
        Any::Before(Some(p)) => Seccomp::Profile(p),
    })
}

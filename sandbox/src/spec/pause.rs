//! The pause container's spec. It holds the pod's namespaces: a network namespace (the
//! pinned netns) and a UTS namespace unless the pod uses the host's network, an IPC
//! namespace unless it uses the host's, its own mount and pid namespaces (the host's pid
//! namespace with `host_pid`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::oci::{
    Capabilities, Cpu, DeviceRule, Linux, Mount, Namespace, NamespaceKind, OCI_VERSION, Process,
    Resources, Root, Seccomp, Spec, User,
};
use super::{
    DEFAULT_CAPABILITIES, MASKED_PATHS, READONLY_PATHS, SANDBOX_OOM_SCORE_ADJ, cgroups_path,
    clamp_oom_score_adj, kernel_mounts, strings, validate_sysctls,
};
use crate::error::{Error, Result};

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
    /// The pinned network namespace, or `None` for `host_network`. In a user namespace the
    /// runtime makes the network namespace instead (one made outside would belong to the
    /// host's user namespace, where the pod's root cannot mount sysfs), and berth pins it at
    /// this path once the task exists.
    pub netns: Option<PathBuf>,
    /// The pod's own user namespace, made here.
    pub userns: Option<crate::userns::UserNamespace>,
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
    /// A seccomp filter, or `None` for unconfined.
    pub seccomp: Option<Seccomp>,
    /// Annotations passed to the shim.
    pub annotations: BTreeMap<String, String>,
    /// The oom_score_adj berth itself runs with (the floor of the clamp).
    pub daemon_oom_score_adj: i64,
}

impl SandboxSpec {
    /// The OCI `config.json` for the pause container. `rootfs` is the bundle's rootfs path.
    pub fn build(&self, rootfs: &str) -> Result<Spec> {
        validate_sysctls(&self.sysctls, self.netns.is_none(), self.host_ipc)?;
        if self.args.is_empty() {
            return Err(Error::Invalid(
                "the sandbox image has no entrypoint or command".into(),
            ));
        }
        let mut namespaces = vec![Namespace::new(NamespaceKind::Mount)];
        if !self.host_pid {
            namespaces.push(Namespace::new(NamespaceKind::Pid));
        }
        if !self.host_ipc {
            namespaces.push(Namespace::new(NamespaceKind::Ipc));
        }
        if let Some(p) = &self.netns {
            namespaces.push(match self.userns {
                Some(_) => Namespace::new(NamespaceKind::Network),
                None => Namespace::join(NamespaceKind::Network, p),
            });
            namespaces.push(Namespace::new(NamespaceKind::Uts));
        }
        if self.userns.is_some() {
            namespaces.push(Namespace::new(NamespaceKind::User));
        }

        let mut mounts = kernel_mounts("ro");
        mounts.push(match (&self.shm, self.host_ipc) {
            // As the tmpfs mounts they bind are (berth mounts the pod's so).
            (_, true) => Mount::bind(
                "/dev/shm",
                "/dev/shm",
                &["rbind", "rw", "nosuid", "nodev", "noexec"],
            ),
            (Some(shm), false) => Mount::bind(
                "/dev/shm",
                shm.display().to_string(),
                &["rbind", "ro", "nosuid", "nodev", "noexec"],
            ),
            (None, false) => Mount::new(
                "/dev/shm",
                "tmpfs",
                "shm",
                &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            ),
        });
        let (masked, readonly) = if self.privileged {
            (None, None)
        } else {
            (Some(strings(MASKED_PATHS)), Some(strings(READONLY_PATHS)))
        };
        let (uid, gid, groups) = &self.user;
        Ok(Spec {
            oci_version: OCI_VERSION.into(),
            hooks: None,
            process: Some(Process {
                terminal: false,
                user: User {
                    uid: *uid,
                    gid: *gid,
                    additional_gids: groups.clone(),
                },
                args: self.args.clone(),
                env: self.env.clone(),
                cwd: "/".into(),
                capabilities: Some(Capabilities::all(strings(DEFAULT_CAPABILITIES))),
                no_new_privileges: !self.privileged,
                oom_score_adj: Some(clamp_oom_score_adj(
                    SANDBOX_OOM_SCORE_ADJ,
                    self.daemon_oom_score_adj,
                )),
                rlimits: vec![],
            }),
            root: Some(Root {
                path: rootfs.into(),
                readonly: self.readonly_rootfs,
            }),
            hostname: (self.netns.is_some() && !self.hostname.is_empty())
                .then(|| self.hostname.clone()),
            mounts,
            annotations: self.annotations.clone(),
            linux: Some(Linux {
                cgroups_path: Some(cgroups_path(&self.cgroup_parent, &self.id)),
                namespaces,
                resources: Some(Resources {
                    cpu: Some(Cpu {
                        shares: Some(2),
                        ..Default::default()
                    }),
                    devices: vec![DeviceRule::every(false)],
                    ..Default::default()
                }),
                sysctl: self.sysctls.clone(),
                masked_paths: masked,
                readonly_paths: readonly,
                seccomp: self.seccomp.clone(),
                uid_mappings: self.userns.iter().map(|u| u.uids.oci()).collect(),
                gid_mappings: self.userns.iter().map(|u| u.gids.oci()).collect(),
                ..Default::default()
            }),
        })
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

    fn kinds(spec: &Spec) -> Vec<NamespaceKind> {
        let linux = spec.linux.as_ref().unwrap();
        linux.namespaces.iter().map(|n| n.kind).collect()
    }

    fn mount<'a>(spec: &'a Spec, dest: &str) -> &'a Mount {
        spec.mounts.iter().find(|m| m.destination == dest).unwrap()
    }

    #[test]
    fn a_pod_gets_its_own_namespaces_unless_it_asks_for_the_hosts() {
        use NamespaceKind::*;
        let s = base().build("/b/rootfs").unwrap();
        assert_eq!(kinds(&s), [Mount, Pid, Ipc, Network, Uts]);
        let linux = s.linux.as_ref().unwrap();
        assert_eq!(
            linux.namespaces[3].path.as_deref(),
            Some(std::path::Path::new("/run/berth/netns/abc"))
        );
        assert_eq!(s.hostname.as_deref(), Some("pod-a"));
        assert_eq!(s.cgroups_path(), Some("/k8s.io/abc"));
        assert_eq!(s.process.as_ref().unwrap().user.uid, 65535);
        let masked = linux.masked_paths.as_ref().unwrap();
        assert!(masked.iter().any(|p| p == "/proc/kcore"));
        assert_eq!(mount(&s, "/dev/shm").source, "/run/berth/sandboxes/abc/shm");

        let host = SandboxSpec {
            netns: None,
            host_ipc: true,
            host_pid: true,
            cgroup_parent: "/kubepods/pod1/".into(),
            ..base()
        };
        let s = host.build("/b/rootfs").unwrap();
        assert_eq!(kinds(&s), [Mount]);
        assert_eq!(
            s.hostname, None,
            "the host's UTS namespace keeps the host's name"
        );
        assert_eq!(s.cgroups_path(), Some("/kubepods/pod1/abc"));
        assert_eq!(mount(&s, "/dev/shm").source, "/dev/shm");
    }

    #[test]
    fn the_pause_process_is_clamped_to_berths_oom_score_adj() {
        let s = SandboxSpec {
            daemon_oom_score_adj: 0,
            ..base()
        }
        .build("/r")
        .unwrap();
        assert_eq!(s.process.unwrap().oom_score_adj, Some(0));
        let s = SandboxSpec {
            daemon_oom_score_adj: -999,
            ..base()
        }
        .build("/r")
        .unwrap();
        assert_eq!(s.process.unwrap().oom_score_adj, Some(-998));
    }

    #[test]
    fn host_reaching_sysctls_and_empty_commands_are_refused() {
        let bad = SandboxSpec {
            sysctls: BTreeMap::from([("kernel.panic".into(), "1".into())]),
            ..base()
        };
        assert_eq!(
            bad.build("/r").unwrap_err().kind(),
            crate::ErrorKind::InvalidArgument
        );
        let none = SandboxSpec {
            args: vec![],
            ..base()
        };
        assert!(none.build("/r").is_err());
    }

    #[test]
    fn privileged_sandboxes_are_unmasked() {
        let s = SandboxSpec {
            privileged: true,
            ..base()
        }
        .build("/r")
        .unwrap();
        let linux = s.linux.as_ref().unwrap();
        assert_eq!(linux.masked_paths, None);
        assert_eq!(linux.readonly_paths, None);
        assert!(!s.process.unwrap().no_new_privileges);
    }

    #[test]
    fn a_pod_in_its_own_user_namespace_makes_it_and_its_network_namespace() {
        let u = crate::userns::UserNamespace::from_root(200_000, 200_000, 65_536);
        let spec = SandboxSpec {
            userns: Some(u),
            ..base()
        }
        .build("rootfs")
        .unwrap();
        let linux = spec.linux.as_ref().unwrap();
        // The network namespace is made inside the user namespace, not joined.
        assert!(
            linux
                .namespaces
                .contains(&Namespace::new(NamespaceKind::User))
        );
        assert!(
            linux
                .namespaces
                .contains(&Namespace::new(NamespaceKind::Network))
        );
        assert_eq!(linux.uid_mappings, [u.uids.oci()]);
        assert_eq!(linux.gid_mappings, [u.gids.oci()]);
        let plain = base().build("rootfs").unwrap();
        let linux = plain.linux.as_ref().unwrap();
        assert!(!kinds(&plain).contains(&NamespaceKind::User));
        assert!(linux.namespaces.contains(&Namespace::join(
            NamespaceKind::Network,
            "/run/berth/netns/abc"
        )));
        assert!(linux.uid_mappings.is_empty());
    }
}

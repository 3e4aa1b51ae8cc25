//! An application container's spec, by the kubelet's and containerd's rules:
//!
//! - argv: the config's `command` replaces the image's ENTRYPOINT (and drops its CMD), its
//!   `args` replace CMD;
//! - env: a default `PATH` unless the image has one, then the image's, then `HOSTNAME` (own
//!   network namespace), then the config's; a later value for a name replaces an earlier;
//! - working directory: the config's, else the image's, else `/`; it must be absolute;
//! - mounts: the kernel filesystems, `/sys/fs/cgroup`, the pod's `hostname`, `hosts`,
//!   `resolv.conf` and `/dev/shm`, then the CRI's bind mounts (parents first); a CRI mount
//!   at a path replaces the default there; propagation as asked, checked against the
//!   host's mount;
//! - namespaces: the pause container's network and UTS (unless host network) and IPC
//!   (unless host IPC); pid per [`PidMode`]; its user namespace if the pod has one, with the
//!   pod's files and the mounts the kubelet sent mappings for idmapped;
//! - privileged: every host device, all capabilities berth holds, nothing masked, `/sys`
//!   and `/sys/fs/cgroup` writable, no seccomp;
//! - capabilities ([`caps`](super::caps)), masked and read-only paths (the defaults unless
//!   the config gives its own), seccomp (none, berth's default or a profile), resources,
//!   devices with their cgroup rules, a read-only root, `oom_score_adj` clamped to berth's.

use std::path::{Path, PathBuf};

use super::caps;
use super::host::Host;
use super::oci::{
    Capabilities, DeviceRule, Linux, Mount, Namespace, NamespaceKind, OCI_VERSION, Process, Root,
    Spec, User,
};
use super::{MASKED_PATHS, READONLY_PATHS, cgroups_path, clamp_oom_score_adj, kernel_mounts};
use crate::container::{ContainerConfig, Device, PidMode, Propagation};
use crate::error::{Error, Result};
use crate::pod::PodConfig;

/// The `PATH` a container gets when its image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a container spec is built from.
#[derive(Debug, Clone)]
pub struct ContainerSpec<'a> {
    /// Container id.
    pub id: &'a str,
    /// The CRI config.
    pub config: &'a ContainerConfig,
    /// The pod's id.
    pub pod_id: &'a str,
    /// The pod's config.
    pub pod: &'a PodConfig,
    /// The pause process's pid (its namespaces are joined).
    pub pause_pid: u32,
    /// The pod's directory (hostname, hosts, resolv.conf, shm).
    pub pod_dir: &'a Path,
    /// The image's config.
    pub image: &'a berth_image::manifest::ContainerConfig,
    /// Who it runs as.
    pub ids: crate::users::Ids,
    /// The pid of a TARGET container's init, for `PidMode::Target`.
    pub target_pid: Option<u32>,
    /// The capabilities berth holds ([`caps::own_capabilities`]).
    pub own_capabilities: &'a [String],
    /// berth's own oom_score_adj.
    pub daemon_oom_score_adj: i64,
}

impl ContainerSpec<'_> {
    /// The OCI `config.json`; `host` answers what the spec needs of the machine.
    pub fn build(&self, host: &dyn Host) -> Result<Spec> {
        let c = self.config;
        let sec = &c.security;
        let caps = caps::effective(
            sec.privileged,
            &sec.add_capabilities,
            &sec.drop_capabilities,
            self.own_capabilities,
        )?;
        let (mounts, rootfs_propagation) = self.mounts(host)?;
        let (devices, mut rules) = if sec.privileged {
            (host.devices(), vec![DeviceRule::every(true)])
        } else {
            (vec![], vec![DeviceRule::every(false)])
        };
        let mut devices = devices;
        for d in &c.devices {
            let (dev, rule) = device(host, d)?;
            devices.push(dev);
            rules.push(rule);
        }
        let mut resources = super::resources::linux_resources(&c.resources, host.hugetlb());
        resources.devices = rules;
        let unprivileged = !sec.privileged;
        let seccomp = if sec.privileged {
            None
        } else {
            crate::seccomp::filter(&sec.seccomp, &caps)?
        };
        let ids = &self.ids;
        Ok(Spec {
            oci_version: OCI_VERSION.into(),
            hooks: None,
            process: Some(Process {
                terminal: c.tty,
                user: User {
                    uid: ids.uid,
                    gid: ids.gid,
                    additional_gids: ids.additional.clone(),
                },
                args: self.args()?,
                env: self.env(),
                cwd: self.cwd()?,
                capabilities: Some(Capabilities::all(caps)),
                no_new_privileges: sec.no_new_privs,
                oom_score_adj: Some(clamp_oom_score_adj(
                    c.resources.oom_score_adj,
                    self.daemon_oom_score_adj,
                )),
                rlimits: vec![],
            }),
            root: Some(Root {
                path: "rootfs".into(),
                readonly: sec.readonly_rootfs,
            }),
            hostname: None,
            mounts,
            annotations: self.annotations(),
            linux: Some(Linux {
                cgroups_path: Some(cgroups_path(&self.pod.cgroup_parent, self.id)),
                namespaces: self.namespaces()?,
                resources: Some(resources),
                devices,
                sysctl: Default::default(),
                masked_paths: unprivileged.then(|| {
                    sec.masked_paths
                        .clone()
                        .unwrap_or_else(|| super::strings(MASKED_PATHS))
                }),
                readonly_paths: unprivileged.then(|| {
                    sec.readonly_paths
                        .clone()
                        .unwrap_or_else(|| super::strings(READONLY_PATHS))
                }),
                seccomp,
                rootfs_propagation: rootfs_propagation.map(str::to_string),
                uid_mappings: self.pod.userns.iter().map(|u| u.uids.oci()).collect(),
                gid_mappings: self.pod.userns.iter().map(|u| u.gids.oci()).collect(),
            }),
        })
    }

    /// ENTRYPOINT and CMD as the kubelet documents them: `command` replaces ENTRYPOINT
    /// (and drops CMD), `args` replace CMD.
    fn args(&self) -> Result<Vec<String>> {
        let (c, image) = (self.config, self.image);
        let entry = if c.command.is_empty() {
            image.entrypoint.clone().unwrap_or_default()
        } else {
            c.command.clone()
        };
        let cmd = if !c.args.is_empty() {
            c.args.clone()
        } else if c.command.is_empty() {
            image.cmd.clone().unwrap_or_default()
        } else {
            vec![]
        };
        let args: Vec<String> = entry.into_iter().chain(cmd).collect();
        if args.is_empty() {
            return Err(Error::Invalid(
                "no command: neither the container config nor the image has one".into(),
            ));
        }
        Ok(args)
    }

    /// The image's env, then the pod's hostname, then the config's; a later value for a
    /// name replaces an earlier one.
    fn env(&self) -> Vec<String> {
        let mut env: Vec<String> = Vec::new();
        let mut set = |k: &str, v: &str| {
            let prefix = format!("{k}=");
            env.retain(|e| !e.starts_with(&prefix));
            env.push(format!("{k}={v}"));
        };
        let image_env = self.image.env.as_deref().unwrap_or_default();
        if !image_env.iter().any(|v| v.starts_with("PATH=")) {
            set("PATH", DEFAULT_PATH);
        }
        for e in image_env {
            match e.split_once('=') {
                Some((k, v)) => set(k, v),
                None => set(e, ""),
            }
        }
        if !self.pod.hostname.is_empty() && !self.pod.host_network {
            set("HOSTNAME", &self.pod.hostname);
        }
        for (k, v) in &self.config.envs {
            set(k, v);
        }
        env
    }

    fn cwd(&self) -> Result<String> {
        let (c, image) = (self.config, self.image);
        let cwd = if !c.working_dir.is_empty() {
            c.working_dir.clone()
        } else if !image.working_dir.is_empty() {
            image.working_dir.clone()
        } else {
            "/".into()
        };
        if !cwd.starts_with('/') {
            return Err(Error::Invalid(format!(
                "working directory {cwd:?} must be absolute"
            )));
        }
        Ok(cwd)
    }

    /// The default mounts (less those a CRI mount replaces), then the CRI's; and the root's
    /// propagation a CRI mount's propagation calls for.
    fn mounts(&self, host: &dyn Host) -> Result<(Vec<Mount>, Option<&'static str>)> {
        let c = self.config;
        let sec = &c.security;
        let ro = if sec.privileged { "rw" } else { "ro" };
        let file_mode = if sec.readonly_rootfs { "ro" } else { "rw" };
        let mut defaults = kernel_mounts(ro);
        defaults.push(Mount::new(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", ro],
        ));
        // Every bind keeps the flags its source's mount has (see `MountLocks`). In a user
        // namespace the pod's own files are seen through it: owned by the pod's root.
        let bind = |dest: &str, src: &Path, options: &[&'static str]| {
            let mut o = options.to_vec();
            o.extend(host.mount_locks(src).options());
            idmapped(
                Mount::bind(dest, src.display().to_string(), &o),
                self.pod.userns.as_ref(),
            )
        };
        for f in ["hostname", "hosts", "resolv.conf"] {
            defaults.push(bind(
                &format!("/etc/{f}"),
                &self.pod_dir.join(f),
                &["rbind", "rprivate", file_mode],
            ));
        }
        let shm = if self.pod.host_ipc {
            PathBuf::from("/dev/shm")
        } else {
            self.pod_dir.join("shm")
        };
        defaults.push(bind("/dev/shm", &shm, &["rbind", "rprivate", "rw"]));
        let mut mounts: Vec<Mount> = defaults
            .into_iter()
            .filter(|d| !c.mounts.iter().any(|m| m.container_path == d.destination))
            .collect();

        let mut rootfs_propagation = None;
        let mut user_mounts: Vec<_> = c.mounts.iter().collect();
        // Parents before children.
        user_mounts.sort_by_key(|m| Path::new(&m.container_path).components().count());
        for m in user_mounts {
            if !m.container_path.starts_with('/') {
                return Err(Error::Invalid(format!(
                    "mount destination {:?} must be absolute",
                    m.container_path
                )));
            }
            let src = host.mount_source(&m.host_path)?;
            let on_host = host.propagation(&src).unwrap_or_default();
            let prop = match m.propagation {
                Propagation::Private => "rprivate",
                Propagation::HostToContainer => {
                    if !(on_host.shared || on_host.slave) {
                        return Err(Error::Invalid(format!(
                            "mount {} asks for host-to-container propagation but {} is on a private mount (make it shared or slave)",
                            m.container_path, m.host_path
                        )));
                    }
                    if rootfs_propagation != Some("rshared") {
                        rootfs_propagation = Some("rslave");
                    }
                    "rslave"
                }
                Propagation::Bidirectional => {
                    if !on_host.shared {
                        return Err(Error::Invalid(format!(
                            "mount {} asks for bidirectional propagation but {} is not on a shared mount",
                            m.container_path, m.host_path
                        )));
                    }
                    rootfs_propagation = Some("rshared");
                    "rshared"
                }
            };
            let mode = match (m.recursive_read_only, m.readonly) {
                (true, _) => "rro",
                (false, true) => "ro",
                (false, false) => "rw",
            };
            let mut options = vec!["rbind", prop, mode];
            options.extend(m.options.iter().map(String::as_str));
            for o in host.mount_locks(&src).options() {
                if !options.contains(&o) {
                    options.push(o);
                }
            }
            mounts.push(idmapped(
                Mount::bind(&m.container_path, src.display().to_string(), &options),
                m.idmap.as_ref(),
            ));
        }
        Ok((mounts, rootfs_propagation))
    }

    /// The pause container's network, UTS and IPC namespaces (unless the host's); the pid
    /// namespace per the config's mode.
    fn namespaces(&self) -> Result<Vec<Namespace>> {
        use NamespaceKind as K;
        let pause = self.pause_pid;
        let of_pause = |t: &str| format!("/proc/{pause}/ns/{t}");
        let mut out = vec![Namespace::new(K::Mount)];
        if self.pod.userns.is_some() {
            out.push(Namespace::join(K::User, of_pause("user")));
        }
        if !self.pod.host_network {
            out.push(Namespace::join(K::Network, of_pause("net")));
            out.push(Namespace::join(K::Uts, of_pause("uts")));
        }
        if !self.pod.host_ipc {
            out.push(Namespace::join(K::Ipc, of_pause("ipc")));
        }
        match &self.config.security.pid {
            PidMode::Node => {}
            PidMode::Container => out.push(Namespace::new(K::Pid)),
            PidMode::Pod if self.pod.host_pid => {}
            PidMode::Pod => out.push(Namespace::join(K::Pid, of_pause("pid"))),
            PidMode::Target(_) => match self.target_pid {
                Some(p) => out.push(Namespace::join(K::Pid, format!("/proc/{p}/ns/pid"))),
                None => {
                    return Err(Error::Precondition(
                        "the target container of the pid namespace is not running".into(),
                    ));
                }
            },
        }
        Ok(out)
    }

    /// The config's annotations, with the CRI's own (which the shim and runsc read).
    fn annotations(&self) -> std::collections::BTreeMap<String, String> {
        let c = self.config;
        let pm = &self.pod.meta;
        let mut out = c.annotations.clone();
        for (k, v) in [
            ("io.kubernetes.cri.container-type", "container"),
            ("io.kubernetes.cri.container-name", c.name.as_str()),
            ("io.kubernetes.cri.sandbox-id", self.pod_id),
            ("io.kubernetes.cri.sandbox-name", pm.name.as_str()),
            ("io.kubernetes.cri.sandbox-namespace", pm.namespace.as_str()),
            ("io.kubernetes.cri.sandbox-uid", pm.uid.as_str()),
            ("io.kubernetes.cri.image-name", c.image.as_str()),
        ] {
            out.insert(k.into(), v.into());
        }
        out
    }
}

/// `m`, seen through the user namespace `userns` if there is one.
fn idmapped(mut m: Mount, userns: Option<&crate::userns::UserNamespace>) -> Mount {
    if let Some(u) = userns {
        m.uid_mappings = vec![u.uids.oci()];
        m.gid_mappings = vec![u.gids.oci()];
    }
    m
}

/// A CRI device: the node to create and its cgroup rule.
fn device(host: &dyn Host, d: &Device) -> Result<(super::oci::Device, DeviceRule)> {
    let perms = if d.permissions.is_empty() {
        "rwm"
    } else {
        d.permissions.as_str()
    };
    if !perms.chars().all(|c| "rwm".contains(c)) {
        return Err(Error::Invalid(format!(
            "device {} permissions {perms:?}: only r, w and m",
            d.host_path
        )));
    }
    let mut dev = host.device(&d.host_path)?;
    dev.path = d.container_path.clone();
    let rule = DeviceRule {
        allow: true,
        kind: Some(dev.kind.clone()),
        major: Some(dev.major),
        minor: Some(dev.minor),
        access: Some(perms.into()),
    };
    Ok((dev, rule))
}

#[cfg(test)]
#[path = "container_tests.rs"]
mod tests;

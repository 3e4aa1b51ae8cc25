//! CreateContainer's request, validated and turned into the sandbox runtime's
//! [`ContainerConfig`].

use berth_cri_api::v1 as cri;
use berth_sandbox::container::{
    ContainerConfig, Device, ImageMount, Mount, PidMode, Propagation, Resources, Security,
};
use berth_sandbox::users::GroupsPolicy;
use tonic::Status;

use super::container_status::signal_name;
use super::security::{seccomp, user_ids};
use super::validate::{self as v, invalid};

/// Validates a CreateContainer request: (pod id, config).
pub(crate) fn container_config(
    req: cri::CreateContainerRequest,
) -> Result<(String, ContainerConfig), Status> {
    if req.pod_sandbox_id.is_empty() {
        return Err(invalid("pod_sandbox_id is required"));
    }
    let c = req.config.ok_or_else(|| invalid("config is required"))?;
    let m = c
        .metadata
        .ok_or_else(|| invalid("config.metadata is required"))?;
    v::name("config.metadata.name", &m.name, v::MAX_NAME)?;
    if m.name.contains('_') {
        return Err(invalid(format!(
            "container name {} may not contain '_' (berth joins names with it)",
            v::shown(&m.name)
        )));
    }
    let (image, user_specified_image) = c
        .image
        .map(|i| (i.image, i.user_specified_image))
        .unwrap_or_default();
    if image.is_empty() {
        return Err(invalid("config.image.image is required"));
    }
    if !user_specified_image.is_empty() {
        v::word(
            "config.image.user_specified_image",
            &user_specified_image,
            v::MAX_PATH,
        )?;
    }
    if c.log_path.starts_with('/')
        || c.log_path.split('/').any(|p| p == "..")
        || c.log_path.len() > v::MAX_PATH
        || c.log_path.contains('\0')
    {
        return Err(invalid(format!(
            "log_path {} must be relative to the pod's log directory, without '..'",
            v::shown(&c.log_path)
        )));
    }
    if !c.working_dir.is_empty() {
        v::absolute_path("working_dir", &c.working_dir)?;
    }
    v::map("labels", &c.labels)?;
    v::map("annotations", &c.annotations)?;
    let linux = c.linux.unwrap_or_default();
    let security = security(linux.security_context.unwrap_or_default())?;
    Ok((
        req.pod_sandbox_id,
        ContainerConfig {
            name: m.name,
            attempt: m.attempt,
            image,
            user_specified_image,
            command: c.command,
            args: c.args,
            working_dir: c.working_dir,
            envs: envs(c.envs)?,
            mounts: c.mounts.into_iter().map(mount).collect::<Result<_, _>>()?,
            devices: devices(c.devices)?,
            cdi_devices: c
                .cdi_devices
                .into_iter()
                .map(|d| {
                    berth_sandbox::cdi::check_name(&d.name)
                        .map(|()| d.name)
                        .map_err(|e| invalid(format!("cdi_devices: {e}")))
                })
                .collect::<Result<_, _>>()?,
            labels: c.labels.into_iter().collect(),
            annotations: c.annotations.into_iter().collect(),
            log_path: c.log_path,
            stdin: c.stdin,
            stdin_once: c.stdin_once,
            tty: c.tty,
            resources: resources(linux.resources)?,
            security,
            stop_signal: match cri::Signal::try_from(c.stop_signal) {
                Ok(cri::Signal::RuntimeDefault) => String::new(),
                Ok(sig) => signal_name(sig),
                Err(_) => return Err(invalid(format!("unknown stop_signal {}", c.stop_signal))),
            },
        },
    ))
}

/// The container's environment. The CRI carries values as bytes; an OCI spec (JSON)
/// carries strings, so a value that is not UTF-8 could only be mangled on its way to the
/// process: it is refused.
fn envs(kvs: Vec<cri::KeyValue>) -> Result<Vec<(String, String)>, Status> {
    kvs.into_iter()
        .map(|kv| match String::from_utf8(kv.value) {
            Ok(val) if !kv.key.is_empty() && !kv.key.contains(['=', '\0']) && !val.contains('\0') => {
                Ok((kv.key, val))
            }
            _ => Err(invalid(format!(
                "environment variable {} is invalid: a name without '=' or NUL, a UTF-8 value without NUL",
                v::shown(&kv.key)
            ))),
        })
        .collect()
}

/// An image volume's image and sub path, checked (`None`: a host path mount).
fn image_mount(mt: &cri::Mount) -> Result<Option<ImageMount>, Status> {
    let at = v::shown(&mt.container_path);
    let Some(i) = mt.image.as_ref().filter(|i| !i.image.is_empty()) else {
        if !mt.image_sub_path.is_empty() {
            return Err(invalid(format!(
                "mount at {at}: image_sub_path without an image"
            )));
        }
        return Ok(None);
    };
    if !mt.readonly {
        return Err(invalid(format!(
            "mount at {at}: an image volume is read-only; set readonly"
        )));
    }
    if !mt.host_path.is_empty() {
        return Err(invalid(format!(
            "mount at {at}: an image volume has no host_path (got {})",
            v::shown(&mt.host_path)
        )));
    }
    v::word("image volume image", &i.image, v::MAX_PATH)?;
    if !mt.image_sub_path.is_empty() {
        v::relative_path("image volume image_sub_path", &mt.image_sub_path)?;
    }
    Ok(Some(ImageMount {
        image: i.image.clone(),
        user_specified: i.user_specified_image.clone(),
        sub_path: mt.image_sub_path.trim_end_matches('/').to_string(),
        image_id: String::new(),
    }))
}

/// One mount: a host path or an image volume, its propagation and options checked.
fn mount(mt: cri::Mount) -> Result<Mount, Status> {
    let image = image_mount(&mt)?;
    let at = v::shown(&mt.container_path);
    v::absolute_path("mount container_path", &mt.container_path)?;
    if image.is_none() {
        v::absolute_path("mount host_path", &mt.host_path)?;
    }
    let propagation = match cri::MountPropagation::try_from(mt.propagation) {
        Ok(cri::MountPropagation::PropagationPrivate) => Propagation::Private,
        Ok(cri::MountPropagation::PropagationHostToContainer) => Propagation::HostToContainer,
        Ok(cri::MountPropagation::PropagationBidirectional) => Propagation::Bidirectional,
        Err(_) => {
            return Err(invalid(format!(
                "unknown mount propagation {}",
                mt.propagation
            )));
        }
    };
    if mt.recursive_read_only {
        if !mt.readonly {
            return Err(invalid(format!(
                "mount at {at}: recursive_read_only needs readonly too"
            )));
        }
        if propagation != Propagation::Private {
            return Err(invalid(format!(
                "mount at {at}: a recursively read-only mount must have private propagation (mounts propagated into it later would be writable)"
            )));
        }
    }
    let mut options = Vec::new();
    for opt in &mt.mount_options {
        if !matches!(opt.as_str(), "noexec" | "nodev" | "nosuid") {
            return Err(invalid(format!(
                "mount at {at}: mount option {} is not one of noexec, nodev, nosuid",
                v::shown(opt)
            )));
        }
        if !options.contains(opt) {
            options.push(opt.clone());
        }
    }
    let idmap = super::security::mount_idmap(&mt, &at)?;
    Ok(Mount {
        idmap,
        container_path: mt.container_path,
        host_path: mt.host_path,
        readonly: mt.readonly,
        recursive_read_only: mt.recursive_read_only,
        propagation,
        image,
        options,
    })
}

/// The devices, their paths and permissions checked.
fn devices(devices: Vec<cri::Device>) -> Result<Vec<Device>, Status> {
    devices
        .into_iter()
        .map(|d| {
            v::absolute_path("device container_path", &d.container_path)?;
            v::absolute_path("device host_path", &d.host_path)?;
            if d.permissions.len() > 3 || !d.permissions.chars().all(|p| "rwm".contains(p)) {
                return Err(invalid(format!(
                    "device permissions {} may only combine r, w and m",
                    v::shown(&d.permissions)
                )));
            }
            Ok(Device {
                container_path: d.container_path,
                host_path: d.host_path,
                permissions: d.permissions,
            })
        })
        .collect()
}

/// The container's security context: users, capabilities, paths, pid namespace, seccomp.
fn security(sc: cri::LinuxContainerSecurityContext) -> Result<Security, Status> {
    if !sc.run_as_username.is_empty() {
        v::word("run_as_username", &sc.run_as_username, 256)?;
    }
    for p in sc.masked_paths.iter().chain(&sc.readonly_paths) {
        v::absolute_path("masked or readonly path", p)?;
    }
    if sc.run_as_group.is_some() && sc.run_as_user.is_none() && sc.run_as_username.is_empty() {
        return Err(invalid(
            "run_as_group is set without run_as_user or run_as_username",
        ));
    }
    let ns = sc.namespace_options.clone().unwrap_or_default();
    let pid = match cri::NamespaceMode::try_from(ns.pid) {
        Ok(cri::NamespaceMode::Container) => PidMode::Container,
        Ok(cri::NamespaceMode::Pod) => PidMode::Pod,
        Ok(cri::NamespaceMode::Node) => PidMode::Node,
        Ok(cri::NamespaceMode::Target) => {
            if ns.target_id.is_empty() {
                return Err(invalid("pid namespace TARGET needs a target_id"));
            }
            PidMode::Target(ns.target_id.clone())
        }
        Err(_) => return Err(invalid(format!("unknown pid namespace mode {}", ns.pid))),
    };
    let userns = super::security::userns(
        ns.userns_options.as_ref(),
        "linux.security_context.namespace_options.userns_options",
    )?;
    let caps = sc.capabilities.clone().unwrap_or_default();
    let (run_as_user, run_as_group, supplemental_groups) = user_ids(
        sc.run_as_user.as_ref(),
        sc.run_as_group.as_ref(),
        &sc.supplemental_groups,
    )?;
    let supplemental_groups_policy =
        match cri::SupplementalGroupsPolicy::try_from(sc.supplemental_groups_policy) {
            Ok(cri::SupplementalGroupsPolicy::Merge) => GroupsPolicy::Merge,
            Ok(cri::SupplementalGroupsPolicy::Strict) => GroupsPolicy::Strict,
            Err(_) => {
                return Err(invalid(format!(
                    "unknown supplemental_groups_policy {}",
                    sc.supplemental_groups_policy
                )));
            }
        };
    #[allow(deprecated)]
    let seccomp = seccomp(sc.seccomp.as_ref(), &sc.seccomp_profile_path)?;
    Ok(Security {
        privileged: sc.privileged,
        add_capabilities: caps.add_capabilities,
        drop_capabilities: caps.drop_capabilities,
        readonly_rootfs: sc.readonly_rootfs,
        no_new_privs: sc.no_new_privs,
        run_as_user,
        run_as_username: sc.run_as_username,
        run_as_group,
        supplemental_groups,
        supplemental_groups_policy,
        masked_paths: (!sc.masked_paths.is_empty()).then_some(sc.masked_paths),
        readonly_paths: (!sc.readonly_paths.is_empty()).then_some(sc.readonly_paths),
        seccomp,
        pid,
        userns,
    })
}

/// CRI resources → berth's.
pub(crate) fn resources(r: Option<cri::LinuxContainerResources>) -> Result<Resources, Status> {
    let r = r.unwrap_or_default();
    for (name, v, min) in [
        ("cpu_period", r.cpu_period, 0),
        ("cpu_quota", r.cpu_quota, -1),
        ("cpu_shares", r.cpu_shares, 0),
        ("memory_limit_in_bytes", r.memory_limit_in_bytes, 0),
        (
            "memory_swap_limit_in_bytes",
            r.memory_swap_limit_in_bytes,
            -1,
        ),
    ] {
        if v < min {
            return Err(invalid(format!(
                "resources.{name} is {v}; it must be at least {min}"
            )));
        }
    }
    for (name, v) in [
        ("cpuset_cpus", &r.cpuset_cpus),
        ("cpuset_mems", &r.cpuset_mems),
    ] {
        if !v
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b',' || b == b'-')
        {
            return Err(invalid(format!(
                "resources.{name} {} is not a list of numbers and ranges (0-3,5)",
                v::shown(v)
            )));
        }
    }
    Ok(Resources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit: r.memory_limit_in_bytes,
        memory_swap_limit: r.memory_swap_limit_in_bytes,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus,
        cpuset_mems: r.cpuset_mems,
        hugepage_limits: r
            .hugepage_limits
            .into_iter()
            .map(|h| (h.page_size, h.limit))
            .collect(),
        unified: r.unified.into_iter().collect(),
    })
}

//! CRI container calls: conversions between CRI messages and the sandbox crate's types.

use std::collections::{BTreeMap, HashMap};

use berth_cri_api::v1 as cri;
use berth_sandbox::container::{
    ContainerConfig, ContainerEvent, ContainerEventKind, ContainerFilter, ContainerRecord,
    ContainerState, Device, ImageMount, Mount, PidMode, Propagation, Resources, Seccomp, Security,
};
use berth_sandbox::users::GroupsPolicy;
use tonic::Status;

fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

/// (run_as_user, run_as_group, supplemental groups).
pub(crate) type UserIds = (Option<u32>, Option<u32>, Vec<u32>);

/// run_as_user, run_as_group and supplemental groups as ids, for pods and containers alike.
pub(crate) fn user_ids(
    user: Option<&cri::Int64Value>,
    group: Option<&cri::Int64Value>,
    groups: &[i64],
) -> Result<UserIds, Status> {
    let id = |v: &cri::Int64Value, what: &str| {
        u32::try_from(v.value).map_err(|_| invalid(format!("{what} {} is out of range", v.value)))
    };
    Ok((
        user.map(|v| id(v, "run_as_user")).transpose()?,
        group.map(|v| id(v, "run_as_group")).transpose()?,
        groups
            .iter()
            .map(|g| {
                u32::try_from(*g)
                    .map_err(|_| invalid(format!("supplemental group {g} out of range")))
            })
            .collect::<Result<_, _>>()?,
    ))
}

/// CRI resources → berth's.
pub(crate) fn resources(r: Option<cri::LinuxContainerResources>) -> Resources {
    let r = r.unwrap_or_default();
    Resources {
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
    }
}

fn to_cri_resources(r: &Resources) -> cri::LinuxContainerResources {
    cri::LinuxContainerResources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_in_bytes: r.memory_limit,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|(s, l)| cri::HugepageLimit {
                page_size: s.clone(),
                limit: *l,
            })
            .collect(),
        unified: r.unified.clone().into_iter().collect(),
        memory_swap_limit_in_bytes: r.memory_swap_limit,
    }
}

/// A Localhost profile: its path (the sandbox runtime reads the file where it builds the
/// spec).
fn localhost(path: &str) -> Result<Seccomp, Status> {
    super::validate::absolute_path("seccomp localhost profile", path)?;
    Ok(Seccomp::Localhost(path.to_string()))
}

/// Seccomp from the CRI field, or else from the deprecated path form (pods and containers).
pub(crate) fn seccomp(field: Option<&cri::SecurityProfile>, path: &str) -> Result<Seccomp, Status> {
    use cri::security_profile::ProfileType as P;
    if let Some(p) = field {
        return match P::try_from(p.profile_type) {
            Ok(P::Unconfined) => Ok(Seccomp::Unconfined),
            Ok(P::RuntimeDefault) => Ok(Seccomp::RuntimeDefault),
            Ok(P::Localhost) => localhost(&p.localhost_ref),
            Err(_) => Err(invalid(format!(
                "unknown seccomp profile type {}",
                p.profile_type
            ))),
        };
    }
    match path {
        // containerd 1.6 leaves an unset profile unconfined.
        "" | "unconfined" => Ok(Seccomp::Unconfined),
        "runtime/default" | "docker/default" => Ok(Seccomp::RuntimeDefault),
        p if p.starts_with("localhost/") => localhost(&p["localhost/".len()..]),
        other => Err(invalid(format!(
            "seccomp profile {other:?} is not supported: use runtime/default, unconfined or localhost/<absolute path>"
        ))),
    }
}

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
    use super::validate as v;
    v::name("config.metadata.name", &m.name, v::MAX_NAME)?;
    if m.name.contains('_') {
        return Err(invalid(format!(
            "container name {} may not contain '_' (berth joins names with it)",
            v::shown(&m.name)
        )));
    }
    let image = c.image.map(|i| i.image).unwrap_or_default();
    if image.is_empty() {
        return Err(invalid("config.image.image is required"));
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
    let sc = linux.security_context.unwrap_or_default();
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
    let caps = sc.capabilities.clone().unwrap_or_default();
    let mut envs = Vec::new();
    for kv in c.envs {
        // The CRI carries values as bytes; an OCI spec (JSON) carries strings, so a value
        // that is not UTF-8 could only be mangled on its way to the process.
        let value = match String::from_utf8(kv.value) {
            Ok(v) if !kv.key.is_empty() && !kv.key.contains(['=', '\0']) && !v.contains('\0') => v,
            _ => {
                return Err(invalid(format!(
                    "environment variable {} is invalid: a name without '=' or NUL, a UTF-8 value without NUL",
                    v::shown(&kv.key)
                )));
            }
        };
        envs.push((kv.key, value));
    }
    let mut mounts = Vec::new();
    for mt in c.mounts {
        let image = match mt.image.as_ref().filter(|i| !i.image.is_empty()) {
            Some(i) => {
                let at = v::shown(&mt.container_path);
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
                Some(ImageMount {
                    image: i.image.clone(),
                    user_specified: i.user_specified_image.clone(),
                    sub_path: mt.image_sub_path.trim_end_matches('/').to_string(),
                    image_id: String::new(),
                })
            }
            None => {
                if !mt.image_sub_path.is_empty() {
                    return Err(invalid(format!(
                        "mount at {}: image_sub_path without an image",
                        v::shown(&mt.container_path)
                    )));
                }
                None
            }
        };
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
                    "mount at {}: recursive_read_only needs readonly too",
                    v::shown(&mt.container_path)
                )));
            }
            if propagation != Propagation::Private {
                return Err(invalid(format!(
                    "mount at {}: a recursively read-only mount must have private propagation (mounts propagated into it later would be writable)",
                    v::shown(&mt.container_path)
                )));
            }
        }
        let options = {
            let mut o = Vec::new();
            for opt in &mt.mount_options {
                if !matches!(opt.as_str(), "noexec" | "nodev" | "nosuid") {
                    return Err(invalid(format!(
                        "mount at {}: mount option {} is not one of noexec, nodev, nosuid",
                        v::shown(&mt.container_path),
                        v::shown(opt)
                    )));
                }
                if !o.contains(opt) {
                    o.push(opt.clone());
                }
            }
            o
        };
        mounts.push(Mount {
            container_path: mt.container_path,
            host_path: mt.host_path,
            readonly: mt.readonly,
            recursive_read_only: mt.recursive_read_only,
            propagation,
            image,
            options,
        });
    }
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
    let security = Security {
        privileged: sc.privileged,
        add_capabilities: caps.add_capabilities,
        drop_capabilities: caps.drop_capabilities,
        readonly_rootfs: sc.readonly_rootfs,
        no_new_privs: sc.no_new_privs,
        run_as_user,
        run_as_username: sc.run_as_username.clone(),
        run_as_group,
        supplemental_groups,
        supplemental_groups_policy,
        masked_paths: (!sc.masked_paths.is_empty()).then(|| sc.masked_paths.clone()),
        readonly_paths: (!sc.readonly_paths.is_empty()).then(|| sc.readonly_paths.clone()),
        seccomp: {
            #[allow(deprecated)]
            seccomp(sc.seccomp.as_ref(), &sc.seccomp_profile_path)?
        },
        pid,
    };
    Ok((
        req.pod_sandbox_id,
        ContainerConfig {
            name: m.name,
            attempt: m.attempt,
            image,
            command: c.command,
            args: c.args,
            working_dir: c.working_dir,
            envs,
            mounts,
            devices: {
                for d in &c.devices {
                    v::absolute_path("device container_path", &d.container_path)?;
                    v::absolute_path("device host_path", &d.host_path)?;
                    if d.permissions.len() > 3 || !d.permissions.chars().all(|p| "rwm".contains(p))
                    {
                        return Err(invalid(format!(
                            "device permissions {} may only combine r, w and m",
                            v::shown(&d.permissions)
                        )));
                    }
                }
                c.devices
            }
            .into_iter()
            .map(|d| Device {
                container_path: d.container_path,
                host_path: d.host_path,
                permissions: d.permissions,
            })
            .collect(),
            labels: c.labels.into_iter().collect(),
            annotations: c.annotations.into_iter().collect(),
            log_path: c.log_path,
            stdin: c.stdin,
            stdin_once: c.stdin_once,
            tty: c.tty,
            resources: resources(linux.resources),
            security,
            stop_signal: match cri::Signal::try_from(c.stop_signal) {
                Ok(cri::Signal::RuntimeDefault) => String::new(),
                Ok(sig) => signal_name(sig),
                Err(_) => return Err(invalid(format!("unknown stop_signal {}", c.stop_signal))),
            },
        },
    ))
}

/// The usual name of a CRI signal: `SIGTERM`, `SIGRTMIN+3`, `SIGRTMAX-14`.
fn signal_name(sig: cri::Signal) -> String {
    let n = sig.as_str_name().trim_start_matches("SIGNAL_");
    if let Some(k) = n.strip_prefix("SIGRTMINPLUS") {
        format!("SIGRTMIN+{k}")
    } else if let Some(k) = n.strip_prefix("SIGRTMAXMINUS") {
        format!("SIGRTMAX-{k}")
    } else {
        n.to_string()
    }
}

/// The CRI signal of a signal name (as images and [`signal_name`] write them); the runtime
/// default when it has none.
fn signal_of(name: &str) -> cri::Signal {
    // By signal number, made once (ContainerStatus asks for every container): the first
    // CRI signal with that number, so aliases (SIGIOT, SIGCLD, SIGPOLL) give the usual name.
    static BY_NUMBER: std::sync::OnceLock<[cri::Signal; 65]> = std::sync::OnceLock::new();
    let table = BY_NUMBER.get_or_init(|| {
        let mut t = [cri::Signal::RuntimeDefault; 65];
        for sig in (1..=65).rev().filter_map(|v| cri::Signal::try_from(v).ok()) {
            if let Some(n) = berth_sandbox::container::signal_number(&signal_name(sig)) {
                t[n as usize] = sig;
            }
        }
        t
    });
    berth_sandbox::container::signal_number(name)
        .and_then(|n| table.get(n as usize).copied())
        .unwrap_or(cri::Signal::RuntimeDefault)
}

fn state(s: ContainerState) -> i32 {
    (match s {
        ContainerState::Created => cri::ContainerState::ContainerCreated,
        ContainerState::Running => cri::ContainerState::ContainerRunning,
        ContainerState::Exited => cri::ContainerState::ContainerExited,
        ContainerState::Unknown => cri::ContainerState::ContainerUnknown,
    }) as i32
}

fn meta(r: &ContainerRecord) -> cri::ContainerMetadata {
    cri::ContainerMetadata {
        name: r.config.name.clone(),
        attempt: r.config.attempt,
    }
}

fn image(r: &ContainerRecord) -> cri::ImageSpec {
    cri::ImageSpec {
        image: r.image_id.clone(),
        user_specified_image: r.config.image.clone(),
        ..Default::default()
    }
}

fn map(m: &BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// A ListContainers item.
pub(crate) fn to_container(r: &ContainerRecord) -> cri::Container {
    cri::Container {
        id: r.id.clone(),
        pod_sandbox_id: r.pod_id.clone(),
        metadata: Some(meta(r)),
        image: Some(image(r)),
        image_ref: r.image_ref.clone(),
        image_id: r.image_id.clone(),
        state: state(r.state),
        created_at: r.created_ns,
        labels: map(&r.config.labels),
        annotations: map(&r.config.annotations),
    }
}

/// ContainerStatus.
pub(crate) fn to_container_status(r: &ContainerRecord) -> cri::ContainerStatus {
    let user = r
        .spec
        .as_ref()
        .and_then(|s| s.process.as_ref())
        .map(|p| &p.user);
    cri::ContainerStatus {
        id: r.id.clone(),
        metadata: Some(meta(r)),
        state: state(r.state),
        created_at: r.created_ns,
        started_at: r.started_ns,
        finished_at: r.finished_ns,
        exit_code: r.exit_code,
        image: Some(image(r)),
        image_ref: r.image_ref.clone(),
        reason: r.reason.clone(),
        message: r.message.clone(),
        labels: map(&r.config.labels),
        annotations: map(&r.config.annotations),
        mounts: r
            .config
            .mounts
            .iter()
            .map(|m| cri::Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.clone(),
                readonly: m.readonly,
                recursive_read_only: m.recursive_read_only,
                propagation: match m.propagation {
                    Propagation::Private => cri::MountPropagation::PropagationPrivate,
                    Propagation::HostToContainer => {
                        cri::MountPropagation::PropagationHostToContainer
                    }
                    Propagation::Bidirectional => cri::MountPropagation::PropagationBidirectional,
                } as i32,
                // An image volume: the image as asked for, and the image it resolved to
                // (KEP-5365), as for the container's own image.
                image: m.image.as_ref().map(|i| cri::ImageSpec {
                    image: i.image.clone(),
                    user_specified_image: i.user_specified.clone(),
                    image_ref: i.image_id.clone(),
                    ..Default::default()
                }),
                image_sub_path: m
                    .image
                    .as_ref()
                    .map(|i| i.sub_path.clone())
                    .unwrap_or_default(),
                mount_options: m.options.clone(),
                ..Default::default()
            })
            .collect(),
        log_path: r
            .log_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        resources: Some(cri::ContainerResources {
            linux: Some(to_cri_resources(&r.config.resources)),
            windows: None,
        }),
        image_id: r.image_id.clone(),
        user: Some(cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid: user.map_or(0, |u| i64::from(u.uid)),
                gid: user.map_or(0, |u| i64::from(u.gid)),
                supplemental_groups: user
                    .map(|u| u.additional_gids.iter().map(|g| i64::from(*g)).collect())
                    .unwrap_or_default(),
            }),
        }),
        // The signal StopContainer sends: the container's own, else its image's.
        stop_signal: signal_of(&r.stop_signal) as i32,
    }
}

/// Verbose ContainerStatus info, shaped like containerd's.
pub(crate) fn verbose_info(r: &ContainerRecord) -> HashMap<String, String> {
    let info = serde_json::json!({
        "sandboxID": r.pod_id,
        "pid": r.pid,
        "removing": false,
        "snapshotKey": r.id,
        "snapshotter": "overlayfs",
        "runtimeSpec": r.spec,
        "config": {
            "metadata": {"name": r.config.name, "attempt": r.config.attempt},
            "image": {"image": r.config.image},
            "command": r.config.command,
            "args": r.config.args,
            "log_path": r.config.log_path,
            "tty": r.config.tty,
            "stdin": r.config.stdin,
        },
    });
    HashMap::from([("info".to_string(), info.to_string())])
}

/// ListContainers filter.
pub(crate) fn filter(f: Option<cri::ContainerFilter>) -> ContainerFilter {
    let Some(f) = f else {
        return ContainerFilter::default();
    };
    ContainerFilter {
        id: (!f.id.is_empty()).then_some(f.id),
        state: f.state.and_then(|s| {
            Some(match cri::ContainerState::try_from(s.state).ok()? {
                cri::ContainerState::ContainerCreated => ContainerState::Created,
                cri::ContainerState::ContainerRunning => ContainerState::Running,
                cri::ContainerState::ContainerExited => ContainerState::Exited,
                cri::ContainerState::ContainerUnknown => ContainerState::Unknown,
            })
        }),
        pod_id: (!f.pod_sandbox_id.is_empty()).then_some(f.pod_sandbox_id),
        labels: f.label_selector.into_iter().collect(),
    }
}

/// A GetContainerEvents message.
pub(crate) fn to_event(
    e: &ContainerEvent,
    status: Option<cri::ContainerStatus>,
    pod: Option<cri::PodSandboxStatus>,
) -> cri::ContainerEventResponse {
    cri::ContainerEventResponse {
        container_id: e.container_id.clone(),
        container_event_type: (match e.kind {
            ContainerEventKind::Created => cri::ContainerEventType::ContainerCreatedEvent,
            ContainerEventKind::Started => cri::ContainerEventType::ContainerStartedEvent,
            ContainerEventKind::Stopped => cri::ContainerEventType::ContainerStoppedEvent,
            ContainerEventKind::Deleted => cri::ContainerEventType::ContainerDeletedEvent,
        }) as i32,
        created_at: e.at_ns,
        pod_sandbox_status: pod,
        containers_statuses: status.into_iter().collect(),
    }
}

/// Stats of one container; `layer` is the writable layer's filesystem (the kubelet looks it
/// up by that mount point, as ImageFsInfo reports it) and its (bytes, inodes); `prev` is the
/// last (time ns, cpu ns) sample for a rate.
pub(crate) fn to_stats(
    r: &ContainerRecord,
    u: &berth_sandbox::container::ContainerUsage,
    layer_fs: &std::path::Path,
) -> cri::ContainerStats {
    let u64v = |v: u64| Some(cri::UInt64Value { value: v });
    let now_ns = u.at_ns;
    let (cpu, memory) = match &u.cgroup {
        Some(cg) => (
            Some(cri::CpuUsage {
                timestamp: now_ns,
                usage_core_nano_seconds: u64v(cg.cpu_ns),
                usage_nano_cores: u.nano_cores.and_then(u64v).or(u64v(0)),
                psi: None,
            }),
            Some(cri::MemoryUsage {
                timestamp: now_ns,
                working_set_bytes: u64v(cg.working_set),
                usage_bytes: u64v(cg.memory_usage),
                rss_bytes: u64v(cg.rss),
                page_faults: u64v(cg.page_faults),
                major_page_faults: u64v(cg.major_page_faults),
                available_bytes: None,
                psi: None,
            }),
        ),
        None => (None, None),
    };
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: r.id.clone(),
            metadata: Some(meta(r)),
            labels: map(&r.config.labels),
            annotations: map(&r.config.annotations),
        }),
        cpu,
        memory,
        writable_layer: Some(cri::FilesystemUsage {
            timestamp: now_ns,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: layer_fs.display().to_string(),
            }),
            used_bytes: u64v(u.layer.0),
            inodes_used: u64v(u.layer.1),
        }),
        swap: None,
        io: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_signals_go_by_the_names_images_use_and_back() {
        assert_eq!(signal_name(cri::Signal::Sigterm), "SIGTERM");
        assert_eq!(signal_name(cri::Signal::Sigrtminplus3), "SIGRTMIN+3");
        assert_eq!(signal_name(cri::Signal::Sigrtmaxminus14), "SIGRTMAX-14");
        for v in 1..=65 {
            let sig = cri::Signal::try_from(v).unwrap();
            let back = signal_of(&signal_name(sig));
            // Aliases (SIGIOT, SIGCLD, SIGPOLL) come back as the signal's usual name.
            assert_eq!(
                berth_sandbox::container::signal_number(&signal_name(back)),
                berth_sandbox::container::signal_number(&signal_name(sig)),
                "{sig:?}"
            );
            assert_ne!(back, cri::Signal::RuntimeDefault, "{sig:?}");
        }
        assert_eq!(signal_of("SIGQUIT"), cri::Signal::Sigquit);
        assert_eq!(signal_of(""), cri::Signal::RuntimeDefault);
    }
}

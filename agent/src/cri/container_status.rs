//! The sandbox runtime's container records as CRI messages: list items, status, verbose
//! info, events and stats; and the ListContainers filter.

use std::collections::{BTreeMap, HashMap};

use berth_cri_api::v1 as cri;
use berth_sandbox::container::{
    ContainerEvent, ContainerEventKind, ContainerFilter, ContainerRecord, ContainerState,
    Propagation, Resources,
};

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

/// The usual name of a CRI signal: `SIGTERM`, `SIGRTMIN+3`, `SIGRTMAX-14`.
pub(crate) fn signal_name(sig: cri::Signal) -> String {
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

/// The image as the caller named it (ListContainers answers with it, as containerd does).
fn image(r: &ContainerRecord) -> cri::ImageSpec {
    cri::ImageSpec {
        image: r.config.image.clone(),
        user_specified_image: r.config.user_specified_image.clone(),
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
        // The image id, as containerd answers here (the kubelet's image garbage collection
        // matches it with ListImages' ids); ContainerStatus has the repo digest.
        image_ref: r.image_id.clone(),
        image_id: r.image_id.clone(),
        state: state(r.state),
        created_at: r.created_ns,
        labels: map(&r.config.labels),
        annotations: map(&r.config.annotations),
    }
}

/// ContainerStatus; `image_name` is what it says the image is (see
/// `Runtime::container_image_name`): the kubelet shows it as the container's image.
pub(crate) fn to_container_status(r: &ContainerRecord, image_name: String) -> cri::ContainerStatus {
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
        image: Some(cri::ImageSpec {
            image: image_name,
            user_specified_image: r.config.user_specified_image.clone(),
            ..Default::default()
        }),
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
                // What the limit leaves, as containerd and cAdvisor report it (0: no limit).
                available_bytes: u64v(
                    u64::try_from(r.config.resources.memory_limit)
                        .unwrap_or(0)
                        .saturating_sub(cg.working_set),
                ),
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

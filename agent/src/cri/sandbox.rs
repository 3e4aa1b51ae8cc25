//! CRI pod sandbox calls: conversions between CRI messages and the sandbox crate's types.

use std::collections::{BTreeMap, HashMap};

use berth_cri_api::v1 as cri;
use berth_sandbox::pod::{Dns, PodConfig, PodFilter, PodMeta, PodRecord, PodState, PortMapping};
use tonic::Status;

use super::validate::invalid;

fn to_btree(m: HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter().collect()
}

/// Validates a RunPodSandbox request and turns it into a [`PodConfig`].
pub(crate) fn pod_config(req: cri::RunPodSandboxRequest) -> Result<PodConfig, Status> {
    let c = req.config.ok_or_else(|| invalid("config is required"))?;
    let m = c
        .metadata
        .ok_or_else(|| invalid("config.metadata is required"))?;
    use super::validate as v;
    v::name("config.metadata.name", &m.name, v::MAX_NAME)?;
    v::name("config.metadata.namespace", &m.namespace, v::MAX_NAMESPACE)?;
    v::name("config.metadata.uid", &m.uid, v::MAX_NAME)?;
    if !c.hostname.is_empty() {
        v::word("hostname", &c.hostname, v::MAX_HOSTNAME)?;
    }
    if !c.log_directory.is_empty() {
        v::absolute_path("log_directory", &c.log_directory)?;
    }
    v::map("labels", &c.labels)?;
    v::map("annotations", &c.annotations)?;
    if let Some(d) = &c.dns_config {
        v::dns(&d.servers, &d.searches, &d.options)?;
    }
    let mut port_mappings = Vec::new();
    for p in &c.port_mappings {
        let protocol = match cri::Protocol::try_from(p.protocol) {
            Ok(cri::Protocol::Tcp) => "tcp",
            Ok(cri::Protocol::Udp) => "udp",
            Ok(cri::Protocol::Sctp) => "sctp",
            Err(_) => {
                return Err(invalid(format!(
                    "unknown port mapping protocol {}",
                    p.protocol
                )));
            }
        };
        if !p.host_ip.is_empty() && p.host_ip.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(format!(
                "port mapping host_ip {} is not an IP address",
                v::shown(&p.host_ip)
            )));
        }
        if !(0..=65535).contains(&p.host_port) || !(0..=65535).contains(&p.container_port) {
            return Err(invalid(format!(
                "port mapping {}:{} out of range",
                p.host_port, p.container_port
            )));
        }
        port_mappings.push(PortMapping {
            protocol: protocol.into(),
            container_port: p.container_port,
            host_port: p.host_port,
            host_ip: p.host_ip.clone(),
        });
    }
    let linux = c.linux.unwrap_or_default();
    v::cgroup_parent(&linux.cgroup_parent)?;
    for (k, val) in &linux.sysctls {
        v::sysctl(k, val)?;
    }
    let sc = linux.security_context.unwrap_or_default();
    let ns = sc.namespace_options.unwrap_or_default();
    let node = cri::NamespaceMode::Node as i32;
    let userns = match super::security::userns(
        ns.userns_options.as_ref(),
        "linux.security_context.namespace_options.userns_options",
    )? {
        berth_sandbox::userns::UsernsMode::Pod(u) => {
            // The node's network, pid or IPC namespace belongs to the node's user namespace:
            // the pod's root could not manage it (Status says user_namespaces_host_network
            // is not supported).
            for (shared, what) in [
                (ns.network == node, "network"),
                (ns.pid == node, "pid"),
                (ns.ipc == node, "ipc"),
            ] {
                if shared {
                    return Err(invalid(format!(
                        "linux.security_context.namespace_options: a pod in a user namespace of its own cannot use the node's {what} namespace"
                    )));
                }
            }
            Some(u)
        }
        _ => None,
    };
    #[allow(deprecated)]
    let seccomp = super::security::seccomp(sc.seccomp.as_ref(), &sc.seccomp_profile_path)?;
    let (run_as_user, run_as_group, supplemental_groups) = super::security::user_ids(
        sc.run_as_user.as_ref(),
        sc.run_as_group.as_ref(),
        &sc.supplemental_groups,
    )?;
    Ok(PodConfig {
        meta: PodMeta {
            name: m.name,
            namespace: m.namespace,
            uid: m.uid,
            attempt: m.attempt,
        },
        hostname: c.hostname,
        log_directory: c.log_directory,
        dns: c.dns_config.map(|d| Dns {
            servers: d.servers,
            searches: d.searches,
            options: d.options,
        }),
        port_mappings,
        labels: to_btree(c.labels),
        annotations: to_btree(c.annotations),
        host_network: ns.network == node,
        host_ipc: ns.ipc == node,
        host_pid: ns.pid == node,
        userns,
        cgroup_parent: linux.cgroup_parent,
        sysctls: to_btree(linux.sysctls),
        privileged: sc.privileged,
        readonly_rootfs: sc.readonly_rootfs,
        run_as_user,
        run_as_group,
        supplemental_groups,
        seccomp,
        runtime_handler: req.runtime_handler,
        resources: None,
        overhead: None,
    })
}

fn meta(r: &PodRecord) -> cri::PodSandboxMetadata {
    let m = &r.config.meta;
    cri::PodSandboxMetadata {
        name: m.name.clone(),
        uid: m.uid.clone(),
        namespace: m.namespace.clone(),
        attempt: m.attempt,
    }
}

fn state(s: PodState) -> i32 {
    match s {
        PodState::Ready => cri::PodSandboxState::SandboxReady as i32,
        PodState::NotReady => cri::PodSandboxState::SandboxNotready as i32,
    }
}

/// A pod for ListPodSandbox.
pub(crate) fn to_pod(r: &PodRecord) -> cri::PodSandbox {
    cri::PodSandbox {
        id: r.id.clone(),
        metadata: Some(meta(r)),
        state: state(r.state),
        created_at: r.created_ns,
        labels: r.config.labels.clone().into_iter().collect(),
        annotations: r.config.annotations.clone().into_iter().collect(),
        runtime_handler: r.handler.clone(),
    }
}

/// A pod's status for PodSandboxStatus.
pub(crate) fn to_status(r: &PodRecord) -> cri::PodSandboxStatus {
    let mode = |host: bool, own: cri::NamespaceMode| {
        if host {
            cri::NamespaceMode::Node as i32
        } else {
            own as i32
        }
    };
    // Once Stop has torn the network down the IPs are released (and may be another pod's):
    // none is reported, as containerd reports none for a closed netns.
    let released: &[String] = &[];
    let mut ips = if r.network_down { released } else { &r.ips[..] }.iter();
    cri::PodSandboxStatus {
        id: r.id.clone(),
        metadata: Some(meta(r)),
        state: state(r.state),
        created_at: r.created_ns,
        network: Some(cri::PodSandboxNetworkStatus {
            ip: ips.next().cloned().unwrap_or_default(),
            additional_ips: ips.map(|ip| cri::PodIp { ip: ip.clone() }).collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace {
                options: Some(cri::NamespaceOption {
                    network: mode(r.config.host_network, cri::NamespaceMode::Pod),
                    pid: mode(r.config.host_pid, cri::NamespaceMode::Container),
                    ipc: mode(r.config.host_ipc, cri::NamespaceMode::Pod),
                    userns_options: Some(match &r.config.userns {
                        Some(u) => {
                            let m = |m: &berth_sandbox::userns::IdMapping| cri::IdMapping {
                                host_id: m.host_id,
                                container_id: m.container_id,
                                length: m.size,
                            };
                            cri::UserNamespace {
                                mode: cri::NamespaceMode::Pod as i32,
                                uids: vec![m(&u.uids)],
                                gids: vec![m(&u.gids)],
                            }
                        }
                        None => cri::UserNamespace {
                            mode: cri::NamespaceMode::Node as i32,
                            ..Default::default()
                        },
                    }),
                    ..Default::default()
                }),
            }),
        }),
        labels: r.config.labels.clone().into_iter().collect(),
        annotations: r.config.annotations.clone().into_iter().collect(),
        runtime_handler: r.handler.clone(),
    }
}

/// The `verbose` info map, like containerd's.
pub(crate) fn verbose_info(r: &PodRecord) -> HashMap<String, String> {
    let info = serde_json::json!({
        "pid": r.pid,
        "processStatus": if r.state == PodState::Ready { "running" } else { "stopped" },
        "netNamespacePath": r.netns,
        "runtimeHandler": r.handler,
        "shimBinary": r.shim_binary,
        "cniResult": r.cni_result,
        "config": r.config,
        "runtimeSpec": r.spec,
    });
    HashMap::from([("info".to_string(), info.to_string())])
}

/// ListPodSandbox's filter.
pub(crate) fn filter(f: Option<cri::PodSandboxFilter>) -> PodFilter {
    let Some(f) = f else {
        return PodFilter::default();
    };
    PodFilter {
        id: Some(f.id).filter(|i| !i.is_empty()),
        state: f.state.map(|s| {
            if s.state == cri::PodSandboxState::SandboxReady as i32 {
                PodState::Ready
            } else {
                PodState::NotReady
            }
        }),
        labels: to_btree(f.label_selector),
    }
}

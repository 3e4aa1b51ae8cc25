//! The runtime's side of NRI: pods and containers as NRI's messages, plugins' adjustments
//! applied to a container's OCI spec, the resource updates plugins ask for, and the events
//! the lifecycle calls send (`berth_nri` holds the plugins and the protocol).
//!
//! Every adjustment NRI defines is applied or refused by name: berth never drops one.

use std::sync::{Arc, Weak};

use berth_nri::api;

use crate::container::{ContainerRecord, ContainerState};
use crate::error::{Error, Result};
use crate::pod::PodRecord;
use crate::runtime::Runtime;
use crate::spec::oci::{self, Spec};

/// A pod as NRI describes it.
pub fn pod(rec: &PodRecord) -> api::PodSandbox {
    let c = &rec.config;
    let spec_linux = rec.spec.as_ref().and_then(|s| s.linux.as_ref());
    api::PodSandbox {
        id: rec.id.clone(),
        name: c.meta.name.clone(),
        uid: c.meta.uid.clone(),
        namespace: c.meta.namespace.clone(),
        labels: c.labels.clone().into_iter().collect(),
        annotations: c.annotations.clone().into_iter().collect(),
        runtime_handler: rec.handler.clone(),
        linux: Some(api::LinuxPodSandbox {
            pod_overhead: c.overhead.as_ref().map(cri_resources),
            pod_resources: c.resources.as_ref().map(cri_resources),
            cgroup_parent: c.cgroup_parent.clone(),
            cgroups_path: spec_linux
                .and_then(|l| l.cgroups_path.clone())
                .unwrap_or_default(),
            namespaces: spec_linux
                .map(|l| namespaces(&l.namespaces))
                .unwrap_or_default(),
            resources: spec_linux
                .and_then(|l| l.resources.as_ref())
                .map(oci_resources),
        }),
        pid: rec.pid,
        ips: rec.ips.clone(),
    }
}

/// A container as NRI describes it: what it asked for, and its spec once it has one.
pub fn container(rec: &ContainerRecord, spec: Option<&Spec>) -> api::Container {
    let c = &rec.config;
    let process = spec.and_then(|s| s.process.as_ref());
    let linux = spec.and_then(|s| s.linux.as_ref());
    api::Container {
        id: rec.id.clone(),
        pod_sandbox_id: rec.pod_id.clone(),
        name: c.name.clone(),
        state: match rec.state {
            ContainerState::Created => api::ContainerState::ContainerCreated,
            ContainerState::Running => api::ContainerState::ContainerRunning,
            ContainerState::Exited => api::ContainerState::ContainerStopped,
            ContainerState::Unknown => api::ContainerState::ContainerUnknown,
        } as i32,
        labels: c.labels.clone().into_iter().collect(),
        annotations: spec
            .map(|s| s.annotations.clone())
            .unwrap_or_else(|| c.annotations.clone())
            .into_iter()
            .collect(),
        args: process.map(|p| p.args.clone()).unwrap_or_default(),
        env: process.map(|p| p.env.clone()).unwrap_or_default(),
        mounts: spec
            .map(|s| {
                s.mounts
                    .iter()
                    .map(|m| api::Mount {
                        destination: m.destination.clone(),
                        r#type: m.kind.clone(),
                        source: m.source.clone(),
                        options: m.options.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        hooks: spec.and_then(|s| s.hooks.as_ref()).map(hooks),
        linux: Some(api::LinuxContainer {
            namespaces: linux.map(|l| namespaces(&l.namespaces)).unwrap_or_default(),
            devices: linux
                .map(|l| {
                    l.devices
                        .iter()
                        .map(|d| api::LinuxDevice {
                            path: d.path.clone(),
                            r#type: d.kind.clone(),
                            major: d.major,
                            minor: d.minor,
                            file_mode: d.file_mode.map(|v| api::OptionalFileMode { value: v }),
                            uid: d.uid.map(|v| api::OptionalUInt32 { value: v }),
                            gid: d.gid.map(|v| api::OptionalUInt32 { value: v }),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            resources: linux.and_then(|l| l.resources.as_ref()).map(oci_resources),
            oom_score_adj: process
                .and_then(|p| p.oom_score_adj)
                .map(|v| api::OptionalInt { value: v }),
            cgroups_path: linux
                .and_then(|l| l.cgroups_path.clone())
                .unwrap_or_default(),
            sysctl: linux
                .map(|l| l.sysctl.clone().into_iter().collect())
                .unwrap_or_default(),
            ..Default::default()
        }),
        pid: rec.pid,
        rlimits: process
            .map(|p| {
                p.rlimits
                    .iter()
                    .map(|r| api::PosixRlimit {
                        r#type: r.kind.clone(),
                        hard: r.hard,
                        soft: r.soft,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        created_at: rec.created_ns,
        started_at: rec.started_ns,
        finished_at: rec.finished_ns,
        exit_code: rec.exit_code,
        status_reason: rec.reason.clone(),
        status_message: rec.message.clone(),
        cdi_devices: c
            .cdi_devices
            .iter()
            .map(|n| api::CdiDevice { name: n.clone() })
            .collect(),
        user: process.map(|p| api::User {
            uid: p.user.uid,
            gid: p.user.gid,
            additional_gids: p.user.additional_gids.clone(),
        }),
        image: Some(api::Image {
            name: c.image.clone(),
            digest: rec.image_ref.clone(),
            config_digest: rec.image_id.clone(),
        }),
    }
}

fn namespaces(ns: &[oci::Namespace]) -> Vec<api::LinuxNamespace> {
    ns.iter()
        .map(|n| api::LinuxNamespace {
            r#type: serde_json::to_value(n.kind)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            path: n
                .path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        })
        .collect()
}

fn hooks(h: &oci::Hooks) -> api::Hooks {
    let conv = |v: &Vec<oci::Hook>| -> Vec<api::Hook> {
        v.iter()
            .map(|h| api::Hook {
                path: h.path.clone(),
                args: h.args.clone(),
                env: h.env.clone(),
                timeout: h.timeout.map(|t| api::OptionalInt { value: t }),
            })
            .collect()
    };
    api::Hooks {
        prestart: conv(&h.prestart),
        create_runtime: conv(&h.create_runtime),
        create_container: conv(&h.create_container),
        start_container: conv(&h.start_container),
        poststart: conv(&h.poststart),
        poststop: conv(&h.poststop),
    }
}

/// CRI-style resources (zero: unset) as NRI's.
fn cri_resources(r: &crate::container::Resources) -> api::LinuxResources {
    use crate::spec::host::Host as _;
    oci_resources(&crate::spec::resources::linux_resources(
        r,
        crate::spec::host::RealHost.hugetlb(),
    ))
}

/// OCI resources as NRI's.
pub fn oci_resources(r: &oci::Resources) -> api::LinuxResources {
    api::LinuxResources {
        memory: r.memory.as_ref().map(|m| api::LinuxMemory {
            limit: m.limit.map(|v| api::OptionalInt64 { value: v }),
            swap: m.swap.map(|v| api::OptionalInt64 { value: v }),
            ..Default::default()
        }),
        cpu: r.cpu.as_ref().map(|c| api::LinuxCpu {
            shares: c.shares.map(|v| api::OptionalUInt64 { value: v }),
            quota: c.quota.map(|v| api::OptionalInt64 { value: v }),
            period: c.period.map(|v| api::OptionalUInt64 { value: v }),
            cpus: c.cpus.clone().unwrap_or_default(),
            mems: c.mems.clone().unwrap_or_default(),
            ..Default::default()
        }),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|h| api::HugepageLimit {
                page_size: h.page_size.clone(),
                limit: h.limit,
            })
            .collect(),
        unified: r.unified.clone().into_iter().collect(),
        pids: r.pids.as_ref().map(|p| api::LinuxPids { limit: p.limit }),
        ..Default::default()
    }
}

/// What of NRI's resources berth cannot set (a name for each), for a clear refusal.
fn unsupported_resources(r: &api::LinuxResources) -> Vec<&'static str> {
    let mut out = vec![];
    if let Some(m) = &r.memory {
        for (set, name) in [
            (m.reservation.is_some(), "memory reservation"),
            (m.kernel.is_some(), "kernel memory"),
            (m.kernel_tcp.is_some(), "kernel TCP memory"),
            (m.swappiness.is_some(), "memory swappiness"),
            (m.disable_oom_killer.is_some(), "disable_oom_killer"),
            (m.use_hierarchy.is_some(), "use_hierarchy"),
        ] {
            if set {
                out.push(name);
            }
        }
    }
    if let Some(c) = &r.cpu
        && (c.realtime_runtime.is_some() || c.realtime_period.is_some())
    {
        out.push("CPU realtime runtime and period");
    }
    if r.blockio_class.is_some() {
        out.push("block I/O class");
    }
    if r.rdt_class.is_some() {
        out.push("RDT class");
    }
    out
}

/// Sets the fields `n` sets in `r` (an update changes only what it names).
pub fn merge_resources(r: &mut oci::Resources, n: &api::LinuxResources) {
    if let Some(m) = &n.memory {
        let mem = r.memory.get_or_insert_with(Default::default);
        if let Some(v) = &m.limit {
            mem.limit = Some(v.value);
        }
        if let Some(v) = &m.swap {
            mem.swap = Some(v.value);
        }
    }
    if let Some(c) = &n.cpu {
        let cpu = r.cpu.get_or_insert_with(Default::default);
        if let Some(v) = &c.shares {
            cpu.shares = Some(v.value);
        }
        if let Some(v) = &c.quota {
            cpu.quota = Some(v.value);
        }
        if let Some(v) = &c.period {
            cpu.period = Some(v.value);
        }
        if !c.cpus.is_empty() {
            cpu.cpus = Some(c.cpus.clone());
        }
        if !c.mems.is_empty() {
            cpu.mems = Some(c.mems.clone());
        }
    }
    for h in &n.hugepage_limits {
        r.hugepage_limits.retain(|x| x.page_size != h.page_size);
        r.hugepage_limits.push(oci::HugepageLimit {
            page_size: h.page_size.clone(),
            limit: h.limit,
        });
    }
    for (k, v) in &n.unified {
        r.unified.insert(k.clone(), v.clone());
    }
    if let Some(p) = &n.pids {
        r.pids = Some(oci::Pids { limit: p.limit });
    }
}

/// Applies `plugin`'s adjustment to `spec`. CDI devices it adds are returned, for the
/// caller to resolve as it resolves the container's own.
pub fn apply(spec: &mut Spec, plugin: &str, a: &api::ContainerAdjustment) -> Result<Vec<String>> {
    let refuse = |what: &str| {
        Err(Error::Nri(berth_nri::Error::Unsupported {
            plugin: plugin.into(),
            what: format!("berth does not apply {what} adjustments"),
        }))
    };
    if let Some(l) = &a.linux {
        if l.io_priority.is_some() {
            return refuse("I/O priority");
        }
        if l.seccomp_policy.is_some() {
            return refuse("seccomp policy");
        }
        if !l.namespaces.is_empty() {
            return refuse("namespace");
        }
        if !l.net_devices.is_empty() {
            return refuse("network device");
        }
        if l.scheduler.is_some() {
            return refuse("scheduler");
        }
        if l.rdt.is_some() {
            return refuse("RDT");
        }
        if l.memory_policy.is_some() {
            return refuse("memory policy");
        }
        if let Some(r) = &l.resources
            && let Some(what) = unsupported_resources(r).first()
        {
            return refuse(what);
        }
    }
    for (k, v) in &a.annotations {
        match berth_nri::adjust::removal(k) {
            (k, true) => {
                spec.annotations.remove(k);
            }
            (k, false) => {
                spec.annotations.insert(k.into(), v.clone());
            }
        }
    }
    for m in &a.mounts {
        let (dest, remove) = berth_nri::adjust::removal(&m.destination);
        spec.mounts.retain(|x| x.destination != dest);
        if !remove {
            if !dest.starts_with('/') {
                return Err(Error::Invalid(format!(
                    "NRI plugin {plugin}: mount destination {dest:?} is not absolute"
                )));
            }
            spec.mounts.push(oci::Mount {
                destination: dest.into(),
                kind: m.r#type.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
                ..Default::default()
            });
        }
    }
    let process = spec.process.get_or_insert_with(Default::default);
    for e in &a.env {
        let (key, remove) = berth_nri::adjust::removal(&e.key);
        process
            .env
            .retain(|x| x.split_once('=').map_or(x.as_str(), |(k, _)| k) != key);
        if !remove {
            process.env.push(format!("{key}={}", e.value));
        }
    }
    if !a.args.is_empty() {
        process.args = a.args.clone();
    }
    for r in &a.rlimits {
        process.rlimits.retain(|x| x.kind != r.r#type);
        process.rlimits.push(oci::Rlimit {
            kind: r.r#type.clone(),
            hard: r.hard,
            soft: r.soft,
        });
    }
    if let Some(h) = &a.hooks {
        let hooks = spec.hooks.get_or_insert_with(Default::default);
        let conv = |v: &Vec<api::Hook>| -> Vec<oci::Hook> {
            v.iter()
                .map(|h| oci::Hook {
                    path: h.path.clone(),
                    args: h.args.clone(),
                    env: h.env.clone(),
                    timeout: h.timeout.as_ref().map(|t| t.value),
                })
                .collect()
        };
        hooks.prestart.extend(conv(&h.prestart));
        hooks.create_runtime.extend(conv(&h.create_runtime));
        hooks.create_container.extend(conv(&h.create_container));
        hooks.start_container.extend(conv(&h.start_container));
        hooks.poststart.extend(conv(&h.poststart));
        hooks.poststop.extend(conv(&h.poststop));
    }
    if let Some(l) = &a.linux {
        if let Some(v) = &l.oom_score_adj {
            spec.process
                .get_or_insert_with(Default::default)
                .oom_score_adj = Some(v.value);
        }
        let linux = spec.linux.get_or_insert_with(Default::default);
        for d in &l.devices {
            let (path, remove) = berth_nri::adjust::removal(&d.path);
            linux.devices.retain(|x| x.path != path);
            if !remove {
                if !path.starts_with("/dev/") {
                    return Err(Error::Invalid(format!(
                        "NRI plugin {plugin}: device {path:?} is not under /dev"
                    )));
                }
                linux.devices.push(oci::Device {
                    path: path.into(),
                    kind: d.r#type.clone(),
                    major: d.major,
                    minor: d.minor,
                    file_mode: d.file_mode.as_ref().map(|m| m.value),
                    uid: d.uid.as_ref().map(|v| v.value),
                    gid: d.gid.as_ref().map(|v| v.value),
                });
                // The device cgroup lets the container use what it was given.
                linux
                    .resources
                    .get_or_insert_with(Default::default)
                    .devices
                    .push(oci::DeviceRule {
                        allow: true,
                        kind: Some(d.r#type.clone()),
                        major: Some(d.major),
                        minor: Some(d.minor),
                        access: Some("rwm".into()),
                    });
            }
        }
        if let Some(r) = &l.resources {
            merge_resources(linux.resources.get_or_insert_with(Default::default), r);
        }
        if !l.cgroups_path.is_empty() {
            linux.cgroups_path = Some(l.cgroups_path.clone());
        }
        for (k, v) in &l.sysctl {
            match berth_nri::adjust::removal(k) {
                (k, true) => {
                    linux.sysctl.remove(k);
                }
                (k, false) => {
                    linux.sysctl.insert(k.into(), v.clone());
                }
            }
        }
    }
    Ok(a.cdi_devices.iter().map(|d| d.name.clone()).collect())
}

/// What NRI asks of the runtime, through a weak reference (the runtime owns NRI).
pub(crate) struct NriHost(pub(crate) Weak<Runtime>);

impl berth_nri::Host for NriHost {
    fn snapshot(&self) -> (Vec<api::PodSandbox>, Vec<api::Container>) {
        let Some(rt) = self.0.upgrade() else {
            return (vec![], vec![]);
        };
        let pods = rt
            .list(&Default::default())
            .iter()
            .map(|p| pod(p))
            .collect();
        let containers = rt
            .list_containers(&Default::default())
            .iter()
            .map(|c| container(c, c.spec.as_deref()))
            .collect();
        (pods, containers)
    }

    fn update(
        &self,
        updates: Vec<api::ContainerUpdate>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Vec<api::ContainerUpdate>> + Send + '_>> {
        Box::pin(async move {
            let Some(rt) = self.0.upgrade() else {
                return updates;
            };
            rt.apply_nri_updates(updates).await
        })
    }
}

/// Per container, the delivery of its StopContainer event: made once, whoever asks first
/// (its exit, or its removal, which waits for it so that plugins hear Stop before Remove).
#[derive(Default)]
pub(crate) struct StopOnce(
    std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::OnceCell<()>>>>,
);

impl Runtime {
    /// Tells plugins that container `id` stopped, once; applies the updates they answer
    /// with (to other containers). Errors are logged.
    pub(crate) async fn nri_stopped(&self, id: &str) {
        let Some(nri) = self.nri() else { return };
        let cell = self
            .nri_stops
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone();
        cell.get_or_init(|| async {
            let Ok(rec) = self.container(id) else { return };
            let Ok(p) = self.get(&rec.pod_id) else { return };
            match nri
                .stop_container(&pod(&p), &container(&rec, rec.spec.as_deref()))
                .await
            {
                Ok(updates) if !updates.is_empty() => {
                    let failed = self.apply_nri_updates(updates).await;
                    if !failed.is_empty() {
                        tracing::warn!(container = id, failed = failed.len(), "updates NRI plugins asked for at a container's stop failed");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(container = id, err = %e, "NRI StopContainer notification failed")
                }
            }
        })
        .await;
    }

    /// Forgets container `id`'s stop delivery (it is removed).
    pub(crate) fn nri_forget(&self, id: &str) {
        self.nri_stops
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// NRI, when it is on.
    pub fn nri(&self) -> Option<&berth_nri::Nri> {
        self.cfg.nri.as_ref()
    }

    /// Starts NRI's plugins and socket (after recovery: plugins are synchronized with
    /// what berth holds).
    pub async fn start_nri(self: &Arc<Self>) -> Result<()> {
        if let Some(nri) = self.nri() {
            nri.start(Arc::new(NriHost(Arc::downgrade(self))))
                .await
                .map_err(Error::Nri)?;
        }
        Ok(())
    }

    /// Held by a lifecycle call from before it tells plugins until its change is recorded.
    /// Always taken after the pod's or container's own lock: a plugin waiting to synchronize
    /// holds back new readers, so the other order could wait on a call that waits on it.
    pub(crate) async fn nri_block_sync(&self) -> Option<berth_nri::SyncGuard> {
        match self.nri() {
            Some(n) => Some(n.block_sync().await),
            None => None,
        }
    }

    /// Tells plugins of a pod event; an error is logged, not returned (the events whose
    /// errors fail the call are sent by the call itself).
    pub(crate) async fn nri_pod_event(&self, e: berth_nri::Event, rec: &PodRecord) {
        if let Some(nri) = self.nri()
            && let Err(err) = nri.pod(e, &pod(rec)).await
        {
            tracing::warn!(pod = rec.id, event = e.name(), err = %err, "NRI notification failed");
        }
    }

    /// Tells plugins of a container event; errors are logged.
    pub(crate) async fn nri_container_event(&self, e: berth_nri::Event, rec: &ContainerRecord) {
        let Some(nri) = self.nri() else { return };
        let Ok(p) = self.get(&rec.pod_id) else { return };
        if let Err(err) = nri
            .container(e, &pod(&p), &container(rec, rec.spec.as_deref()))
            .await
        {
            tracing::warn!(container = rec.id, event = e.name(), err = %err, "NRI notification failed");
        }
    }

    /// Applies resource updates plugins asked for; returns those that failed (unless
    /// marked to be ignored).
    pub(crate) async fn apply_nri_updates(
        &self,
        updates: Vec<api::ContainerUpdate>,
    ) -> Vec<api::ContainerUpdate> {
        let mut failed = vec![];
        for u in updates {
            let Some(r) = u.linux.as_ref().and_then(|l| l.resources.as_ref()) else {
                continue;
            };
            let res = match unsupported_resources(r).first() {
                Some(what) => Err(Error::Precondition(format!(
                    "berth does not apply {what} updates"
                ))),
                None => self.update_resources_from_nri(&u.container_id, r).await,
            };
            if let Err(e) = res {
                tracing::warn!(container = u.container_id, err = %e, "an NRI plugin's container update failed");
                if !u.ignore_failure {
                    failed.push(u);
                }
            }
        }
        failed
    }
}

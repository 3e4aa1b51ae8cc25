//! RunPodSandbox: the pod's record (written first, as intent), its files, shm, network
//! namespace, pause bundle and spec, its network (CNI ADD) alongside the pause container's
//! shim and task; every step pushes its undo, and a failure runs them backwards. A pod whose
//! undo failed is kept NotReady for the kubelet's Stop and Remove.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_network::cni::Attachment;
use serde_json::Value;

use super::files::{mount_shm, unmount, write_pod_files};
use super::record::pod_name;
use super::state::netns_name;
use super::{PodConfig, PodRecord, PodState};
use crate::error::{Error, Result};
use crate::now_ns;
use crate::runtime::{Handler, Runtime};
use crate::shim::{self, Shim};
use crate::spec::oci::Spec;
use crate::spec::own_oom_score_adj;
use crate::spec::pause::SandboxSpec;

pub(crate) enum Undo {
    Record,
    Netns(String),
    Cni(Attachment),
    Dir(PathBuf),
    Shm(PathBuf),
    Snapshot(String),
    Shim(Shim),
}

impl Runtime {
    /// RunPodSandbox.
    pub async fn run(&self, mut config: PodConfig) -> Result<String> {
        let (handler_name, handler, shim_binary) = self.resolve_handler(&config.runtime_handler)?;
        config.seccomp = crate::seccomp::resolve(config.seccomp).await?;
        let handler = handler.clone();
        let id = hex::encode(rand::random::<[u8; 32]>());
        let name = pod_name(&config.meta);
        let reservation = self.pods.names().reserve(&name, &id)?;
        let lock = self.pods.lock(&id);
        let _g = lock.lock().await;

        let image = match self.images.resolve(&self.cfg.sandbox_image) {
            Ok(r) => r,
            Err(_) => self
                .images
                .pull(&self.cfg.sandbox_image, None)
                .await
                .map_err(|error| Error::SandboxImage {
                    image: self.cfg.sandbox_image.clone(),
                    error,
                })?,
        };
        let image_config = self.images.config(&image).map_err(Error::Image)?;

        let mut rec = PodRecord {
            id: id.clone(),
            config: Arc::new(config.clone()),
            created_ns: now_ns(),
            state: PodState::NotReady,
            netns: None,
            network_down: false,
            stopped: false,
            ips: vec![],
            pid: 0,
            handler: handler_name,
            shim_binary: shim_binary.clone(),
            cni_result: None,
            spec: None,
        };
        let mut undo: Vec<Undo> = Vec::new();
        // However RunPodSandbox ends (a cancelled call included), the pod is no longer
        // starting once this returns: it has a record, or nothing.
        let _starting = Starting {
            rt: self,
            id: id.clone(),
        };
        if let Some(userns) = &config.userns {
            if !handler.user_namespaces {
                return Err(Error::Invalid(format!(
                    "linux.security_context.namespace_options.userns_options: runtime handler {:?} cannot run pods in user namespaces of their own (its runtime needs user namespaces and idmapped mounts: runc 1.2 or later, or crun 1.8 or later, on Linux 6.3 or later; the Status call lists the handlers that can)",
                    rec.handler
                )));
            }
            if let Some(dir) = crate::userns::closed_ancestor(self.state_dir()) {
                return Err(Error::Precondition(format!(
                    "a pod in a user namespace cannot reach its root filesystem: {} is closed to ids other than the host's root (chmod o+x {})",
                    dir.display(),
                    dir.display()
                )));
            }
            self.admit_userns(&rec, userns)?;
        }
        let res = self
            .run_steps(&mut rec, &handler, &image, &image_config, &mut undo)
            .await;
        // Plugins hear of the pod before anyone else sees it; one that refuses it fails it,
        // and what was made is undone.
        let _sync = self.nri_block_sync().await;
        let res = match (res, self.nri()) {
            (Ok(()), Some(nri)) => nri
                .pod(berth_nri::Event::RunPodSandbox, &crate::nri::pod(&rec))
                .await
                .map_err(Error::Nri),
            (r, _) => r,
        };
        match res {
            Ok(()) => {
                rec.state = PodState::Ready;
                self.pods.put(rec)?;
                reservation.commit();
                Ok(id)
            }
            Err(e) => {
                let mut failed_undo = false;
                for step in undo.into_iter().rev() {
                    if let Err(ue) = self.undo(&id, step).await {
                        tracing::error!(pod = id, err = %ue, "rollback step failed; pod kept as NotReady for a later Stop/Remove");
                        failed_undo = true;
                    }
                }
                if failed_undo {
                    self.pods.keep(rec);
                    reservation.commit();
                }
                Err(e)
            }
        }
    }

    /// The pause container's bundle: the pod's files (hostname, hosts, resolv.conf), its shm
    /// mount, its root filesystem snapshot and its spec (written to `config.json`). Returns
    /// the rootfs mounts, the spec and the bundle directory; what it made is in `undo`.
    pub(crate) fn prepare_pause_bundle(
        &self,
        rec: &PodRecord,
        dir: &Path,
        image: &berth_image::ImageRecord,
        image_config: &berth_image::manifest::ImageConfig,
        undo: &mut Vec<Undo>,
        lap: &dyn Fn(&'static str),
    ) -> Result<(Vec<berth_image::snapshot::MountSpec>, Spec, PathBuf)> {
        let (id, cfg) = (&rec.id, &rec.config);
        write_pod_files(dir, cfg)?;
        lap("files");
        let shm = if cfg.host_ipc {
            None
        } else {
            let shm = dir.join("shm");
            mount_shm(&shm)?;
            undo.push(Undo::Shm(shm.clone()));
            Some(shm)
        };
        lap("shm");

        let mounts = self
            .images
            .snapshots()
            .prepare(id, image.top_chain())
            .map_err(Error::Image)?;
        undo.push(Undo::Snapshot(id.clone()));
        lap("snapshot");

        let cc = image_config.config.clone().unwrap_or_default();
        let mut args = cc.entrypoint.clone().unwrap_or_default();
        args.extend(cc.cmd.clone().unwrap_or_default());
        // The pause user is resolved as a container's is: through the image's own
        // /etc/passwd and /etc/group, so a named USER works.
        let ids = crate::users::Accounts::from_mounts(&mounts)?.resolve(
            &cc.user,
            cfg.run_as_user,
            "",
            cfg.run_as_group,
            &cfg.supplemental_groups,
            // The pause image is the node's, not the pod's: its /etc/group is trusted.
            crate::users::GroupsPolicy::Merge,
        )?;
        let mut annotations = cfg.annotations.clone();
        annotations.insert("io.kubernetes.cri.container-type".into(), "sandbox".into());
        annotations.insert("io.kubernetes.cri.sandbox-id".into(), id.clone());
        annotations.insert(
            "io.kubernetes.cri.sandbox-name".into(),
            cfg.meta.name.clone(),
        );
        annotations.insert(
            "io.kubernetes.cri.sandbox-namespace".into(),
            cfg.meta.namespace.clone(),
        );
        annotations.insert("io.kubernetes.cri.sandbox-uid".into(), cfg.meta.uid.clone());
        annotations.insert(
            "io.kubernetes.cri.sandbox-log-directory".into(),
            cfg.log_directory.clone(),
        );
        let spec = SandboxSpec {
            id: id.clone(),
            args,
            env: cc.env.clone().unwrap_or_default(),
            user: (ids.uid, ids.gid, ids.additional),
            hostname: cfg.hostname.clone(),
            netns: rec.netns.clone(),
            userns: cfg.userns,
            host_ipc: cfg.host_ipc,
            host_pid: cfg.host_pid,
            shm,
            cgroup_parent: cfg.cgroup_parent.clone(),
            sysctls: cfg.sysctls.clone(),
            readonly_rootfs: cfg.readonly_rootfs,
            privileged: cfg.privileged,
            // The pause process holds the default capabilities.
            seccomp: crate::seccomp::filter(
                &cfg.seccomp,
                &crate::spec::DEFAULT_CAPABILITIES
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>(),
            )?,
            annotations,
            daemon_oom_score_adj: own_oom_score_adj(),
        }
        .build("rootfs")?;
        let bundle = dir.join("bundle");
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec(&spec).unwrap_or_default(),
        )
        .map_err(|e| Error::io("write config.json", e))?;
        lap("spec");
        Ok((mounts, spec, bundle))
    }

    pub(crate) async fn run_steps(
        &self,
        rec: &mut PodRecord,
        handler: &Handler,
        image: &berth_image::ImageRecord,
        image_config: &berth_image::manifest::ImageConfig,
        undo: &mut Vec<Undo>,
    ) -> Result<()> {
        let id = rec.id.clone();
        let cfg = rec.config.clone();
        let steps = berth_metrics::Steps::start("run_pod_sandbox");
        let lap_in = |s: &berth_metrics::Steps, step: &'static str| {
            let at = s.lap(step);
            tracing::trace!(pod = id, step, us = at.as_micros() as u64, "run step")
        };
        let lap = |step: &'static str| lap_in(&steps, step);
        // Recorded before any network work: whatever happens next, a record exists that a
        // later Stop/Remove (or the rollback) uses to release the IP and the namespace (whose
        // path is known before it exists; removing a namespace never made is not an error).
        if !cfg.host_network {
            rec.netns = Some(self.netns.path(&netns_name(&id)));
        }
        self.pods.persist(rec)?;
        undo.push(Undo::Record);

        let dir = self.dir(&id);
        let spare = if self.cfg.warm_shim {
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| Error::io(format!("create {}", parent.display()), e))?;
            }
            self.take_spare(&rec.shim_binary, &dir).await
        } else {
            None
        };
        if spare.is_some() {
            self.refill_spare();
        }
        std::fs::create_dir_all(dir.join("bundle/rootfs"))
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        undo.push(Undo::Dir(dir.clone()));
        // A spare taken is a shim to shut down on failure from here on.
        let spare = spare.map(|(s, log)| {
            undo.push(Undo::Shim(s.clone()));
            (s, log)
        });
        let shim_undo_pushed = spare.is_some();
        lap("record");

        // The namespace is made on a blocking thread (netns-rs makes it on a thread of its own,
        // whose exit costs ~1 ms) while the pod's files, shm, snapshot and spec are prepared:
        // its path is known already, and only CNI and runc need it to exist.
        // A pod in a user namespace of its own gets its network namespace from the runtime,
        // inside that user namespace: pinned below once the pause process exists.
        let own_userns = cfg.userns.is_some() && !cfg.host_network;
        let netns_job = (!cfg.host_network && !own_userns).then(|| {
            let (dir, name) = (self.netns.clone(), netns_name(&id));
            tokio::task::spawn_blocking(move || dir.create(&name))
        });
        let prepared = self.prepare_pause_bundle(rec, &dir, image, image_config, undo, &lap);
        if let Some(job) = netns_job {
            let made = job.await;
            // Also when preparing failed: the rollback must remove a namespace that was made.
            if !matches!(made, Ok(Err(_))) {
                undo.push(Undo::Netns(netns_name(&id)));
            }
            let path = made
                .map_err(|e| Error::io("create the pod's network namespace", e.into()))?
                .map_err(Error::Network)?;
            if rec.netns.as_ref() != Some(&path) {
                rec.netns = Some(path);
                self.pods.persist(rec)?;
            }
            lap("netns");
        }
        let (mounts, spec, bundle) = prepared?;
        rec.spec = Some(Arc::new(spec));
        self.note_starting(rec);

        // The network and the pause container are independent until the pod is reported
        // ready: runc only needs the (empty) netns to exist. CNI ADD runs while the shim starts
        // and runc creates the task; both must succeed, and both are undone on failure.
        let rootfs = crate::shim::rootfs_mounts(mounts);
        // The pause process's pid once its task exists: the network of a pod in its own user
        // namespace is that process's, pinned before CNI runs in it.
        let (pid_tx, pid_rx) = tokio::sync::oneshot::channel::<u32>();
        let (net_steps, task_steps) = (steps.branch(), steps.branch());
        let network = async {
            if cfg.host_network {
                return (vec![], Ok(None));
            }
            let mut undo = vec![];
            if own_userns {
                // No pid: the task failed, and says why.
                let Ok(pid) = pid_rx.await else {
                    return (undo, Ok(None));
                };
                let (dir, name) = (self.netns.clone(), netns_name(&id));
                let pinned = tokio::task::spawn_blocking(move || dir.pin_from_pid(&name, pid))
                    .await
                    .map_err(|e| Error::io("pin the pod's network namespace", e.into()))
                    .and_then(|r| r.map_err(Error::Network));
                if let Err(e) = pinned {
                    return (undo, Err(e));
                }
                undo.push(Undo::Netns(netns_name(&id)));
                lap_in(&net_steps, "netns_pin");
            }
            let a = self.attachment(rec);
            let net = match self.cni.network() {
                Ok(n) => n,
                Err(e) => return (undo, Err(Error::Network(e))),
            };
            let r = self
                .cni
                .add(&net, &a)
                .await
                .map_err(Error::Network)
                .map(Some);
            lap_in(&net_steps, "cni_add");
            undo.push(Undo::Cni(a));
            (undo, r)
        };
        let task = async {
            let s = match spare {
                Some((s, log)) => {
                    self.shims.keep_log(&id, log);
                    s
                }
                None => {
                    let log = match shim::open_log(&bundle, &id) {
                        Ok(l) => l,
                        Err(e) => return (None, Err(e)),
                    };
                    self.shims.keep_log(&id, log);
                    match shim::start_and_connect(
                        &rec.shim_binary,
                        &self.cfg.shim_env,
                        &id,
                        &bundle,
                        &[],
                        false,
                    )
                    .await
                    {
                        Ok(s) => s,
                        Err(e) => return (None, Err(e)),
                    }
                }
            };
            lap_in(&task_steps, "shim");
            berth_metrics::SHIM_STARTS.with(&[&rec.handler]).inc();
            let started = async {
                let pid = s
                    .create(
                        &id,
                        &bundle,
                        rootfs,
                        ["", "", ""],
                        false,
                        Some(handler.options.clone()),
                    )
                    .await?;
                lap_in(&task_steps, "task_create");
                // The pause process exists: cAdvisor, which asks about the pod's new cgroup
                // for a few seconds only, may have its pid before the network is done.
                self.note_starting_pid(&id, pid);
                let _ = pid_tx.send(pid);
                s.start(&id).await?;
                lap_in(&task_steps, "task_start");
                Ok(pid)
            }
            .await;
            let undo = (!shim_undo_pushed).then(|| Undo::Shim(s.clone()));
            (undo, started.map(|pid| (s, pid)))
        };
        let ((net_undo, net_res), (task_undo, task_res)) = tokio::join!(network, task);
        undo.extend(net_undo);
        undo.extend(task_undo);
        // When both fail, the network's error is the one to report: it is usually the cause.
        let net = net_res?;
        let (s, pid) = task_res?;
        if let Some(result) = net {
            rec.ips = result.ips.iter().map(|i| i.ip().to_string()).collect();
            rec.cni_result = Some(Arc::new(result.raw));
        }
        rec.pid = pid;
        self.note_starting(rec);
        self.register_shim(&id, s);
        Ok(())
    }

    pub(crate) fn attachment(&self, rec: &PodRecord) -> Attachment {
        let m = &rec.config.meta;
        let mut caps = serde_json::Map::new();
        if !rec.config.port_mappings.is_empty() {
            let pm: Vec<Value> = rec
                .config
                .port_mappings
                .iter()
                .filter(|p| p.host_port > 0)
                .map(|p| serde_json::json!({"hostPort": p.host_port, "containerPort": p.container_port, "protocol": p.protocol, "hostIP": p.host_ip}))
                .collect();
            caps.insert("portMappings".into(), Value::Array(pm));
        }
        Attachment {
            container_id: rec.id.clone(),
            netns: rec.netns.clone().unwrap_or_default(),
            ifname: "eth0".into(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), m.namespace.clone()),
                ("K8S_POD_NAME".into(), m.name.clone()),
                ("K8S_POD_INFRA_CONTAINER_ID".into(), rec.id.clone()),
                ("K8S_POD_UID".into(), m.uid.clone()),
            ],
            capabilities: caps,
        }
    }

    pub(crate) async fn undo(&self, id: &str, step: Undo) -> Result<()> {
        match step {
            // The name stays reserved: the failed RunPodSandbox releases it.
            Undo::Record => self.pods.remove_record(id),
            Undo::Netns(name) => self.netns.remove(&name).map_err(Error::Network),
            Undo::Cni(a) => {
                let current = self.cni.network().ok();
                self.cni
                    .del(current.as_ref(), &a)
                    .await
                    .map_err(Error::Network)
            }
            Undo::Dir(d) => match std::fs::remove_dir_all(&d) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(Error::io(format!("remove {}", d.display()), e))
                }
                _ => Ok(()),
            },
            Undo::Shm(p) => unmount(&p),
            Undo::Snapshot(key) => self
                .images
                .snapshots()
                .remove_active(&key)
                .map_err(Error::Image),
            Undo::Shim(s) => self.shut_down_pause(&s, id).await,
        }
    }
}

/// A pod's RunPodSandbox under way: forgotten when it ends, however it ends.
struct Starting<'a> {
    rt: &'a Runtime,
    id: String,
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        self.rt
            .starting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

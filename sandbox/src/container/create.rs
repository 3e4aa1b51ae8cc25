//! CreateContainer: the container's name reserved, its record written as intent, its
//! writable snapshot, user and groups from the image, spec and bundle, its stdio fifos and
//! its task created in the pod's shim; a failure undoes each step.

use std::path::Path;
use std::sync::Arc;

use super::container_name;
use super::{ContainerConfig, ContainerEventKind, ContainerRecord, ContainerState, PidMode};
use crate::error::{Error, Result};
use crate::logs::{ContainerLog, mkfifo, open_fifo_reader, open_fifo_writer};
use crate::now_ns;
use crate::runtime::Runtime;
use crate::spec::container::ContainerSpec;
use crate::users::Accounts;

impl Runtime {
    /// CreateContainer.
    pub async fn create_container(
        &self,
        pod_id: &str,
        mut config: ContainerConfig,
    ) -> Result<String> {
        let pod_id = self.resolve(pod_id)?;
        config.security.seccomp = crate::seccomp::resolve(config.security.seccomp).await?;
        let lock = self.pods().lock(&pod_id);
        let _g = lock.lock().await;
        let pod = self.get(&pod_id)?;
        if !pod.state.can_host_containers() {
            return Err(Error::Precondition(format!(
                "pod sandbox {pod_id} is not ready; containers can only be created in a ready pod"
            )));
        }
        let shim = self.shim_of(&pod_id).ok_or_else(|| {
            Error::Precondition(format!("pod sandbox {pod_id} has no running shim"))
        })?;
        if let Some(m) = config.mounts.iter().find(|m| m.recursive_read_only)
            && !self
                .cfg
                .handlers
                .get(&pod.handler)
                .is_some_and(|h| h.recursive_read_only)
        {
            return Err(Error::Invalid(format!(
                "mount at {}: the pod's runtime handler {:?} cannot make a mount read-only recursively (runc 1.1 or later, or crun 1.8 or later, on Linux 5.12 or later can; the Status call lists the handlers that do)",
                m.container_path, pod.handler
            )));
        }
        config
            .security
            .userns
            .check_against(pod.config.userns.as_ref())?;
        if let Some(m) = config
            .mounts
            .iter()
            .find(|m| m.idmap.is_some() && m.idmap != pod.config.userns)
        {
            return Err(Error::Invalid(format!(
                "mount at {}: uid_mappings and gid_mappings (an idmapped mount) must be those of the pod's user namespace, {}",
                m.container_path,
                if pod.config.userns.is_some() {
                    "which differ"
                } else {
                    "and the pod runs in the node's"
                }
            )));
        }
        let image = self.images().resolve(&config.image).map_err(|e| {
            Error::NotFound(format!(
                "image {:?} is not present on this node (pull it first): {e}",
                config.image
            ))
        })?;
        let image_config = self.images().config(&image).map_err(Error::Image)?;
        let id = hex::encode(rand::random::<[u8; 32]>());
        let name = container_name(&config, &pod);
        let reservation = self.containers().names().reserve(&name, &id)?;

        let dir = self.ctr_dir(&id);
        let bundle = dir.join("bundle");
        let mut rec = ContainerRecord {
            id: id.clone(),
            pod_id: pod_id.clone(),
            config: Arc::new(config.clone()),
            image_id: image.id.to_string(),
            image_ref: image
                .repo_digests
                .first()
                .or(image.repo_tags.first())
                .cloned()
                .unwrap_or_else(|| image.id.to_string()),
            state: ContainerState::Created,
            created_ns: now_ns(),
            started_ns: 0,
            finished_ns: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            pid: 0,
            log_path: (!pod.config.log_directory.is_empty() && !config.log_path.is_empty())
                .then(|| Path::new(&pod.config.log_directory).join(&config.log_path)),
            stop_signal: if config.stop_signal.is_empty() {
                image_config
                    .config
                    .as_ref()
                    .map(|c| c.stop_signal.clone())
                    .unwrap_or_default()
            } else {
                config.stop_signal.clone()
            },
            spec: None,
            oom: false,
        };

        let steps = berth_metrics::Steps::start("create_container");
        let lap = |step: &'static str| {
            let at = steps.lap(step);
            tracing::trace!(
                container = id,
                step,
                us = at.as_micros() as u64,
                "create step"
            )
        };
        // Whether plugins were told of the container (and must hear it go, if it fails), and
        // the updates to other containers they answered with.
        let mut nri_told = false;
        let mut nri_updates = vec![];
        // Whether berth may have staged idmapped mounts for the container (binds for a runtime
        // that cannot idmap them, lazily pulled layers), and where.
        let mut staged = false;
        let staging = crate::userns::binds::dir(self.state_dir(), &id);
        let runtime_idmaps = self
            .cfg
            .handlers
            .get(&pod.handler)
            .is_none_or(|h| h.idmap_mounts);
        let res: Result<()> = async {
            std::fs::create_dir_all(bundle.join("rootfs"))
                .map_err(|e| Error::io(format!("create {}", bundle.display()), e))?;
            let mounts = self
                .images()
                .snapshots()
                .prepare(&id, image.top_chain())
                .map_err(Error::Image)?;
            lap("snapshot");
            // In the pod's user namespace: the layers seen through its idmapped view of them
            // (made with the first container), the upper one its root's.
            let snapshots = self.images().snapshots().root().to_path_buf();
            let layers_view = crate::userns::layers_view(self.state_dir(), &pod_id);
            let layers = crate::userns::Layers {
                snapshots: &snapshots,
                view: &layers_view,
                staging: &staging,
                pid: pod.pid,
            };
            let rootfs = match pod.config.userns {
                Some(u) => {
                    staged = true;
                    let (mounts, snapshots, view, at) = (
                        mounts.clone(),
                        snapshots.clone(),
                        layers_view.clone(),
                        staging.clone(),
                    );
                    let pid = pod.pid;
                    tokio::task::spawn_blocking(move || {
                        let layers = crate::userns::Layers {
                            snapshots: &snapshots,
                            view: &view,
                            staging: &at,
                            pid,
                        };
                        crate::userns::rootfs(mounts, &layers, u.host_root())
                    })
                    .await
                    .map_err(|e| Error::io("idmap the container's layers", e.into()))??
                }
                None => mounts.clone(),
            };
            // Image volumes: mounted, and the record keeps where (their host paths).
            if config.mounts.iter().any(|m| m.image.is_some()) {
                let mut c = config.clone();
                let userns = pod.config.userns.map(|_| &layers);
                self.mount_image_volumes(&id, &dir, &mut c, userns)?;
                rec.config = Arc::new(c);
                lap("image_volumes");
            }
            let config = rec.config.clone();
            let accounts = {
                let mounts = mounts.clone();
                tokio::task::spawn_blocking(move || Accounts::from_mounts(&mounts))
                    .await
                    .map_err(|e| Error::io("read the image's accounts", e.into()))??
            };
            let mounts = rootfs;
            let icfg = image_config.config.clone().unwrap_or_default();
            let sec = &config.security;
            let ids = accounts.resolve(
                &icfg.user,
                sec.run_as_user,
                &sec.run_as_username,
                sec.run_as_group,
                &sec.supplemental_groups,
                sec.supplemental_groups_policy,
            )?;
            let target_pid = match &sec.pid {
                PidMode::Target(t) => {
                    let t = self.resolve_container(t)?;
                    let tr = self.container(&t)?;
                    (tr.state == ContainerState::Running && tr.pod_id == pod_id).then_some(tr.pid)
                }
                _ => None,
            };
            let own_capabilities = crate::spec::caps::own_capabilities();
            let spec = ContainerSpec {
                id: &id,
                config: &config,
                pod_id: &pod.id,
                pod: &pod.config,
                pause_pid: pod.pid,
                pod_dir: &self.pod_dir(&pod_id),
                image: &icfg,
                ids,
                target_pid,
                own_capabilities: &own_capabilities,
                daemon_oom_score_adj: crate::spec::own_oom_score_adj(),
            }
            .build(&crate::spec::host::RealHost)?;
            let mut spec = spec;
            let cdi = crate::cdi::requested(&config.cdi_devices, &config.annotations);
            if !cdi.is_empty() {
                if self.cfg.cdi_spec_dirs.is_empty() {
                    return Err(Error::Invalid(format!(
                        "the container asks for CDI devices ({}) but CDI is off in berth's config ([cdi] enable)",
                        cdi.join(", ")
                    )));
                }
                let dirs = self.cfg.cdi_spec_dirs.clone();
                let edits =
                    tokio::task::spawn_blocking(move || crate::cdi::resolve(&dirs, &cdi))
                        .await
                        .map_err(|e| Error::io("read the CDI specs", e.into()))??;
                crate::cdi::apply(&mut spec, &edits, &crate::spec::host::RealHost)?;
                lap("cdi");
            }
            // Plugins adjust the container before anyone sees it: from here until its
            // record is kept, no plugin is synchronized in between.
            let _sync = self.nri_block_sync().await;
            if let Some(nri) = self.nri() {
                let created = nri
                    .create_container(
                        &crate::nri::pod(&pod),
                        &crate::nri::container(&rec, Some(&spec)),
                    )
                    .await
                    .map_err(Error::Nri)?;
                nri_told = true;
                let mut cdi = vec![];
                for (plugin, a) in &created.adjustments {
                    cdi.extend(crate::nri::apply(&mut spec, plugin, a)?);
                }
                if !cdi.is_empty() {
                    let dirs = self.cfg.cdi_spec_dirs.clone();
                    let edits =
                        tokio::task::spawn_blocking(move || crate::cdi::resolve(&dirs, &cdi))
                            .await
                            .map_err(|e| Error::io("read the CDI specs", e.into()))??;
                    crate::cdi::apply(&mut spec, &edits, &crate::spec::host::RealHost)?;
                }
                nri_updates = created.updates;
                lap("nri");
            }
            // A runtime that cannot idmap a bind in the pod's user namespace gets binds
            // berth idmapped; the record keeps the spec as the container sees it.
            let on_disk = match pod.config.userns {
                Some(u) if !runtime_idmaps && crate::userns::binds::wanted(&spec.mounts) => {
                    let (mut on_disk, at, pid) = (spec.clone(), staging.clone(), pod.pid);
                    staged = true;
                    tokio::task::spawn_blocking(move || {
                        crate::userns::binds::stage(&mut on_disk.mounts, &at, pid, &u)
                            .map(|()| on_disk)
                    })
                    .await
                    .map_err(|e| Error::io("idmap the container's binds", e.into()))??
                    .into()
                }
                _ => None,
            };
            std::fs::write(
                bundle.join("config.json"),
                serde_json::to_vec(on_disk.as_ref().unwrap_or(&spec)).unwrap_or_default(),
            )
            .map_err(|e| Error::io("write config.json", e))?;
            rec.spec = Some(Arc::new(spec));
            lap("spec");

            // Recorded before the shim holds anything, so a crash leaves a record to clean.
            self.containers().put(rec.clone())?;
            lap("record");
            let (stdin, stdout, stderr) =
                (dir.join("stdin"), dir.join("stdout"), dir.join("stderr"));
            mkfifo(&stdout)?;
            let out_rx = open_fifo_reader(&stdout)?;
            let err_rx = if config.tty {
                None
            } else {
                mkfifo(&stderr)?;
                Some(open_fifo_reader(&stderr)?)
            };
            // berth holds the write side of stdin (read-write, so opening never blocks)
            // for Attach; the container reads end-of-file once it is closed.
            let stdin_tx = if config.stdin {
                mkfifo(&stdin)?;
                Some(open_fifo_writer(&stdin)?)
            } else {
                None
            };
            let rootfs = crate::shim::rootfs_mounts(mounts);
            let s = |p: &Path, on: bool| {
                if on {
                    p.display().to_string()
                } else {
                    String::new()
                }
            };
            let handler = self.handler_options(&pod.handler);
            // Under the runsc adapter the sandbox reads the stdin fifo itself (from
            // `runsc start`); the shim must not read it too, or it takes the input.
            let runsc = handler
                .as_ref()
                .and_then(|h| h.binary_name.as_deref())
                .is_some_and(crate::runsc::is_adapter);
            let stdio = [
                s(&stdin, config.stdin && !runsc),
                s(&stdout, true),
                s(&stderr, !config.tty),
            ];
            let created = shim
                .create(
                    &id,
                    &bundle,
                    rootfs,
                    [&stdio[0], &stdio[1], &stdio[2]],
                    config.tty,
                    handler,
                )
                .await;
            // The container's mount namespace has its own copies of the staged binds now, and
            // its overlay its own of the staged layers.
            if staged {
                self.release_idmap_binds(&id).await;
            }
            rec.pid = created?;
            lap("shim_create");
            let log = ContainerLog::start(
                rec.log_path.as_deref(),
                self.log_rotation(),
                Some(out_rx),
                err_rx,
                stdin_tx,
            )?;
            self.container_logs().insert(id.clone(), log);
            // Only the pid changed since the record was written, and the shim keeps that:
            // a restarted berth asks it (recover_containers), so no second disk write here.
            self.containers().keep(rec.clone());
            lap("log");
            Ok(())
        }
        .await;
        match res {
            Ok(()) => {
                reservation.commit();
                self.emit(&rec, ContainerEventKind::Created);
                if !nri_updates.is_empty() {
                    let failed = self.apply_nri_updates(nri_updates).await;
                    if !failed.is_empty() {
                        tracing::warn!(
                            container = id,
                            failed = failed.len(),
                            "updates NRI plugins asked for at a container's creation failed"
                        );
                    }
                }
                self.nri_container_event(berth_nri::Event::PostCreateContainer, &rec)
                    .await;
                Ok(id)
            }
            Err(e) => {
                if nri_told && let Some(nri) = self.nri() {
                    // Plugins that adjusted it hear it went.
                    let (p, c) = (
                        crate::nri::pod(&pod),
                        crate::nri::container(&rec, rec.spec.as_deref()),
                    );
                    let _ = nri.stop_container(&p, &c).await;
                    let _ = nri
                        .container(berth_nri::Event::RemoveContainer, &p, &c)
                        .await;
                }
                let _ = shim.delete(&id).await;
                if staged {
                    self.release_idmap_binds(&id).await;
                }
                self.container_logs().remove(&id);
                let _ = self.images().snapshots().remove_active(&id);
                if let Err(e) = self.remove_image_volumes(&id, &dir) {
                    tracing::warn!(container = id, err = %e, "cannot remove the image volumes of a container that failed to create");
                }
                let _ = crate::process::remove_dir_all_blocking(dir).await;
                let _ = self.containers().remove_record(&id);
                Err(e)
            }
        }
    }

    /// Detaches and removes container `id`'s staged idmapped binds, if any (see
    /// [`crate::userns::binds`]); a failure is logged, and the container's removal (or, for one
    /// never recorded, the orphan sweep) tries again.
    pub(crate) async fn release_idmap_binds(&self, id: &str) {
        let at = crate::userns::binds::dir(self.state_dir(), id);
        let released = tokio::task::spawn_blocking(move || crate::userns::binds::release(&at))
            .await
            .map_err(|e| Error::io("release the idmapped binds", e.into()))
            .and_then(|r| r);
        if let Err(e) = released {
            tracing::warn!(container = id, err = %e, "cannot release a container's idmapped binds");
        }
    }
}

//! A pull: the manifest (through an index to this platform's), the config, then every layer
//! in parallel (unpacked while it downloads, or mounted lazily), committed as one record. A
//! pull whose caller goes away stops at once and leaves nothing half written.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::blob::BlobDownload;
use crate::error::{Error, Result};
use crate::hosts;
use crate::manifest::{self, Descriptor, Document, ImageConfig};
use crate::reference::{Digest, Reference};
use crate::registry::{Credentials, Session};
use crate::unpack::LayerStats;
use berth_imgcrypt::LayerKey;

use super::readers::{Cancellable, Tee, unpack_verified};
use super::*;

impl ImageService {
    /// Pulls `reference` and returns the local image.
    pub async fn pull(&self, reference: &str, creds: Option<Credentials>) -> Result<ImageRecord> {
        self.pull_cancellable(reference, creds, CancellationToken::new())
            .await
    }
    /// Pulls `reference`, giving up as soon as `cancel` is cancelled (its caller went away):
    /// requests in flight are dropped, layer downloads and unpacks stop at their next chunk,
    /// and what was half written is removed. Layers other pulls wait for are fetched by them.
    pub async fn pull_cancellable(
        &self,
        reference: &str,
        creds: Option<Credentials>,
        cancel: CancellationToken,
    ) -> Result<ImageRecord> {
        let started = std::time::Instant::now();
        let fetched = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let res = FETCHED
            .scope(fetched.clone(), self.pull_inner(reference, creds, &cancel))
            .await;
        let mode = match &res {
            Ok((rec, _)) if self.has_lazy_layers(rec) => "lazy",
            _ => "whole",
        };
        let kind = res.as_ref().err().map(|e| format!("{:?}", e.kind()));
        berth_metrics::IMAGE_PULLS
            .with(&[mode, &berth_metrics::result_label(kind.as_deref())])
            .inc();
        berth_metrics::IMAGE_PULL_DURATION
            .with(&[mode])
            .observe_duration(started.elapsed());
        berth_metrics::IMAGE_PULL_BYTES
            .with(&[mode])
            .inc_by(fetched.load(Ordering::Relaxed));
        let (rec, orphaned) = match res {
            Ok(r) => r,
            Err(e) if cancel.is_cancelled() => {
                // Nobody waits for the answer: said here, or it is never said.
                tracing::info!(image = reference, "pull abandoned: its caller went away");
                drop(e);
                return Err(Error::Cancelled(reference.to_string()));
            }
            Err(e) => return Err(e),
        };
        if orphaned {
            self.gc().await?;
        }
        Ok(rec)
    }
    /// Whether any layer of `rec` is mounted lazily (an eStargz layer fetched as it is read).
    fn has_lazy_layers(&self, rec: &ImageRecord) -> bool {
        rec.chain_ids
            .iter()
            .any(|c| matches!(self.snapshots.get(c), Ok(Some(s)) if s.lazy.is_some()))
    }

    pub(super) async fn pull_inner(
        &self,
        reference: &str,
        creds: Option<Credentials>,
        token: &CancellationToken,
    ) -> Result<(ImageRecord, bool)> {
        let r = Reference::parse(reference)?;
        // hosts.toml is read anew for every pull: edits apply without a restart.
        let hosts = hosts::resolve(self.cfg.registry_config_path.as_deref(), r.domain())?;
        let session = Arc::new(self.registry.session(hosts, &r, creds));
        let _gc = self.gc.read().await;
        // The layer jobs' own flag: set on the first failure, or when the caller goes away.
        let cancel = Arc::new(AtomicBool::new(false));
        let relay = {
            let (token, cancel) = (token.clone(), cancel.clone());
            tokio::spawn(async move {
                token.cancelled().await;
                cancel.store(true, Ordering::Relaxed);
            })
        };
        let _relay = AbortOnDrop(relay);

        // The policy first: nothing of an image it refuses is stored or fetched, and a scope
        // that rejects asks no registry.
        let applied = self.policy_for(&r).await?;
        let top = unless_cancelled(token, &r, session.resolve(&r)).await?;
        count_fetched(top.body.len() as u64);
        let verified = unless_cancelled(
            token,
            &r,
            self.verify_policy(&r, &session, &top, applied.as_ref()),
        )
        .await?;
        let mut blobs = vec![(top.digest.clone(), top.body.len() as u64)];
        self.content.write_all(&top.digest, &top.body)?;
        let manifest_doc =
            match Document::parse(&format!("manifest {r}"), &top.media_type, &top.body)? {
                Document::Manifest(m) => (top.digest.clone(), m),
                Document::Index(idx) => {
                    let desc =
                        idx.select(&self.platform)
                            .ok_or_else(|| Error::NoMatchingPlatform {
                                platform: self.platform.to_string(),
                                reference: r.to_string(),
                            })?;
                    let m = unless_cancelled(token, &r, session.manifest(&desc.digest)).await?;
                    count_fetched(m.body.len() as u64);
                    self.content.write_all(&m.digest, &m.body)?;
                    blobs.push((m.digest.clone(), m.body.len() as u64));
                    match Document::parse(
                        &format!("manifest {}", m.digest),
                        &m.media_type,
                        &m.body,
                    )? {
                        Document::Manifest(man) => (m.digest, man),
                        Document::Index(_) => {
                            return Err(Error::bad(
                                format!("manifest {}", m.digest),
                                "an index may not point at another index",
                            ));
                        }
                    }
                }
            };
        let (manifest_digest, manifest) = manifest_doc;
        let manifest_size = blobs.last().map_or(0, |b| b.1);
        // Every encrypted layer's key is unwrapped before anything is downloaded: a node
        // without the key learns so at once, even when the layers are already here.
        let layer_keys = self
            .unwrap_layer_keys(&r, &manifest.layers, &cancel)
            .await?;

        let config_bytes =
            unless_cancelled(token, &r, self.fetch_config(&session, &manifest.config)).await?;
        let config: ImageConfig = serde_json::from_slice(&config_bytes)
            .map_err(|e| Error::bad(format!("config {}", manifest.config.digest), e.to_string()))?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(Error::bad(
                format!("image {r}"),
                format!(
                    "manifest has {} layers but config lists {} diff_ids",
                    manifest.layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            ));
        }
        let chain_ids = manifest::chain_ids(&config.rootfs.diff_ids);
        // Owned inputs per job: a closure over borrowed slice items trips the compiler's
        // higher-ranked lifetime check once the future must be Send.
        let jobs: Vec<_> = (0..manifest.layers.len())
            .map(|i| {
                let layer = manifest.layers[i].clone();
                let diff = config.rootfs.diff_ids[i].clone();
                let chain = chain_ids[i].clone();
                let parent = i.checked_sub(1).map(|p| chain_ids[p].clone());
                let key = layer_keys[i].clone();
                let session = &session;
                let cancel = cancel.clone();
                let r = &r;
                async move {
                    self.ensure_layer(
                        (session, r),
                        (&layer, key),
                        &diff,
                        &chain,
                        parent.as_ref(),
                        (cancel, token),
                    )
                    .await
                }
            })
            .collect();
        // On the first failure the other layers are told to stop, and every job is awaited
        // before returning: a job dropped mid-flight would leave its unpacker thread writing
        // into a snapshot directory that is being removed.
        let mut running =
            futures::stream::iter(jobs).buffer_unordered(self.cfg.max_concurrent_downloads.max(1));
        let mut first_err = None;
        while let Some(r) = running.next().await {
            if let Err(e) = r {
                cancel.store(true, Ordering::Relaxed);
                first_err.get_or_insert(e);
            }
        }
        if token.is_cancelled() {
            return Err(Error::Cancelled(r.to_string()));
        }
        if let Some(e) = first_err {
            return Err(e);
        }

        blobs.push((manifest.config.digest.clone(), manifest.config.size));
        blobs.extend(manifest.layers.iter().map(|l| (l.digest.clone(), l.size)));
        let size = manifest_size
            + manifest.config.size
            + manifest.layers.iter().map(|l| l.size).sum::<u64>();
        let record = ImageRecord {
            id: manifest.config.digest.clone(),
            repo_tags: r.tag().map(|_| r.to_string()).into_iter().collect(),
            repo_digests: vec![r.with_digest(top.digest.clone()).to_string()],
            manifest: manifest_digest,
            blobs,
            chain_ids,
            size,
            user: config
                .config
                .as_ref()
                .map(|c| c.user.clone())
                .unwrap_or_default(),
            created_ns: now_ns(),
            encrypted: layer_keys.iter().any(Option::is_some),
            verified,
        };
        self.commit_record(record).await
    }
    pub(super) async fn fetch_config(
        &self,
        session: &Session,
        desc: &Descriptor,
    ) -> Result<Vec<u8>> {
        let lock = self.inflight_lock(&desc.digest);
        let _g = lock.lock().await;
        if self.content.size(&desc.digest).is_none() {
            let body = session.blob_bytes(&desc.digest, MAX_CONFIG).await?;
            count_fetched(body.len() as u64);
            self.content.write_all(&desc.digest, &body)?;
        }
        self.content.read(&desc.digest, MAX_CONFIG as u64)
    }
    /// Makes sure the snapshot for `chain` exists: unpacks the stored blob, or downloads it
    /// and unpacks while downloading.
    pub(super) async fn ensure_layer(
        &self,
        (session, r): (&Arc<Session>, &Reference),
        (desc, key): (&Descriptor, Option<LayerKey>),
        diff_id: &Digest,
        chain: &Digest,
        parent: Option<&Digest>,
        (cancel, token): (Arc<AtomicBool>, &CancellationToken),
    ) -> Result<()> {
        let lock = self.inflight_lock(chain);
        let _g = lock.lock().await;
        if self.snapshots.get(chain)?.is_some() {
            return Ok(());
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(cancelled(&desc.digest));
        }
        if key.is_none()
            && self.cfg.lazy.applies(r.domain())
            && let Some(toc_digest) = crate::lazy::toc_digest(desc)
        {
            match self
                .pull_lazily((session, r), (desc, toc_digest), chain, parent, &cancel)
                .await
            {
                Ok(()) => return Ok(()),
                Err(_) if cancel.load(Ordering::Relaxed) => return Err(cancelled(&desc.digest)),
                Err(e) => tracing::info!(
                    layer = %desc.digest,
                    err = %e,
                    "eStargz layer not pulled lazily: pulling it whole"
                ),
            }
        }
        let tmp = self.snapshots.tmp()?;
        let dest = tmp.fs();
        let stats = if self.content.size(&desc.digest) == Some(desc.size) {
            let blob = self.content.path(&desc.digest);
            let (layer, diff_id) = (desc.digest.clone(), diff_id.clone());
            let cancel = cancel.clone();
            tokio::task::spawn_blocking(move || {
                let f = std::fs::File::open(&blob)
                    .map_err(|e| Error::io(format!("open blob {layer}"), e))?;
                let reader = Cancellable { inner: f, cancel };
                unpack_verified(reader, &dest, &layer, &diff_id, key.as_ref())
            })
            .await
            .map_err(|e| Error::io("unpack task", io::Error::other(e)))??
        } else {
            self.download_and_unpack(session, (desc, key), diff_id, dest, (cancel, token))
                .await?
        };
        self.snapshots.commit(tmp, chain, parent, stats)?;
        tracing::debug!(layer = %desc.digest, chain = %chain, bytes = stats.bytes, "layer unpacked");
        Ok(())
    }
    pub(super) async fn download_and_unpack(
        &self,
        session: &Session,
        (desc, key): (&Descriptor, Option<LayerKey>),
        diff_id: &Digest,
        dest: PathBuf,
        (cancel, token): (Arc<AtomicBool>, &CancellationToken),
    ) -> Result<LayerStats> {
        let mut body = tokio::select! {
            r = BlobDownload::open(session, &desc.digest, desc.size) => r?,
            _ = token.cancelled() => return Err(cancelled(&desc.digest)),
        };
        let ingest = self.content.writer()?;
        let (tx, rx) = tokio::sync::mpsc::channel::<std::result::Result<Bytes, String>>(64);
        let (layer, diff, size) = (desc.digest.clone(), diff_id.clone(), desc.size);
        let tee_cancel = cancel.clone();
        let task = tokio::task::spawn_blocking(move || {
            let mut tee = Tee {
                rx,
                cur: Bytes::new(),
                ingest,
                limit: size,
                layer: layer.clone(),
                broken: false,
            };
            let reader = Cancellable {
                inner: &mut tee,
                cancel: tee_cancel.clone(),
            };
            let stats = match unpack_verified(reader, &dest, &layer, &diff, key.as_ref()) {
                Ok(s) => s,
                Err(e) => return Err(tee.damaged(&tee_cancel).unwrap_or(e)),
            };
            // Whatever follows the tar stream (padding, the compressor's trailer) is part of
            // the blob and of its digest.
            io::copy(&mut tee, &mut io::sink())
                .map_err(|e| Error::io(format!("read layer {layer}"), e))?;
            tee.ingest.commit(&layer, Some(size))?;
            Ok::<_, Error>(stats)
        });
        let mut broken = None;
        while !cancel.load(Ordering::Relaxed) {
            let chunk = tokio::select! {
                c = body.chunk() => c,
                // The unpacker sees the flag (set by the relay) at its next read.
                _ = token.cancelled() => break,
            };
            match chunk {
                Ok(Some(c)) => {
                    count_fetched(c.len() as u64);
                    if tx.send(Ok(c)).await.is_err() {
                        break; // the unpacker stopped: its error says why
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string())).await;
                    broken = Some(e);
                    break;
                }
            }
        }
        drop(tx);
        let unpacked = task
            .await
            .map_err(|e| Error::io("unpack task", io::Error::other(e)))?;
        match (unpacked, broken) {
            // The download's own error keeps its kind (a registry failure is Unavailable).
            (Err(_), Some(e)) => Err(e),
            (r, _) => r,
        }
    }
}

tokio::task_local! {
    /// Bytes the pull running on this task fetched from the registry (berth's metrics). The
    /// layer jobs run on the pull's own task, so they see it too.
    static FETCHED: Arc<std::sync::atomic::AtomicU64>;
}

fn count_fetched(n: u64) {
    let _ = FETCHED.try_with(|f| f.fetch_add(n, Ordering::Relaxed));
}

/// `fut`, unless `token` is cancelled first.
pub(super) async fn unless_cancelled<T>(
    token: &CancellationToken,
    r: &Reference,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::select! {
        res = fut => res,
        _ = token.cancelled() => Err(Error::Cancelled(r.to_string())),
    }
}

/// Aborts a task when dropped.
pub(super) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(super) fn cancelled(layer: &Digest) -> Error {
    Error::Io {
        context: format!("layer {layer}"),
        error: io::Error::other("pull abandoned: another layer failed"),
    }
}

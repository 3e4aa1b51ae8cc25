//! The image service: pull, list, status, remove, garbage collection and filesystem usage.
//!
//! Records live in the metadata store (table `images`, keyed by image id = config digest);
//! memory holds only the name → id index derived from them. A pull holds the GC lock shared,
//! and GC holds it exclusively, so GC never removes content a pull is about to reference.

use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use bytes::{Buf, Bytes};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

use crate::blob::BlobDownload;
use crate::content::{ContentStore, Ingest};
use crate::error::{Error, Result};
use crate::hosts;
use crate::lazy::{LazyLayers, RegistryBlob};
use crate::manifest::{self, Descriptor, Document, ImageConfig, Platform};
use crate::reference::{Digest, Reference, is_image_id};
use crate::registry::{Credentials, RegistryClient, Session};
use crate::snapshot::LazySource;
use crate::snapshot::Snapshotter;
use crate::unpack::{self, LayerStats};
use berth_imgcrypt::{KeyRing, LayerKey, Tampered};
use berth_store::{self as store, Store};

const TABLE: &str = "images";
const MAX_CONFIG: usize = 8 << 20;
/// A lazily pulled layer's verified TOC, kept in its snapshot directory.
const LAZY_TOC: &str = "toc.json";

/// How the image service is set up.
#[derive(Debug, Clone)]
pub struct ImageServiceConfig {
    /// berth's root directory; content and snapshots live below it.
    pub root: PathBuf,
    /// The certs.d directory with `<host>/hosts.toml` files, if any.
    pub registry_config_path: Option<PathBuf>,
    /// References that are never garbage-collected by the kubelet (the sandbox image).
    pub pinned: Vec<String>,
    /// Layers downloaded and unpacked at once per pull.
    pub max_concurrent_downloads: usize,
    /// How long registries may take.
    pub timeouts: crate::registry::Timeouts,
    /// The node's private keys for encrypted images, read anew on every pull that needs them.
    pub decryption_keys_dir: PathBuf,
    /// Which registries' eStargz layers are pulled lazily.
    pub lazy: crate::lazy::LazyConfig,
}

/// A local image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    /// The image id: the digest of its config.
    pub id: Digest,
    /// `name:tag` references.
    pub repo_tags: Vec<String>,
    /// `name@digest` references.
    pub repo_digests: Vec<String>,
    /// The digest of the selected platform manifest.
    pub manifest: Digest,
    /// Every blob the image uses (index, manifest, config, layers) with its size.
    pub blobs: Vec<(Digest, u64)>,
    /// The layers' chain IDs, base first.
    pub chain_ids: Vec<Digest>,
    /// Bytes of manifest, config and layers, as containerd reports an image's size.
    pub size: u64,
    /// The config's `User`.
    pub user: String,
    /// When the image was first pulled (Unix nanoseconds).
    pub created_ns: i64,
    /// Whether any of its layers is encrypted (ocicrypt).
    #[serde(default)]
    pub encrypted: bool,
}

impl ImageRecord {
    /// The chain ID of the top layer: the image's root filesystem.
    pub fn top_chain(&self) -> Option<&Digest> {
        self.chain_ids.last()
    }
}

/// Bytes and inodes used by images.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsUsage {
    /// Bytes of snapshots and content.
    pub used_bytes: u64,
    /// Inodes of snapshots and content.
    pub inodes_used: u64,
}

#[derive(Default)]
struct Index {
    images: HashMap<Digest, ImageRecord>,
    names: HashMap<String, Digest>,
}

impl Index {
    fn insert(&mut self, r: ImageRecord) {
        for n in r.repo_tags.iter().chain(&r.repo_digests) {
            self.names.insert(n.clone(), r.id.clone());
        }
        self.images.insert(r.id.clone(), r);
    }

    fn remove(&mut self, id: &Digest) -> Option<ImageRecord> {
        let r = self.images.remove(id)?;
        for n in r.repo_tags.iter().chain(&r.repo_digests) {
            if self.names.get(n) == Some(id) {
                self.names.remove(n);
            }
        }
        Some(r)
    }
}

/// Pulls, lists and removes images.
pub struct ImageService {
    cfg: ImageServiceConfig,
    store: Store,
    content: ContentStore,
    snapshots: Arc<Snapshotter>,
    registry: Arc<RegistryClient>,
    platform: Platform,
    index: RwLock<Index>,
    pinned: HashSet<String>,
    /// Pulls hold it shared; GC holds it exclusively.
    gc: tokio::sync::RwLock<()>,
    /// Serialises read-modify-write of image records.
    records: tokio::sync::Mutex<()>,
    /// One fetch per blob or layer at a time, across concurrent pulls.
    inflight: Mutex<HashMap<Digest, Weak<tokio::sync::Mutex<()>>>>,
    /// Where GC puts what it removes, to be deleted off the caller's path.
    trash: Arc<crate::trash::Trash>,
    /// Lazily pulled layers served by this process.
    lazy: Arc<LazyLayers>,
}

impl std::fmt::Debug for ImageService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageService")
            .field("root", &self.cfg.root)
            .finish_non_exhaustive()
    }
}

impl ImageService {
    /// Opens the stores under `cfg.root`, loads image records and removes leftovers of
    /// interrupted pulls and unreferenced content.
    pub async fn open(cfg: ImageServiceConfig, store: Store) -> Result<Arc<Self>> {
        let content = ContentStore::open(&cfg.root)?;
        let snapshots = Arc::new(Snapshotter::open(&cfg.root, store.clone())?);
        // What a GC before a crash left in the trash goes in the background.
        let trash = Arc::new(crate::trash::Trash::open(&cfg.root)?);
        {
            let t = trash.clone();
            tokio::task::spawn_blocking(move || t.empty());
        }
        let mut index = Index::default();
        for (_, r) in store.list::<ImageRecord>(TABLE)? {
            index.insert(r);
        }
        let pinned = cfg
            .pinned
            .iter()
            .filter_map(|p| Reference::parse(p).ok())
            .map(|r| r.to_string())
            .collect();
        let registry = Arc::new(RegistryClient::new(cfg.timeouts));
        let cfg_holder = cfg.lazy.holder.clone();
        let svc = Arc::new(ImageService {
            cfg,
            store,
            content,
            snapshots,
            registry,
            platform: Platform::host(),
            index: RwLock::new(index),
            pinned,
            gc: tokio::sync::RwLock::new(()),
            records: tokio::sync::Mutex::new(()),
            inflight: Mutex::new(HashMap::new()),
            trash,
            lazy: Arc::new(LazyLayers::new(cfg_holder)),
        });
        svc.gc().await?;
        svc.resume_lazy().await;
        Ok(svc)
    }

    /// The snapshotter, for preparing container root filesystems.
    pub fn snapshots(&self) -> &Snapshotter {
        &self.snapshots
    }

    /// Where snapshots live (for filesystem usage reports).
    pub fn snapshots_dir(&self) -> PathBuf {
        self.cfg.root.join("snapshots")
    }

    /// True when the image carries a pinned reference.
    pub fn is_pinned(&self, r: &ImageRecord) -> bool {
        r.repo_tags
            .iter()
            .chain(&r.repo_digests)
            .any(|n| self.pinned.contains(n))
    }

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
        let (rec, orphaned) = match self.pull_inner(reference, creds, &cancel).await {
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

    async fn pull_inner(
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

        let top = unless_cancelled(token, &r, session.resolve(&r)).await?;
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
        };
        self.commit_record(record).await
    }

    /// The key of each encrypted layer, unwrapped with the node's keys (`None` for plain
    /// layers). The key directory is read only when there is an encrypted layer.
    async fn unwrap_layer_keys(
        &self,
        r: &Reference,
        layers: &[Descriptor],
        cancel: &Arc<AtomicBool>,
    ) -> Result<Vec<Option<LayerKey>>> {
        if !layers
            .iter()
            .any(|l| berth_imgcrypt::is_encrypted(&l.media_type))
        {
            return Ok(vec![None; layers.len()]);
        }
        let dir = self.cfg.decryption_keys_dir.clone();
        let (layers, image, cancel) = (layers.to_vec(), r.to_string(), cancel.clone());
        tokio::task::spawn_blocking(move || {
            let ring = KeyRing::load(&dir);
            tracing::debug!(image = %image, keys = ?ring, "unwrapping layer keys");
            layers
                .iter()
                .map(|l| {
                    if !berth_imgcrypt::is_encrypted(&l.media_type) {
                        return Ok(None);
                    }
                    LayerKey::open_cancellable(&l.annotations, &ring, &cancel)
                        .map(Some)
                        .map_err(|e| {
                            let mut reason = e.to_string();
                            if ring.is_empty() {
                                for s in ring.skipped() {
                                    let name = s.path.file_name().unwrap_or(s.path.as_os_str());
                                    reason.push_str(&format!(
                                        "; {} skipped: {}",
                                        name.to_string_lossy(),
                                        s.reason
                                    ));
                                }
                            }
                            Error::Decryption {
                                image: image.clone(),
                                layer: l.digest.to_string(),
                                dir: dir.clone(),
                                reason,
                            }
                        })
                })
                .collect()
        })
        .await
        .map_err(|e| Error::io("unwrap layer keys", io::Error::other(e)))?
    }

    async fn fetch_config(&self, session: &Session, desc: &Descriptor) -> Result<Vec<u8>> {
        let lock = self.inflight_lock(&desc.digest);
        let _g = lock.lock().await;
        if self.content.size(&desc.digest).is_none() {
            let body = session.blob_bytes(&desc.digest, MAX_CONFIG).await?;
            self.content.write_all(&desc.digest, &body)?;
        }
        self.content.read(&desc.digest, MAX_CONFIG as u64)
    }

    fn inflight_lock(&self, d: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(l) = map.get(d).and_then(Weak::upgrade) {
            return l;
        }
        let l = Arc::new(tokio::sync::Mutex::new(()));
        map.insert(d.clone(), Arc::downgrade(&l));
        l
    }

    /// Makes sure the snapshot for `chain` exists: unpacks the stored blob, or downloads it
    /// and unpacks while downloading.
    async fn ensure_layer(
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
                .pull_lazily(session, r, desc, toc_digest, chain, parent)
                .await
            {
                Ok(()) => return Ok(()),
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

    /// Mounts an eStargz layer from its footer and TOC (two range requests) instead of
    /// downloading it; its chunks come on first read and in the background.
    async fn pull_lazily(
        &self,
        session: &Arc<Session>,
        r: &Reference,
        desc: &Descriptor,
        toc_digest: &str,
        chain: &Digest,
        parent: Option<&Digest>,
    ) -> Result<()> {
        let blob = RegistryBlob {
            session: session.clone(),
            digest: desc.digest.clone(),
            rt: tokio::runtime::Handle::current(),
        };
        let tmp = self.snapshots.tmp()?;
        let (size, want) = (desc.size, toc_digest.to_string());
        let (limits, toc_path) = (self.cfg.lazy.limits, tmp.dir().join(LAZY_TOC));
        let (toc, blob) = tokio::task::spawn_blocking(move || {
            berth_lazy::fetch::open_to(&blob, size, &want, &limits, &toc_path).map(|t| (t, blob))
        })
        .await
        .map_err(|e| Error::io("open a lazy layer", io::Error::other(e)))?
        .map_err(|e| Error::bad(format!("layer {}", desc.digest), e.to_string()))?;
        let stats = LayerStats {
            bytes: toc.nodes.iter().map(|n| n.size).sum(),
            inodes: toc.nodes.len() as u64,
        };
        let toc_offset = toc.toc_offset;
        let source = LazySource {
            reference: r.to_string(),
            blob: desc.digest.clone(),
            size: desc.size,
            toc_offset: toc.toc_offset,
        };
        let rec = self
            .snapshots
            .commit_with(tmp, chain, parent, stats, Some(source))?;
        let (lazy, dir, name, c) = (
            self.lazy.clone(),
            self.snapshots.dir_of(rec.id),
            desc.digest.to_string(),
            chain.clone(),
        );
        let fill = (self.cfg.lazy.background_fetch, self.cfg.lazy.read_timeout);
        let started = tokio::task::spawn_blocking(move || {
            lazy.start(&c, &dir, &name, toc, Box::new(blob), fill, None)
        })
        .await
        .map_err(io::Error::other)
        .and_then(|r| r);
        if let Err(e) = started {
            let _ = self.snapshots.remove(chain, &self.trash);
            return Err(Error::io(format!("mount lazy layer {}", desc.digest), e));
        }
        // The footer and the TOC member: everything from the TOC's offset on.
        self.lazy.add_fetched(chain, desc.size - toc_offset);
        tracing::info!(layer = %desc.digest, chain = %chain, "layer pulled lazily");
        Ok(())
    }

    /// Serves again, after a restart, the lazily pulled layers of the store: their TOC is kept
    /// beside them, their chunks on disk; what is missing comes from the registry again
    /// (without credentials: a private registry's layers then read only what is cached).
    async fn resume_lazy(&self) {
        let Ok(list) = self.snapshots.list() else {
            return;
        };
        if list.iter().all(|(_, r)| r.lazy.is_none()) {
            return;
        }
        let lazy = self.lazy.clone();
        let mut held = tokio::task::spawn_blocking(move || lazy.held())
            .await
            .unwrap_or_default();
        for (chain, rec) in list {
            let Some(src) = rec.lazy else { continue };
            let dir = self.snapshots.dir_of(rec.id);
            let r = match Reference::parse(&src.reference) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(chain = %chain, err = %e, "lazy layer with a bad reference");
                    continue;
                }
            };
            let hosts = match hosts::resolve(self.cfg.registry_config_path.as_deref(), r.domain()) {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(chain = %chain, err = %e, "lazy layer: hosts.toml");
                    continue;
                }
            };
            let blob = RegistryBlob {
                session: Arc::new(self.registry.session(hosts, &r, None)),
                digest: src.blob.clone(),
                rt: tokio::runtime::Handle::current(),
            };
            let (lazy, name, c) = (self.lazy.clone(), src.blob.to_string(), chain.clone());
            let fill = (self.cfg.lazy.background_fetch, self.cfg.lazy.read_timeout);
            let limits = self.cfg.lazy.limits;
            let kept = held.remove(chain.as_str());
            // Checked again before it is served: the limits may have changed, and a layer
            // whose fetch killed the last berths is not fetched again.
            let resumed =
                tokio::task::spawn_blocking(move || -> std::result::Result<(), (bool, String)> {
                    // Not served: its connection (kept by the holder) and mount go, so that a
                    // reader fails instead of waiting on a server that never comes.
                    let drop_it = |why: String| {
                        crate::lazy::quarantine(&dir, &why);
                        lazy.release(&[c.to_string()]);
                        crate::snapshot::detach_mount(&dir.join("fs"));
                        (true, why)
                    };
                    if let Some(why) = std::fs::read_to_string(dir.join(crate::lazy::QUARANTINED))
                        .ok()
                        .or_else(|| crate::lazy::unsafe_to_resume(&dir))
                    {
                        drop(kept);
                        return Err(drop_it(why));
                    }
                    let f = std::fs::File::open(dir.join(LAZY_TOC))
                        .map_err(|e| (false, e.to_string()))?;
                    let toc =
                        berth_lazy::toc::Toc::parse_reader(f, src.toc_offset, src.size, &limits)
                            .map_err(|e| {
                                drop_it(format!("its table of contents is refused: {e}"))
                            })?;
                    lazy.start(&c, &dir, &name, toc, Box::new(blob), fill, kept)
                        .map_err(|e| (false, e.to_string()))
                })
                .await
                .unwrap_or_else(|e| Err((false, e.to_string())));
            match resumed {
                Ok(()) => tracing::info!(chain = %chain, "lazily pulled layer served again"),
                Err((true, why)) => tracing::error!(
                    chain = %chain, layer = %src.blob, image = %src.reference, reason = %why,
                    "lazily pulled layer quarantined: not served; remove its image (crictl rmi) and pull it again"
                ),
                Err((false, e)) => {
                    tracing::warn!(chain = %chain, err = %e, "lazily pulled layer could not be served again")
                }
            }
        }
        // Connections kept for layers that are gone: let go of them.
        if !held.is_empty() {
            let lazy = self.lazy.clone();
            let keys: Vec<String> = held.into_keys().collect();
            let _ = tokio::task::spawn_blocking(move || lazy.release(&keys)).await;
        }
    }

    /// For an image with lazily pulled layers: (such layers, bytes of their files, bytes of
    /// them on local disk, compressed bytes fetched by this process).
    pub fn lazy_progress(&self, r: &ImageRecord) -> Option<(usize, u64, u64, u64)> {
        let mut out = (0, 0, 0, 0);
        for chain in &r.chain_ids {
            if let Some((total, cached)) = self.lazy.progress(chain) {
                out.0 += 1;
                out.1 += total;
                out.2 += cached;
                out.3 += self.lazy.fetched(chain).unwrap_or(0);
            }
        }
        (out.0 > 0).then_some(out)
    }

    async fn download_and_unpack(
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

    /// Adds a freshly pulled image, moving its tag away from any image that had it. Returns
    /// whether an image was deleted on the way (its content is then collected).
    async fn commit_record(&self, mut rec: ImageRecord) -> Result<(ImageRecord, bool)> {
        let _g = self.records.lock().await;
        let mut puts: Vec<(String, Vec<u8>)> = Vec::new();
        let mut deletes = Vec::new();
        let mut updated: Vec<ImageRecord> = Vec::new();
        {
            let index = self.index.read().unwrap_or_else(|p| p.into_inner());
            if let Some(existing) = index.images.get(&rec.id) {
                let mut merged = existing.clone();
                for t in &rec.repo_tags {
                    if !merged.repo_tags.contains(t) {
                        merged.repo_tags.push(t.clone());
                    }
                }
                for d in &rec.repo_digests {
                    if !merged.repo_digests.contains(d) {
                        merged.repo_digests.push(d.clone());
                    }
                }
                rec = merged;
            }
            for tag in &rec.repo_tags {
                if let Some(old_id) = index.names.get(tag).filter(|id| **id != rec.id)
                    && let Some(old) = index.images.get(old_id)
                {
                    let mut old = updated
                        .iter()
                        .find(|u| &u.id == old_id)
                        .cloned()
                        .unwrap_or_else(|| old.clone());
                    old.repo_tags.retain(|t| t != tag);
                    updated.retain(|u| &u.id != old_id);
                    updated.push(old);
                }
            }
        }
        let mut kept = Vec::new();
        for old in updated {
            if old.repo_tags.is_empty() && old.repo_digests.is_empty() {
                deletes.push(old.id.to_string());
            } else {
                puts.push((old.id.to_string(), store::encode(&old)?));
                kept.push(old);
            }
        }
        puts.push((rec.id.to_string(), store::encode(&rec)?));
        kept.push(rec.clone());
        self.store.batch(TABLE, &puts, &deletes)?;
        let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
        for r in kept {
            index.remove(&r.id);
            index.insert(r);
        }
        for d in &deletes {
            if let Ok(id) = Digest::parse(d) {
                index.remove(&id);
            }
        }
        Ok((rec, !deletes.is_empty()))
    }

    /// Finds a local image by id, id prefix, or (normalised) reference.
    pub fn resolve(&self, s: &str) -> Result<ImageRecord> {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        if is_image_id(s) {
            let id = if s.starts_with("sha256:") {
                s.to_string()
            } else {
                format!("sha256:{s}")
            };
            if let Some(r) = Digest::parse(&id).ok().and_then(|d| index.images.get(&d)) {
                return Ok(r.clone());
            }
        }
        if let Ok(r) = Reference::parse(s)
            && let Some(rec) = index
                .names
                .get(&r.to_string())
                .and_then(|id| index.images.get(id))
        {
            return Ok(rec.clone());
        }
        let hex = s.strip_prefix("sha256:").unwrap_or(s);
        if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut found = index
                .images
                .values()
                .filter(|r| r.id.hex().starts_with(hex));
            if let (Some(one), None) = (found.next(), found.next()) {
                return Ok(one.clone());
            }
        }
        Err(Error::ImageNotFound(s.to_string()))
    }

    /// Every local image.
    pub fn list(&self) -> Vec<ImageRecord> {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<ImageRecord> = index.images.values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// The image config of a local image.
    pub fn config(&self, r: &ImageRecord) -> Result<ImageConfig> {
        let bytes = self.content.read(&r.id, MAX_CONFIG as u64)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::bad(format!("config {}", r.id), e.to_string()))
    }

    /// The raw image config JSON of a local image.
    pub fn config_json(&self, r: &ImageRecord) -> Result<serde_json::Value> {
        let bytes = self.content.read(&r.id, MAX_CONFIG as u64)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::bad(format!("config {}", r.id), e.to_string()))
    }

    /// Removes an image. A tag of an image with several tags removes only that tag; an id,
    /// a digest reference or the last tag removes the image, and unreferenced content and
    /// snapshots are collected. An unknown image is not an error (CRI: idempotent).
    pub async fn remove(&self, s: &str) -> Result<()> {
        let rec = match self.resolve(s) {
            Ok(r) => r,
            Err(Error::ImageNotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        {
            let _g = self.records.lock().await;
            let tag = Reference::parse(s)
                .ok()
                .filter(|r| r.tag().is_some())
                .map(|r| r.to_string());
            match tag {
                Some(t) if rec.repo_tags.len() > 1 && rec.repo_tags.contains(&t) => {
                    let mut r = rec.clone();
                    r.repo_tags.retain(|x| x != &t);
                    self.store.put(TABLE, r.id.as_str(), &r)?;
                    let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
                    index.remove(&r.id);
                    index.insert(r);
                    return Ok(());
                }
                _ => {
                    self.store.delete(TABLE, rec.id.as_str())?;
                    self.index
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&rec.id);
                }
            }
        }
        self.gc().await
    }

    /// Collects garbage when one of `chains` (what a removed writable snapshot or image volume
    /// stood on) belongs to no image any more: its image was removed while a container still
    /// used it, and that container was the last.
    pub async fn gc_unless_referenced(&self, chains: &[Digest]) -> Result<()> {
        let orphaned = {
            let index = self.index.read().unwrap_or_else(|p| p.into_inner());
            chains
                .iter()
                .any(|c| !index.images.values().any(|r| r.chain_ids.contains(c)))
        };
        if orphaned {
            self.gc().await?;
        }
        Ok(())
    }

    /// Deletes snapshots and blobs no image references.
    pub async fn gc(&self) -> Result<()> {
        let _w = self.gc.write().await;
        let (blobs, chains): (HashSet<Digest>, HashSet<Digest>) = {
            let index = self.index.read().unwrap_or_else(|p| p.into_inner());
            let blobs = index
                .images
                .values()
                .flat_map(|r| r.blobs.iter().map(|b| b.0.clone()))
                .collect();
            let chains = index
                .images
                .values()
                .flat_map(|r| r.chain_ids.iter().cloned())
                .collect();
            (blobs, chains)
        };
        // Layers under a container's writable snapshot stay, even if their image is gone.
        let mut chains = chains;
        chains.extend(self.snapshots.active_chains()?);
        // What goes is moved into the trash under the lock (pulls wait on it, as they must
        // not reuse what is being removed), on a blocking thread; the trash is emptied after,
        // off the caller's path.
        let (snapshots, content, trash, lazy) = (
            self.snapshots.clone(),
            self.content.clone(),
            self.trash.clone(),
            self.lazy.clone(),
        );
        let removed = tokio::task::spawn_blocking(move || -> Result<(usize, usize)> {
            let mut removed = (0, 0);
            // Children before parents is not needed: each snapshot is its own directory.
            for (chain, _) in snapshots.list()? {
                if !chains.contains(&chain) {
                    lazy.stop(&chain);
                    snapshots.remove(&chain, &trash)?;
                    removed.0 += 1;
                }
            }
            for (d, _) in content.list()? {
                if !blobs.contains(&d) {
                    content.delete(&d, &trash)?;
                    removed.1 += 1;
                }
            }
            Ok(removed)
        })
        .await
        .map_err(|e| Error::io("garbage collection", io::Error::other(e)))??;
        if removed != (0, 0) {
            let t = self.trash.clone();
            tokio::task::spawn_blocking(move || t.empty());
        }
        if removed != (0, 0) {
            tracing::info!(
                snapshots = removed.0,
                blobs = removed.1,
                "garbage collected unreferenced image data"
            );
        }
        Ok(())
    }

    /// Bytes and inodes of snapshots and content, from the records (no filesystem walk).
    pub fn fs_usage(&self) -> Result<FsUsage> {
        let mut u = FsUsage::default();
        for (chain, s) in self.snapshots.list()? {
            // A lazily pulled layer uses what of it is on local disk.
            u.used_bytes += match s.lazy {
                Some(_) => self.lazy.progress(&chain).map_or(0, |p| p.1),
                None => s.size,
            };
            u.inodes_used += s.inodes;
        }
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        let blobs: HashMap<&Digest, u64> = index
            .images
            .values()
            .flat_map(|r| r.blobs.iter().map(|(d, s)| (d, *s)))
            .collect();
        // Only blobs that are here: a lazily pulled layer's blob is not.
        let here: Vec<u64> = blobs
            .iter()
            .filter(|(d, _)| self.content.size(d).is_some())
            .map(|(_, s)| *s)
            .collect();
        u.used_bytes += here.iter().sum::<u64>();
        u.inodes_used += here.len() as u64;
        Ok(u)
    }

    /// berth's root directory.
    pub fn root(&self) -> &Path {
        &self.cfg.root
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// `fut`, unless `token` is cancelled first.
async fn unless_cancelled<T>(
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
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn cancelled(layer: &Digest) -> Error {
    Error::Io {
        context: format!("layer {layer}"),
        error: io::Error::other("pull abandoned: another layer failed"),
    }
}

/// A reader that fails once the pull it belongs to is abandoned.
struct Cancellable<R> {
    inner: R,
    cancel: Arc<AtomicBool>,
}

impl<R: Read> Read for Cancellable<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(io::Error::other("pull abandoned: another layer failed"));
        }
        self.inner.read(buf)
    }
}

/// Feeds downloaded chunks to the unpacker while writing them to the content store.
struct Tee {
    rx: tokio::sync::mpsc::Receiver<std::result::Result<Bytes, String>>,
    cur: Bytes,
    ingest: Ingest,
    limit: u64,
    layer: Digest,
    /// The download failed (its error went to the reader).
    broken: bool,
}

impl Tee {
    /// After a failed unpack: whether the bytes were damaged on the way rather than the
    /// layer being bad. The rest of the download (bounded by the declared size) is read and
    /// the blob checked against its digest; a mismatch is the error to report. Nothing to
    /// say when the pull was cancelled or the download itself broke.
    fn damaged(&mut self, cancel: &AtomicBool) -> Option<Error> {
        if self.broken || cancel.load(Ordering::Relaxed) {
            return None;
        }
        io::copy(self, &mut io::sink()).ok()?;
        self.ingest.verify(&self.layer, Some(self.limit)).err()
    }
}

impl Read for Tee {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Err(e)) => {
                    self.broken = true;
                    return Err(io::Error::other(e));
                }
                Some(Ok(b)) => {
                    self.ingest.write_all(&b)?;
                    if self.ingest.written() > self.limit {
                        return Err(io::Error::other(format!(
                            "layer {} is larger than the {} bytes its manifest declares",
                            self.layer, self.limit
                        )));
                    }
                    self.cur = b;
                }
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur.advance(n);
        Ok(n)
    }
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Decrypts (with `key`, for an encrypted layer), decompresses (gzip, zstd or none, told by
/// the magic bytes), applies, and checks the uncompressed stream against `diff_id`. An
/// encrypted layer's HMAC and plain digest are checked at the end of its blob, before
/// anything can be committed; their failure is the error to report, whatever the unpacker
/// made of the bytes.
fn unpack_verified<R: Read>(
    reader: R,
    dest: &Path,
    layer: &Digest,
    diff_id: &Digest,
    key: Option<&LayerKey>,
) -> Result<LayerStats> {
    let Some(key) = key else {
        return unpack_plain(reader, dest, layer, diff_id);
    };
    let mut plain = key.decrypt(reader);
    let unpacked = unpack_plain(&mut plain, dest, layer, diff_id);
    match plain.finish() {
        Ok(()) => unpacked,
        Err(e) => match e.get_ref().and_then(|i| i.downcast_ref::<Tampered>()) {
            Some(t) => Err(Error::Tampered {
                layer: layer.to_string(),
                reason: t.to_string(),
            }),
            None => unpacked.and(Err(Error::io(format!("read layer {layer}"), e))),
        },
    }
}

fn unpack_plain<R: Read>(
    reader: R,
    dest: &Path,
    layer: &Digest,
    diff_id: &Digest,
) -> Result<LayerStats> {
    let mut buffered = BufReader::with_capacity(256 << 10, reader);
    let head = buffered
        .fill_buf()
        .map_err(|e| Error::io(format!("read layer {layer}"), e))?;
    let decompressed: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(
            zstd::stream::read::Decoder::with_buffer(buffered)
                .map_err(|e| Error::io(format!("layer {layer}: zstd"), e))?,
        )
    } else {
        Box::new(buffered)
    };
    let mut hashing = HashingReader {
        inner: decompressed,
        hasher: Sha256::new(),
    };
    let stats = unpack::apply_layer(&mut hashing, dest, layer.as_str())?;
    io::copy(&mut hashing, &mut io::sink())
        .map_err(|e| Error::io(format!("read layer {layer}"), e))?;
    let actual = Digest::from_sha256(hashing.hasher.finalize().into());
    if &actual != diff_id {
        return Err(Error::DigestMismatch {
            what: format!("uncompressed layer {layer}"),
            expected: diff_id.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(stats)
}

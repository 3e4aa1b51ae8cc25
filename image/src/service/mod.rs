//! The image service: pull, list, status, remove, garbage collection and filesystem usage,
//! one job a file:
//!
//! - `index.rs`: the image records and the name → id index over them (resolve, list, config);
//! - `pull.rs`: a pull, from the manifest to committed snapshots, layers in parallel;
//! - `decrypt.rs`: the keys of encrypted layers, unwrapped before anything is downloaded;
//! - `lazy_pull.rs`: eStargz layers mounted from their TOC, and served again after a restart;
//! - `gc.rs`: removal, garbage collection and filesystem usage;
//! - `readers.rs`: the readers a layer streams through (cancellation, tee to the content
//!   store, hashing) and the verified unpack.
//!
//! Records live in the metadata store (table `images`, keyed by image id = config digest);
//! memory holds only the name → id index derived from them. A pull holds the GC lock shared,
//! and GC holds it exclusively, so GC never removes content a pull is about to reference.

mod decrypt;
mod gc;
mod index;
mod lazy_pull;
mod pull;
mod readers;
mod verify;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};

use crate::content::ContentStore;
use crate::error::Result;
use crate::lazy::LazyLayers;
use crate::manifest::Platform;
use crate::reference::{Digest, Reference};
use crate::registry::RegistryClient;
use crate::snapshot::Snapshotter;
use berth_store::Store;

pub use index::ImageRecord;
use index::Index;

pub(super) const TABLE: &str = "images";
pub(super) const MAX_CONFIG: usize = 8 << 20;
/// A lazily pulled layer's verified TOC, kept in its snapshot directory.
pub(super) const LAZY_TOC: &str = "toc.json";

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
    /// The signature policy (`policy.json`), read anew for every pull; `None`: every image
    /// is accepted.
    pub policy_path: Option<PathBuf>,
}

/// Bytes and inodes used by images.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsUsage {
    /// Bytes of snapshots and content.
    pub used_bytes: u64,
    /// Inodes of snapshots and content.
    pub inodes_used: u64,
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
    pub(super) fn inflight_lock(&self, d: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(l) = map.get(d).and_then(Weak::upgrade) {
            return l;
        }
        let l = Arc::new(tokio::sync::Mutex::new(()));
        map.insert(d.clone(), Arc::downgrade(&l));
        l
    }
    /// berth's root directory.
    pub fn root(&self) -> &Path {
        &self.cfg.root
    }
}

pub(super) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

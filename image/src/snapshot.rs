//! Overlay snapshots of image layers, keyed by chain ID.
//!
//! A committed layer lives in `<root>/snapshots/<n>/fs`, `n` a small sequence number so that
//! overlay `lowerdir=` lists stay short (the mount data must fit in one page). A layer is
//! unpacked into `<root>/snapshots/tmp-<random>/fs` and renamed into place only after its
//! digests were verified; the record is written after the rename, and on open any directory
//! without a record (a crash in between, an interrupted unpack) is removed.
//!
//! A writable snapshot over a chain also stacks that chain's mount-point layer (see
//! [`crate::mountpoints`]), made on first use and removed with the chain.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::reference::Digest;
use crate::unpack::LayerStats;
use berth_store::Store;

const TABLE: &str = "snapshots";
const ACTIVE: &str = "active_snapshots";
const INIT: &str = "mountpoint_layers";
const TMP_PREFIX: &str = "tmp-";

/// A committed layer snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// Directory number under `snapshots/`.
    pub id: u64,
    /// The chain ID of the layer below, if any.
    pub parent: Option<Digest>,
    /// Bytes of file data in this layer.
    pub size: u64,
    /// Entries in this layer.
    pub inodes: u64,
    /// For a lazily pulled layer: where its blob is. Its `fs` is then a FUSE mount point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lazy: Option<LazySource>,
}

/// Where a lazily pulled layer's bytes come from, kept to serve it again after a restart.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LazySource {
    /// The image reference pulled (its registry and repository).
    pub reference: String,
    /// The layer blob.
    pub blob: Digest,
    /// Its size.
    pub size: u64,
    /// Where its TOC member starts.
    pub toc_offset: u64,
}

/// A writable snapshot (a container's root filesystem) over a committed chain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ActiveRecord {
    /// Directory number under `snapshots/`.
    pub id: u64,
    /// The chain it sits on (the image's top layer).
    pub parent: Option<Digest>,
    /// The directory number of the mount-point layer between the chain and this snapshot
    /// (none: the image has every mount point, or the snapshot predates these layers).
    #[serde(default)]
    pub init: Option<u64>,
    /// A read-only view of the chain (an image volume), not a writable root filesystem.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub view: bool,
}

/// The mount-point layer of a chain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InitRecord {
    /// Its directory number; none when the image has every mount point.
    pub id: Option<u64>,
}

/// A mount that assembles a root filesystem (what the shim's Create takes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// `overlay` or `bind`.
    pub kind: String,
    /// The mount source.
    pub source: String,
    /// Mount options.
    pub options: Vec<String>,
}

/// The snapshot directories and their records.
#[derive(Debug)]
pub struct Snapshotter {
    dir: PathBuf,
    store: Store,
    next: AtomicU64,
    /// Serialises making mount-point layers, so two containers of one image make one.
    init_lock: std::sync::Mutex<()>,
}

/// A snapshot being unpacked; removed on drop unless committed.
#[derive(Debug)]
pub struct TmpSnapshot {
    dir: PathBuf,
    committed: bool,
}

impl TmpSnapshot {
    /// The snapshot's own directory (beside `fs`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory to unpack into.
    pub fn fs(&self) -> PathBuf {
        self.dir.join("fs")
    }
}

impl Drop for TmpSnapshot {
    fn drop(&mut self) {
        if !self.committed
            && let Err(e) = std::fs::remove_dir_all(&self.dir)
        {
            tracing::warn!(dir = %self.dir.display(), err = %e, "failed to remove unfinished snapshot");
        }
    }
}

impl Snapshotter {
    /// Opens `<root>/snapshots`, dropping directories that have no record.
    pub fn open(root: &Path, store: Store) -> Result<Self> {
        let dir = root.join("snapshots");
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let records: Vec<(String, SnapshotRecord)> = store.list(TABLE)?;
        let active: Vec<(String, ActiveRecord)> = store.list(ACTIVE)?;
        let inits: Vec<(String, InitRecord)> = store.list(INIT)?;
        let ids = records
            .iter()
            .map(|(_, r)| r.id)
            .chain(active.iter().map(|(_, a)| a.id))
            .chain(inits.iter().filter_map(|(_, i)| i.id));
        let known: std::collections::HashSet<String> = ids.clone().map(|i| i.to_string()).collect();
        let mut max = ids.max().unwrap_or(0);
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io("list snapshots", e))? {
            let entry = entry.map_err(|e| Error::io("list snapshots", e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Ok(n) = name.parse::<u64>() {
                max = max.max(n);
            }
            if !known.contains(&name) {
                tracing::info!(dir = %entry.path().display(), "removing snapshot directory without a record");
                detach_mount(&entry.path().join("fs"));
                std::fs::remove_dir_all(entry.path())
                    .map_err(|e| Error::io(format!("remove {}", entry.path().display()), e))?;
            }
        }
        Ok(Snapshotter {
            dir,
            store,
            next: AtomicU64::new(max + 1),
            init_lock: std::sync::Mutex::new(()),
        })
    }

    /// The record of the committed snapshot for `chain`.
    pub fn get(&self, chain: &Digest) -> Result<Option<SnapshotRecord>> {
        Ok(self.store.get(TABLE, chain.as_str())?)
    }

    /// Every committed snapshot.
    pub fn list(&self) -> Result<Vec<(Digest, SnapshotRecord)>> {
        let all: Vec<(String, SnapshotRecord)> = self.store.list(TABLE)?;
        Ok(all
            .into_iter()
            .filter_map(|(k, r)| Digest::parse(&k).ok().map(|d| (d, r)))
            .collect())
    }

    /// The root filesystem directory of snapshot `id`.
    pub fn fs_path(&self, id: u64) -> PathBuf {
        self.dir.join(id.to_string()).join("fs")
    }

    /// The `lowerdir` list for an overlay over `top` and its parents, topmost first.
    pub fn lower_dirs(&self, top: &Digest) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        let mut cur = Some(top.clone());
        while let Some(c) = cur {
            let r = self.get(&c)?.ok_or_else(|| {
                Error::Snapshot(format!("snapshot {c} is missing from the chain of {top}"))
            })?;
            out.push(self.fs_path(r.id));
            cur = r.parent;
        }
        Ok(out)
    }

    /// Creates the writable snapshot `key` over `parent` and returns the mounts that assemble
    /// it. Preparing an existing key returns its mounts again. Its record is made durable by
    /// the next durable write to the store: the caller's record of what uses it.
    pub fn prepare(&self, key: &str, parent: Option<&Digest>) -> Result<Vec<MountSpec>> {
        self.create_active(key, parent, false)?;
        self.mounts(key)
    }

    /// Creates the read-only view `key` of chain `top` (an image volume) and returns the
    /// mount that shows it: an overlay of the chain's layers, read-only. Like a writable
    /// snapshot it keeps the chain from garbage collection until it is removed
    /// ([`Snapshotter::remove_active`]), and its record is made durable the same way.
    pub fn view(&self, key: &str, top: &Digest) -> Result<MountSpec> {
        self.create_active(key, Some(top), true)?;
        let mut m = self.mounts(key)?;
        m.pop()
            .ok_or_else(|| Error::Snapshot(format!("no mount for view {key:?}")))
    }

    fn create_active(&self, key: &str, parent: Option<&Digest>, view: bool) -> Result<()> {
        if key.is_empty() || key.contains('/') {
            return Err(Error::Snapshot(format!("invalid snapshot key {key:?}")));
        }
        if let Some(p) = parent
            && self.get(p)?.is_none()
        {
            return Err(Error::Snapshot(format!(
                "parent snapshot {p} does not exist"
            )));
        }
        if self.store.get::<ActiveRecord>(ACTIVE, key)?.is_none() {
            let id = self.next.fetch_add(1, Ordering::Relaxed);
            let dir = self.dir.join(id.to_string());
            for sub in ["fs", "work"] {
                std::fs::create_dir_all(dir.join(sub))
                    .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
            }
            let init = match parent {
                Some(p) if !view => self.init_layer(p).unwrap_or_else(|e| {
                    // runc creates the mount points in the upper layer instead, as it would
                    // without these layers: slower, never wrong.
                    tracing::warn!(chain = %p, err = %e, "cannot make the mount-point layer");
                    None
                }),
                _ => None,
            };
            let rec = ActiveRecord {
                id,
                parent: parent.cloned(),
                init,
                view,
            };
            // Deferred: the caller's own record of the container or pod, written durably
            // next, carries it to disk. A crash in between leaves a directory without a
            // record, which `open` removes, and no caller record that would refer to it.
            if let Err(e) = self.store.put_deferred(ACTIVE, key, &rec) {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// The mounts of the writable snapshot `key`.
    pub fn mounts(&self, key: &str) -> Result<Vec<MountSpec>> {
        let rec: ActiveRecord = self
            .store
            .get(ACTIVE, key)?
            .ok_or_else(|| Error::Snapshot(format!("no writable snapshot {key:?}")))?;
        let dir = self.dir.join(rec.id.to_string());
        let upper = dir.join("fs");
        Ok(match &rec.parent {
            // The view's own empty `fs` is the bottom layer: without an upper layer overlayfs
            // wants two lower ones, and one-layer images have one.
            Some(p) if rec.view => vec![MountSpec {
                kind: "overlay".into(),
                source: "overlay".into(),
                options: vec![
                    "ro".into(),
                    format!(
                        "lowerdir={}",
                        self.lower_dirs(p)?
                            .into_iter()
                            .chain([upper])
                            .map(|d| d.display().to_string())
                            .collect::<Vec<_>>()
                            .join(":")
                    ),
                ],
            }],
            None => vec![MountSpec {
                kind: "bind".into(),
                source: upper.display().to_string(),
                options: vec!["rbind".into(), "rw".into()],
            }],
            Some(p) => {
                let lowers: Vec<String> = rec
                    .init
                    .map(|i| self.fs_path(i))
                    .into_iter()
                    .chain(self.lower_dirs(p)?)
                    .map(|d| d.display().to_string())
                    .collect();
                vec![MountSpec {
                    kind: "overlay".into(),
                    source: "overlay".into(),
                    options: vec![
                        format!("workdir={}", dir.join("work").display()),
                        format!("upperdir={}", upper.display()),
                        format!("lowerdir={}", lowers.join(":")),
                    ],
                }]
            }
        })
    }

    /// The mount-point layer of `chain`, made on first use.
    fn init_layer(&self, chain: &Digest) -> Result<Option<u64>> {
        let _g = self.init_lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = self.store.get::<InitRecord>(INIT, chain.as_str())? {
            return Ok(r.id);
        }
        let entries = crate::mountpoints::plan(&self.lower_dirs(chain)?)?;
        if entries.is_empty() {
            self.store
                .put(INIT, chain.as_str(), &InitRecord { id: None })?;
            return Ok(None);
        }
        let mut tmp = self.tmp()?;
        crate::mountpoints::build(&tmp.fs(), &entries)?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let dest = self.dir.join(id.to_string());
        std::fs::rename(&tmp.dir, &dest)
            .map_err(|e| Error::io(format!("commit the mount-point layer of {chain}"), e))?;
        tmp.committed = true;
        if let Err(e) = self
            .store
            .put(INIT, chain.as_str(), &InitRecord { id: Some(id) })
        {
            let _ = std::fs::remove_dir_all(&dest);
            return Err(e.into());
        }
        tracing::debug!(%chain, layer = id, ?entries, "made the mount-point layer");
        Ok(Some(id))
    }

    /// The writable snapshot (or view) `key`, if there is one.
    pub fn active_record(&self, key: &str) -> Result<Option<ActiveRecord>> {
        Ok(self.store.get(ACTIVE, key)?)
    }

    /// Every writable snapshot.
    pub fn active(&self) -> Result<Vec<(String, ActiveRecord)>> {
        Ok(self.store.list(ACTIVE)?)
    }

    /// Removes the writable snapshot `key` (unmounted by then); a missing one is not an error.
    pub fn remove_active(&self, key: &str) -> Result<()> {
        let Some(rec) = self.store.get::<ActiveRecord>(ACTIVE, key)? else {
            return Ok(());
        };
        self.store.delete(ACTIVE, key)?;
        let dir = self.dir.join(rec.id.to_string());
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(format!("remove {}", dir.display()), e))
            }
            _ => Ok(()),
        }
    }

    /// Chains that writable snapshots stand on, with all their ancestors (GC roots).
    pub fn active_chains(&self) -> Result<std::collections::HashSet<Digest>> {
        let mut out = std::collections::HashSet::new();
        for (_, a) in self.active()? {
            let mut cur = a.parent;
            while let Some(c) = cur {
                if !out.insert(c.clone()) {
                    break;
                }
                cur = self.get(&c)?.and_then(|r| r.parent);
            }
        }
        Ok(out)
    }

    /// A fresh directory to unpack a layer into.
    pub fn tmp(&self) -> Result<TmpSnapshot> {
        let name: u64 = rand::random();
        let dir = self.dir.join(format!("{TMP_PREFIX}{name:016x}"));
        std::fs::create_dir_all(dir.join("fs"))
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        Ok(TmpSnapshot {
            dir,
            committed: false,
        })
    }

    /// Moves an unpacked layer into place as the snapshot for `chain`.
    pub fn commit(
        &self,
        tmp: TmpSnapshot,
        chain: &Digest,
        parent: Option<&Digest>,
        stats: LayerStats,
    ) -> Result<SnapshotRecord> {
        self.commit_with(tmp, chain, parent, stats, None)
    }

    /// The directory every snapshot is in (`<root>/snapshots`).
    pub fn root(&self) -> &Path {
        &self.dir
    }

    /// The directory of snapshot `id` (its `fs`, and for a lazy layer its TOC and chunks).
    pub fn dir_of(&self, id: u64) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// [`Self::commit`], for a lazily pulled layer when `lazy` is given.
    pub fn commit_with(
        &self,
        mut tmp: TmpSnapshot,
        chain: &Digest,
        parent: Option<&Digest>,
        stats: LayerStats,
        lazy: Option<LazySource>,
    ) -> Result<SnapshotRecord> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let dest = self.dir.join(id.to_string());
        std::fs::rename(&tmp.dir, &dest)
            .map_err(|e| Error::io(format!("commit snapshot {chain}"), e))?;
        tmp.committed = true;
        let rec = SnapshotRecord {
            id,
            parent: parent.cloned(),
            size: stats.bytes,
            inodes: stats.inodes,
            lazy,
        };
        if let Err(e) = self.store.put(TABLE, chain.as_str(), &rec) {
            let _ = std::fs::remove_dir_all(&dest);
            return Err(e.into());
        }
        Ok(rec)
    }

    /// Removes the snapshot for `chain` (record first, so a crash leaves an orphan directory
    /// that the next open removes, never a record without its directory); its directories go
    /// to `trash`.
    pub fn remove(&self, chain: &Digest, trash: &crate::trash::Trash) -> Result<()> {
        if let Some(init) = self.store.get::<InitRecord>(INIT, chain.as_str())? {
            self.store.delete(INIT, chain.as_str())?;
            if let Some(id) = init.id {
                trash.take(&self.dir.join(id.to_string()))?;
            }
        }
        let Some(rec) = self.get(chain)? else {
            return Ok(());
        };
        self.store.delete(TABLE, chain.as_str())?;
        let dir = self.dir.join(rec.id.to_string());
        detach_mount(&dir.join("fs"));
        trash.take(&dir)
    }
}

/// Detaches whatever is mounted at `path` (a lazily pulled layer's FUSE mount, perhaps of a
/// server that is gone); nothing when it is not a mount point.
pub(crate) fn detach_mount(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(p) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: a valid NUL-terminated path. EINVAL (not a mount point) and ENOENT are fine.
    unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_lookup_remove_and_crash_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("meta.redb")).unwrap();
        let snaps = Snapshotter::open(dir.path(), store.clone()).unwrap();
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));

        let t = snaps.tmp().unwrap();
        std::fs::write(t.fs().join("f"), "x").unwrap();
        let ra = snaps
            .commit(
                t,
                &a,
                None,
                LayerStats {
                    bytes: 1,
                    inodes: 1,
                },
            )
            .unwrap();
        let t = snaps.tmp().unwrap();
        let rb = snaps
            .commit(t, &b, Some(&a), LayerStats::default())
            .unwrap();
        assert_eq!(
            snaps.lower_dirs(&b).unwrap(),
            vec![snaps.fs_path(rb.id), snaps.fs_path(ra.id)]
        );
        assert!(snaps.fs_path(ra.id).join("f").exists());

        // An abandoned unpack and a directory without a record, as a crash leaves them.
        let t = snaps.tmp().unwrap();
        std::mem::forget(t);
        std::fs::create_dir_all(dir.path().join("snapshots/999/fs")).unwrap();
        drop(snaps);
        let snaps = Snapshotter::open(dir.path(), store).unwrap();
        let names: std::collections::BTreeSet<String> =
            std::fs::read_dir(dir.path().join("snapshots"))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
        assert_eq!(
            names,
            [ra.id.to_string(), rb.id.to_string()].into_iter().collect()
        );
        // Numbers are never reused, even those of removed directories.
        assert!(snaps.next.load(Ordering::Relaxed) > 999);

        let trash = crate::trash::Trash::open(dir.path()).unwrap();
        snaps.remove(&b, &trash).unwrap();
        snaps.remove(&b, &trash).unwrap();
        assert!(snaps.get(&b).unwrap().is_none());
        assert!(!snaps.fs_path(rb.id).exists());
        assert!(!trash.is_empty());
    }

    #[test]
    fn writable_snapshots_over_a_chain() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("m")).unwrap();
        let snaps = Snapshotter::open(dir.path(), store.clone()).unwrap();
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let ra = snaps
            .commit(snaps.tmp().unwrap(), &a, None, LayerStats::default())
            .unwrap();
        let rb = snaps
            .commit(snaps.tmp().unwrap(), &b, Some(&a), LayerStats::default())
            .unwrap();
        let m = snaps.prepare("ctr1", Some(&b)).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].kind, "overlay");
        // The chain's layers are empty: its mount-point layer is stacked on top of them.
        let init: InitRecord = store.get(INIT, b.as_str()).unwrap().unwrap();
        let init = init.id.expect("an empty image lacks every mount point");
        assert!(snaps.fs_path(init).join("etc/resolv.conf").is_file());
        let lower = format!(
            "lowerdir={}:{}:{}",
            snaps.fs_path(init).display(),
            snaps.fs_path(rb.id).display(),
            snaps.fs_path(ra.id).display()
        );
        assert!(m[0].options.contains(&lower), "{:?}", m[0].options);
        // A second container of the image shares it.
        let m2 = snaps.prepare("ctr2", Some(&b)).unwrap();
        assert!(m2[0].options.contains(&lower), "{:?}", m2[0].options);
        snaps.remove_active("ctr2").unwrap();
        assert_eq!(
            snaps.prepare("ctr1", Some(&b)).unwrap(),
            m,
            "prepare is idempotent"
        );
        assert!(snaps.prepare("bad/key", None).is_err());
        assert!(snaps.prepare("x", Some(&Digest::of(b"nope"))).is_err());
        assert_eq!(
            snaps.active_chains().unwrap(),
            [a.clone(), b.clone()].into_iter().collect()
        );
        // Survives reopen (its directory has a record), the mount-point layer too.
        drop(snaps);
        let snaps = Snapshotter::open(dir.path(), store.clone()).unwrap();
        assert_eq!(snaps.mounts("ctr1").unwrap(), m);
        assert!(snaps.fs_path(init).is_dir());
        snaps.remove_active("ctr1").unwrap();
        snaps.remove_active("ctr1").unwrap();
        assert!(snaps.active_chains().unwrap().is_empty());
        // The chain's removal takes its mount-point layer along.
        snaps
            .remove(&b, &crate::trash::Trash::open(dir.path()).unwrap())
            .unwrap();
        assert!(!snaps.fs_path(init).exists());
        assert!(store.get::<InitRecord>(INIT, b.as_str()).unwrap().is_none());
        assert_eq!(snaps.prepare("plain", None).unwrap()[0].kind, "bind");
    }

    #[test]
    fn dropped_tmp_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let snaps =
            Snapshotter::open(dir.path(), Store::open(&dir.path().join("m")).unwrap()).unwrap();
        let t = snaps.tmp().unwrap();
        let p = t.fs();
        assert!(p.exists());
        drop(t);
        assert!(!p.exists());
    }
}

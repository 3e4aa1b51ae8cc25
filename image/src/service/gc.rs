//! Removal, garbage collection and filesystem usage.

use std::collections::{HashMap, HashSet};
use std::io;

use crate::error::{Error, Result};
use crate::reference::{Digest, Reference};

use super::*;

impl ImageService {
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
            let mut freed = 0;
            // Children before parents is not needed: each snapshot is its own directory.
            for (chain, s) in snapshots.list()? {
                if !chains.contains(&chain) {
                    lazy.stop(&chain);
                    snapshots.remove(&chain, &trash)?;
                    removed.0 += 1;
                    freed += s.size;
                }
            }
            for (d, size) in content.list()? {
                if !blobs.contains(&d) {
                    content.delete(&d, &trash)?;
                    removed.1 += 1;
                    freed += size;
                }
            }
            berth_metrics::IMAGE_GC_RUNS.with(&[]).inc();
            berth_metrics::IMAGE_GC_FREED_BYTES.with(&[]).inc_by(freed);
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
}

//! eStargz layers pulled lazily: mounted from their footer and TOC at pull time, checked and
//! served again after a restart, and their progress for ImageStatus.

use std::io::{self};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::error::{Error, Result};
use crate::hosts;
use crate::lazy::RegistryBlob;
use crate::manifest::Descriptor;
use crate::reference::{Digest, Reference};
use crate::registry::Session;
use crate::snapshot::LazySource;
use crate::unpack::LayerStats;

use super::*;

impl ImageService {
    /// Mounts an eStargz layer from its footer and TOC (two range requests) instead of
    /// downloading it; its chunks come on first read and in the background.
    pub(super) async fn pull_lazily(
        &self,
        (session, r): (&Arc<Session>, &Reference),
        (desc, toc_digest): (&Descriptor, &str),
        chain: &Digest,
        parent: Option<&Digest>,
        cancel: &Arc<AtomicBool>,
    ) -> Result<()> {
        let blob = RegistryBlob {
            session: session.clone(),
            digest: desc.digest.clone(),
            rt: tokio::runtime::Handle::current(),
        };
        let tmp = self.snapshots.tmp()?;
        let (size, want) = (desc.size, toc_digest.to_string());
        let (limits, toc_path) = (self.cfg.lazy.limits, tmp.dir().join(LAZY_TOC));
        let cancel = cancel.clone();
        let (toc, blob) = tokio::task::spawn_blocking(move || {
            berth_lazy::fetch::open_to(&blob, size, &want, &limits, &toc_path, &cancel)
                .map(|t| (t, blob))
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
    pub(super) async fn resume_lazy(&self) {
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
}

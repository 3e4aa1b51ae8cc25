//! The image records and the name → id index over them: what resolves a reference, an id or
//! an id prefix to a local image, and what a pull commits.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::manifest::ImageConfig;
use crate::reference::{Digest, Reference, is_image_id};
use berth_store::{self as store};

use super::*;

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
    /// How the signature policy accepted it (the scope and the key), if there was a policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<String>,
}

impl ImageRecord {
    /// The chain ID of the top layer: the image's root filesystem.
    pub fn top_chain(&self) -> Option<&Digest> {
        self.chain_ids.last()
    }
}

#[derive(Default)]
pub(super) struct Index {
    pub(super) images: HashMap<Digest, ImageRecord>,
    pub(super) names: HashMap<String, Digest>,
}

impl Index {
    pub(super) fn insert(&mut self, r: ImageRecord) {
        for n in r.repo_tags.iter().chain(&r.repo_digests) {
            self.names.insert(n.clone(), r.id.clone());
        }
        self.images.insert(r.id.clone(), r);
    }

    pub(super) fn remove(&mut self, id: &Digest) -> Option<ImageRecord> {
        let r = self.images.remove(id)?;
        for n in r.repo_tags.iter().chain(&r.repo_digests) {
            if self.names.get(n) == Some(id) {
                self.names.remove(n);
            }
        }
        Some(r)
    }
}

impl ImageService {
    /// Adds a freshly pulled image, moving its tag away from any image that had it. Returns
    /// whether an image was deleted on the way (its content is then collected).
    pub(super) async fn commit_record(&self, mut rec: ImageRecord) -> Result<(ImageRecord, bool)> {
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
}

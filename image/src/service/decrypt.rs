//! The keys of a pull's encrypted layers, unwrapped with the node's keys before anything is
//! downloaded.

use std::io::{self};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::error::{Error, Result};
use crate::manifest::Descriptor;
use crate::reference::Reference;
use berth_imgcrypt::{KeyRing, LayerKey};

use super::*;

impl ImageService {
    /// The key of each encrypted layer, unwrapped with the node's keys (`None` for plain
    /// layers). The key directory is read only when there is an encrypted layer.
    pub(super) async fn unwrap_layer_keys(
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
}

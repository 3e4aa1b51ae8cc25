//! Lazily pulled eStargz layers: which layers qualify, their FUSE mounts and background
//! fetches, and the registry as the byte-range source of their blobs.
//!
//! A qualifying layer (gzip, annotated with its TOC digest, from a registry the config names)
//! is not downloaded at pull time: its footer and TOC are read with two range requests, the
//! TOC is checked against the annotation, and the layer's snapshot is a read-only FUSE mount
//! over it whose chunks are fetched on first read and checked against their digests. A
//! background fetch then brings every chunk, in blob order (the files before the prefetch
//! landmark first), onto local disk; from then on the mount serves from there alone.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_lazy::fetch::BlobReader;
use berth_lazy::fuse::Mount;
use berth_lazy::layer::LazyLayer;
use berth_lazy::toc::{Limits, Toc};

use crate::manifest::Descriptor;
use crate::reference::Digest;
use crate::registry::Session;

/// Threads serving one mount's FUSE requests (each blocks while its chunk is fetched).
const FUSE_THREADS: usize = 4;
/// One range request of a lazily pulled layer may take this long.
const RANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// The process that keeps FUSE connections open across restarts, and how to start it.
#[derive(Debug, Clone)]
pub struct HolderConfig {
    /// Its socket.
    pub socket: std::path::PathBuf,
    /// Its command line (`--socket <socket>` is added).
    pub command: Vec<String>,
}

/// Which registries' eStargz layers are pulled lazily.
#[derive(Debug, Clone)]
pub struct LazyConfig {
    /// Registry hosts (`host` or `host:port`, as in image references); `*` means all.
    pub registries: Vec<String>,
    /// Whether every chunk is fetched in the background (else only what is read).
    pub background_fetch: bool,
    /// The connection holder; none: mounts do not survive a restart of this process.
    pub holder: Option<HolderConfig>,
    /// What a layer's TOC may declare.
    pub limits: Limits,
    /// How long a read may wait for its chunk.
    pub read_timeout: Duration,
}

impl Default for LazyConfig {
    fn default() -> Self {
        LazyConfig {
            registries: vec![],
            background_fetch: false,
            holder: None,
            limits: Limits::default(),
            read_timeout: berth_lazy::layer::READ_TIMEOUT,
        }
    }
}

impl LazyConfig {
    /// Whether images from `domain` are pulled lazily.
    pub fn applies(&self, domain: &str) -> bool {
        self.registries.iter().any(|r| r == "*" || r == domain)
    }
}

/// The TOC digest of `desc` when it is an eStargz layer berth can mount lazily.
pub fn toc_digest(desc: &Descriptor) -> Option<&str> {
    let gzip = matches!(
        desc.media_type.as_str(),
        "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    let d = desc
        .annotations
        .get(berth_lazy::TOC_DIGEST_ANNOTATION)?
        .as_str();
    (gzip && d.starts_with("sha256:")).then_some(d)
}

/// A blob's byte ranges from the registry, for FUSE and fetch threads (which block).
pub(crate) struct RegistryBlob {
    pub(crate) session: Arc<Session>,
    pub(crate) digest: Digest,
    pub(crate) rt: tokio::runtime::Handle,
}

impl BlobReader for RegistryBlob {
    fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        self.read_range_within(offset, len, RANGE_TIMEOUT)
    }

    fn read_range_within(&self, offset: u64, len: u64, timeout: Duration) -> io::Result<Vec<u8>> {
        // A host given up on once is tried again: this session lives as long as the layer.
        self.session.retry_all_hosts();
        let read = self.session.blob_range(&self.digest, offset, len);
        let timeout = timeout.min(RANGE_TIMEOUT);
        // The timer is made inside the runtime: this thread is not one of its workers.
        match self
            .rt
            .block_on(async { tokio::time::timeout(timeout, read).await })
        {
            Ok(Ok(b)) => Ok(b.to_vec()),
            Ok(Err(e)) => Err(io::Error::other(e.to_string())),
            Err(_) => Err(io::Error::other(format!("no answer within {timeout:?}"))),
        }
    }
}

/// A layer's file counting the fills that started and died before storing anything.
const FILL_STRIKES: &str = "fill-strikes";
/// Fills that may die so before the layer is quarantined.
const MAX_FILL_STRIKES: u32 = 2;
/// A quarantined layer's file: why it is not served.
pub const QUARANTINED: &str = "quarantined";

fn fill_strikes(path: &Path) -> u32 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Why the lazily pulled layer in snapshot directory `dir` must not be served again after a
/// restart, if it must not: a background fill that died with berth too often.
pub(crate) fn unsafe_to_resume(dir: &Path) -> Option<String> {
    let n = fill_strikes(&dir.join(FILL_STRIKES));
    (n >= MAX_FILL_STRIKES).then(|| {
        format!("its background fetch was started {n} times and berth died before it stored anything each time")
    })
}

/// Marks the layer in `dir` quarantined for `reason` (kept for `berth doctor`).
pub(crate) fn quarantine(dir: &Path, reason: &str) {
    let _ = std::fs::write(dir.join(QUARANTINED), reason);
}

/// The quarantined lazily pulled layers under berth's root: (snapshot directory, reason).
pub fn quarantined(root: &Path) -> Vec<(std::path::PathBuf, String)> {
    let Ok(dirs) = std::fs::read_dir(root.join("snapshots")) else {
        return vec![];
    };
    let mut out: Vec<_> = dirs
        .flatten()
        .filter_map(|d| {
            let reason = std::fs::read_to_string(d.path().join(QUARANTINED)).ok()?;
            Some((d.path(), reason))
        })
        .collect();
    out.sort();
    out
}

struct Mounted {
    layer: Arc<LazyLayer>,
    mount: Option<Mount>,
    stop: Arc<AtomicBool>,
}

/// The lazily pulled layers this process serves, by chain ID.
#[derive(Default)]
pub struct LazyLayers {
    mounted: Mutex<HashMap<Digest, Mounted>>,
    holder: Option<HolderConfig>,
}

impl std::fmt::Debug for LazyLayers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.mounted.lock().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("LazyLayers").field("mounted", &n).finish()
    }
}

impl LazyLayers {
    /// Layers whose connections `holder` keeps across restarts.
    pub fn new(holder: Option<HolderConfig>) -> Self {
        LazyLayers {
            mounted: Mutex::default(),
            holder,
        }
    }

    /// The connections the holder keeps from before (a restart), by chain ID. Blocking.
    pub(crate) fn held(&self) -> HashMap<String, std::os::fd::OwnedFd> {
        let Some(h) = &self.holder else {
            return HashMap::new();
        };
        berth_lazy::holder::get_all(&h.socket).unwrap_or_else(|e| {
            tracing::warn!(err = %e, "FUSE holder: cannot take its connections back");
            HashMap::new()
        })
    }

    /// Tells the holder to let go of connections by their keys. Blocking.
    pub(crate) fn release(&self, keys: &[String]) {
        if let Some(h) = &self.holder {
            for k in keys {
                let _ = berth_lazy::holder::drop_key(&h.socket, k);
            }
        }
    }

    /// Hands a new connection to the holder (started when none runs). Blocking.
    fn hold(&self, chain: &Digest, mount: &Mount) {
        let Some(h) = &self.holder else { return };
        use std::os::fd::AsFd;
        if !berth_lazy::holder::running(&h.socket) {
            let mut cmd = std::process::Command::new(&h.command[0]);
            cmd.args(&h.command[1..])
                .arg("--socket")
                .arg(&h.socket)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            // Its own process group: a signal to berth's group does not reach it.
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            match cmd.spawn() {
                // Not waited for: it outlives this process by design (init reaps it then).
                Ok(child) => drop(child),
                Err(e) => {
                    tracing::warn!(err = %e, "FUSE holder did not start: lazily pulled layers will not survive a restart");
                    return;
                }
            }
            let up = std::time::Instant::now();
            while !berth_lazy::holder::running(&h.socket) && up.elapsed() < Duration::from_secs(2) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if let Err(e) = berth_lazy::holder::put(&h.socket, chain.as_str(), mount.device().as_fd()) {
            tracing::warn!(chain = %chain, err = %e, "FUSE holder refused a connection: this layer will not survive a restart");
        }
    }

    /// Mounts `toc` of layer `name` at `<dir>/fs` (chunks cached in `<dir>/chunks`), or serves
    /// the mount there again when `held` is its connection kept from before a restart, and
    /// starts its background fetch. Blocking.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        &self,
        chain: &Digest,
        dir: &Path,
        name: &str,
        toc: Toc,
        blob: Box<dyn BlobReader>,
        (background_fetch, read_timeout): (bool, Duration),
        held: Option<std::os::fd::OwnedFd>,
    ) -> io::Result<()> {
        let layer = Arc::new(
            LazyLayer::new(name, toc, blob, &dir.join("chunks"))?.with_read_timeout(read_timeout),
        );
        let mount = match held {
            Some(fd) => Mount::adopt(&dir.join("fs"), fd.into(), layer.clone(), FUSE_THREADS),
            None => {
                // The mount of a server that is gone, with nobody keeping it, answers nothing.
                crate::snapshot::detach_mount(&dir.join("fs"));
                let m = Mount::new(&dir.join("fs"), layer.clone(), FUSE_THREADS)?;
                self.hold(chain, &m);
                m
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (layer, stop, name) = (layer.clone(), stop.clone(), name.to_string());
            let strikes = dir.join(FILL_STRIKES);
            std::thread::Builder::new()
                .name("lazy-fill".into())
                .spawn(move || {
                    // Counted before the first range and forgotten after it: a fill that
                    // kills berth before it stores anything is not started a third time.
                    let _ = std::fs::write(&strikes, (fill_strikes(&strikes) + 1).to_string());
                    let mut first = Some(strikes);
                    let mut progressed = || {
                        if let Some(p) = first.take() {
                            let _ = std::fs::remove_file(p);
                        }
                    };
                    let r = if background_fetch {
                        layer.fill(&stop, &mut progressed)
                    } else {
                        layer.prefetch(&stop, &mut progressed)
                    };
                    progressed();
                    match r {
                        Ok(()) if stop.load(Ordering::Relaxed) => {}
                        Ok(()) => {
                            let (total, cached) = layer.progress();
                            tracing::info!(layer = %name, total, cached, "lazily pulled layer: background fetch done");
                        }
                        Err(e) => tracing::warn!(layer = %name, err = %e, "background fetch of a lazily pulled layer stopped; reads fetch what they need"),
                    }
                })?;
        }
        self.mounted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                chain.clone(),
                Mounted {
                    layer,
                    mount: Some(mount),
                    stop,
                },
            );
        Ok(())
    }

    /// Stops serving `chain`: its background fetch stops and its mount goes. Blocking.
    pub(crate) fn stop(&self, chain: &Digest) {
        let m = self
            .mounted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(chain);
        if let Some(h) = &self.holder {
            let _ = berth_lazy::holder::drop_key(&h.socket, chain.as_str());
        }
        if let Some(mut m) = m {
            m.stop.store(true, Ordering::Relaxed);
            if let Some(mount) = m.mount.take()
                && let Err(e) = mount.unmount()
            {
                tracing::warn!(chain = %chain, err = %e, "unmount a lazily pulled layer");
            }
        }
    }

    /// (bytes of file data, bytes on local disk) of a lazily pulled layer this process serves.
    pub fn progress(&self, chain: &Digest) -> Option<(u64, u64)> {
        let m = self.mounted.lock().unwrap_or_else(|p| p.into_inner());
        m.get(chain).map(|m| m.layer.progress())
    }

    /// Counts `bytes` fetched for `chain` before it was mounted (its footer and TOC).
    pub(crate) fn add_fetched(&self, chain: &Digest, bytes: u64) {
        let m = self.mounted.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = m.get(chain) {
            m.layer.add_fetched(bytes);
        }
    }

    /// Compressed bytes fetched from registries for a layer, this process.
    pub fn fetched(&self, chain: &Digest) -> Option<u64> {
        let m = self.mounted.lock().unwrap_or_else(|p| p.into_inner());
        m.get(chain).map(|m| m.layer.fetched())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fill_that_died_twice_before_storing_anything_quarantines_its_layer() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("snapshots/7");
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(unsafe_to_resume(&dir), None);
        // What the fill thread writes as it starts, each time.
        for n in 1..=2 {
            std::fs::write(dir.join(FILL_STRIKES), n.to_string()).unwrap();
        }
        let why = unsafe_to_resume(&dir).expect("two strikes");
        assert!(why.contains("2 times"), "{why}");
        assert!(quarantined(root.path()).is_empty());
        quarantine(&dir, &why);
        assert_eq!(quarantined(root.path()), vec![(dir.clone(), why)]);
        // One strike is a berth that died once: served again.
        std::fs::write(dir.join(FILL_STRIKES), "1").unwrap();
        assert_eq!(unsafe_to_resume(&dir), None);
    }
}

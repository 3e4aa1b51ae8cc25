//! A lazily pulled layer: the verified TOC, the blob's byte ranges, and a directory of
//! verified chunks (named by their digest, so a chunk several files or layers share is
//! fetched once).

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::fetch::{self, BlobReader};
use crate::fuse::Tree;
use crate::toc::{Chunk, Toc};

/// How often a chunk fetch is tried (within the read's time) before the read fails with EIO.
const TRIES: u32 = 3;
/// The largest range the background fetch asks for at once.
pub const FILL_RANGE: u64 = 8 << 20;
/// How long a read may wait for its chunk, by default.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// A chunk whose fetch failed is failed again at once for this long: the kernel retries a
/// failed page read once, and a reader should not wait twice for a registry that hangs.
const FAILED_FOR: Duration = Duration::from_secs(5);
/// Failed chunks remembered at most.
const FAILED_KEPT: usize = 4096;

/// One layer served from its blob's ranges.
pub struct LazyLayer {
    name: String,
    toc: Toc,
    blob: Box<dyn BlobReader>,
    chunks: PathBuf,
    fetched: AtomicU64,
    read_timeout: Duration,
    /// Chunks (by digest) whose last fetch failed, and when.
    failed: Mutex<HashMap<String, Instant>>,
}

impl LazyLayer {
    /// A layer called `name` (its digest, for logs) with its chunk cache in `chunks`.
    pub fn new(name: &str, toc: Toc, blob: Box<dyn BlobReader>, chunks: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(chunks)?;
        Ok(LazyLayer {
            name: name.to_string(),
            toc,
            blob,
            chunks: chunks.to_path_buf(),
            fetched: AtomicU64::new(0),
            read_timeout: READ_TIMEOUT,
            failed: Mutex::new(HashMap::new()),
        })
    }

    /// A read waits at most `timeout` for its chunk (over every try) before it fails with
    /// EIO.
    pub fn with_read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// Counts `bytes` fetched for this layer elsewhere (its footer and TOC, read before it
    /// existed).
    pub fn add_fetched(&self, bytes: u64) {
        self.fetched.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Compressed bytes fetched from the blob so far (chunks, and what [`Self::add_fetched`]
    /// counted).
    pub fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// Uncompressed bytes of every file chunk, and of those cached on local disk now.
    pub fn progress(&self) -> (u64, u64) {
        let mut total = 0;
        let mut cached = 0;
        for n in &self.toc.nodes {
            for c in &n.chunks {
                total += c.size;
                if self.cached(c).exists() {
                    cached += c.size;
                }
            }
        }
        (total, cached)
    }

    /// Fetches every chunk not cached yet, in blob order (so the files before the prefetch
    /// landmark come first), in ranges of up to [`FILL_RANGE`] bytes, until all are here or
    /// `stop` is set. A range that fails is retried; a chunk that fails verification is left
    /// for a read to try again (and fail with EIO).
    /// `progressed` is called after each range is stored.
    pub fn fill(
        &self,
        stop: &std::sync::atomic::AtomicBool,
        progressed: &mut dyn FnMut(),
    ) -> io::Result<()> {
        self.fill_until(stop, u64::MAX, progressed)
    }

    /// Fetches the files before the prefetch landmark (none when the layer has no landmark).
    pub fn prefetch(
        &self,
        stop: &std::sync::atomic::AtomicBool,
        progressed: &mut dyn FnMut(),
    ) -> io::Result<()> {
        self.fill_until(stop, self.toc.prefetch_end, progressed)
    }

    /// [`Self::fill`] for the chunks that start before blob offset `until`.
    fn fill_until(
        &self,
        stop: &std::sync::atomic::AtomicBool,
        until: u64,
        progressed: &mut dyn FnMut(),
    ) -> io::Result<()> {
        let mut all: Vec<(usize, &Chunk)> = self
            .toc
            .nodes
            .iter()
            .enumerate()
            .flat_map(|(i, n)| n.chunks.iter().map(move |c| (i, c)))
            .filter(|(_, c)| c.blob_offset < until)
            .collect();
        all.sort_by_key(|(_, c)| (c.blob_offset, c.inner_offset));
        all.dedup_by_key(|(_, c)| c.digest.clone());
        let mut i = 0;
        while i < all.len() {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            if self.cached(all[i].1).exists() {
                i += 1;
                continue;
            }
            // A run of uncached chunks whose ranges touch, up to FILL_RANGE bytes.
            let start = all[i].1.blob_offset;
            let mut j = i;
            let mut end = all[i].1.blob_end;
            while j + 1 < all.len() {
                let next = all[j + 1].1;
                if next.blob_offset > end
                    || next.blob_end - start > FILL_RANGE
                    || self.cached(next).exists()
                {
                    break;
                }
                end = end.max(next.blob_end);
                j += 1;
            }
            let mut got = None;
            for _ in 0..TRIES {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                match self
                    .blob
                    .read_range_within(start, end - start, self.read_timeout)
                {
                    Ok(b) => {
                        got = Some(b);
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(layer = %self.name, err = %e, "background fetch failed; retrying")
                    }
                }
            }
            let bytes = got.ok_or_else(|| {
                io::Error::other(format!(
                    "layer {}: bytes {start}-{end} could not be fetched",
                    self.name
                ))
            })?;
            self.fetched.fetch_add(end - start, Ordering::Relaxed);
            for &(node, c) in &all[i..=j] {
                let slice = &bytes[(c.blob_offset - start) as usize..(c.blob_end - start) as usize];
                if let Err(e) = self.store(node, c, slice) {
                    tracing::warn!(layer = %self.name, file = %self.toc.path_of(node), err = %e, "background fetch: chunk not stored");
                }
            }
            progressed();
            i = j + 1;
        }
        Ok(())
    }

    /// Inflates chunk `c` of `node` out of its compressed bytes into the cache, verified on
    /// the way (a chunk that fails verification leaves nothing behind).
    fn store(&self, node: usize, c: &Chunk, compressed: &[u8]) -> io::Result<()> {
        let path = self.cached(c);
        let tmp = path.with_extension(format!(
            "tmp{}.{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let r = (|| {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            fetch::decode_chunk(compressed, &self.toc.path_of(node), c, &mut f)
                .map_err(io::Error::other)?;
            f.into_inner().map_err(io::Error::other)?;
            std::fs::rename(&tmp, &path)
        })();
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r
    }

    fn cached(&self, c: &Chunk) -> PathBuf {
        self.chunks.join(c.digest.trim_start_matches("sha256:"))
    }

    /// Whether chunk `c` failed so recently that a read fails at once.
    fn failed_lately(&self, c: &Chunk) -> bool {
        let f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        f.get(&c.digest).is_some_and(|t| t.elapsed() < FAILED_FOR)
    }

    fn note_failure(&self, c: &Chunk) {
        let mut f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if f.len() >= FAILED_KEPT {
            f.retain(|_, t| t.elapsed() < FAILED_FOR);
            if f.len() >= FAILED_KEPT {
                f.clear();
            }
        }
        f.insert(c.digest.clone(), Instant::now());
    }

    /// The chunk's bytes `from..from+len` (relative to the chunk), fetching and verifying the
    /// chunk first when it is not cached yet: within the read timeout, whatever the registry
    /// does.
    fn chunk_range(&self, node: usize, c: &Chunk, from: u64, len: u64) -> io::Result<Vec<u8>> {
        let read_cached = || -> io::Result<Vec<u8>> {
            let f = std::fs::File::open(self.cached(c))?;
            let mut buf = vec![0; len as usize];
            f.read_exact_at(&mut buf, from)?;
            Ok(buf)
        };
        if let Ok(b) = read_cached() {
            return Ok(b);
        }
        let eio = || io::Error::from_raw_os_error(libc::EIO);
        if self.failed_lately(c) {
            return Err(eio());
        }
        let deadline = Instant::now() + self.read_timeout;
        let mut last = None;
        for _ in 0..TRIES {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let got = self
                .blob
                .read_range_within(c.blob_offset, c.blob_end - c.blob_offset, left)
                .and_then(|compressed| {
                    self.fetched
                        .fetch_add(c.blob_end - c.blob_offset, Ordering::Relaxed);
                    self.store(node, c, &compressed)
                })
                .and_then(|()| read_cached());
            match got {
                Ok(b) => return Ok(b),
                Err(e) => last = Some(e),
            }
        }
        self.note_failure(c);
        let e = last.map_or_else(|| "no time left".to_string(), |e| e.to_string());
        tracing::warn!(layer = %self.name, file = %self.toc.path_of(node), offset = c.file_offset, err = %e, "lazy read failed");
        Err(eio())
    }
}

impl Tree for LazyLayer {
    fn toc(&self) -> &Toc {
        &self.toc
    }

    fn read(&self, node: usize, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        let n = &self.toc.nodes[node];
        let end = offset.saturating_add(u64::from(size)).min(n.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        for c in &n.chunks {
            let (c_start, c_end) = (c.file_offset, c.file_offset + c.size);
            if c_end <= offset || c_start >= end {
                continue;
            }
            let from = offset.max(c_start) - c_start;
            let to = end.min(c_end) - c_start;
            out.extend(self.chunk_range(node, c, from, to - from)?);
        }
        Ok(out)
    }
}

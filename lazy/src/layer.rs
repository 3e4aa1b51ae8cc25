//! A lazily pulled layer: the verified TOC, the blob's byte ranges, and a directory of
//! verified chunks (named by their digest, so a chunk several files or layers share is
//! fetched once).

use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::fetch::{self, BlobReader};
use crate::fuse::Tree;
use crate::toc::{Chunk, Toc};

/// How often a chunk fetch is tried before the read fails with EIO.
const TRIES: u32 = 3;
/// The largest range the background fetch asks for at once.
pub const FILL_RANGE: u64 = 8 << 20;

/// One layer served from its blob's ranges.
pub struct LazyLayer {
    name: String,
    toc: Toc,
    blob: Box<dyn BlobReader>,
    chunks: PathBuf,
    paths: Vec<String>,
    fetched: AtomicU64,
}

impl LazyLayer {
    /// A layer called `name` (its digest, for logs) with its chunk cache in `chunks`.
    pub fn new(name: &str, toc: Toc, blob: Box<dyn BlobReader>, chunks: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(chunks)?;
        let paths = node_paths(&toc);
        Ok(LazyLayer {
            name: name.to_string(),
            toc,
            blob,
            chunks: chunks.to_path_buf(),
            paths,
            fetched: AtomicU64::new(0),
        })
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
    pub fn fill(&self, stop: &std::sync::atomic::AtomicBool) -> io::Result<()> {
        self.fill_until(stop, u64::MAX)
    }

    /// Fetches the files before the prefetch landmark (none when the layer has no landmark).
    pub fn prefetch(&self, stop: &std::sync::atomic::AtomicBool) -> io::Result<()> {
        self.fill_until(stop, self.toc.prefetch_end)
    }

    /// [`Self::fill`] for the chunks that start before blob offset `until`.
    fn fill_until(&self, stop: &std::sync::atomic::AtomicBool, until: u64) -> io::Result<()> {
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
                match self.blob.read_range(start, end - start) {
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
                match fetch::decode_chunk(slice, &self.paths[node], c) {
                    Ok(data) => self.store(c, &data),
                    Err(e) => {
                        tracing::warn!(layer = %self.name, file = %self.paths[node], err = %e, "background fetch: chunk failed verification")
                    }
                }
            }
            i = j + 1;
        }
        Ok(())
    }

    fn store(&self, c: &Chunk, data: &[u8]) {
        let path = self.cached(c);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, data)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .is_err()
        {
            let _ = std::fs::remove_file(&tmp);
        }
    }

    fn cached(&self, c: &Chunk) -> PathBuf {
        self.chunks.join(c.digest.trim_start_matches("sha256:"))
    }

    /// The chunk's bytes `from..from+len` (relative to the chunk), fetching and verifying the
    /// chunk first when it is not cached yet.
    fn chunk_range(&self, node: usize, c: &Chunk, from: u64, len: u64) -> io::Result<Vec<u8>> {
        let path = self.cached(c);
        if let Ok(f) = std::fs::File::open(&path) {
            let mut buf = vec![0; len as usize];
            f.read_exact_at(&mut buf, from)?;
            return Ok(buf);
        }
        let mut last = None;
        for _ in 0..TRIES {
            match fetch::read_chunk(&*self.blob, &self.paths[node], c) {
                Ok(data) => {
                    self.fetched
                        .fetch_add(c.blob_end - c.blob_offset, Ordering::Relaxed);
                    self.store(c, &data);
                    return Ok(data[from as usize..(from + len) as usize].to_vec());
                }
                Err(e) => last = Some(e),
            }
        }
        let e = last.map(|e| e.to_string()).unwrap_or_default();
        tracing::warn!(layer = %self.name, file = %self.paths[node], offset = c.file_offset, err = %e, "lazy read failed");
        Err(io::Error::from_raw_os_error(libc::EIO))
    }
}

impl Tree for LazyLayer {
    fn toc(&self) -> &Toc {
        &self.toc
    }

    fn read(&self, node: usize, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        let n = &self.toc.nodes[node];
        let end = (offset + u64::from(size)).min(n.size);
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

/// Every node's path, for messages (a hard-linked node gets one of its names).
fn node_paths(toc: &Toc) -> Vec<String> {
    let mut paths = vec![String::new(); toc.nodes.len()];
    let mut stack = vec![0usize];
    while let Some(d) = stack.pop() {
        for (name, &c) in &toc.nodes[d].children {
            if paths[c].is_empty() && c != 0 {
                paths[c] = if paths[d].is_empty() {
                    name.clone()
                } else {
                    format!("{}/{name}", paths[d])
                };
                if !toc.nodes[c].children.is_empty() {
                    stack.push(c);
                }
            }
        }
    }
    paths
}

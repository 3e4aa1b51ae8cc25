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

    /// Compressed bytes fetched from the blob for chunks so far.
    pub fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
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
                    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
                    if std::fs::write(&tmp, &data)
                        .and_then(|_| std::fs::rename(&tmp, &path))
                        .is_err()
                    {
                        let _ = std::fs::remove_file(&tmp);
                    }
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

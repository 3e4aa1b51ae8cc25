//! Reading a lazily pulled layer: its footer and TOC, and its chunks, from byte ranges of the
//! blob, every chunk checked against its digest before a byte of it is returned.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::toc::{self, Chunk, FOOTER_SIZE, Limits, Toc};
use crate::{Error, Result};

/// Byte ranges of one blob: a registry answering HTTP Range requests, or a local file.
pub trait BlobReader: Send + Sync {
    /// Exactly `len` bytes at `offset`.
    fn read_range(&self, offset: u64, len: u64) -> std::io::Result<Vec<u8>>;

    /// [`BlobReader::read_range`], giving up after `timeout` (a source that cannot hang
    /// ignores it).
    fn read_range_within(
        &self,
        offset: u64,
        len: u64,
        timeout: Duration,
    ) -> std::io::Result<Vec<u8>> {
        let _ = timeout;
        self.read_range(offset, len)
    }
}

impl BlobReader for std::fs::File {
    fn read_range(&self, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0; usize::try_from(len).map_err(std::io::Error::other)?];
        self.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }
}

/// The TOC member of a blob of `blob_size` bytes: its offset and its bytes (two range reads,
/// the footer then the member), within `limits`.
fn toc_member(blob: &dyn BlobReader, blob_size: u64, limits: &Limits) -> Result<(u64, Vec<u8>)> {
    if blob_size < FOOTER_SIZE {
        return Err(Error::Format(format!("a blob of {blob_size} bytes")));
    }
    let tail = blob.read_range(blob_size - FOOTER_SIZE, FOOTER_SIZE)?;
    let (toc_offset, footer) = toc::parse_footer(&tail)?;
    let end = blob_size - footer;
    if toc_offset >= end || end - toc_offset > limits.toc_budget(blob_size) {
        return Err(Error::Format(format!(
            "TOC at {toc_offset} of a {blob_size}-byte blob"
        )));
    }
    Ok((toc_offset, blob.read_range(toc_offset, end - toc_offset)?))
}

/// Reads, verifies and parses the TOC of a blob of `blob_size` bytes whose layer is
/// annotated with `toc_digest`, holding its JSON in memory (tests, small layers).
pub fn open(
    blob: &dyn BlobReader,
    blob_size: u64,
    toc_digest: &str,
    limits: &Limits,
) -> Result<Toc> {
    let (toc_offset, member) = toc_member(blob, blob_size, limits)?;
    let json = toc::read_toc(&member, toc_digest, limits.toc_budget(blob_size))?;
    Toc::parse(&json, toc_offset, blob_size, limits)
}

/// [`open`], keeping the verified TOC JSON at `path` (to serve the layer again without the
/// registry) instead of in memory: it is streamed there, checked against its digest, and
/// parsed from there entry by entry. Nothing is left at `path` on error. Setting `cancel`
/// (the pull's caller went away) stops the inflating and the parsing at their next read or
/// write, which come every few KiB.
pub fn open_to(
    blob: &dyn BlobReader,
    blob_size: u64,
    toc_digest: &str,
    limits: &Limits,
    path: &Path,
    cancel: &AtomicBool,
) -> Result<Toc> {
    let (toc_offset, member) = toc_member(blob, blob_size, limits)?;
    let tmp = path.with_extension("tmp");
    let r = (|| {
        let mut f = Unless {
            io: std::fs::File::create(&tmp)?,
            cancel,
        };
        toc::copy_toc(&member, toc_digest, limits.toc_budget(blob_size), &mut f)?;
        drop(member);
        f.flush()?;
        let json = Unless {
            io: std::fs::File::open(&tmp)?,
            cancel,
        };
        let toc = Toc::parse_reader(json, toc_offset, blob_size, limits)?;
        std::fs::rename(&tmp, path)?;
        Ok(toc)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// A reader or writer that fails once `cancel` is set.
struct Unless<'a, T> {
    io: T,
    cancel: &'a AtomicBool,
}

impl<T> Unless<'_, T> {
    fn check(&self) -> std::io::Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            // Not `Interrupted`: readers retry that.
            return Err(std::io::Error::other("the pull was cancelled"));
        }
        Ok(())
    }
}

impl<T: Read> Read for Unless<'_, T> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.check()?;
        self.io.read(buf)
    }
}

impl<T: Write> Write for Unless<'_, T> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.check()?;
        self.io.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.io.flush()
    }
}

/// The uncompressed bytes of `chunk` of `file` (for messages), verified against its digest.
pub fn read_chunk(blob: &dyn BlobReader, file: &str, chunk: &Chunk) -> Result<Vec<u8>> {
    let compressed = blob.read_range(chunk.blob_offset, chunk.blob_end - chunk.blob_offset)?;
    let mut data = Vec::new();
    decode_chunk(&compressed, file, chunk, &mut data)?;
    Ok(data)
}

/// A chunk out of its compressed range (`chunk.blob_offset..chunk.blob_end`), written to
/// `out` as it inflates (never held whole), and verified at its end: what `out` got is to be
/// trusted only when this returns `Ok`.
pub fn decode_chunk(
    compressed: &[u8],
    file: &str,
    chunk: &Chunk,
    out: &mut dyn Write,
) -> Result<()> {
    let mut gz = flate2::read::MultiGzDecoder::new(compressed);
    std::io::copy(
        &mut (&mut gz).take(chunk.inner_offset),
        &mut std::io::sink(),
    )?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut left = chunk.size;
    let mut taken = (&mut gz).take(chunk.size);
    while left > 0 {
        let n = taken.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    let actual = format!("sha256:{}", hex::encode(hash.finalize()));
    if left != 0 || actual != chunk.digest {
        return Err(Error::ChunkDigest {
            file: file.to_string(),
            offset: chunk.file_offset,
            digest: chunk.digest.clone(),
        });
    }
    Ok(())
}

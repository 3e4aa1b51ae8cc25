//! The readers a layer streams through on its way to the unpacker: one that stops when the
//! pull is abandoned, one that tees the download into the content store, one that hashes;
//! and the unpack that checks the result against the layer's diff ID.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Buf, Bytes};
use sha2::{Digest as _, Sha256};

use crate::content::Ingest;
use crate::error::{Error, Result};
use crate::reference::Digest;
use crate::unpack::{self, LayerStats};
use berth_imgcrypt::{LayerKey, Tampered};

/// A reader that fails once the pull it belongs to is abandoned.
pub(super) struct Cancellable<R> {
    pub(super) inner: R,
    pub(super) cancel: Arc<AtomicBool>,
}

impl<R: Read> Read for Cancellable<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(io::Error::other("pull abandoned: another layer failed"));
        }
        self.inner.read(buf)
    }
}

/// Feeds downloaded chunks to the unpacker while writing them to the content store.
pub(super) struct Tee {
    pub(super) rx: tokio::sync::mpsc::Receiver<std::result::Result<Bytes, String>>,
    pub(super) cur: Bytes,
    pub(super) ingest: Ingest,
    pub(super) limit: u64,
    pub(super) layer: Digest,
    /// The download failed (its error went to the reader).
    pub(super) broken: bool,
}

impl Tee {
    /// After a failed unpack: whether the bytes were damaged on the way rather than the
    /// layer being bad. The rest of the download (bounded by the declared size) is read and
    /// the blob checked against its digest; a mismatch is the error to report. Nothing to
    /// say when the pull was cancelled or the download itself broke.
    pub(super) fn damaged(&mut self, cancel: &AtomicBool) -> Option<Error> {
        if self.broken || cancel.load(Ordering::Relaxed) {
            return None;
        }
        io::copy(self, &mut io::sink()).ok()?;
        self.ingest.verify(&self.layer, Some(self.limit)).err()
    }
}

impl Read for Tee {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Err(e)) => {
                    self.broken = true;
                    return Err(io::Error::other(e));
                }
                Some(Ok(b)) => {
                    self.ingest.write_all(&b)?;
                    if self.ingest.written() > self.limit {
                        return Err(io::Error::other(format!(
                            "layer {} is larger than the {} bytes its manifest declares",
                            self.layer, self.limit
                        )));
                    }
                    self.cur = b;
                }
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur.advance(n);
        Ok(n)
    }
}

pub(super) struct HashingReader<R> {
    pub(super) inner: R,
    pub(super) hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Decrypts (with `key`, for an encrypted layer), decompresses (gzip, zstd or none, told by
/// the magic bytes), applies, and checks the uncompressed stream against `diff_id`. An
/// encrypted layer's HMAC and plain digest are checked at the end of its blob, before
/// anything can be committed; their failure is the error to report, whatever the unpacker
/// made of the bytes.
pub(super) fn unpack_verified<R: Read>(
    reader: R,
    dest: &Path,
    layer: &Digest,
    diff_id: &Digest,
    key: Option<&LayerKey>,
) -> Result<LayerStats> {
    let Some(key) = key else {
        return unpack_plain(reader, dest, layer, diff_id);
    };
    let mut plain = key.decrypt(reader);
    let unpacked = unpack_plain(&mut plain, dest, layer, diff_id);
    match plain.finish() {
        Ok(()) => unpacked,
        Err(e) => match e.get_ref().and_then(|i| i.downcast_ref::<Tampered>()) {
            Some(t) => Err(Error::Tampered {
                layer: layer.to_string(),
                reason: t.to_string(),
            }),
            None => unpacked.and(Err(Error::io(format!("read layer {layer}"), e))),
        },
    }
}

pub(super) fn unpack_plain<R: Read>(
    reader: R,
    dest: &Path,
    layer: &Digest,
    diff_id: &Digest,
) -> Result<LayerStats> {
    let mut buffered = BufReader::with_capacity(256 << 10, reader);
    let head = buffered
        .fill_buf()
        .map_err(|e| Error::io(format!("read layer {layer}"), e))?;
    let decompressed: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(
            zstd::stream::read::Decoder::with_buffer(buffered)
                .map_err(|e| Error::io(format!("layer {layer}: zstd"), e))?,
        )
    } else {
        Box::new(buffered)
    };
    let mut hashing = HashingReader {
        inner: decompressed,
        hasher: Sha256::new(),
    };
    let stats = unpack::apply_layer(&mut hashing, dest, layer.as_str())?;
    io::copy(&mut hashing, &mut io::sink())
        .map_err(|e| Error::io(format!("read layer {layer}"), e))?;
    let actual = Digest::from_sha256(hashing.hasher.finalize().into());
    if &actual != diff_id {
        return Err(Error::DigestMismatch {
            what: format!("uncompressed layer {layer}"),
            expected: diff_id.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(stats)
}

//! Reading a lazily pulled layer: its footer and TOC, and its chunks, from byte ranges of the
//! blob, every chunk checked against its digest before a byte of it is returned.

use std::io::Read;

use sha2::{Digest as _, Sha256};

use crate::toc::{self, Chunk, FOOTER_SIZE, MAX_TOC, Toc};
use crate::{Error, Result};

/// Byte ranges of one blob: a registry answering HTTP Range requests, or a local file.
pub trait BlobReader: Send + Sync {
    /// Exactly `len` bytes at `offset`.
    fn read_range(&self, offset: u64, len: u64) -> std::io::Result<Vec<u8>>;
}

impl BlobReader for std::fs::File {
    fn read_range(&self, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0; len as usize];
        self.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }
}

/// Reads and verifies the TOC of a blob of `blob_size` bytes whose layer is annotated with
/// `toc_digest`: two range reads (the footer, then the TOC member).
pub fn open(blob: &dyn BlobReader, blob_size: u64, toc_digest: &str) -> Result<Toc> {
    open_json(blob, blob_size, toc_digest).map(|(toc, _)| toc)
}

/// [`open`], also returning the verified TOC JSON (to keep beside the layer, so that it can
/// be served again without the registry).
pub fn open_json(
    blob: &dyn BlobReader,
    blob_size: u64,
    toc_digest: &str,
) -> Result<(Toc, Vec<u8>)> {
    if blob_size < FOOTER_SIZE {
        return Err(Error::Format(format!("a blob of {blob_size} bytes")));
    }
    let tail = blob.read_range(blob_size - FOOTER_SIZE, FOOTER_SIZE)?;
    let (toc_offset, footer) = toc::parse_footer(&tail)?;
    let end = blob_size - footer;
    if toc_offset >= end || end - toc_offset > MAX_TOC {
        return Err(Error::Format(format!(
            "TOC at {toc_offset} of a {blob_size}-byte blob"
        )));
    }
    let member = blob.read_range(toc_offset, end - toc_offset)?;
    let json = toc::read_toc(&member, toc_digest)?;
    Ok((Toc::parse(&json, toc_offset)?, json))
}

/// The uncompressed bytes of `chunk` of `file` (for messages), verified against its digest.
pub fn read_chunk(blob: &dyn BlobReader, file: &str, chunk: &Chunk) -> Result<Vec<u8>> {
    let compressed = blob.read_range(chunk.blob_offset, chunk.blob_end - chunk.blob_offset)?;
    decode_chunk(&compressed, file, chunk)
}

/// A chunk out of its compressed range (`chunk.blob_offset..chunk.blob_end`), verified.
pub fn decode_chunk(compressed: &[u8], file: &str, chunk: &Chunk) -> Result<Vec<u8>> {
    let mut gz = flate2::read::MultiGzDecoder::new(compressed);
    std::io::copy(
        &mut (&mut gz).take(chunk.inner_offset),
        &mut std::io::sink(),
    )?;
    let mut data = Vec::with_capacity(chunk.size as usize);
    (&mut gz).take(chunk.size).read_to_end(&mut data)?;
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
    if data.len() as u64 != chunk.size || actual != chunk.digest {
        return Err(Error::ChunkDigest {
            file: file.to_string(),
            offset: chunk.file_offset,
            digest: chunk.digest.clone(),
        });
    }
    Ok(data)
}

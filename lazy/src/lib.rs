//! Lazy pulling of eStargz layers, for berth.
//!
//! An eStargz blob is a gzip stream made of many members: every regular file's content (cut
//! into chunks for large files) starts a member of its own, so that any chunk can be
//! decompressed from its own offset. After the files comes a member holding the table of
//! contents (`stargz.index.json`: every entry, with each chunk's offset and digest), and last
//! a 51-byte footer member whose gzip extra field gives the TOC's offset. The whole blob is
//! still a valid gzip'd tar, so a runtime that knows nothing of it pulls it the normal way.
//!
//! This crate reads the footer and the TOC out of a few ranges of the blob, verifies the TOC
//! against the digest the manifest annotates the layer with, and serves each chunk on demand,
//! checking it against its digest.
//!
//! ```text
//!  toc.rs (+ toc/json.rs, toc/build.rs)  the footer, the TOC streamed within its bounds
//!  fetch.rs   reading the TOC and chunks out of byte ranges
//!  layer.rs   a layer served from its ranges and its chunk cache
//!  fuse.rs (+ fuse/ops.rs)  the FUSE server      holder.rs  keeping connections across restarts
//! ```
#![warn(missing_docs)]

pub mod fetch;
pub mod fuse;
pub mod holder;
pub mod layer;
pub mod toc;

pub use toc::{Chunk, Node, NodeKind, Toc};

/// The layer annotation holding the digest of the uncompressed TOC JSON.
pub const TOC_DIGEST_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";
/// The layer annotation holding the uncompressed size of the layer.
pub const UNCOMPRESSED_SIZE_ANNOTATION: &str = "io.containers.estargz.uncompressed-size";

/// Why an eStargz layer cannot be served lazily (the caller then pulls it the normal way), or
/// why a chunk could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The footer, the TOC or its digest is not what eStargz has.
    #[error("not a usable eStargz layer: {0}")]
    Format(String),
    /// A chunk does not match its digest.
    #[error("chunk at {offset} of {file:?} does not match its digest {digest}")]
    ChunkDigest {
        /// The file the chunk belongs to.
        file: String,
        /// The chunk's offset in the file.
        offset: u64,
        /// The digest it should have.
        digest: String,
    },
    /// Reading the blob failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests;

//! The footer, the table of contents and the filesystem tree it describes.
//!
//! A TOC comes from the registry and is hostile until proven otherwise: it is read as a
//! stream (never held whole), entry by entry, and every size it declares is checked against
//! a bound before anything is allocated for it. The bounds ([`Limits`]) scale with the blob:
//! a blob of `n` bytes may describe a tree of at most [`PER_BLOB_BYTE`]` × n` bytes of
//! memory (and as much TOC JSON), each chunk may claim at most what its compressed bytes can
//! inflate to, and nothing may exceed the operator's absolute limits.

mod build;
mod json;

use std::collections::BTreeMap;
use std::io::{Read, Write};

use sha2::{Digest as _, Sha256};

use crate::{Error, Result};

/// Bytes of an eStargz footer.
pub const FOOTER_SIZE: u64 = 51;
/// Bytes of a legacy stargz footer.
const LEGACY_FOOTER_SIZE: u64 = 47;
/// The TOC's name in its tar member.
const TOC_NAME: &str = "stargz.index.json";
/// The xattr overlayfs reads to treat a lower directory as opaque.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// A blob of `n` bytes may describe at most this many bytes per blob byte, of TOC JSON and of
/// tree memory each. Real layers need a few (a file costs at least ~100 bytes of blob and
/// ~400 bytes of tree).
pub const PER_BLOB_BYTE: u64 = 32;
/// The least budget any blob gets, however small.
const FLOOR: u64 = 1 << 20;
/// DEFLATE's largest expansion: no gzip member inflates to more than this many bytes per
/// compressed byte.
pub const DEFLATE_RATIO: u64 = 1032;
/// The operator's absolute bounds on a lazily pulled layer (berth's `[lazy_pull]` config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Uncompressed TOC JSON, bytes.
    pub max_toc: u64,
    /// Memory the layer's tree may take, bytes.
    pub max_tree: u64,
    /// One chunk's uncompressed size, bytes.
    pub max_chunk: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_toc: 64 << 20,
            max_tree: 256 << 20,
            max_chunk: 32 << 20,
        }
    }
}

impl Limits {
    /// The TOC JSON a blob of `blob_size` bytes may carry.
    pub fn toc_budget(&self, blob_size: u64) -> u64 {
        scaled(blob_size).min(self.max_toc)
    }

    /// The tree memory a blob of `blob_size` bytes may describe.
    pub fn tree_budget(&self, blob_size: u64) -> u64 {
        scaled(blob_size).min(self.max_tree)
    }

    /// The largest compressed range one chunk may span (what a fetch of it reads at once).
    pub fn max_chunk_range(&self) -> u64 {
        self.max_chunk * 2 + (1 << 20)
    }
}

fn scaled(blob_size: u64) -> u64 {
    blob_size.saturating_mul(PER_BLOB_BYTE).max(FLOOR)
}

pub(crate) fn format(msg: impl Into<String>) -> Error {
    Error::Format(msg.into())
}

/// The offset of the TOC's gzip member, from the last [`FOOTER_SIZE`] bytes of the blob, and
/// the size of the footer found (eStargz's 51 bytes or legacy stargz's 47).
pub fn parse_footer(tail: &[u8]) -> Result<(u64, u64)> {
    let hex_offset = |s: &[u8]| -> Option<u64> {
        let text = std::str::from_utf8(s.get(..16)?).ok()?;
        (s.get(16..22)? == b"STARGZ")
            .then(|| u64::from_str_radix(text, 16).ok())
            .flatten()
    };
    let gzip_with_extra = |f: &[u8]| f.len() > 12 && f[..3] == [0x1f, 0x8b, 8] && f[3] & 4 != 0;
    // XLEN 26: one subfield 'S' 'G' of 22 bytes.
    if tail.len() as u64 == FOOTER_SIZE
        && gzip_with_extra(tail)
        && tail[10..12] == [26, 0]
        && tail[12..14] == *b"SG"
        && tail[14..16] == [22, 0]
        && let Some(off) = hex_offset(&tail[16..])
    {
        return Ok((off, FOOTER_SIZE));
    }
    let legacy = &tail[tail.len().saturating_sub(LEGACY_FOOTER_SIZE as usize)..];
    if legacy.len() as u64 == LEGACY_FOOTER_SIZE
        && gzip_with_extra(legacy)
        && legacy[10..12] == [22, 0]
        && let Some(off) = hex_offset(&legacy[12..])
    {
        return Ok((off, LEGACY_FOOTER_SIZE));
    }
    Err(format("no eStargz footer at the end of the blob"))
}

/// Copies the TOC JSON out of its gzip'd tar member (the bytes between the TOC offset and the
/// footer) into `out`, at most `budget` bytes of it, and checks it against `digest`
/// (`sha256:<hex>`, from the layer's annotation). What `out` holds is to be trusted only when
/// this returns `Ok`.
pub fn copy_toc(member: &[u8], digest: &str, budget: u64, out: &mut dyn Write) -> Result<u64> {
    let gz = flate2::read::GzDecoder::new(member);
    // The tar header and padding around the JSON.
    let mut archive = tar::Archive::new(gz.take(budget.saturating_add(4096)));
    let mut entries = archive
        .entries()
        .map_err(|e| format(format!("TOC member: {e}")))?;
    let mut entry = entries
        .next()
        .ok_or_else(|| format("TOC member holds no tar entry"))?
        .map_err(|e| format(format!("TOC member: {e}")))?;
    let name = entry.path_bytes().into_owned();
    if name != TOC_NAME.as_bytes() {
        return Err(format(format!(
            "TOC member holds {:?}, not {TOC_NAME}",
            String::from_utf8_lossy(&name)
        )));
    }
    if entry.size() > budget {
        return Err(format(format!(
            "TOC of {} bytes is over this layer's limit of {budget} bytes",
            entry.size()
        )));
    }
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut copied = 0u64;
    loop {
        let n = entry
            .read(&mut buf)
            .map_err(|e| format(format!("TOC member: {e}")))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        copied += n as u64;
    }
    let actual = format!("sha256:{}", hex::encode(hash.finalize()));
    if actual != digest {
        return Err(format(format!(
            "TOC digest is {actual}, the layer's annotation says {digest}"
        )));
    }
    Ok(copied)
}

/// [`copy_toc`] into memory.
pub fn read_toc(member: &[u8], digest: &str, budget: u64) -> Result<Vec<u8>> {
    let mut json = Vec::new();
    copy_toc(member, digest, budget, &mut json)?;
    Ok(json)
}

/// What a node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link to the target.
    Symlink(String),
    /// A character device (0/0: an overlayfs whiteout).
    Char(u32, u32),
    /// A block device.
    Block(u32, u32),
    /// A named pipe.
    Fifo,
}

/// A piece of a regular file and where its compressed bytes are in the blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Where the chunk starts in the file.
    pub file_offset: u64,
    /// Its uncompressed length.
    pub size: u64,
    /// The gzip member it starts in.
    pub blob_offset: u64,
    /// The next member boundary after it: the range to fetch is `blob_offset..blob_end`.
    pub blob_end: u64,
    /// Where in that member's uncompressed bytes the chunk starts.
    pub inner_offset: u64,
    /// `sha256:<hex>` of its uncompressed bytes.
    pub digest: String,
}

/// One inode of the layer.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its index's parent (the root is its own parent).
    pub parent: usize,
    /// What it is.
    pub kind: NodeKind,
    /// Permission bits (with setuid, setgid, sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Bytes (regular files).
    pub size: u64,
    /// Extended attributes.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Directory entries: name to node index.
    pub children: BTreeMap<String, usize>,
    /// Names pointing at it.
    pub nlink: u32,
    /// A regular file's chunks, in file order.
    pub chunks: Vec<Chunk>,
}

impl Node {
    fn new(parent: usize, kind: NodeKind, mode: u32) -> Node {
        Node {
            parent,
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: 0,
            size: 0,
            xattrs: BTreeMap::new(),
            children: BTreeMap::new(),
            nlink: 1,
            chunks: vec![],
        }
    }
}

/// The layer's tree, as its TOC describes it, with whiteouts in overlayfs's form.
#[derive(Debug, Clone)]
pub struct Toc {
    /// Every node; 0 is the root directory. Indexes are stable for a given TOC.
    pub nodes: Vec<Node>,
    /// Blob bytes before the prefetch landmark (0: no prefetch asked for).
    pub prefetch_end: u64,
    /// Where the TOC member starts: the end of the file data.
    pub toc_offset: u64,
}

impl Toc {
    /// Builds the tree from the verified TOC JSON of a blob of `blob_size` bytes whose TOC
    /// member starts at `toc_offset`, within `limits`.
    pub fn parse(json: &[u8], toc_offset: u64, blob_size: u64, limits: &Limits) -> Result<Toc> {
        Self::parse_reader(json, toc_offset, blob_size, limits)
    }

    /// [`Toc::parse`] from a reader (a TOC kept on disk), entry by entry: the JSON is never
    /// held whole.
    pub fn parse_reader(
        json: impl Read,
        toc_offset: u64,
        blob_size: u64,
        limits: &Limits,
    ) -> Result<Toc> {
        build::build(json, toc_offset, blob_size, limits)
    }

    /// The node at `path` (relative, `/`-separated), if any.
    pub fn lookup(&self, path: &str) -> Option<usize> {
        let mut cur = 0;
        for p in path.split('/').filter(|p| !p.is_empty()) {
            cur = *self.nodes[cur].children.get(p)?;
        }
        Some(cur)
    }

    /// One path of `node` (a hard-linked node has several), for messages.
    pub fn path_of(&self, node: usize) -> String {
        let mut names = Vec::new();
        let mut cur = node;
        // At most as many steps as there are nodes: a TOC cannot make a cycle, but a bound
        // costs nothing.
        for _ in 0..self.nodes.len() {
            if cur == 0 {
                break;
            }
            let parent = self.nodes[cur].parent;
            match self.nodes[parent].children.iter().find(|(_, c)| **c == cur) {
                Some((name, _)) => names.push(name.as_str()),
                None => names.push("?"),
            }
            cur = parent;
        }
        names.reverse();
        names.join("/")
    }

    /// Bytes of file data in the blob (everything before the TOC).
    pub fn data_size(&self) -> u64 {
        self.toc_offset
    }
}

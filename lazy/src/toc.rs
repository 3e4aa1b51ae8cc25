//! The footer, the table of contents and the filesystem tree it describes.
//!
//! A TOC comes from the registry and is hostile until proven otherwise: it is read as a
//! stream (never held whole), entry by entry, and every size it declares is checked against
//! a bound before anything is allocated for it. The bounds ([`Limits`]) scale with the blob:
//! a blob of `n` bytes may describe a tree of at most [`PER_BLOB_BYTE`]` × n` bytes of
//! memory (and as much TOC JSON), each chunk may claim at most what its compressed bytes can
//! inflate to, and nothing may exceed the operator's absolute limits.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use base64::Engine as _;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use sha2::{Digest as _, Sha256};

use crate::{Error, Result};

/// Bytes of an eStargz footer.
pub const FOOTER_SIZE: u64 = 51;
/// Bytes of a legacy stargz footer.
const LEGACY_FOOTER_SIZE: u64 = 47;
/// The TOC's name in its tar member.
const TOC_NAME: &str = "stargz.index.json";
const PREFETCH_LANDMARK: &str = ".prefetch.landmark";
const NO_PREFETCH_LANDMARK: &str = ".no.prefetch.landmark";
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
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
/// A path in the layer, at most (the kernel's `PATH_MAX`).
const MAX_PATH: usize = 4096;
/// A name in a directory, at most (`NAME_MAX`).
const MAX_NAME: usize = 255;
/// An extended attribute's value, at most (the kernel's `XATTR_SIZE_MAX`).
const MAX_XATTR: usize = 64 << 10;
/// Extended attributes of one entry, at most.
const MAX_XATTRS: usize = 128;
/// What one node costs beyond its own struct (its name in the parent's map, allocator slack).
const NODE_OVERHEAD: u64 = 96;

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

/// At most the first `n` bytes of `s` (fewer to end on a character), for messages.
fn clip(s: &str, n: usize) -> &str {
    let mut end = n.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn format(msg: impl Into<String>) -> Error {
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

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct JsonEntry {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    size: u64,
    #[serde(rename = "modtime")]
    mod_time: String,
    link_name: String,
    mode: i64,
    uid: u32,
    gid: u32,
    offset: u64,
    inner_offset: u64,
    dev_major: u32,
    dev_minor: u32,
    #[serde(deserialize_with = "bounded_xattrs")]
    xattrs: BTreeMap<String, String>,
    digest: String,
    chunk_offset: u64,
    chunk_size: u64,
    chunk_digest: String,
}

/// An entry's `xattrs`, refused past [`MAX_XATTRS`] of them (a map of a million empty pairs
/// is a few bytes of JSON each and a hundred of memory).
fn bounded_xattrs<'de, D: de::Deserializer<'de>>(
    d: D,
) -> std::result::Result<BTreeMap<String, String>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = BTreeMap<String, String>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of extended attributes")
        }

        fn visit_map<A: MapAccess<'de>>(
            self,
            mut map: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = map.next_entry::<String, String>()? {
                if out.len() >= MAX_XATTRS {
                    return Err(de::Error::custom(format_args!(
                        "more than {MAX_XATTRS} extended attributes on one entry"
                    )));
                }
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    d.deserialize_map(V)
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

/// Cleans a tar name into path components; refuses `..`, empty names and names longer than
/// the kernel would take.
fn components(name: &str) -> Result<Vec<&str>> {
    if name.len() > MAX_PATH {
        return Err(format(format!(
            "TOC entry name of {} bytes (the limit is {MAX_PATH})",
            name.len()
        )));
    }
    let parts: Vec<&str> = name
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(format(format!(
            "TOC entry {name:?} climbs out of the layer"
        )));
    }
    if let Some(p) = parts.iter().find(|p| p.len() > MAX_NAME) {
        return Err(format(format!(
            "TOC entry {:?}…: a name of {} bytes (the limit is {MAX_NAME})",
            clip(name, 64),
            p.len()
        )));
    }
    Ok(parts)
}

fn parse_mtime(s: &str) -> i64 {
    // RFC 3339 in UTC, as the estargz writer emits ("2006-01-02T15:04:05Z"); anything else is 0.
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return 0;
    }
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|v| v.parse::<i64>().ok());
    let (Some(y), Some(mo), Some(d), Some(h), Some(mi), Some(sec)) = (
        num(0..4),
        num(5..7),
        num(8..10),
        num(11..13),
        num(14..16),
        num(17..19),
    ) else {
        return 0;
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (mo + if mo > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + h * 3600 + mi * 60 + sec
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
        let budget = limits.toc_budget(blob_size);
        let mut b = Builder::new(toc_offset, blob_size, limits);
        let mut read = std::io::BufReader::with_capacity(64 << 10, json).take(budget + 1);
        let mut de = serde_json::Deserializer::from_reader(&mut read);
        let version = TopSeed { b: &mut b }
            .deserialize(&mut de)
            .and_then(|v| de.end().map(|()| v));
        drop(de);
        // A limit hit inside serde surfaces as its own error, with berth's words.
        if let Some(e) = b.failed.take() {
            return Err(e);
        }
        let version = version.map_err(|e| {
            if read.limit() == 0 {
                format(format!(
                    "TOC JSON is over this layer's limit of {budget} bytes"
                ))
            } else {
                format(format!("TOC JSON: {e}"))
            }
        })?;
        if version != Some(1) {
            return Err(format(format!(
                "TOC version {} (berth reads 1)",
                version.map_or("missing".into(), |v| v.to_string())
            )));
        }
        b.finish()
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

/// The top-level object: `version` and `entries`, in any order, other keys ignored.
struct TopSeed<'a, 'l> {
    b: &'a mut Builder<'l>,
}

impl<'de> DeserializeSeed<'de> for TopSeed<'_, '_> {
    type Value = Option<i64>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_, '_> {
    type Value = Option<i64>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a TOC object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut version = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "version" => version = Some(map.next_value::<i64>()?),
                "entries" => map.next_value_seed(EntriesSeed { b: self.b })?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(version)
    }
}

/// The `entries` array, handed to the builder one entry at a time.
struct EntriesSeed<'a, 'l> {
    b: &'a mut Builder<'l>,
}

impl<'de> DeserializeSeed<'de> for EntriesSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of TOC entries")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(e) = seq.next_element::<JsonEntry>()? {
            if let Err(err) = self.b.add(&e) {
                self.b.failed = Some(err);
                return Err(de::Error::custom("refused"));
            }
        }
        Ok(())
    }
}

/// Builds the tree entry by entry, counting what it costs.
struct Builder<'l> {
    t: Toc,
    limits: &'l Limits,
    blob_size: u64,
    /// What the tree takes so far, and what it may take.
    used: u64,
    budget: u64,
    /// Every data entry's offset: the member boundaries.
    bounds: Vec<u64>,
    last_file: Option<usize>,
    /// Uncompressed bytes the chunks claim, in all.
    declared: u64,
    failed: Option<Error>,
}

impl<'l> Builder<'l> {
    fn new(toc_offset: u64, blob_size: u64, limits: &'l Limits) -> Self {
        let mut root = Node::new(0, NodeKind::Dir, 0o755);
        root.nlink = 2;
        Builder {
            t: Toc {
                nodes: vec![root],
                prefetch_end: 0,
                toc_offset,
            },
            limits,
            blob_size,
            used: 0,
            budget: limits.tree_budget(blob_size),
            bounds: vec![toc_offset],
            last_file: None,
            declared: 0,
            failed: None,
        }
    }

    fn spend(&mut self, bytes: u64) -> Result<()> {
        self.used += bytes;
        if self.used > self.budget {
            return Err(format(format!(
                "the TOC describes a tree of more than {} bytes, this layer's limit ({} bytes of blob; at most {PER_BLOB_BYTE} bytes of tree per byte of blob, and lazy_pull.max_tree_memory)",
                self.budget, self.blob_size
            )));
        }
        Ok(())
    }

    fn add(&mut self, e: &JsonEntry) -> Result<()> {
        // What the entry itself holds while it lives in the tree.
        let attrs: u64 = e
            .xattrs
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64 + 64)
            .sum();
        self.spend(attrs)?;
        if e.kind == "chunk" {
            let file = self
                .last_file
                .ok_or_else(|| format("a chunk before any file"))?;
            return self.add_chunk(file, e);
        }
        self.last_file = None;
        let parts = components(&e.name)?;
        let Some((base, dirs)) = parts.split_last() else {
            // The root itself: take its attributes.
            if e.kind == "dir" {
                apply_attrs(&mut self.t.nodes[0], e)?;
            }
            return Ok(());
        };
        let parent = self.dir_for(dirs)?;
        if *base == PREFETCH_LANDMARK && dirs.is_empty() {
            self.t.prefetch_end = e.offset;
        }
        if *base == NO_PREFETCH_LANDMARK && dirs.is_empty() {
            self.t.prefetch_end = 0;
        }
        if *base == OPAQUE_WHITEOUT {
            self.t.nodes[parent]
                .xattrs
                .insert(OPAQUE_XATTR.into(), b"y".to_vec());
            return Ok(());
        }
        if let Some(hidden) = base.strip_prefix(WHITEOUT_PREFIX) {
            let mut n = Node::new(parent, NodeKind::Char(0, 0), 0);
            apply_attrs(&mut n, e)?;
            n.mode = 0;
            self.insert(parent, hidden, n)?;
            return Ok(());
        }
        if e.kind == "hardlink" {
            let target = components(&e.link_name)?;
            let idx = self.walk(&target).ok_or_else(|| {
                format(format!("hard link {:?} to a name not seen before", e.name))
            })?;
            if self.t.nodes[idx].kind == NodeKind::Dir {
                return Err(format(format!("hard link {:?} to a directory", e.name)));
            }
            self.spend(NODE_OVERHEAD + base.len() as u64)?;
            self.t.nodes[idx].nlink = self.t.nodes[idx].nlink.saturating_add(1);
            self.t.nodes[parent].children.insert(base.to_string(), idx);
            return Ok(());
        }
        let kind = match e.kind.as_str() {
            "dir" => NodeKind::Dir,
            "reg" => NodeKind::File,
            "symlink" => {
                if e.link_name.len() > MAX_PATH {
                    return Err(format(format!(
                        "symbolic link {:?} to a target of {} bytes",
                        e.name,
                        e.link_name.len()
                    )));
                }
                NodeKind::Symlink(e.link_name.clone())
            }
            "char" => NodeKind::Char(e.dev_major, e.dev_minor),
            "block" => NodeKind::Block(e.dev_major, e.dev_minor),
            "fifo" => NodeKind::Fifo,
            other => {
                return Err(format(format!("TOC entry type {:?}", clip(other, 32))));
            }
        };
        if kind == NodeKind::Dir
            && let Some(&idx) = self.t.nodes[parent].children.get(*base)
            && self.t.nodes[idx].kind == NodeKind::Dir
        {
            // A directory named again (its parent was implied first): attributes.
            return apply_attrs(&mut self.t.nodes[idx], e);
        }
        let mut n = Node::new(parent, kind, 0);
        apply_attrs(&mut n, e)?;
        if n.kind == NodeKind::Dir {
            n.nlink = 2;
        }
        if let NodeKind::Symlink(t) = &n.kind {
            self.spend(t.len() as u64)?;
        }
        let idx = self.insert(parent, base, n)?;
        if e.kind == "reg" {
            self.t.nodes[idx].size = e.size;
            if e.size > 0 {
                self.add_chunk(idx, e)?;
            }
            self.last_file = Some(idx);
        }
        Ok(())
    }

    fn add_chunk(&mut self, file: usize, e: &JsonEntry) -> Result<()> {
        let n = &self.t.nodes[file];
        let expected = n.chunks.last().map_or(0, |c| c.file_offset + c.size);
        if e.chunk_offset != expected {
            return Err(format(format!(
                "chunk at {} of a file, expected {expected}",
                e.chunk_offset
            )));
        }
        let size = if e.chunk_size == 0 {
            n.size.saturating_sub(e.chunk_offset)
        } else {
            e.chunk_size
        };
        if size == 0 || e.chunk_offset.saturating_add(size) > n.size {
            return Err(format(format!(
                "chunk of {size} bytes at {} overruns its file",
                e.chunk_offset
            )));
        }
        if size > self.limits.max_chunk {
            return Err(format(format!(
                "a chunk of {size} bytes (lazy_pull.max_chunk_size is {})",
                self.limits.max_chunk
            )));
        }
        if e.offset >= self.t.toc_offset {
            return Err(format(format!(
                "data at {} lies past the TOC at {}",
                e.offset, self.t.toc_offset
            )));
        }
        self.declared = self.declared.saturating_add(size);
        if self.declared > self.t.toc_offset.saturating_mul(DEFLATE_RATIO) {
            return Err(format(format!(
                "files of more than {} bytes in all, from {} bytes of compressed data",
                self.declared, self.t.toc_offset
            )));
        }
        let digest = if e.chunk_digest.is_empty() {
            // Older writers left single-chunk files with the file digest only.
            e.digest.clone()
        } else {
            e.chunk_digest.clone()
        };
        if !digest.starts_with("sha256:") || digest.len() != 71 {
            return Err(format(format!(
                "chunk digest {:?} is not sha256",
                clip(&digest, 80)
            )));
        }
        self.spend((std::mem::size_of::<Chunk>() + digest.len() + 8) as u64)?;
        self.bounds.push(e.offset);
        self.t.nodes[file].chunks.push(Chunk {
            file_offset: e.chunk_offset,
            size,
            blob_offset: e.offset,
            // Known once every boundary is: see `finish`.
            blob_end: 0,
            inner_offset: e.inner_offset,
            digest,
        });
        Ok(())
    }

    /// The node at `parts`, following directories only.
    fn walk(&self, parts: &[&str]) -> Option<usize> {
        let mut cur = 0;
        for p in parts {
            cur = *self.t.nodes[cur].children.get(*p)?;
        }
        Some(cur)
    }

    /// The directory at `dirs`, created (0755, implied) where the TOC did not name it first.
    fn dir_for(&mut self, dirs: &[&str]) -> Result<usize> {
        let mut cur = 0;
        for (i, d) in dirs.iter().enumerate() {
            cur = match self.t.nodes[cur].children.get(*d) {
                Some(&idx) if self.t.nodes[idx].kind == NodeKind::Dir => idx,
                Some(_) => {
                    return Err(format(format!(
                        "{:?} is used as a directory and is not one",
                        dirs[..=i].join("/")
                    )));
                }
                None => {
                    let n = Node::new(cur, NodeKind::Dir, 0o755);
                    self.insert(cur, d, Node { nlink: 2, ..n })?
                }
            };
        }
        Ok(cur)
    }

    /// Adds `node` as `name` in `parent` (replacing what had that name, as a later tar entry
    /// does); returns its index.
    fn insert(&mut self, parent: usize, name: &str, node: Node) -> Result<usize> {
        self.spend(std::mem::size_of::<Node>() as u64 + NODE_OVERHEAD + name.len() as u64)?;
        let idx = self.t.nodes.len();
        if node.kind == NodeKind::Dir {
            let p = &mut self.t.nodes[parent];
            p.nlink = p.nlink.saturating_add(1);
        }
        self.t.nodes.push(node);
        self.t.nodes[parent].children.insert(name.to_string(), idx);
        Ok(idx)
    }

    /// Every chunk's compressed range, checked; the chunks cover their files.
    fn finish(mut self) -> Result<Toc> {
        let mut bounds = std::mem::take(&mut self.bounds);
        bounds.sort_unstable();
        bounds.dedup();
        let max_range = self.limits.max_chunk_range();
        for (i, n) in self.t.nodes.iter_mut().enumerate() {
            let mut covered = 0u64;
            for c in &mut n.chunks {
                let next = bounds.partition_point(|b| *b <= c.blob_offset);
                // The TOC's own offset is a bound and every chunk lies before it.
                c.blob_end = bounds[next];
                let range = c.blob_end - c.blob_offset;
                if range > max_range {
                    return Err(format(format!(
                        "a chunk of node {i} spans {range} compressed bytes (at most {max_range})"
                    )));
                }
                if c.inner_offset.saturating_add(c.size) > range.saturating_mul(DEFLATE_RATIO) {
                    return Err(format(format!(
                        "a chunk of node {i} claims {} bytes at {} from {range} compressed bytes",
                        c.size, c.inner_offset
                    )));
                }
                covered += c.size;
            }
            if n.kind == NodeKind::File && covered != n.size {
                return Err(format(format!(
                    "node {i}: chunks cover {covered} of {} bytes",
                    n.size
                )));
            }
        }
        Ok(self.t)
    }
}

fn apply_attrs(n: &mut Node, e: &JsonEntry) -> Result<()> {
    n.mode = (e.mode & 0o7777) as u32;
    n.uid = e.uid;
    n.gid = e.gid;
    n.mtime = parse_mtime(&e.mod_time);
    for (k, v) in &e.xattrs {
        if k.len() > MAX_NAME || v.len() > MAX_XATTR * 4 / 3 + 4 {
            return Err(format(format!(
                "xattr of {:?}: a name of {} or a value of {} bytes",
                e.name,
                k.len(),
                v.len()
            )));
        }
        let value = base64::engine::general_purpose::STANDARD
            .decode(v)
            .map_err(|err| format(format!("xattr {k:?} of {:?}: {err}", e.name)))?;
        n.xattrs.insert(k.clone(), value);
    }
    Ok(())
}

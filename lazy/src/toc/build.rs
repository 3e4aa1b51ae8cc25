//! Building a [`Toc`] from its JSON as a stream, entry by entry, every declared size checked
//! against the [`Limits`] before anything is allocated for it.

use std::io::Read;

use base64::Engine as _;
use serde::de::DeserializeSeed;

use super::json::{JsonEntry, Sink, TopSeed};
use super::{
    Chunk, DEFLATE_RATIO, Limits, Node, NodeKind, OPAQUE_XATTR, PER_BLOB_BYTE, Toc, format,
};
use crate::{Error, Result};

const PREFETCH_LANDMARK: &str = ".prefetch.landmark";
const NO_PREFETCH_LANDMARK: &str = ".no.prefetch.landmark";
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
/// A path in the layer, at most (the kernel's `PATH_MAX`).
const MAX_PATH: usize = 4096;
/// A name in a directory, at most (`NAME_MAX`).
const MAX_NAME: usize = 255;
/// An extended attribute's value, at most (the kernel's `XATTR_SIZE_MAX`).
const MAX_XATTR: usize = 64 << 10;
/// What one node costs beyond its own struct (its name in the parent's map, allocator slack).
const NODE_OVERHEAD: u64 = 96;

/// The tree of the TOC JSON `json`, of a blob of `blob_size` bytes whose TOC member starts at
/// `toc_offset`, within `limits`.
pub(super) fn build(
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

/// At most the first `n` bytes of `s` (fewer to end on a character), for messages.
fn clip(s: &str, n: usize) -> &str {
    let mut end = n.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
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

impl Sink for Builder<'_> {
    fn add(&mut self, e: &JsonEntry) -> Result<()> {
        Builder::add(self, e)
    }

    fn refuse(&mut self, e: Error) {
        self.failed = Some(e);
    }
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

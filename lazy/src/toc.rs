//! The footer, the table of contents and the filesystem tree it describes.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::{Error, Result};

/// Bytes of an eStargz footer.
pub const FOOTER_SIZE: u64 = 51;
/// Bytes of a legacy stargz footer.
const LEGACY_FOOTER_SIZE: u64 = 47;
/// The TOC's name in its tar member.
const TOC_NAME: &str = "stargz.index.json";
/// A TOC larger than this (uncompressed) is not served lazily.
pub const MAX_TOC: u64 = 64 << 20;
/// Entries in one TOC, at most.
const MAX_ENTRIES: usize = 1 << 20;
const PREFETCH_LANDMARK: &str = ".prefetch.landmark";
const NO_PREFETCH_LANDMARK: &str = ".no.prefetch.landmark";
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
/// The xattr overlayfs reads to treat a lower directory as opaque.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

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

/// Reads the TOC JSON out of its gzip'd tar member (the bytes between the TOC offset and the
/// footer) and checks it against `digest` (`sha256:<hex>`, from the layer's annotation).
pub fn read_toc(member: &[u8], digest: &str) -> Result<Vec<u8>> {
    let gz = flate2::read::GzDecoder::new(member);
    let mut archive = tar::Archive::new(gz.take(MAX_TOC + 4096));
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
    if entry.size() > MAX_TOC {
        return Err(format(format!(
            "TOC of {} bytes is too large",
            entry.size()
        )));
    }
    let mut json = Vec::with_capacity(entry.size() as usize);
    entry
        .read_to_end(&mut json)
        .map_err(|e| format(format!("TOC member: {e}")))?;
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(&json)));
    if actual != digest {
        return Err(format(format!(
            "TOC digest is {actual}, the layer's annotation says {digest}"
        )));
    }
    Ok(json)
}

#[derive(Deserialize)]
struct JsonToc {
    version: i64,
    entries: Vec<JsonEntry>,
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
    xattrs: BTreeMap<String, String>,
    digest: String,
    chunk_offset: u64,
    chunk_size: u64,
    chunk_digest: String,
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

/// Cleans a tar name into path components; refuses `..` and empty names.
fn components(name: &str) -> Result<Vec<&str>> {
    let parts: Vec<&str> = name
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(format(format!(
            "TOC entry {name:?} climbs out of the layer"
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
    /// Builds the tree from the verified TOC JSON of a blob whose TOC member starts at
    /// `toc_offset`.
    pub fn parse(json: &[u8], toc_offset: u64) -> Result<Toc> {
        let toc: JsonToc =
            serde_json::from_slice(json).map_err(|e| format(format!("TOC JSON: {e}")))?;
        if toc.version != 1 {
            return Err(format(format!(
                "TOC version {} (berth reads 1)",
                toc.version
            )));
        }
        if toc.entries.len() > MAX_ENTRIES {
            return Err(format(format!("{} TOC entries", toc.entries.len())));
        }
        // Member boundaries: every data entry's offset, and the TOC's.
        let mut bounds: Vec<u64> = toc
            .entries
            .iter()
            .filter(|e| (e.kind == "reg" && e.size > 0) || e.kind == "chunk")
            .map(|e| e.offset)
            .chain(std::iter::once(toc_offset))
            .collect();
        bounds.sort_unstable();
        bounds.dedup();
        let next_bound = |off: u64| -> Result<u64> {
            let i = bounds.partition_point(|b| *b <= off);
            bounds
                .get(i)
                .copied()
                .ok_or_else(|| format(format!("data at {off} lies past the TOC")))
        };

        let mut t = Toc {
            nodes: vec![Node::new(0, NodeKind::Dir, 0o755)],
            prefetch_end: 0,
            toc_offset,
        };
        t.nodes[0].nlink = 2;
        let mut by_path: HashMap<String, usize> = HashMap::new();
        by_path.insert(String::new(), 0);
        let mut last_file: Option<usize> = None;
        for e in &toc.entries {
            if e.kind == "chunk" {
                let file = last_file.ok_or_else(|| format("a chunk before any file"))?;
                t.add_chunk(file, e, next_bound(e.offset)?)?;
                continue;
            }
            last_file = None;
            let parts = components(&e.name)?;
            let Some((base, dirs)) = parts.split_last() else {
                // The root itself: take its attributes.
                if e.kind == "dir" {
                    apply_attrs(&mut t.nodes[0], e)?;
                }
                continue;
            };
            let parent = t.dir_for(&mut by_path, dirs)?;
            if *base == PREFETCH_LANDMARK && dirs.is_empty() {
                t.prefetch_end = e.offset;
            }
            if *base == NO_PREFETCH_LANDMARK && dirs.is_empty() {
                t.prefetch_end = 0;
            }
            if *base == OPAQUE_WHITEOUT {
                t.nodes[parent]
                    .xattrs
                    .insert(OPAQUE_XATTR.into(), b"y".to_vec());
                continue;
            }
            if let Some(hidden) = base.strip_prefix(WHITEOUT_PREFIX) {
                let mut n = Node::new(parent, NodeKind::Char(0, 0), 0);
                apply_attrs(&mut n, e)?;
                n.mode = 0;
                t.insert(&mut by_path, parent, dirs, hidden, n);
                continue;
            }
            if e.kind == "hardlink" {
                let target = components(&e.link_name)?.join("/");
                let &idx = by_path.get(&target).ok_or_else(|| {
                    format(format!("hard link {:?} to a name not seen before", e.name))
                })?;
                if t.nodes[idx].kind == NodeKind::Dir {
                    return Err(format(format!("hard link {:?} to a directory", e.name)));
                }
                t.nodes[idx].nlink += 1;
                t.link(&mut by_path, parent, dirs, base, idx);
                continue;
            }
            let kind = match e.kind.as_str() {
                "dir" => NodeKind::Dir,
                "reg" => NodeKind::File,
                "symlink" => NodeKind::Symlink(e.link_name.clone()),
                "char" => NodeKind::Char(e.dev_major, e.dev_minor),
                "block" => NodeKind::Block(e.dev_major, e.dev_minor),
                "fifo" => NodeKind::Fifo,
                other => return Err(format(format!("TOC entry type {other:?}"))),
            };
            let path = [dirs, &[*base]].concat().join("/");
            if kind == NodeKind::Dir
                && let Some(&idx) = by_path.get(&path)
                && t.nodes[idx].kind == NodeKind::Dir
            {
                // A directory named again (its parent was implied first): attributes.
                apply_attrs(&mut t.nodes[idx], e)?;
                continue;
            }
            let mut n = Node::new(parent, kind, 0);
            apply_attrs(&mut n, e)?;
            if n.kind == NodeKind::Dir {
                n.nlink = 2;
            }
            let idx = t.insert(&mut by_path, parent, dirs, base, n);
            if e.kind == "reg" {
                t.nodes[idx].size = e.size;
                if e.size > 0 {
                    t.add_chunk(idx, e, next_bound(e.offset)?)?;
                }
                last_file = Some(idx);
            }
        }
        for (i, n) in t.nodes.iter().enumerate() {
            let covered: u64 = n.chunks.iter().map(|c| c.size).sum();
            if n.kind == NodeKind::File && covered != n.size {
                return Err(format(format!(
                    "node {i}: chunks cover {covered} of {} bytes",
                    n.size
                )));
            }
        }
        Ok(t)
    }

    fn add_chunk(&mut self, file: usize, e: &JsonEntry, blob_end: u64) -> Result<()> {
        let n = &mut self.nodes[file];
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
        if size == 0 || e.chunk_offset + size > n.size {
            return Err(format(format!(
                "chunk of {size} bytes at {} overruns its file",
                e.chunk_offset
            )));
        }
        let digest = if e.chunk_digest.is_empty() {
            // Older writers left single-chunk files with the file digest only.
            e.digest.clone()
        } else {
            e.chunk_digest.clone()
        };
        if !digest.starts_with("sha256:") {
            return Err(format(format!("chunk digest {digest:?} is not sha256")));
        }
        n.chunks.push(Chunk {
            file_offset: e.chunk_offset,
            size,
            blob_offset: e.offset,
            blob_end,
            inner_offset: e.inner_offset,
            digest,
        });
        Ok(())
    }

    /// The directory at `dirs`, created (0755, implied) where the TOC did not name it first.
    fn dir_for(&mut self, by_path: &mut HashMap<String, usize>, dirs: &[&str]) -> Result<usize> {
        let mut cur = 0;
        for i in 0..dirs.len() {
            let path = dirs[..=i].join("/");
            cur = match by_path.get(&path) {
                Some(&idx) if self.nodes[idx].kind == NodeKind::Dir => idx,
                Some(_) => {
                    return Err(format(format!(
                        "{path:?} is used as a directory and is not one"
                    )));
                }
                None => {
                    let n = Node::new(cur, NodeKind::Dir, 0o755);
                    self.insert(by_path, cur, &dirs[..i], dirs[i], Node { nlink: 2, ..n })
                }
            };
        }
        Ok(cur)
    }

    /// Adds `node` as `name` in `parent` (replacing what had that name, as a later tar entry
    /// does); returns its index.
    fn insert(
        &mut self,
        by_path: &mut HashMap<String, usize>,
        parent: usize,
        dirs: &[&str],
        name: &str,
        node: Node,
    ) -> usize {
        let idx = self.nodes.len();
        if node.kind == NodeKind::Dir {
            self.nodes[parent].nlink += 1;
        }
        self.nodes.push(node);
        self.link(by_path, parent, dirs, name, idx);
        idx
    }

    fn link(
        &mut self,
        by_path: &mut HashMap<String, usize>,
        parent: usize,
        dirs: &[&str],
        name: &str,
        idx: usize,
    ) {
        self.nodes[parent].children.insert(name.to_string(), idx);
        let path = [dirs, &[name]].concat().join("/");
        by_path.insert(path, idx);
    }

    /// The node at `path` (relative, `/`-separated), if any.
    pub fn lookup(&self, path: &str) -> Option<usize> {
        let mut cur = 0;
        for p in path.split('/').filter(|p| !p.is_empty()) {
            cur = *self.nodes[cur].children.get(p)?;
        }
        Some(cur)
    }

    /// Bytes of file data in the blob (everything before the TOC).
    pub fn data_size(&self) -> u64 {
        self.toc_offset
    }
}

fn apply_attrs(n: &mut Node, e: &JsonEntry) -> Result<()> {
    n.mode = (e.mode & 0o7777) as u32;
    n.uid = e.uid;
    n.gid = e.gid;
    n.mtime = parse_mtime(&e.mod_time);
    for (k, v) in &e.xattrs {
        let value = base64::engine::general_purpose::STANDARD
            .decode(v)
            .map_err(|err| format(format!("xattr {k:?} of {:?}: {err}", e.name)))?;
        n.xattrs.insert(k.clone(), value);
    }
    Ok(())
}

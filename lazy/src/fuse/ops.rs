//! Answering the kernel's requests: a read-only tree's lookups, attributes, reads,
//! directory listings and extended attributes; anything that would write is `EROFS`.

use super::{MAX_WRITE, MINOR, TTL_SECS, Tree};
use crate::toc::{Node, NodeKind, Toc};

pub(super) const FUSE_LOOKUP: u32 = 1;
pub(super) const FUSE_FORGET: u32 = 2;
pub(super) const FUSE_GETATTR: u32 = 3;
pub(super) const FUSE_READLINK: u32 = 5;
pub(super) const FUSE_OPEN: u32 = 14;
pub(super) const FUSE_READ: u32 = 15;
pub(super) const FUSE_STATFS: u32 = 17;
pub(super) const FUSE_RELEASE: u32 = 18;
pub(super) const FUSE_GETXATTR: u32 = 22;
pub(super) const FUSE_LISTXATTR: u32 = 23;
pub(super) const FUSE_FLUSH: u32 = 25;
pub(super) const FUSE_INIT: u32 = 26;
pub(super) const FUSE_OPENDIR: u32 = 27;
pub(super) const FUSE_READDIR: u32 = 28;
pub(super) const FUSE_RELEASEDIR: u32 = 29;
pub(super) const FUSE_ACCESS: u32 = 34;
pub(super) const FUSE_INTERRUPT: u32 = 36;
pub(super) const FUSE_DESTROY: u32 = 38;
pub(super) const FUSE_BATCH_FORGET: u32 = 42;
/// Opcodes that would change the tree.
pub(super) const WRITES: &[u32] = &[4, 6, 8, 9, 10, 11, 12, 13, 16, 21, 24, 35, 43, 45, 47, 51];

pub(super) const FUSE_ASYNC_READ: u32 = 1 << 0;
pub(super) const FUSE_PARALLEL_DIROPS: u32 = 1 << 18;
pub(super) const FUSE_CACHE_SYMLINKS: u32 = 1 << 23;
/// The kernel's INIT carries `flags2`, the upper 32 bits of the flags (protocol 7.36).
pub(super) const FUSE_INIT_EXT: u32 = 1 << 30;
/// `FUSE_ALLOW_IDMAP` (bit 40, so bit 8 of `flags2`; Linux 6.12, protocol 7.40): the
/// filesystem may be mounted idmapped, which pods in user namespaces need for lazily pulled
/// layers. The kernel allows it only with `default_permissions`, which every mount has.
pub(super) const FUSE_ALLOW_IDMAP_FLAGS2: u32 = 1 << 8;
pub(super) const FOPEN_KEEP_CACHE: u32 = 1 << 1;

pub(super) struct Request<'a> {
    pub(super) opcode: u32,
    pub(super) unique: u64,
    pub(super) nodeid: u64,
    pub(super) body: &'a [u8],
}

pub(super) fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_ne_bytes(s.try_into().unwrap_or_default()))
}

pub(super) fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .map_or(0, |s| u64::from_ne_bytes(s.try_into().unwrap_or_default()))
}

/// The NUL-terminated name at the start of `b`.
fn name(b: &[u8]) -> Option<&str> {
    let end = b.iter().position(|c| *c == 0)?;
    std::str::from_utf8(&b[..end]).ok()
}

type Reply = Option<Result<Vec<u8>, i32>>;

pub(super) fn handle(tree: &dyn Tree, req: &Request) -> Reply {
    let toc = tree.toc();
    let node = |id: u64| -> Result<(usize, &Node), i32> {
        let i = id.checked_sub(1).ok_or(libc::ENOENT)? as usize;
        toc.nodes.get(i).map(|n| (i, n)).ok_or(libc::ENOENT)
    };
    let r = match req.opcode {
        FUSE_INIT => Ok(init(req.body)),
        FUSE_FORGET | FUSE_BATCH_FORGET | FUSE_INTERRUPT => return None,
        FUSE_DESTROY | FUSE_FLUSH | FUSE_RELEASE | FUSE_RELEASEDIR | FUSE_ACCESS => Ok(vec![]),
        FUSE_LOOKUP => node(req.nodeid).and_then(|(_, dir)| {
            let child = name(req.body)
                .and_then(|n| dir.children.get(n))
                .ok_or(libc::ENOENT)?;
            Ok(entry_out(*child, &toc.nodes[*child]))
        }),
        FUSE_GETATTR => node(req.nodeid).map(|(i, n)| {
            let mut out = Vec::with_capacity(104);
            out.extend_from_slice(&TTL_SECS.to_ne_bytes());
            out.extend_from_slice(&0u32.to_ne_bytes());
            out.extend_from_slice(&0u32.to_ne_bytes());
            attr(&mut out, i, n);
            out
        }),
        FUSE_READLINK => node(req.nodeid).and_then(|(_, n)| match &n.kind {
            NodeKind::Symlink(t) => Ok(t.as_bytes().to_vec()),
            _ => Err(libc::EINVAL),
        }),
        FUSE_OPEN => node(req.nodeid).and_then(|(_, n)| match n.kind {
            NodeKind::File => Ok(open_out(FOPEN_KEEP_CACHE)),
            NodeKind::Dir => Err(libc::EISDIR),
            _ => Err(libc::EACCES),
        }),
        FUSE_OPENDIR => node(req.nodeid).and_then(|(_, n)| match n.kind {
            NodeKind::Dir => Ok(open_out(FOPEN_KEEP_CACHE)),
            _ => Err(libc::ENOTDIR),
        }),
        FUSE_READ => node(req.nodeid).and_then(|(i, n)| {
            if n.kind != NodeKind::File {
                return Err(libc::EISDIR);
            }
            let (offset, size) = (u64_at(req.body, 8), u32_at(req.body, 16));
            tree.read(i, offset, size.min(MAX_WRITE))
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
        }),
        FUSE_READDIR => node(req.nodeid).and_then(|(i, n)| {
            if n.kind != NodeKind::Dir {
                return Err(libc::ENOTDIR);
            }
            Ok(readdir(
                toc,
                i,
                n,
                u64_at(req.body, 8),
                u32_at(req.body, 16),
            ))
        }),
        FUSE_GETXATTR => node(req.nodeid).and_then(|(_, n)| {
            let size = u32_at(req.body, 0) as usize;
            let value = name(req.body.get(8..).unwrap_or_default())
                .and_then(|k| n.xattrs.get(k))
                .ok_or(libc::ENODATA)?;
            sized(value.clone(), size)
        }),
        FUSE_LISTXATTR => node(req.nodeid).and_then(|(_, n)| {
            let size = u32_at(req.body, 0) as usize;
            let mut names = Vec::new();
            for k in n.xattrs.keys() {
                names.extend_from_slice(k.as_bytes());
                names.push(0);
            }
            sized(names, size)
        }),
        FUSE_STATFS => Ok(statfs(toc)),
        op if WRITES.contains(&op) => Err(libc::EROFS),
        _ => Err(libc::ENOSYS),
    };
    Some(r)
}

/// A value for GETXATTR/LISTXATTR: its size when asked with size 0, else the value if it fits.
fn sized(value: Vec<u8>, size: usize) -> Result<Vec<u8>, i32> {
    if size == 0 {
        let mut out = (value.len() as u32).to_ne_bytes().to_vec();
        out.extend_from_slice(&0u32.to_ne_bytes());
        Ok(out)
    } else if value.len() > size {
        Err(libc::ERANGE)
    } else {
        Ok(value)
    }
}

fn init(body: &[u8]) -> Vec<u8> {
    let (kernel_minor, readahead, flags) = (u32_at(body, 4), u32_at(body, 8), u32_at(body, 12));
    let want = FUSE_ASYNC_READ | FUSE_PARALLEL_DIROPS | FUSE_CACHE_SYMLINKS;
    let kernel_flags2 = if flags & FUSE_INIT_EXT != 0 {
        u32_at(body, 16)
    } else {
        0
    };
    let flags2 = kernel_flags2 & FUSE_ALLOW_IDMAP_FLAGS2;
    let ext = if flags2 != 0 { FUSE_INIT_EXT } else { 0 };
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&7u32.to_ne_bytes());
    out.extend_from_slice(&kernel_minor.min(MINOR).to_ne_bytes());
    out.extend_from_slice(&readahead.min(MAX_WRITE).to_ne_bytes());
    out.extend_from_slice(&((flags & want) | ext).to_ne_bytes());
    out.extend_from_slice(&16u16.to_ne_bytes()); // max_background
    out.extend_from_slice(&12u16.to_ne_bytes()); // congestion_threshold
    out.extend_from_slice(&MAX_WRITE.to_ne_bytes());
    out.extend_from_slice(&1u32.to_ne_bytes()); // time_gran
    out.extend_from_slice(&0u16.to_ne_bytes()); // max_pages
    out.extend_from_slice(&0u16.to_ne_bytes()); // map_alignment
    out.extend_from_slice(&flags2.to_ne_bytes());
    out.extend_from_slice(&[0u8; 28]); // max_stack_depth, unused
    out
}

fn open_out(flags: u32) -> Vec<u8> {
    let mut out = 0u64.to_ne_bytes().to_vec();
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out
}

fn file_type(kind: &NodeKind) -> (u32, u32) {
    // (S_IF* bits, DT_* type)
    match kind {
        NodeKind::Dir => (0o040000, 4),
        NodeKind::File => (0o100000, 8),
        NodeKind::Symlink(_) => (0o120000, 10),
        NodeKind::Char(..) => (0o020000, 2),
        NodeKind::Block(..) => (0o060000, 6),
        NodeKind::Fifo => (0o010000, 1),
    }
}

fn attr(out: &mut Vec<u8>, index: usize, n: &Node) {
    let size = match &n.kind {
        NodeKind::File => n.size,
        NodeKind::Symlink(t) => t.len() as u64,
        NodeKind::Dir => 4096,
        _ => 0,
    };
    let rdev = match n.kind {
        NodeKind::Char(ma, mi) | NodeKind::Block(ma, mi) => {
            ((ma & 0xfff) << 8) | (mi & 0xff) | ((mi & !0xff) << 12)
        }
        _ => 0,
    };
    let mtime = n.mtime.max(0) as u64;
    for v in [
        index as u64 + 1,
        size,
        size.div_ceil(512),
        mtime,
        mtime,
        mtime,
    ] {
        out.extend_from_slice(&v.to_ne_bytes());
    }
    let mode = file_type(&n.kind).0 | (n.mode & 0o7777);
    for v in [0u32, 0, 0, mode, n.nlink, n.uid, n.gid, rdev, 4096, 0] {
        out.extend_from_slice(&v.to_ne_bytes());
    }
}

fn entry_out(index: usize, n: &Node) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&(index as u64 + 1).to_ne_bytes()); // nodeid
    out.extend_from_slice(&0u64.to_ne_bytes()); // generation
    out.extend_from_slice(&TTL_SECS.to_ne_bytes()); // entry_valid
    out.extend_from_slice(&TTL_SECS.to_ne_bytes()); // attr_valid
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    attr(&mut out, index, n);
    out
}

fn readdir(toc: &Toc, index: usize, dir: &Node, offset: u64, size: u32) -> Vec<u8> {
    let entries = [(".", index), ("..", dir.parent)]
        .into_iter()
        .chain(dir.children.iter().map(|(k, v)| (k.as_str(), *v)));
    let mut out = Vec::new();
    for (i, (name, child)) in entries.enumerate().skip(offset as usize) {
        let len = (24 + name.len()).next_multiple_of(8);
        if out.len() + len > size as usize {
            break;
        }
        out.extend_from_slice(&(child as u64 + 1).to_ne_bytes());
        out.extend_from_slice(&(i as u64 + 1).to_ne_bytes());
        out.extend_from_slice(&(name.len() as u32).to_ne_bytes());
        out.extend_from_slice(&file_type(&toc.nodes[child].kind).1.to_ne_bytes());
        out.extend_from_slice(name.as_bytes());
        out.resize(out.len() + len - 24 - name.len(), 0);
    }
    out
}

fn statfs(toc: &Toc) -> Vec<u8> {
    let bytes: u64 = toc.nodes.iter().map(|n| n.size).sum();
    let mut out = Vec::with_capacity(80);
    for v in [bytes.div_ceil(4096), 0, 0, toc.nodes.len() as u64, 0] {
        out.extend_from_slice(&v.to_ne_bytes());
    }
    for v in [4096u32, 255, 4096, 0] {
        out.extend_from_slice(&v.to_ne_bytes());
    }
    out.extend_from_slice(&[0u8; 24]);
    out
}

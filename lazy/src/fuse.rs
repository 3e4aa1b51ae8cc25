//! A read-only FUSE filesystem over a [`Tree`], speaking the kernel's FUSE protocol on
//! `/dev/fuse` directly (the subset a read-only tree needs). No library: the protocol is a
//! fixed set of little structs, and owning the loop lets a server take over a mounted
//! connection without the INIT handshake, which a restart of berth needs.
//!
//! Node ids are the TOC's node indexes plus one (the root is 1), so they are the same for
//! every server of the same layer.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::toc::{Node, NodeKind, Toc};

/// What the filesystem serves.
pub trait Tree: Send + Sync + 'static {
    /// The tree.
    fn toc(&self) -> &Toc;
    /// Up to `size` bytes of regular file `node` at `offset` (fewer at its end).
    fn read(&self, node: usize, offset: u64, size: u32) -> io::Result<Vec<u8>>;
}

const FUSE_LOOKUP: u32 = 1;
const FUSE_FORGET: u32 = 2;
const FUSE_GETATTR: u32 = 3;
const FUSE_READLINK: u32 = 5;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_STATFS: u32 = 17;
const FUSE_RELEASE: u32 = 18;
const FUSE_GETXATTR: u32 = 22;
const FUSE_LISTXATTR: u32 = 23;
const FUSE_FLUSH: u32 = 25;
const FUSE_INIT: u32 = 26;
const FUSE_OPENDIR: u32 = 27;
const FUSE_READDIR: u32 = 28;
const FUSE_RELEASEDIR: u32 = 29;
const FUSE_ACCESS: u32 = 34;
const FUSE_INTERRUPT: u32 = 36;
const FUSE_DESTROY: u32 = 38;
const FUSE_BATCH_FORGET: u32 = 42;
/// Opcodes that would change the tree.
const WRITES: &[u32] = &[4, 6, 8, 9, 10, 11, 12, 13, 16, 21, 24, 35, 43, 45, 47, 51];

const FUSE_ASYNC_READ: u32 = 1 << 0;
const FUSE_PARALLEL_DIROPS: u32 = 1 << 18;
const FUSE_CACHE_SYMLINKS: u32 = 1 << 23;
const FOPEN_KEEP_CACHE: u32 = 1 << 1;

/// `FUSE_NOTIFY_RESEND` (Linux 6.9, protocol 7.40): the kernel queues again every request a
/// server read and did not answer (and sets bit 63 of its unique id).
const FUSE_NOTIFY_RESEND: i32 = 7;
/// `FUSE_DEV_IOC_CLONE`: `_IOR(229, 0, uint32_t)`.
const FUSE_DEV_IOC_CLONE: libc::c_ulong = 0x8004_e500;

/// The protocol version spoken: 7.31 (every struct at its modern size).
const MINOR: u32 = 31;
const MAX_WRITE: u32 = 128 << 10;
const BUFFER: usize = MAX_WRITE as usize + 4096;
const IN_HEADER: usize = 40;
/// The tree never changes: the kernel may cache names and attributes for this long.
const TTL_SECS: u64 = 3600;

/// A mounted filesystem and its server threads. Dropping it unmounts.
pub struct Mount {
    target: PathBuf,
    dev: Arc<File>,
    threads: Vec<std::thread::JoinHandle<()>>,
    mounted: bool,
}

impl Mount {
    /// Mounts `tree` read-only at `target` and serves it from `threads` threads. Needs
    /// CAP_SYS_ADMIN.
    pub fn new(target: &Path, tree: Arc<dyn Tree>, threads: usize) -> io::Result<Mount> {
        let dev = Arc::new(mount(target)?);
        // Nothing has been read yet, so a resend only tells whether the kernel can.
        let resend = notify_resend(&dev).is_ok();
        Ok(Mount {
            target: target.to_path_buf(),
            threads: serve(dev.clone(), tree, threads, !resend),
            dev,
            mounted: true,
        })
    }

    /// Serves a mounted connection whose `/dev/fuse` file `dev` was kept open across a restart
    /// (its INIT was answered by the server before).
    ///
    /// Requests the previous server read but never answered (it died meanwhile) would keep
    /// their callers waiting for good, beyond the reach of SIGKILL: the kernel is asked to
    /// send them again, and they are answered like new ones. A kernel without that
    /// (before 6.9) cannot resend; there each server thread reads from a clone of `dev`,
    /// so that when the server dies, the kernel fails what it was answering (the caller
    /// gets an error, not a hang) instead.
    pub fn adopt(target: &Path, dev: File, tree: Arc<dyn Tree>, threads: usize) -> Mount {
        let dev = Arc::new(dev);
        let resend = match notify_resend(&dev) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(err = %e, "FUSE resend not supported; requests in flight when the last server died are lost");
                false
            }
        };
        Mount {
            target: target.to_path_buf(),
            threads: serve(dev.clone(), tree, threads, !resend),
            dev,
            mounted: true,
        }
    }

    /// The connection's `/dev/fuse` file (to hand to a holder that outlives this process).
    pub fn device(&self) -> &File {
        &self.dev
    }

    /// Unmounts and stops the server at once: for a filesystem nothing uses any more (an
    /// overlay still stacked on it would see its files fail).
    pub fn unmount(mut self) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(&self.target).map(|m| m.dev()).ok();
        let r = self.detach();
        if let Some(dev) = dev {
            // The connection is named by the mount's device minor in fusectl.
            let minor = libc::minor(dev);
            let abort = format!("{FUSECTL}/{minor}/abort");
            if let Err(e) = ensure_fusectl().and_then(|()| std::fs::write(&abort, "1")) {
                tracing::warn!(path = abort, err = %e, "cannot abort a FUSE connection; whoever waits on it keeps waiting");
            }
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        r
    }

    /// Detaches the mount: the server keeps serving whoever still has it open (an overlay
    /// stacked on it), and its threads end with the connection.
    fn detach(&mut self) -> io::Result<()> {
        if !self.mounted {
            return Ok(());
        }
        self.mounted = false;
        use std::os::unix::ffi::OsStrExt;
        let tgt =
            std::ffi::CString::new(self.target.as_os_str().as_bytes()).map_err(io::Error::other)?;
        // SAFETY: a valid NUL-terminated path.
        let rc = unsafe { libc::umount2(tgt.as_ptr(), libc::MNT_DETACH) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = self.detach();
    }
}

/// Where the kernel lists FUSE connections (the `fusectl` filesystem).
const FUSECTL: &str = "/sys/fs/fuse/connections";

/// Mounts `fusectl` at [`FUSECTL`] unless it is there (a host without systemd may not mount
/// it).
fn ensure_fusectl() -> io::Result<()> {
    let mounted = std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(FUSECTL));
    if mounted {
        return Ok(());
    }
    let c = |s: &str| std::ffi::CString::new(s).map_err(io::Error::other);
    let (src, tgt) = (c("fusectl")?, c(FUSECTL)?);
    // SAFETY: valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EBUSY) {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Mounts a read-only FUSE filesystem at `target`; returns its connection's `/dev/fuse` file.
/// The kernel sends INIT first.
fn mount(target: &Path) -> io::Result<File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    let opts = format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other",
        dev.as_raw_fd()
    );
    let c = |s: &[u8]| std::ffi::CString::new(s).map_err(io::Error::other);
    let (src, tgt, fstype, data) = (
        c(b"berth-lazy")?,
        c(target.as_os_str().as_bytes())?,
        c(b"fuse.berth-lazy")?,
        c(opts.as_bytes())?,
    );
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fstype.as_ptr(),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(dev)
}

/// Asks the kernel to queue again the requests of this connection that were read and not
/// answered. EINVAL from a kernel that cannot.
fn notify_resend(dev: &File) -> io::Result<()> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&16u32.to_ne_bytes());
    out.extend_from_slice(&FUSE_NOTIFY_RESEND.to_ne_bytes());
    out.extend_from_slice(&0u64.to_ne_bytes());
    (&*dev).write_all(&out)
}

/// A second `/dev/fuse` file on the connection of `dev`: requests it reads are answered
/// through it, and those it holds unanswered when it closes are failed by the kernel.
fn clone_device(dev: &File) -> io::Result<File> {
    use std::os::fd::AsRawFd;
    let clone = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    let fd = dev.as_raw_fd() as u32;
    // SAFETY: FUSE_DEV_IOC_CLONE reads one u32 (the fd to clone) from the pointer.
    let rc = unsafe { libc::ioctl(clone.as_raw_fd(), FUSE_DEV_IOC_CLONE, &fd) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(clone)
}

/// Serves the connection `dev` from `threads` threads until it ends (the filesystem is
/// unmounted and idle, or aborted). Also for a connection taken over after a restart: no
/// INIT is expected then. With `clones`, each thread reads from its own clone of `dev`
/// (see [`Mount::adopt`]).
pub fn serve(
    dev: Arc<File>,
    tree: Arc<dyn Tree>,
    threads: usize,
    clones: bool,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..threads.max(1))
        .map(|i| {
            let (dev, tree) = (dev.clone(), tree.clone());
            std::thread::Builder::new()
                .name(format!("lazy-fuse-{i}"))
                .spawn(move || {
                    let own = if clones {
                        clone_device(&dev)
                            .inspect_err(|e| tracing::warn!(err = %e, "cannot clone a FUSE connection; serving it from one file"))
                            .ok()
                    } else {
                        None
                    };
                    serve_thread(own.as_ref().unwrap_or(&dev), &*tree, None);
                })
                .expect("spawn a FUSE thread")
        })
        .collect()
}

/// Answers requests until the connection ends, or (tests) returns without answering the
/// first request with opcode `stop_at`, as a server that dies then would.
fn serve_thread(dev: &File, tree: &dyn Tree, stop_at: Option<u32>) {
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = match (&*dev).read(&mut buf) {
            Ok(n) => n,
            Err(e) => match e.raw_os_error() {
                // Interrupted, or a request withdrawn before we read it.
                Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::ENOENT) => continue,
                // Unmounted, or aborted.
                _ => return,
            },
        };
        if n < IN_HEADER {
            continue;
        }
        let req = Request {
            opcode: u32_at(&buf, 4),
            unique: u64_at(&buf, 8),
            nodeid: u64_at(&buf, 16),
            body: &buf[IN_HEADER..n],
        };
        if stop_at == Some(req.opcode) {
            return;
        }
        // A panic answers EIO: a request left unanswered would hang its caller for good.
        let reply = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handle(tree, &req)))
            .unwrap_or(Some(Err(libc::EIO)));
        if let Some(reply) = reply {
            let mut out = Vec::with_capacity(16 + reply.as_ref().map_or(0, Vec::len));
            let (error, payload) = match reply {
                Ok(p) => (0i32, p),
                Err(errno) => (-errno, vec![]),
            };
            out.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
            out.extend_from_slice(&error.to_ne_bytes());
            out.extend_from_slice(&req.unique.to_ne_bytes());
            out.extend_from_slice(&payload);
            // ENOENT: the request was interrupted meanwhile; nothing to do.
            let _ = (&*dev).write_all(&out);
        }
    }
}

/// Tests: mounts `tree` at `target` and serves it until the first request with opcode
/// `stop_at`, which is read and left unanswered, as by a server killed while answering it.
/// Returns the connection's `/dev/fuse` file, as a holder would keep it.
#[cfg(test)]
pub(crate) fn mount_and_die_at(
    target: &Path,
    tree: Arc<dyn Tree>,
    stop_at: u32,
) -> io::Result<File> {
    let dev = mount(target)?;
    let served = dev.try_clone()?;
    std::thread::spawn(move || serve_thread(&served, &*tree, Some(stop_at)));
    Ok(dev)
}

struct Request<'a> {
    opcode: u32,
    unique: u64,
    nodeid: u64,
    body: &'a [u8],
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_ne_bytes(s.try_into().unwrap_or_default()))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .map_or(0, |s| u64::from_ne_bytes(s.try_into().unwrap_or_default()))
}

/// The NUL-terminated name at the start of `b`.
fn name(b: &[u8]) -> Option<&str> {
    let end = b.iter().position(|c| *c == 0)?;
    std::str::from_utf8(&b[..end]).ok()
}

type Reply = Option<Result<Vec<u8>, i32>>;

fn handle(tree: &dyn Tree, req: &Request) -> Reply {
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
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&7u32.to_ne_bytes());
    out.extend_from_slice(&kernel_minor.min(MINOR).to_ne_bytes());
    out.extend_from_slice(&readahead.min(MAX_WRITE).to_ne_bytes());
    out.extend_from_slice(&(flags & want).to_ne_bytes());
    out.extend_from_slice(&16u16.to_ne_bytes()); // max_background
    out.extend_from_slice(&12u16.to_ne_bytes()); // congestion_threshold
    out.extend_from_slice(&MAX_WRITE.to_ne_bytes());
    out.extend_from_slice(&1u32.to_ne_bytes()); // time_gran
    out.extend_from_slice(&0u16.to_ne_bytes()); // max_pages
    out.extend_from_slice(&0u16.to_ne_bytes()); // map_alignment
    out.extend_from_slice(&0u32.to_ne_bytes()); // flags2
    out.extend_from_slice(&[0u8; 28]); // unused
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

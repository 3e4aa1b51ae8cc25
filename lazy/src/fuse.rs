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

use crate::toc::Toc;

mod ops;
use ops::{Request, handle, u32_at, u64_at};

/// What the filesystem serves.
pub trait Tree: Send + Sync + 'static {
    /// The tree.
    fn toc(&self) -> &Toc;
    /// Up to `size` bytes of regular file `node` at `offset` (fewer at its end).
    fn read(&self, node: usize, offset: u64, size: u32) -> io::Result<Vec<u8>>;
}

/// `FUSE_NOTIFY_RESEND` (Linux 6.9, protocol 7.40): the kernel queues again every request a
/// server read and did not answer (and sets bit 63 of its unique id).
const FUSE_NOTIFY_RESEND: i32 = 7;
/// `FUSE_DEV_IOC_CLONE`: `_IOR(229, 0, uint32_t)`.
const FUSE_DEV_IOC_CLONE: libc::c_ulong = 0x8004_e500;

/// The protocol version spoken: 7.40 (every struct at its modern size; `FUSE_ALLOW_IDMAP`).
/// A kernel that speaks less gets its own minor back, and none of the later flags.
const MINOR: u32 = 40;
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

//! Network namespaces pinned by a bind mount under `<state>/netns/<name>`.
//!
//! Creation unshares on a short-lived dedicated thread (netns-rs does this), never on a tokio
//! worker: a worker that changed namespace would run every later task in it.

use std::path::{Path, PathBuf};

use netns_rs::{Env, NetNs};

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
struct Dir(PathBuf);

impl Env for Dir {
    fn persist_dir(&self) -> PathBuf {
        self.0.clone()
    }
}

/// Creates and removes pinned network namespaces in one directory.
#[derive(Debug, Clone)]
pub struct NetnsDir {
    dir: PathBuf,
}

impl NetnsDir {
    /// Namespaces live in `dir` (created on first use).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        NetnsDir { dir: dir.into() }
    }

    /// The path namespace `name` is (or would be) pinned at.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Creates a new network namespace pinned at [`path`](Self::path).
    pub fn create(&self, name: &str) -> Result<PathBuf> {
        validate_name(name)?;
        let path = self.path(name);
        if path.exists() {
            return Err(Error::Netns {
                path,
                reason: "already exists".into(),
            });
        }
        let ns = NetNs::new_with_env(name, Dir(self.dir.clone())).map_err(|e| Error::Netns {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(ns.path().to_path_buf())
    }

    /// Pins the network namespace process `pid` is in at [`path`](Self::path): for a
    /// namespace the runtime made (a pod in a user namespace of its own has its network
    /// namespace made inside that, by the runtime). Blocking.
    pub fn pin_from_pid(&self, name: &str, pid: u32) -> Result<PathBuf> {
        validate_name(name)?;
        let path = self.path(name);
        let failed = |reason: String| Error::Netns {
            path: path.clone(),
            reason,
        };
        // The directory is made a shared mount of its own first, as `create` makes it: made
        // later, over a pin already in it, it would hide that pin.
        Dir(self.dir.clone())
            .init()
            .map_err(|e| failed(format!("set up {}: {e}", self.dir.display())))?;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| failed(format!("create the pin file: {e}")))?;
        let source = format!("/proc/{pid}/ns/net");
        if let Err(e) = rustix::mount::mount_bind(source.as_str(), &path) {
            let _ = std::fs::remove_file(&path);
            return Err(failed(format!("bind {source}: {e}")));
        }
        Ok(path)
    }

    /// Unpins and deletes namespace `name`; one that is already gone is not an error.
    pub fn remove(&self, name: &str) -> Result<()> {
        validate_name(name)?;
        remove_path(&self.path(name))
    }
}

/// Unpins and deletes the namespace pinned at `path`; a missing one is not an error.
pub fn remove_path(path: &Path) -> Result<()> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Invalid(format!("netns path {path:?} contains NUL")))?;
    // SAFETY: umount2 on a NUL-terminated path; no memory is shared with the kernel call.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        // EINVAL: not a mount point (never pinned, or already unpinned).
        if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::ENOENT) {
            return Err(Error::Netns {
                path: path.to_path_buf(),
                reason: format!("unmount: {e}"),
            });
        }
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io(format!("remove {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

/// Connects to `port` on the loopback of the network namespace pinned at `netns` (the
/// host's when `None`): 127.0.0.1 first, then ::1. The socket is made on a dedicated thread
/// that enters the namespace and then exits; a socket keeps the namespace it was made in.
pub async fn connect_loopback(
    netns: Option<&Path>,
    port: u16,
) -> std::io::Result<tokio::net::TcpStream> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
    use std::time::Duration;
    let netns = netns.map(Path::to_path_buf);
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("netns-connect".into())
        .spawn(move || {
            let res = (|| {
                if let Some(ns) = &netns {
                    // Only this thread enters it, and it exits right after making the socket.
                    netns_rs::get_from_path(ns)
                        .and_then(|ns| ns.enter())
                        .map_err(|e| std::io::Error::other(format!("{}: {e}", ns.display())))?;
                }
                let timeout = Duration::from_secs(10);
                let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                match TcpStream::connect_timeout(&v4, timeout) {
                    Ok(s) => Ok(s),
                    Err(e4) => {
                        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
                        TcpStream::connect_timeout(&v6, timeout).map_err(|_| e4)
                    }
                }
            })();
            let _ = tx.send(res);
        })?;
    let s = rx
        .await
        .map_err(|_| std::io::Error::other("netns connect thread died"))??;
    s.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(s)
}

fn validate_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 200
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        || name.starts_with('.')
    {
        return Err(Error::Invalid(format!(
            "invalid network namespace name {name:?}"
        )));
    }
    Ok(())
}

/// Whether `path` is a pinned network namespace (an nsfs mount).
pub fn is_pinned(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 4 && f[4] == want && l.contains(" - nsfs ")
    })
}

#[cfg(test)]
pub(crate) fn unmount_dir_for_tests(dir: &Path) {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: see remove_path.
    unsafe {
        libc::umount2(c.as_ptr(), libc::MNT_DETACH);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_is_a_distinct_namespace_and_remove_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let d = NetnsDir::new(dir.path().join("netns"));
        let p = d.create("berth-test-ns1").unwrap();
        assert!(is_pinned(&p));
        let ours = std::fs::metadata("/proc/self/ns/net").unwrap();
        let theirs = std::fs::metadata(&p).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_ne!(ours.ino(), theirs.ino(), "a new namespace, not ours");
        assert!(d.create("berth-test-ns1").is_err());
        d.remove("berth-test-ns1").unwrap();
        assert!(!p.exists() && !is_pinned(&p));
        d.remove("berth-test-ns1").unwrap();
        assert!(d.create("../evil").is_err());
        // The persist dir itself is a mount (netns-rs makes it shared); drop it for the tempdir.
        crate::netns::unmount_dir_for_tests(&dir.path().join("netns"));
    }
}

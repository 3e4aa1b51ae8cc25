//! Watching a shim daemon's process, so that berth learns of its death at once (a shim that
//! dies publishes no exit for the tasks it ran).
//!
//! The daemon is not berth's child (`<shim> start` forks it and exits), so it is watched
//! through a pidfd, which turns readable when the process exits. Its pid comes from the shim
//! itself (the task API's Connect); before trusting it, berth checks that the process it
//! opened works in the pod's bundle: a pid recycled after the shim died names another
//! process.

use std::os::fd::OwnedFd;
use std::path::Path;

use tokio::io::unix::AsyncFd;

/// A process to wait for.
#[derive(Debug)]
pub struct Watch {
    fd: OwnedFd,
}

/// Why a watch could not be set up.
#[derive(Debug, PartialEq, Eq)]
pub enum NotWatched {
    /// The process is gone already (or its pid now names a process of another directory).
    Gone,
    /// pidfds are not available.
    Unsupported(String),
}

impl Watch {
    /// Opens a pidfd for `pid`, the shim daemon working in `bundle`.
    pub fn open(pid: u32, bundle: &Path) -> Result<Self, NotWatched> {
        let p = rustix::process::Pid::from_raw(pid as i32).ok_or(NotWatched::Gone)?;
        let fd = match rustix::process::pidfd_open(p, rustix::process::PidfdFlags::NONBLOCK) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::SRCH) => return Err(NotWatched::Gone),
            Err(e) => return Err(NotWatched::Unsupported(e.to_string())),
        };
        // Checked after opening the pidfd: if this is still the shim now, the pidfd is its.
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
        let bundle = std::fs::canonicalize(bundle).unwrap_or_else(|_| bundle.to_path_buf());
        if cwd.as_deref() != Some(bundle.as_path()) {
            return Err(NotWatched::Gone);
        }
        Ok(Watch { fd })
    }

    /// Resolves once the process has exited.
    pub async fn exited(self) {
        // SAFETY: the AsyncFd takes ownership of the OwnedFd, which stays open and names the
        // same pidfd until the AsyncFd (and with it the OwnedFd) is dropped; `as_raw_fd` of an
        // OwnedFd always returns that one descriptor.
        let registered =
            unsafe { AsyncFd::register_with_interest(self.fd, tokio::io::Interest::READABLE) };
        match registered {
            Ok(afd) => {
                // A pidfd reports readable once, at exit, and stays readable.
                let _ = afd.readable().await;
            }
            Err(e) => {
                tracing::warn!(err = %e, "cannot poll a shim's pidfd; its death is noticed only when a call fails");
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_watch_resolves_when_the_process_exits() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .current_dir(dir.path())
            .spawn()
            .unwrap();
        let pid = child.id();
        // A process working elsewhere is not the shim of this bundle.
        let other = tempfile::tempdir().unwrap();
        assert_eq!(
            Watch::open(pid, other.path()).unwrap_err(),
            NotWatched::Gone
        );
        let w = Watch::open(pid, dir.path()).unwrap();
        let waiting = tokio::spawn(w.exited());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "resolved while the process runs");
        child.kill().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(2), waiting)
            .await
            .expect("the watch did not see the exit")
            .unwrap();
        let _ = child.wait();
        assert_eq!(Watch::open(pid, dir.path()).unwrap_err(), NotWatched::Gone);
    }
}

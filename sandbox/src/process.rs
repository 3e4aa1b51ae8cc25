//! Killing processes berth does not own as children (shim daemons, an earlier berth's
//! helpers and CNI plugins, a dead shim's containers) without ever hitting a recycled pid.

use std::time::Duration;

/// Opens a pidfd for `pid`, then asks `still_ours` whether `pid` is still the process meant
/// (asked after opening the pidfd: if it says yes, the pidfd names that process), SIGKILLs it
/// through the pidfd and waits up to `wait` for it to go. Returns whether it was killed.
/// Blocking: call it off the async workers.
pub fn kill_checked(pid: i32, still_ours: impl FnOnce() -> bool, wait: Duration) -> bool {
    let Some(p) = rustix::process::Pid::from_raw(pid) else {
        return false;
    };
    let Ok(fd) = rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()) else {
        return false;
    };
    if !still_ours() {
        return false;
    }
    if let Err(e) = rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::KILL) {
        tracing::warn!(pid, err = %e, "could not kill a process");
        return false;
    }
    // The pidfd turns readable when the process is gone.
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let _ = rustix::event::poll(
        &mut fds,
        Some(&rustix::event::Timespec {
            tv_sec: wait.as_secs() as i64,
            tv_nsec: i64::from(wait.subsec_nanos()),
        }),
    );
    true
}

/// `remove_dir_all` of `dir` on a blocking thread (a container's writable layer or a pod's
/// directory can hold any number of files); a missing directory is not an error.
pub(crate) async fn remove_dir_all_blocking(dir: std::path::PathBuf) -> crate::Result<()> {
    tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(crate::Error::io(format!("remove {}", dir.display()), e))
        }
        _ => Ok(()),
    })
    .await
    .map_err(|e| crate::Error::io("remove a directory", std::io::Error::other(e)))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_process_still_ours_is_killed() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert!(!kill_checked(pid, || false, Duration::from_secs(1)));
        assert!(
            child.try_wait().unwrap().is_none(),
            "killed without being ours"
        );
        assert!(kill_checked(pid, || true, Duration::from_secs(2)));
        assert!(child.wait().is_ok());
    }
}

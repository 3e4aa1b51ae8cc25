//! OOM events: one thread waits (epoll) on every container's memory cgroup and calls back
//! with the container's id when the kernel's OOM killer acted there.
//! - cgroup v1: an eventfd registered on `memory.oom_control` through `cgroup.event_control`
//!   (it also fires when the cgroup is removed; the watch then ends);
//! - cgroup v2: inotify on `memory.events`, reporting when `oom_kill` grows.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::log::{debug, warning};

type OnOom = Box<dyn Fn(&str) + Send + Sync>;

enum Kind {
    V1 {
        efd: OwnedFd,
        /// Held open: the registration lasts as long as both files are open.
        _control: File,
        dir: PathBuf,
    },
    V2 {
        inotify: OwnedFd,
        events: PathBuf,
        kills: u64,
    },
}

impl Kind {
    fn fd(&self) -> i32 {
        match self {
            Kind::V1 { efd, .. } => efd.as_raw_fd(),
            Kind::V2 { inotify, .. } => inotify.as_raw_fd(),
        }
    }
}

struct Watch {
    id: String,
    kind: Kind,
}

/// The OOM watcher.
pub struct OomWatcher {
    epoll: OwnedFd,
    watches: Mutex<HashMap<u64, Watch>>,
    next: std::sync::atomic::AtomicU64,
    on_oom: OnOom,
}

fn last_error(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

impl OomWatcher {
    /// Starts the watcher thread.
    pub fn start(on_oom: OnOom) -> Result<Arc<OomWatcher>, String> {
        // SAFETY: epoll_create1 returns a new descriptor we then own.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(last_error("epoll_create1"));
        }
        let w = Arc::new(OomWatcher {
            // SAFETY: fd is a fresh descriptor nothing else owns.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            watches: Mutex::new(HashMap::new()),
            next: 1.into(),
            on_oom,
        });
        let me = w.clone();
        std::thread::Builder::new()
            .name("oom".into())
            .stack_size(64 * 1024)
            .spawn(move || me.run())
            .map_err(|e| e.to_string())?;
        Ok(w)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Watch>> {
        self.watches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watches the memory cgroup of container `id`.
    pub fn watch(&self, id: &str, cgroups: &crate::stats::Cgroups) -> Result<(), String> {
        let kind = match cgroups.memory() {
            Some(crate::stats::Memory::V1(dir)) => watch_v1(&dir)?,
            Some(crate::stats::Memory::V2(dir)) => watch_v2(&dir)?,
            None => return Err("the task is in no memory cgroup".into()),
        };
        let token = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: both descriptors are open; ev is a valid event.
        if unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                kind.fd(),
                &mut ev,
            )
        } != 0
        {
            return Err(last_error("epoll_ctl"));
        }
        self.lock().insert(
            token,
            Watch {
                id: id.to_string(),
                kind,
            },
        );
        Ok(())
    }

    /// Stops watching container `id`.
    pub fn unwatch(&self, id: &str) {
        // Closing the descriptors takes them out of the epoll set.
        self.lock().retain(|_, w| w.id != id);
    }

    fn run(&self) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 16];
        loop {
            // SAFETY: events is a valid buffer of the length given.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as i32,
                    -1,
                )
            };
            if n < 0 {
                if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                    warning!("{}", last_error("epoll_wait"));
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                continue;
            }
            for ev in &events[..n as usize] {
                let token = ev.u64;
                let mut fired = None;
                let mut ended = false;
                if let Some(w) = self.lock().get_mut(&token) {
                    match &mut w.kind {
                        Kind::V1 { efd, dir, .. } => {
                            drain(efd);
                            if dir.join("memory.oom_control").exists() {
                                fired = Some(w.id.clone());
                            } else {
                                ended = true;
                            }
                        }
                        Kind::V2 {
                            inotify,
                            events,
                            kills,
                        } => {
                            drain(inotify);
                            match std::fs::read_to_string(&*events) {
                                Ok(text) => {
                                    let now = oom_kills(&text);
                                    if now > *kills {
                                        *kills = now;
                                        fired = Some(w.id.clone());
                                    }
                                }
                                Err(_) => ended = true,
                            }
                        }
                    }
                }
                if ended {
                    debug!("the memory cgroup of a container is gone");
                    self.lock().remove(&token);
                }
                if let Some(id) = fired {
                    (self.on_oom)(&id);
                }
            }
        }
    }
}

/// Reads what an eventfd or inotify descriptor holds, so it is not reported again.
fn drain(fd: &OwnedFd) {
    let mut b = [0u8; 4096];
    // SAFETY: reading into a local buffer of the length given; the fd is non-blocking.
    while unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), b.len()) } > 0 {}
}

fn watch_v1(dir: &Path) -> Result<Kind, String> {
    let control = File::open(dir.join("memory.oom_control"))
        .map_err(|e| format!("open {}/memory.oom_control: {e}", dir.display()))?;
    // SAFETY: eventfd returns a new descriptor we then own.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if efd < 0 {
        return Err(last_error("eventfd"));
    }
    // SAFETY: efd is fresh and owned by nothing else.
    let efd = unsafe { OwnedFd::from_raw_fd(efd) };
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.event_control"))
        .and_then(|mut f| {
            f.write_all(format!("{} {}", efd.as_raw_fd(), control.as_raw_fd()).as_bytes())
        })
        .map_err(|e| format!("register on {}/cgroup.event_control: {e}", dir.display()))?;
    Ok(Kind::V1 {
        efd,
        _control: control,
        dir: dir.to_path_buf(),
    })
}

fn watch_v2(dir: &Path) -> Result<Kind, String> {
    let events = dir.join("memory.events");
    let kills = oom_kills(
        &std::fs::read_to_string(&events).map_err(|e| format!("read {}: {e}", events.display()))?,
    );
    // SAFETY: inotify_init1 returns a new descriptor we then own.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    if fd < 0 {
        return Err(last_error("inotify_init1"));
    }
    // SAFETY: fd is fresh and owned by nothing else.
    let inotify = unsafe { OwnedFd::from_raw_fd(fd) };
    let c =
        std::ffi::CString::new(events.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: a valid descriptor and NUL-terminated path.
    if unsafe { libc::inotify_add_watch(inotify.as_raw_fd(), c.as_ptr(), libc::IN_MODIFY) } < 0 {
        return Err(last_error("inotify_add_watch"));
    }
    Ok(Kind::V2 {
        inotify,
        events,
        kills,
    })
}

/// The `oom_kill` count of a `memory.events` text.
fn oom_kills(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kill_counts() {
        assert_eq!(oom_kills("low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\n"), 1);
        assert_eq!(oom_kills(""), 0);
    }
}

//! The shim is a subreaper: container processes (reparented to it when `runc create` or
//! `runc exec --detach` exits) and the runtime commands it runs are all its children. One
//! thread reaps them all (`waitpid(-1)` on each `SIGCHLD`) and routes each exit:
//! - to the caller waiting for a runtime command it spawned through [`Reaper::spawn`],
//!   registered before the reaper can see the exit (both hold one lock);
//! - to the exit callback, for a process [`Reaper::watch`] registered;
//! - otherwise it is kept for a while: a container process can exit before the shim has read
//!   its pid from the runtime's pid file, and `watch` then returns the exit at once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// Exits kept for processes nobody watches yet (most are never watched: processes a
/// container left behind that the shim inherited).
const UNCLAIMED_KEPT: usize = 256;

type OnExit = Box<dyn Fn(i32, i32) + Send + Sync>;

#[derive(Default)]
struct State {
    commands: HashMap<i32, mpsc::Sender<i32>>,
    watched: HashSet<i32>,
    unclaimed: VecDeque<(i32, i32)>,
}

/// The reaper.
pub struct Reaper {
    state: Mutex<State>,
    on_exit: OnExit,
}

/// The write end of the pipe the `SIGCHLD` handler wakes the reaper through.
static WAKE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_sigchld(_: libc::c_int) {
    let fd = WAKE.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: write(2) and errno access are async-signal-safe; errno is restored so the
        // interrupted code does not see ours.
        unsafe {
            let errno = *libc::__errno_location();
            libc::write(fd, [1u8].as_ptr().cast(), 1);
            *libc::__errno_location() = errno;
        }
    }
}

/// Installs the `SIGCHLD` handler; returns the pipe's read end.
fn install() -> std::io::Result<std::fs::File> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    WAKE.store(fds[1], Ordering::Relaxed);
    // SAFETY: a zeroed sigaction with our handler; SA_RESTART so that no other thread's
    // blocking call fails with EINTR.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigchld as *const () as usize;
        sa.sa_flags = libc::SA_RESTART | libc::SA_NOCLDSTOP;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGCHLD, &sa, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(std::fs::File::from_raw_fd(fds[0]))
    }
}

impl Reaper {
    /// Starts the reaper thread; `on_exit(pid, wait status)` is called for watched processes.
    pub fn start(on_exit: OnExit) -> Arc<Reaper> {
        let r = Arc::new(Reaper {
            state: Mutex::new(State::default()),
            on_exit,
        });
        let wake = install().expect("install the SIGCHLD handler");
        let me = r.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .stack_size(64 * 1024)
            .spawn(move || me.run(wake))
            .expect("spawn the reaper thread");
        r
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self, wake: std::fs::File) {
        let mut buf = [0u8; 64];
        loop {
            self.reap();
            // Wait for the next SIGCHLD (poll: the pipe is non-blocking), then empty the pipe.
            let mut pfd = libc::pollfd {
                fd: wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on one valid pollfd; a timeout reaps anyway, in case a wake-up
            // was lost.
            unsafe { libc::poll(&mut pfd, 1, 1000) };
            while (&wake).read(&mut buf).is_ok_and(|n| n > 0) {}
        }
    }

    /// Reaps every child that exited and routes the exits.
    fn reap(&self) {
        let mut watched_exits = Vec::new();
        {
            let mut st = self.lock();
            loop {
                let mut status = 0;
                // SAFETY: waitpid with a valid out pointer.
                let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
                if pid <= 0 {
                    break;
                }
                if let Some(tx) = st.commands.remove(&pid) {
                    let _ = tx.send(status);
                } else if st.watched.remove(&pid) {
                    watched_exits.push((pid, status));
                } else {
                    if st.unclaimed.len() >= UNCLAIMED_KEPT {
                        st.unclaimed.pop_front();
                    }
                    st.unclaimed.push_back((pid, status));
                }
            }
        }
        for (pid, status) in watched_exits {
            (self.on_exit)(pid, status);
        }
    }

    /// Spawns `cmd`; the receiver gets its wait status. Never call `wait` on the child.
    pub fn spawn(
        &self,
        cmd: &mut std::process::Command,
    ) -> std::io::Result<(std::process::Child, mpsc::Receiver<i32>)> {
        let (tx, rx) = mpsc::channel();
        let mut st = self.lock();
        let child = cmd.spawn()?;
        st.commands.insert(child.id() as i32, tx);
        Ok((child, rx))
    }

    /// Watches container process `pid`: its exit goes to the exit callback. Returns its wait
    /// status instead when it already exited.
    pub fn watch(&self, pid: i32) -> Option<i32> {
        let mut st = self.lock();
        if let Some(i) = st.unclaimed.iter().position(|(p, _)| *p == pid) {
            return st.unclaimed.remove(i).map(|(_, s)| s);
        }
        st.watched.insert(pid);
        None
    }
}

/// A wait status as the exit status containerd reports: the code, or 128 + the signal.
pub fn exit_code(status: i32) -> u32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status) as u32
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status) as u32
    } else {
        255
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    // One test for the whole flow: the reaper takes every child of the test process, so
    // two reaper tests at once would take each other's.
    #[test]
    #[allow(clippy::zombie_processes)] // the reaper reaps them
    fn routes_commands_watched_and_early_exits() {
        let (tx, rx) = mpsc::channel();
        let r = Reaper::start(Box::new(move |pid, st| {
            let _ = tx.send((pid, st));
        }));
        // A command's status goes to its spawner.
        let (_c, st) = r
            .spawn(std::process::Command::new("sh").args(["-c", "exit 3"]))
            .unwrap();
        assert_eq!(
            exit_code(st.recv_timeout(Duration::from_secs(5)).unwrap()),
            3
        );
        // A watched process's exit goes to the callback.
        let child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        assert_eq!(r.watch(child.id() as i32), None);
        let (pid, st) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!((pid, exit_code(st)), (child.id() as i32, 0));
        // One that exited before it was watched is returned by watch.
        let early = std::process::Command::new("sh")
            .args(["-c", "kill -9 $$"])
            .spawn()
            .unwrap();
        // Reaped (its /proc entry gone) before anyone watched it.
        let proc_dir = format!("/proc/{}", early.id());
        for _ in 0..250 {
            if !Path::new(&proc_dir).exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let got = r.watch(early.id() as i32);
        assert_eq!(got.map(exit_code), Some(137));
    }
}

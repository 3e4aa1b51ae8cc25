//! A container's processes (its init and its execs) and the states they pass through.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};
use std::time::SystemTime;

use crate::status::Status;
use crate::stdio::{Kept, Paths};

/// Where a process is in its life. A verb moves it only as [`ProcStatus::allows`] and
/// [`ProcStatus::after`] say; an exit (from any state) stops it.
///
/// ```text
///   Created ──Start──▶ Running ──Pause──▶ Paused
///      │                 │    ◀──Resume──   │
///      └──── exit ──────▶ Stopped ◀─ exit ──┘
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProcStatus {
    Created,
    Running,
    Paused,
    Stopped,
}

/// What a task call does to a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verb {
    /// Start it (an init or an exec).
    Start,
    /// Freeze it (an init: its container).
    Pause,
    /// Thaw it.
    Resume,
    /// Send it a signal.
    Signal,
    /// Forget it (and, for an init, its container).
    Delete,
    /// Add an exec to its container (the init's state decides).
    Exec,
}

impl ProcStatus {
    /// Whether `verb` may act on a process in this state: the one place that says so.
    pub(crate) fn allows(self, verb: Verb) -> bool {
        use ProcStatus::*;
        matches!(
            (verb, self),
            (Verb::Start, Created)
                | (Verb::Pause, Running)
                | (Verb::Resume, Paused)
                | (Verb::Signal, Created | Running | Paused)
                | (Verb::Delete, Created | Stopped)
                | (Verb::Exec, Created | Running | Paused)
        )
    }

    /// The state `verb` leaves a process in, from a state that allows it.
    pub(crate) fn after(self, verb: Verb) -> ProcStatus {
        match verb {
            Verb::Start | Verb::Resume => ProcStatus::Running,
            Verb::Pause => ProcStatus::Paused,
            Verb::Signal | Verb::Delete | Verb::Exec => self,
        }
    }
}

pub(crate) struct ProcState {
    pub(crate) status: ProcStatus,
    pub(crate) pid: u32,
    pub(crate) exit: Option<(u32, SystemTime)>,
}

/// A container's init process or one of its execs.
pub(crate) struct Process {
    pub(crate) container_id: String,
    /// Empty for the init process.
    pub(crate) exec_id: String,
    pub(crate) paths: Paths,
    /// An exec's OCI process (JSON).
    pub(crate) spec: Vec<u8>,
    state: Mutex<ProcState>,
    pub(crate) exited: Condvar,
    pub(crate) io: Mutex<Option<Arc<Kept>>>,
    /// Signals go through it: it names this process even after its pid was reaped.
    pub(crate) pidfd: Mutex<Option<OwnedFd>>,
}

impl Process {
    pub(crate) fn new(
        container_id: &str,
        exec_id: &str,
        paths: Paths,
        spec: Vec<u8>,
    ) -> Arc<Process> {
        Arc::new(Process {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            paths,
            spec,
            state: Mutex::new(ProcState {
                status: ProcStatus::Created,
                pid: 0,
                exit: None,
            }),
            exited: Condvar::new(),
            io: Mutex::new(None),
            pidfd: Mutex::new(None),
        })
    }

    pub(crate) fn state(&self) -> std::sync::MutexGuard<'_, ProcState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn io(&self) -> Option<Arc<Kept>> {
        self.io.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Ok when `verb` may act on this process now; else the refusal the caller is given
    /// (what containerd's runc shim answers in each case).
    pub(crate) fn check(&self, verb: Verb) -> Result<(), Status> {
        if self.state().status.allows(verb) {
            return Ok(());
        }
        let id = &self.container_id;
        Err(match verb {
            Verb::Start => {
                Status::precondition(format!("{id} {} is not in the created state", self.exec_id))
            }
            Verb::Pause => Status::precondition(format!("container {id} cannot pause now")),
            Verb::Resume => Status::precondition(format!("container {id} cannot resume now")),
            Verb::Signal => Status::not_found("process already finished"),
            Verb::Delete => Status::precondition(format!(
                "cannot delete a running process ({id} {})",
                self.exec_id
            )),
            Verb::Exec => Status::precondition(format!("container {id} is not running")),
        })
    }

    /// Moves this process on as `verb` does, if its state (which may have changed since
    /// [`Process::check`]: an exit) still allows it.
    pub(crate) fn advance(&self, verb: Verb) {
        let mut st = self.state();
        if st.status.allows(verb) {
            st.status = st.status.after(verb);
        }
    }

    /// Records that it exited (from whatever state it was in) with `code` at `at`.
    pub(crate) fn exited_with(&self, code: u32, at: SystemTime) {
        let mut st = self.state();
        st.status = ProcStatus::Stopped;
        st.exit = Some((code, at));
    }

    /// The id events name: the exec id, or the container id for the init process.
    pub(crate) fn event_id(&self) -> &str {
        if self.exec_id.is_empty() {
            &self.container_id
        } else {
            &self.exec_id
        }
    }

    pub(crate) fn signal(&self, sig: u32) -> Result<(), Status> {
        let g = self.pidfd.lock().unwrap_or_else(|p| p.into_inner());
        let Some(fd) = g.as_ref() else {
            return Err(Status::not_found("process already finished"));
        };
        // SAFETY: pidfd_send_signal on an open pidfd, no siginfo.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                sig as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::ESRCH) {
                Status::not_found("process already finished")
            } else {
                Status::failed(format!("signal {sig}: {e}"))
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_verb_acts_only_in_the_states_that_allow_it() {
        use ProcStatus::*;
        let all = [Created, Running, Paused, Stopped];
        let allowed = |v| {
            all.iter()
                .copied()
                .filter(|s| s.allows(v))
                .collect::<Vec<_>>()
        };
        assert_eq!(allowed(Verb::Start), [Created]);
        assert_eq!(allowed(Verb::Pause), [Running]);
        assert_eq!(allowed(Verb::Resume), [Paused]);
        assert_eq!(allowed(Verb::Signal), [Created, Running, Paused]);
        assert_eq!(allowed(Verb::Delete), [Created, Stopped]);
        assert_eq!(allowed(Verb::Exec), [Created, Running, Paused]);
        assert_eq!(Created.after(Verb::Start), Running);
        assert_eq!(Running.after(Verb::Pause), Paused);
        assert_eq!(Paused.after(Verb::Resume), Running);
        assert_eq!(Running.after(Verb::Signal), Running);
    }

    #[test]
    fn a_refusal_says_what_the_runc_shim_says() {
        let p = Process::new("c1", "", Paths::default(), vec![]);
        p.state().status = ProcStatus::Stopped;
        let e = p.check(Verb::Signal).unwrap_err();
        assert_eq!(e.message, "process already finished");
        assert!(p.check(Verb::Delete).is_ok());
        let e = p.check(Verb::Exec).unwrap_err();
        assert_eq!(e.message, "container c1 is not running");
        // An exit between the check and the move: the move does not resurrect it.
        p.advance(Verb::Start);
        assert_eq!(p.state().status, ProcStatus::Stopped);
    }
}

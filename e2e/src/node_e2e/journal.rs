//! A record on the host of what a run makes outside its own directories, written as it
//! makes it, so that the next run removes what this one could not (it was SIGKILLed, or the
//! machine stopped under it). It is also the lock that keeps runs one at a time: they share
//! the kubelet's fixed root, its ports and its cgroups.
//!
//! One line an entry, `<kind> <value…>`, appended and synced before the thing it names is
//! made (a process: once started, with its start time, so that a reused pid is never
//! killed).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use super::host::{self, HostState};

/// Where the journal lives: a tmpfs, emptied when the machine restarts, as the processes it
/// names are.
const PATH: &str = "/run/berth-node-e2e/journal";

/// The open journal of this run.
pub struct Journal {
    file: File,
    host: HostState,
}

/// What a journal says.
#[derive(Debug, Default, PartialEq)]
struct Entries {
    runner: Option<(u32, u64)>,
    host: HostState,
    groups: Vec<(u32, u64)>,
    processes: Vec<(u32, u64)>,
    dirs: Vec<PathBuf>,
    links: Vec<PathBuf>,
    bridges: Vec<String>,
}

fn parse(text: &str) -> Entries {
    let mut e = Entries::default();
    let pid_and_start = |v: &str| {
        let (p, s) = v.split_once(' ')?;
        Some((p.parse().ok()?, s.parse().ok()?))
    };
    for line in text.lines() {
        let Some((kind, v)) = line.split_once(' ') else {
            continue;
        };
        match kind {
            "runner" => e.runner = pid_and_start(v),
            "group" => e.groups.extend(pid_and_start(v)),
            "process" => e.processes.extend(pid_and_start(v)),
            "dir" => e.dirs.push(v.into()),
            "link" => e.links.push(v.into()),
            "bridge" => e.bridges.push(v.into()),
            "had-kubelet-root" => e.host.kubelet_root_existed = v == "1",
            "had-cgroup" => e.host.cgroups.push(v.into()),
            "had-log" => e.host.logs.push(v.into()),
            "had-netns" => e.host.netns.push(v.into()),
            _ => {}
        }
    }
    e
}

/// The start time of `pid` (clock ticks since boot, `/proc/<pid>/stat` field 22): with the
/// pid, it names one process across pid reuse.
pub fn start_time(pid: u32) -> Option<u64> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &st[st.rfind(')')? + 2..];
    // Field 3 (state) is the first after the name; the start time is field 22.
    after.split(' ').nth(19)?.parse().ok()
}

fn same_process(pid: u32, start: u64) -> bool {
    pid != 0 && !crate::dead(pid) && start_time(pid) == Some(start)
}

impl Journal {
    /// Takes the lock, first removing what a run that ended without cleaning up left; fails
    /// while another run is going.
    #[allow(clippy::print_stderr)] // the runner's console: what it does to the host
    pub fn open() -> anyhow::Result<Self> {
        let path = Path::new(PATH);
        std::fs::create_dir_all(path.parent().context("journal dir")?)?;
        let file = loop {
            match OpenOptions::new().append(true).create_new(true).open(path) {
                Ok(f) => break f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).context(PATH),
            }
            let prev = parse(&std::fs::read_to_string(path).unwrap_or_default());
            if let Some((pid, start)) = prev.runner
                && same_process(pid, start)
            {
                anyhow::bail!(
                    "another node-e2e run (pid {pid}) is using this machine's kubelet root, \
                     ports and cgroups; wait for it to end or stop it (its journal: {PATH})"
                );
            }
            // The runner's console: what it does to the host before it starts.
            eprintln!(
                "node-e2e: removing what an interrupted run{} left",
                prev.runner
                    .map(|(p, _)| format!(" (pid {p})"))
                    .unwrap_or_default()
            );
            recover(&prev);
            std::fs::remove_file(path).context(PATH)?;
        };
        let me = std::process::id();
        let mut j = Journal {
            file,
            host: HostState::note(),
        };
        j.record("runner", &format!("{me} {}", start_time(me).unwrap_or(0)))?;
        j.record(
            "had-kubelet-root",
            if j.host.kubelet_root_existed {
                "1"
            } else {
                "0"
            },
        )?;
        let (cgroups, logs) = (j.host.cgroups.clone(), j.host.logs.clone());
        for (kind, list) in [("had-cgroup", cgroups), ("had-log", logs)] {
            for p in list {
                j.record(kind, &p.display().to_string())?;
            }
        }
        for n in j.host.netns.clone() {
            j.record("had-netns", &n)?;
        }
        Ok(j)
    }

    fn record(&mut self, kind: &str, value: &str) -> anyhow::Result<()> {
        anyhow::ensure!(!value.contains('\n'), "a journal value with a newline");
        self.file
            .write_all(format!("{kind} {value}\n").as_bytes())?;
        self.file.sync_data().context(PATH)
    }

    /// The host as it was before this run changed anything.
    pub fn host(&self) -> &HostState {
        &self.host
    }

    /// A directory the run makes (everything mounted under it is unmounted, then it goes).
    pub fn dir(&mut self, dir: &Path) -> anyhow::Result<()> {
        self.record("dir", &dir.display().to_string())
    }

    /// A process the run started (killed if it outlives the run).
    pub fn process(&mut self, pid: u32) -> anyhow::Result<()> {
        let start = start_time(pid).context("the process just started is gone")?;
        self.record("process", &format!("{pid} {start}"))
    }

    /// A process group the run started (the group is killed).
    pub fn group(&mut self, pgid: u32) -> anyhow::Result<()> {
        let start = start_time(pgid).context("the group's leader just started is gone")?;
        self.record("group", &format!("{pgid} {start}"))
    }

    /// A link the run makes.
    pub fn link(&mut self, link: &Path) -> anyhow::Result<()> {
        self.record("link", &link.display().to_string())
    }

    /// A network bridge the run makes.
    pub fn bridge(&mut self, name: &str) -> anyhow::Result<()> {
        self.record("bridge", name)
    }

    /// The run ended: whatever of what it made is still there (it failed half-way) is
    /// removed as after a crash, and the lock goes.
    pub fn close(self) {
        drop(self.file);
        let mut e = parse(&std::fs::read_to_string(PATH).unwrap_or_default());
        e.runner = None;
        recover(&e);
        let _ = std::fs::remove_file(PATH);
    }
}

/// Removes what a dead run's journal names, in the order that lets each step work: its
/// processes first (and everything in the cgroups that hold only its own: the pods', the kubelet's and the runtime's
/// processes), then mounts, directories and links, then the host's kubelet state.
#[allow(clippy::print_stderr)] // the runner's console
fn recover(e: &Entries) {
    for &(pgid, start) in &e.groups {
        if same_process(pgid, start) {
            // SAFETY: kill(2) on the group this journal recorded, its leader checked above.
            unsafe {
                libc::kill(-(pgid as i32), libc::SIGKILL);
            }
        }
    }
    for &(pid, start) in &e.processes {
        if same_process(pid, start) {
            crate::signal(pid, libc::SIGKILL);
        }
    }
    let made = host::cgroups_of_the_run(&e.host);
    let emptied = crate::wait_until(Duration::from_secs(10), || {
        let pids = host::processes_in(&made);
        for &pid in &pids {
            crate::signal(pid, libc::SIGKILL);
        }
        pids.is_empty()
    });
    if !emptied {
        eprintln!("node-e2e: processes of the interrupted run outlived SIGKILL for 10 s");
    }
    for d in &e.dirs {
        crate::unmount_under(d);
        let _ = std::fs::remove_dir_all(d);
    }
    for l in &e.links {
        let _ = std::fs::remove_file(l);
    }
    for b in &e.bridges {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", b])
            .stderr(std::process::Stdio::null())
            .status();
    }
    e.host.restore();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_is_read_back_entry_by_entry() {
        let text = "runner 10 99\nhad-kubelet-root 0\nhad-cgroup /sys/fs/cgroup/memory/system\n\
                    had-log /var/log/pods/x\nhad-netns cni-1\ngroup 12 100\nprocess 13 101\n\
                    dir /var/tmp/w\nlink /run/containerd/containerd.sock\nbridge bt1\n\
                    process 14 not-a-number\nsomething-newer x\ntruncated";
        let e = parse(text);
        assert_eq!(e.runner, Some((10, 99)));
        assert!(!e.host.kubelet_root_existed);
        assert_eq!(
            e.host.cgroups,
            [PathBuf::from("/sys/fs/cgroup/memory/system")]
        );
        assert_eq!(e.host.logs, [PathBuf::from("/var/log/pods/x")]);
        assert_eq!(e.host.netns, ["cni-1"]);
        assert_eq!(e.groups, [(12, 100)]);
        assert_eq!(e.processes, [(13, 101)]);
        assert_eq!(e.dirs, [PathBuf::from("/var/tmp/w")]);
        assert_eq!(e.links, [PathBuf::from("/run/containerd/containerd.sock")]);
        assert_eq!(e.bridges, ["bt1"]);
    }

    #[test]
    fn a_process_is_known_by_its_pid_and_start_time() {
        let me = std::process::id();
        let start = start_time(me).expect("own start time");
        assert!(same_process(me, start));
        assert!(
            !same_process(me, start + 1),
            "a reused pid is another process"
        );
        assert!(!same_process(0, start));
    }
}

//! The OCI runtime binary (runc, crun: the same command line for what the shim needs):
//! `<binary> --root <root>/<namespace> --log <bundle>/log.json --log-format json <command>`.
//! A failed command's error is the last error its JSON log recorded, else what it printed.

use std::ffi::OsString;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::reaper::{Reaper, exit_code};

/// How long one runtime command may run before it is killed: runc and crun answer in
/// milliseconds; one that hangs must not hold a request forever.
const COMMAND_DEADLINE: Duration = Duration::from_secs(120);

/// What a task's runtime is: chosen by its Create options, kept in the bundle so that the
/// `delete` command finds it after the daemon died.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runtime {
    /// The binary, a name looked up in `$PATH` or a path.
    pub binary: String,
    /// The state root, with the namespace.
    pub root: PathBuf,
    /// `--systemd-cgroup`.
    pub systemd_cgroup: bool,
}

/// The file in the bundle that records the task's runtime.
pub const RECORD: &str = "shim-runtime.json";

impl Runtime {
    /// From the runc options a Create carries (`BinaryName`, `Root`, `SystemdCgroup`); the
    /// root defaults to `/run/containerd/<binary name>`, as containerd's runc shim's does for
    /// runc, joined with the namespace.
    pub fn new(binary: &str, root: &str, systemd_cgroup: bool, namespace: &str) -> Runtime {
        let binary = if binary.is_empty() { "runc" } else { binary };
        let name = Path::new(binary)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "runc".into());
        let root = if root.is_empty() {
            PathBuf::from("/run/containerd").join(name)
        } else {
            PathBuf::from(root)
        };
        Runtime {
            binary: binary.to_string(),
            root: root.join(namespace),
            systemd_cgroup,
        }
    }

    /// Saves the record in `bundle`.
    pub fn save(&self, bundle: &Path) -> std::io::Result<()> {
        std::fs::write(
            bundle.join(RECORD),
            serde_json::to_vec(self).unwrap_or_default(),
        )
    }

    /// Whether signals to a task's init process go through the runtime (`<runtime> kill`)
    /// rather than to the pid it wrote: runsc's pid is not the container's process (the
    /// container runs inside the sandbox), so its kill goes through it, as containerd's runc
    /// shim sends every kill. runc and crun write the container's own pid, signalled
    /// directly through a pidfd.
    pub fn signals_through_itself(&self) -> bool {
        Path::new(&self.binary)
            .file_name()
            .is_some_and(|n| n == "runsc")
    }

    /// The record in `bundle`, if there is one.
    pub fn load(bundle: &Path) -> Option<Runtime> {
        serde_json::from_slice(&std::fs::read(bundle.join(RECORD)).ok()?).ok()
    }

    fn command(&self, log: Option<&Path>) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--root").arg(&self.root);
        if let Some(l) = log {
            c.arg("--log").arg(l).arg("--log-format").arg("json");
        }
        if self.systemd_cgroup {
            c.arg("--systemd-cgroup");
        }
        c
    }

    /// Runs `args`; the child's stdio is `io` (its output is then not read) or pipes. Returns
    /// what it printed on stdout.
    pub fn run(
        &self,
        reaper: Option<&Reaper>,
        log: Option<&Path>,
        args: &[OsString],
        io: Option<[Stdio; 3]>,
    ) -> Result<Vec<u8>, String> {
        let mut cmd = self.command(log);
        cmd.args(args);
        match io {
            Some([i, o, e]) => {
                cmd.stdin(i).stdout(o).stderr(e);
            }
            None => {
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
            }
        }
        let log_start = log
            .and_then(|l| std::fs::metadata(l).ok())
            .map_or(0, |m| m.len());
        let what = || {
            format!(
                "{} {}",
                self.binary,
                args.first()
                    .map(|a| a.to_string_lossy())
                    .unwrap_or_default()
            )
        };
        let (status, stdout, stderr) = match reaper {
            Some(r) => {
                let (mut child, rx) = r.spawn(&mut cmd).map_err(|e| format!("{}: {e}", what()))?;
                // Read on threads of their own, so that the deadline holds even when the
                // command hangs with its pipes open.
                let drain = |p: Option<Box<dyn Read + Send>>| {
                    p.map(|p| {
                        std::thread::spawn(move || {
                            let mut v = Vec::new();
                            let _ = p.take(1 << 24).read_to_end(&mut v);
                            v
                        })
                    })
                };
                let out = drain(
                    child
                        .stdout
                        .take()
                        .map(|o| Box::new(o) as Box<dyn Read + Send>),
                );
                let err = drain(
                    child
                        .stderr
                        .take()
                        .map(|e| Box::new(e) as Box<dyn Read + Send>),
                );
                let status = match rx.recv_timeout(COMMAND_DEADLINE) {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = child.kill();
                        return Err(format!(
                            "{}: no answer within {COMMAND_DEADLINE:?}; killed",
                            what()
                        ));
                    }
                };
                let join = |h: Option<std::thread::JoinHandle<Vec<u8>>>| {
                    h.and_then(|h| h.join().ok()).unwrap_or_default()
                };
                let (out, err) = (join(out), join(err));
                (status, out, err)
            }
            None => {
                let out = cmd.output().map_err(|e| format!("{}: {e}", what()))?;
                use std::os::unix::process::ExitStatusExt;
                (out.status.into_raw(), out.stdout, out.stderr)
            }
        };
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            return Ok(stdout);
        }
        let logged = log.and_then(|l| last_error(l, log_start));
        let printed = String::from_utf8_lossy(&stderr).trim().to_string();
        let reason = logged
            .or(Some(printed).filter(|p| !p.is_empty()))
            .unwrap_or_else(|| format!("exit status {}", exit_code(status)));
        Err(format!("{}: {reason}", what()))
    }
}

/// The message of the last `error`-level line the runtime logged after `from`.
fn last_error(log: &Path, from: u64) -> Option<String> {
    #[derive(Deserialize)]
    struct Line {
        level: Option<String>,
        msg: Option<String>,
    }
    let mut f = std::fs::File::open(log).ok()?;
    f.seek(std::io::SeekFrom::Start(from)).ok()?;
    let mut text = String::new();
    // Bounded: a runtime's log of one command is small.
    f.take(1 << 20).read_to_string(&mut text).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Line>(l).ok())
        .find(|l| matches!(l.level.as_deref(), Some("error" | "fatal")))
        .and_then(|l| l.msg)
}

/// Argument list helper.
pub fn args<const N: usize>(a: [&dyn AsRef<std::ffi::OsStr>; N]) -> Vec<OsString> {
    a.iter().map(|x| x.as_ref().to_os_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_containerd_and_the_record_round_trips() {
        let r = Runtime::new("", "", false, "k8s.io");
        assert_eq!(r.binary, "runc");
        assert_eq!(r.root, Path::new("/run/containerd/runc/k8s.io"));
        let c = Runtime::new("/usr/bin/crun", "", true, "n");
        assert_eq!(c.root, Path::new("/run/containerd/crun/n"));
        let o = Runtime::new("crun", "/run/x", false, "n");
        assert_eq!(o.root, Path::new("/run/x/n"));
        let d = tempfile::tempdir().unwrap();
        c.save(d.path()).unwrap();
        assert_eq!(Runtime::load(d.path()), Some(c));
    }

    #[test]
    fn the_last_logged_error_after_the_offset_is_the_reason() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log.json");
        std::fs::write(
            &p,
            "{\"level\":\"error\",\"msg\":\"old\"}\n{\"level\":\"info\",\"msg\":\"x\"}\n",
        )
        .unwrap();
        let from = std::fs::metadata(&p).unwrap().len();
        assert_eq!(last_error(&p, 0).as_deref(), Some("old"));
        assert_eq!(last_error(&p, from), None);
        let mut t = std::fs::read_to_string(&p).unwrap();
        t.push_str("{\"level\":\"error\",\"msg\":\"container not running\"}\nnot json\n");
        std::fs::write(&p, t).unwrap();
        assert_eq!(
            last_error(&p, from).as_deref(),
            Some("container not running")
        );
    }
}

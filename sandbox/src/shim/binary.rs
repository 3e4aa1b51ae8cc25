//! The shim binary: finding it, `start` (it daemonizes and prints its address), its log
//! pipe, `delete` after it died, killing one that does not answer, its socket files, and its
//! CPU priority.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::env::{START_TIMEOUT, ShimEnv};
use crate::error::{Error, Result};

/// Finds a shim binary: an explicit path, else the directory berth itself is in (berth's own
/// shim is installed beside it), else `$PATH`.
pub fn find_shim(binary: &str, explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(Error::ShimNotFound {
                binary: binary.into(),
                searched: p.display().to_string(),
            })
        };
    }
    // Looked up once: every RunPodSandbox resolves its handler's shim.
    static OWN_DIR: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let own_dir = OWN_DIR.get_or_init(|| {
        std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf))
    });
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = own_dir
        .iter()
        .cloned()
        .chain(std::env::split_paths(&path))
        .collect();
    for d in &dirs {
        let p = d.join(binary);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(Error::ShimNotFound {
        binary: binary.into(),
        searched: format!(
            "berth's directory and $PATH ({})",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(":")
        ),
    })
}

fn base_command(binary: &Path, env: &ShimEnv, id: &str, bundle: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(binary);
    cmd.arg("-namespace")
        .arg(&env.namespace)
        .arg("-address")
        .arg(&env.grpc_address)
        .arg("-publish-binary")
        .arg(&env.publish_binary)
        .arg("-id")
        .arg(id)
        .current_dir(bundle)
        .env("TTRPC_ADDRESS", &env.ttrpc_address)
        .env("GRPC_ADDRESS", &env.grpc_address)
        .env("NAMESPACE", &env.namespace)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Forwards what a shim writes to its `log` fifo into berth's log; stops when dropped.
#[derive(Debug)]
pub struct ShimLog(tokio::task::AbortHandle);

impl Drop for ShimLog {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Opens (creating it if needed) the `log` fifo in `bundle` that a shim writes its own log to,
/// as containerd does; a shim that cannot open it exits at once.
pub fn open_log(bundle: &Path, id: &str) -> Result<ShimLog> {
    use tokio::io::AsyncBufReadExt;
    let path = bundle.join("log");
    match rustix::fs::mknodat(
        rustix::fs::CWD,
        &path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o700),
        0,
    ) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(Error::io(format!("create {}", path.display()), e.into())),
    }
    // Read-write, so that the reader never sees EOF between one shim writer and the next.
    let rx = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&path)
        .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    let id = id.to_string();
    let task = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(rx).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::debug!(target: "berth::shim", id, "{line}");
        }
    });
    Ok(ShimLog(task.abort_handle()))
}

/// How a shim started ahead of need runs until it is given work: at the lowest CPU priority,
/// so that starting it never slows the pods being created meanwhile. [`foreground`] gives it
/// berth's own priority back.
pub(crate) const BACKGROUND_NICE: i32 = 19;

/// Runs `<shim> start` for task `id` in `bundle` and returns the shim's ttrpc address.
/// `options` (a protobuf `Any`, e.g. runc options) go to the shim's stdin. Open the bundle's
/// log fifo with [`open_log`] first. A `background` shim (a spare) runs at the lowest CPU
/// priority, as does the shim daemon it forks, until [`foreground`].
pub async fn start(
    binary: &Path,
    env: &ShimEnv,
    id: &str,
    bundle: &Path,
    options: &[u8],
    background: bool,
) -> Result<String> {
    let shown = binary.display().to_string();
    let mut cmd = base_command(binary, env, id, bundle);
    cmd.arg("start");
    // No pre_exec hook: with none, the process is spawned with vfork semantics (no copy of
    // berth's page tables, and the wait for its exec is short, not at the lowest priority).
    let mut child = cmd.spawn().map_err(|e| Error::ShimStart {
        binary: shown.clone(),
        reason: e.to_string(),
    })?;
    if background && let Some(pid) = child.id() {
        // At once, before the Go runtime starts its threads (they inherit the niceness of
        // the thread that makes them); `background` sweeps up any it missed.
        let _ = rustix::process::setpriority_process(
            rustix::process::Pid::from_raw(pid as i32),
            BACKGROUND_NICE,
        );
    }
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(options)
            .await
            .map_err(|e| Error::ShimStart {
                binary: shown.clone(),
                reason: format!("write options: {e}"),
            })?;
    }
    let out = tokio::time::timeout(START_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| Error::ShimStart {
            binary: shown.clone(),
            reason: format!("no answer within {START_TIMEOUT:?}"),
        })?
        .map_err(|e| Error::ShimStart {
            binary: shown.clone(),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(Error::ShimStart {
            binary: shown,
            reason: if stderr.is_empty() {
                format!("exited with {}", out.status)
            } else {
                stderr
            },
        });
    }
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let address = parse_start_output(&shown, &stdout)?;
    std::fs::write(bundle.join("address"), &address)
        .map_err(|e| Error::io(format!("write {}/address", bundle.display()), e))?;
    Ok(address)
}

/// Kills the daemon of shim `id` that berth cannot talk to, found by its command line
/// (`-namespace <ns>` and `-id <id>`, as [`start`] gave them; ids are unique random hex), and
/// removes its socket. The kill goes through a pidfd, so a recycled pid is never hit. The
/// /proc scan and the wait for the exit run on a blocking thread.
pub async fn kill_unreachable(env: &ShimEnv, id: &str, address: &str) {
    let (namespace, id, address) = (env.namespace.clone(), id.to_string(), address.to_string());
    let _ = tokio::task::spawn_blocking(move || kill_daemons(&namespace, &id, &address)).await;
}

fn kill_daemons(namespace: &str, id: &str, address: &str) {
    for pid in daemons_of(namespace, id) {
        // Checked again once the pidfd is open: still the same shim? Until it is gone its
        // socket may still accept connections, so the kill is waited for.
        if crate::process::kill_checked(
            pid,
            || daemons_of(namespace, id).contains(&pid),
            Duration::from_secs(2),
        ) {
            tracing::warn!(id, pid, "killed a shim berth could not connect to");
        }
    }
    remove_dead_socket(address);
}

/// The pids of shim daemons started for task `id` in `namespace`.
fn daemons_of(namespace: &str, id: &str) -> Vec<i32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let has = |flag: &str, value: &str| {
                args.windows(2)
                    .any(|w| w[0] == flag.as_bytes() && w[1] == value.as_bytes())
            };
            has("-id", id)
                && has("-namespace", namespace)
                && !args.iter().any(|a| *a == b"start" || *a == b"delete")
        })
        .collect()
}

/// Removes the socket file a shim listened on at `address` (`unix://<path>`), if nothing
/// listens there any more: a shim that dies, or is killed, leaves it behind.
pub fn remove_dead_socket(address: &str) {
    use std::os::unix::fs::FileTypeExt;
    let Some(path) = address.strip_prefix("unix://") else {
        return;
    };
    let path = Path::new(path);
    let is_socket = std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false);
    if is_socket
        && matches!(
            std::os::unix::net::UnixStream::connect(path),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
        )
    {
        let _ = std::fs::remove_file(path);
    }
}

/// How long after Shutdown berth watches for a shim's socket to close.
pub const SOCKET_LINGER: Duration = Duration::from_secs(5);

/// After a shim's Shutdown: the shim removes its socket as it exits, but Debian's 1.6 runc
/// shim does so in a shutdown callback that its exit can outrun (about one pod in a hundred
/// under critest), leaving a socket nothing listens on. Waits up to `within` for the socket
/// to stop answering, then removes it; one that is already gone is left so.
pub async fn remove_socket_when_closed(address: String, within: Duration) {
    let Some(path) = address.strip_prefix("unix://").map(PathBuf::from) else {
        return;
    };
    let deadline = tokio::time::Instant::now() + within;
    while std::fs::symlink_metadata(&path).is_ok() {
        remove_dead_socket(&address);
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Interprets what `<shim> start` printed.
pub fn parse_start_output(binary: &str, stdout: &str) -> Result<String> {
    if stdout.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(stdout).map_err(|e| Error::ShimStart {
            binary: binary.into(),
            reason: format!("unparsable bootstrap {stdout:?}: {e}"),
        })?;
        let version = v.get("version").map(|v| v.to_string()).unwrap_or_default();
        return Err(Error::UnsupportedShim {
            binary: binary.into(),
            version: format!("v{version}"),
        });
    }
    if stdout.starts_with("unix://") && stdout.len() > 7 && !stdout.contains(char::is_whitespace) {
        return Ok(stdout.to_string());
    }
    Err(Error::ShimStart {
        binary: binary.into(),
        reason: format!("unexpected output {stdout:?} (want unix://…)"),
    })
}

/// Runs `<shim> -bundle <bundle> delete` for a task whose shim is gone: the shim binary
/// cleans up what its runtime left (runc state, mounts) and reports the exit. The dead shim's
/// socket (named in the bundle's `address`, when the task had a shim of its own) goes too.
pub async fn delete_dead(binary: &Path, env: &ShimEnv, id: &str, bundle: &Path) -> Result<()> {
    if let Ok(address) = std::fs::read_to_string(bundle.join("address")) {
        remove_dead_socket(address.trim());
    }
    // The 1.6 runc shim finds the task's files at `dirname($PWD)/<id>` (containerd's layout,
    // where the bundle directory is named after the task). berth's bundles are not, so it
    // runs the shim from a link named `<id>` to the bundle, and says so in $PWD (which Go's
    // os.Getwd trusts when it names the same directory).
    let parent = bundle.parent().unwrap_or(bundle);
    let links = parent.join(".shim-delete");
    let link = links.join(id);
    let _ = std::fs::remove_dir_all(&links);
    std::fs::create_dir_all(&links).map_err(|e| Error::io("create shim-delete dir", e))?;
    std::os::unix::fs::symlink(bundle, &link)
        .map_err(|e| Error::io(format!("link {}", link.display()), e))?;
    // Bounded: a shim binary that hangs is killed (kill_on_drop) when the wait gives up.
    let out = tokio::time::timeout(
        START_TIMEOUT,
        base_command(binary, env, id, bundle)
            .current_dir(&link)
            .env("PWD", &link)
            .arg("-bundle")
            .arg(bundle)
            .arg("delete")
            .output(),
    )
    .await;
    let _ = std::fs::remove_dir_all(&links);
    let out = out
        .map_err(|_| {
            Error::Timeout(format!(
                "{} delete of {id}: no answer within {START_TIMEOUT:?}",
                binary.display()
            ))
        })?
        .map_err(|e| Error::io(format!("run {} delete", binary.display()), e))?;
    if !out.status.success() {
        return Err(Error::Task {
            call: "delete (shim binary)",
            id: id.into(),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            not_found: false,
            gone: false,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_output() {
        assert_eq!(
            parse_start_output("s", "unix:///run/containerd/s/abc").unwrap(),
            "unix:///run/containerd/s/abc"
        );
        assert!(matches!(
            parse_start_output(
                "s",
                r#"{"version":3,"address":"unix:///x","protocol":"ttrpc"}"#
            ),
            Err(Error::UnsupportedShim { .. })
        ));
        assert!(parse_start_output("s", "").is_err());
        assert!(parse_start_output("s", "tcp://1.2.3.4:5").is_err());
        assert!(parse_start_output("s", "unix:///a b").is_err());
    }

    #[test]
    fn missing_shim_names_the_binary_and_where_berth_looked() {
        let e = find_shim("containerd-shim-kata-v2", None).unwrap_err();
        assert!(
            e.to_string().contains("containerd-shim-kata-v2") && e.to_string().contains("$PATH"),
            "{e}"
        );
        let e = find_shim("x", Some(Path::new("/opt/nope/x"))).unwrap_err();
        assert!(e.to_string().contains("/opt/nope/x"));
        assert_eq!(e.kind(), crate::ErrorKind::FailedPrecondition);
    }
}

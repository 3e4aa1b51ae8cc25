//! `start`: finds the daemon serving the task's pod, or starts one, and prints its address.
//!
//! The socket is named after the caller's socket, the namespace and the pod (containerd's
//! grouping by the `io.kubernetes.cri.sandbox-id` annotation), so the containers of a pod
//! started through `start` land in one shim. It lives in an `s/` directory beside the
//! caller's socket. The listening socket is made here and handed to the daemon as fd 3, so
//! the address printed is already being listened on when this process exits.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::args::Args;

/// The annotation that groups a pod's containers into one shim.
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

pub fn run(args: &Args) -> Result<(), String> {
    // The options berth writes to stdin are read again from each Create request.
    let mut ignored = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut ignored);
    let bundle = std::env::current_dir().map_err(|e| format!("working directory: {e}"))?;
    let group = grouping(&bundle).unwrap_or_else(|| args.id.clone());
    let path = socket_path(&args.address, &args.namespace, &group);
    let address = format!("unix://{}", path.display());
    let listener = match listen(&path)? {
        Some(l) => l,
        None => {
            // A live shim already serves this pod.
            return print(&address);
        }
    };
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let fd = listener.as_raw_fd();
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args.daemon_args())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: between fork and exec only async-signal-safe calls (setsid, dup2, fcntl).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if fd == 3 {
                // dup2 onto itself keeps close-on-exec: clear it.
                if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    if let Err(e) = cmd.spawn() {
        let _ = std::fs::remove_file(&path);
        return Err(format!("start the shim daemon: {e}"));
    }
    print(&address)
}

fn print(address: &str) -> Result<(), String> {
    let mut out = std::io::stdout();
    out.write_all(address.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| format!("print the address: {e}"))
}

/// The pod a task belongs to, from the bundle's spec annotations.
fn grouping(bundle: &Path) -> Option<String> {
    let text = std::fs::read(bundle.join("config.json")).ok()?;
    let spec: serde_json::Value = serde_json::from_slice(&text).ok()?;
    spec.get("annotations")?
        .get(SANDBOX_ID)?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(String::from)
}

/// `<dir of the caller's socket>/s/<sha256(address, namespace, group)>`.
pub fn socket_path(address: &str, namespace: &str, group: &str) -> PathBuf {
    let address = address.strip_prefix("unix://").unwrap_or(address);
    let dir = Path::new(address)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("/run/berth"));
    let digest = sha2::Sha256::digest(format!("{address}\0{namespace}\0{group}"));
    // A socket path must fit in sun_path (108 bytes): a deep caller directory gets a
    // shorter name.
    let mut name = hex::encode(digest);
    let room = 107usize.saturating_sub(dir.as_os_str().len() + 3);
    name.truncate(room.clamp(16, 64));
    dir.join("s").join(name)
}

/// Listens on `path`; `None` when a live shim already listens there. A stale socket (its
/// shim died) is replaced.
fn listen(path: &Path) -> Result<Option<UnixListener>, String> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    // Only root reaches a shim: the task API runs containers.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("create {}: {e}", dir.display()))?;
    for _ in 0..2 {
        match UnixListener::bind(path) {
            Ok(l) => return Ok(Some(l)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if UnixStream::connect(path).is_ok() {
                    return Ok(None);
                }
                let _ = std::fs::remove_file(path);
            }
            Err(e) => return Err(format!("listen on {}: {e}", path.display())),
        }
    }
    Err(format!(
        "listen on {}: a stale socket keeps coming back",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_names_group_by_pod_and_fit_in_sun_path() {
        let a = socket_path("/run/berth/berth.sock", "k8s.io", "pod1");
        assert!(a.starts_with("/run/berth/s/"));
        assert_eq!(a, socket_path("/run/berth/berth.sock", "k8s.io", "pod1"));
        assert_ne!(a, socket_path("/run/berth/berth.sock", "k8s.io", "pod2"));
        assert_ne!(a, socket_path("/run/berth/berth.sock", "other", "pod1"));
        assert_eq!(
            a,
            socket_path("unix:///run/berth/berth.sock", "k8s.io", "pod1")
        );
        let deep = format!("/{}/berth.sock", "d".repeat(80));
        assert!(socket_path(&deep, "n", "p").as_os_str().len() <= 107);
    }

    #[test]
    fn a_live_socket_is_reused_and_a_stale_one_replaced() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s").join("x");
        let l = listen(&p).unwrap().expect("first listener");
        assert!(listen(&p).unwrap().is_none(), "a live shim is found");
        drop(l);
        assert!(listen(&p).unwrap().is_some(), "a stale socket is replaced");
    }

    #[test]
    fn grouping_reads_the_sandbox_annotation() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(grouping(d.path()), None);
        std::fs::write(
            d.path().join("config.json"),
            r#"{"annotations":{"io.kubernetes.cri.sandbox-id":"pod9"}}"#,
        )
        .unwrap();
        assert_eq!(grouping(d.path()).as_deref(), Some("pod9"));
    }
}

//! Running gVisor's `runsc` behind containerd's runc shim.
//!
//! The runc shim drives its engine the runc way, and for a pod's *second and later*
//! containers runsc differs from runc in two ways that lose the container's output and exit:
//! - `runsc start` hands the sandbox its *own* stdio as the container's, where runc gave the
//!   container the stdio of `runc create`; the shim runs `start` with a pipe it reads to the
//!   end, which the container (and the gofer) then hold open: `Start` never returns.
//! - the pid `runsc create` writes is the sandbox's, so the shim, which learns of exits by
//!   reaping that pid, hears of the container's exit only when the whole pod ends.
//!
//! So berth puts itself between the shim and runsc: the handler's `BinaryName` becomes a
//! link named `runsc` to the berth binary, next to an `engine.json` naming the real runsc
//! and the flags to add. Invoked that way, berth ([`main`]) passes every command through,
//! except for containers with berth's stdio fifos:
//! - `create`: after runsc's create, starts a *waiter* (berth again) that holds the
//!   container's output fifos open, waits for the container with `runsc wait`, and exits with
//!   its exit code; its pid replaces the sandbox's in the pid file. The waiter outlives the
//!   wrapper, so the shim (a child subreaper) reaps it: that is the container's exit.
//! - `start`: runs `runsc start` with the container's fifos as its stdio. (berth gives the
//!   shim no stdin for such containers, so that the sandbox alone reads that fifo.)

use std::fs::File;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

/// The name berth answers to as a runsc wrapper.
pub const WRAPPER_NAME: &str = "runsc";
/// The file beside the link naming the real engine.
pub const ENGINE_FILE: &str = "engine.json";
/// The first argument that makes berth the waiter.
pub const WAITER_ARG: &str = "__berth_runsc_wait";

/// What the wrapper runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Engine {
    /// The real runsc.
    pub binary: PathBuf,
    /// Global flags put before the shim's (e.g. `--network=host`).
    pub args: Vec<String>,
}

/// Sets up `dir/runsc` (a link to `berth`) and `dir/engine.json`; returns the link, which is
/// the `BinaryName` to give the shim.
pub fn install_wrapper(dir: &Path, berth: &Path, engine: &Engine) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let link = dir.join(WRAPPER_NAME);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(berth, &link)?;
    let tmp = dir.join(format!("{ENGINE_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(engine).unwrap_or_default())?;
    std::fs::rename(&tmp, dir.join(ENGINE_FILE))?;
    Ok(link)
}

/// Whether a shim's engine `binary` is the adapter's link (the shim then runs runsc
/// through berth).
pub fn is_adapter(binary: &str) -> bool {
    Path::new(binary)
        .file_name()
        .is_some_and(|n| n == WRAPPER_NAME)
}

/// Whether this process was invoked as the wrapper (through a `runsc` link with an
/// `engine.json` beside it).
pub fn invoked_as_wrapper(argv0: &Path) -> bool {
    argv0.file_name().is_some_and(|n| n == WRAPPER_NAME)
        && argv0
            .parent()
            .is_some_and(|d| d.join(ENGINE_FILE).is_file())
}

const SUBCOMMANDS: [&str; 13] = [
    "create",
    "start",
    "delete",
    "kill",
    "state",
    "exec",
    "ps",
    "update",
    "pause",
    "resume",
    "events",
    "wait",
    "checkpoint",
];

fn is_fifo(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_fifo())
}

fn fail(msg: &str) -> ! {
    // The shim shows runsc's stderr in its error.
    #[allow(clippy::print_stderr)]
    {
        eprintln!("berth runsc wrapper: {msg}");
    }
    std::process::exit(1)
}

/// The wrapper's entry point: never returns.
pub fn main(argv0: &Path, args: Vec<String>) -> ! {
    let dir = argv0.parent().unwrap_or(Path::new("/"));
    let engine: Engine = match std::fs::read(dir.join(ENGINE_FILE))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(e) => e,
        Err(e) => fail(&format!("{}: {e}", dir.join(ENGINE_FILE).display())),
    };
    if args.first().map(String::as_str) == Some(WAITER_ARG) {
        waiter(&engine, &args[1..]);
    }
    let idx = args
        .iter()
        .position(|a| SUBCOMMANDS.contains(&a.as_str()))
        .unwrap_or(args.len());
    let (globals, rest) = args.split_at(idx);
    let sub = rest.first().map(String::as_str).unwrap_or("");
    let id = args.last().cloned().unwrap_or_default();
    // The container's directory: the parent of the bundle the log file sits in.
    let ctr_dir = globals
        .iter()
        .position(|a| a == "--log")
        .and_then(|i| globals.get(i + 1))
        .and_then(|log| Path::new(log).parent()?.parent().map(Path::to_path_buf));
    let fifos = ctr_dir.filter(|d| is_fifo(&d.join("stdout")));
    let mut real = Command::new(&engine.binary);
    real.args(&engine.args).args(&args);
    match (sub, fifos) {
        ("create", Some(dir)) => create(&engine, real, globals, rest, &id, &dir),
        ("start", Some(dir)) => {
            let open = |p: &Path, write: bool| {
                std::fs::OpenOptions::new()
                    .read(!write)
                    .write(write)
                    .open(p)
                    .unwrap_or_else(|e| fail(&format!("open {}: {e}", p.display())))
            };
            let stdin = if is_fifo(&dir.join("stdin")) {
                Stdio::from(open(&dir.join("stdin"), false))
            } else {
                Stdio::null()
            };
            let out = open(&dir.join("stdout"), true);
            let err = if is_fifo(&dir.join("stderr")) {
                open(&dir.join("stderr"), true)
            } else {
                out.try_clone()
                    .unwrap_or_else(|e| fail(&format!("dup stdout: {e}")))
            };
            let e = real.stdin(stdin).stdout(out).stderr(err).exec();
            fail(&format!("exec {}: {e}", engine.binary.display()))
        }
        _ => {
            let e = real.exec();
            fail(&format!("exec {}: {e}", engine.binary.display()))
        }
    }
}

fn create(
    engine: &Engine,
    mut real: Command,
    globals: &[String],
    rest: &[String],
    id: &str,
    dir: &Path,
) -> ! {
    let pid_file = rest
        .iter()
        .position(|a| a == "--pid-file")
        .and_then(|i| rest.get(i + 1))
        .map(PathBuf::from);
    // The output fifos, opened before runsc runs: the shim closes its own writers once
    // `create` returns, and berth's reader must not see end-of-file in between.
    let open = |name: &str| -> Option<File> {
        let p = dir.join(name);
        is_fifo(&p).then(|| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .unwrap_or_else(|e| fail(&format!("open {}: {e}", p.display())))
        })
    };
    let out = open("stdout");
    let err = open("stderr");
    match real.status() {
        Ok(s) if s.success() => {}
        Ok(s) => std::process::exit(s.code().unwrap_or(1)),
        Err(e) => fail(&format!("run {}: {e}", engine.binary.display())),
    }
    let Some(pid_file) = pid_file else {
        std::process::exit(0)
    };
    // From here a failure fails the shim's Create, which then forgets the container: runsc's
    // own must go too, or its sandbox would outlive the pod.
    let undo = |msg: String| -> ! {
        let _ = Command::new(&engine.binary)
            .args(&engine.args)
            .args(globals)
            .args(["delete", "--force", id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        fail(&msg)
    };
    let me = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(WRAPPER_NAME));
    let mut waiter = Command::new(me);
    waiter
        .arg(WAITER_ARG)
        .arg(id)
        .args(globals)
        .stdin(Stdio::null())
        .stdout(out.map(Stdio::from).unwrap_or_else(Stdio::null))
        .stderr(err.map(Stdio::from).unwrap_or_else(Stdio::null));
    let mut child = waiter
        .spawn()
        .unwrap_or_else(|e| undo(format!("start the waiter: {e}")));
    if let Err(e) = std::fs::write(&pid_file, child.id().to_string()) {
        let _ = child.kill();
        let _ = child.wait();
        undo(format!("write {}: {e}", pid_file.display()));
    }
    // Not waited for: it is the container's stand-in, reaped by the shim.
    drop(child);
    std::process::exit(0)
}

/// `__berth_runsc_wait <id> <global flags…>`: waits until container `id` ran and exited;
/// exits with its exit code. Its stdout and stderr are the container's fifos: it writes
/// nothing to them.
fn waiter(engine: &Engine, args: &[String]) -> ! {
    let Some((id, globals)) = args.split_first() else {
        std::process::exit(255)
    };
    let run = |sub: &str| {
        Command::new(&engine.binary)
            .args(&engine.args)
            .args(globals)
            .arg(sub)
            .arg(id)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
    };
    // `runsc wait` on a container not started yet fails: wait for the start first.
    loop {
        let state = run("state")
            .ok()
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok());
        match state.as_ref().and_then(|s| s["status"].as_str()) {
            Some("created") => std::thread::sleep(std::time::Duration::from_millis(50)),
            Some(_) => break,
            None => std::process::exit(255),
        }
    }
    let code = run("wait")
        .ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .and_then(|v| v["exitStatus"].as_i64())
        .unwrap_or(255);
    std::process::exit(code.clamp(0, 255) as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wrapper_is_a_link_with_its_engine_beside_it() {
        let d = tempfile::tempdir().unwrap();
        let engine = Engine {
            binary: "/usr/bin/runsc".into(),
            args: vec!["--network=host".into()],
        };
        let link = install_wrapper(d.path(), Path::new("/bin/true"), &engine).unwrap();
        assert!(invoked_as_wrapper(&link));
        assert!(!invoked_as_wrapper(Path::new("/usr/bin/runsc")));
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("/bin/true"));
        let back: Engine =
            serde_json::from_slice(&std::fs::read(d.path().join(ENGINE_FILE)).unwrap()).unwrap();
        assert_eq!(back, engine);
        // Again: replaced, not an error.
        install_wrapper(d.path(), Path::new("/bin/true"), &engine).unwrap();
    }
}

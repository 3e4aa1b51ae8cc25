//! ExecSync and the streaming server's exec: a process run in the container through its
//! shim, with its output collected or streamed.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::logs::{mkfifo, open_fifo_reader};
use crate::runtime::Runtime;

use crate::shim::SIGKILL;
/// How long a failed exec start waits to see whether the container exited meanwhile.
const EXIT_GRACE: Duration = Duration::from_millis(250);

/// Opens the write side of an exec's stdin fifo once the shim reads it (containerd's runc
/// shim opens its side in the background, after Start has answered), waiting 10 s at most.
/// A side opened read-write before that would make berth the fifo's only reader: what it
/// wrote would go with the pipe if it closed its end (a short stdin, then end-of-file)
/// before the shim opened its own, and the process would wait for input forever.
async fn open_writer_once_read(path: &std::path::Path) -> Option<tokio::net::unix::pipe::Sender> {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::unix::pipe::OpenOptions::new().open_sender(path) {
            Ok(w) => return Some(w),
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) && std::time::Instant::now() < end => {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(e) => {
                tracing::warn!(fifo = %path.display(), err = %e, "exec stdin: the shim never opened it");
                return None;
            }
        }
    }
}

/// What ExecSync returns.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    /// stdout.
    pub stdout: Vec<u8>,
    /// stderr.
    pub stderr: Vec<u8>,
    /// Exit code.
    pub exit_code: i32,
}

/// Most output ExecSync keeps of each stream: both together, with the reply's framing, stay
/// under the 16 MiB a gRPC message may carry to the kubelet, so a chatty command still gets
/// its answer (the start of each stream) instead of failing the call. The rest is read and
/// dropped, so the process never blocks on a full pipe.
pub const EXEC_OUTPUT_LIMIT: usize = (16 * 1024 * 1024 - 4096) / 2;

impl Runtime {
    /// ExecSync: runs `cmd` in the container, returns its output (each stream cut at
    /// [`EXEC_OUTPUT_LIMIT`]) and exit code; after `timeout` (zero: none) the process is
    /// killed and the call fails. When `caller_gone` is cancelled (the client went away) the
    /// process is killed too, timeout or not. The streaming exec with no stdin and no client.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
        caller_gone: tokio_util::sync::CancellationToken,
    ) -> Result<ExecOutput> {
        let collect = |mut rx: tokio::sync::mpsc::Receiver<bytes::Bytes>| {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                // Read to the end, keeping the first EXEC_OUTPUT_LIMIT bytes: the process
                // never blocks on a full pipe.
                while let Some(b) = rx.recv().await {
                    let room = EXEC_OUTPUT_LIMIT.saturating_sub(buf.len());
                    buf.extend_from_slice(&b[..b.len().min(room)]);
                }
                buf
            })
        };
        let (out_tx, out_rx) = tokio::sync::mpsc::channel(16);
        let (err_tx, err_rx) = tokio::sync::mpsc::channel(16);
        let (out_t, err_t) = (collect(out_rx), collect(err_rx));
        let stop = caller_gone.child_token();
        let timer = (!timeout.is_zero()).then(|| {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                stop.cancel();
            })
        });
        let io = berth_stream::Io {
            stdin: None,
            stdout: Some(out_tx),
            stderr: Some(err_tx),
            tty: false,
            resize: None,
            disconnected: stop.clone(),
        };
        let res = self.exec_stream(id, cmd.clone(), io).await;
        if let Some(t) = timer {
            t.abort();
        }
        let (stdout, stderr) = (
            out_t.await.unwrap_or_default(),
            err_t.await.unwrap_or_default(),
        );
        if caller_gone.is_cancelled() {
            return Err(Error::Timeout(format!(
                "command {cmd:?} in container {id} was killed: its caller went away"
            )));
        }
        if stop.is_cancelled() {
            return Err(Error::Timeout(format!(
                "command {cmd:?} in container {id} timed out after {timeout:?}"
            )));
        }
        Ok(ExecOutput {
            stdout,
            stderr,
            exit_code: res? as i32,
        })
    }

    /// Exec with a client attached (the streaming server's `/exec`): runs `cmd` with the
    /// session's stdio (a terminal when `io.tty`), passes resizes on, and returns the exit
    /// code once the process exited and its output was delivered. A client that goes away
    /// kills the process.
    pub async fn exec_stream(
        &self,
        id: &str,
        cmd: Vec<String>,
        io: berth_stream::Io,
    ) -> Result<u32> {
        let id = self.resolve_container(id)?;
        let rec = self.container(&id)?;
        if !rec.state.can_exec() {
            return Err(Error::Precondition(format!(
                "container {id} is not running; exec needs a running container"
            )));
        }
        if cmd.is_empty() {
            return Err(Error::Invalid("exec command is empty".into()));
        }
        let s = self.shim_of(&rec.pod_id).ok_or_else(|| {
            Error::Precondition(format!("the pod of container {id} has no running shim"))
        })?;
        let berth_stream::Io {
            stdin,
            stdout,
            stderr,
            tty,
            resize,
            disconnected,
        } = io;
        let exec_id = hex::encode(rand::random::<[u8; 8]>());
        let dir = self.ctr_dir(&id).join("exec");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create exec dir", e))?;
        let path = |name: &str, on: bool| on.then(|| dir.join(format!("{exec_id}-{name}")));
        let in_p = path("stdin", stdin.is_some());
        let out_p = path("stdout", stdout.is_some());
        let err_p = path("stderr", stderr.is_some() && !tty);
        let paths: Vec<PathBuf> = [&in_p, &out_p, &err_p]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let cleanup = || {
            for p in &paths {
                let _ = std::fs::remove_file(p);
            }
        };
        let res = async {
            for p in &paths {
                mkfifo(p)?;
            }
            let out_rx = out_p.as_deref().map(open_fifo_reader).transpose()?;
            let err_rx = err_p.as_deref().map(open_fifo_reader).transpose()?;
            // The container's own process settings (user, env, capabilities, cwd) with the
            // exec's argv and terminal.
            let mut process = rec
                .spec
                .as_ref()
                .and_then(|s| s.process.clone())
                .ok_or_else(|| Error::Precondition(format!("container {id} has no spec")))?;
            process.args = cmd;
            process.terminal = tty;
            let show = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
            let stdio = [show(&in_p), show(&out_p), show(&err_p)];
            // The container may exit while the exec is being set up (a probe racing the kill
            // of a restart): that is said as the check above would have said it. Its shim may
            // learn of the exit a moment after the runtime did.
            let not_running_now = |e: Error| async {
                match tokio::time::timeout(EXIT_GRACE, s.wait(&id)).await {
                    Ok(Ok(_)) => Error::Precondition(format!(
                        "container {id} is not running; it exited while the exec started"
                    )),
                    _ => e,
                }
            };
            let permit = s.exec_permit().await;
            if let Err(e) = s
                .exec(&id, &exec_id, &process, [&stdio[0], &stdio[1], &stdio[2]], tty)
                .await
            {
                return Err(not_running_now(e).await);
            }
            let pump = |rx: Option<tokio::net::unix::pipe::Receiver>,
                        tx: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>| {
                let (Some(mut rx), Some(tx)) = (rx, tx) else {
                    return None;
                };
                Some(tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let mut buf = vec![0u8; 32 * 1024];
                    while let Ok(n) = rx.read(&mut buf).await {
                        if n == 0 || tx.send(bytes::Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                            break;
                        }
                    }
                }))
            };
            let outputs: Vec<_> = [pump(out_rx, stdout), pump(err_rx, stderr)]
                .into_iter()
                .flatten()
                .collect();
            let started = s.start_process(&id, &exec_id).await;
            drop(permit);
            if let Err(e) = started {
                let _ = s.delete_process(&id, &exec_id).await;
                outputs.iter().for_each(|t| t.abort());
                return Err(not_running_now(e).await);
            }
            let feeder = match (stdin, in_p.clone()) {
                (Some(mut rx), Some(in_p)) => {
                    let (s, id, exec_id) = (s.clone(), id.clone(), exec_id.clone());
                    Some(tokio::spawn(async move {
                        use tokio::io::AsyncWriteExt;
                        let Some(mut w) = open_writer_once_read(&in_p).await else {
                            return;
                        };
                        while let Some(b) = rx.recv().await {
                            if w.write_all(&b).await.is_err() {
                                break;
                            }
                        }
                        if tty {
                            // A terminal's end is a hangup, not end-of-file: keep it open
                            // (as containerd does) until the process exits.
                            std::future::pending::<()>().await;
                        }
                        drop(w);
                        // End-of-file for the process, through the shim's copy.
                        let _ = s.close_stdin(&id, &exec_id).await;
                    }))
                }
                _ => None,
            };
            let resizer = resize.filter(|_| tty).map(|mut rx| {
                let (s, id, exec_id) = (s.clone(), id.clone(), exec_id.clone());
                tokio::spawn(async move {
                    while let Some(sz) = rx.recv().await {
                        if let Err(e) = s
                            .resize_pty(&id, &exec_id, u32::from(sz.width), u32::from(sz.height))
                            .await
                        {
                            tracing::debug!(container = id, err = %e, "resize exec terminal");
                        }
                    }
                })
            });
            let waited = tokio::select! {
                r = s.wait_process(&id, &exec_id) => r,
                _ = disconnected.cancelled() => {
                    tracing::info!(container = id, exec_id, "exec cancelled (its client went away, or its time is up); killing the process");
                    let _ = s.kill_process(&id, &exec_id, SIGKILL, false).await;
                    tokio::time::timeout(Duration::from_secs(10), s.wait_process(&id, &exec_id))
                        .await
                        .unwrap_or_else(|_| Err(Error::Timeout("exec process did not die".into())))
                }
            };
            for t in feeder.iter().chain(resizer.iter()) {
                t.abort();
            }
            // The output ends once the shim has copied the last of it; a background child
            // that inherited it could hold it open, so the wait is bounded.
            for t in outputs {
                let abort = t.abort_handle();
                if tokio::time::timeout(Duration::from_secs(2), t).await.is_err() {
                    abort.abort();
                }
            }
            let _ = s.delete_process(&id, &exec_id).await;
            waited
        }
        .await;
        cleanup();
        res.map_err(|e| {
            if e.shim_gone() {
                // The connection's own words ("early eof") say nothing to an operator.
                Error::Precondition(format!(
                    "container {id} is not running: its shim died during the exec ({e})"
                ))
            } else {
                e
            }
        })
    }
}

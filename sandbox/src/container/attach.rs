//! Attach: a streaming session connected to the container's own stdio.

use crate::error::{Error, Result};
use crate::runtime::Runtime;

impl Runtime {
    /// Attach (the streaming server's `/attach`): connects the session to the container's
    /// own stdio until the container's output ends, the client closes its stdin (closing
    /// the container's stdin too when `stdin_once`), or the client goes away.
    pub async fn attach(&self, id: &str, io: berth_stream::Io) -> Result<()> {
        let id = self.resolve_container(id)?;
        let rec = self.container(&id)?;
        if !rec.state.can_exec() {
            return Err(Error::Precondition(format!(
                "container {id} is not running; attach needs a running container"
            )));
        }
        let points = self
            .container_logs()
            .get(&id)
            .map(|l| l.stdio.clone())
            .ok_or_else(|| {
                Error::Precondition(format!("container {id} has no output to attach to"))
            })?;
        let berth_stream::Io {
            stdin,
            stdout,
            stderr,
            resize,
            disconnected,
            ..
        } = io;
        let tty = rec.config.tty;
        let follow = |rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
                      tx: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>| {
            let mut rx = rx;
            tokio::spawn(async move {
                while let Some(b) = rx.recv().await {
                    // Output the client did not ask for is read and dropped.
                    if let Some(tx) = &tx
                        && tx.send(b).await.is_err()
                    {
                        return;
                    }
                }
            })
        };
        let out = follow(points.stdout.subscribe(), stdout);
        let err = follow(points.stderr.subscribe(), stderr.filter(|_| !tty));
        let resizer = resize.filter(|_| tty).and_then(|mut rx| {
            let s = self.shim_of(&rec.pod_id)?;
            let id = id.clone();
            Some(tokio::spawn(async move {
                while let Some(sz) = rx.recv().await {
                    let _ = s
                        .resize_pty(&id, "", u32::from(sz.width), u32::from(sz.height))
                        .await;
                }
            }))
        });
        let stdin_once = rec.config.stdin_once;
        let feed = async {
            let Some(mut rx) = stdin else {
                return std::future::pending::<()>().await;
            };
            while let Some(b) = rx.recv().await {
                if !points.write_stdin(&b).await {
                    // No stdin (or it was closed): what the client types goes nowhere.
                    continue;
                }
            }
            if stdin_once && !tty {
                // The shim holds a writer too (so a berth restart is no EOF): closing ours
                // and then the shim's gives the container its end-of-file.
                points.close_stdin().await;
                if let Some(s) = self.shim_of(&rec.pod_id)
                    && let Err(e) = s.close_stdin(&id, "").await
                {
                    tracing::warn!(container = id, err = %e, "close the container's stdin");
                }
            }
        };
        let (out_abort, err_abort) = (out.abort_handle(), err.abort_handle());
        let outputs = async {
            let _ = out.await;
            let _ = err.await;
        };
        tokio::select! {
            _ = outputs => {}
            _ = feed => {}
            _ = disconnected.cancelled() => {}
        }
        out_abort.abort();
        err_abort.abort();
        if let Some(r) = resizer {
            r.abort();
        }
        Ok(())
    }
}

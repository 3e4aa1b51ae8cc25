//! The SPDY sessions behind the URLs: a remote command (exec, attach) takes the streams its
//! client opens, one per channel; a port-forward takes pairs of streams, one pair per
//! connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::config::StreamConfig;
use crate::proto::{self};
use crate::pump::{drain, forward, pump_out, resize_channel, run_remote_command};
use crate::spdy::{self, Session, Stream};
use crate::{Backend, Io, Request};

pub(crate) async fn remote_command(
    session: &Session,
    cfg: &StreamConfig,
    backend: Arc<dyn Backend>,
    request: Request,
    protocol: &str,
) {
    let opts = match &request {
        Request::Exec { opts, .. } | Request::Attach { opts, .. } => *opts,
        Request::PortForward { .. } => return,
    };
    let resizable = opts.tty && matches!(protocol, proto::V3 | proto::V4);
    let expected = 1
        + usize::from(opts.stdin)
        + usize::from(opts.stdout)
        + usize::from(opts.stderr)
        + usize::from(resizable);
    let mut streams: HashMap<String, Stream> = HashMap::new();
    let deadline = tokio::time::sleep(cfg.stream_creation_timeout);
    tokio::pin!(deadline);
    while streams.len() < expected {
        tokio::select! {
            s = session.accept() => match s {
                Some(s) => {
                    let kind = spdy::header(&s.headers, proto::STREAM_TYPE).unwrap_or("").to_string();
                    match kind.as_str() {
                        "error" | "stdin" | "stdout" | "stderr" | "resize" => { streams.insert(kind, s); }
                        other => tracing::debug!(stream_type = other, "ignoring unexpected stream"),
                    }
                }
                None => return,
            },
            _ = &mut deadline => {
                tracing::info!(expected, got = streams.len(), "streaming client did not open its streams in time");
                return;
            }
        }
    }
    let Some(error) = streams.remove("error") else {
        return;
    };
    let disconnected = CancellationToken::new();
    let mut pumps = Vec::new();
    let mut out = |name: &str| {
        streams.remove(name).map(|s| {
            let (tx, t) = pump_out(s.tx);
            pumps.push(t);
            tx
        })
    };
    let stdout = out("stdout").filter(|_| opts.stdout);
    let stderr = out("stderr").filter(|_| opts.stderr);
    let io = Io {
        stdin: streams.remove("stdin").map(|s| s.rx).filter(|_| opts.stdin),
        stdout,
        stderr,
        tty: opts.tty,
        resize: streams.remove("resize").map(|s| resize_channel(s.rx)),
        disconnected: disconnected.clone(),
    };
    let outcome = {
        let run = run_remote_command(backend.as_ref(), request, io);
        tokio::pin!(run);
        tokio::select! {
            o = &mut run => o,
            _ = session.closed() => {
                // The client is gone: tell the runtime, and let it clean up.
                disconnected.cancel();
                run.await
            }
        }
    };
    drain(pumps).await;
    if let Some(m) = outcome.status(protocol == proto::V4) {
        let _ = error.tx.write(m).await;
    }
    let _ = error.tx.close().await;
}

/// Port forwarding over SPDY: the client opens an error and a data stream per connection,
/// tied by `requestid`, naming the pod's port in `port`.
pub(crate) async fn port_forward(
    session: &Session,
    cfg: &StreamConfig,
    backend: Arc<dyn Backend>,
    pod_id: &str,
    allowed: &[u16],
) {
    struct Half {
        error: Option<Stream>,
        data: Option<Stream>,
        since: Instant,
    }
    let mut pairs: HashMap<String, Half> = HashMap::new();
    let gone = CancellationToken::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let s = tokio::select! {
            s = session.accept() => match s { Some(s) => s, None => break },
            _ = tick.tick() => {
                // Pairs whose other half never came.
                let limit = cfg.stream_creation_timeout;
                let stale: Vec<String> = pairs.iter().filter(|(_, h)| h.since.elapsed() > limit).map(|(k, _)| k.clone()).collect();
                for k in stale {
                    if let Some(h) = pairs.remove(&k) {
                        for s in [h.error, h.data].into_iter().flatten() {
                            let _ = s.tx.reset().await;
                        }
                    }
                }
                continue;
            }
        };
        let kind = spdy::header(&s.headers, proto::STREAM_TYPE).unwrap_or("");
        // Clients older than request ids pair streams by id: data = error + 2.
        let rid = match spdy::header(&s.headers, proto::REQUEST_ID) {
            Some(r) => r.to_string(),
            None if kind == "data" => (s.id.saturating_sub(2)).to_string(),
            None => s.id.to_string(),
        };
        let h = pairs.entry(rid.clone()).or_insert(Half {
            error: None,
            data: None,
            since: Instant::now(),
        });
        match kind {
            "error" => h.error = Some(s),
            "data" => h.data = Some(s),
            other => {
                tracing::debug!(stream_type = other, "port-forward: unexpected stream");
                let _ = s.tx.reset().await;
                continue;
            }
        }
        if h.error.is_some() && h.data.is_some() {
            let Some(Half {
                error: Some(error),
                data: Some(data),
                ..
            }) = pairs.remove(&rid)
            else {
                continue;
            };
            let port = spdy::header(&data.headers, proto::PORT)
                .and_then(|p| p.parse::<u16>().ok())
                .filter(|p| *p != 0);
            let backend = backend.clone();
            let pod = pod_id.to_string();
            let allowed = allowed.to_vec();
            let gone = gone.clone();
            tokio::spawn(async move {
                let res = match port {
                    None => Err("the port header is missing or not a port number".to_string()),
                    Some(p) if !allowed.is_empty() && !allowed.contains(&p) => Err(format!(
                        "port {p} was not named in the PortForward request ({allowed:?})"
                    )),
                    Some(p) => match backend.port_forward(&pod, p).await {
                        Ok(tcp) => {
                            let (to_client, pump) = pump_out(data.tx.clone());
                            forward(tcp, data.rx, to_client, gone).await;
                            let _ = pump.await;
                            Ok(())
                        }
                        Err(e) => Err(e.to_string()),
                    },
                };
                if let Err(e) = res {
                    let msg = format!(
                        "error forwarding port {} to pod {pod}: {e}",
                        port.map(|p| p.to_string()).unwrap_or_default()
                    );
                    tracing::info!("{msg}");
                    let _ = error.tx.write(Bytes::from(msg)).await;
                }
                let _ = error.tx.close().await;
                let _ = data.tx.close().await;
            });
        }
    }
    gone.cancel();
}

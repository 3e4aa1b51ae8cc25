//! What both transports (SPDY and WebSocket) share once a session is up: running the
//! backend for a remote command, pumping output to the client, terminal sizes, and relaying a
//! forwarded port.

use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::proto::{self, Outcome, ResizeDecoder, StatusReason};
use crate::spdy::{self};
use crate::{Backend, BackendError, Io, Request};

/// A 101 response switching the connection to `upgrade`.
pub(crate) fn switching_protocols(upgrade: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    h.insert(header::UPGRADE, header::HeaderValue::from_static(upgrade));
    r
}

/// Starts copying `rx` into a SPDY stream, half-closing it once `rx`'s senders are gone.
pub(crate) fn pump_out(
    tx: spdy::StreamWriter,
) -> (mpsc::Sender<Bytes>, tokio::task::JoinHandle<()>) {
    let (s, mut r) = mpsc::channel::<Bytes>(16);
    let t = tokio::spawn(async move {
        while let Some(b) = r.recv().await {
            if tx.write(b).await.is_err() {
                return;
            }
        }
        let _ = tx.close().await;
    });
    (s, t)
}

/// Turns a resize stream's bytes into sizes.
pub(crate) fn resize_channel(mut rx: mpsc::Receiver<Bytes>) -> mpsc::Receiver<proto::TermSize> {
    let (s, r) = mpsc::channel(8);
    tokio::spawn(async move {
        let mut dec = ResizeDecoder::default();
        while let Some(b) = rx.recv().await {
            for size in dec.push(&b) {
                if s.send(size).await.is_err() {
                    return;
                }
            }
        }
    });
    r
}

/// Runs the backend for an exec or attach and says how it went.
pub(crate) async fn run_remote_command(backend: &dyn Backend, request: Request, io: Io) -> Outcome {
    match request {
        Request::Exec {
            container_id, cmd, ..
        } => match backend.exec(&container_id, cmd, io).await {
            Ok(()) => Outcome::Success,
            Err(BackendError::Exit(code)) => Outcome::Exit(code),
            Err(e) => Outcome::failed("error executing command in container", &e),
        },
        Request::Attach { container_id, .. } => match backend.attach(&container_id, io).await {
            Ok(()) => Outcome::Success,
            Err(e) => Outcome::failed("error attaching to container", &e),
        },
        Request::PortForward { .. } => Outcome::Error {
            reason: StatusReason::BadRequest,
            message: "not a remote command".into(),
        },
    }
}

/// Waits for output pumps to deliver what they hold (bounded: a client that stopped
/// reading does not hold the session open).
pub(crate) async fn drain(pumps: Vec<tokio::task::JoinHandle<()>>) {
    for p in pumps {
        let abort = p.abort_handle();
        if tokio::time::timeout(Duration::from_secs(10), p)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

/// Copies between a TCP connection and a stream until the pod's side is done (or the
/// client went away); the client's half-close is passed on as a TCP half-close.
pub(crate) async fn forward(
    tcp: tokio::net::TcpStream,
    mut from_client: mpsc::Receiver<Bytes>,
    to_client: mpsc::Sender<Bytes>,
    gone: CancellationToken,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut r, mut w) = tcp.into_split();
    let up = tokio::spawn(async move {
        while let Some(b) = from_client.recv().await {
            if w.write_all(&b).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    });
    let down = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if to_client
                        .send(Bytes::copy_from_slice(&buf[..n]))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    tokio::select! {
        _ = down => {}
        _ = gone.cancelled() => {}
    }
    up.abort();
}

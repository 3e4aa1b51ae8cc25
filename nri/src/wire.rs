//! NRI's connection: one stream socket multiplexed into two logical connections (frames of
//! `[conn id: u32 BE][length: u32 BE][bytes]`), each carrying ttrpc (messages of
//! `[length: u32 BE][stream id: u32 BE][type: u8][flags: u8][protobuf]`). The plugin serves
//! its `Plugin` service on connection 1 and berth its `Runtime` service on connection 2.
//!
//! Everything read here comes from a plugin: a frame or message over its limit, or one that
//! does not decode, ends the connection; it never allocates more than the limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::proto::ttrpc;

/// The logical connection of the plugin's service (berth calls it).
pub const PLUGIN_CONN: u32 = 1;
/// The logical connection of the runtime's service (the plugin calls berth).
pub const RUNTIME_CONN: u32 = 2;

/// ttrpc's largest message, as its Go implementation has it.
pub const MAX_MESSAGE: usize = 4 << 20;
const TTRPC_HEADER: usize = 10;
/// The multiplexer's largest frame: one whole ttrpc message.
const MAX_FRAME: usize = TTRPC_HEADER + MAX_MESSAGE;

/// The largest frame berth writes. Go's multiplexer hands a reader one frame per read and
/// fails a read whose buffer is smaller than the frame; Go's ttrpc reads through a 4 KiB
/// buffer. Frames of at most 4 KiB always fit.
const FRAME_CHUNK: usize = 4096;

const TYPE_REQUEST: u8 = 1;
const TYPE_RESPONSE: u8 = 2;

/// gRPC codes berth answers or looks for.
pub mod code {
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const UNIMPLEMENTED: i32 = 12;
    pub const INTERNAL: i32 = 13;
}

/// Why a call to a plugin failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The connection is gone (the plugin exited or closed it).
    #[error("the plugin's connection is closed")]
    Closed,
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The plugin answered with an error.
    #[error("{message} (code {code})")]
    Status { code: i32, message: String },
    /// The plugin sent what the protocol does not allow.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl CallError {
    /// Whether the plugin is unusable after it (containerd closes such a plugin and goes on
    /// without it); an error the plugin answered is its verdict on the request instead.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, CallError::Status { .. })
    }

    pub fn is_unimplemented(&self) -> bool {
        matches!(self, CallError::Status { code, .. } if *code == code::UNIMPLEMENTED)
    }
}

/// The writing side of a multiplexed connection, shared by both logical connections.
pub struct Mux {
    writer: tokio::sync::Mutex<tokio::net::unix::OwnedWriteHalf>,
    closed: CancellationToken,
}

impl std::fmt::Debug for Mux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mux").finish_non_exhaustive()
    }
}

impl Mux {
    /// Splits `stream` into the writer and the two logical connections' incoming bytes; a
    /// task reads the socket until it closes or breaks the protocol.
    pub fn start(stream: tokio::net::UnixStream) -> (Arc<Mux>, Incoming, Incoming) {
        let (mut rd, wr) = stream.into_split();
        let mux = Arc::new(Mux {
            writer: tokio::sync::Mutex::new(wr),
            closed: CancellationToken::new(),
        });
        let (plugin_tx, plugin_rx) = mpsc::channel::<Bytes>(64);
        let (runtime_tx, runtime_rx) = mpsc::channel::<Bytes>(64);
        let closed = mux.closed.clone();
        tokio::spawn(async move {
            let res: std::io::Result<()> = async {
                loop {
                    let mut hdr = [0u8; 8];
                    tokio::select! {
                        r = rd.read_exact(&mut hdr) => { r?; }
                        _ = closed.cancelled() => return Ok(()),
                    }
                    let id = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
                    let len = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]) as usize;
                    if len > MAX_FRAME {
                        return Err(std::io::Error::other(format!(
                            "a frame of {len} bytes (at most {MAX_FRAME})"
                        )));
                    }
                    let mut buf = vec![0u8; len];
                    rd.read_exact(&mut buf).await?;
                    let tx = match id {
                        PLUGIN_CONN => &plugin_tx,
                        RUNTIME_CONN => &runtime_tx,
                        _ => continue, // a connection nobody listens on, as NRI drops it
                    };
                    // Back-pressure, not a queue without bound: a reader that is behind
                    // stops this one, and the plugin's writes wait.
                    if tx.send(Bytes::from(buf)).await.is_err() {
                        return Ok(());
                    }
                }
            }
            .await;
            if let Err(e) = res
                && e.kind() != std::io::ErrorKind::UnexpectedEof
            {
                tracing::debug!(err = %e, "NRI plugin connection ended");
            }
            closed.cancel();
        });
        (
            mux,
            Incoming {
                rx: plugin_rx,
                buf: BytesMut::new(),
            },
            Incoming {
                rx: runtime_rx,
                buf: BytesMut::new(),
            },
        )
    }

    /// Sends one ttrpc message on logical connection `conn`, in frames of at most
    /// [`FRAME_CHUNK`] bytes.
    async fn send(
        &self,
        conn: u32,
        stream: u32,
        kind: u8,
        payload: &[u8],
    ) -> Result<(), CallError> {
        if payload.len() > MAX_MESSAGE {
            return Err(CallError::Protocol(format!(
                "a message of {} bytes (ttrpc allows {MAX_MESSAGE})",
                payload.len()
            )));
        }
        let mut msg = Vec::with_capacity(TTRPC_HEADER + payload.len());
        msg.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        msg.extend_from_slice(&stream.to_be_bytes());
        msg.push(kind);
        msg.push(0);
        msg.extend_from_slice(payload);
        let mut frame = Vec::with_capacity(msg.len() + 8 * (msg.len() / FRAME_CHUNK + 1));
        for chunk in msg.chunks(FRAME_CHUNK) {
            frame.extend_from_slice(&conn.to_be_bytes());
            frame.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
            frame.extend_from_slice(chunk);
        }
        let mut w = self.writer.lock().await;
        if self.closed.is_cancelled() {
            return Err(CallError::Closed);
        }
        match w.write_all(&frame).await {
            Ok(()) => Ok(()),
            Err(_) => {
                self.closed.cancel();
                Err(CallError::Closed)
            }
        }
    }

    /// Closes the connection: the reader stops, calls in flight fail.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Resolves when the connection is closed, by either side.
    pub async fn closed(&self) {
        self.closed.cancelled().await
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }
}

/// The bytes of one logical connection, read as ttrpc messages.
pub struct Incoming {
    rx: mpsc::Receiver<Bytes>,
    buf: BytesMut,
}

/// One ttrpc message.
struct Msg {
    stream: u32,
    kind: u8,
    payload: Bytes,
}

impl Incoming {
    /// The next message; `Ok(None)` when the connection closed.
    async fn next(&mut self) -> Result<Option<Msg>, CallError> {
        loop {
            if self.buf.len() >= TTRPC_HEADER {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if len > MAX_MESSAGE {
                    return Err(CallError::Protocol(format!(
                        "a message of {len} bytes (ttrpc allows {MAX_MESSAGE})"
                    )));
                }
                if self.buf.len() >= TTRPC_HEADER + len {
                    let mut m = self.buf.split_to(TTRPC_HEADER + len);
                    let _len = m.get_u32();
                    let stream = m.get_u32();
                    let kind = m.get_u8();
                    let _flags = m.get_u8();
                    return Ok(Some(Msg {
                        stream,
                        kind,
                        payload: m.freeze(),
                    }));
                }
            }
            match self.rx.recv().await {
                Some(b) => self.buf.extend_from_slice(&b),
                None => return Ok(None),
            }
        }
    }
}

type Pending = Arc<Mutex<HashMap<u32, oneshot::Sender<ttrpc::Response>>>>;

/// A ttrpc client on [`PLUGIN_CONN`]: calls the plugin's service.
#[derive(Debug, Clone)]
pub struct Client {
    mux: Arc<Mux>,
    pending: Pending,
    next: Arc<AtomicU32>,
}

impl Client {
    /// A client reading its answers from `incoming`.
    pub fn start(mux: Arc<Mux>, mut incoming: Incoming) -> Client {
        let pending: Pending = Default::default();
        let (p, m) = (pending.clone(), mux.clone());
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    r = incoming.next() => r,
                    _ = m.closed() => break,
                };
                let msg = match msg {
                    Ok(Some(msg)) => msg,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(err = %e, "NRI plugin broke the protocol; closing it");
                        break;
                    }
                };
                if msg.kind != TYPE_RESPONSE {
                    continue; // a plugin's request on berth's client connection: ignored
                }
                let Ok(resp) = ttrpc::Response::decode(msg.payload) else {
                    tracing::warn!("NRI plugin sent a response that does not decode; closing it");
                    break;
                };
                let waiter = p
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&msg.stream);
                if let Some(w) = waiter {
                    let _ = w.send(resp);
                }
            }
            m.close();
            // Every call still waiting learns the connection is gone.
            p.lock().unwrap_or_else(|e| e.into_inner()).clear();
        });
        Client {
            mux,
            pending,
            next: Arc::new(AtomicU32::new(1)),
        }
    }

    /// Calls `service`/`method` with `req`, waiting at most `timeout` for the answer.
    pub async fn call<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        service: &str,
        method: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        // Client streams are odd, as ttrpc's clients number them.
        let stream = self.next.fetch_add(2, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(stream, tx);
        let request = ttrpc::Request {
            service: service.into(),
            method: method.into(),
            payload: req.encode_to_vec(),
            timeout_nano: timeout.as_nanos().min(i64::MAX as u128) as i64,
            metadata: vec![],
        };
        let forget = || {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&stream);
        };
        if let Err(e) = self
            .mux
            .send(PLUGIN_CONN, stream, TYPE_REQUEST, &request.encode_to_vec())
            .await
        {
            forget();
            return Err(e);
        }
        let resp = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => return Err(CallError::Closed),
            Err(_) => {
                forget();
                return Err(CallError::Timeout(timeout));
            }
        };
        if let Some(s) = resp.status
            && s.code != 0
        {
            return Err(CallError::Status {
                code: s.code,
                message: s.message,
            });
        }
        Resp::decode(resp.payload.as_slice())
            .map_err(|e| CallError::Protocol(format!("{service}.{method} answer: {e}")))
    }
}

/// What berth's runtime service answers: the payload, or a gRPC code and message.
pub type Answer = Result<Vec<u8>, (i32, String)>;

/// Serves requests arriving on `incoming` (the runtime's connection) with `handle`, each on
/// its own task, until the connection closes.
pub fn serve<F, Fut>(mux: Arc<Mux>, mut incoming: Incoming, handle: F)
where
    F: Fn(String, Bytes) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Answer> + Send + 'static,
{
    let handle = Arc::new(handle);
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                r = incoming.next() => r,
                _ = mux.closed() => break,
            };
            let msg = match msg {
                Ok(Some(m)) => m,
                Ok(None) | Err(_) => break,
            };
            if msg.kind != TYPE_REQUEST {
                continue;
            }
            let Ok(req) = ttrpc::Request::decode(msg.payload) else {
                break;
            };
            let (mux, handle) = (mux.clone(), handle.clone());
            tokio::spawn(async move {
                let answer = if req.service == "nri.pkg.api.v1alpha1.Runtime" {
                    handle(req.method.clone(), Bytes::from(req.payload)).await
                } else {
                    Err((
                        code::UNIMPLEMENTED,
                        format!("service {} is not served here", req.service),
                    ))
                };
                let resp = match answer {
                    Ok(payload) => ttrpc::Response {
                        status: Some(ttrpc::Status {
                            code: 0,
                            message: String::new(),
                        }),
                        payload,
                    },
                    Err((code, message)) => ttrpc::Response {
                        status: Some(ttrpc::Status { code, message }),
                        payload: vec![],
                    },
                };
                let _ = mux
                    .send(
                        RUNTIME_CONN,
                        msg.stream,
                        TYPE_RESPONSE,
                        &resp.encode_to_vec(),
                    )
                    .await;
            });
        }
        mux.close();
    });
}

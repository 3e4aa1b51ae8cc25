//! A session's writer task: it owns the socket's write half and the header compressor, so
//! that stream handles can write from any task; it encodes what is queued and flushes once
//! per batch.

use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

use super::frame::{Deflater, control};
use super::*;

/// What the writer task is asked to send.
#[derive(Debug)]
pub(super) enum Out {
    SynStream {
        id: u32,
        headers: Headers,
    },
    SynReply {
        id: u32,
    },
    Rst {
        id: u32,
        status: u32,
    },
    Ping(u32),
    Data {
        id: u32,
        fin: bool,
        data: Bytes,
    },
    /// GOAWAY, flush, shut the socket down; then the writer ends.
    Close,
}

pub(super) async fn writer<W: AsyncWrite + Unpin>(
    w: W,
    mut rx: mpsc::Receiver<Out>,
    last_seen: Arc<Mutex<u32>>,
) {
    let mut w = BufWriter::with_capacity(64 * 1024, w);
    let mut def = Deflater::new();
    let mut buf = BytesMut::with_capacity(MAX_WRITE + 64);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut close = false;
        // Encode everything already queued, then flush once.
        while let Some(o) = next.take() {
            buf.clear();
            match o {
                Out::SynStream { id, headers } => match def.block(&headers) {
                    Ok(block) => {
                        let mut body = Vec::with_capacity(block.len() + 10);
                        body.put_u32(id);
                        body.put_u32(0);
                        body.put_u16(0);
                        body.extend_from_slice(&block);
                        control(&mut buf, SYN_STREAM, 0, &body);
                    }
                    Err(e) => {
                        tracing::debug!(err = %e, "spdy: cannot encode headers");
                        return;
                    }
                },
                Out::SynReply { id } => match def.block(&Vec::new()) {
                    Ok(block) => {
                        let mut body = Vec::with_capacity(block.len() + 4);
                        body.put_u32(id);
                        body.extend_from_slice(&block);
                        control(&mut buf, SYN_REPLY, 0, &body);
                    }
                    Err(e) => {
                        tracing::debug!(err = %e, "spdy: cannot encode headers");
                        return;
                    }
                },
                Out::Rst { id, status } => {
                    let mut body = [0u8; 8];
                    body[..4].copy_from_slice(&id.to_be_bytes());
                    body[4..].copy_from_slice(&status.to_be_bytes());
                    control(&mut buf, RST_STREAM, 0, &body);
                }
                Out::Ping(id) => control(&mut buf, PING, 0, &id.to_be_bytes()),
                Out::Data { id, fin, data } => {
                    buf.put_u32(id & 0x7fff_ffff);
                    buf.put_u32(
                        (u32::from(if fin { FLAG_FIN } else { 0 }) << 24) | data.len() as u32,
                    );
                    if w.write_all(&buf).await.is_err() || w.write_all(&data).await.is_err() {
                        return;
                    }
                    buf.clear();
                }
                Out::Close => {
                    let last = *last_seen.lock().unwrap_or_else(|p| p.into_inner());
                    let mut body = [0u8; 8];
                    body[..4].copy_from_slice(&last.to_be_bytes());
                    control(&mut buf, GOAWAY, 0, &body);
                    close = true;
                }
            }
            if !buf.is_empty() && w.write_all(&buf).await.is_err() {
                return;
            }
            if !close {
                next = rx.try_recv().ok();
            }
        }
        if w.flush().await.is_err() {
            return;
        }
        if close {
            let _ = w.shutdown().await;
            return;
        }
    }
}

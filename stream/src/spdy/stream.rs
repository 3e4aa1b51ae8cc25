//! One SPDY stream (its handle, and the writer that sends DATA on it), which end a session
//! is, and the table of a session's open streams, shared by the session and its reader.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::writer::Out;
use super::*;

/// Per-stream state the reader keeps.
pub(super) struct Slot {
    pub(super) data: Option<mpsc::Sender<Bytes>>,
    pub(super) reply: Option<oneshot::Sender<()>>,
    /// Taken by this end (accepted, or opened here): until then nothing reads its data, and
    /// a peer that fills its queue has it reset rather than holding the connection's reader.
    pub(super) taken: bool,
    /// Alive while any [`StreamWriter`] of the stream is.
    pub(super) writer: std::sync::Weak<()>,
}

impl Slot {
    /// Nothing can happen on the stream any more: the peer will send nothing (or nobody reads
    /// what it sends) and nothing here can write on it.
    pub(super) fn dead(&self) -> bool {
        self.reply.is_none()
            && self.data.as_ref().is_none_or(|d| d.is_closed())
            && self.writer.strong_count() == 0
    }
}

#[derive(Default)]
pub(super) struct Table {
    pub(super) streams: HashMap<u32, Slot>,
    /// Set once the reader stopped: no stream can be opened any more.
    pub(super) closed: bool,
}

impl Table {
    /// Whether one more stream fits under `max`, after forgetting the dead ones.
    pub(super) fn room(&mut self, max: usize) -> bool {
        if self.streams.len() >= max {
            self.streams.retain(|_, s| !s.dead());
        }
        self.streams.len() < max
    }
}

/// One SPDY stream: its headers, what the peer sends on it, and a handle to write on it.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    /// DATA from the peer; `None` once the peer half-closed (FIN), reset or went away.
    pub rx: mpsc::Receiver<Bytes>,
    pub tx: StreamWriter,
}

impl Stream {
    /// Stream `id`, fed by `rx`, written through the session's queue `out` (`alive` is its
    /// writers' token).
    pub(super) fn new(
        id: u32,
        headers: Headers,
        rx: mpsc::Receiver<Bytes>,
        out: &mpsc::Sender<Out>,
        alive: Arc<()>,
    ) -> Self {
        Stream {
            id,
            headers,
            rx,
            tx: StreamWriter {
                id,
                out: out.clone(),
                _alive: alive,
            },
        }
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.id)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

/// Writes DATA on one stream; cheap to clone.
#[derive(Clone, Debug)]
pub struct StreamWriter {
    id: u32,
    out: mpsc::Sender<Out>,
    /// The stream counts as open while a writer of it exists.
    _alive: Arc<()>,
}

pub(super) fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "spdy connection closed")
}

impl StreamWriter {
    /// Sends `data` in frames of at most 32 KiB.
    pub async fn write(&self, mut data: Bytes) -> io::Result<()> {
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(MAX_WRITE));
            self.out
                .send(Out::Data {
                    id: self.id,
                    fin: false,
                    data: chunk,
                })
                .await
                .map_err(|_| gone())?;
        }
        Ok(())
    }

    /// Half-closes the stream (an empty DATA frame with FIN).
    pub async fn close(&self) -> io::Result<()> {
        self.out
            .send(Out::Data {
                id: self.id,
                fin: true,
                data: Bytes::new(),
            })
            .await
            .map_err(|_| gone())
    }

    /// Resets the stream.
    pub async fn reset(&self) -> io::Result<()> {
        self.out
            .send(Out::Rst {
                id: self.id,
                status: CANCEL,
            })
            .await
            .map_err(|_| gone())
    }
}

/// Which end of the connection this is: servers use even stream ids, clients odd ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

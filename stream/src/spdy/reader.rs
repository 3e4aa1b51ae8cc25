//! A session's reader task: it decodes the peer's frames, opens the streams the peer asks
//! for (within the session's limits), and hands DATA to the stream it belongs to, waiting
//! while that stream's consumer is behind but never past the peer's hang-up.

use std::io;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use super::frame::{Frame, Inflater, read_frame};
use super::stream::{Role, Slot, Stream, Table, gone};
use super::writer::Out;
use super::*;
use crate::probe::PeerProbe;

/// What became of data for a stream.
enum Delivered {
    Yes,
    /// Its reader is gone.
    NobodyReads,
    /// Its queue is full and this end never took the stream: nothing will read it.
    Untaken,
}

pub(super) struct Reader {
    pub(super) table: Arc<Mutex<Table>>,
    pub(super) out: mpsc::Sender<Out>,
    pub(super) incoming: mpsc::Sender<Stream>,
    pub(super) role: Role,
    pub(super) last_seen: Arc<Mutex<u32>>,
    pub(super) max_streams: usize,
    pub(super) probe: Option<PeerProbe>,
}

impl Reader {
    pub(super) async fn run<R: AsyncRead + Unpin>(&self, r: &mut R) -> io::Result<()> {
        let mut r = tokio::io::BufReader::with_capacity(64 * 1024, r);
        let mut inf = Inflater::new();
        loop {
            let frame = match read_frame(&mut r, &mut inf).await {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            };
            match frame {
                Frame::SynStream { id, fin, headers } => self.syn_stream(id, fin, headers).await?,
                Frame::SynReply { id, fin } => {
                    let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(s) = t.streams.get_mut(&id) {
                        if let Some(r) = s.reply.take() {
                            let _ = r.send(());
                        }
                        if fin {
                            s.data = None;
                        }
                    }
                }
                Frame::Headers { id, fin } => {
                    if fin {
                        self.finish(id);
                    }
                }
                Frame::Data { id, fin, mut len } => {
                    let mut tx = {
                        let t = self.table.lock().unwrap_or_else(|p| p.into_inner());
                        t.streams.get(&id).and_then(|s| s.data.clone())
                    };
                    // Read and handed on in pieces: what a frame declares is never allocated
                    // at once.
                    while len > 0 {
                        let n = len.min(DATA_PIECE);
                        let mut piece = BytesMut::zeroed(n);
                        r.read_exact(&mut piece).await?;
                        len -= n;
                        let Some(t) = &tx else { continue };
                        match self.deliver(id, t, piece.freeze()).await? {
                            Delivered::Yes => {}
                            Delivered::NobodyReads => {
                                // Drop what arrives on it from now on.
                                self.finish(id);
                                tx = None;
                            }
                            Delivered::Untaken => {
                                self.reset(id, REFUSED_STREAM).await?;
                                tx = None;
                            }
                        }
                    }
                    if fin {
                        self.finish(id);
                    }
                }
                Frame::Rst { id } => {
                    let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
                    // Dropping the slot drops both senders: readers see the end, an opener
                    // waiting for a reply sees the refusal.
                    t.streams.remove(&id);
                }
                Frame::Ping(id) => {
                    // Echo the peer's pings (odd ids come from clients, even from servers).
                    let peer_odd = self.role == Role::Server;
                    if (id % 2 == 1) == peer_odd {
                        self.send_out(Out::Ping(id)).await?;
                    }
                }
                Frame::GoAway => return Ok(()),
                Frame::Other => {}
            }
        }
    }

    /// `f`, unless the peer hangs up first.
    async fn watching<T>(&self, f: impl std::future::Future<Output = T>) -> io::Result<T> {
        crate::probe::watching(self.probe.as_ref(), f).await
    }

    /// Queues `data` for the reader of stream `id`, waiting while it is behind
    /// (back-pressure) if this end has taken the stream.
    async fn deliver(
        &self,
        id: u32,
        tx: &mpsc::Sender<Bytes>,
        data: Bytes,
    ) -> io::Result<Delivered> {
        let permit = match tx.try_reserve() {
            Ok(p) => Ok(p),
            Err(mpsc::error::TrySendError::Closed(())) => return Ok(Delivered::NobodyReads),
            Err(mpsc::error::TrySendError::Full(())) => {
                let taken = self
                    .table
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .streams
                    .get(&id)
                    .is_some_and(|s| s.taken);
                if !taken {
                    return Ok(Delivered::Untaken);
                }
                self.watching(tx.reserve()).await?
            }
        };
        match permit {
            Ok(p) => {
                p.send(data);
                Ok(Delivered::Yes)
            }
            Err(_) => Ok(Delivered::NobodyReads),
        }
    }

    /// Forgets stream `id` and tells the peer.
    async fn reset(&self, id: u32, status: u32) -> io::Result<()> {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .streams
            .remove(&id);
        self.send_out(Out::Rst { id, status }).await
    }

    /// Queues a frame for the writer, waiting while it is behind.
    async fn send_out(&self, o: Out) -> io::Result<()> {
        self.watching(self.out.send(o)).await?.map_err(|_| gone())
    }

    async fn syn_stream(&self, id: u32, fin: bool, headers: Headers) -> io::Result<()> {
        let peer_odd = self.role == Role::Server;
        let (data_tx, rx) = mpsc::channel(STREAM_QUEUE);
        let alive = Arc::new(());
        let refused = {
            let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
            if id == 0 || (id % 2 == 1) != peer_odd || t.streams.contains_key(&id) {
                Some(PROTOCOL_ERROR)
            } else if !t.room(self.max_streams) {
                Some(REFUSED_STREAM)
            } else {
                t.streams.insert(
                    id,
                    Slot {
                        data: (!fin).then_some(data_tx),
                        reply: None,
                        taken: false,
                        writer: Arc::downgrade(&alive),
                    },
                );
                None
            }
        };
        if let Some(status) = refused {
            if status == REFUSED_STREAM {
                tracing::debug!(
                    stream = id,
                    max = self.max_streams,
                    "spdy: too many open streams; refusing one"
                );
            }
            return self.send_out(Out::Rst { id, status }).await;
        }
        *self.last_seen.lock().unwrap_or_else(|p| p.into_inner()) = id;
        // Reply before handing the stream up, so the reply precedes anything written on it.
        self.send_out(Out::SynReply { id }).await?;
        let s = Stream::new(id, headers, rx, &self.out, alive);
        // Never waits: a peer that opens streams nobody accepts has them refused.
        let status = match self.incoming.try_send(s) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => REFUSED_STREAM,
            Err(mpsc::error::TrySendError::Closed(_)) => CANCEL,
        };
        self.reset(id, status).await
    }

    /// The peer will send nothing more on `id`.
    fn finish(&self, id: u32) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = t.streams.get_mut(&id) {
            s.data = None;
        }
    }

    pub(super) fn shut(&self) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.closed = true;
        t.streams.clear();
    }
}

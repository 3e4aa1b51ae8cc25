//! A SPDY session: the reader task that decodes the peer's frames and routes DATA to the
//! stream it belongs to, the writer task that owns the socket's write half and the header
//! compressor, and the table of open streams, bounded by [`Limits`].

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

use super::frame::{Frame, Inflater, read_frame};
use super::writer::{Out, writer};
use super::*;
use crate::probe::PeerProbe;

/// Per-stream state the reader keeps.
struct Slot {
    data: Option<mpsc::Sender<Bytes>>,
    reply: Option<oneshot::Sender<()>>,
    /// Taken by this end (accepted, or opened here): until then nothing reads its data, and
    /// a peer that fills its queue has it reset rather than holding the connection's reader.
    taken: bool,
    /// Alive while any [`StreamWriter`] of the stream is.
    writer: std::sync::Weak<()>,
}

impl Slot {
    /// Nothing can happen on the stream any more: the peer will send nothing (or nobody reads
    /// what it sends) and nothing here can write on it.
    fn dead(&self) -> bool {
        self.reply.is_none()
            && self.data.as_ref().is_none_or(|d| d.is_closed())
            && self.writer.strong_count() == 0
    }
}

#[derive(Default)]
struct Table {
    streams: HashMap<u32, Slot>,
    /// Set once the reader stopped: no stream can be opened any more.
    closed: bool,
}

impl Table {
    /// Whether one more stream fits under `max`, after forgetting the dead ones.
    fn room(&mut self, max: usize) -> bool {
        if self.streams.len() >= max {
            self.streams.retain(|_, s| !s.dead());
        }
        self.streams.len() < max
    }
}

/// What one session may hold.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Streams open at once (either end's); a SYN_STREAM past it is refused.
    pub max_streams: usize,
    /// The peer's socket, to notice it hung up while the reader waits.
    pub probe: Option<PeerProbe>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_streams: 256,
            probe: None,
        }
    }
}

/// A SPDY connection (either end).
pub struct Session {
    out: mpsc::Sender<Out>,
    table: Arc<Mutex<Table>>,
    next_id: tokio::sync::Mutex<u32>,
    incoming: tokio::sync::Mutex<mpsc::Receiver<Stream>>,
    done: tokio::sync::watch::Receiver<bool>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    max_streams: usize,
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
    fn new(
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

fn gone() -> io::Error {
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

impl Session {
    /// Starts the reader and writer tasks on `io`, with the default [`Limits`].
    pub fn new<IO>(io: IO, role: Role) -> Arc<Session>
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        Self::with_limits(io, role, Limits::default())
    }

    /// Starts the reader and writer tasks on `io`.
    pub fn with_limits<IO>(io: IO, role: Role, limits: Limits) -> Arc<Session>
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (r, w) = tokio::io::split(io);
        let (out, out_rx) = mpsc::channel(64);
        let (in_tx, in_rx) = mpsc::channel(ACCEPT_QUEUE);
        let (done_tx, done) = tokio::sync::watch::channel(false);
        let table = Arc::new(Mutex::new(Table::default()));
        let last_seen = Arc::new(Mutex::new(0u32));
        let writer = tokio::spawn(writer(w, out_rx, last_seen.clone()));
        let max_streams = limits.max_streams.max(1);
        let reader = Reader {
            table: table.clone(),
            out: out.clone(),
            incoming: in_tx,
            role,
            last_seen,
            max_streams,
            probe: limits.probe,
        };
        tokio::spawn(async move {
            let mut r = r;
            if let Err(e) = reader.run(&mut r).await {
                tracing::debug!(err = %e, "spdy connection ended");
            }
            reader.shut();
            let _ = done_tx.send(true);
        });
        Arc::new(Session {
            out,
            table,
            next_id: tokio::sync::Mutex::new(if role == Role::Client { 1 } else { 2 }),
            incoming: tokio::sync::Mutex::new(in_rx),
            done,
            writer: Mutex::new(Some(writer)),
            max_streams,
        })
    }

    /// The next stream the peer opens (already answered with SYN_REPLY); `None` once the
    /// connection is gone.
    pub async fn accept(&self) -> Option<Stream> {
        let s = self.incoming.lock().await.recv().await?;
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = t.streams.get_mut(&s.id) {
            slot.taken = true;
        }
        Some(s)
    }

    /// Streams of this session that are still open (for tests and logs).
    pub fn open_streams(&self) -> usize {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.streams.retain(|_, s| !s.dead());
        t.streams.len()
    }

    /// Opens a stream and waits (at most `timeout`) for the peer's SYN_REPLY.
    pub async fn open(&self, headers: Headers, timeout: Duration) -> io::Result<Stream> {
        let (data_tx, rx) = mpsc::channel(STREAM_QUEUE);
        let (reply_tx, reply_rx) = oneshot::channel();
        let alive = Arc::new(());
        // Ids go out in increasing order: allocate and queue under one lock.
        let mut next = self.next_id.lock().await;
        let id = *next;
        {
            let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
            if t.closed {
                return Err(gone());
            }
            if !t.room(self.max_streams) {
                return Err(io::Error::other(format!(
                    "{} streams are open on this connection",
                    self.max_streams
                )));
            }
            t.streams.insert(
                id,
                Slot {
                    data: Some(data_tx),
                    reply: Some(reply_tx),
                    taken: true,
                    writer: Arc::downgrade(&alive),
                },
            );
        }
        *next += 2;
        self.out
            .send(Out::SynStream {
                id,
                headers: headers.clone(),
            })
            .await
            .map_err(|_| gone())?;
        drop(next);
        let r = match tokio::time::timeout(timeout, reply_rx).await {
            Ok(Ok(())) => return Ok(Stream::new(id, headers, rx, &self.out, alive)),
            Ok(Err(_)) => io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("stream {id} was refused"),
            ),
            Err(_) => io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no reply to stream {id} within {timeout:?}"),
            ),
        };
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .streams
            .remove(&id);
        Err(r)
    }

    /// Resolves once the peer has gone (its socket closed, a read error or GOAWAY).
    pub async fn closed(&self) {
        let mut d = self.done.clone();
        let _ = d.wait_for(|v| *v).await;
    }

    /// Sends GOAWAY after everything queued, shuts the socket down and waits for the
    /// writer to finish (at most 5 s).
    pub async fn close(&self) {
        let _ = self.out.send(Out::Close).await;
        let w = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = w
            && tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .is_err()
        {
            tracing::debug!("spdy writer did not finish in time");
        }
    }
}

/// What became of data for a stream.
enum Delivered {
    Yes,
    /// Its reader is gone.
    NobodyReads,
    /// Its queue is full and this end never took the stream: nothing will read it.
    Untaken,
}

struct Reader {
    table: Arc<Mutex<Table>>,
    out: mpsc::Sender<Out>,
    incoming: mpsc::Sender<Stream>,
    role: Role,
    last_seen: Arc<Mutex<u32>>,
    max_streams: usize,
    probe: Option<PeerProbe>,
}

impl Reader {
    async fn run<R: AsyncRead + Unpin>(&self, r: &mut R) -> io::Result<()> {
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

    fn shut(&self) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.closed = true;
        t.streams.clear();
    }
}

//! A SPDY session: the reader task that decodes the peer's frames and routes DATA to the
//! stream it belongs to, the writer task that owns the socket's write half and the header
//! compressor, and the table of open streams, bounded by [`Limits`].

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

use super::reader::Reader;
use super::stream::{Role, Slot, Stream, Table, gone};
use super::writer::{Out, writer};
use super::*;
use crate::probe::PeerProbe;

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

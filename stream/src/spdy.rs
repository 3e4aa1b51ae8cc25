//! The subset of SPDY/3.1 that the Kubernetes streaming protocols use, for both ends of a
//! connection.
//!
//! Kubernetes clients (client-go's `remotecommand` and `portforward`, through moby's
//! spdystream) open one stream per stdio channel with a SYN_STREAM whose headers say which
//! (`streamtype`, `port`, `requestid`); the other end answers each with a SYN_REPLY and the
//! two sides exchange DATA frames, half-closing with FIN. Header blocks are zlib-compressed
//! with the SPDY/3 dictionary, one compression context per direction for the life of the
//! connection. spdystream ignores flow control (WINDOW_UPDATE, SETTINGS), and so does this
//! module: back-pressure comes from not reading the socket while a stream's reader is slow.
//!
//! Each connection runs two tasks: a reader that decodes frames and routes DATA to the
//! stream it belongs to, and a writer that owns the socket's write half and the header
//! compressor, so stream handles can write from any task.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, oneshot};

use crate::probe::PeerProbe;

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const FLAG_FIN: u8 = 0x01;

/// RST_STREAM status: PROTOCOL_ERROR.
pub const PROTOCOL_ERROR: u32 = 1;
/// RST_STREAM status: CANCEL.
pub const CANCEL: u32 = 5;

/// The largest DATA payload this end sends; spdystream accepts up to 16 MiB.
const MAX_WRITE: usize = 32 * 1024;
/// The largest decompressed header block accepted from the peer.
const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// The largest control frame accepted from the peer.
const MAX_CONTROL_FRAME: usize = 64 * 1024;
/// DATA pieces queued per stream before the reader stops reading the socket.
const STREAM_QUEUE: usize = 16;
/// A DATA frame is read and handed on in pieces of at most this many bytes (a frame may
/// declare 16 MiB; what is queued per stream stays at most `STREAM_QUEUE` pieces).
const DATA_PIECE: usize = 64 * 1024;
/// Streams the peer opened that wait to be accepted; more are refused.
const ACCEPT_QUEUE: usize = 16;
/// RST_STREAM status: REFUSED_STREAM.
pub const REFUSED_STREAM: u32 = 3;

/// Header names (lower case, as SPDY/3 requires) and values.
pub type Headers = Vec<(String, String)>;

/// The first value of header `name` (case-insensitive), if present.
pub fn header<'a>(h: &'a Headers, name: &str) -> Option<&'a str> {
    h.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The SPDY/3 header compression dictionary (draft-mbelshe-httpbis-spdy-00, 2.6.10.1):
/// 65 length-prefixed words followed by a run of raw text.
fn dictionary() -> &'static [u8] {
    static DICT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    DICT.get_or_init(|| {
        const WORDS: [&str; 65] = [
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TAIL: &str = concat!(
            "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
            "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently",
            "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error",
            "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct ",
            "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,",
            "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
            "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8",
            "charset=iso-8859-1,utf-,*,enq=0.",
        );
        let mut d = Vec::with_capacity(1423);
        for w in WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(TAIL.as_bytes());
        d
    })
}

fn proto_err(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Compresses header blocks: one zlib stream for the connection, sync-flushed per block.
struct Deflater(Compress);

impl Deflater {
    fn new() -> Self {
        let mut z = Compress::new(Compression::default(), true);
        // Only fails for a stream already in use.
        let _ = z.set_dictionary(dictionary());
        Deflater(z)
    }

    fn block(&mut self, headers: &Headers) -> io::Result<Vec<u8>> {
        let mut raw = Vec::with_capacity(64);
        raw.put_u32(headers.len() as u32);
        for (k, v) in headers {
            raw.put_u32(k.len() as u32);
            raw.extend(k.bytes().map(|b| b.to_ascii_lowercase()));
            raw.put_u32(v.len() as u32);
            raw.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut consumed = 0;
        loop {
            let before = self.0.total_in();
            self.0
                .compress_vec(&raw[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|e| proto_err(format!("compress headers: {e}")))?;
            consumed += (self.0.total_in() - before) as usize;
            // Done once all input is in and the flush did not run out of room.
            if consumed == raw.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            out.reserve(out.capacity().max(64));
        }
    }
}

/// Decompresses header blocks, supplying the dictionary when zlib asks for it.
struct Inflater(Decompress);

impl Inflater {
    fn new() -> Self {
        Inflater(Decompress::new(true))
    }

    fn block(&mut self, input: &[u8]) -> io::Result<Headers> {
        let mut out: Vec<u8> = Vec::with_capacity(1024);
        let mut consumed = 0;
        loop {
            let before = self.0.total_in();
            let res = self
                .0
                .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync);
            consumed += (self.0.total_in() - before) as usize;
            match res {
                Ok(Status::StreamEnd) => return Err(proto_err("header stream ended")),
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.0
                        .set_dictionary(dictionary())
                        .map_err(|e| proto_err(format!("header dictionary: {e}")))?;
                    continue;
                }
                Err(e) => return Err(proto_err(format!("decompress headers: {e}"))),
            }
            if consumed == input.len() && out.len() < out.capacity() {
                break;
            }
            if out.len() >= MAX_HEADER_BLOCK {
                return Err(proto_err("header block too large"));
            }
            out.reserve(out.capacity());
        }
        parse_block(&out)
    }
}

fn parse_block(mut b: &[u8]) -> io::Result<Headers> {
    let short = || proto_err("truncated header block");
    if b.len() < 4 {
        return Err(short());
    }
    let n = b.get_u32() as usize;
    if n > 1024 {
        return Err(proto_err("too many headers"));
    }
    let mut h = Vec::with_capacity(n);
    let take = |b: &mut &[u8]| -> io::Result<String> {
        if b.len() < 4 {
            return Err(short());
        }
        let len = b.get_u32() as usize;
        if b.len() < len {
            return Err(short());
        }
        let s = String::from_utf8_lossy(&b[..len]).into_owned();
        b.advance(len);
        Ok(s)
    };
    for _ in 0..n {
        let k = take(&mut b)?;
        let v = take(&mut b)?;
        // Several values of one name are NUL-separated; keep each.
        for v in v.split('\0') {
            h.push((k.to_ascii_lowercase(), v.to_string()));
        }
    }
    Ok(h)
}

/// Decodes `data` as the frames a peer sends, as a session reads them, until the bytes end
/// or a frame is refused; returns how many frames were read. For fuzzing the decoder: it
/// must refuse hostile bytes, never panic, hang or allocate without bound.
#[doc(hidden)]
pub fn decode_frames(data: &[u8]) -> io::Result<usize> {
    futures::executor::block_on(async {
        let mut r = data;
        let mut inf = Inflater::new();
        let mut n = 0;
        let mut piece = vec![0u8; DATA_PIECE];
        loop {
            match read_frame(&mut r, &mut inf).await {
                Ok(Frame::Data { mut len, .. }) => {
                    while len > 0 {
                        let size = len.min(DATA_PIECE);
                        match r.read_exact(&mut piece[..size]).await {
                            Ok(_) => len -= size,
                            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(n),
                            Err(e) => return Err(e),
                        }
                    }
                    n += 1;
                }
                Ok(_) => n += 1,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(n),
                Err(e) => return Err(e),
            }
        }
    })
}

/// Decodes one compressed header block (a SYN_STREAM's), with a fresh zlib stream. For
/// fuzzing, as [`decode_frames`].
#[doc(hidden)]
pub fn decode_header_block(data: &[u8]) -> io::Result<usize> {
    Inflater::new().block(data).map(|h| h.len())
}

/// Plays `ops` as a peer's frames against a server session whose streams are accepted and
/// read (a few of them, slowly), and returns the most streams it held open at once. For
/// fuzzing sequences of frames: whatever the peer sends, the session must end when the peer
/// does, never hold more than `max_streams`, and never panic.
///
/// Each op is a byte naming the frame (by its value modulo 7: SYN_STREAM, DATA, DATA with
/// FIN, RST_STREAM, PING, HEADERS, raw bytes) followed by its arguments: a stream id byte,
/// and for DATA a length byte (times 257).
#[doc(hidden)]
pub fn fuzz_session(ops: &[u8], max_streams: usize) -> usize {
    // No timers: "stuck" is measured in scheduler turns, so a run takes no wall time.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    /// Scheduler turns a step may take before it counts as stuck.
    const TURNS: usize = 200;
    rt.block_on(async {
        let (server_io, peer) = tokio::io::duplex(1 << 16);
        let (mut peer_r, mut peer_w) = tokio::io::split(peer);
        let session = Session::with_limits(
            server_io,
            Role::Server,
            Limits {
                max_streams,
                probe: None,
            },
        );
        let accepting = {
            let session = session.clone();
            tokio::spawn(async move {
                let mut held = Vec::new();
                while let Some(mut s) = session.accept().await {
                    if held.len() % 2 == 0 {
                        // Read this one to its end, slowly.
                        tokio::spawn(async move {
                            while s.rx.recv().await.is_some() {
                                tokio::task::yield_now().await;
                            }
                        });
                    } else {
                        // Hold this one and never read it.
                        held.push(s);
                    }
                }
            })
        };
        let mut def = Deflater::new();
        let mut most = 0;
        let mut it = ops.iter().copied();
        let mut sink = [0u8; 4096];
        while let Some(op) = it.next() {
            let id = u32::from(it.next().unwrap_or(1));
            let mut buf = BytesMut::new();
            match op % 7 {
                0 => {
                    let Ok(block) = def.block(&vec![("streamtype".into(), "data".into())]) else {
                        break;
                    };
                    let mut body = Vec::new();
                    body.put_u32(id);
                    body.put_u32(0);
                    body.put_u16(0);
                    body.extend_from_slice(&block);
                    control(&mut buf, SYN_STREAM, 0, &body);
                }
                1 | 2 => {
                    let len = usize::from(it.next().unwrap_or(0)) * 257;
                    buf.put_u32(id);
                    buf.put_u32((if op % 7 == 2 { 1 << 24 } else { 0 }) | len as u32);
                    buf.extend(std::iter::repeat_n(op, len));
                }
                3 => {
                    let mut body = [0u8; 8];
                    body[..4].copy_from_slice(&id.to_be_bytes());
                    body[4..].copy_from_slice(&CANCEL.to_be_bytes());
                    control(&mut buf, RST_STREAM, 0, &body);
                }
                4 => control(&mut buf, PING, 0, &id.to_be_bytes()),
                5 => {
                    let Ok(block) = def.block(&vec![]) else { break };
                    let mut body = id.to_be_bytes().to_vec();
                    body.extend_from_slice(&block);
                    control(&mut buf, HEADERS, 1, &body);
                }
                _ => buf.put_u8(op),
            }
            // The peer writes while draining what the session answers (it would block on a
            // full pipe otherwise), as a real peer's socket does.
            let write = peer_w.write_all(&buf);
            tokio::pin!(write);
            let mut turns = 0;
            loop {
                tokio::select! {
                    biased;
                    _ = &mut write => break,
                    r = peer_r.read(&mut sink) => if matches!(r, Ok(0) | Err(_)) { break },
                    _ = tokio::task::yield_now() => {
                        turns += 1;
                        if turns > TURNS {
                            break;
                        }
                    }
                }
            }
            most = most.max(session.open_streams());
        }
        drop((peer_r, peer_w));
        // The peer is gone, and so are the streams held unread (a duplex pipe has no socket
        // to watch for the hang-up; `a_peer_that_hangs_up_is_seen…` covers that): the
        // session ends.
        accepting.abort();
        let _ = accepting.await;
        let closed = session.closed();
        tokio::pin!(closed);
        let mut turns = 0;
        loop {
            tokio::select! {
                biased;
                _ = &mut closed => break,
                _ = tokio::task::yield_now() => {
                    turns += 1;
                    assert!(turns < TURNS * 100, "the session outlived its peer");
                }
            }
        }
        most
    })
}

/// A decoded frame.
#[derive(Debug)]
enum Frame {
    SynStream {
        id: u32,
        fin: bool,
        headers: Headers,
    },
    SynReply {
        id: u32,
        fin: bool,
    },
    Headers {
        id: u32,
        fin: bool,
    },
    Rst {
        id: u32,
    },
    Ping(u32),
    GoAway,
    /// A DATA frame's header: its `len` bytes of payload follow on the wire.
    Data {
        id: u32,
        fin: bool,
        len: usize,
    },
    Other,
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, inf: &mut Inflater) -> io::Result<Frame> {
    let mut head = [0u8; 8];
    r.read_exact(&mut head).await?;
    let flags = head[4];
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    let fin = flags & FLAG_FIN != 0;
    if head[0] & 0x80 == 0 {
        let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        return Ok(Frame::Data { id, fin, len });
    }
    let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
    let kind = u16::from_be_bytes([head[2], head[3]]);
    if len > MAX_CONTROL_FRAME {
        return Err(proto_err(format!("control frame of {len} bytes")));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    if version != VERSION {
        return Err(proto_err(format!("SPDY version {version}, want 3")));
    }
    let mut b = &body[..];
    let need = |b: &[u8], n: usize| {
        if b.len() < n {
            Err(proto_err(format!("short control frame type {kind}")))
        } else {
            Ok(())
        }
    };
    Ok(match kind {
        SYN_STREAM => {
            need(b, 10)?;
            let id = b.get_u32() & 0x7fff_ffff;
            b.advance(6); // associated stream, priority, slot
            let headers = inf.block(b)?;
            Frame::SynStream { id, fin, headers }
        }
        SYN_REPLY | HEADERS => {
            need(b, 4)?;
            let id = b.get_u32() & 0x7fff_ffff;
            // Decompress even when ignored: the zlib context is shared.
            inf.block(b)?;
            if kind == SYN_REPLY {
                Frame::SynReply { id, fin }
            } else {
                Frame::Headers { id, fin }
            }
        }
        RST_STREAM => {
            need(b, 8)?;
            Frame::Rst {
                id: b.get_u32() & 0x7fff_ffff,
            }
        }
        PING => {
            need(b, 4)?;
            Frame::Ping(b.get_u32())
        }
        GOAWAY => Frame::GoAway,
        _ => Frame::Other,
    })
}

/// What the writer task is asked to send.
#[derive(Debug)]
enum Out {
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

fn control(buf: &mut BytesMut, kind: u16, flags: u8, body: &[u8]) {
    buf.put_u16(0x8000 | VERSION);
    buf.put_u16(kind);
    buf.put_u32((u32::from(flags) << 24) | body.len() as u32);
    buf.put_slice(body);
}

async fn writer<W: AsyncWrite + Unpin>(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_is_the_spdy3_one() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b"enq=0."));
    }

    #[test]
    fn header_blocks_round_trip_across_frames() {
        let mut def = Deflater::new();
        let mut inf = Inflater::new();
        for i in 0..50 {
            let h: Headers = vec![
                ("streamtype".into(), "data".into()),
                ("port".into(), format!("{}", 8000 + i)),
                ("requestid".into(), i.to_string()),
            ];
            let block = def.block(&h).unwrap();
            assert_eq!(inf.block(&block).unwrap(), h);
        }
        // Names go out lower-cased; NUL-separated values come back as separate entries.
        let block = def
            .block(&vec![("X-Stream-Protocol-Version".into(), "a\0b".into())])
            .unwrap();
        assert_eq!(
            inf.block(&block).unwrap(),
            vec![
                ("x-stream-protocol-version".to_string(), "a".to_string()),
                ("x-stream-protocol-version".to_string(), "b".to_string())
            ]
        );
    }

    #[test]
    fn hostile_header_blocks_are_errors() {
        let mut inf = Inflater::new();
        assert!(inf.block(b"not zlib at all").is_err());
        // A valid stream whose block claims more than it holds.
        let mut def = Deflater::new();
        let mut raw = Vec::new();
        raw.put_u32(1);
        raw.put_u32(1000);
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(dictionary()).unwrap();
        let mut out = Vec::with_capacity(256);
        z.compress_vec(&raw, &mut out, FlushCompress::Sync).unwrap();
        assert!(Inflater::new().block(&out).is_err());
        // A block that inflates past the limit.
        let big: Headers = vec![("a".into(), "x".repeat(MAX_HEADER_BLOCK * 2))];
        let block = def.block(&big).unwrap();
        assert!(Inflater::new().block(&block).is_err());
    }

    #[tokio::test]
    async fn streams_between_a_client_and_a_server() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = Session::new(a, Role::Server);
        let client = Session::new(b, Role::Client);
        let srv = tokio::spawn({
            let server = server.clone();
            async move {
                let mut s = server.accept().await.unwrap();
                assert_eq!(header(&s.headers, "streamType"), Some("stdin"));
                let mut got = Vec::new();
                while let Some(b) = s.rx.recv().await {
                    got.extend_from_slice(&b);
                }
                s.tx.write(Bytes::from(got.clone())).await.unwrap();
                s.tx.close().await.unwrap();
                got.len()
            }
        });
        let mut s = client
            .open(
                vec![("streamtype".into(), "stdin".into())],
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(s.id, 1);
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        s.tx.write(Bytes::from(payload.clone())).await.unwrap();
        s.tx.close().await.unwrap();
        let mut echo = Vec::new();
        while let Some(b) = s.rx.recv().await {
            echo.extend_from_slice(&b);
        }
        assert_eq!(echo, payload);
        assert_eq!(srv.await.unwrap(), payload.len());
        server.close().await;
        tokio::time::timeout(Duration::from_secs(5), client.closed())
            .await
            .unwrap();
        assert!(client.open(vec![], Duration::from_secs(1)).await.is_err());
    }

    #[tokio::test]
    async fn a_reset_ends_the_stream_and_refuses_an_open() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = Session::new(a, Role::Server);
        let client = Session::new(b, Role::Client);
        let s = client.open(vec![], Duration::from_secs(5)).await.unwrap();
        let mut acc = server.accept().await.unwrap();
        s.tx.reset().await.unwrap();
        assert!(acc.rx.recv().await.is_none());
        drop(server);
    }

    /// A raw SYN_STREAM (id, headers) as a client writes it, with `def` its compressor.
    fn syn_stream(def: &mut Deflater, id: u32) -> BytesMut {
        let block = def
            .block(&vec![("streamtype".into(), "stdin".into())])
            .unwrap();
        let mut body = Vec::new();
        body.put_u32(id);
        body.put_u32(0);
        body.put_u16(0);
        body.extend_from_slice(&block);
        let mut buf = BytesMut::new();
        control(&mut buf, SYN_STREAM, 0, &body);
        buf
    }

    #[tokio::test]
    async fn streams_nobody_accepts_are_refused_and_the_reader_keeps_going() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = Session::with_limits(
            a,
            Role::Server,
            Limits {
                max_streams: 32,
                probe: None,
            },
        );
        let client = Session::new(b, Role::Client);
        // The server accepts nothing: 16 wait in its queue, the rest are refused (and
        // past 32, refused before a reply); every open is answered, none waits.
        let mut opened = Vec::new();
        for _ in 0..100 {
            match client.open(vec![], Duration::from_secs(2)).await {
                Ok(s) => opened.push(s),
                Err(e) => assert_ne!(e.kind(), io::ErrorKind::TimedOut, "{e}"),
            }
        }
        let mut refused = 0;
        for s in &mut opened {
            if tokio::time::timeout(Duration::from_millis(200), s.rx.recv())
                .await
                .is_ok_and(|d| d.is_none())
            {
                refused += 1;
            }
        }
        assert_eq!(opened.len() - refused, ACCEPT_QUEUE, "{refused}");
        assert!(server.open_streams() <= 32, "{}", server.open_streams());
        // Streams that end leave the table.
        for _ in 0..ACCEPT_QUEUE {
            drop(server.accept().await.unwrap());
        }
        drop(opened);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(server.open_streams(), 0);
        let s = client.open(vec![], Duration::from_secs(2)).await.unwrap();
        assert!(server.accept().await.is_some());
        drop(s);
    }

    #[tokio::test]
    async fn a_peer_that_hangs_up_is_seen_while_a_stream_reader_is_behind() {
        use std::os::fd::AsFd;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (srv, _) = l.accept().await.unwrap();
        let probe = PeerProbe::new(srv.as_fd()).unwrap();
        let server = Session::with_limits(
            srv,
            Role::Server,
            Limits {
                max_streams: 8,
                probe: Some(probe),
            },
        );
        // A client that opens a stream and floods it; the server holds the stream and never
        // reads it, so the session's reader waits on it.
        let (_r, mut w) = tcp.into_split();
        let flood = tokio::spawn(async move {
            let mut def = Deflater::new();
            w.write_all(&syn_stream(&mut def, 1)).await.unwrap();
            let piece = vec![7u8; 60_000];
            loop {
                let mut head = BytesMut::new();
                head.put_u32(1);
                head.put_u32(piece.len() as u32);
                if w.write_all(&head).await.is_err() || w.write_all(&piece).await.is_err() {
                    return;
                }
            }
        });
        let held = server.accept().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        flood.abort();
        let _ = flood.await;
        drop(_r);
        tokio::time::timeout(Duration::from_secs(5), server.closed())
            .await
            .expect("the hang-up went unseen");
        drop(held);
    }

    #[test]
    fn sequences_of_frames_never_hold_more_streams_than_allowed() {
        // Twenty streams opened, fed and left open, a reset, pings, data for streams that
        // were never opened.
        let mut ops = Vec::new();
        for id in (1..40u8).step_by(2) {
            ops.extend([0, id, 1, id, 200]);
        }
        ops.extend([3, 1, 4, 7, 1, 99, 10, 2, 3, 5, 0]);
        assert!(fuzz_session(&ops, 8) <= 8);
        assert!(fuzz_session(&[6, 6, 6], 8) == 0);
        // Found by the fuzzer: DATA filling the queue of a stream nobody accepted held the
        // reader for good (now that stream is reset).
        let found = [
            105, 105, 105, 105, 105, 63, 224, 71, 63, 226, 63, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
            1, 1, 1, 1, 1, 1, 48, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 105, 105,
            105, 63, 224, 71, 63, 226, 63, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
        ];
        assert!(fuzz_session(&found, 8) <= 8);
    }

    #[test]
    fn a_data_frame_is_read_in_pieces_whatever_it_declares() {
        // A DATA frame declaring 16 MiB with a few bytes behind it: refused as truncated,
        // having allocated a piece, not 16 MiB.
        let mut b = Vec::new();
        b.put_u32(1);
        b.put_u32(0x00ff_ffff);
        b.extend_from_slice(b"short");
        assert_eq!(decode_frames(&b).unwrap(), 0);
    }
}

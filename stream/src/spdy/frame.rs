//! SPDY/3.1 frames on the wire: the header-block compression (zlib with the SPDY/3
//! dictionary, one context per direction), decoding a peer's frames (DATA payloads are left
//! on the wire for the caller to read in pieces) and encoding control frames.

use std::io;

use bytes::{Buf, BufMut, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::*;

/// The SPDY/3 header compression dictionary (draft-mbelshe-httpbis-spdy-00, 2.6.10.1):
/// 65 length-prefixed words followed by a run of raw text.
pub(super) fn dictionary() -> &'static [u8] {
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

pub(super) fn proto_err(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Compresses header blocks: one zlib stream for the connection, sync-flushed per block.
pub(super) struct Deflater(Compress);

impl Deflater {
    pub(super) fn new() -> Self {
        let mut z = Compress::new(Compression::default(), true);
        // Only fails for a stream already in use.
        let _ = z.set_dictionary(dictionary());
        Deflater(z)
    }

    pub(super) fn block(&mut self, headers: &Headers) -> io::Result<Vec<u8>> {
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
pub(super) struct Inflater(Decompress);

impl Inflater {
    pub(super) fn new() -> Self {
        Inflater(Decompress::new(true))
    }

    pub(super) fn block(&mut self, input: &[u8]) -> io::Result<Headers> {
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

pub(super) fn parse_block(mut b: &[u8]) -> io::Result<Headers> {
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

/// A decoded frame.
#[derive(Debug)]
pub(super) enum Frame {
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

pub(super) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    inf: &mut Inflater,
) -> io::Result<Frame> {
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

pub(super) fn control(buf: &mut BytesMut, kind: u16, flags: u8, body: &[u8]) {
    buf.put_u16(0x8000 | VERSION);
    buf.put_u16(kind);
    buf.put_u32((u32::from(flags) << 24) | body.len() as u32);
    buf.put_slice(body);
}

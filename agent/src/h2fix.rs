//! Accepts HTTP/2 requests whose `:authority` is a unix socket path.
//!
//! gRPC-Go before 1.5x (crictl and critest v1.26 among its users, and kubelets before 1.26) sends
//! the socket path, e.g. `/run/berth/berth.sock`, as `:authority`. containerd's Go server takes
//! it; the `h2` crate under tonic rejects it with PROTOCOL_ERROR (hyperium/h2#487, open). This
//! wrapper sits between the socket and tonic and rewrites, in the client's HEADERS blocks, an
//! `:authority` literal that is not a valid URI authority into one that is, of the same decoded
//! length: HPACK counts dynamic-table entries by decoded length, so the client's and the
//! server's tables stay in step and later indexed references resolve to the rewritten value.
//!
//! Everything else passes through byte for byte; a connection that never sends such a header
//! is not changed at all.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE_LEN: usize = 24;
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The smallest SETTINGS_MAX_FRAME_SIZE; rewritten frames never exceed it.
const MAX_FRAME: usize = 16_384;
/// Past this, a frame is not buffered: the wrapper steps aside for the rest of the connection.
const MAX_BUFFERED_FRAME: usize = 1 << 24;

/// An IO object whose reads have invalid `:authority` values made valid.
pub struct AuthorityFix<S> {
    inner: S,
    raw: BytesMut,
    ready: BytesMut,
    preface_left: usize,
    pending: Option<Pending>,
    passthrough: bool,
    eof: bool,
}

struct Pending {
    raw_frames: Vec<u8>,
    stream_id: [u8; 4],
    flags: u8,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

impl<S> AuthorityFix<S> {
    /// Wraps a freshly accepted connection.
    pub fn new(inner: S) -> Self {
        AuthorityFix {
            inner,
            raw: BytesMut::new(),
            ready: BytesMut::new(),
            preface_left: PREFACE_LEN,
            pending: None,
            passthrough: false,
            eof: false,
        }
    }

    /// Moves every complete unit of `raw` into `ready`, rewriting header blocks.
    fn process(&mut self) {
        if self.preface_left > 0 {
            let n = self.preface_left.min(self.raw.len());
            self.ready.extend_from_slice(&self.raw.split_to(n));
            self.preface_left -= n;
        }
        while self.preface_left == 0 && !self.passthrough && self.raw.len() >= FRAME_HEADER {
            let len = u32::from_be_bytes([0, self.raw[0], self.raw[1], self.raw[2]]) as usize;
            if len > MAX_BUFFERED_FRAME {
                self.passthrough = true;
                break;
            }
            if self.raw.len() < FRAME_HEADER + len {
                return;
            }
            let frame = self.raw.split_to(FRAME_HEADER + len);
            self.frame(&frame);
        }
        if self.passthrough || self.eof {
            if let Some(p) = self.pending.take() {
                self.ready.extend_from_slice(&p.raw_frames);
            }
            let rest = self.raw.split();
            self.ready.extend_from_slice(&rest);
        }
    }

    fn frame(&mut self, frame: &[u8]) {
        let (kind, flags) = (frame[3], frame[4]);
        let stream_id = [frame[5], frame[6], frame[7], frame[8]];
        let payload = &frame[FRAME_HEADER..];
        match (kind, self.pending.as_mut()) {
            (HEADERS, None) => {
                let Some((priority, fragment)) = split_headers_payload(flags, payload) else {
                    self.ready.extend_from_slice(frame);
                    return;
                };
                let p = Pending {
                    raw_frames: frame.to_vec(),
                    stream_id,
                    flags,
                    priority,
                    block: fragment.to_vec(),
                };
                if flags & END_HEADERS != 0 {
                    self.finish(p);
                } else {
                    self.pending = Some(p);
                }
            }
            (CONTINUATION, Some(p)) if p.stream_id == stream_id => {
                p.raw_frames.extend_from_slice(frame);
                p.block.extend_from_slice(payload);
                if flags & END_HEADERS != 0
                    && let Some(p) = self.pending.take()
                {
                    self.finish(p);
                }
            }
            (_, Some(_)) => {
                // Not what the protocol allows: hand everything over unchanged and let h2 say so.
                if let Some(p) = self.pending.take() {
                    self.ready.extend_from_slice(&p.raw_frames);
                }
                self.ready.extend_from_slice(frame);
            }
            (_, None) => self.ready.extend_from_slice(frame),
        }
    }

    fn finish(&mut self, p: Pending) {
        let Some(block) = rewrite_block(&p.block) else {
            self.ready.extend_from_slice(&p.raw_frames);
            return;
        };
        tracing::debug!("rewrote an invalid :authority (a unix socket path) for h2");
        let mut rest = &block[..];
        let mut first = true;
        loop {
            let room = if first && p.priority.is_some() {
                MAX_FRAME - 5
            } else {
                MAX_FRAME
            };
            let n = rest.len().min(room);
            let (chunk, tail) = rest.split_at(n);
            let last = tail.is_empty();
            let (kind, mut flags) = if first {
                (HEADERS, p.flags & END_STREAM)
            } else {
                (CONTINUATION, 0)
            };
            let mut body = Vec::with_capacity(n + 5);
            if first && let Some(pr) = p.priority {
                flags |= PRIORITY;
                body.extend_from_slice(&pr);
            }
            if last {
                flags |= END_HEADERS;
            }
            body.extend_from_slice(chunk);
            let len = (body.len() as u32).to_be_bytes();
            self.ready
                .extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
            self.ready.extend_from_slice(&p.stream_id);
            self.ready.extend_from_slice(&body);
            rest = tail;
            first = false;
            if last {
                break;
            }
        }
    }
}

/// The priority fields and the header block fragment of a HEADERS payload.
fn split_headers_payload(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut p = payload;
    let mut pad = 0usize;
    if flags & PADDED != 0 {
        pad = *p.first()? as usize;
        p = &p[1..];
    }
    let priority = if flags & PRIORITY != 0 {
        let pr: [u8; 5] = p.get(..5)?.try_into().ok()?;
        p = &p[5..];
        Some(pr)
    } else {
        None
    };
    let end = p.len().checked_sub(pad)?;
    Some((priority, &p[..end]))
}

/// Reads an HPACK integer with an `n`-bit prefix at `buf[*pos]`.
fn read_int(buf: &[u8], pos: &mut usize, n: u8) -> Option<u64> {
    let mask = (1u16 << n) as u64 - 1;
    let mut v = (*buf.get(*pos)? as u64) & mask;
    *pos += 1;
    if v < mask {
        return Some(v);
    }
    let mut shift = 0u32;
    loop {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v = v.checked_add(((b & 0x7f) as u64).checked_shl(shift)?)?;
        shift += 7;
        if b & 0x80 == 0 {
            return Some(v);
        }
        if shift > 56 {
            return None;
        }
    }
}

fn write_int(out: &mut Vec<u8>, first_bits: u8, n: u8, mut v: u64) {
    let mask = (1u16 << n) as u64 - 1;
    if v < mask {
        out.push(first_bits | v as u8);
        return;
    }
    out.push(first_bits | mask as u8);
    v -= mask;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A string literal at `buf[*pos]`: (huffman, bytes).
fn read_string<'a>(buf: &'a [u8], pos: &mut usize) -> Option<(bool, &'a [u8])> {
    let huffman = *buf.get(*pos)? & 0x80 != 0;
    let len = usize::try_from(read_int(buf, pos, 7)?).ok()?;
    let s = buf.get(*pos..pos.checked_add(len)?)?;
    *pos += len;
    Some((huffman, s))
}

fn decode_string(huffman: bool, s: &[u8]) -> Option<Vec<u8>> {
    if huffman {
        hpack::huffman::HuffmanDecoder::new().decode(s).ok()
    } else {
        Some(s.to_vec())
    }
}

fn is_valid_authority(v: &[u8]) -> bool {
    http::uri::Authority::try_from(v).is_ok()
}

/// Keeps the length; every byte outside `[A-Za-z0-9._~-]` becomes `-`.
fn sanitize(v: &[u8]) -> Vec<u8> {
    v.iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-') {
                b
            } else {
                b'-'
            }
        })
        .collect()
}

/// Rewrites a header block; `None` when nothing needed changing (or it does not parse, which
/// is h2's to report).
fn rewrite_block(block: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(block.len() + 16);
    let mut pos = 0;
    let mut changed = false;
    while pos < block.len() {
        let start = pos;
        let b = block[pos];
        // Indexed field (1xxxxxxx) and table size update (001xxxxx) carry no literal.
        let prefix = match b {
            _ if b & 0x80 != 0 || b & 0xe0 == 0x20 => {
                read_int(block, &mut pos, if b & 0x80 != 0 { 7 } else { 5 })?;
                out.extend_from_slice(&block[start..pos]);
                continue;
            }
            _ if b & 0xc0 == 0x40 => 6, // literal with incremental indexing
            _ => 4,                     // literal without / never indexed
        };
        let index = read_int(block, &mut pos, prefix)?;
        let is_authority = if index == 0 {
            let (h, name) = read_string(block, &mut pos)?;
            decode_string(h, name)? == b":authority"
        } else {
            index == 1
        };
        let value_start = pos;
        let (h, value) = read_string(block, &mut pos)?;
        if is_authority {
            let decoded = decode_string(h, value)?;
            if !decoded.is_empty() && !is_valid_authority(&decoded) {
                out.extend_from_slice(&block[start..value_start]);
                let fixed = sanitize(&decoded);
                write_int(&mut out, 0x00, 7, fixed.len() as u64);
                out.extend_from_slice(&fixed);
                changed = true;
                continue;
            }
        }
        out.extend_from_slice(&block[start..pos]);
    }
    changed.then_some(out)
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut tmp = [0u8; 16 << 10];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    if rb.filled().is_empty() {
                        this.eof = true;
                    } else {
                        this.raw.extend_from_slice(rb.filled());
                    }
                    this.process();
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for AuthorityFix<tokio::net::UnixStream> {
    type ConnectInfo = tonic::transport::server::UdsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Feeds `input` through the wrapper in `chunk`-byte reads and returns what tonic would see.
    async fn through(input: Vec<u8>, chunk: usize) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for c in input.chunks(chunk) {
                client.write_all(c).await.unwrap();
            }
        });
        let mut fix = AuthorityFix::new(server);
        let mut out = Vec::new();
        writer.await.unwrap();
        // duplex EOF comes when the client half is dropped (it was moved into the task).
        tokio::io::AsyncReadExt::read_to_end(&mut fix, &mut out)
            .await
            .unwrap();
        out
    }

    fn headers_of(stream: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut dec = hpack::Decoder::new();
        let mut pos = PREFACE_LEN;
        let mut blocks = Vec::new();
        let mut cur = Vec::new();
        while pos < stream.len() {
            let len =
                u32::from_be_bytes([0, stream[pos], stream[pos + 1], stream[pos + 2]]) as usize;
            let (kind, flags) = (stream[pos + 3], stream[pos + 4]);
            let payload = &stream[pos + 9..pos + 9 + len];
            if kind == HEADERS || kind == CONTINUATION {
                let frag = if kind == HEADERS {
                    split_headers_payload(flags, payload).unwrap().1
                } else {
                    payload
                };
                cur.extend_from_slice(frag);
                if flags & END_HEADERS != 0 {
                    blocks.push(dec.decode(&cur).unwrap());
                    cur.clear();
                }
            }
            pos += 9 + len;
        }
        blocks
    }

    fn request(enc: &mut hpack::Encoder<'_>, authority: &[u8]) -> Vec<u8> {
        let hs: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/runtime.v1.RuntimeService/Version"),
            (b":authority", authority),
            (b"content-type", b"application/grpc"),
        ];
        enc.encode(hs)
    }

    #[tokio::test]
    async fn socket_path_authority_becomes_valid_and_tables_stay_in_step() {
        let mut enc = hpack::Encoder::new();
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        let b1 = request(&mut enc, b"/run/berth/berth.sock");
        input.extend(frame(HEADERS, END_HEADERS, 1, &b1));
        input.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0"));
        // Second request: the encoder now refers to its dynamic table entry.
        let b2 = request(&mut enc, b"/run/berth/berth.sock");
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &b2));
        for chunk in [1, 7, 4096] {
            let out = through(input.clone(), chunk).await;
            let blocks = headers_of(&out);
            assert_eq!(blocks.len(), 2);
            for b in &blocks {
                let auth = &b.iter().find(|(k, _)| k == b":authority").unwrap().1;
                assert_eq!(auth, b"-run-berth-berth.sock");
                assert!(is_valid_authority(auth));
                assert!(
                    b.iter()
                        .any(|(k, v)| k == b":path" && v == b"/runtime.v1.RuntimeService/Version")
                );
            }
            // SETTINGS and DATA frames pass through untouched.
            assert!(
                out.windows(14)
                    .any(|w| w == frame(0x0, END_STREAM, 1, b"\0\0\0\0\0").as_slice())
            );
        }
    }

    #[tokio::test]
    async fn valid_authority_is_byte_for_byte_unchanged() {
        let mut enc = hpack::Encoder::new();
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let b1 = request(&mut enc, b"localhost");
        input.extend(frame(HEADERS, END_HEADERS, 1, &b1));
        assert_eq!(through(input.clone(), 3).await, input);
    }

    #[tokio::test]
    async fn continuation_and_padding_and_priority() {
        let mut enc = hpack::Encoder::new();
        let block = request(&mut enc, b"/tmp/x y.sock");
        let (a, b) = block.split_at(block.len() / 2);
        let mut first = vec![2u8]; // pad length
        first.extend_from_slice(&[0, 0, 0, 0, 15]); // priority
        first.extend_from_slice(a);
        first.extend_from_slice(&[0, 0]);
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 1, &first));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, b));
        let out = through(input, 5).await;
        let blocks = headers_of(&out);
        assert_eq!(
            blocks[0]
                .iter()
                .find(|(k, _)| k == b":authority")
                .unwrap()
                .1,
            b"-tmp-x-y.sock"
        );
        // END_STREAM and the priority survive the rewrite.
        assert_eq!(
            out[PREFACE_LEN + 4] & (END_STREAM | PRIORITY),
            END_STREAM | PRIORITY
        );
    }

    #[test]
    fn hpack_integers_round_trip() {
        for n in [4u8, 5, 6, 7] {
            for v in [
                0u64,
                1,
                14,
                15,
                30,
                31,
                62,
                63,
                126,
                127,
                128,
                1337,
                16_384,
                u32::MAX as u64,
            ] {
                let mut out = Vec::new();
                write_int(&mut out, 0, n, v);
                let mut pos = 0;
                assert_eq!(read_int(&out, &mut pos, n), Some(v));
                assert_eq!(pos, out.len());
            }
        }
        assert_eq!(
            read_int(
                &[
                    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
                ],
                &mut 0,
                7
            ),
            None
        );
        // Garbage never panics.
        for junk in [&[0x40][..], &[0x00, 0x85, 1], &[0x3f], &[0x7f, 0x80]] {
            let _ = rewrite_block(junk);
        }
    }
}

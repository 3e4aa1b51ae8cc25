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

mod frame;
mod fuzz;
mod reader;
mod session;
mod stream;
mod writer;

pub use frame::{decode_frames, decode_header_block};
pub use fuzz::fuzz_session;
pub use session::{Limits, Session};
pub use stream::{Role, Stream, StreamWriter};

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

#[cfg(test)]
mod tests {
    use std::io;
    use std::time::Duration;

    use bytes::{BufMut, Bytes, BytesMut};
    use flate2::{Compress, Compression, FlushCompress};
    use tokio::io::AsyncWriteExt;

    use super::frame::*;
    use super::*;
    use crate::probe::PeerProbe;

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

//! A harness for fuzzing sequences of frames against a real session.

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::frame::{Deflater, control};
use super::*;

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

//! ttrpc's framing: a 10-byte header (body length, stream id, message type, flags) and the
//! body, as both the task server and the event publisher speak it.

use std::io::{Read, Write};

/// The largest frame accepted from a peer (ttrpc's own limit).
const MAX_FRAME: usize = 4 << 20;

/// Reads one frame: (stream id, type, body).
pub fn read_frame(r: &mut impl Read) -> std::io::Result<(u32, u8, Vec<u8>)> {
    let mut h = [0u8; 10];
    r.read_exact(&mut h)?;
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let stream_id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the {MAX_FRAME}-byte limit"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok((stream_id, h[8], body))
}

/// Writes one frame.
pub fn write_frame(
    w: &mut impl Write,
    stream_id: u32,
    kind: u8,
    body: &[u8],
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(10 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&stream_id.to_be_bytes());
    buf.push(kind);
    buf.push(0);
    buf.extend_from_slice(body);
    w.write_all(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_oversized_ones_are_refused() {
        let mut buf = Vec::new();
        write_frame(&mut buf, 7, 1, b"hello").unwrap();
        assert_eq!(&buf[..10], &[0, 0, 0, 5, 0, 0, 0, 7, 1, 0]);
        let (sid, kind, body) = read_frame(&mut buf.as_slice()).unwrap();
        assert_eq!((sid, kind, body.as_slice()), (7, 1, &b"hello"[..]));
        let mut big = Vec::new();
        big.extend_from_slice(&((MAX_FRAME as u32) + 1).to_be_bytes());
        big.extend_from_slice(&[0, 0, 0, 1, 1, 0]);
        assert!(read_frame(&mut big.as_slice()).is_err());
        assert!(read_frame(&mut &buf[..12]).is_err(), "a truncated body");
    }
}

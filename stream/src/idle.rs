//! An idle timeout for upgraded streaming connections: a session in which nothing moved in
//! either direction for the configured time ends, as the kubelet's and containerd's
//! `stream_idle_timeout` end it, so a forgotten `kubectl exec` or port-forward does not hold
//! a process and a connection open for ever.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Wraps a connection; reads fail with `TimedOut` once neither a read nor a write has moved
/// a byte for `timeout`. The session's reader is always polled, so it notices.
pub struct IdleIo<T> {
    inner: T,
    timeout: Option<Duration>,
    last: Instant,
    deadline: Pin<Box<Sleep>>,
}

impl<T> IdleIo<T> {
    /// `timeout: None` never times out.
    pub fn new(inner: T, timeout: Option<Duration>) -> Self {
        let now = Instant::now();
        // With no timeout the timer is armed far away and never re-armed.
        let first = now + timeout.unwrap_or(Duration::from_secs(86400 * 365));
        IdleIo {
            inner,
            timeout,
            last: now,
            deadline: Box::pin(tokio::time::sleep_until(first)),
        }
    }

    fn moved(&mut self) {
        self.last = Instant::now();
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.moved();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some(timeout) = self.timeout else {
                    return Poll::Pending;
                };
                // Loop: a timer that fired early (traffic since it was armed) is re-armed
                // and polled again, so that it wakes this task later.
                loop {
                    if self.deadline.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let due = self.last + timeout;
                    if Instant::now() >= due {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("streaming connection idle for {timeout:?}"),
                        )));
                    }
                    self.deadline.as_mut().reset(due);
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &r
            && *n > 0
        {
            self.moved();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_times_out_and_traffic_keeps_it_alive() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = IdleIo::new(a, Some(Duration::from_secs(10)));
        let mut buf = [0u8; 8];
        // Traffic every 6 s, in both directions, keeps it open well past 10 s.
        for i in 0..4 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            if i % 2 == 0 {
                b.write_all(b"x").await.unwrap();
                assert_eq!(a.read(&mut buf).await.unwrap(), 1);
            } else {
                a.write_all(b"y").await.unwrap();
                assert_eq!(b.read(&mut buf).await.unwrap(), 1);
            }
        }
        // Then silence: the pending read fails 10 s after the last byte (a write), not before.
        let start = Instant::now();
        let e = a.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(9) && waited <= Duration::from_secs(11),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_timeout_waits_for_ever() {
        let (a, _b) = tokio::io::duplex(64);
        let mut a = IdleIo::new(a, None);
        let mut buf = [0u8; 8];
        let r = tokio::time::timeout(Duration::from_secs(86400 * 30), a.read(&mut buf)).await;
        assert!(r.is_err(), "a read without timeout ended: {r:?}");
    }
}

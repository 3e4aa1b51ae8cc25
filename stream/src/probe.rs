//! Noticing that a client went away while nothing reads its connection.
//!
//! A session's reader stops reading the socket while a stream's consumer is behind (that is
//! the back-pressure the protocols rely on). Meanwhile it cannot see the client hang up, and
//! the processes the session started would outlive it. [`PeerProbe`] watches the socket for
//! a hang-up without reading it, and [`watching`] puts it beside any wait.

use std::future::Future;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

/// How often a waiting reader looks whether its peer hung up.
const PROBE_EVERY: Duration = Duration::from_millis(250);

/// The client's socket, watched for a hang-up without being read.
#[derive(Clone, Debug)]
pub struct PeerProbe(Arc<OwnedFd>);

impl PeerProbe {
    /// Watches the socket `fd` (a duplicate is kept; the socket itself stays its owner's).
    pub fn new(fd: BorrowedFd<'_>) -> io::Result<Self> {
        Ok(PeerProbe(Arc::new(rustix::io::fcntl_dupfd_cloexec(fd, 0)?)))
    }

    /// Whether the peer closed its side, reset the connection, or the socket failed.
    pub fn gone(&self) -> bool {
        use rustix::event::{PollFd, PollFlags, poll};
        let mut fds = [PollFd::new(&*self.0, PollFlags::RDHUP)];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match poll(&mut fds, Some(&zero)) {
            Ok(0) | Err(_) => false,
            Ok(_) => fds[0]
                .revents()
                .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR),
        }
    }
}

/// `f`'s output, unless `probe` sees the peer hang up first (then an error: the connection
/// is over, whatever was pending).
pub async fn watching<T>(probe: Option<&PeerProbe>, f: impl Future<Output = T>) -> io::Result<T> {
    tokio::pin!(f);
    loop {
        tokio::select! {
            v = &mut f => return Ok(v),
            _ = tokio::time::sleep(PROBE_EVERY) => {
                if probe.is_some_and(PeerProbe::gone) {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the peer hung up while its session waited",
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[tokio::test]
    async fn a_hang_up_is_seen_with_unread_data_pending() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = l.accept().await.unwrap();
        let probe = PeerProbe::new(server.as_fd()).unwrap();
        assert!(!probe.gone());
        tokio::io::AsyncWriteExt::write_all(&mut client, b"unread")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!probe.gone(), "data alone is no hang-up");
        drop(client);
        let never = std::future::pending::<()>();
        let r = tokio::time::timeout(Duration::from_secs(5), watching(Some(&probe), never)).await;
        assert!(matches!(r, Ok(Err(_))), "{r:?}");
    }
}

//! The stdio of an exec or attach session, as channels. The streaming server (another
//! crate, which knows the wire protocols) fills it in; the container code here only sees
//! bytes going in and out, terminal sizes and whether the client is still there.

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A terminal's size in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermSize {
    /// Columns.
    pub width: u16,
    /// Rows.
    pub height: u16,
}

/// One session's stdio. `stdin` yields what the client sends and ends (`None`) when it
/// closes its stdin; dropping `stdout` / `stderr` ends those streams for the client;
/// `disconnected` fires when the client went away (or the session's time is up), and what
/// the session started is then stopped.
#[derive(Debug)]
pub struct SessionIo {
    /// What the client types; `None` when the session has no stdin.
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    /// Where the process's stdout goes.
    pub stdout: Option<mpsc::Sender<Bytes>>,
    /// Where its stderr goes (unused with a terminal: one stream carries both).
    pub stderr: Option<mpsc::Sender<Bytes>>,
    /// Whether the process gets a terminal.
    pub tty: bool,
    /// The client's terminal size changes.
    pub resize: Option<mpsc::Receiver<TermSize>>,
    /// Fires when the client went away or the session's time is up.
    pub disconnected: CancellationToken,
}

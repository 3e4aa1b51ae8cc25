//! The CRI streaming server: what `Exec`, `Attach` and `PortForward` URLs point at.
//!
//! The CRI calls hand out a one-time URL (`/exec/<token>`, `/attach/<token>`,
//! `/portforward/<token>`); the client (the kubelet, crictl, critest) then opens an HTTP
//! connection to it and upgrades it to SPDY/3.1 or WebSocket, carrying the Kubernetes
//! remote-command (`v4.channel.k8s.io` and older, `v5.channel.k8s.io` on WebSocket) and
//! port-forward (`portforward.k8s.io`) protocols. This crate speaks those protocols and
//! hands the runtime plain channels through [`Backend`]; it knows nothing of containers.
//!
//! ```text
//!  server.rs    tokens, the listener, sessions per client, routing an upgrade
//!  spdy_serve.rs  the SPDY sessions behind the URLs (remote command, port-forward)
//!  ws.rs          the WebSocket ones          pump.rs: what both transports share
//!  spdy/        SPDY/3.1: frame.rs, session.rs, reader.rs, writer.rs, stream.rs
//!  proto.rs     the Kubernetes protocols' versions, status messages, resize messages
//!  probe.rs     noticing a client's hang-up while its session waits
//!  idle.rs, config.rs, client.rs (berth's own client: tests and benchmarks)
//! ```

pub mod client;
pub mod config;
pub mod idle;
pub mod probe;
pub mod proto;
mod pump;
pub mod server;
pub mod spdy;
mod spdy_serve;
pub mod ws;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use config::StreamConfig;
pub use proto::TermSize;
pub use server::{StreamServer, UrlError};

/// What a streaming session wants done; stored behind a token until the client connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Exec {
        container_id: String,
        cmd: Vec<String>,
        opts: StdioOptions,
    },
    Attach {
        container_id: String,
        opts: StdioOptions,
    },
    PortForward {
        pod_id: String,
        /// Ports the CRI request named; empty: any port.
        ports: Vec<u16>,
    },
}

/// Which stdio channels a session carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StdioOptions {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// The client's side of a session, as channels.
///
/// `stdin` yields what the client sends and ends (`None`) when it closes its stdin;
/// dropping `stdout` / `stderr` closes those streams for the client. `disconnected` fires
/// when the client went away before the session ended, so the runtime can stop what it
/// started.
#[derive(Debug)]
pub struct Io {
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub stdout: Option<mpsc::Sender<Bytes>>,
    pub stderr: Option<mpsc::Sender<Bytes>>,
    pub tty: bool,
    pub resize: Option<mpsc::Receiver<TermSize>>,
    pub disconnected: CancellationToken,
}

/// Why the runtime did not serve a session, or how its command ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The command ran and exited with this non-zero code.
    #[error("command exited with code {0}")]
    Exit(i32),
    /// The container or pod does not exist (any more).
    #[error("{0}")]
    NotFound(String),
    /// It exists but cannot serve the session now (it is not running, it has no shim).
    #[error("{0}")]
    Unavailable(String),
    /// Anything else.
    #[error("{0}")]
    Failed(String),
}

/// The runtime operations behind the streaming server.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Runs `cmd` in the container with the session's stdio; returns once it exited and
    /// its output was delivered.
    async fn exec(&self, container_id: &str, cmd: Vec<String>, io: Io) -> Result<(), BackendError>;
    /// Connects the session to the container's own stdio until the container exits, the
    /// client closes its stdin or goes away.
    async fn attach(&self, container_id: &str, io: Io) -> Result<(), BackendError>;
    /// Connects to `port` on the loopback of the pod's network namespace.
    async fn port_forward(
        &self,
        pod_id: &str,
        port: u16,
    ) -> Result<tokio::net::TcpStream, BackendError>;
}

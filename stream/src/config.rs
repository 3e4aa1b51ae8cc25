//! How the streaming server is set up: where it listens, how long things may take, and how
//! much one client and one session may hold.

use std::net::SocketAddr;
use std::time::Duration;

/// How the streaming server listens and how long things may take.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
    /// How long a URL stays valid.
    pub token_ttl: Duration,
    /// How long a client has, once connected, to open the streams it asked for.
    pub stream_creation_timeout: Duration,
    /// TLS (certificate chain, private key), both PEM; `None` serves plain HTTP.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// A session in which nothing moves for this long ends; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Sessions one client (by IP address) may hold at once; more are answered 429.
    pub max_sessions_per_client: usize,
    /// Streams (SPDY) or forwarded ports (WebSocket) one session may hold at once.
    pub max_streams_per_session: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token_ttl: Duration::from_secs(60),
            stream_creation_timeout: Duration::from_secs(30),
            tls: None,
            idle_timeout: Some(Duration::from_secs(4 * 3600)),
            max_sessions_per_client: 128,
            max_streams_per_session: 256,
        }
    }
}

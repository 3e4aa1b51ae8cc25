//! The HTTP side: one-time tokens, the listener (TLS or not), the sessions each client
//! holds, and routing an upgrade to a SPDY session (`spdy_serve.rs`) or a WebSocket one
//! (`ws.rs`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::{Request as HttpRequest, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::config::StreamConfig;
use crate::idle::IdleIo;
use crate::proto::{self};
use crate::spdy::{self, Role, Session};
use crate::{Backend, Request};

/// Tokens waiting for their client at once; more is `ResourceExhausted`, as the kubelet's.
const MAX_IN_FLIGHT: usize = 1000;

/// Why a URL was not handed out.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("{0}")]
    Invalid(String),
    #[error("too many streaming requests waiting for their client ({0}); retry later")]
    Exhausted(usize),
}

impl berth_errdefs::Classify for UrlError {
    fn kind(&self) -> berth_errdefs::ErrorKind {
        match self {
            UrlError::Invalid(_) => berth_errdefs::ErrorKind::InvalidArgument,
            // As the kubelet's own streaming server answers.
            UrlError::Exhausted(_) => berth_errdefs::ErrorKind::ResourceExhausted,
        }
    }
}

struct Pending {
    req: Request,
    expires: Instant,
}

struct Inner {
    cfg: StreamConfig,
    base: String,
    backend: Arc<dyn Backend>,
    tokens: Mutex<HashMap<String, Pending>>,
    /// Sessions open per client address.
    sessions: Arc<Mutex<HashMap<std::net::IpAddr, usize>>>,
}

/// One open session of a client; the count goes down when it is dropped.
pub(crate) struct SessionSlot {
    sessions: Arc<Mutex<HashMap<std::net::IpAddr, usize>>>,
    ip: std::net::IpAddr,
    /// `exec`, `attach` or `portforward`: the session's series in berth's metrics.
    kind: &'static str,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        berth_metrics::STREAM_SESSIONS.with(&[self.kind]).dec();
        let mut m = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl Inner {
    /// A slot for one more session of `ip`, unless it holds its share.
    fn session_slot(&self, ip: std::net::IpAddr, kind: &'static str) -> Option<SessionSlot> {
        let mut m = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= self.cfg.max_sessions_per_client.max(1) {
            return None;
        }
        *n += 1;
        berth_metrics::STREAM_SESSIONS.with(&[kind]).inc();
        berth_metrics::STREAM_SESSIONS_OPENED.with(&[kind]).inc();
        Some(SessionSlot {
            sessions: self.sessions.clone(),
            ip,
            kind,
        })
    }
}

/// Who is on the other end of a connection.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    pub(crate) addr: SocketAddr,
    pub(crate) probe: Option<crate::probe::PeerProbe>,
}

/// The running server; cheap to clone.
#[derive(Clone)]
pub struct StreamServer {
    inner: Arc<Inner>,
    addr: SocketAddr,
}

impl std::fmt::Debug for StreamServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl StreamServer {
    /// Binds and starts serving.
    pub async fn start(cfg: StreamConfig, backend: Arc<dyn Backend>) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
        let addr = listener.local_addr()?;
        let tls = match &cfg.tls {
            Some((cert, key)) => Some(tls_acceptor("streaming server", cert, key)?),
            None => None,
        };
        // A wildcard listen address is advertised as loopback: the kubelet runs here.
        let host = if addr.ip().is_unspecified() {
            SocketAddr::new([127, 0, 0, 1].into(), addr.port())
        } else {
            addr
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let inner = Arc::new(Inner {
            base: format!("{scheme}://{host}"),
            cfg,
            backend,
            tokens: Mutex::new(HashMap::new()),
            sessions: Arc::default(),
        });
        tokio::spawn(accept_loop(listener, inner.clone(), tls));
        tracing::info!(address = %addr, tls = inner.cfg.tls.is_some(), "streaming server listening");
        Ok(StreamServer { inner, addr })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Checks `req` and returns the one-time URL that serves it.
    pub fn url(&self, req: Request) -> Result<String, UrlError> {
        req.validate()?;
        let kind = req.kind();
        let token =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 18]>());
        let now = Instant::now();
        let mut t = self.inner.tokens.lock().unwrap_or_else(|p| p.into_inner());
        t.retain(|_, p| p.expires > now);
        if t.len() >= MAX_IN_FLIGHT {
            return Err(UrlError::Exhausted(t.len()));
        }
        t.insert(
            token.clone(),
            Pending {
                req,
                expires: now + self.inner.cfg.token_ttl,
            },
        );
        Ok(format!("{}/{kind}/{token}", self.inner.base))
    }
}

impl Request {
    /// The URL path segment that serves it.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Exec { .. } => "exec",
            Request::Attach { .. } => "attach",
            Request::PortForward { .. } => "portforward",
        }
    }

    /// Checks what a client could get wrong: ids, the command, the stdio combination.
    pub fn validate(&self) -> Result<(), UrlError> {
        let bad = |m: &str| Err(UrlError::Invalid(m.into()));
        let (id, opts) = match self {
            Request::Exec {
                container_id,
                cmd,
                opts,
            } => {
                if cmd.is_empty() {
                    return bad("cmd is empty");
                }
                (container_id, opts)
            }
            Request::Attach { container_id, opts } => (container_id, opts),
            Request::PortForward { pod_id, .. } => {
                return if pod_id.is_empty() {
                    bad("pod_sandbox_id is empty")
                } else {
                    Ok(())
                };
            }
        };
        if id.is_empty() {
            return bad("container_id is empty");
        }
        if !(opts.stdin || opts.stdout || opts.stderr) {
            return bad("one of stdin, stdout and stderr must be set");
        }
        if opts.tty && opts.stderr {
            return bad("tty and stderr cannot both be set: a terminal has one output stream");
        }
        Ok(())
    }
}

/// A TLS acceptor serving this PEM certificate chain and key; errors name `what` (the
/// config section) and the file.
pub fn tls_acceptor(
    what: &str,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |kind: &str, p: &std::path::Path, e: String| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{what}: TLS {kind} {}: {e}", p.display()),
        )
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad("certificate", cert, e.to_string()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("key", key, e.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad("config", cert, e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| bad("certificate", cert, e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    inner: Arc<Inner>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(err = %e, "streaming server: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        // A client that vanished without closing (a dead laptop, a cut link) is noticed
        // within about a minute, and its session torn down like a closed one.
        let ka = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(30))
            .with_interval(Duration::from_secs(10))
            .with_retries(3);
        if let Err(e) = socket2::SockRef::from(&tcp).set_tcp_keepalive(&ka) {
            tracing::debug!(%peer, err = %e, "streaming: TCP keepalive not set");
        }
        let inner = inner.clone();
        let tls = tls.clone();
        // The socket, watched for a hang-up while a session does not read it.
        let probe = match crate::probe::PeerProbe::new(std::os::fd::AsFd::as_fd(&tcp)) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::debug!(%peer, err = %e, "streaming: cannot watch the connection");
                None
            }
        };
        let peer = Peer { addr: peer, probe };
        tokio::spawn(async move {
            match tls {
                Some(acc) => {
                    match tokio::time::timeout(Duration::from_secs(10), acc.accept(tcp)).await {
                        Ok(Ok(s)) => serve_conn(TokioIo::new(s), inner, peer).await,
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer.addr, err = %e, "streaming TLS handshake failed")
                        }
                        Err(_) => {
                            tracing::debug!(peer = %peer.addr, "streaming TLS handshake timed out")
                        }
                    }
                }
                None => serve_conn(TokioIo::new(tcp), inner, peer).await,
            }
        });
    }
}

async fn serve_conn<IO>(io: TokioIo<IO>, inner: Arc<Inner>, peer: Peer)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let addr = peer.addr;
    let svc = hyper::service::service_fn(move |req| {
        let inner = inner.clone();
        let peer = peer.clone();
        async move { Ok::<_, std::convert::Infallible>(route(inner, req, peer)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(io, svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(peer = %addr, err = %e, "streaming connection ended");
    }
}

fn plain(status: StatusCode, msg: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(msg.into() + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Every value of `name`, comma lists split.
fn header_values(req: &HttpRequest<Incoming>, name: &str) -> Vec<String> {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

fn has_token(req: &HttpRequest<Incoming>, name: &str, token: &str) -> bool {
    header_values(req, name)
        .iter()
        .any(|v| v.eq_ignore_ascii_case(token))
}

fn route(inner: Arc<Inner>, mut req: HttpRequest<Incoming>, peer: Peer) -> Response<Full<Bytes>> {
    if req.method() != http::Method::GET && req.method() != http::Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST");
    }
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (kind, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    // One use only: the token is gone whatever happens next.
    let pending = {
        let mut t = inner.tokens.lock().unwrap_or_else(|p| p.into_inner());
        t.remove(token)
    };
    let Some(pending) = pending.filter(|p| p.expires > Instant::now() && p.req.kind() == kind)
    else {
        return plain(StatusCode::NOT_FOUND, "unknown or expired streaming token");
    };
    let request = pending.req;
    let Some(slot) = inner.session_slot(peer.addr.ip(), request.kind()) else {
        tracing::info!(peer = %peer.addr, max = inner.cfg.max_sessions_per_client, "streaming: a client holds too many sessions; refusing one");
        return plain(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "this client holds {} streaming sessions already (stream.max_sessions_per_client)",
                inner.cfg.max_sessions_per_client
            ),
        );
    };
    let websocket = has_token(&req, "upgrade", "websocket");
    if websocket {
        return crate::ws::upgrade(
            inner.backend.clone(),
            request,
            req,
            &inner.cfg,
            (slot, peer.probe),
        );
    }
    // SPDY: negotiate the protocol version, then switch.
    let clients = header_values(&req, proto::PROTOCOL_HEADER);
    let server: &[&str] = match request {
        Request::PortForward { .. } => &[proto::PORT_FORWARD],
        _ => &proto::SPDY_REMOTE_COMMAND,
    };
    let protocol = if clients.is_empty() {
        // Clients older than version negotiation speak the first version.
        server[server.len() - 1]
    } else {
        match proto::negotiate(&clients, server) {
            Some(p) => p,
            None => {
                let mut r = plain(
                    StatusCode::FORBIDDEN,
                    format!(
                        "unable to upgrade: unable to negotiate protocol: client supports {clients:?}, server supports {server:?}"
                    ),
                );
                if let Ok(v) = header::HeaderValue::from_str(&server.join(", ")) {
                    r.headers_mut().insert(proto::ACCEPTED_HEADER, v);
                }
                return r;
            }
        }
    };
    if !has_token(&req, "connection", "upgrade") || !has_token(&req, "upgrade", "SPDY/3.1") {
        return plain(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: missing upgrade headers in request (want Connection: Upgrade, Upgrade: SPDY/3.1 or websocket)",
        );
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let cfg = inner.cfg.clone();
    let backend = inner.backend.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let io = match on_upgrade.await {
            Ok(u) => IdleIo::new(TokioIo::new(u), cfg.idle_timeout),
            Err(e) => {
                tracing::debug!(err = %e, "streaming upgrade failed");
                return;
            }
        };
        let limits = spdy::Limits {
            max_streams: cfg.max_streams_per_session,
            probe: peer.probe,
        };
        let session = Session::with_limits(io, Role::Server, limits);
        match request {
            Request::PortForward { pod_id, ports } => {
                crate::spdy_serve::port_forward(&session, &cfg, backend, &pod_id, &ports).await
            }
            other => {
                crate::spdy_serve::remote_command(&session, &cfg, backend, other, protocol).await
            }
        }
        session.close().await;
    });
    let mut r = crate::pump::switching_protocols("SPDY/3.1");
    r.headers_mut().insert(
        proto::PROTOCOL_HEADER,
        header::HeaderValue::from_static(protocol),
    );
    r
}

//! The HTTP side: tokens, routing, the upgrade handshakes, and the SPDY sessions.

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
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::idle::IdleIo;
use crate::proto::{self, Outcome, ResizeDecoder, StatusReason};
use crate::spdy::{self, Role, Session, Stream};
use crate::{Backend, BackendError, Io, Request};

/// Tokens waiting for their client at once; more is `ResourceExhausted`, as the kubelet's.
const MAX_IN_FLIGHT: usize = 1000;

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
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
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
    fn session_slot(&self, ip: std::net::IpAddr) -> Option<SessionSlot> {
        let mut m = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= self.cfg.max_sessions_per_client.max(1) {
            return None;
        }
        *n += 1;
        Some(SessionSlot {
            sessions: self.sessions.clone(),
            ip,
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
            Some((cert, key)) => Some(tls_acceptor(cert, key)?),
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

fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, p: &std::path::Path, e: String| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("streaming TLS {what} {}: {e}", p.display()),
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

/// A 101 response switching the connection to `upgrade`.
pub(crate) fn switching_protocols(upgrade: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    h.insert(header::UPGRADE, header::HeaderValue::from_static(upgrade));
    r
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
    let Some(slot) = inner.session_slot(peer.addr.ip()) else {
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
                spdy_port_forward(&session, &cfg, backend, &pod_id, &ports).await
            }
            other => spdy_remote_command(&session, &cfg, backend, other, protocol).await,
        }
        session.close().await;
    });
    let mut r = switching_protocols("SPDY/3.1");
    r.headers_mut().insert(
        proto::PROTOCOL_HEADER,
        header::HeaderValue::from_static(protocol),
    );
    r
}

/// Starts copying `rx` into a SPDY stream, half-closing it once `rx`'s senders are gone.
pub(crate) fn pump_out(
    tx: spdy::StreamWriter,
) -> (mpsc::Sender<Bytes>, tokio::task::JoinHandle<()>) {
    let (s, mut r) = mpsc::channel::<Bytes>(16);
    let t = tokio::spawn(async move {
        while let Some(b) = r.recv().await {
            if tx.write(b).await.is_err() {
                return;
            }
        }
        let _ = tx.close().await;
    });
    (s, t)
}

/// Turns a resize stream's bytes into sizes.
pub(crate) fn resize_channel(mut rx: mpsc::Receiver<Bytes>) -> mpsc::Receiver<proto::TermSize> {
    let (s, r) = mpsc::channel(8);
    tokio::spawn(async move {
        let mut dec = ResizeDecoder::default();
        while let Some(b) = rx.recv().await {
            for size in dec.push(&b) {
                if s.send(size).await.is_err() {
                    return;
                }
            }
        }
    });
    r
}

/// Runs the backend for an exec or attach and says how it went.
pub(crate) async fn run_remote_command(backend: &dyn Backend, request: Request, io: Io) -> Outcome {
    match request {
        Request::Exec {
            container_id, cmd, ..
        } => match backend.exec(&container_id, cmd, io).await {
            Ok(()) => Outcome::Success,
            Err(BackendError::Exit(code)) => Outcome::Exit(code),
            Err(e) => Outcome::failed("error executing command in container", &e),
        },
        Request::Attach { container_id, .. } => match backend.attach(&container_id, io).await {
            Ok(()) => Outcome::Success,
            Err(e) => Outcome::failed("error attaching to container", &e),
        },
        Request::PortForward { .. } => Outcome::Error {
            reason: StatusReason::BadRequest,
            message: "not a remote command".into(),
        },
    }
}

/// Waits for output pumps to deliver what they hold (bounded: a client that stopped
/// reading does not hold the session open).
pub(crate) async fn drain(pumps: Vec<tokio::task::JoinHandle<()>>) {
    for p in pumps {
        let abort = p.abort_handle();
        if tokio::time::timeout(Duration::from_secs(10), p)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

async fn spdy_remote_command(
    session: &Session,
    cfg: &StreamConfig,
    backend: Arc<dyn Backend>,
    request: Request,
    protocol: &str,
) {
    let opts = match &request {
        Request::Exec { opts, .. } | Request::Attach { opts, .. } => *opts,
        Request::PortForward { .. } => return,
    };
    let resizable = opts.tty && matches!(protocol, proto::V3 | proto::V4);
    let expected = 1
        + usize::from(opts.stdin)
        + usize::from(opts.stdout)
        + usize::from(opts.stderr)
        + usize::from(resizable);
    let mut streams: HashMap<String, Stream> = HashMap::new();
    let deadline = tokio::time::sleep(cfg.stream_creation_timeout);
    tokio::pin!(deadline);
    while streams.len() < expected {
        tokio::select! {
            s = session.accept() => match s {
                Some(s) => {
                    let kind = spdy::header(&s.headers, proto::STREAM_TYPE).unwrap_or("").to_string();
                    match kind.as_str() {
                        "error" | "stdin" | "stdout" | "stderr" | "resize" => { streams.insert(kind, s); }
                        other => tracing::debug!(stream_type = other, "ignoring unexpected stream"),
                    }
                }
                None => return,
            },
            _ = &mut deadline => {
                tracing::info!(expected, got = streams.len(), "streaming client did not open its streams in time");
                return;
            }
        }
    }
    let Some(error) = streams.remove("error") else {
        return;
    };
    let disconnected = CancellationToken::new();
    let mut pumps = Vec::new();
    let mut out = |name: &str| {
        streams.remove(name).map(|s| {
            let (tx, t) = pump_out(s.tx);
            pumps.push(t);
            tx
        })
    };
    let stdout = out("stdout").filter(|_| opts.stdout);
    let stderr = out("stderr").filter(|_| opts.stderr);
    let io = Io {
        stdin: streams.remove("stdin").map(|s| s.rx).filter(|_| opts.stdin),
        stdout,
        stderr,
        tty: opts.tty,
        resize: streams.remove("resize").map(|s| resize_channel(s.rx)),
        disconnected: disconnected.clone(),
    };
    let outcome = {
        let run = run_remote_command(backend.as_ref(), request, io);
        tokio::pin!(run);
        tokio::select! {
            o = &mut run => o,
            _ = session.closed() => {
                // The client is gone: tell the runtime, and let it clean up.
                disconnected.cancel();
                run.await
            }
        }
    };
    drain(pumps).await;
    if let Some(m) = outcome.status(protocol == proto::V4) {
        let _ = error.tx.write(m).await;
    }
    let _ = error.tx.close().await;
}

/// Port forwarding over SPDY: the client opens an error and a data stream per connection,
/// tied by `requestid`, naming the pod's port in `port`.
async fn spdy_port_forward(
    session: &Session,
    cfg: &StreamConfig,
    backend: Arc<dyn Backend>,
    pod_id: &str,
    allowed: &[u16],
) {
    struct Half {
        error: Option<Stream>,
        data: Option<Stream>,
        since: Instant,
    }
    let mut pairs: HashMap<String, Half> = HashMap::new();
    let gone = CancellationToken::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let s = tokio::select! {
            s = session.accept() => match s { Some(s) => s, None => break },
            _ = tick.tick() => {
                // Pairs whose other half never came.
                let limit = cfg.stream_creation_timeout;
                let stale: Vec<String> = pairs.iter().filter(|(_, h)| h.since.elapsed() > limit).map(|(k, _)| k.clone()).collect();
                for k in stale {
                    if let Some(h) = pairs.remove(&k) {
                        for s in [h.error, h.data].into_iter().flatten() {
                            let _ = s.tx.reset().await;
                        }
                    }
                }
                continue;
            }
        };
        let kind = spdy::header(&s.headers, proto::STREAM_TYPE).unwrap_or("");
        // Clients older than request ids pair streams by id: data = error + 2.
        let rid = match spdy::header(&s.headers, proto::REQUEST_ID) {
            Some(r) => r.to_string(),
            None if kind == "data" => (s.id.saturating_sub(2)).to_string(),
            None => s.id.to_string(),
        };
        let h = pairs.entry(rid.clone()).or_insert(Half {
            error: None,
            data: None,
            since: Instant::now(),
        });
        match kind {
            "error" => h.error = Some(s),
            "data" => h.data = Some(s),
            other => {
                tracing::debug!(stream_type = other, "port-forward: unexpected stream");
                let _ = s.tx.reset().await;
                continue;
            }
        }
        if h.error.is_some() && h.data.is_some() {
            let Some(Half {
                error: Some(error),
                data: Some(data),
                ..
            }) = pairs.remove(&rid)
            else {
                continue;
            };
            let port = spdy::header(&data.headers, proto::PORT)
                .and_then(|p| p.parse::<u16>().ok())
                .filter(|p| *p != 0);
            let backend = backend.clone();
            let pod = pod_id.to_string();
            let allowed = allowed.to_vec();
            let gone = gone.clone();
            tokio::spawn(async move {
                let res = match port {
                    None => Err("the port header is missing or not a port number".to_string()),
                    Some(p) if !allowed.is_empty() && !allowed.contains(&p) => Err(format!(
                        "port {p} was not named in the PortForward request ({allowed:?})"
                    )),
                    Some(p) => match backend.port_forward(&pod, p).await {
                        Ok(tcp) => {
                            let (to_client, pump) = pump_out(data.tx.clone());
                            forward(tcp, data.rx, to_client, gone).await;
                            let _ = pump.await;
                            Ok(())
                        }
                        Err(e) => Err(e.to_string()),
                    },
                };
                if let Err(e) = res {
                    let msg = format!(
                        "error forwarding port {} to pod {pod}: {e}",
                        port.map(|p| p.to_string()).unwrap_or_default()
                    );
                    tracing::info!("{msg}");
                    let _ = error.tx.write(Bytes::from(msg)).await;
                }
                let _ = error.tx.close().await;
                let _ = data.tx.close().await;
            });
        }
    }
    gone.cancel();
}

/// Copies between a TCP connection and a stream until the pod's side is done (or the
/// client went away); the client's half-close is passed on as a TCP half-close.
pub(crate) async fn forward(
    tcp: tokio::net::TcpStream,
    mut from_client: mpsc::Receiver<Bytes>,
    to_client: mpsc::Sender<Bytes>,
    gone: CancellationToken,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut r, mut w) = tcp.into_split();
    let up = tokio::spawn(async move {
        while let Some(b) = from_client.recv().await {
            if w.write_all(&b).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    });
    let down = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if to_client
                        .send(Bytes::copy_from_slice(&buf[..n]))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    tokio::select! {
        _ = down => {}
        _ = gone.cancelled() => {}
    }
    up.abort();
}

//! A client for the streaming protocols, as client-go drives them: used by berth's tests
//! and benchmarks to act as the kubelet, crictl or kubectl would.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;

use crate::StdioOptions;
use crate::proto::{self, CH_CLOSE, CH_ERROR, CH_RESIZE, CH_STDERR, CH_STDIN, CH_STDOUT};
use crate::spdy::{Role, Session, StreamWriter};
use crate::ws::Framing;

const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

/// A connection to the streaming server, plain or TLS.
pub trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}
/// A boxed [`Conn`].
pub type BoxConn = Box<dyn Conn>;

static TLS: std::sync::OnceLock<tokio_rustls::TlsConnector> = std::sync::OnceLock::new();

/// Trusts the CA certificate(s) in `pem` for `https://` URLs (once per process).
pub fn trust_ca(pem: &[u8]) -> io::Result<()> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem) {
        let c = c.map_err(|e| other(format!("CA certificate: {e}")))?;
        roots
            .add(c)
            .map_err(|e| other(format!("CA certificate: {e}")))?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| other(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let _ = TLS.set(tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg)));
    Ok(())
}

/// `http(s)://host:port/path` → (tls, `host:port`, `/path`).
fn split_url(url: &str) -> io::Result<(bool, String, String)> {
    let (tls, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(r), _) => (false, r),
        (_, Some(r)) => (true, r),
        _ => return Err(other(format!("{url}: not an http:// or https:// URL"))),
    };
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    Ok((
        tls,
        host.to_string(),
        if path.is_empty() { "/" } else { path }.to_string(),
    ))
}

async fn dial(tls: bool, host: &str) -> io::Result<BoxConn> {
    let tcp = TcpStream::connect(host).await?;
    tcp.set_nodelay(true)?;
    if !tls {
        return Ok(Box::new(tcp));
    }
    let connector = TLS
        .get()
        .ok_or_else(|| other("https URL but no CA trusted (client::trust_ca)".into()))?;
    let name = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    let name = rustls::pki_types::ServerName::try_from(name.trim_matches(['[', ']']).to_string())
        .map_err(|e| other(format!("{name}: {e}")))?;
    Ok(Box::new(connector.connect(name, tcp).await?))
}

/// A refused upgrade: the HTTP status and body.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "upgrade refused: HTTP {}: {}",
            self.status,
            self.body.trim()
        )
    }
}

impl std::error::Error for Refused {}

/// Sends the upgrade request and reads the response head; returns the socket, the status
/// and the headers (lower-case names).
async fn upgrade_request(
    url: &str,
    headers: &[(&str, String)],
) -> io::Result<(BoxConn, u16, Vec<(String, String)>)> {
    let (tls, host, path) = split_url(url)?;
    let mut tcp = dial(tls, &host).await?;
    let mut req = format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await?;
    // Byte by byte: nothing past the head may be consumed here.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 64 * 1024 {
            return Err(other("response head too long".into()));
        }
        let b = tcp.read_u8().await?;
        head.push(b);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| other(format!("bad response head: {text:?}")))?;
    let hdrs = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((tcp, status, hdrs))
}

async fn refused(mut tcp: BoxConn, status: u16, headers: &[(String, String)]) -> io::Error {
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0)
        .min(64 * 1024);
    let mut body = vec![0u8; len];
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut body)).await;
    io::Error::other(Refused {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Upgrades `url` to SPDY/3.1 offering `protocols`; returns the session and the version
/// the server chose.
pub async fn spdy_connect(url: &str, protocols: &[&str]) -> io::Result<(Arc<Session>, String)> {
    let mut h = vec![
        ("Connection", "Upgrade".to_string()),
        ("Upgrade", "SPDY/3.1".to_string()),
    ];
    for p in protocols {
        h.push(("X-Stream-Protocol-Version", p.to_string()));
    }
    let (tcp, status, headers) = upgrade_request(url, &h).await?;
    if status != 101 {
        return Err(refused(tcp, status, &headers).await);
    }
    let chosen = headers
        .iter()
        .find(|(k, _)| k == proto::PROTOCOL_HEADER)
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    // The server bounds what a session may hold; this end opens what its caller asks.
    let limits = crate::spdy::Limits {
        max_streams: usize::MAX,
        probe: None,
    };
    Ok((Session::with_limits(tcp, Role::Client, limits), chosen))
}

/// A remote-command session from the client's side, on either transport.
pub struct RemoteCommand {
    /// Write stdin here; `None` closes it.
    pub stdin: Option<mpsc::Sender<Bytes>>,
    pub stdout: Option<mpsc::Receiver<Bytes>>,
    pub stderr: Option<mpsc::Receiver<Bytes>>,
    resize: Option<mpsc::Sender<Bytes>>,
    error: mpsc::Receiver<Bytes>,
    _keep: Vec<tokio::task::JoinHandle<()>>,
    spdy: Option<Arc<Session>>,
}

impl std::fmt::Debug for RemoteCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteCommand").finish_non_exhaustive()
    }
}

/// Reads a stream to its end.
pub async fn read_all(rx: &mut mpsc::Receiver<Bytes>) -> Vec<u8> {
    let mut v = Vec::new();
    while let Some(b) = rx.recv().await {
        v.extend_from_slice(&b);
    }
    v
}

fn writer_task(w: StreamWriter) -> (mpsc::Sender<Bytes>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(16);
    let t = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if w.write(b).await.is_err() {
                return;
            }
        }
        let _ = w.close().await;
    });
    (tx, t)
}

impl RemoteCommand {
    /// Opens the streams client-go opens (error first, then stdin, stdout, stderr, resize).
    pub async fn spdy(url: &str, opts: StdioOptions) -> io::Result<Self> {
        let (session, _) = spdy_connect(url, &[proto::V4, proto::V3, proto::V2, proto::V1]).await?;
        let open = |kind: &str| {
            let session = session.clone();
            let kind = kind.to_string();
            async move {
                session
                    .open(vec![(proto::STREAM_TYPE.into(), kind)], OPEN_TIMEOUT)
                    .await
            }
        };
        let error = open("error").await?;
        let mut keep = Vec::new();
        let stdin = if opts.stdin {
            let s = open("stdin").await?;
            let (tx, t) = writer_task(s.tx);
            keep.push(t);
            Some(tx)
        } else {
            None
        };
        let stdout = if opts.stdout {
            Some(open("stdout").await?.rx)
        } else {
            None
        };
        let stderr = if opts.stderr && !opts.tty {
            Some(open("stderr").await?.rx)
        } else {
            None
        };
        let resize = if opts.tty {
            let s = open("resize").await?;
            let (tx, t) = writer_task(s.tx);
            keep.push(t);
            Some(tx)
        } else {
            None
        };
        Ok(RemoteCommand {
            stdin,
            stdout,
            stderr,
            resize,
            error: error.rx,
            _keep: keep,
            spdy: Some(session),
        })
    }

    /// Connects over WebSocket offering `protocols` (e.g. `v5.channel.k8s.io`).
    pub async fn websocket(url: &str, protocols: &[&str], opts: StdioOptions) -> io::Result<Self> {
        let ws = ws_connect(url, protocols).await?;
        let (protocol, ws) = ws;
        let framing = Framing::for_protocol(&protocol);
        let v5 = protocol == proto::V5;
        let (mut sink, mut stream) = ws.split();
        let (stdin_tx, mut stdin_rx) = mpsc::channel::<Bytes>(16);
        let (resize_tx, mut resize_rx) = mpsc::channel::<Bytes>(8);
        let (out_tx, out_rx) = mpsc::channel::<Bytes>(64);
        let (err_tx, err_rx) = mpsc::channel::<Bytes>(64);
        let (status_tx, status_rx) = mpsc::channel::<Bytes>(4);
        let writer = tokio::spawn(async move {
            let mut stdin_open = true;
            loop {
                let m = tokio::select! {
                    b = stdin_rx.recv(), if stdin_open => match b {
                        Some(b) => framing.encode(CH_STDIN, &b),
                        None => {
                            stdin_open = false;
                            if !v5 { continue; }
                            framing.encode(CH_CLOSE, &[CH_STDIN])
                        }
                    },
                    r = resize_rx.recv() => match r {
                        Some(r) => framing.encode(CH_RESIZE, &r),
                        None => break,
                    },
                };
                if sink.send(m).await.is_err() {
                    return;
                }
            }
            // Keep the socket open until the reader is done.
            std::future::pending::<()>().await;
        });
        let reader = tokio::spawn(async move {
            let mut out = Some(out_tx);
            let mut err = Some(err_tx);
            while let Some(Ok(m)) = stream.next().await {
                if m.is_close() {
                    break;
                }
                let Some((ch, data)) = framing.decode(m) else {
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                let sink = match ch {
                    CH_STDOUT => out.as_ref(),
                    CH_STDERR => err.as_ref(),
                    CH_ERROR => Some(&status_tx),
                    _ => None,
                };
                if let Some(s) = sink
                    && s.send(data).await.is_err()
                {
                    if ch == CH_STDOUT {
                        out = None;
                    } else if ch == CH_STDERR {
                        err = None;
                    }
                }
            }
        });
        Ok(RemoteCommand {
            stdin: opts.stdin.then_some(stdin_tx),
            stdout: opts.stdout.then_some(out_rx),
            stderr: (opts.stderr && !opts.tty).then_some(err_rx),
            resize: Some(resize_tx),
            error: status_rx,
            _keep: vec![writer, reader],
            spdy: None,
        })
    }

    /// Sends a terminal size.
    pub async fn resize(&self, width: u16, height: u16) -> io::Result<()> {
        let msg = serde_json::to_vec(&proto::TermSize { width, height }).unwrap_or_default();
        match &self.resize {
            Some(r) => r
                .send(Bytes::from(msg))
                .await
                .map_err(|_| other("resize stream closed".into())),
            None => Err(other("no resize stream (tty was not asked for)".into())),
        }
    }

    /// Reads the error stream to its end: the session's status (the v4 JSON, or `{}` when the
    /// server sent nothing, which older protocols do on success).
    pub async fn status(&mut self) -> serde_json::Value {
        let raw = read_all(&mut self.error).await;
        if raw.is_empty() {
            return serde_json::json!({});
        }
        serde_json::from_slice(&raw)
            .unwrap_or_else(|_| serde_json::json!({"text": String::from_utf8_lossy(&raw)}))
    }

    /// Drops the connection at once, as a killed client would.
    pub async fn kill(self) {
        if let Some(s) = &self.spdy {
            // Closing the session shuts the socket down.
            s.close().await;
        }
    }
}

impl Drop for RemoteCommand {
    fn drop(&mut self) {
        for t in &self._keep {
            t.abort();
        }
    }
}

/// The exit code a v4 status carries (0 for success).
pub fn exit_code(status: &serde_json::Value) -> Option<i32> {
    match status["status"].as_str() {
        Some("Success") => Some(0),
        _ => status["details"]["causes"]
            .as_array()?
            .iter()
            .find(|c| c["reason"] == "ExitCode")?["message"]
            .as_str()?
            .parse()
            .ok(),
    }
}

/// A WebSocket connection to `url` offering `protocols`; returns the chosen one.
pub async fn ws_connect(
    url: &str,
    protocols: &[&str],
) -> io::Result<(String, WebSocketStream<BoxConn>)> {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let mut h = vec![
        ("Connection", "Upgrade".to_string()),
        ("Upgrade", "websocket".to_string()),
        ("Sec-WebSocket-Version", "13".to_string()),
        ("Sec-WebSocket-Key", key.clone()),
    ];
    if !protocols.is_empty() {
        h.push(("Sec-WebSocket-Protocol", protocols.join(", ")));
    }
    let (tcp, status, headers) = upgrade_request(url, &h).await?;
    if status != 101 {
        return Err(refused(tcp, status, &headers).await);
    }
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let want = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    if get("sec-websocket-accept") != want {
        return Err(other("bad Sec-WebSocket-Accept".into()));
    }
    let ws = WebSocketStream::from_raw_socket(
        tcp,
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    Ok((get("sec-websocket-protocol"), ws))
}

/// One forwarded connection over SPDY: bytes to the pod's port and back, and the error
/// stream's text.
pub struct Forwarded {
    pub to_pod: mpsc::Sender<Bytes>,
    pub from_pod: mpsc::Receiver<Bytes>,
    pub error: mpsc::Receiver<Bytes>,
    _writer: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Forwarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarded").finish_non_exhaustive()
    }
}

/// Opens the error and data streams for one connection to `port`, as client-go does.
pub async fn spdy_forward(session: &Session, port: u16, request_id: u32) -> io::Result<Forwarded> {
    let h = |kind: &str| {
        vec![
            (proto::STREAM_TYPE.to_string(), kind.to_string()),
            (proto::PORT.to_string(), port.to_string()),
            (proto::REQUEST_ID.to_string(), request_id.to_string()),
        ]
    };
    let error = session.open(h("error"), OPEN_TIMEOUT).await?;
    // client-go half-closes the error stream at once: it only reads it.
    error.tx.close().await?;
    let data = session.open(h("data"), OPEN_TIMEOUT).await?;
    let (to_pod, t) = writer_task(data.tx);
    Ok(Forwarded {
        to_pod,
        from_pod: data.rx,
        error: error.rx,
        _writer: t,
    })
}

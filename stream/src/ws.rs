//! The WebSocket flavour of the streaming protocols (Kubernetes' `wsstream`): one message per
//! chunk, its first byte the channel (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize); in
//! the `base64.` variants, text messages with an ASCII channel digit and base64 data.
//! `v5.channel.k8s.io` adds `[255, channel]` to half-close a channel (the client's stdin).
//! Port forwarding gives each requested port a data channel `2i` and an error channel
//! `2i+1`, each opened by a message holding the port (little-endian u16).

use std::sync::Arc;

use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use http::{Request as HttpRequest, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;

use crate::idle::IdleIo;
use crate::probe::{PeerProbe, watching};
use crate::proto::{self, CH_CLOSE, CH_ERROR, CH_RESIZE, CH_STDERR, CH_STDIN, CH_STDOUT};
use crate::pump::{drain, resize_channel, run_remote_command};
use crate::{Backend, Io, Request};

const BASE64_V1: &str = "base64.channel.k8s.io";
const BASE64_V4: &str = "v4.base64.channel.k8s.io";
const REMOTE_COMMAND: [&str; 5] = [proto::V5, proto::V4, BASE64_V4, proto::V1, BASE64_V1];
const PORT_FORWARD: [&str; 2] = [proto::PORT_FORWARD, "base64.portforward.k8s.io"];
/// A message from the client, at most (base64 included).
const MAX_MESSAGE: usize = 1 << 20;

/// How messages are framed on a negotiated protocol.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Framing {
    base64: bool,
}

impl Framing {
    pub(crate) fn for_protocol(p: &str) -> Self {
        Framing {
            base64: p.contains("base64"),
        }
    }

    pub(crate) fn encode(self, ch: u8, data: &[u8]) -> Message {
        if self.base64 {
            let mut s = String::with_capacity(1 + data.len() * 4 / 3 + 4);
            s.push(char::from(b'0' + ch));
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut s);
            Message::Text(s.into())
        } else {
            let mut b = BytesMut::with_capacity(1 + data.len());
            b.put_u8(ch);
            b.put_slice(data);
            Message::Binary(b.freeze())
        }
    }

    /// The channel and payload of a data message; `None` for control messages and garbage.
    pub(crate) fn decode(self, m: Message) -> Option<(u8, Bytes)> {
        match m {
            Message::Binary(b) if !self.base64 && !b.is_empty() => Some((b[0], b.slice(1..))),
            Message::Text(t) if self.base64 && !t.is_empty() => {
                let t = t.as_str();
                let ch = t.as_bytes()[0].checked_sub(b'0')?;
                let data = base64::engine::general_purpose::STANDARD
                    .decode(&t[1..])
                    .ok()?;
                Some((ch, Bytes::from(data)))
            }
            _ => None,
        }
    }
}

fn plain(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{msg}\n"))));
    *r.status_mut() = status;
    r
}

/// Answers the WebSocket handshake and runs the session on the upgraded connection.
pub(crate) fn upgrade(
    backend: Arc<dyn Backend>,
    request: Request,
    mut req: HttpRequest<Incoming>,
    cfg: &crate::config::StreamConfig,
    (slot, probe): (impl Send + 'static, Option<PeerProbe>),
) -> Response<Full<Bytes>> {
    let idle_timeout = cfg.idle_timeout;
    let hv = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let key = hv("sec-websocket-key");
    if key.is_empty() || hv("sec-websocket-version") != "13" {
        return plain(
            StatusCode::BAD_REQUEST,
            "a WebSocket upgrade needs Sec-WebSocket-Key and Sec-WebSocket-Version: 13",
        );
    }
    let offered: Vec<String> = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    let supported: &[&str] = match request {
        Request::PortForward { .. } => &PORT_FORWARD,
        _ => &REMOTE_COMMAND,
    };
    let protocol = if offered.is_empty() {
        ""
    } else {
        match proto::negotiate(&offered, supported) {
            Some(p) => p,
            None => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "none of the requested WebSocket protocols {offered:?} is supported ({supported:?})"
                    ),
                );
            }
        }
    };
    let ports: Vec<u16> = match &request {
        Request::PortForward { ports, .. } => {
            let q: Vec<Result<u16, String>> = req
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .filter_map(|kv| kv.strip_prefix("port="))
                .map(|p| {
                    p.parse::<u16>()
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| format!("{p:?} is not a port"))
                })
                .collect();
            let mut out = Vec::new();
            for p in q {
                match p {
                    Ok(p) if ports.is_empty() || ports.contains(&p) => out.push(p),
                    Ok(p) => {
                        return plain(
                            StatusCode::BAD_REQUEST,
                            &format!("port {p} was not named in the PortForward request"),
                        );
                    }
                    Err(e) => return plain(StatusCode::BAD_REQUEST, &e),
                }
            }
            if out.is_empty() {
                return plain(
                    StatusCode::BAD_REQUEST,
                    "query parameter \"port\" is required",
                );
            }
            // Each port takes two channels, and a channel number is one byte.
            let max = (cfg.max_streams_per_session / 2).clamp(1, 128);
            if out.len() > max {
                return plain(
                    StatusCode::BAD_REQUEST,
                    &format!("{} ports requested; at most {max} per session", out.len()),
                );
            }
            out
        }
        _ => Vec::new(),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let framing = Framing::for_protocol(protocol);
    let v5 = protocol == proto::V5;
    let status_json = matches!(protocol, proto::V5 | proto::V4 | BASE64_V4);
    tokio::spawn(async move {
        let _slot = slot;
        let io = match on_upgrade.await {
            Ok(u) => IdleIo::new(TokioIo::new(u), idle_timeout),
            Err(e) => {
                tracing::debug!(err = %e, "websocket upgrade failed");
                return;
            }
        };
        // What one message may hold: kubectl sends its input in pieces of 32 KiB.
        let limits = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(limits)).await;
        match request {
            Request::PortForward { pod_id, .. } => {
                port_forward(ws, framing, backend, &pod_id, &ports, probe).await
            }
            other => remote_command(ws, framing, v5, status_json, backend, other, probe).await,
        }
    });
    let mut r = crate::pump::switching_protocols("websocket");
    let h = r.headers_mut();
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    if let Ok(v) = header::HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    if !protocol.is_empty() {
        h.insert(
            "sec-websocket-protocol",
            header::HeaderValue::from_static(protocol),
        );
    }
    r
}

type Ws = WebSocketStream<IdleIo<TokioIo<hyper::upgrade::Upgraded>>>;

/// Sends queued messages; a Close frame once every sender is gone.
fn spawn_writer(
    mut sink: futures::stream::SplitSink<Ws, Message>,
) -> (mpsc::Sender<Message>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Message>(32);
    let t = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        let _ = sink.send(Message::Close(None)).await;
        let _ = sink.close().await;
    });
    (tx, t)
}

async fn finish(out: mpsc::Sender<Message>, writer: tokio::task::JoinHandle<()>) {
    drop(out);
    drain(vec![writer]).await;
}

async fn remote_command(
    ws: Ws,
    framing: Framing,
    v5: bool,
    status_json: bool,
    backend: Arc<dyn Backend>,
    request: Request,
    probe: Option<PeerProbe>,
) {
    let opts = match &request {
        Request::Exec { opts, .. } | Request::Attach { opts, .. } => *opts,
        Request::PortForward { .. } => return,
    };
    let (sink, mut stream) = ws.split();
    let (out, writer) = spawn_writer(sink);
    // Tell the client the connection is up: an empty message on the first output channel.
    let first = if opts.stdout {
        CH_STDOUT
    } else if opts.stderr {
        CH_STDERR
    } else {
        CH_ERROR
    };
    let _ = out.send(framing.encode(first, &[])).await;

    let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(16);
    let (resize_tx, resize_rx) = mpsc::channel::<Bytes>(8);
    let disconnected = CancellationToken::new();
    let reader = tokio::spawn({
        let disconnected = disconnected.clone();
        async move {
            let mut stdin_tx = Some(stdin_tx);
            while let Some(Ok(m)) = stream.next().await {
                if m.is_close() {
                    break;
                }
                let Some((ch, data)) = framing.decode(m) else {
                    continue;
                };
                // A consumer that is behind holds the client back, but never keeps its
                // hang-up from being seen.
                match ch {
                    CH_STDIN => {
                        if let Some(tx) = &stdin_tx
                            && !data.is_empty()
                        {
                            match watching(probe.as_ref(), tx.send(data)).await {
                                Ok(Ok(())) => {}
                                Ok(Err(_)) => stdin_tx = None,
                                Err(_) => break,
                            }
                        }
                    }
                    CH_RESIZE => {
                        let sent = watching(probe.as_ref(), resize_tx.send(data)).await;
                        if sent.is_err() {
                            break;
                        }
                    }
                    CH_CLOSE if v5 && data.first() == Some(&CH_STDIN) => stdin_tx = None,
                    _ => {}
                }
            }
            disconnected.cancel();
        }
    });
    let mut pumps = Vec::new();
    let mut output = |ch: u8| {
        let (tx, mut rx) = mpsc::channel::<Bytes>(16);
        let out = out.clone();
        pumps.push(tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                if out.send(framing.encode(ch, &b)).await.is_err() {
                    return;
                }
            }
        }));
        tx
    };
    let io = Io {
        stdin: opts.stdin.then_some(stdin_rx),
        stdout: opts.stdout.then(|| output(CH_STDOUT)),
        stderr: opts.stderr.then(|| output(CH_STDERR)),
        tty: opts.tty,
        resize: opts.tty.then(|| resize_channel(resize_rx)),
        disconnected,
    };
    let outcome = run_remote_command(backend.as_ref(), request, io).await;
    drain(pumps).await;
    if let Some(m) = outcome.status(status_json) {
        let _ = out.send(framing.encode(CH_ERROR, &m)).await;
    }
    finish(out, writer).await;
    reader.abort();
}

async fn port_forward(
    ws: Ws,
    framing: Framing,
    backend: Arc<dyn Backend>,
    pod_id: &str,
    ports: &[u16],
    probe: Option<PeerProbe>,
) {
    let (sink, mut stream) = ws.split();
    let (out, writer) = spawn_writer(sink);
    for (i, p) in ports.iter().enumerate() {
        for ch in [2 * i as u8, 2 * i as u8 + 1] {
            let _ = out.send(framing.encode(ch, &p.to_le_bytes())).await;
        }
    }
    let gone = CancellationToken::new();
    let mut inputs = Vec::new();
    let mut tasks = Vec::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let (in_tx, in_rx) = mpsc::channel::<Bytes>(16);
        inputs.push(in_tx);
        let (backend, out, gone, pod) = (
            backend.clone(),
            out.clone(),
            gone.clone(),
            pod_id.to_string(),
        );
        let (data_ch, err_ch) = (2 * i as u8, 2 * i as u8 + 1);
        tasks.push(tokio::spawn(async move {
            match backend.port_forward(&pod, port).await {
                Ok(tcp) => {
                    let (to_client, mut rx) = mpsc::channel::<Bytes>(16);
                    let pump = tokio::spawn({
                        let out = out.clone();
                        async move {
                            while let Some(b) = rx.recv().await {
                                if out.send(framing.encode(data_ch, &b)).await.is_err() {
                                    return;
                                }
                            }
                        }
                    });
                    crate::pump::forward(tcp, in_rx, to_client, gone).await;
                    let _ = pump.await;
                }
                Err(e) => {
                    let msg = format!("error forwarding port {port} to pod {pod}: {e}");
                    let _ = out.send(framing.encode(err_ch, msg.as_bytes())).await;
                }
            }
        }));
    }
    let reader = tokio::spawn({
        let gone = gone.clone();
        async move {
            while let Some(Ok(m)) = stream.next().await {
                if m.is_close() {
                    break;
                }
                let Some((ch, data)) = framing.decode(m) else {
                    continue;
                };
                // Data channels are even; what clients send on error channels is ignored.
                if ch % 2 == 0
                    && let Some(tx) = inputs.get(usize::from(ch / 2))
                    && watching(probe.as_ref(), tx.send(data)).await.is_err()
                {
                    break;
                }
            }
            gone.cancel();
        }
    });
    for t in tasks {
        let _ = t.await;
    }
    finish(out, writer).await;
    reader.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_round_trips() {
        for base64 in [false, true] {
            let f = Framing { base64 };
            let (ch, data) = f.decode(f.encode(CH_STDERR, b"\x00hello\xff")).unwrap();
            assert_eq!((ch, &data[..]), (CH_STDERR, &b"\x00hello\xff"[..]));
        }
        // A binary message on a base64 protocol (and the reverse) is not data.
        assert!(
            Framing { base64: true }
                .decode(Message::Binary(Bytes::from_static(b"\x01x")))
                .is_none()
        );
        assert!(
            Framing { base64: false }
                .decode(Message::Binary(Bytes::new()))
                .is_none()
        );
    }
}

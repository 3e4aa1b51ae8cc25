//! Task events, published to the caller's ttrpc socket (`$TTRPC_ADDRESS`) as
//! `containerd.services.events.ttrpc.v1.Events/Forward`, in order, from one thread with one
//! connection. A caller that is away (berth restarting) is retried for a few seconds; then
//! the event is dropped and logged: a restarted berth learns task states from `State`.

use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use containerd_shim_protos::protobuf::well_known_types::{any::Any, timestamp::Timestamp};
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;

use crate::frame::{read_frame, write_frame};
use crate::log::{debug, warning};

/// How long one event is retried while the caller cannot be reached.
const RETRY_FOR: Duration = Duration::from_secs(5);

/// A protobuf timestamp.
pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}

/// Sends events to the publisher thread.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::Sender<(String, Any)>,
}

impl Publisher {
    /// Starts publishing to `address` (a path or `unix://` path) for `namespace`. An empty
    /// address publishes nowhere.
    pub fn start(address: String, namespace: String) -> Publisher {
        let (tx, rx) = mpsc::channel::<(String, Any)>();
        std::thread::Builder::new()
            .name("events".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                let path = address
                    .strip_prefix("unix://")
                    .unwrap_or(&address)
                    .to_string();
                let mut conn: Option<UnixStream> = None;
                let mut stream_id = 1u32;
                for (topic, event) in rx {
                    if path.is_empty() {
                        continue;
                    }
                    let payload = forward_request(&namespace, &topic, event);
                    let deadline = std::time::Instant::now() + RETRY_FOR;
                    let mut delay = Duration::from_millis(50);
                    loop {
                        match send(&mut conn, &path, stream_id, &payload) {
                            Ok(()) => {
                                debug!("published {topic}");
                                break;
                            }
                            Err(e) => {
                                conn = None;
                                if std::time::Instant::now() >= deadline {
                                    warning!("event {topic} dropped: {e}");
                                    break;
                                }
                                std::thread::sleep(delay);
                                delay = (delay * 2).min(Duration::from_millis(500));
                            }
                        }
                    }
                    // Client stream ids are odd.
                    stream_id = stream_id.wrapping_add(2);
                }
            })
            .expect("spawn the events thread");
        Publisher { tx }
    }

    /// Queues `event` under `topic` (e.g. `/tasks/exit`).
    pub fn publish(&self, topic: &str, type_name: &str, event: &impl Message) {
        let any = Any {
            type_url: format!("containerd.events.{type_name}"),
            value: event.write_to_bytes().unwrap_or_default(),
            ..Default::default()
        };
        let _ = self.tx.send((topic.to_string(), any));
    }
}

fn forward_request(namespace: &str, topic: &str, event: Any) -> Vec<u8> {
    let req = ForwardRequest {
        envelope: MessageField::some(Envelope {
            timestamp: MessageField::some(timestamp(SystemTime::now())),
            namespace: namespace.to_string(),
            topic: topic.to_string(),
            event: MessageField::some(event),
            ..Default::default()
        }),
        ..Default::default()
    };
    let req = ttrpc::proto::Request {
        service: "containerd.services.events.ttrpc.v1.Events".into(),
        method: "Forward".into(),
        payload: req.write_to_bytes().unwrap_or_default(),
        timeout_nano: RETRY_FOR.as_nanos() as i64,
        ..Default::default()
    };
    req.write_to_bytes().unwrap_or_default()
}

/// Sends one request on the connection (made if there is none) and reads its answer.
fn send(
    conn: &mut Option<UnixStream>,
    path: &str,
    stream_id: u32,
    payload: &[u8],
) -> Result<(), String> {
    if conn.is_none() {
        let c = UnixStream::connect(path).map_err(|e| format!("connect {path}: {e}"))?;
        c.set_read_timeout(Some(RETRY_FOR)).ok();
        c.set_write_timeout(Some(RETRY_FOR)).ok();
        *conn = Some(c);
    }
    let Some(c) = conn.as_mut() else {
        return Err("no connection".into());
    };
    write_frame(c, stream_id, ttrpc::proto::MESSAGE_TYPE_REQUEST, payload)
        .map_err(|e| format!("send: {e}"))?;
    loop {
        let (sid, kind, body) = read_frame(c).map_err(|e| format!("receive: {e}"))?;
        if sid != stream_id || kind != ttrpc::proto::MESSAGE_TYPE_RESPONSE {
            continue;
        }
        let resp = ttrpc::proto::Response::parse_from_bytes(&body)
            .map_err(|e| format!("bad response: {e}"))?;
        return match resp.status.as_ref() {
            Some(s) if s.code.value() != 0 => Err(format!("refused: {}", s.message)),
            _ => Ok(()),
        };
    }
}

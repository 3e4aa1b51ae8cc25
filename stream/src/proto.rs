//! Names and messages of the Kubernetes streaming protocols.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The remote-command protocol versions on SPDY, newest first (the server's preference
/// does not matter: the client's order decides).
pub const SPDY_REMOTE_COMMAND: [&str; 4] = [V4, V3, V2, V1];
pub const V1: &str = "channel.k8s.io";
pub const V2: &str = "v2.channel.k8s.io";
pub const V3: &str = "v3.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";
/// WebSocket only: adds the CLOSE signal (`[255, channel]`) for half-closing stdin.
pub const V5: &str = "v5.channel.k8s.io";
pub const PORT_FORWARD: &str = "portforward.k8s.io";

/// The header carrying SPDY protocol versions, both ways.
pub const PROTOCOL_HEADER: &str = "x-stream-protocol-version";
/// Sent with a refusal: the versions this server speaks.
pub const ACCEPTED_HEADER: &str = "x-accepted-stream-protocol-versions";

/// SPDY stream headers.
pub const STREAM_TYPE: &str = "streamtype";
pub const PORT: &str = "port";
pub const REQUEST_ID: &str = "requestid";

/// WebSocket channel numbers of remote command.
pub const CH_STDIN: u8 = 0;
pub const CH_STDOUT: u8 = 1;
pub const CH_STDERR: u8 = 2;
pub const CH_ERROR: u8 = 3;
pub const CH_RESIZE: u8 = 4;
pub const CH_CLOSE: u8 = 255;

/// A terminal size as clients send it on the resize stream (`{"Width":80,"Height":24}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermSize {
    #[serde(rename = "Width", alias = "width")]
    pub width: u16,
    #[serde(rename = "Height", alias = "height")]
    pub height: u16,
}

/// Splits a resize stream into the sizes it carries: JSON objects back to back. Keeps an
/// incomplete object for the next chunk; drops garbage.
#[derive(Debug, Default)]
pub struct ResizeDecoder {
    buf: Vec<u8>,
}

impl ResizeDecoder {
    pub fn push(&mut self, chunk: &[u8]) -> Vec<TermSize> {
        self.buf.extend_from_slice(chunk);
        let mut sizes = Vec::new();
        let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<TermSize>();
        let mut used = 0;
        loop {
            match it.next() {
                Some(Ok(s)) => {
                    sizes.push(s);
                    used = it.byte_offset();
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(_)) => {
                    used = self.buf.len();
                    break;
                }
                None => {
                    used = self.buf.len();
                    break;
                }
            }
        }
        self.buf.drain(..used);
        // Bound what an endless object can hold.
        if self.buf.len() > 4096 {
            self.buf.clear();
        }
        sizes
    }
}

/// The status a session ends with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The command exited with a non-zero code.
    Exit(i32),
    /// Anything else that went wrong, said to the user.
    Error {
        reason: StatusReason,
        message: String,
    },
}

/// The `reason` of a failed session's `metav1.Status`, with its HTTP code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusReason {
    BadRequest,
    NotFound,
    ServiceUnavailable,
    InternalError,
}

impl StatusReason {
    fn name_and_code(self) -> (&'static str, u16) {
        match self {
            StatusReason::BadRequest => ("BadRequest", 400),
            StatusReason::NotFound => ("NotFound", 404),
            StatusReason::ServiceUnavailable => ("ServiceUnavailable", 503),
            StatusReason::InternalError => ("InternalError", 500),
        }
    }
}

impl Outcome {
    /// A session the runtime could not serve: `what` went wrong, because of `e`.
    pub fn failed(what: &str, e: &crate::BackendError) -> Self {
        use crate::BackendError as E;
        let reason = match e {
            E::NotFound(_) => StatusReason::NotFound,
            E::Unavailable(_) => StatusReason::ServiceUnavailable,
            E::Exit(_) | E::Failed(_) => StatusReason::InternalError,
        };
        Outcome::Error {
            reason,
            message: format!("{what}: {e}"),
        }
    }

    /// The v4 (and v5) error-stream message: a JSON `metav1.Status`.
    pub fn v4_status(&self) -> Bytes {
        let v = match self {
            Outcome::Success => json!({"metadata": {}, "status": "Success"}),
            Outcome::Exit(code) => json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("command terminated with non-zero exit code: exit status {code}"),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            }),
            Outcome::Error { reason, message } => {
                let (reason, code) = reason.name_and_code();
                json!({
                    "metadata": {},
                    "status": "Failure",
                    "message": message,
                    "reason": reason,
                    "details": {"causes": [{"message": message}]},
                    "code": code,
                })
            }
        };
        Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
    }

    /// The error-stream message: JSON for v4 and later, text (none on success) before.
    pub fn status(&self, json: bool) -> Option<Bytes> {
        if json {
            Some(self.v4_status())
        } else {
            self.text_status()
        }
    }

    /// The v1-v3 error-stream message: plain text, and nothing at all on success.
    pub fn text_status(&self) -> Option<Bytes> {
        match self {
            Outcome::Success => None,
            Outcome::Exit(code) => Some(Bytes::from(format!(
                "command terminated with non-zero exit code: exit status {code}"
            ))),
            Outcome::Error { message, .. } => Some(Bytes::from(message.clone())),
        }
    }
}

/// The protocol to speak: the first of the client's that the server also speaks.
pub fn negotiate<'a>(client: &[String], server: &[&'a str]) -> Option<&'a str> {
    client
        .iter()
        .find_map(|c| server.iter().find(|s| **s == c.as_str()).copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_messages_split_across_chunks() {
        let mut d = ResizeDecoder::default();
        assert_eq!(d.push(br#"{"Width":80,"Hei"#), vec![]);
        assert_eq!(
            d.push(br#"ght":24}{"width":100,"height":40}{"#),
            vec![
                TermSize {
                    width: 80,
                    height: 24
                },
                TermSize {
                    width: 100,
                    height: 40
                }
            ]
        );
        assert_eq!(
            d.push(br#""Width":1,"Height":2}"#),
            vec![TermSize {
                width: 1,
                height: 2
            }]
        );
        // Garbage is dropped, and decoding goes on after it.
        assert_eq!(d.push(b"]]]"), vec![]);
        assert_eq!(
            d.push(br#"{"Width":3,"Height":4}"#),
            vec![TermSize {
                width: 3,
                height: 4
            }]
        );
    }

    #[test]
    fn statuses_as_client_go_reads_them() {
        let v: serde_json::Value = serde_json::from_slice(&Outcome::Exit(3).v4_status()).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        let v: serde_json::Value = serde_json::from_slice(&Outcome::Success.v4_status()).unwrap();
        assert_eq!(v["status"], "Success");
        assert_eq!(Outcome::Success.text_status(), None);
        let gone = Outcome::failed(
            "error executing command in container",
            &crate::BackendError::NotFound("container c1 not found".into()),
        );
        let v: serde_json::Value = serde_json::from_slice(&gone.v4_status()).unwrap();
        assert_eq!(v["reason"], "NotFound");
        assert_eq!(v["code"], 404);
        assert_eq!(
            v["message"],
            "error executing command in container: container c1 not found"
        );
        let down = Outcome::failed("x", &crate::BackendError::Unavailable("no shim".into()));
        let v: serde_json::Value = serde_json::from_slice(&down.v4_status()).unwrap();
        assert_eq!(
            (v["reason"].as_str(), v["code"].as_u64()),
            (Some("ServiceUnavailable"), Some(503))
        );
    }

    #[test]
    fn the_clients_order_decides() {
        let c = vec![V2.to_string(), V4.to_string()];
        assert_eq!(negotiate(&c, &SPDY_REMOTE_COMMAND), Some(V2));
        assert_eq!(negotiate(&["x".to_string()], &SPDY_REMOTE_COMMAND), None);
    }
}

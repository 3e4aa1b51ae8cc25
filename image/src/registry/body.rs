//! Reading registry responses: bounded bodies, the registry's own error messages, and the
//! reasons transport errors are given.

use bytes::Bytes;

use crate::error::Error;

pub(super) fn annotate(e: Error, tried: &[String]) -> Error {
    let all = tried.join("; ");
    match e {
        Error::Registry { host, reason } => Error::Registry {
            host,
            reason: format!("{reason} (hosts tried: {all})"),
        },
        Error::Unauthorized { host, reason } => Error::Unauthorized {
            host,
            reason: format!("{reason} (hosts tried: {all})"),
        },
        other => other,
    }
}

pub(crate) fn transport_reason(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Why a bounded response body was not read.
#[derive(Debug)]
pub(super) enum Unread {
    /// It is larger than the bound: the content is what it is, asking again will not help.
    TooLarge(usize),
    /// The connection failed.
    Transport(String),
}

impl std::fmt::Display for Unread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unread::TooLarge(max) => write!(f, "response larger than {max} bytes"),
            Unread::Transport(e) => f.write_str(e),
        }
    }
}

pub(super) async fn read_limited(
    mut resp: reqwest::Response,
    max: usize,
) -> std::result::Result<Bytes, Unread> {
    if resp.content_length().is_some_and(|l| l as usize > max) {
        return Err(Unread::TooLarge(max));
    }
    let mut buf = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| Unread::Transport(transport_reason(&e)))?
    {
        if buf.len() + chunk.len() > max {
            return Err(Unread::TooLarge(max));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.into())
}

/// A bounded body that was not read, as the error of fetching `what` from `host`: content
/// over its bound is bad content (a permanent failure), anything else the registry's.
pub(super) fn unread(e: Unread, what: &str, host: String) -> Error {
    match e {
        Unread::TooLarge(max) => Error::BadContent {
            what: format!("{what} from {host}"),
            reason: format!("larger than the {} KiB berth accepts for it", max / 1024),
        },
        Unread::Transport(reason) => Error::Registry { host, reason },
    }
}

/// The registry's error message from a distribution-spec error body, else the status text.
pub(super) async fn registry_message(resp: reqwest::Response) -> String {
    let status = resp.status();
    let body = read_limited(resp, 64 << 10).await.unwrap_or_default();
    #[derive(serde::Deserialize)]
    struct Errs {
        errors: Vec<E>,
    }
    #[derive(serde::Deserialize)]
    struct E {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(e) = serde_json::from_slice::<Errs>(&body) {
        let msgs: Vec<String> = e
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.code, e.message))
            .collect();
        if !msgs.is_empty() {
            return msgs.join("; ");
        }
    }
    status.canonical_reason().unwrap_or("error").to_lowercase()
}

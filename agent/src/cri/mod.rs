//! The CRI gRPC services. This is the one place where library errors become gRPC statuses
//! and where every call gets its span and its log line.

mod container_config;
mod container_status;
mod image;
mod runtime;
mod sandbox;
mod security;
mod stream;
mod validate;

use std::future::Future;
use std::time::Instant;

use berth_errdefs::{Classify, ErrorKind};
use tonic::{Code, Response, Status};
use tracing::Instrument;

pub use image::ImageCri;
pub use runtime::RuntimeCri;
pub use stream::StreamBackend;

/// The gRPC code of an error kind: the one place where berth's errors become codes. Every
/// kind is named, so a new one is a compile error here.
pub(crate) fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::DataLoss => Code::DataLoss,
        ErrorKind::Cancelled => Code::Cancelled,
        ErrorKind::Internal => Code::Internal,
        ErrorKind::Unknown => Code::Unknown,
    }
}

/// The status for any of berth's errors: its kind's code and its message (which says its
/// causes).
pub(crate) fn status<E: Classify + std::fmt::Display>(e: E) -> Status {
    Status::new(code(e.kind()), e.to_string())
}

/// The longest status message berth sends. gRPC carries it in a trailer, and clients refuse
/// trailers over their header limit (8 KiB for grpc-go by default): a message built from a
/// hostile request must not make the answer itself unreadable.
const MAX_STATUS_MESSAGE: usize = 4096;

/// `s` with its message cut to [`MAX_STATUS_MESSAGE`] bytes.
fn bounded(s: Status) -> Status {
    if s.message().len() <= MAX_STATUS_MESSAGE {
        return s;
    }
    let mut end = MAX_STATUS_MESSAGE;
    while !s.message().is_char_boundary(end) {
        end -= 1;
    }
    let msg = format!(
        "{}… (message cut at {MAX_STATUS_MESSAGE} of {} bytes)",
        &s.message()[..end],
        s.message().len()
    );
    Status::new(s.code(), msg)
}

/// Whether a call changes state (logged at info) or only reads it (logged at trace).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Mutation,
    Read,
}

/// Runs one CRI call inside `span`, logs its outcome once, and wraps the response.
pub(crate) async fn call<T>(
    span: tracing::Span,
    kind: Kind,
    fut: impl Future<Output = Result<T, Status>>,
) -> Result<Response<T>, Status> {
    let start = Instant::now();
    let res = fut.instrument(span.clone()).await;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    let _e = span.enter();
    match (&res, kind) {
        (Ok(_), Kind::Mutation) => tracing::info!(elapsed_ms = ms, "done"),
        (Ok(_), Kind::Read) => tracing::trace!(elapsed_ms = ms, "done"),
        (Err(s), Kind::Mutation) => {
            tracing::warn!(elapsed_ms = ms, code = ?s.code(), err = s.message(), "failed")
        }
        (Err(s), Kind::Read) => {
            tracing::debug!(elapsed_ms = ms, code = ?s.code(), err = s.message(), "failed")
        }
    }
    res.map(Response::new).map_err(bounded)
}

/// Runs a mutating call's body on its own task, so that it finishes even when the client
/// cancels or times out (tonic drops the handler's future then).
/// Items a `Stream*` call (Kubernetes 1.36) sends per message: far below gRPC's message size
/// limit even for the largest items (pod stats with many containers).
const STREAM_CHUNK: usize = 256;

/// The answer of a `Stream*` call: `items` in messages of at most [`STREAM_CHUNK`], each at
/// least one item (none for no items), each made by `wrap`.
pub(crate) fn chunked<T: Send + 'static, R: Send + 'static>(
    items: Vec<T>,
    wrap: impl Fn(Vec<T>) -> R + Send + 'static,
) -> tonic::codegen::BoxStream<R> {
    let mut items = items.into_iter().peekable();
    let mut chunks = Vec::new();
    while items.peek().is_some() {
        chunks.push(Ok(wrap(items.by_ref().take(STREAM_CHUNK).collect())));
    }
    Box::pin(futures::stream::iter(chunks))
}

pub(crate) async fn detached<T: Send + 'static>(
    fut: impl Future<Output = Result<T, Status>> + Send + 'static,
) -> Result<T, Status> {
    tokio::spawn(fut.in_current_span())
        .await
        .map_err(|e| Status::internal(format!("request task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_codes() {
        let e = berth_image::Reference::parse("Bad").unwrap_err();
        assert_eq!(status(e).code(), Code::InvalidArgument);
        assert_eq!(
            status(berth_image::Error::ImageNotFound("x".into())).code(),
            Code::NotFound
        );
        let io = berth_image::Error::Io {
            context: "write blob".into(),
            error: std::io::Error::other("disk full"),
        };
        let s = status(io);
        assert_eq!(s.code(), Code::Internal);
        assert_eq!(s.message(), "write blob: disk full");
    }
}

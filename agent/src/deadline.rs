//! The caller's deadline (`grpc-timeout`), answered as gRPC says: DEADLINE_EXCEEDED.
//!
//! tonic's server enforces the header itself but answers CANCELLED ("Timeout expired"), which
//! a client whose own deadline had not quite passed yet (critest's 1 ms pull) takes as a
//! cancellation. This layer, inside tonic's, ends the call a little before tonic would and
//! answers DEADLINE_EXCEEDED. What the call had started in its own task (every mutating
//! call does: see `cri::detached`) finishes regardless, as with tonic's own timeout.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// How much earlier than tonic the call ends: enough to stay ahead of its timer (tokio's
/// timers fire on millisecond ticks), never more than half the caller's time.
const AHEAD: Duration = Duration::from_millis(5);

/// The [`tower::Layer`] of [`Deadline`].
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

/// Ends a call whose `grpc-timeout` passes with DEADLINE_EXCEEDED.
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Deadline<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let timeout = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(grpc_timeout);
        let call = self.inner.call(req);
        Box::pin(async move {
            let Some(t) = timeout else {
                return call.await;
            };
            match tokio::time::timeout(t.saturating_sub(AHEAD.min(t / 2)), call).await {
                Ok(r) => r,
                Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                    "the caller's deadline ({t:?}) passed before the call finished"
                ))
                .into_http()),
            }
        })
    }
}

/// A `grpc-timeout` value: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
fn grpc_timeout(v: &str) -> Option<Duration> {
    let unit = v.chars().last()?;
    let n = &v[..v.len() - unit.len_utf8()];
    if n.is_empty() || n.len() > 8 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(n * 3600),
        'M' => Duration::from_secs(n * 60),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_as_grpc_writes_them() {
        assert_eq!(grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout("999u"), Some(Duration::from_micros(999)));
        assert_eq!(grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout("123456789m"), None);
        assert_eq!(grpc_timeout("S"), None);
        assert_eq!(grpc_timeout("-1S"), None);
        assert_eq!(grpc_timeout("10x"), None);
        assert_eq!(grpc_timeout("1é"), None);
    }
}

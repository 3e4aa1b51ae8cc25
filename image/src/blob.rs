//! A layer download that survives a broken connection: when the body ends early or the
//! connection fails, the rest is asked for with a `Range` request and the stream goes on
//! where it stopped. Whatever arrives is still checked against the layer's digest by the
//! caller, so a resumed stream can never pass off wrong bytes.

use bytes::Bytes;
use http::StatusCode;
use reqwest::header::CONTENT_RANGE;

use crate::error::{Error, Result};
use crate::reference::Digest;
use crate::registry::{Session, transport_reason};

/// Resumptions in a row that may bring less than `PROGRESS` each before the download
/// fails (containerd's fetcher allows three retries without progress as well).
pub const MAX_IDLE_RESUMES: u32 = 3;
/// What a resumed request must deliver for its resumption not to count against
/// [`MAX_IDLE_RESUMES`].
const PROGRESS: u64 = 1 << 20;

/// The body of one blob, as a stream of chunks.
pub struct BlobDownload<'a> {
    session: &'a Session,
    digest: Digest,
    size: u64,
    resp: reqwest::Response,
    /// Bytes handed out so far.
    received: u64,
    /// Bytes of the current response to drop before handing out more: a host that ignored
    /// the range sent the blob from its start.
    skip: u64,
    /// Where the last resumption started, and how many resumptions in a row brought little.
    resumed_at: u64,
    idle_resumes: u32,
    /// Every resumption, for the log and the error.
    pub resumes: u32,
}

impl<'a> BlobDownload<'a> {
    /// Opens the download of `digest`, `size` bytes long.
    pub async fn open(session: &'a Session, digest: &Digest, size: u64) -> Result<Self> {
        let resp = session.blob(digest).await?;
        Ok(BlobDownload {
            session,
            digest: digest.clone(),
            size,
            resp,
            received: 0,
            skip: 0,
            resumed_at: 0,
            idle_resumes: 0,
            resumes: 0,
        })
    }

    /// The next chunk; `None` once the whole blob arrived (or the host sent more: the
    /// caller's size limit says so).
    pub async fn chunk(&mut self) -> Result<Option<Bytes>> {
        loop {
            let why = match self.resp.chunk().await {
                Ok(Some(mut c)) => {
                    if self.skip > 0 {
                        let drop = self.skip.min(c.len() as u64);
                        self.skip -= drop;
                        c = c.split_off(drop as usize);
                        if c.is_empty() {
                            continue;
                        }
                    }
                    self.received += c.len() as u64;
                    return Ok(Some(c));
                }
                Ok(None) if self.received >= self.size && self.skip == 0 => return Ok(None),
                Ok(None) => format!(
                    "the body ended after {} of {} bytes",
                    self.received, self.size
                ),
                Err(e) => transport_reason(&e),
            };
            self.resume(why).await?;
        }
    }

    async fn resume(&mut self, why: String) -> Result<()> {
        if self.received - self.resumed_at < PROGRESS {
            self.idle_resumes += 1;
        } else {
            self.idle_resumes = 1;
        }
        if self.idle_resumes > MAX_IDLE_RESUMES {
            return Err(self.failed(format!(
                "{why} ({} resumptions, the last {MAX_IDLE_RESUMES} without progress)",
                self.resumes
            )));
        }
        self.resumes += 1;
        self.resumed_at = self.received;
        tracing::info!(blob = %self.digest, offset = self.received, reason = %why,
            "layer download broke; resuming");
        let resp = self.session.blob_from(&self.digest, self.received).await?;
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => {
                let start = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(range_start);
                if start != Some(self.received) {
                    return Err(self.failed(format!(
                        "asked for the blob from byte {}, the host answered the range {:?}",
                        self.received,
                        resp.headers().get(CONTENT_RANGE)
                    )));
                }
                self.skip = 0;
            }
            // The host ignores ranges: what was received already is read again and dropped.
            _ => self.skip = self.received,
        }
        self.resp = resp;
        Ok(())
    }

    fn failed(&self, reason: String) -> Error {
        Error::Registry {
            host: self.resp.url().host_str().unwrap_or_default().to_string(),
            reason: format!("download of {} failed: {reason}", self.digest),
        }
    }
}

/// The first byte of a `Content-Range: bytes <first>-<last>/<size>` header.
fn range_start(v: &str) -> Option<u64> {
    let (unit, rest) = v.trim().split_once(' ')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    rest.split_once('-')?.0.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_start() {
        assert_eq!(range_start("bytes 100-199/200"), Some(100));
        assert_eq!(range_start("bytes 0-0/*"), Some(0));
        assert_eq!(range_start("items 1-2/3"), None);
        assert_eq!(range_start("bytes */200"), None);
        assert_eq!(range_start("bytes"), None);
    }
}

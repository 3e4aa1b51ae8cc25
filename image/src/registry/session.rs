//! One pull's requests for one repository: the host loop (hosts tried in order, falling
//! through on transport errors and error statuses), manifests, blobs and byte ranges.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderName, RANGE, WWW_AUTHENTICATE};

use crate::error::{Error, Result};
use crate::hosts::RegistryHost;
use crate::reference::{Digest, Reference};

use super::body::{annotate, read_limited, registry_message, unread};
use super::*;

/// What a manifest request returned.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// Its digest (verified against the body).
    pub digest: Digest,
    /// The `Content-Type` the registry gave (or the body's `mediaType`).
    pub media_type: String,
    /// The raw bytes.
    pub body: Bytes,
}

/// Requests for one repository, with auth tokens cached per host. A host that could not be
/// reached or did not answer in time is remembered for the session (one pull): its later
/// requests go straight to the next host instead of waiting out the same timeout again.
pub struct Session {
    pub(super) client: Arc<RegistryClient>,
    pub(super) hosts: Vec<RegistryHost>,
    pub(super) repo: String,
    pub(super) creds: Option<Credentials>,
    pub(super) tokens: Mutex<HashMap<String, String>>,
    /// Host URL → why it was given up on.
    pub(super) unresponsive: Mutex<HashMap<String, String>>,
}

/// Why a host did not serve a request.
pub(super) enum Miss {
    NotFound,
    Failed(Error),
}

pub(super) type Attempt<T> = std::result::Result<T, Miss>;

impl Session {
    /// Turns the reference's tag (or digest) into a manifest, asking `resolve`-capable hosts.
    pub async fn resolve(&self, reference: &Reference) -> Result<FetchedManifest> {
        let object = reference.object();
        let want = reference.digest().cloned();
        self.first_ok(
            &format!("manifest {reference}"),
            |h| h.capabilities.resolve || (want.is_some() && h.capabilities.pull),
            |h| {
                let object = object.clone();
                let want = want.clone();
                async move { self.get_manifest(h, &object, want.as_ref()).await }
            },
        )
        .await
    }

    /// Fetches a manifest by digest from `pull`-capable hosts.
    pub async fn manifest(&self, digest: &Digest) -> Result<FetchedManifest> {
        self.first_ok(
            &format!("manifest {digest}"),
            |h| h.capabilities.pull,
            |h| async move { self.get_manifest(h, digest.as_str(), Some(digest)).await },
        )
        .await
    }

    /// The OCI 1.1 referrers index of manifest `digest` (`GET /v2/<name>/referrers/<digest>`),
    /// from the first `pull`-capable host that serves the referrers API; NotFound when none
    /// does.
    pub async fn referrers(&self, digest: &Digest) -> Result<FetchedManifest> {
        self.first_ok(
            &format!("referrers of {digest}"),
            |h| h.capabilities.pull,
            |h| async move {
                let what = format!("referrers of {digest}");
                let resp = self
                    .send(
                        h,
                        &format!("referrers/{digest}"),
                        &[(ACCEPT, "application/vnd.oci.image.index.v1+json")],
                    )
                    .await?;
                let body = read_limited(resp, MAX_MANIFEST)
                    .await
                    .map_err(|e| Miss::Failed(unread(e, &what, h.authority())))?;
                Ok(FetchedManifest {
                    digest: Digest::of(&body),
                    media_type: "application/vnd.oci.image.index.v1+json".into(),
                    body,
                })
            },
        )
        .await
    }

    /// Opens a blob download from the first `pull`-capable host that has it.
    pub async fn blob(&self, digest: &Digest) -> Result<reqwest::Response> {
        self.first_ok(
            &format!("blob {digest}"),
            |h| h.capabilities.pull,
            |h| async move {
                let path = format!("blobs/{digest}");
                self.send(h, &path, &[]).await
            },
        )
        .await
    }

    /// Asks for a blob from byte `offset` on (`Range`), to resume a download that broke. A
    /// host may ignore the range and answer the whole blob (200); the caller checks.
    pub(crate) async fn blob_from(
        &self,
        digest: &Digest,
        offset: u64,
    ) -> Result<reqwest::Response> {
        let range = format!("bytes={offset}-");
        self.first_ok(
            &format!("blob {digest} from byte {offset}"),
            |h| h.capabilities.pull,
            |h| {
                let (path, range) = (format!("blobs/{digest}"), range.clone());
                async move { self.send(h, &path, &[(RANGE, range.as_str())]).await }
            },
        )
        .await
    }

    /// Exactly `len` bytes of a blob at `offset` (HTTP `Range`), for lazily pulled layers. A
    /// host that ignores the range (answers 200, or another range) is an error: the caller
    /// then pulls the layer the normal way. The body read is bounded by the progress timeout.
    pub async fn blob_range(&self, digest: &Digest, offset: u64, len: u64) -> Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let last = offset + len - 1;
        let range = format!("bytes={offset}-{last}");
        let resp = self
            .first_ok(
                &format!("blob {digest} bytes {offset}-{last}"),
                |h| h.capabilities.pull,
                |h| {
                    let (path, range) = (format!("blobs/{digest}"), range.clone());
                    async move { self.send(h, &path, &[(RANGE, range.as_str())]).await }
                },
            )
            .await?;
        let host = resp.url().host_str().unwrap_or_default().to_string();
        let content_range = resp
            .headers()
            .get(reqwest::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if resp.status() != StatusCode::PARTIAL_CONTENT
            || !content_range.starts_with(&format!("bytes {offset}-{last}/"))
        {
            return Err(Error::Registry {
                host,
                reason: format!(
                    "does not serve byte ranges (asked {range}, got HTTP {} {content_range:?})",
                    resp.status()
                ),
            });
        }
        let body = tokio::time::timeout(
            self.client.timeouts.progress,
            read_limited(resp, len as usize),
        )
        .await
        .map_err(|_| Error::Registry {
            host: host.clone(),
            reason: format!(
                "no complete answer to {range} within {:?}",
                self.client.timeouts.progress
            ),
        })?
        .map_err(|e| Error::Registry {
            host: host.clone(),
            reason: e.to_string(),
        })?;
        if body.len() as u64 != len {
            return Err(Error::Registry {
                host,
                reason: format!("{range}: {} bytes answered", body.len()),
            });
        }
        Ok(body)
    }

    /// Forgets which hosts were given up on: a long-lived session (a lazily pulled layer's)
    /// tries them all again.
    pub fn retry_all_hosts(&self) {
        self.unresponsive
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Fetches a small blob (an image config) of at most `max` bytes and checks its digest.
    pub async fn blob_bytes(&self, digest: &Digest, max: usize) -> Result<Bytes> {
        let resp = self.blob(digest).await?;
        let host = resp.url().host_str().unwrap_or_default().to_string();
        let body = read_limited(resp, max)
            .await
            .map_err(|e| unread(e, &format!("blob {digest}"), host))?;
        let actual = Digest::of(&body);
        if &actual != digest {
            return Err(Error::DigestMismatch {
                what: "blob digest".into(),
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(body)
    }

    pub(super) async fn get_manifest(
        &self,
        h: &RegistryHost,
        object: &str,
        want: Option<&Digest>,
    ) -> Attempt<FetchedManifest> {
        let resp = self
            .send(
                h,
                &format!("manifests/{object}"),
                &[(ACCEPT, MANIFEST_ACCEPT)],
            )
            .await?;
        let ct = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_string());
        let body = read_limited(resp, MAX_MANIFEST)
            .await
            .map_err(|e| Miss::Failed(unread(e, &format!("manifest {object}"), h.authority())))?;
        let digest = Digest::of(&body);
        if let Some(w) = want
            && &digest != w
        {
            return Err(Miss::Failed(Error::DigestMismatch {
                what: format!("manifest from {}", h.authority()),
                expected: w.to_string(),
                actual: digest.to_string(),
            }));
        }
        let media_type = match ct {
            Some(ct) if ct != "application/json" && ct != "text/plain" && !ct.is_empty() => ct,
            _ => serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    v.get("mediaType")
                        .and_then(|m| m.as_str())
                        .map(str::to_string)
                })
                .unwrap_or_default(),
        };
        Ok(FetchedManifest {
            digest,
            media_type,
            body,
        })
    }

    /// Tries each eligible host in order. 404s fall through silently; other failures fall
    /// through too, and the first of them is what is returned when no host succeeds.
    async fn first_ok<'a, T, F, Fut>(
        &'a self,
        what: &str,
        eligible: impl Fn(&RegistryHost) -> bool,
        attempt: F,
    ) -> Result<T>
    where
        F: Fn(&'a RegistryHost) -> Fut,
        Fut: std::future::Future<Output = Attempt<T>>,
    {
        let mut first_err = None;
        let mut tried = Vec::new();
        for h in self.hosts.iter().filter(|h| eligible(h)) {
            let gave_up = self
                .unresponsive
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(h.url.as_str())
                .cloned();
            if let Some(why) = gave_up {
                tracing::debug!(host = %h.url, what, "skipping a host that failed earlier in this pull");
                let e = Error::Registry {
                    host: h.authority(),
                    reason: format!("skipped: earlier in this pull, {why}"),
                };
                if first_err.is_none() {
                    tried.push(format!("{} (the error above)", h.url));
                    first_err = Some(e);
                } else {
                    tried.push(format!("{} ({e})", h.url));
                }
                continue;
            }
            match attempt(h).await {
                Ok(v) => return Ok(v),
                Err(Miss::NotFound) => {
                    tracing::debug!(host = %h.url, what, "not found on host, trying next");
                    tried.push(format!("{} (not found)", h.url));
                }
                Err(Miss::Failed(e)) => {
                    tracing::info!(host = %h.url, what, err = %e, "registry host failed, trying next");
                    // The first failure is the error returned; later ones are listed with it.
                    if first_err.is_none() {
                        tried.push(format!("{} (the error above)", h.url));
                        first_err = Some(e);
                    } else {
                        tried.push(format!("{} ({e})", h.url));
                    }
                }
            }
        }
        if tried.is_empty() {
            return Err(Error::bad(
                what.to_string(),
                "no host in hosts.toml has the capability needed for this request",
            ));
        }
        match first_err {
            Some(e) if tried.len() == 1 => Err(e),
            Some(e) => Err(annotate(e, &tried)),
            None => Err(Error::RemoteNotFound {
                what: what.to_string(),
                tried: tried.join(", "),
            }),
        }
    }

    /// Sends a GET to `<host>/<repo>/<path>`, answering an auth challenge once.
    pub(super) async fn send(
        &self,
        h: &RegistryHost,
        path: &str,
        headers: &[(HeaderName, &str)],
    ) -> Attempt<reqwest::Response> {
        let client = self.client.http_for(h).map_err(Miss::Failed)?;
        let mut url = h.url.clone();
        url.set_path(&format!(
            "{}/{}/{}",
            h.url.path().trim_end_matches('/'),
            self.repo,
            path
        ));
        if h.is_mirror() {
            url.query_pairs_mut().append_pair("ns", &h.upstream);
        }
        let creds = self.creds.as_ref().filter(|c| c.applies_to(h));
        for round in 0..2 {
            let mut req = client.get(url.clone());
            for (k, v) in headers {
                req = req.header(k, *v);
            }
            for (k, v) in &h.headers {
                req = req.header(k.as_str(), v.as_str());
            }
            if let Some(c) = creds.filter(|c| !c.registry_token.is_empty()) {
                req = req.bearer_auth(&c.registry_token);
            } else if let Some(tok) = self
                .tokens
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&h.authority())
            {
                req = req.header(AUTHORIZATION, tok.as_str());
            }
            let timeout = self.client.timeouts.response_header;
            let sent = tokio::time::timeout(timeout, req.send()).await;
            let resp = match sent {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    let reason = transport_reason(&e);
                    return Err(self.give_up(h, reason));
                }
                Err(_) => {
                    let reason = format!("no response within {timeout:?}");
                    return Err(self.give_up(h, reason));
                }
            };
            match resp.status() {
                s if s.is_success() => return Ok(resp),
                StatusCode::NOT_FOUND => return Err(Miss::NotFound),
                StatusCode::UNAUTHORIZED if round == 0 => {
                    let challenge = resp.headers().get(WWW_AUTHENTICATE).cloned();
                    let auth = self
                        .authorize(h, &client, challenge.as_ref(), creds)
                        .await
                        .map_err(Miss::Failed)?;
                    self.tokens
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(h.authority(), auth);
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    let reason = registry_message(resp).await;
                    let reason = if creds.is_some() {
                        format!("credentials refused: {reason}")
                    } else {
                        format!("no credentials given: {reason}")
                    };
                    return Err(Miss::Failed(Error::Unauthorized {
                        host: h.authority(),
                        reason,
                    }));
                }
                s => {
                    let reason = format!("HTTP {s}: {}", registry_message(resp).await);
                    return Err(Miss::Failed(Error::Registry {
                        host: h.authority(),
                        reason,
                    }));
                }
            }
        }
        Err(Miss::Failed(Error::Unauthorized {
            host: h.authority(),
            reason: "still unauthorized after authenticating".into(),
        }))
    }

    /// Remembers that host `h` could not be reached or did not answer, and why.
    pub(super) fn give_up(&self, h: &RegistryHost, reason: String) -> Miss {
        self.unresponsive
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(h.url.to_string(), reason.clone());
        Miss::Failed(Error::Registry {
            host: h.authority(),
            reason,
        })
    }
}

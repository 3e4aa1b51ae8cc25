//! A registry client (distribution API v2) that walks the certs.d host list.
//!
//! Why not `oci-client`: it configures TLS once per client and has no notion of per-host CAs,
//! client certificates, extra headers, `override_path`, capabilities or the mirror fallback
//! loop that containerd's hosts.toml promises. Here each [`RegistryHost`] gets its own HTTP
//! client (cached by its TLS settings) and every request goes through [`Session::first_ok`],
//! which tries the hosts in order and falls through on transport errors and error statuses.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::StatusCode;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue, RANGE, WWW_AUTHENTICATE,
};

use crate::error::{Error, Result};
use crate::hosts::RegistryHost;
use crate::reference::{Digest, Reference};

/// Media types berth accepts for manifests, in order of preference.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

const MAX_MANIFEST: usize = 4 << 20;
const USER_AGENT: &str = concat!("berth/", env!("CARGO_PKG_VERSION"));

/// Credentials from the CRI `AuthConfig`. `Debug` never prints secrets.
#[derive(Clone, Default)]
pub struct Credentials {
    /// User name for Basic auth or the token service.
    pub username: String,
    /// Password.
    pub password: String,
    /// An OAuth2 refresh token for the token service.
    pub identity_token: String,
    /// A bearer token to send as is.
    pub registry_token: String,
    /// Restricts the credentials to this registry host, when set.
    pub server_address: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("server_address", &self.server_address)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Builds credentials from CRI fields; `auth` is base64 `user:password`.
    pub fn from_cri(
        username: &str,
        password: &str,
        auth: &str,
        server_address: &str,
        identity_token: &str,
        registry_token: &str,
    ) -> Result<Self> {
        let (mut username, mut password) = (username.to_string(), password.to_string());
        if !auth.is_empty() {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| Error::InvalidReference {
                    reference: "auth".into(),
                    reason: "auth is not valid base64".into(),
                })?;
            let decoded = String::from_utf8(decoded).map_err(|_| Error::InvalidReference {
                reference: "auth".into(),
                reason: "auth is not UTF-8".into(),
            })?;
            let (u, p) = decoded
                .split_once(':')
                .ok_or_else(|| Error::InvalidReference {
                    reference: "auth".into(),
                    reason: "auth must encode user:password".into(),
                })?;
            username = u.to_string();
            password = p.to_string();
        }
        Ok(Credentials {
            username,
            password,
            identity_token: identity_token.to_string(),
            registry_token: registry_token.to_string(),
            server_address: server_address.to_string(),
        })
    }

    fn applies_to(&self, host: &RegistryHost) -> bool {
        if self.server_address.is_empty() {
            return true;
        }
        let addr = self.server_address.trim_end_matches('/');
        let addr = addr.split_once("://").map_or(addr, |(_, a)| a);
        let addr = addr.split('/').next().unwrap_or(addr);
        addr == host.authority()
            || addr == host.upstream
            || (addr == "index.docker.io" && host.upstream == "docker.io")
    }
}

/// How long a registry may take. Every request is bounded by these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Connecting: TCP and the TLS handshake.
    pub dial: Duration,
    /// From sending a request to its response headers. A host that misses it is skipped for
    /// the rest of the pull (see [`Session`]).
    pub response_header: Duration,
    /// The longest a response body may go without a byte.
    pub progress: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            dial: Duration::from_secs(10),
            response_header: Duration::from_secs(30),
            progress: Duration::from_secs(300),
        }
    }
}

/// Shares HTTP clients between pulls.
#[derive(Default)]
pub struct RegistryClient {
    clients: Mutex<HashMap<String, reqwest::Client>>,
    timeouts: Timeouts,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegistryClient")
    }
}

impl RegistryClient {
    /// A client with no cached connections.
    pub fn new(timeouts: Timeouts) -> Self {
        // reqwest is built without a default crypto provider; ring is the one linked in. A
        // second install (tests, several clients) is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        RegistryClient {
            clients: Mutex::default(),
            timeouts,
        }
    }

    fn http_for(&self, host: &RegistryHost) -> Result<reqwest::Client> {
        let key = format!(
            "{}|{:?}|{:?}|{}",
            host.skip_verify,
            host.ca,
            host.client,
            host.url.scheme()
        );
        if let Some(c) = self
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(c.clone());
        }
        let hosts_err = |reason: String| Error::HostsConfig {
            file: host.ca.first().cloned().unwrap_or_default(),
            line: None,
            reason,
        };
        let mut b = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            // The TLS handshake is part of connecting for reqwest's connector.
            .connect_timeout(self.timeouts.dial)
            // Each read of a response body; the wait for headers has its own bound (send).
            .read_timeout(self.timeouts.progress)
            .pool_idle_timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::limited(10));
        if host.skip_verify {
            b = b.tls_danger_accept_invalid_certs(true);
        }
        for ca in &host.ca {
            let pem = std::fs::read(ca)
                .map_err(|e| hosts_err(format!("read CA {}: {e}", ca.display())))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| hosts_err(format!("CA {}: {e}", ca.display())))?
            {
                b = b.add_root_certificate(cert);
            }
        }
        if let Some((cert, key)) = host.client.first() {
            let mut pem = std::fs::read(cert).map_err(|e| {
                hosts_err(format!("read client certificate {}: {e}", cert.display()))
            })?;
            if let Some(key) = key {
                pem.push(b'\n');
                pem.extend(
                    std::fs::read(key).map_err(|e| {
                        hosts_err(format!("read client key {}: {e}", key.display()))
                    })?,
                );
            }
            let id = reqwest::Identity::from_pem(&pem)
                .map_err(|e| hosts_err(format!("client certificate {}: {e}", cert.display())))?;
            b = b.identity(id);
        }
        let client = b.build().map_err(|e| Error::Registry {
            host: host.authority(),
            reason: format!("build HTTP client: {e}"),
        })?;
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, client.clone());
        Ok(client)
    }

    /// A session for pulling from `reference`'s repository through `hosts`.
    pub fn session(
        self: &Arc<Self>,
        hosts: Vec<RegistryHost>,
        reference: &Reference,
        creds: Option<Credentials>,
    ) -> Session {
        Session {
            client: self.clone(),
            hosts,
            repo: reference.path().to_string(),
            creds,
            tokens: Mutex::new(HashMap::new()),
            unresponsive: Mutex::new(HashMap::new()),
        }
    }
}

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
    client: Arc<RegistryClient>,
    hosts: Vec<RegistryHost>,
    repo: String,
    creds: Option<Credentials>,
    tokens: Mutex<HashMap<String, String>>,
    /// Host URL → why it was given up on.
    unresponsive: Mutex<HashMap<String, String>>,
}

/// Why a host did not serve a request.
enum Miss {
    NotFound,
    Failed(Error),
}

type Attempt<T> = std::result::Result<T, Miss>;

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

    async fn get_manifest(
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
    async fn send(
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
    fn give_up(&self, h: &RegistryHost, reason: String) -> Miss {
        self.unresponsive
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(h.url.to_string(), reason.clone());
        Miss::Failed(Error::Registry {
            host: h.authority(),
            reason,
        })
    }

    /// Answers a `WWW-Authenticate` challenge with an `Authorization` header value.
    async fn authorize(
        &self,
        h: &RegistryHost,
        client: &reqwest::Client,
        challenge: Option<&HeaderValue>,
        creds: Option<&Credentials>,
    ) -> Result<String> {
        let unauthorized = |reason: String| Error::Unauthorized {
            host: h.authority(),
            reason,
        };
        let challenge = challenge
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| unauthorized("401 without a WWW-Authenticate challenge".into()))?;
        let (scheme, params) = parse_challenge(challenge)
            .ok_or_else(|| unauthorized(format!("unparsable challenge {challenge:?}")))?;
        if scheme.eq_ignore_ascii_case("basic") {
            let c = creds.filter(|c| !c.username.is_empty()).ok_or_else(|| {
                unauthorized("registry wants Basic auth and no credentials were given".into())
            })?;
            let raw = format!("{}:{}", c.username, c.password);
            return Ok(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            ));
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(unauthorized(format!("unsupported auth scheme {scheme:?}")));
        }
        let realm = params
            .get("realm")
            .ok_or_else(|| unauthorized("bearer challenge without realm".into()))?;
        let realm =
            url::Url::parse(realm).map_err(|e| unauthorized(format!("bad token realm: {e}")))?;
        let service = params.get("service").cloned().unwrap_or_default();
        let scope = format!("repository:{}:pull", self.repo);
        let resp = match creds {
            Some(c) if !c.identity_token.is_empty() => {
                let form = [
                    ("grant_type", "refresh_token"),
                    ("refresh_token", c.identity_token.as_str()),
                    ("service", &service),
                    ("scope", &scope),
                    ("client_id", "berth"),
                ];
                client.post(realm).form_urlencoded(&form).send()
            }
            _ => {
                let mut realm = realm;
                realm
                    .query_pairs_mut()
                    .append_pair("service", &service)
                    .append_pair("scope", &scope);
                let mut req = client.get(realm);
                if let Some(c) = creds.filter(|c| !c.username.is_empty()) {
                    req = req.basic_auth(&c.username, Some(&c.password));
                }
                req.send()
            }
        };
        let timeout = self.client.timeouts.response_header;
        let resp = tokio::time::timeout(timeout, resp)
            .await
            .map_err(|_| Error::Registry {
                host: h.authority(),
                reason: format!("token service: no response within {timeout:?}"),
            })?
            .map_err(|e| Error::Registry {
                host: h.authority(),
                reason: format!("token service: {}", transport_reason(&e)),
            })?;
        if !resp.status().is_success() {
            let status = resp.status();
            return Err(unauthorized(format!(
                "token service answered HTTP {status}: {}",
                registry_message(resp).await
            )));
        }
        let body = read_limited(resp, 1 << 20)
            .await
            .map_err(|e| unauthorized(format!("token service: {e}")))?;
        #[derive(serde::Deserialize)]
        struct Token {
            #[serde(default)]
            token: String,
            #[serde(default)]
            access_token: String,
        }
        let t: Token = serde_json::from_slice(&body)
            .map_err(|e| unauthorized(format!("token service sent bad JSON: {e}")))?;
        let tok = if t.token.is_empty() {
            t.access_token
        } else {
            t.token
        };
        if tok.is_empty() {
            return Err(unauthorized("token service sent no token".into()));
        }
        Ok(format!("Bearer {tok}"))
    }
}

trait FormExt {
    fn form_urlencoded(self, form: &[(&str, &str)]) -> Self;
}

impl FormExt for reqwest::RequestBuilder {
    fn form_urlencoded(self, form: &[(&str, &str)]) -> Self {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        self.header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
    }
}

fn annotate(e: Error, tried: &[String]) -> Error {
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
enum Unread {
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

async fn read_limited(
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
fn unread(e: Unread, what: &str, host: String) -> Error {
    match e {
        Unread::TooLarge(max) => Error::BadContent {
            what: format!("{what} from {host}"),
            reason: format!("larger than the {} KiB berth accepts for it", max / 1024),
        },
        Unread::Transport(reason) => Error::Registry { host, reason },
    }
}

/// The registry's error message from a distribution-spec error body, else the status text.
async fn registry_message(resp: reqwest::Response) -> String {
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

/// Parses `Bearer realm="…",service="…"` into its scheme and parameters.
pub fn parse_challenge(s: &str) -> Option<(String, HashMap<String, String>)> {
    let s = s.trim();
    let (scheme, rest) = s.split_once(' ').unwrap_or((s, ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let mut val = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            val.push(n);
                        }
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => val.push(c),
                }
            }
            (val, &q[end?..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.insert(key, value);
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    Some((scheme.to_string(), params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let (s, p) = parse_challenge(r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#).unwrap();
        assert_eq!(s, "Bearer");
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/busybox:pull");
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(
            (s.as_str(), p["realm"].as_str()),
            ("Basic", "Registry Realm")
        );
        let (_, p) = parse_challenge(r#"Bearer realm=unquoted, service="a\"b""#).unwrap();
        assert_eq!(
            (p["realm"].as_str(), p["service"].as_str()),
            ("unquoted", "a\"b")
        );
        assert!(parse_challenge(r#"Bearer realm="unterminated"#).is_none());
    }

    #[test]
    fn cri_auth_field_and_debug_hides_secrets() {
        let c = Credentials::from_cri("", "", "dXNlcjpwYTpzcw==", "", "", "").unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("user", "pa:ss")
        );
        assert!(!format!("{c:?}").contains("pa:ss"));
        assert!(Credentials::from_cri("", "", "!!", "", "", "").is_err());
        assert!(Credentials::from_cri("", "", "bm9jb2xvbg==", "", "", "").is_err());
    }

    #[test]
    fn credentials_scoped_by_server_address() {
        let host = crate::hosts::resolve(None, "127.0.0.1:5000")
            .unwrap()
            .remove(0);
        let mut c = Credentials::default();
        assert!(c.applies_to(&host));
        c.server_address = "http://127.0.0.1:5000/".into();
        assert!(c.applies_to(&host));
        c.server_address = "other.example".into();
        assert!(!c.applies_to(&host));
    }
}

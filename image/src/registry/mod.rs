//! A registry client (distribution API v2) that walks the certs.d host list.
//!
//! Why not `oci-client`: it configures TLS once per client and has no notion of per-host CAs,
//! client certificates, extra headers, `override_path`, capabilities or the mirror fallback
//! loop that containerd's hosts.toml promises. Here each [`RegistryHost`] gets its own HTTP
//! client (cached by its TLS settings) and every request goes through `Session::first_ok`,
//! which tries the hosts in order and falls through on transport errors and error statuses.

mod auth;
mod body;
mod session;

pub use auth::parse_challenge;
pub(crate) use body::transport_reason;
pub use session::{FetchedManifest, Session};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;

use crate::error::{Error, Result};
use crate::hosts::RegistryHost;
use crate::reference::Reference;

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

#[cfg(test)]
mod tests {
    use super::*;

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

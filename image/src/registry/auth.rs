//! Registry authentication: Basic, and Bearer tokens from the realm a host's challenge
//! names, cached per host for the session.

use std::collections::HashMap;

use base64::Engine as _;
use reqwest::header::{CONTENT_TYPE, HeaderValue};

use crate::error::{Error, Result};
use crate::hosts::RegistryHost;

use super::body::{read_limited, registry_message};
use super::*;

impl Session {
    /// Answers a `WWW-Authenticate` challenge with an `Authorization` header value.
    pub(super) async fn authorize(
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
}

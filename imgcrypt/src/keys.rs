//! The node's private keys: every file of a directory, as PEM (PKCS#8, PKCS#1, SEC1), DER or
//! JWK (a key or a key set). Files that hold no usable private key are listed with the reason,
//! so that `berth doctor` and pull errors can say why a key the operator put there is unused.

use std::path::{Path, PathBuf};

use aws_lc_rs::agreement::{self, ECDH_P256, ECDH_P384, ECDH_P521};
use aws_lc_rs::rsa::{OaepPrivateDecryptingKey, PrivateDecryptingKey};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::Deserialize;

use crate::der;

/// Key files are small; anything larger is not one.
const MAX_KEY_FILE: u64 = 1 << 20;

const CURVES: [&agreement::Algorithm; 3] = [&ECDH_P256, &ECDH_P384, &ECDH_P521];

/// A private key that can open a JWE recipient.
pub(crate) enum PrivateKey {
    /// For `RSA-OAEP` and `RSA-OAEP-256`, with its size in bits.
    Rsa(OaepPrivateDecryptingKey, usize),
    /// For `ECDH-ES` and `ECDH-ES+A*KW`.
    Ec(agreement::PrivateKey),
}

impl PrivateKey {
    fn describe(&self) -> String {
        match self {
            PrivateKey::Rsa(_, bits) => format!("RSA {bits}"),
            PrivateKey::Ec(k) => curve_name(k.algorithm()).to_string(),
        }
    }
}

pub(crate) fn curve_name(alg: &agreement::Algorithm) -> &'static str {
    if alg == &ECDH_P256 {
        "P-256"
    } else if alg == &ECDH_P384 {
        "P-384"
    } else if alg == &ECDH_P521 {
        "P-521"
    } else {
        "unknown curve"
    }
}

/// One usable key and where it came from.
pub(crate) struct Key {
    pub(crate) key: PrivateKey,
    /// The file (and the key's place in it, if the file holds several).
    pub(crate) source: String,
}

/// A file of the key directory that gave no usable key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The file.
    pub path: PathBuf,
    /// Why it was not used.
    pub reason: String,
}

/// The private keys of a directory, read at one moment.
pub struct KeyRing {
    dir: PathBuf,
    keys: Vec<Key>,
    skipped: Vec<Skipped>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("dir", &self.dir)
            .field("keys", &self.describe())
            .field("skipped", &self.skipped)
            .finish()
    }
}

impl KeyRing {
    /// Reads every file directly in `dir` (following symlinks, as a Kubernetes Secret volume
    /// needs; names starting with `.` are skipped, as that volume's own bookkeeping is). A
    /// missing directory is an empty ring. Blocking: call it off async workers.
    pub fn load(dir: &Path) -> KeyRing {
        let mut ring = KeyRing {
            dir: dir.to_path_buf(),
            keys: vec![],
            skipped: vec![],
        };
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return ring,
            Err(e) => {
                ring.skip(dir.to_path_buf(), format!("cannot read the directory: {e}"));
                return ring;
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .collect();
        paths.sort();
        for path in paths {
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => continue,
                Ok(m) if !m.is_file() => {
                    ring.skip(path, "not a regular file".into());
                    continue;
                }
                Ok(m) if m.len() > MAX_KEY_FILE => {
                    ring.skip(path, format!("{} bytes: too large for a key", m.len()));
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    ring.skip(path, e.to_string());
                    continue;
                }
            }
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    ring.skip(path, e.to_string());
                    continue;
                }
            };
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match parse_file(&bytes) {
                Ok(keys) => {
                    let several = keys.len() > 1;
                    for (i, key) in keys.into_iter().enumerate() {
                        let source = if several {
                            format!("{name}#{}", i + 1)
                        } else {
                            name.clone()
                        };
                        ring.keys.push(Key { key, source });
                    }
                }
                Err(reason) => ring.skip(path, reason),
            }
        }
        ring
    }

    fn skip(&mut self, path: PathBuf, reason: String) {
        self.skipped.push(Skipped { path, reason });
    }

    /// The directory read.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many usable private keys it holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether it holds no usable key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The files that gave no key, and why.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// One line per key: where it came from and what it is (`node.pem: RSA 4096`).
    pub fn describe(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| format!("{}: {}", k.source, k.key.describe()))
            .collect()
    }

    pub(crate) fn keys(&self) -> &[Key] {
        &self.keys
    }
}

/// Every private key in one file, or why there is none.
pub(crate) fn parse_file(bytes: &[u8]) -> Result<Vec<PrivateKey>, String> {
    let text = std::str::from_utf8(bytes).ok();
    let trimmed = text.map(str::trim_start);
    if let Some(t) = trimmed.filter(|t| t.starts_with("-----BEGIN ")) {
        return parse_pem(t);
    }
    if let Some(t) = trimmed.filter(|t| t.starts_with('{')) {
        return parse_jwk_file(t);
    }
    parse_der(bytes).map(|k| vec![k])
}

fn parse_pem(text: &str) -> Result<Vec<PrivateKey>, String> {
    let mut keys = vec![];
    let mut reasons = vec![];
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut body = String::new();
        let mut encrypted = false;
        let mut closed = false;
        for l in lines.by_ref() {
            if l == end {
                closed = true;
                break;
            }
            if let Some((name, value)) = l.split_once(':') {
                // RFC 1421 headers of "traditional" OpenSSL keys.
                if name.trim() == "Proc-Type" && value.contains("ENCRYPTED") {
                    encrypted = true;
                }
                continue;
            }
            body.push_str(l);
        }
        if !closed {
            reasons.push(format!("PEM block {label:?} has no END line"));
            break;
        }
        let der = match STANDARD.decode(body.as_bytes()) {
            Ok(d) => d,
            Err(e) => {
                reasons.push(format!("PEM block {label:?}: bad base64: {e}"));
                continue;
            }
        };
        let parsed = match label {
            _ if encrypted => Err("password-protected keys are not supported".to_string()),
            "ENCRYPTED PRIVATE KEY" => Err("password-protected keys are not supported".to_string()),
            "PRIVATE KEY" => parse_pkcs8(&der),
            "RSA PRIVATE KEY" => rsa_from_pkcs8(&der::pkcs1_to_pkcs8(&der)),
            "EC PRIVATE KEY" => ec_from_der(&der),
            // openssl ecparam -genkey writes the curve's parameters before the key.
            "EC PARAMETERS" => continue,
            "PUBLIC KEY" | "RSA PUBLIC KEY" | "CERTIFICATE" => Err(format!(
                "holds a {}; decryption needs the private key",
                label.to_lowercase()
            )),
            other => Err(format!("PEM block {other:?} is not a private key")),
        };
        match parsed {
            Ok(k) => keys.push(k),
            Err(e) => reasons.push(e),
        }
    }
    if keys.is_empty() {
        return Err(if reasons.is_empty() {
            "no PEM block".into()
        } else {
            reasons.join("; ")
        });
    }
    Ok(keys)
}

fn parse_der(der: &[u8]) -> Result<PrivateKey, String> {
    parse_pkcs8(der)
        .or_else(|_| rsa_from_pkcs8(&der::pkcs1_to_pkcs8(der)))
        .or_else(|_| ec_from_der(der))
        .map_err(|_| "neither PEM, JWK nor a DER private key berth reads".to_string())
}

fn parse_pkcs8(der: &[u8]) -> Result<PrivateKey, String> {
    rsa_from_pkcs8(der).or_else(|rsa| {
        ec_from_der(der).map_err(|_| format!("not an RSA or EC (P-256/384/521) key: {rsa}"))
    })
}

fn rsa_from_pkcs8(der: &[u8]) -> Result<PrivateKey, String> {
    let key = PrivateDecryptingKey::from_pkcs8(der)
        .map_err(|e| format!("RSA key rejected ({e}; 2048 to 8192 bits are supported)"))?;
    let bits = key.key_size_bits();
    OaepPrivateDecryptingKey::new(key)
        .map(|k| PrivateKey::Rsa(k, bits))
        .map_err(|e| format!("RSA key rejected for OAEP: {e}"))
}

fn ec_from_der(der: &[u8]) -> Result<PrivateKey, String> {
    CURVES
        .iter()
        .find_map(|alg| agreement::PrivateKey::from_private_key_der(alg, der).ok())
        .map(PrivateKey::Ec)
        .ok_or_else(|| "not an EC key on P-256, P-384 or P-521".to_string())
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    d: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    p: Option<String>,
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    dp: Option<String>,
    #[serde(default)]
    dq: Option<String>,
    #[serde(default)]
    qi: Option<String>,
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<serde_json::Value>,
}

fn parse_jwk_file(text: &str) -> Result<Vec<PrivateKey>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    if value.get("keys").is_some() {
        let set: JwkSet =
            serde_json::from_value(value).map_err(|e| format!("not a JWK set: {e}"))?;
        let mut keys = vec![];
        let mut reasons = vec![];
        for k in set.keys {
            match parse_jwk(k) {
                Ok(k) => keys.push(k),
                Err(e) => reasons.push(e),
            }
        }
        if keys.is_empty() {
            return Err(format!(
                "no usable key in the JWK set: {}",
                reasons.join("; ")
            ));
        }
        return Ok(keys);
    }
    parse_jwk(value).map(|k| vec![k])
}

pub(crate) fn b64url(field: &str, v: &Option<String>) -> Result<Vec<u8>, String> {
    let s = v.as_deref().ok_or_else(|| format!("no {field:?}"))?;
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|e| format!("{field:?}: bad base64url: {e}"))
}

fn parse_jwk(value: serde_json::Value) -> Result<PrivateKey, String> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|e| format!("not a JWK: {e}"))?;
    if jwk.d.is_none() {
        return Err("a public JWK; decryption needs the private key".into());
    }
    match jwk.kty.as_str() {
        "RSA" => {
            let n = [
                b64url("n", &jwk.n)?,
                b64url("e", &jwk.e)?,
                b64url("d", &jwk.d)?,
                b64url("p", &jwk.p)?,
                b64url("q", &jwk.q)?,
                b64url("dp", &jwk.dp)?,
                b64url("dq", &jwk.dq)?,
                b64url("qi", &jwk.qi)?,
            ];
            let pkcs1 = der::rsa_pkcs1([&n[0], &n[1], &n[2], &n[3], &n[4], &n[5], &n[6], &n[7]]);
            rsa_from_pkcs8(&der::pkcs1_to_pkcs8(&pkcs1))
        }
        "EC" => {
            let alg = curve(jwk.crv.as_deref())?;
            let d = b64url("d", &jwk.d)?;
            let len = scalar_len(alg);
            if d.len() > len {
                return Err(format!(
                    "\"d\" is {} bytes, longer than the curve's",
                    d.len()
                ));
            }
            let mut padded = vec![0; len - d.len()];
            padded.extend_from_slice(&d);
            agreement::PrivateKey::from_private_key(alg, &padded)
                .map(PrivateKey::Ec)
                .map_err(|e| format!("EC JWK rejected: {e}"))
        }
        other => Err(format!("JWK key type {other:?} cannot unwrap keys")),
    }
}

pub(crate) fn curve(crv: Option<&str>) -> Result<&'static agreement::Algorithm, String> {
    match crv {
        Some("P-256") => Ok(&ECDH_P256),
        Some("P-384") => Ok(&ECDH_P384),
        Some("P-521") => Ok(&ECDH_P521),
        other => Err(format!("unsupported curve {other:?}")),
    }
}

/// Bytes of a scalar or coordinate on the curve.
pub(crate) fn scalar_len(alg: &agreement::Algorithm) -> usize {
    if alg == &ECDH_P256 {
        32
    } else if alg == &ECDH_P384 {
        48
    } else {
        66
    }
}

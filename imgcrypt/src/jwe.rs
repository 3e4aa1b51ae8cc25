//! JWE decryption (RFC 7516) for the recipient algorithms ocicrypt and its peers use:
//! `RSA-OAEP`, `RSA-OAEP-256`, `ECDH-ES`, `ECDH-ES+A128KW` and `ECDH-ES+A256KW` (RFC 7518),
//! with `A128GCM`, `A192GCM` or `A256GCM` content encryption. JSON serialization (general or
//! flattened, as go-jose writes for one or several recipients) and compact serialization.

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::agreement::{self, UnparsedPublicKey};
use aws_lc_rs::digest;
use aws_lc_rs::key_wrap::{AES_128, AES_256, KeyEncryptionKey, KeyWrap};
use aws_lc_rs::rsa::{OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::keys::{self, KeyRing, PrivateKey};
use crate::{Error, Result};

type Header = Map<String, Value>;

/// RSA private-key operations and EC agreements per layer, at most: unwrapping is CPU work
/// the image's author chooses the amount of.
const MAX_ATTEMPTS: usize = 256;
/// One JWE, at most (bytes): a recipient takes well under a kilobyte.
const MAX_JWE: usize = 256 << 10;
/// Recipients of one JWE, at most.
const MAX_RECIPIENTS: usize = 64;
/// Members of one header (shared or a recipient's), at most: JWE defines about twenty.
const MAX_HEADER_KEYS: usize = 64;

/// A recipient's header over the shared one, looked up without copying either.
struct Merged<'a> {
    own: &'a Header,
    shared: &'a Header,
}

impl Merged<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.own.get(name).or_else(|| self.shared.get(name))
    }

    fn text(&self, name: &str) -> &str {
        self.get(name).and_then(Value::as_str).unwrap_or("")
    }

    fn contains(&self, name: &str) -> bool {
        self.own.contains_key(name) || self.shared.contains_key(name)
    }
}

fn check_header(what: &str, h: &Header) -> Result<()> {
    if h.len() > MAX_HEADER_KEYS {
        return Err(Error::Malformed(format!(
            "JWE {what} has {} members (at most {MAX_HEADER_KEYS})",
            h.len()
        )));
    }
    Ok(())
}

#[derive(Deserialize)]
struct JsonJwe {
    #[serde(default)]
    protected: Option<String>,
    #[serde(default)]
    unprotected: Option<Header>,
    #[serde(default)]
    header: Option<Header>,
    #[serde(default)]
    encrypted_key: Option<String>,
    #[serde(default)]
    recipients: Option<Vec<Recipient>>,
    #[serde(default)]
    aad: Option<String>,
    #[serde(default)]
    iv: Option<String>,
    ciphertext: String,
    #[serde(default)]
    tag: Option<String>,
}

#[derive(Deserialize)]
struct Recipient {
    #[serde(default)]
    header: Option<Header>,
    #[serde(default)]
    encrypted_key: Option<String>,
}

/// A parsed JWE: what every recipient shares, and each recipient's header and wrapped key.
struct Jwe {
    /// The protected header exactly as sent (base64url), for the AAD.
    protected_b64: String,
    shared: Header,
    recipients: Vec<(Header, Vec<u8>)>,
    aad: Option<String>,
    iv: Vec<u8>,
    ciphertext: Vec<u8>,
    tag: Vec<u8>,
}

fn b64(field: &str, s: &str) -> Result<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|e| Error::Malformed(format!("JWE {field}: bad base64url: {e}")))
}

fn parse(bytes: &[u8]) -> Result<Jwe> {
    if bytes.len() > MAX_JWE {
        return Err(Error::Malformed(format!(
            "a JWE of {} bytes (at most {MAX_JWE})",
            bytes.len()
        )));
    }
    let (protected_b64, unprotected, recipients, aad, iv, ciphertext, tag) =
        if bytes.first() == Some(&b'{') {
            let j: JsonJwe = serde_json::from_slice(bytes)
                .map_err(|e| Error::Malformed(format!("JWE is not valid JSON: {e}")))?;
            let recipients = match j.recipients {
                Some(r) => r,
                None => vec![Recipient {
                    header: j.header,
                    encrypted_key: j.encrypted_key,
                }],
            };
            if recipients.len() > MAX_RECIPIENTS {
                return Err(Error::Malformed(format!(
                    "a JWE for {} recipients (at most {MAX_RECIPIENTS})",
                    recipients.len()
                )));
            }
            let recipients = recipients
                .into_iter()
                .map(|r| {
                    let key = r.encrypted_key.as_deref().map(|k| b64("encrypted_key", k));
                    Ok((
                        r.header.unwrap_or_default(),
                        key.transpose()?.unwrap_or_default(),
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            (
                j.protected.unwrap_or_default(),
                j.unprotected.unwrap_or_default(),
                recipients,
                j.aad,
                j.iv.unwrap_or_default(),
                j.ciphertext,
                j.tag.unwrap_or_default(),
            )
        } else {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| Error::Malformed("JWE is neither JSON nor compact".into()))?;
            let parts: Vec<&str> = text.trim().split('.').collect();
            let [p, k, iv, c, t] = parts[..] else {
                return Err(Error::Malformed(format!(
                    "compact JWE has {} parts, not 5",
                    parts.len()
                )));
            };
            let key = b64("encrypted_key", k)?;
            (
                p.to_string(),
                Header::new(),
                vec![(Header::new(), key)],
                None,
                iv.to_string(),
                c.to_string(),
                t.to_string(),
            )
        };
    let mut shared = if protected_b64.is_empty() {
        Header::new()
    } else {
        serde_json::from_slice::<Header>(&b64("protected header", &protected_b64)?)
            .map_err(|e| Error::Malformed(format!("JWE protected header: {e}")))?
    };
    check_header("protected header", &shared)?;
    check_header("unprotected header", &unprotected)?;
    for (k, v) in unprotected {
        if shared.insert(k.clone(), v).is_some() {
            return Err(Error::Malformed(format!("JWE header {k:?} given twice")));
        }
    }
    if recipients.is_empty() {
        return Err(Error::Malformed("JWE has no recipients".into()));
    }
    for (h, _) in &recipients {
        check_header("recipient header", h)?;
        if let Some(k) = h.keys().find(|k| shared.contains_key(*k)) {
            return Err(Error::Malformed(format!("JWE header {k:?} given twice")));
        }
    }
    Ok(Jwe {
        protected_b64,
        shared,
        recipients,
        aad,
        iv: b64("iv", &iv)?,
        ciphertext: b64("ciphertext", &ciphertext)?,
        tag: b64("tag", &tag)?,
    })
}

/// Decrypts `bytes` (one JWE) with any key of `ring`. `Ok(None)` when no key opens any
/// recipient; what each try ran into is added to `attempts`. Every recipient counts as an
/// attempt, tried or not, so that the work stays bounded whatever the JWE holds; `cancel`
/// stops it between attempts.
pub(crate) fn decrypt(
    bytes: &[u8],
    ring: &KeyRing,
    attempts: &mut Vec<String>,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<Option<Vec<u8>>> {
    let jwe = parse(bytes)?;
    // Each recipient adds at least one line to `attempts` (or opens the key).
    let spend = |attempts: &[String]| -> Result<()> {
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::Malformed("unwrapping cancelled".into()));
        }
        if attempts.len() >= MAX_ATTEMPTS {
            return Err(Error::Malformed(format!(
                "more than {} key unwrapping attempts for one layer: too many recipients",
                MAX_ATTEMPTS
            )));
        }
        Ok(())
    };
    for (i, (own, encrypted_key)) in jwe.recipients.iter().enumerate() {
        spend(attempts)?;
        let header = Merged {
            own,
            shared: &jwe.shared,
        };
        let (alg, enc) = (header.text("alg"), header.text("enc"));
        if header.contains("zip") || header.contains("crit") {
            attempts.push(format!(
                "recipient {i}: uses \"zip\" or \"crit\", which berth does not implement"
            ));
            continue;
        }
        let Some((aead_alg, cek_len)) = content_cipher(enc) else {
            attempts.push(format!(
                "recipient {i}: content encryption {:?} is not supported",
                clip(enc)
            ));
            continue;
        };
        let mut tried = false;
        for key in ring.keys() {
            let cek = match (alg, &key.key) {
                ("RSA-OAEP", PrivateKey::Rsa(k, _)) => rsa(k, false, encrypted_key),
                ("RSA-OAEP-256", PrivateKey::Rsa(k, _)) => rsa(k, true, encrypted_key),
                (a, PrivateKey::Ec(k)) if a.starts_with("ECDH-ES") => {
                    ecdh(k, alg, enc, cek_len, &header, encrypted_key)
                }
                _ => continue,
            };
            spend(attempts)?;
            tried = true;
            let opened = cek.and_then(|cek| {
                if cek.len() != cek_len {
                    return Err(format!("unwrapped a {}-byte key for {enc}", cek.len()));
                }
                open(&jwe, aead_alg, &cek)
            });
            match opened {
                Ok(plain) => return Ok(Some(plain)),
                Err(e) => attempts.push(format!("{}: recipient {i} ({alg}): {e}", key.source)),
            }
        }
        if !tried {
            let wants = if alg.starts_with("RSA") {
                "an RSA key"
            } else if alg.starts_with("ECDH") {
                "an EC key"
            } else {
                "a key algorithm berth does not implement"
            };
            attempts.push(format!(
                "recipient {i} ({}) needs {wants}; the node holds {}",
                clip(alg),
                ring.describe().join(", ")
            ));
        }
    }
    Ok(None)
}

/// At most 40 bytes of a name from the JWE, for messages.
fn clip(s: &str) -> &str {
    let mut end = s.len().min(40);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn content_cipher(enc: &str) -> Option<(&'static aead::Algorithm, usize)> {
    match enc {
        "A128GCM" => Some((&aead::AES_128_GCM, 16)),
        "A192GCM" => Some((&aead::AES_192_GCM, 24)),
        "A256GCM" => Some((&aead::AES_256_GCM, 32)),
        _ => None,
    }
}

fn rsa(
    key: &OaepPrivateDecryptingKey,
    sha256: bool,
    wrapped: &[u8],
) -> std::result::Result<Vec<u8>, String> {
    let alg = if sha256 {
        &OAEP_SHA256_MGF1SHA256
    } else {
        &OAEP_SHA1_MGF1SHA1
    };
    let mut out = vec![0; key.min_output_size()];
    // One message for every failure: which step failed is not the sender's business.
    let n = key
        .decrypt(alg, wrapped, &mut out, None)
        .map_err(|_| "key does not match".to_string())?
        .len();
    out.truncate(n);
    Ok(out)
}

fn ecdh(
    key: &agreement::PrivateKey,
    alg: &str,
    enc: &str,
    cek_len: usize,
    header: &Merged<'_>,
    wrapped: &[u8],
) -> std::result::Result<Vec<u8>, String> {
    let (kek_len, wrap) = match alg {
        "ECDH-ES" => (cek_len, None),
        "ECDH-ES+A128KW" => (16, Some(&AES_128)),
        "ECDH-ES+A256KW" => (32, Some(&AES_256)),
        other => return Err(format!("key algorithm {other:?} is not supported")),
    };
    let epk = header
        .get("epk")
        .and_then(Value::as_object)
        .ok_or("no \"epk\" header")?;
    let field = |name: &str| epk.get(name).and_then(Value::as_str).map(str::to_string);
    if field("kty").as_deref() != Some("EC") {
        return Err("\"epk\" is not an EC key".into());
    }
    let curve = keys::curve(field("crv").as_deref())?;
    if curve != key.algorithm() {
        return Err(format!(
            "sender's key is on {}, this key on {}",
            keys::curve_name(curve),
            keys::curve_name(key.algorithm())
        ));
    }
    let len = keys::scalar_len(curve);
    let mut point = vec![4u8];
    for c in ["x", "y"] {
        let v = keys::b64url(c, &field(c))?;
        if v.len() > len {
            return Err(format!("\"epk\" {c:?} is too long"));
        }
        point.extend(std::iter::repeat_n(0, len - v.len()));
        point.extend_from_slice(&v);
    }
    let party = |name: &str| -> std::result::Result<Vec<u8>, String> {
        match header.get(name).and_then(Value::as_str) {
            Some(s) => keys::b64url(name, &Some(s.to_string())),
            None => Ok(vec![]),
        }
    };
    let (apu, apv) = (party("apu")?, party("apv")?);
    // For direct agreement the derived key is the content key, named by "enc".
    let algorithm_id = if wrap.is_none() { enc } else { alg };
    let kek = agreement::agree(
        key,
        UnparsedPublicKey::new(curve, &point),
        "the sender's ephemeral key is not a point on the curve".to_string(),
        |z| Ok(concat_kdf(z, algorithm_id, &apu, &apv, kek_len)),
    )?;
    let Some(cipher) = wrap else {
        return Ok(kek);
    };
    let kek = KeyEncryptionKey::new(cipher, &kek).map_err(|_| "bad key-wrapping key")?;
    let mut out = vec![0; wrapped.len()];
    let n = kek
        .unwrap(wrapped, &mut out)
        .map_err(|_| "key does not match".to_string())?
        .len();
    out.truncate(n);
    Ok(out)
}

/// The Concat KDF of NIST SP 800-56A with SHA-256, as RFC 7518 §4.6.2 fixes its inputs.
fn concat_kdf(z: &[u8], algorithm_id: &str, apu: &[u8], apv: &[u8], len: usize) -> Vec<u8> {
    let field = |v: &[u8]| {
        let mut f = (v.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(v);
        f
    };
    let mut other = field(algorithm_id.as_bytes());
    other.extend(field(apu));
    other.extend(field(apv));
    other.extend_from_slice(&((len * 8) as u32).to_be_bytes());
    let mut out = Vec::with_capacity(len + 32);
    let mut counter = 1u32;
    while out.len() < len {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(&counter.to_be_bytes());
        ctx.update(z);
        ctx.update(&other);
        out.extend_from_slice(ctx.finish().as_ref());
        counter += 1;
    }
    out.truncate(len);
    out
}

fn open(
    jwe: &Jwe,
    alg: &'static aead::Algorithm,
    cek: &[u8],
) -> std::result::Result<Vec<u8>, String> {
    let key = LessSafeKey::new(UnboundKey::new(alg, cek).map_err(|_| "bad content key")?);
    let nonce = Nonce::try_assume_unique_for_key(&jwe.iv).map_err(|_| "bad \"iv\" length")?;
    let mut aad = jwe.protected_b64.clone().into_bytes();
    if let Some(extra) = &jwe.aad {
        aad.push(b'.');
        aad.extend_from_slice(extra.as_bytes());
    }
    let mut buf = jwe.ciphertext.clone();
    buf.extend_from_slice(&jwe.tag);
    let n = key
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .map_err(|_| "content does not authenticate under the unwrapped key".to_string())?
        .len();
    buf.truncate(n);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7518 Appendix C: ECDH-ES with P-256, A128GCM, apu "Alice", apv "Bob".
    #[test]
    fn concat_kdf_matches_rfc7518_appendix_c() {
        let z = [
            158, 86, 217, 29, 129, 113, 53, 211, 114, 131, 66, 131, 191, 132, 38, 156, 251, 49,
            110, 163, 218, 128, 106, 72, 246, 218, 167, 121, 140, 254, 144, 196,
        ];
        let k = concat_kdf(&z, "A128GCM", b"Alice", b"Bob", 16);
        assert_eq!(
            k,
            [
                86, 170, 141, 234, 248, 35, 109, 32, 92, 34, 40, 205, 113, 167, 16, 26
            ]
        );
    }
}

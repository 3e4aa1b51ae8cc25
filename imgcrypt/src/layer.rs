//! One encrypted layer: its unwrapped key and options, and the decrypting reader.
//!
//! ocicrypt's `AES_256_CTR_HMAC_SHA256`: AES-256-CTR over the whole blob with a 16-byte
//! initial counter block (the "nonce"), and HMAC-SHA256 keyed with the same symmetric key
//! over the ciphertext. The private options (key, nonce, plain digest) are the JWE payload;
//! the cipher name and the HMAC are the public options.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};

use aws_lc_rs::cipher::{AES_256, DecryptionContext, StreamingDecryptingKey, UnboundCipherKey};
use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::{digest, hmac};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use crate::keys::KeyRing;
use crate::{Error, JWE_ANNOTATION, KEYS_ANNOTATION_PREFIX, PUBOPTS_ANNOTATION, Result, jwe};

const CIPHER: &str = "AES_256_CTR_HMAC_SHA256";
/// Unwrapping is CPU work the image's author chooses the amount of (recipients times the
/// node's keys, an RSA decryption each): bounded, so that an image cannot keep a core busy.
/// ocicrypt writes one JWE per encryption (and one more per added recipient batch).
const MAX_JWES: usize = 16;
const CHUNK: usize = 64 << 10;

/// The JWE payload (Go's `[]byte` fields are standard base64 in JSON, `null` when empty).
#[derive(Deserialize)]
struct PrivateOptions {
    symkey: Option<String>,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    cipheroptions: Option<HashMap<String, Option<String>>>,
}

#[derive(Deserialize, Default)]
struct PublicOptions {
    #[serde(default)]
    cipher: String,
    /// Where ocicrypt up to 1.1 put the HMAC.
    #[serde(default)]
    hmac: Option<String>,
    /// Where later ocicrypt puts it.
    #[serde(default)]
    cipheroptions: Option<HashMap<String, Option<String>>>,
}

fn b64std(what: &str, s: &str) -> Result<Vec<u8>> {
    STANDARD
        .decode(s)
        .map_err(|e| Error::Malformed(format!("{what}: bad base64: {e}")))
}

fn option(opts: &Option<HashMap<String, Option<String>>>, name: &str) -> Option<String> {
    opts.as_ref()?.get(name)?.clone()
}

/// What opens one layer: the unwrapped symmetric key, the nonce, the HMAC the ciphertext must
/// have and the digest the plain blob must have.
#[derive(Clone)]
pub struct LayerKey {
    key: [u8; 32],
    nonce: [u8; 16],
    hmac: Vec<u8>,
    plain_digest: Option<(&'static digest::Algorithm, Vec<u8>, String)>,
}

impl Drop for LayerKey {
    fn drop(&mut self) {
        // Not left in freed memory. Volatile, so that the writes are not optimised away.
        for b in self.key.iter_mut() {
            // SAFETY: `b` is a valid, aligned, exclusive reference into `self.key`.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

impl std::fmt::Debug for LayerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("LayerKey")
            .field("plain_digest", &self.plain_digest.as_ref().map(|d| &d.2))
            .finish_non_exhaustive()
    }
}

impl LayerKey {
    /// Unwraps the key of a layer from its descriptor's annotations with any key of `ring`.
    /// CPU work of a few milliseconds per RSA key tried; no I/O.
    pub fn open(annotations: &BTreeMap<String, String>, ring: &KeyRing) -> Result<LayerKey> {
        Self::open_cancellable(
            annotations,
            ring,
            &std::sync::atomic::AtomicBool::new(false),
        )
    }

    /// [`LayerKey::open`], stopping between key attempts once `cancel` is set (its caller
    /// went away).
    pub fn open_cancellable(
        annotations: &BTreeMap<String, String>,
        ring: &KeyRing,
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<LayerKey> {
        let Some(wrapped) = annotations.get(JWE_ANNOTATION).filter(|s| !s.is_empty()) else {
            let schemes: Vec<&str> = annotations
                .keys()
                .filter_map(|k| k.strip_prefix(KEYS_ANNOTATION_PREFIX))
                .collect();
            if schemes.is_empty() {
                return Err(Error::Malformed(
                    "an encrypted layer without wrapped keys (no org.opencontainers.image.enc.keys.* annotation)".into(),
                ));
            }
            return Err(Error::UnsupportedScheme(schemes.join(", ")));
        };
        let public = match annotations.get(PUBOPTS_ANNOTATION) {
            Some(p) => serde_json::from_slice::<PublicOptions>(&b64std(PUBOPTS_ANNOTATION, p)?)
                .map_err(|e| Error::Malformed(format!("{PUBOPTS_ANNOTATION}: {e}")))?,
            None => PublicOptions::default(),
        };
        if public.cipher != CIPHER {
            return Err(Error::Malformed(format!(
                "layer cipher {:?} is not supported (only {CIPHER})",
                public.cipher
            )));
        }
        let mut attempts = vec![];
        let parts: Vec<&str> = wrapped.split(',').collect();
        if parts.len() > MAX_JWES {
            return Err(Error::Malformed(format!(
                "{} wrapped keys for one layer (at most {MAX_JWES})",
                parts.len()
            )));
        }
        for part in parts {
            let jwe = b64std(JWE_ANNOTATION, part)?;
            if let Some(payload) = jwe::decrypt(&jwe, ring, &mut attempts, cancel)? {
                let private: PrivateOptions = serde_json::from_slice(&payload)
                    .map_err(|e| Error::Malformed(format!("unwrapped layer options: {e}")))?;
                return Self::from_options(private, public);
            }
        }
        Err(Error::NoKey {
            keys: ring.len(),
            attempts,
        })
    }

    fn from_options(private: PrivateOptions, public: PublicOptions) -> Result<LayerKey> {
        let key: [u8; 32] = b64std("symkey", private.symkey.as_deref().unwrap_or(""))?
            .try_into()
            .map_err(|_| Error::Malformed("the layer key is not 32 bytes".into()))?;
        let nonce = option(&private.cipheroptions, "nonce")
            .or_else(|| option(&public.cipheroptions, "nonce"))
            .ok_or_else(|| Error::Malformed("no nonce in the layer options".into()))?;
        let nonce: [u8; 16] = b64std("nonce", &nonce)?
            .try_into()
            .map_err(|_| Error::Malformed("the nonce is not 16 bytes".into()))?;
        let hmac = option(&public.cipheroptions, "hmac")
            .or(public.hmac)
            .or_else(|| option(&private.cipheroptions, "hmac"))
            .ok_or_else(|| Error::Malformed("no HMAC in the layer options".into()))?;
        let hmac = b64std("hmac", &hmac)?;
        if hmac.len() != 32 {
            return Err(Error::Malformed("the HMAC is not 32 bytes".into()));
        }
        let plain_digest = match private.digest.split_once(':') {
            None if private.digest.is_empty() => None,
            Some(("sha256", hex)) => Some((&digest::SHA256, hex)),
            Some(("sha512", hex)) => Some((&digest::SHA512, hex)),
            _ => {
                return Err(Error::Malformed(format!(
                    "unsupported plain layer digest {:?}",
                    private.digest
                )));
            }
        }
        .map(|(alg, hex)| {
            let bytes = unhex(hex).ok_or_else(|| {
                Error::Malformed(format!("bad plain layer digest {:?}", private.digest))
            })?;
            Ok::<_, Error>((alg, bytes, private.digest.clone()))
        })
        .transpose()?;
        Ok(LayerKey {
            key,
            nonce,
            hmac,
            plain_digest,
        })
    }

    /// The digest the decrypted blob must have (`sha256:…`), when the options name one.
    pub fn plain_digest(&self) -> Option<&str> {
        self.plain_digest.as_ref().map(|d| d.2.as_str())
    }

    /// A reader of the plain blob over `ciphertext`.
    pub fn decrypt<R: Read>(&self, ciphertext: R) -> Decrypt<R> {
        Decrypt::new(ciphertext, self)
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The ciphertext is not what was encrypted: its HMAC or the plain digest does not match.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Tampered(pub String);

/// Decrypts a layer as it is read. At the end of the ciphertext, before reporting end of
/// file, it checks the HMAC and then the plain digest; a mismatch is an `InvalidData` error
/// whose inner error is [`Tampered`]. Until then the bytes it returns are unauthenticated:
/// callers must not commit anything before the end.
pub struct Decrypt<R> {
    inner: R,
    ctr: Option<StreamingDecryptingKey>,
    mac: hmac::Context,
    expected_mac: Vec<u8>,
    plain: Option<(digest::Context, Vec<u8>, String)>,
    input: Vec<u8>,
    output: Vec<u8>,
    pos: usize,
    len: usize,
    verdict: Option<std::result::Result<(), Tampered>>,
}

impl<R: Read> Decrypt<R> {
    fn new(inner: R, key: &LayerKey) -> Self {
        let ctr = UnboundCipherKey::new(&AES_256, &key.key)
            .and_then(|k| {
                StreamingDecryptingKey::ctr(k, DecryptionContext::Iv128(key.nonce.into()))
            })
            .ok();
        Decrypt {
            inner,
            ctr,
            mac: hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, &key.key)),
            expected_mac: key.hmac.clone(),
            plain: key
                .plain_digest
                .as_ref()
                .map(|(alg, want, name)| (digest::Context::new(alg), want.clone(), name.clone())),
            input: vec![0; CHUNK],
            output: vec![0; CHUNK + 16],
            pos: 0,
            len: 0,
            verdict: None,
        }
    }

    /// Reads the rest of the ciphertext and returns the verdict: `Ok` when the whole blob
    /// authenticated, `Err` with the I/O error otherwise (its inner error is [`Tampered`]
    /// when the content, not the reading, is at fault).
    pub fn finish(&mut self) -> io::Result<()> {
        let mut sink = [0u8; 8192];
        while self.read(&mut sink)? > 0 {}
        Ok(())
    }

    fn conclude(&mut self) -> std::result::Result<(), Tampered> {
        let mac = std::mem::replace(
            &mut self.mac,
            hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, &[])),
        )
        .sign();
        if verify_slices_are_equal(mac.as_ref(), &self.expected_mac).is_err() {
            return Err(Tampered(
                "HMAC mismatch: the encrypted layer was altered or truncated".into(),
            ));
        }
        if let Some((ctx, want, name)) = self.plain.take() {
            let got = ctx.finish();
            if got.as_ref() != want.as_slice() {
                return Err(Tampered(format!(
                    "the decrypted layer does not have the digest {name} its key promises"
                )));
            }
        }
        Ok(())
    }
}

fn tampered(t: &Tampered) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, t.clone())
}

impl<R: Read> Read for Decrypt<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(v) = &self.verdict {
            return v.as_ref().map(|_| 0).map_err(tampered);
        }
        while self.pos == self.len {
            let n = match self.inner.read(&mut self.input) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                let v = self.conclude();
                self.verdict = Some(v.clone());
                return v.map(|_| 0).map_err(|t| tampered(&t));
            }
            let ctr = self
                .ctr
                .as_mut()
                .ok_or_else(|| io::Error::other("AES-256-CTR is unavailable"))?;
            self.mac.update(&self.input[..n]);
            let written = ctr
                .update(&self.input[..n], &mut self.output)
                .map_err(|_| io::Error::other("AES-256-CTR failed"))?
                .written()
                .len();
            if let Some((ctx, _, _)) = &mut self.plain {
                ctx.update(&self.output[..written]);
            }
            self.pos = 0;
            self.len = written;
        }
        let n = buf.len().min(self.len - self.pos);
        buf[..n].copy_from_slice(&self.output[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

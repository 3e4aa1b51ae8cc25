//! Encrypted OCI image layers, as ocicrypt (containerd's imgcrypt, CRI-O, skopeo) writes them.
//!
//! An encrypted layer's blob is its ordinary (compressed) blob encrypted with AES-256 in CTR
//! mode under a random per-layer key, with an HMAC-SHA256 of the ciphertext. The key, the
//! nonce and the plain blob's digest travel in the layer descriptor's annotations, wrapped as
//! a JWE for each recipient's public key; the cipher name and the HMAC travel in the clear.
//!
//! This crate holds the node side: [`KeyRing`] reads the node's private keys from a
//! directory, [`LayerKey::open`] unwraps a layer's key with any of them, and [`Decrypt`]
//! decrypts a layer as it streams, checking the HMAC and the plain digest at its end. Nothing
//! here touches the network or the image store.
#![warn(missing_docs)]

mod der;
mod jwe;
mod keys;
mod layer;

pub use keys::{KeyRing, Skipped};
pub use layer::{Decrypt, LayerKey, Tampered};

/// The annotation holding a layer's JWE-wrapped keys (comma-separated, base64).
pub const JWE_ANNOTATION: &str = "org.opencontainers.image.enc.keys.jwe";
/// The annotation holding the layer's public cipher options (base64 JSON).
pub const PUBOPTS_ANNOTATION: &str = "org.opencontainers.image.enc.pubopts";
/// The prefix shared by every key-wrapping scheme's annotation.
pub const KEYS_ANNOTATION_PREFIX: &str = "org.opencontainers.image.enc.keys.";
/// The suffix ocicrypt appends to a layer's media type.
pub const ENCRYPTED_SUFFIX: &str = "+encrypted";

/// Whether a layer with this media type is encrypted.
pub fn is_encrypted(media_type: &str) -> bool {
    media_type.ends_with(ENCRYPTED_SUFFIX)
}

/// Why a layer's key could not be unwrapped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// None of the node's keys opens any of the layer's recipients. `attempts` says, per key
    /// and recipient, why not.
    #[error("{}", no_key_message(.keys, .attempts))]
    NoKey {
        /// How many usable private keys were tried.
        keys: usize,
        /// What each attempt ran into.
        attempts: Vec<String>,
    },
    /// The layer is wrapped only for schemes berth does not implement (pgp, pkcs7, pkcs11, a
    /// key provider).
    #[error("layer keys are wrapped only for {0}; berth unwraps jwe only")]
    UnsupportedScheme(String),
    /// The annotations or the unwrapped options are not what ocicrypt writes.
    #[error("{0}")]
    Malformed(String),
}

fn no_key_message(keys: &usize, attempts: &[String]) -> String {
    if *keys == 0 {
        return "the node holds no usable private key".into();
    }
    let mut s = format!("none of the node's {keys} private key(s) opens the layer key");
    // A handful of reasons says what is wrong; a hundred only buries it.
    for a in attempts.iter().take(6) {
        s.push_str("; ");
        s.push_str(a);
    }
    if attempts.len() > 6 {
        s.push_str(&format!("; and {} more", attempts.len() - 6));
    }
    s
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests;

//! Encryption annotations come from the image: a JWE whose protected header and recipients'
//! headers are any JSON is unwrapped or refused quickly (run with `-timeout=1`), whatever
//! the number of members or recipients.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use base64::Engine as _;

fn ring() -> &'static berth_imgcrypt::KeyRing {
    static RING: OnceLock<berth_imgcrypt::KeyRing> = OnceLock::new();
    RING.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../imgcrypt/testdata");
        for k in ["ec.pem", "rsa.pem"] {
            std::fs::copy(data.join(k), dir.path().join(k)).expect("copy key");
        }
        berth_imgcrypt::KeyRing::load(dir.path())
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Parts separated by 0xff: the protected header, then each recipient's header; the
    // first byte repeats the last recipient, so that a short input can ask for many.
    let Some((&times, rest)) = data.split_first() else { return };
    let mut parts = rest.split(|b| *b == 0xff);
    let protected = parts.next().unwrap_or_default();
    let header = |p: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(p)
            .unwrap_or_else(|_| serde_json::json!({"alg": String::from_utf8_lossy(p)}))
    };
    let mut recipients: Vec<serde_json::Value> = parts
        .map(|p| serde_json::json!({"header": header(p), "encrypted_key": "AAAA"}))
        .collect();
    if let Some(last) = recipients.last().cloned() {
        recipients.extend(std::iter::repeat_n(last, usize::from(times) * 4));
    }
    let b64u = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwe = serde_json::json!({
        "protected": b64u.encode(protected),
        "recipients": recipients,
        "iv": "AAAAAAAAAAAAAAAA", "ciphertext": "AAAA", "tag": "AAAAAAAAAAAAAAAAAAAAAA",
    });
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut a = BTreeMap::new();
    a.insert(
        berth_imgcrypt::JWE_ANNOTATION.to_string(),
        b64.encode(serde_json::to_vec(&jwe).expect("json")),
    );
    a.insert(
        berth_imgcrypt::PUBOPTS_ANNOTATION.to_string(),
        b64.encode(br#"{"cipher":"AES_256_CTR_HMAC_SHA256","hmac":"Z6R2jgZZFBZTKlbORJwTNjF98ihO/dX0zndIcLpR14w=","cipheroptions":{}}"#),
    );
    let _ = berth_imgcrypt::LayerKey::open(&a, ring());
});

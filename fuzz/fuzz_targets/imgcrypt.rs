//! An encrypted layer's annotations come from the registry: any JWE (JSON or compact) and any
//! public options must unwrap or be refused, never panic, and the work stays bounded.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

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
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    // The first line is the public options, the rest the JWE.
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(0);
    let (pubopts, jwe) = data.split_at(split);
    let mut a = BTreeMap::new();
    a.insert(
        berth_imgcrypt::JWE_ANNOTATION.to_string(),
        b64.encode(jwe.strip_prefix(b"\n").unwrap_or(jwe)),
    );
    let pubopts: &[u8] = if pubopts.is_empty() {
        br#"{"cipher":"AES_256_CTR_HMAC_SHA256","hmac":"Z6R2jgZZFBZTKlbORJwTNjF98ihO/dX0zndIcLpR14w=","cipheroptions":{}}"#
    } else {
        pubopts
    };
    a.insert(berth_imgcrypt::PUBOPTS_ANNOTATION.to_string(), b64.encode(pubopts));
    if let Ok(key) = berth_imgcrypt::LayerKey::open(&a, ring()) {
        let mut out = Vec::new();
        let _ = std::io::Read::read_to_end(&mut key.decrypt(jwe), &mut out);
    }
});

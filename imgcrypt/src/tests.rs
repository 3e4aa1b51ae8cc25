//! Against layers skopeo encrypted (see `testdata/README.md`).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::*;

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

fn annotations(name: &str) -> BTreeMap<String, String> {
    serde_json::from_slice(&std::fs::read(testdata(&format!("{name}.annotations.json"))).unwrap())
        .unwrap()
}

/// A ring holding only the named files of testdata.
fn ring(files: &[&str]) -> KeyRing {
    let dir = tempfile::tempdir().unwrap();
    for f in files {
        std::fs::copy(testdata(f), dir.path().join(f)).unwrap();
    }
    KeyRing::load(dir.path())
}

fn decrypt_all(key: &LayerKey, blob: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = vec![];
    key.decrypt(blob).read_to_end(&mut out)?;
    Ok(out)
}

fn tampered(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<Tampered>())
}

#[test]
fn every_key_form_opens_the_layer_skopeo_encrypted() {
    let plain = std::fs::read(testdata("plain.layer")).unwrap();
    for (layer, key) in [
        ("two-recipients", "rsa.pem"),
        ("two-recipients", "rsa-pkcs1.pem"),
        ("two-recipients", "rsa.jwk"),
        ("two-recipients", "ec.pem"),
        ("two-recipients", "ec.jwk"),
        ("one-recipient", "ec.pem"),
        ("one-recipient", "ec.jwk"),
    ] {
        let ring = ring(&[key]);
        assert_eq!(ring.len(), 1, "{key}: {:?}", ring.skipped());
        let k = LayerKey::open(&annotations(layer), &ring)
            .unwrap_or_else(|e| panic!("{layer} with {key}: {e}"));
        let blob = std::fs::read(testdata(&format!("{layer}.layer"))).unwrap();
        assert_eq!(decrypt_all(&k, &blob).unwrap(), plain, "{layer} with {key}");
        assert_eq!(
            k.plain_digest(),
            Some("sha256:ba84b1824c9836c5e4b75f63112c26edb3c4aa9c2b729b883dc68bd4848712a5")
        );
    }
}

#[test]
fn a_key_the_layer_was_not_encrypted_for_is_refused_with_reasons() {
    let ring = ring(&["other-rsa.pem"]);
    let err = LayerKey::open(&annotations("two-recipients"), &ring).unwrap_err();
    let Error::NoKey { keys, attempts } = &err else {
        panic!("{err}");
    };
    assert_eq!(*keys, 1);
    assert!(
        attempts
            .iter()
            .any(|a| a.contains("other-rsa.pem") && a.contains("RSA-OAEP")),
        "{attempts:?}"
    );
    // The EC recipient is not for an RSA key, and says so.
    assert!(
        attempts
            .iter()
            .any(|a| a.contains("needs an EC key; the node holds other-rsa.pem: RSA 2048")),
        "{attempts:?}"
    );

    let err = LayerKey::open(
        &annotations("one-recipient"),
        &KeyRing::load(Path::new("/nonexistent")),
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "the node holds no usable private key");
}

#[test]
fn files_that_are_not_usable_private_keys_are_listed_with_why() {
    let ring = ring(&[
        "rsa.pub.pem",
        "rsa-password.pem",
        "ec-with-params.pem",
        "plain.layer",
    ]);
    assert_eq!(ring.describe(), ["ec-with-params.pem: P-256"]);
    let why: BTreeMap<String, String> = ring
        .skipped()
        .iter()
        .map(|s| {
            (
                s.path.file_name().unwrap().to_string_lossy().into(),
                s.reason.clone(),
            )
        })
        .collect();
    assert!(
        why["rsa.pub.pem"].contains("needs the private key"),
        "{why:?}"
    );
    assert!(
        why["rsa-password.pem"].contains("password-protected"),
        "{why:?}"
    );
    assert!(
        why["plain.layer"].contains("neither PEM, JWK nor"),
        "{why:?}"
    );
}

#[test]
fn altered_or_truncated_ciphertext_fails_at_its_end() {
    let ring = ring(&["rsa.pem"]);
    let k = LayerKey::open(&annotations("two-recipients"), &ring).unwrap();
    let blob = std::fs::read(testdata("two-recipients.layer")).unwrap();

    let mut altered = blob.clone();
    altered[40] ^= 1;
    let e = decrypt_all(&k, &altered).unwrap_err();
    assert!(tampered(&e), "{e}");
    assert!(e.to_string().contains("HMAC mismatch"), "{e}");

    let e = decrypt_all(&k, &blob[..blob.len() - 7]).unwrap_err();
    assert!(tampered(&e), "{e}");

    // The verdict stays: reading on does not turn it into end of file.
    let mut d = k.decrypt(&altered[..]);
    assert!(d.finish().is_err());
    assert!(d.read(&mut [0; 8]).is_err());
}

#[test]
fn a_key_whose_plain_digest_disagrees_is_refused() {
    // An attacker who can rewrite the annotations but not the JWE cannot swap the layer:
    // recomputing the HMAC needs the key.
    let ring = ring(&["ec.pem"]);
    let one = LayerKey::open(&annotations("one-recipient"), &ring).unwrap();
    let blob = std::fs::read(testdata("two-recipients.layer")).unwrap();
    let e = decrypt_all(&one, &blob).unwrap_err();
    assert!(tampered(&e), "{e}");
}

#[test]
fn schemes_berth_does_not_unwrap_are_named() {
    let mut a = annotations("one-recipient");
    let jwe = a.remove(JWE_ANNOTATION).unwrap();
    a.insert("org.opencontainers.image.enc.keys.pgp".into(), jwe);
    let err = LayerKey::open(&a, &ring(&["ec.pem"])).unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedScheme(ref s) if s == "pgp"),
        "{err}"
    );

    let mut a = annotations("one-recipient");
    a.insert(PUBOPTS_ANNOTATION.into(), "bm90IGpzb24=".into());
    assert!(matches!(
        LayerKey::open(&a, &ring(&["ec.pem"])),
        Err(Error::Malformed(_))
    ));
}

#[test]
fn the_work_an_image_can_ask_for_is_bounded() {
    let ring = ring(&["other-rsa.pem", "stranger.jwk"]);
    let mut a = annotations("two-recipients");
    let jwe = a[JWE_ANNOTATION].clone();
    a.insert(JWE_ANNOTATION.into(), vec![jwe.as_str(); 17].join(","));
    let err = LayerKey::open(&a, &ring).unwrap_err();
    assert!(err.to_string().contains("17 wrapped keys"), "{err}");

    // One JWE with 300 recipients none of the node's keys opens.
    let json = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &jwe).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let first = v["recipients"][0].clone();
    v["recipients"] = serde_json::Value::Array(vec![first.clone(); 300]);
    let b64 = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        serde_json::to_vec(&v).unwrap(),
    );
    a.insert(JWE_ANNOTATION.into(), b64);
    let err = LayerKey::open(&a, &ring).unwrap_err();
    assert!(
        err.to_string().contains("300 recipients (at most 64)"),
        "{err}"
    );

    // Sixteen JWEs of 64 recipients each: the attempts across them are bounded.
    v["recipients"] = serde_json::Value::Array(vec![first.clone(); 64]);
    let one = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        serde_json::to_vec(&v).unwrap(),
    );
    a.insert(JWE_ANNOTATION.into(), vec![one.as_str(); 16].join(","));
    let started = std::time::Instant::now();
    let err = LayerKey::open(&a, &ring).unwrap_err();
    assert!(err.to_string().contains("too many recipients"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    // A protected header of 100,000 members shared by 14,000 recipients (issue 24: a core
    // for 92 s): refused at once, before any recipient is looked at.
    let members: serde_json::Map<String, serde_json::Value> = (0..100_000)
        .map(|i| (format!("k{i}"), serde_json::Value::from(i)))
        .collect();
    v["protected"] = serde_json::Value::String(base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        serde_json::to_vec(&members).unwrap(),
    ));
    v["recipients"] = serde_json::Value::Array(vec![first; 14_000]);
    let big = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        serde_json::to_vec(&v).unwrap(),
    );
    a.insert(JWE_ANNOTATION.into(), big);
    let started = std::time::Instant::now();
    let err = LayerKey::open(&a, &ring).unwrap_err();
    assert!(matches!(err, Error::Malformed(_)), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );

    // A caller that went away stops the work.
    let cancel = std::sync::atomic::AtomicBool::new(true);
    let a = annotations("two-recipients");
    let err = LayerKey::open_cancellable(&a, &ring, &cancel).unwrap_err();
    assert!(err.to_string().contains("cancelled"), "{err}");
}

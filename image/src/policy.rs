//! Which images this node trusts: a signature policy in the format of containers/image's
//! `policy.json` (what CRI-O and podman read), so that operators reuse what they have.
//!
//! ```json
//! {"default": [{"type": "reject"}],
//!  "transports": {"docker": {
//!     "registry.example.com/team": [{"type": "sigstoreSigned", "keyPath": "/etc/berth/cosign.pub",
//!                                    "signedIdentity": {"type": "matchRepository"}}],
//!     "registry.example.com/public": [{"type": "insecureAcceptAnything"}]}}}
//! ```
//!
//! A scope is matched against the image as the pod names it, before any mirror: the most
//! specific wins (`host/repo:tag` or `host/repo@digest`, then `host/repo`, then each parent
//! namespace, then `host`, then `*.domain` wildcards), else the transport's `""` scope, else
//! `default`. Every requirement of the list must hold. Requirements: `insecureAcceptAnything`,
//! `reject`, and `sigstoreSigned` with public keys (`keyPath`, `keyPaths`, `keyData`,
//! `keyDatas`; any one verifying suffices) and a `signedIdentity`. Verification is offline:
//! `fulcio` (keyless identities) and `rekorPublicKeyPath` (the transparency log) are refused
//! at load, never silently ignored; `signedBy` (GPG) too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::reference::{Digest, Reference};

/// The largest policy file, key file and signature payload berth reads.
const MAX_POLICY: u64 = 1 << 20;
const MAX_KEY: u64 = 64 << 10;
/// The largest simple-signing payload berth parses (cosign's are a few hundred bytes).
pub const MAX_PAYLOAD: usize = 64 << 10;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    default: Vec<RawRequirement>,
    #[serde(default)]
    transports: BTreeMap<String, BTreeMap<String, Vec<RawRequirement>>>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
enum RawRequirement {
    #[serde(rename = "insecureAcceptAnything")]
    AcceptAnything,
    #[serde(rename = "reject")]
    Reject,
    #[serde(rename = "sigstoreSigned", rename_all = "camelCase")]
    Sigstore {
        key_path: Option<PathBuf>,
        key_paths: Option<Vec<PathBuf>>,
        key_data: Option<String>,
        key_datas: Option<Vec<String>>,
        fulcio: Option<serde_json::Value>,
        rekor_public_key_path: Option<PathBuf>,
        rekor_public_key_data: Option<String>,
        signed_identity: Option<RawIdentity>,
    },
    /// GPG simple signing: recognised, to be refused by name.
    #[serde(rename = "signedBy", rename_all = "camelCase")]
    SignedBy {
        #[serde(rename = "keyType")]
        _key_type: Option<String>,
        #[serde(rename = "keyPath")]
        _key_path: Option<String>,
        #[serde(rename = "keyPaths")]
        _key_paths: Option<Vec<String>>,
        #[serde(rename = "keyData")]
        _key_data: Option<String>,
        #[serde(rename = "signedIdentity")]
        _signed_identity: Option<serde_json::Value>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum RawIdentity {
    MatchExact,
    MatchRepoDigestOrExact,
    MatchRepository,
    ExactReference {
        #[serde(rename = "dockerReference")]
        docker_reference: String,
    },
    ExactRepository {
        #[serde(rename = "dockerRepository")]
        docker_repository: String,
    },
}

/// Which identity a signature must claim for an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The image's reference exactly (repository and tag or digest).
    Exact,
    /// The repository, when the image is named by digest; else exactly.
    RepoDigestOrExact,
    /// The repository.
    Repository,
    /// This reference.
    ExactReference(String),
    /// This repository.
    ExactRepository(String),
}

/// A public key a signature may be made with.
#[derive(Debug, Clone)]
pub struct PublicKey {
    /// Where it came from (a path, or "keyData #n"), for messages.
    pub name: String,
    alg: &'static dyn aws_lc_rs::signature::VerificationAlgorithm,
    /// What the algorithm verifies against: an EC point, an RSA public key, Ed25519 bytes.
    key: Vec<u8>,
}

/// One requirement of a scope.
#[derive(Debug, Clone)]
pub enum Requirement {
    /// Any image (`insecureAcceptAnything`).
    AcceptAnything,
    /// No image (`reject`).
    Reject,
    /// A cosign signature (`sigstoreSigned`).
    Sigstore {
        /// Any one of them must verify a signature.
        keys: Vec<PublicKey>,
        /// What the signature must claim to be of.
        identity: Identity,
    },
}

/// A loaded policy.
#[derive(Debug, Clone)]
pub struct Policy {
    default: Vec<Requirement>,
    /// Scopes of the `docker` transport.
    scopes: BTreeMap<String, Vec<Requirement>>,
}

impl Policy {
    /// Reads the policy at `path` and every key it names.
    pub fn load(path: &Path) -> Result<Policy> {
        let bad = |m: String| Error::Policy(format!("{}: {m}", path.display()));
        let text = read_bounded(path, MAX_POLICY).map_err(|e| bad(e.to_string()))?;
        let file: File = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
        let default = convert(&file.default, "default").map_err(bad)?;
        let mut scopes = BTreeMap::new();
        for (transport, s) in &file.transports {
            if transport != "docker" {
                // Other transports (oci-archive, dir, …) never reach a CRI runtime.
                continue;
            }
            for (scope, reqs) in s {
                let reqs = convert(reqs, &format!("transports.docker[{scope:?}]")).map_err(bad)?;
                scopes.insert(scope.clone(), reqs);
            }
        }
        Ok(Policy { default, scopes })
    }

    /// The scope that applies to `r` (as the pod names it) and its requirements.
    pub fn for_reference(&self, r: &Reference) -> (String, &[Requirement]) {
        for scope in candidate_scopes(r) {
            if let Some(reqs) = self.scopes.get(&scope) {
                return (scope, reqs);
            }
        }
        match self.scopes.get("") {
            Some(reqs) => ("docker".into(), reqs),
            None => ("default".into(), &self.default),
        }
    }

    /// Every scope and a summary of its requirements (berth doctor).
    pub fn describe(&self) -> Vec<(String, String)> {
        let mut out = vec![("default".to_string(), summary(&self.default))];
        out.extend(self.scopes.iter().map(|(s, r)| (s.clone(), summary(r))));
        out
    }
}

fn summary(reqs: &[Requirement]) -> String {
    reqs.iter()
        .map(|r| match r {
            Requirement::AcceptAnything => "insecureAcceptAnything".to_string(),
            Requirement::Reject => "reject".to_string(),
            Requirement::Sigstore { keys, identity } => format!(
                "sigstoreSigned by {} ({identity:?})",
                keys.iter()
                    .map(|k| k.name.as_str())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Scopes from the most specific to the least: the reference itself, its repository, each
/// parent namespace, its host, then `*.` wildcards of the host's parent domains.
fn candidate_scopes(r: &Reference) -> Vec<String> {
    let repo = r.name();
    let mut out = vec![];
    match (r.digest(), r.tag()) {
        (Some(d), _) => out.push(format!("{repo}@{d}")),
        (None, Some(t)) => out.push(format!("{repo}:{t}")),
        _ => {}
    }
    let mut s = repo.as_str();
    out.push(s.to_string());
    while let Some((parent, _)) = s.rsplit_once('/') {
        out.push(parent.to_string());
        s = parent;
    }
    // `*.example.com` matches `registry.example.com` (a host without its port).
    let host = r.domain().split(':').next().unwrap_or_default();
    let mut h = host;
    while let Some((_, rest)) = h.split_once('.') {
        out.push(format!("*.{rest}"));
        h = rest;
    }
    out
}

fn convert(raw: &[RawRequirement], at: &str) -> std::result::Result<Vec<Requirement>, String> {
    if raw.is_empty() {
        return Err(format!(
            "{at}: no requirements (use [{{\"type\": \"reject\"}}] to refuse)"
        ));
    }
    raw.iter()
        .map(|r| match r {
            RawRequirement::AcceptAnything => Ok(Requirement::AcceptAnything),
            RawRequirement::Reject => Ok(Requirement::Reject),
            RawRequirement::SignedBy { .. } => Err(format!(
                "{at}: signedBy (GPG simple signing) is not supported by berth; sign with cosign and use sigstoreSigned"
            )),
            RawRequirement::Sigstore {
                key_path,
                key_paths,
                key_data,
                key_datas,
                fulcio,
                rekor_public_key_path,
                rekor_public_key_data,
                signed_identity,
            } => {
                if fulcio.is_some() {
                    return Err(format!(
                        "{at}: fulcio (keyless signatures) is not supported: berth verifies with public keys only"
                    ));
                }
                if rekor_public_key_path.is_some() || rekor_public_key_data.is_some() {
                    return Err(format!(
                        "{at}: rekorPublicKeyPath/Data (the transparency log) is not supported: berth verifies offline"
                    ));
                }
                let mut keys = vec![];
                for p in key_path.iter().chain(key_paths.iter().flatten()) {
                    let pem = read_bounded(p, MAX_KEY)
                        .map_err(|e| format!("{at}: key {}: {e}", p.display()))?;
                    keys.push(
                        PublicKey::from_pem(&p.display().to_string(), &pem)
                            .map_err(|e| format!("{at}: key {}: {e}", p.display()))?,
                    );
                }
                for (i, d) in key_data.iter().chain(key_datas.iter().flatten()).enumerate() {
                    let name = format!("keyData #{}", i + 1);
                    let pem = base64::engine::general_purpose::STANDARD
                        .decode(d.trim())
                        .map_err(|e| format!("{at}: {name}: not base64: {e}"))?;
                    keys.push(PublicKey::from_pem(&name, &pem).map_err(|e| format!("{at}: {name}: {e}"))?);
                }
                if keys.is_empty() {
                    return Err(format!("{at}: sigstoreSigned names no key (keyPath, keyPaths, keyData or keyDatas)"));
                }
                let identity = match signed_identity {
                    None | Some(RawIdentity::MatchRepoDigestOrExact) => Identity::RepoDigestOrExact,
                    Some(RawIdentity::MatchExact) => Identity::Exact,
                    Some(RawIdentity::MatchRepository) => Identity::Repository,
                    Some(RawIdentity::ExactReference { docker_reference }) => {
                        Identity::ExactReference(docker_reference.clone())
                    }
                    Some(RawIdentity::ExactRepository { docker_repository }) => {
                        Identity::ExactRepository(docker_repository.clone())
                    }
                };
                Ok(Requirement::Sigstore { keys, identity })
            }
        })
        .collect()
}

fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = vec![];
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(std::io::Error::other(format!("larger than {max} bytes")));
    }
    Ok(buf)
}

impl PublicKey {
    /// A `PUBLIC KEY` PEM (SubjectPublicKeyInfo): ECDSA P-256 or P-384 (cosign's keys), RSA
    /// (PKCS #1 v1.5, SHA-256) or Ed25519.
    pub fn from_pem(name: &str, pem: &[u8]) -> std::result::Result<PublicKey, String> {
        let text = std::str::from_utf8(pem).map_err(|_| "not a PEM file".to_string())?;
        let body: String = text
            .lines()
            .skip_while(|l| !l.starts_with("-----BEGIN PUBLIC KEY-----"))
            .skip(1)
            .take_while(|l| !l.starts_with("-----END"))
            .collect();
        if body.is_empty() {
            return Err("no \"PUBLIC KEY\" PEM block".into());
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.trim())
            .map_err(|e| format!("PEM body: {e}"))?;
        let (alg, key) = spki(&der)?;
        Ok(PublicKey {
            name: name.into(),
            alg,
            key,
        })
    }

    /// Whether `sig` is this key's signature over `msg`.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        aws_lc_rs::signature::UnparsedPublicKey::new(self.alg, &self.key)
            .verify(msg, sig)
            .is_ok()
    }
}

/// One DER element: (tag, contents, rest).
fn der(input: &[u8]) -> std::result::Result<(u8, &[u8], &[u8]), String> {
    let bad = || "malformed DER".to_string();
    let (&tag, rest) = input.split_first().ok_or_else(bad)?;
    let (&first, mut rest) = rest.split_first().ok_or_else(bad)?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return Err(bad());
        }
        let mut l = 0usize;
        for &b in &rest[..n] {
            l = (l << 8) | b as usize;
        }
        rest = &rest[n..];
        l
    };
    if rest.len() < len {
        return Err(bad());
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

type Alg = &'static dyn aws_lc_rs::signature::VerificationAlgorithm;

/// The algorithm and key bytes of a SubjectPublicKeyInfo.
fn spki(der_bytes: &[u8]) -> std::result::Result<(Alg, Vec<u8>), String> {
    use aws_lc_rs::signature as sig;
    let (t, seq, _) = der(der_bytes)?;
    let (t2, alg_id, rest) = der(seq)?;
    let (t3, bits, _) = der(rest)?;
    if t != 0x30 || t2 != 0x30 || t3 != 0x03 || bits.first() != Some(&0) {
        return Err("not a SubjectPublicKeyInfo".into());
    }
    let key = bits[1..].to_vec();
    let (t4, oid, params) = der(alg_id)?;
    if t4 != 0x06 {
        return Err("not a SubjectPublicKeyInfo".into());
    }
    let alg: Alg = match oid {
        o if o == OID_EC => {
            let (_, curve, _) = der(params)?;
            if curve == OID_P256 {
                &sig::ECDSA_P256_SHA256_ASN1
            } else if curve == OID_P384 {
                &sig::ECDSA_P384_SHA384_ASN1
            } else {
                return Err("an EC key on a curve other than P-256 or P-384".into());
            }
        }
        o if o == OID_RSA => &sig::RSA_PKCS1_2048_8192_SHA256,
        o if o == OID_ED25519 => &sig::ED25519,
        _ => return Err("a key type other than ECDSA, RSA or Ed25519".into()),
    };
    Ok((alg, key))
}

/// What a cosign signature's payload (containers' "simple signing" format) says.
#[derive(Debug, Deserialize)]
struct Payload {
    critical: Critical,
}

#[derive(Debug, Deserialize)]
struct Critical {
    identity: PayloadIdentity,
    image: PayloadImage,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Deserialize)]
struct PayloadIdentity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Debug, Deserialize)]
struct PayloadImage {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// Checks a verified payload against the image: it must be a container image signature of
/// `digest` claiming an identity `identity` accepts for `r`. Returns why not.
pub fn check_payload(
    payload: &[u8],
    r: &Reference,
    digest: &Digest,
    identity: &Identity,
) -> std::result::Result<(), String> {
    if payload.len() > MAX_PAYLOAD {
        return Err(format!("its payload is over {MAX_PAYLOAD} bytes"));
    }
    let p: Payload =
        serde_json::from_slice(payload).map_err(|e| format!("its payload does not parse: {e}"))?;
    let c = p.critical;
    if c.kind != "cosign container image signature" && c.kind != "atomic container signature" {
        return Err(format!(
            "its payload is a {:?}, not a container image signature",
            c.kind
        ));
    }
    if c.image.docker_manifest_digest != digest.as_str() {
        return Err(format!(
            "it signs manifest {}, not this image's {digest}",
            c.image.docker_manifest_digest
        ));
    }
    let claimed = c.identity.docker_reference;
    let repo = r.name();
    let exact = match (r.digest(), r.tag()) {
        (Some(d), _) => format!("{repo}@{d}"),
        (None, Some(t)) => format!("{repo}:{t}"),
        _ => repo.clone(),
    };
    // A claimed identity is compared normalized, as the image reference is.
    let claimed_norm = Reference::parse(&claimed).ok();
    let claimed_repo = claimed_norm.as_ref().map(|c| c.name()).unwrap_or_default();
    let ok = match identity {
        Identity::Repository => claimed_repo == repo,
        Identity::Exact => {
            claimed_norm.is_some_and(|c| c.to_string() == exact) && claimed.contains([':', '@'])
        }
        Identity::RepoDigestOrExact => {
            if r.digest().is_some() {
                claimed_repo == repo
            } else {
                claimed_norm.is_some_and(|c| c.to_string() == exact) && has_tag_or_digest(&claimed)
            }
        }
        Identity::ExactReference(want) => claimed == *want,
        Identity::ExactRepository(want) => claimed_repo == *want || claimed == *want,
    };
    if !ok {
        return Err(format!(
            "it claims identity {claimed}, which the policy's {identity:?} does not accept for {exact}"
        ));
    }
    Ok(())
}

/// Whether a reference as written names a tag or digest (after its last `/`).
fn has_tag_or_digest(s: &str) -> bool {
    s.contains('@') || s.rsplit('/').next().is_some_and(|last| last.contains(':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn the_most_specific_scope_applies() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("policy.json");
        std::fs::write(
            &p,
            r#"{"default": [{"type": "reject"}], "transports": {"docker": {
                "reg.example.com/team": [{"type": "insecureAcceptAnything"}],
                "reg.example.com/team/app:1": [{"type": "reject"}],
                "*.example.com": [{"type": "insecureAcceptAnything"}]}}}"#,
        )
        .unwrap();
        let pol = Policy::load(&p).unwrap();
        let scope = |s: &str| pol.for_reference(&reference(s)).0;
        assert_eq!(
            scope("reg.example.com/team/app:1"),
            "reg.example.com/team/app:1"
        );
        assert_eq!(scope("reg.example.com/team/app:2"), "reg.example.com/team");
        assert_eq!(scope("reg.example.com/other/app"), "*.example.com");
        assert_eq!(scope("other.io/app"), "default");
    }

    #[test]
    fn what_berth_cannot_check_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("policy.json");
        for (body, says) in [
            (
                r#"{"default": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/x"}]}"#,
                "signedBy",
            ),
            (
                r#"{"default": [{"type": "sigstoreSigned", "fulcio": {}}]}"#,
                "fulcio",
            ),
            (
                r#"{"default": [{"type": "sigstoreSigned", "keyPath": "/nonexistent/k.pub"}]}"#,
                "/nonexistent/k.pub",
            ),
            (
                r#"{"default": [{"type": "sigstoreSigned"}]}"#,
                "names no key",
            ),
            (r#"{"default": []}"#, "no requirements"),
            (r#"{"default": [{"type": "nonsense"}]}"#, "nonsense"),
        ] {
            std::fs::write(&p, body).unwrap();
            let e = Policy::load(&p).unwrap_err().to_string();
            assert!(e.contains(says), "{body}: {e}");
        }
    }

    #[test]
    fn payloads_are_checked_against_digest_and_identity() {
        let d = Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap();
        let other = format!("sha256:{}", "b".repeat(64));
        let payload = |reference: &str, digest: &str| {
            format!(
                r#"{{"critical":{{"identity":{{"docker-reference":"{reference}"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
            )
        };
        let r = reference("reg.example.com/team/app:1");
        let ok = payload("reg.example.com/team/app", d.as_str());
        assert_eq!(
            check_payload(ok.as_bytes(), &r, &d, &Identity::Repository),
            Ok(())
        );
        // Under the default identity rule, a tag reference needs the signature to name it.
        assert!(check_payload(ok.as_bytes(), &r, &d, &Identity::RepoDigestOrExact).is_err());
        let tagged = payload("reg.example.com/team/app:1", d.as_str());
        assert_eq!(
            check_payload(tagged.as_bytes(), &r, &d, &Identity::RepoDigestOrExact),
            Ok(())
        );
        let e = check_payload(
            payload("reg.example.com/team/app", &other).as_bytes(),
            &r,
            &d,
            &Identity::Repository,
        )
        .unwrap_err();
        assert!(e.contains("not this image's"), "{e}");
        let e = check_payload(
            payload("reg.example.com/team/other", d.as_str()).as_bytes(),
            &r,
            &d,
            &Identity::Repository,
        )
        .unwrap_err();
        assert!(e.contains("claims identity"), "{e}");
        assert!(check_payload(b"{", &r, &d, &Identity::Repository).is_err());
        assert!(
            check_payload(&vec![b' '; MAX_PAYLOAD + 1], &r, &d, &Identity::Repository).is_err()
        );
    }

    #[test]
    fn keys_and_signatures() {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap();
        // The SPKI of a P-256 key: a fixed prefix and the point.
        let mut spki_der = vec![
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ];
        spki_der.extend_from_slice(pair.public_key().as_ref());
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&spki_der)
        );
        let key = PublicKey::from_pem("test", pem.as_bytes()).unwrap();
        let sig = pair.sign(&rng, b"payload").unwrap();
        assert!(key.verify(b"payload", sig.as_ref()));
        assert!(!key.verify(b"payloaD", sig.as_ref()));
        assert!(
            PublicKey::from_pem(
                "x",
                b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
            )
            .is_err()
        );
        assert!(PublicKey::from_pem("x", b"garbage").is_err());
    }
}

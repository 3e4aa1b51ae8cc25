//! The signature policy applied to a pull: after the reference is resolved to its manifest
//! and before anything of the image is stored or any layer fetched. The policy file is read
//! anew for every pull (edits apply without a restart); a scope that accepts anything costs
//! nothing more.

use base64::Engine as _;

use crate::error::{Error, NotTrusted, Result};
use crate::manifest::Document;
use crate::policy::{self, Policy, Requirement};
use crate::reference::Reference;
use crate::registry::{FetchedManifest, Session};

use super::ImageService;

/// The annotation cosign puts the signature in, on each layer of a signature image.
const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// Signatures berth looks at per image (cosign appends one layer per signing).
const MAX_SIGNATURES: usize = 64;

/// The policy scope that applies to a pull and its requirements.
pub(super) struct Applied {
    scope: String,
    reqs: Vec<Requirement>,
}

impl ImageService {
    /// The policy's scope and requirements for `r`, before anything is asked of a registry:
    /// a scope that rejects refuses here. `None` when there is no policy.
    pub(super) async fn policy_for(&self, r: &Reference) -> Result<Option<Applied>> {
        let Some(path) = self.cfg.policy_path.clone() else {
            return Ok(None);
        };
        let policy = tokio::task::spawn_blocking(move || Policy::load(&path))
            .await
            .map_err(|e| Error::io("read the signature policy", std::io::Error::other(e)))??;
        let (scope, reqs) = policy.for_reference(r);
        if reqs.iter().any(|q| matches!(q, Requirement::Reject)) {
            return Err(Error::NotTrusted(Box::new(NotTrusted {
                image: r.to_string(),
                scope,
                requires: "reject".into(),
                reason: "the scope rejects every image".into(),
            })));
        }
        Ok(Some(Applied {
            scope,
            reqs: reqs.to_vec(),
        }))
    }

    /// Checks `r`, resolved to `top`, against the requirements `policy_for` found; returns
    /// how it was accepted (for the image's record).
    pub(super) async fn verify_policy(
        &self,
        r: &Reference,
        session: &Session,
        top: &FetchedManifest,
        applied: Option<&Applied>,
    ) -> Result<Option<String>> {
        let Some(Applied { scope, reqs }) = applied else {
            return Ok(None);
        };
        let mut accepted = vec![];
        for req in reqs {
            let refuse = |requires: String, reason: String| {
                Error::NotTrusted(Box::new(NotTrusted {
                    image: r.to_string(),
                    scope: scope.clone(),
                    requires,
                    reason,
                }))
            };
            match req {
                Requirement::AcceptAnything => accepted.push("insecureAcceptAnything".to_string()),
                Requirement::Reject => {
                    return Err(refuse(
                        "reject".into(),
                        "the scope rejects every image".into(),
                    ));
                }
                Requirement::Sigstore { keys, identity } => {
                    let requires = format!(
                        "a cosign signature by {}",
                        keys.iter()
                            .map(|k| k.name.as_str())
                            .collect::<Vec<_>>()
                            .join(" or ")
                    );
                    match self.find_signature(r, session, top, keys, identity).await? {
                        Ok(key) => accepted.push(format!("sigstoreSigned by {key}")),
                        Err(reason) => return Err(refuse(requires, reason)),
                    }
                }
            }
        }
        Ok(Some(format!(
            "policy scope {scope:?}: {}",
            accepted.join(", ")
        )))
    }

    /// The key that verifies a signature of `top` whose payload `identity` accepts, or why
    /// none does.
    async fn find_signature(
        &self,
        r: &Reference,
        session: &Session,
        top: &FetchedManifest,
        keys: &[policy::PublicKey],
        identity: &policy::Identity,
    ) -> Result<std::result::Result<String, String>> {
        let tag = format!(
            "{}-{}.sig",
            top.digest.as_str().split(':').next().unwrap_or("sha256"),
            top.digest.hex()
        );
        let sig_ref = r.with_tag(&tag);
        let fetched = match session.resolve(&sig_ref).await {
            Ok(m) => m,
            Err(e) if e.kind() == crate::error::ErrorKind::NotFound => {
                return Ok(Err(format!(
                    "it has no cosign signature ({sig_ref} does not exist)"
                )));
            }
            Err(e) => return Err(e),
        };
        let manifest = match Document::parse(
            &format!("signature {sig_ref}"),
            &fetched.media_type,
            &fetched.body,
        )? {
            Document::Manifest(m) => m,
            Document::Index(_) => {
                return Ok(Err(format!(
                    "its signature {sig_ref} is an index, not a signature image"
                )));
            }
        };
        let mut reasons = vec![];
        for layer in manifest.layers.iter().take(MAX_SIGNATURES) {
            let Some(sig) = layer.annotations.get(SIGNATURE_ANNOTATION) else {
                reasons.push(format!(
                    "layer {} of {sig_ref} carries no signature",
                    layer.digest
                ));
                continue;
            };
            let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(sig.trim()) else {
                reasons.push(format!("a signature in {sig_ref} is not base64"));
                continue;
            };
            if layer.size > policy::MAX_PAYLOAD as u64 {
                reasons.push(format!(
                    "a signature payload in {sig_ref} is over {} bytes",
                    policy::MAX_PAYLOAD
                ));
                continue;
            }
            let payload = session
                .blob_bytes(&layer.digest, policy::MAX_PAYLOAD)
                .await?;
            let Some(key) = keys.iter().find(|k| k.verify(&payload, &sig)) else {
                reasons.push(format!(
                    "a signature in {sig_ref} does not verify with the policy's keys"
                ));
                continue;
            };
            match policy::check_payload(&payload, r, &top.digest, identity) {
                Ok(()) => return Ok(Ok(key.name.clone())),
                Err(why) => {
                    reasons.push(format!("a signature by {} in {sig_ref}: {why}", key.name))
                }
            }
        }
        if reasons.is_empty() {
            reasons.push(format!("{sig_ref} holds no signature"));
        }
        // The most telling reason first: one about a signature that verified.
        reasons.sort_by_key(|r| !r.contains(" by "));
        Ok(Err(reasons.join("; ")))
    }
}

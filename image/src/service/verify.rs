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
/// The artifact type of a cosign signature among an image's OCI 1.1 referrers.
const COSIGN_ARTIFACT: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";

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

    /// The signature images of `top`: cosign's `<alg>-<hex>.sig` tag, and the cosign
    /// signatures among its OCI 1.1 referrers (the referrers API, else its `<alg>-<hex>`
    /// tag fallback, where cosign puts them when the registry has no such API).
    async fn signature_images(
        &self,
        r: &Reference,
        session: &Session,
        top: &FetchedManifest,
    ) -> Result<Vec<(String, FetchedManifest)>> {
        let not_found = |e: &Error| e.kind() == crate::error::ErrorKind::NotFound;
        let alg = top.digest.as_str().split(':').next().unwrap_or("sha256");
        let tag = format!("{alg}-{}", top.digest.hex());
        let mut out = vec![];
        let sig_ref = r.with_tag(&format!("{tag}.sig"));
        match session.resolve(&sig_ref).await {
            Ok(m) => out.push((sig_ref.to_string(), m)),
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(e),
        }
        let index = match session.referrers(&top.digest).await {
            Ok(ix) => Some(ix),
            Err(e) => {
                // A registry without the API answers 404 (or refuses the path): the tag
                // fallback of the OCI 1.1 spec, as cosign writes it then.
                tracing::debug!(image = %r, err = %e, "no referrers API; trying its tag fallback");
                match session.resolve(&r.with_tag(&tag)).await {
                    Ok(ix) => Some(ix),
                    Err(e) if not_found(&e) => None,
                    Err(e) => return Err(e),
                }
            }
        };
        if let Some(ix) = index
            && let Ok(Document::Index(ix)) =
                Document::parse(&format!("referrers of {r}"), &ix.media_type, &ix.body)
        {
            for d in ix
                .manifests
                .iter()
                .filter(|d| d.artifact_type.as_deref() == Some(COSIGN_ARTIFACT))
                .take(MAX_SIGNATURES)
            {
                out.push((
                    format!("{}@{}", r.name(), d.digest),
                    session.manifest(&d.digest).await?,
                ));
            }
        }
        Ok(out)
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
        let images = self.signature_images(r, session, top).await?;
        if images.is_empty() {
            return Ok(Err(format!(
                "it has no cosign signature (neither {}:{}-{}.sig nor an OCI 1.1 referrer)",
                r.name(),
                top.digest.as_str().split(':').next().unwrap_or("sha256"),
                top.digest.hex()
            )));
        }
        let mut reasons = vec![];
        let mut seen = 0;
        for (at, fetched) in images {
            let manifest = match Document::parse(
                &format!("signature {at}"),
                &fetched.media_type,
                &fetched.body,
            )? {
                Document::Manifest(m) => m,
                Document::Index(_) => {
                    reasons.push(format!("{at} is an index, not a signature image"));
                    continue;
                }
            };
            for layer in &manifest.layers {
                seen += 1;
                if seen > MAX_SIGNATURES {
                    break;
                }
                let Some(sig) = layer.annotations.get(SIGNATURE_ANNOTATION) else {
                    reasons.push(format!(
                        "layer {} of {at} carries no signature",
                        layer.digest
                    ));
                    continue;
                };
                let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(sig.trim()) else {
                    reasons.push(format!("a signature in {at} is not base64"));
                    continue;
                };
                if layer.size > policy::MAX_PAYLOAD as u64 {
                    reasons.push(format!(
                        "a signature payload in {at} is over {} bytes",
                        policy::MAX_PAYLOAD
                    ));
                    continue;
                }
                let payload = session
                    .blob_bytes(&layer.digest, policy::MAX_PAYLOAD)
                    .await?;
                let Some(key) = keys.iter().find(|k| k.verify(&payload, &sig)) else {
                    reasons.push(format!(
                        "a signature in {at} does not verify with the policy's keys"
                    ));
                    continue;
                };
                match policy::check_payload(&payload, r, &top.digest, identity) {
                    Ok(()) => return Ok(Ok(key.name.clone())),
                    Err(why) => reasons.push(format!("a signature by {} in {at}: {why}", key.name)),
                }
            }
        }
        if reasons.is_empty() {
            reasons.push("its signature images hold no signature".into());
        }
        // The most telling reason first: one about a signature that verified.
        reasons.sort_by_key(|r| !r.contains(" by "));
        Ok(Err(reasons.join("; ")))
    }
}

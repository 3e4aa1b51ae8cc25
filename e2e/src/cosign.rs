//! Signatures made by cosign (`scripts/install-cosign.sh`), offline: key pairs it generates
//! (no password), signatures pushed to the test registry without the transparency log.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::tools;

/// A cosign key pair in `dir` (`cosign.key`, `cosign.pub`).
pub struct KeyPair {
    dir: PathBuf,
}

impl KeyPair {
    pub fn generate(dir: &Path) -> anyhow::Result<KeyPair> {
        tools::require(&tools::cosign(), "install-cosign.sh")?;
        std::fs::create_dir_all(dir)?;
        let out = Command::new(tools::cosign())
            .arg("generate-key-pair")
            .env("COSIGN_PASSWORD", "")
            .current_dir(dir)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "cosign generate-key-pair: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(KeyPair { dir: dir.into() })
    }

    /// The public key file.
    pub fn public(&self) -> PathBuf {
        self.dir.join("cosign.pub")
    }

    /// Signs `repo@digest` in the registry at `registry` (`host:port`), claiming `identity`
    /// (the repository the signature says it is for).
    pub fn sign(
        &self,
        registry: &str,
        repo: &str,
        digest: &str,
        identity: &str,
    ) -> anyhow::Result<()> {
        self.sign_with(registry, repo, digest, identity, &[])
    }

    /// As [`sign`](Self::sign), stored as an OCI 1.1 referrer of the image (cosign's
    /// `--registry-referrers-mode=oci-1-1`; on a registry without the referrers API, cosign
    /// keeps the referrers index at the spec's `<alg>-<hex>` tag).
    pub fn sign_as_referrer(
        &self,
        registry: &str,
        repo: &str,
        digest: &str,
        identity: &str,
    ) -> anyhow::Result<()> {
        self.sign_with(
            registry,
            repo,
            digest,
            identity,
            &["--registry-referrers-mode=oci-1-1"],
        )
    }

    fn sign_with(
        &self,
        registry: &str,
        repo: &str,
        digest: &str,
        identity: &str,
        extra: &[&str],
    ) -> anyhow::Result<()> {
        let out = Command::new(tools::cosign())
            .args(["sign", "--yes", "--tlog-upload=false"])
            .args(extra)
            // The referrers mode is experimental in cosign 2.
            .env("COSIGN_EXPERIMENTAL", "1")
            .args(["--allow-insecure-registry", "--allow-http-registry"])
            .arg("--key")
            .arg(self.dir.join("cosign.key"))
            .args(["--sign-container-identity", identity])
            .arg(format!("{registry}/{repo}@{digest}"))
            .env("COSIGN_PASSWORD", "")
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "cosign sign {repo}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

/// The tag cosign stores the signatures of manifest `digest` under.
pub fn sig_tag(digest: &str) -> String {
    digest.replace(':', "-") + ".sig"
}

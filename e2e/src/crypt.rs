//! Encrypted images made by the real peer tool: key pairs from `openssl`, images encrypted by
//! `skopeo copy --encryption-key jwe:…` from plain images in the test registry.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::Registry;

/// Key pairs in a temporary directory: `<name>.pem` (private) and `<name>.pub.pem`.
pub struct KeyPairs {
    dir: tempfile::TempDir,
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl KeyPairs {
    /// An empty set.
    pub fn new() -> anyhow::Result<Self> {
        Ok(KeyPairs {
            dir: tempfile::Builder::new()
                .prefix("berth-e2e-keys-")
                .tempdir()?,
        })
    }

    /// Makes an RSA key pair `name` of `bits`.
    pub fn rsa(&self, name: &str, bits: u32) -> anyhow::Result<()> {
        let private = self.private(name);
        run(Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt"])
            .arg(format!("rsa_keygen_bits:{bits}"))
            .arg("-out")
            .arg(&private))?;
        self.public_half(name)
    }

    /// Makes an EC key pair `name` on `curve` (`prime256v1`, `secp384r1`, …).
    pub fn ec(&self, name: &str, curve: &str) -> anyhow::Result<()> {
        run(Command::new("openssl")
            .args(["ecparam", "-genkey", "-noout", "-name", curve, "-out"])
            .arg(self.private(name)))?;
        self.public_half(name)
    }

    fn public_half(&self, name: &str) -> anyhow::Result<()> {
        run(Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(self.private(name))
            .arg("-out")
            .arg(self.public(name)))
    }

    /// The private key file of `name`.
    pub fn private(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.pem"))
    }

    /// The public key file of `name`.
    pub fn public(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.pub.pem"))
    }

    /// Copies the private keys `names` into `dir` (created 0700), as a node holds them.
    pub fn install(&self, dir: &Path, names: &[&str]) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        for n in names {
            std::fs::copy(self.private(n), dir.join(format!("{n}.pem")))?;
        }
        Ok(())
    }
}

/// How skopeo writes the encrypted layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerFormat {
    /// As the source has them (gzip for images built here).
    AsSource,
    /// Recompressed with zstd.
    Zstd,
    /// Uncompressed (`tar+encrypted`): through an OCI layout, the one transport where skopeo
    /// leaves uncompressed layers alone.
    Uncompressed,
}

/// `skopeo copy` of `<registry>/<from>` to `<registry>/<to>`, encrypting every layer for the
/// public keys of `recipients` (JWE).
pub fn skopeo_encrypt(
    reg: &Registry,
    keys: &KeyPairs,
    from: &str,
    to: &str,
    recipients: &[&str],
    format: LayerFormat,
) -> anyhow::Result<()> {
    let skopeo = || {
        let mut cmd = Command::new("skopeo");
        cmd.args([
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ]);
        cmd
    };
    let mut cmd = skopeo();
    if format == LayerFormat::Zstd {
        cmd.args(["--dest-compress-format", "zstd"]);
    }
    for r in recipients {
        cmd.arg("--encryption-key")
            .arg(format!("jwe:{}", keys.public(r).display()));
    }
    cmd.arg(format!("docker://{}/{from}", reg.addr));
    let dest = format!("docker://{}/{to}", reg.addr);
    if format != LayerFormat::Uncompressed {
        return run(cmd.arg(dest));
    }
    let layout = tempfile::tempdir()?;
    let oci = format!("oci:{}:x", layout.path().display());
    run(cmd.arg("--dest-oci-accept-uncompressed-layers").arg(&oci))?;
    // Copying an encrypted image moves its blobs as they are.
    run(skopeo().arg(&oci).arg(dest))
}

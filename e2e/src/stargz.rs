//! eStargz layers made by the upstream estargz package (`berth-estargz`, built by
//! `scripts/install-estargz.sh` from the Go module proxy), not by a converter of berth's own.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, bail};

use crate::Layer;

/// The `berth-estargz` binary (built once per machine, then cached).
pub fn tool() -> anyhow::Result<PathBuf> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-estargz.sh");
        let out = Command::new(&script)
            .output()
            .map_err(|e| format!("{}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    });
    match dir {
        Ok(d) => Ok(d.join("berth-estargz")),
        Err(e) => bail!("{e}"),
    }
}

/// What a conversion gave.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The eStargz blob.
    pub blob: Vec<u8>,
    /// Its digest.
    pub digest: String,
    /// The digest of its uncompressed tar.
    pub diff_id: String,
    /// The digest of its TOC JSON (the `toc.digest` annotation).
    pub toc_digest: String,
}

/// Converts `layer` to eStargz, `prioritize` first (before the prefetch landmark), with
/// `chunk_size` bytes per chunk (0: the package's default, 4 MiB).
pub fn convert(layer: &Layer, prioritize: &[&str], chunk_size: usize) -> anyhow::Result<Converted> {
    let dir = tempfile::tempdir()?;
    let (tar, out) = (dir.path().join("layer.tar"), dir.path().join("layer.esgz"));
    std::fs::write(&tar, layer.tar())?;
    let mut cmd = Command::new(tool()?);
    cmd.arg("-in").arg(&tar).arg("-out").arg(&out);
    if !prioritize.is_empty() {
        cmd.arg("-prioritize").arg(prioritize.join(","));
    }
    if chunk_size > 0 {
        cmd.arg("-chunk-size").arg(chunk_size.to_string());
    }
    let o = cmd.output().context("run berth-estargz")?;
    if !o.status.success() {
        bail!("berth-estargz: {}", String::from_utf8_lossy(&o.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    Ok(Converted {
        blob: std::fs::read(&out)?,
        digest: s("digest"),
        diff_id: s("diffID"),
        toc_digest: s("tocDigest"),
    })
}

impl Converted {
    /// A layer pushing this blob, annotated as eStargz.
    pub fn layer(&self) -> Layer {
        Layer::new().prebuilt(
            self.blob.clone(),
            self.diff_id.clone(),
            vec![(
                "containerd.io/snapshot/stargz/toc.digest".into(),
                self.toc_digest.clone(),
            )],
        )
    }
}

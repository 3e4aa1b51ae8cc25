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

/// The content of the one file a [`hostile`] layer really holds, at `small`.
pub const HOSTILE_FILE: &[u8] = b"hello\n";

/// A hand-made eStargz blob whose table of contents is `toc` (JSON, whatever it claims):
/// one gzip member holding the file `small` ([`HOSTILE_FILE`]) at offset 0, the TOC member,
/// and the footer. It is a valid gzip'd tar, so a pull that refuses the TOC pulls it whole.
pub fn hostile(toc: &[u8]) -> Converted {
    use sha2::{Digest as _, Sha256};
    use std::io::Write;
    let gz = |data: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    };
    let entry = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    };
    let data = entry("small", HOSTILE_FILE);
    let mut index = entry("stargz.index.json", toc);
    index.extend_from_slice(&[0u8; 1024]);
    let mut blob = gz(&data);
    let toc_offset = blob.len();
    blob.extend(gz(&index));
    // The footer: an empty gzip member whose extra field says where the TOC is.
    blob.extend_from_slice(&[
        0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 26, 0, b'S', b'G', 22, 0,
    ]);
    blob.extend_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    blob.extend_from_slice(&[1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut plain = data;
    plain.extend(index);
    let hex = |d: &[u8]| format!("sha256:{}", ::hex::encode(Sha256::digest(d)));
    Converted {
        digest: hex(&blob),
        diff_id: hex(&plain),
        toc_digest: hex(toc),
        blob,
    }
}

//! Images: certs.d, the node's decryption keys, `/dev/fuse` for lazy pulling, and lazily
//! pulled layers in quarantine.

use std::path::Path;

use crate::config::Config;

use super::{Check, fail, pass};

/// The signature policy: each scope and what it requires (its keys loaded), or why the
/// policy cannot be used (then every pull fails).
pub(super) fn signature_policy(path: &Path) -> Vec<Check> {
    if path.as_os_str().is_empty() {
        return vec![pass(
            "images",
            "signature policy",
            "none ([image_policy] path): every image is accepted",
        )];
    }
    match berth_image::policy::Policy::load(path) {
        Ok(p) => p
            .describe()
            .into_iter()
            .map(|(scope, reqs)| pass("images", format!("policy scope {scope:?}"), reqs))
            .collect(),
        Err(e) => vec![fail(
            "images",
            "signature policy",
            e.to_string(),
            "fix the file or the keys it names: every pull fails until then",
        )],
    }
}

pub(super) fn registry(cfg: &Config) -> Vec<Check> {
    let Some(dir) = cfg.registry_config_path() else {
        return vec![pass(
            "registry",
            "certs.d",
            "disabled: every registry is reached directly",
        )];
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return vec![pass(
            "registry",
            "certs.d",
            format!(
                "{} absent: every registry is reached directly",
                dir.display()
            ),
        )];
    };
    let mut out = Vec::new();
    let mut hosts: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    hosts.sort();
    for h in hosts {
        let file = h.join("hosts.toml");
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let domain = h
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        out.push(
            match berth_image::hosts::parse_hosts(&file, &text, &domain) {
                Ok(list) => pass(
                    "registry",
                    format!("hosts {domain}"),
                    format!("{} host(s) in {}", list.len(), file.display()),
                ),
                Err(e) => fail(
                    "registry",
                    format!("hosts {domain}"),
                    e.to_string(),
                    format!("fix {} (containerd's hosts.toml format)", file.display()),
                ),
            },
        );
    }
    if out.is_empty() {
        out.push(pass(
            "registry",
            "certs.d",
            format!("{}: no hosts.toml", dir.display()),
        ));
    }
    out
}

/// `/dev/fuse`, which lazy pulling mounts layers with: required only when it is configured.
pub(super) fn fuse(lazy_pull: bool) -> Check {
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let known = fs.lines().any(|l| l.trim() == "nodev\tfuse");
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse");
    let detail = if lazy_pull {
        // Pods in user namespaces see a lazily pulled layer through an idmapped mount of
        // its FUSE filesystem, which the kernel allows from 6.12.
        if berth_sandbox::runtime::kernel_version() >= (6, 12) {
            "eStargz layers are mounted with it; pods in user namespaces read them through idmapped mounts"
        } else {
            "eStargz layers are mounted with it; pods in user namespaces cannot use them (idmapped FUSE mounts need Linux 6.12)"
        }
    } else {
        "not needed: lazy_pull.registries is empty"
    };
    let problem = match (known, dev) {
        (true, Ok(_)) => None,
        (_, Err(e)) => Some(format!("/dev/fuse: {e}")),
        (false, Ok(_)) => Some("fuse is not in /proc/filesystems".to_string()),
    };
    match problem {
        None => pass("registry", "fuse", format!("/dev/fuse opens; {detail}")),
        Some(p) => Check {
            required: lazy_pull,
            ..fail(
                "registry",
                "fuse",
                p,
                "load the fuse module (modprobe fuse) and make /dev/fuse available to berth, or empty lazy_pull.registries",
            )
        },
    }
}

/// Lazily pulled layers berth refused to serve again after a restart (a table of contents
/// over the limits, a background fetch that killed berth): their images must be pulled anew.
pub(super) fn quarantined_layers(root: &Path) -> Check {
    const NAME: &str = "quarantined layers";
    let q = berth_image::lazy::quarantined(root);
    if q.is_empty() {
        return pass("registry", NAME, "none");
    }
    let list: Vec<String> = q
        .iter()
        .map(|(dir, why)| format!("{}: {why}", dir.display()))
        .collect();
    fail(
        "registry",
        NAME,
        list.join("; "),
        "remove the images these layers belong to (crictl rmi; berth's log names each image) and pull them again",
    )
}

/// The node's keys for encrypted images: optional, so every miss is a warning.
pub(super) fn decryption_keys(dir: &Path) -> Vec<Check> {
    use std::os::unix::fs::PermissionsExt;
    const NAME: &str = "decryption keys";
    let warn = |detail: String, fix: String| Check {
        required: false,
        ..fail("registry", NAME, detail, fix)
    };
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return vec![pass(
                "registry",
                NAME,
                format!(
                    "{} absent: encrypted images cannot be pulled",
                    dir.display()
                ),
            )];
        }
        Err(e) => {
            return vec![warn(
                format!("{}: {e}", dir.display()),
                "make it a directory berth can read".into(),
            )];
        }
    };
    let ring = berth_imgcrypt::KeyRing::load(dir);
    let keys = ring.describe();
    let mut out = vec![if keys.is_empty() {
        warn(
            format!("{}: no usable private key", dir.display()),
            "put the node's private keys there (PEM, DER or JWK, without a password)".into(),
        )
    } else {
        pass(
            "registry",
            NAME,
            format!(
                "{} usable key(s) in {}: {}",
                keys.len(),
                dir.display(),
                keys.join(", ")
            ),
        )
    }];
    for s in ring.skipped() {
        out.push(warn(
            format!("{} skipped: {}", s.path.display(), s.reason),
            "remove it, or replace it with a private key berth reads".into(),
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        out.push(warn(
            format!(
                "{} is open to other users (mode {:o})",
                dir.display(),
                meta.permissions().mode() & 0o7777
            ),
            format!("chmod 0700 {}", dir.display()),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::healthy;
    use super::*;

    #[test]
    fn decryption_keys_are_counted_and_strays_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let absent = decryption_keys(&keys);
        assert!(
            absent[0].ok && absent[0].detail.contains("absent"),
            "{absent:?}"
        );

        std::fs::create_dir(&keys).unwrap();
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../imgcrypt/testdata");
        std::fs::copy(data.join("ec.pem"), keys.join("node.pem")).unwrap();
        std::fs::copy(data.join("rsa.pub.pem"), keys.join("node.pub")).unwrap();
        let checks = decryption_keys(&keys);
        assert!(checks[0].ok, "{checks:?}");
        assert!(checks[0].detail.contains("1 usable key(s)"), "{checks:?}");
        assert!(checks[0].detail.contains("node.pem: P-256"), "{checks:?}");
        assert!(
            checks
                .iter()
                .any(|c| !c.ok && !c.required && c.detail.contains("node.pub skipped")),
            "{checks:?}"
        );
        assert!(
            checks
                .iter()
                .any(|c| c.fix.as_deref() == Some(&format!("chmod 0700 {}", keys.display()))),
            "{checks:?}"
        );
        assert!(healthy(&checks), "key warnings never make the node unfit");
    }
}

//! The OCI and Docker schema 2 documents a pull reads: indexes, manifests and image configs.
//!
//! Only the fields berth uses are modelled, and unknown fields are ignored, so that registries'
//! variations (extra annotations, Docker's extra config fields) parse.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::reference::Digest;

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// A content descriptor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The media type of the content.
    #[serde(default)]
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// For index entries, the platform the manifest is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations; an encrypted layer's wrapped keys travel here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// In a referrers index, what kind of artifact the manifest is (a cosign signature's is
    /// `application/vnd.dev.cosign.artifact.sig.v1+json`).
    #[serde(
        default,
        rename = "artifactType",
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
}

/// A platform in an index.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Platform {
    /// e.g. `amd64`.
    #[serde(default)]
    pub architecture: String,
    /// e.g. `linux`.
    #[serde(default)]
    pub os: String,
    /// e.g. `v8` for arm64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this berth runs on.
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform {
            architecture: architecture.into(),
            os: "linux".into(),
            variant: variant.map(Into::into),
        }
    }

    /// True when a manifest for `other` runs here. A missing variant matches any.
    pub fn accepts(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && match (&self.variant, &other.variant) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An image index or manifest list.
#[derive(Debug, Clone, Deserialize)]
pub struct Index {
    /// The per-platform manifests.
    pub manifests: Vec<Descriptor>,
}

/// An image manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    /// The image config.
    pub config: Descriptor,
    /// The layers, base first.
    pub layers: Vec<Descriptor>,
}

/// What a manifest endpoint returned.
#[derive(Debug, Clone)]
pub enum Document {
    /// A multi-platform index.
    Index(Index),
    /// A single-platform manifest.
    Manifest(Manifest),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    schema_version: u32,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    layers: Option<serde_json::Value>,
}

impl Document {
    /// Parses `body` as served with `media_type` (which may be empty or generic).
    pub fn parse(what: &str, media_type: &str, body: &[u8]) -> Result<Self> {
        let bad = |reason: String| Error::bad(what.to_string(), reason);
        match media_type {
            OCI_INDEX | DOCKER_LIST => {
                return serde_json::from_slice(body)
                    .map(Document::Index)
                    .map_err(|e| bad(format!("invalid index: {e}")));
            }
            OCI_MANIFEST | DOCKER_MANIFEST => {
                return serde_json::from_slice(body)
                    .map(Document::Manifest)
                    .map_err(|e| bad(format!("invalid manifest: {e}")));
            }
            _ => {}
        }
        let probe: Probe = serde_json::from_slice(body)
            .map_err(|e| bad(format!("not a JSON manifest ({media_type}): {e}")))?;
        if probe.schema_version == 1 {
            return Err(bad(
                "Docker schema 1 manifests are not supported; push the image with schema 2 or OCI"
                    .into(),
            ));
        }
        if probe.manifests.is_some() {
            serde_json::from_slice(body)
                .map(Document::Index)
                .map_err(|e| bad(format!("invalid index: {e}")))
        } else if probe.layers.is_some() {
            serde_json::from_slice(body)
                .map(Document::Manifest)
                .map_err(|e| bad(format!("invalid manifest: {e}")))
        } else {
            Err(bad(format!(
                "unsupported manifest media type {media_type:?}"
            )))
        }
    }
}

impl Index {
    /// The first manifest for `platform`.
    pub fn select(&self, platform: &Platform) -> Option<&Descriptor> {
        let matching = || {
            self.manifests
                .iter()
                .filter(|d| d.platform.as_ref().is_some_and(|p| platform.accepts(p)))
        };
        // An exact variant match beats a manifest that leaves the variant out.
        matching()
            .find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p.variant == platform.variant)
            })
            .or_else(|| matching().next())
    }
}

/// The parts of an image config berth reads.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ImageConfig {
    /// Defaults for containers.
    #[serde(default)]
    pub config: Option<ContainerConfig>,
    /// The uncompressed layer digests.
    pub rootfs: RootFs,
    /// e.g. `amd64`.
    #[serde(default)]
    pub architecture: String,
    /// e.g. `linux`.
    #[serde(default)]
    pub os: String,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// One per layer, base first.
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

/// The container defaults of an image config.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    /// `user`, `uid`, `user:group` or `uid:gid`.
    #[serde(default)]
    pub user: String,
    /// `KEY=value` pairs.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// The entrypoint.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// The default arguments.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// The working directory.
    #[serde(default)]
    pub working_dir: String,
    /// The signal that stops the container.
    #[serde(default)]
    pub stop_signal: String,
    /// Labels.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// Declared volumes.
    #[serde(default)]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
}

/// The chain IDs of a layer stack: `chain[0] = diff[0]`,
/// `chain[n] = sha256(chain[n-1] + " " + diff[n])`.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => Digest::of(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// Splits an image config `User` into a numeric uid or a user name, as CRI reports them.
pub fn parse_user(user: &str) -> (Option<i64>, String) {
    let name = user.split(':').next().unwrap_or_default();
    if name.is_empty() {
        return (None, String::new());
    }
    match name.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, name.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::of(&[n])
    }

    #[test]
    fn chain_ids_match_the_spec() {
        let ids = chain_ids(&[d(1), d(2)]);
        assert_eq!(ids[0], d(1));
        assert_eq!(ids[1], Digest::of(format!("{} {}", d(1), d(2)).as_bytes()));
    }

    #[test]
    fn platform_selection() {
        let idx = Index {
            manifests: vec![
                Descriptor {
                    media_type: OCI_MANIFEST.into(),
                    digest: d(1),
                    size: 1,
                    annotations: Default::default(),
                    artifact_type: None,
                    platform: Some(Platform {
                        architecture: "arm64".into(),
                        os: "linux".into(),
                        variant: Some("v8".into()),
                    }),
                },
                Descriptor {
                    media_type: OCI_MANIFEST.into(),
                    digest: d(2),
                    size: 1,
                    annotations: Default::default(),
                    artifact_type: None,
                    platform: Some(Platform {
                        architecture: "amd64".into(),
                        os: "windows".into(),
                        variant: None,
                    }),
                },
                Descriptor {
                    media_type: OCI_MANIFEST.into(),
                    digest: d(3),
                    size: 1,
                    annotations: Default::default(),
                    artifact_type: None,
                    platform: Some(Platform {
                        architecture: "amd64".into(),
                        os: "linux".into(),
                        variant: None,
                    }),
                },
                Descriptor {
                    media_type: OCI_MANIFEST.into(),
                    digest: d(4),
                    size: 1,
                    annotations: Default::default(),
                    artifact_type: None,
                    platform: Some(Platform {
                        architecture: "arm64".into(),
                        os: "linux".into(),
                        variant: None,
                    }),
                },
            ],
        };
        let amd64 = Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        };
        assert_eq!(idx.select(&amd64).unwrap().digest, d(3));
        let arm64 = Platform {
            architecture: "arm64".into(),
            os: "linux".into(),
            variant: Some("v8".into()),
        };
        assert_eq!(idx.select(&arm64).unwrap().digest, d(1));
        let s390 = Platform {
            architecture: "s390x".into(),
            os: "linux".into(),
            variant: None,
        };
        assert!(idx.select(&s390).is_none());
    }

    #[test]
    fn documents_by_media_type_or_shape() {
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{}","size":1}},"layers":[]}}"#,
            d(1)
        );
        assert!(matches!(
            Document::parse("m", DOCKER_MANIFEST, m.as_bytes()).unwrap(),
            Document::Manifest(_)
        ));
        assert!(matches!(
            Document::parse("m", "", m.as_bytes()).unwrap(),
            Document::Manifest(_)
        ));
        let i = r#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            Document::parse("i", "application/json", i.as_bytes()).unwrap(),
            Document::Index(_)
        ));
        let e = Document::parse("old", "", br#"{"schemaVersion":1,"fsLayers":[]}"#).unwrap_err();
        assert!(e.to_string().contains("schema 1"));
        assert!(Document::parse("x", OCI_MANIFEST, b"{}").is_err());
        assert!(Document::parse("x", "", b"not json").is_err());
    }

    #[test]
    fn users() {
        assert_eq!(parse_user(""), (None, String::new()));
        assert_eq!(parse_user("1002"), (Some(1002), String::new()));
        assert_eq!(parse_user("1003:1004"), (Some(1003), String::new()));
        assert_eq!(parse_user("www-data"), (None, "www-data".into()));
        assert_eq!(parse_user("www-data:1004"), (None, "www-data".into()));
    }
}

//! OCI images built here from files (Debian's static busybox, generated data, hostile tar
//! entries) and pushed to a [`Registry`] over the distribution API.

use sha2::{Digest as _, Sha256};

use crate::Registry;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// `application/vnd.oci.image.layer.v1.tar`
    None,
    /// `application/vnd.oci.image.layer.v1.tar+gzip`
    Gzip,
    /// `application/vnd.oci.image.layer.v1.tar+zstd`
    Zstd,
}

#[derive(Clone)]
enum Entry {
    File {
        path: String,
        data: Vec<u8>,
        mode: u32,
    },
    Dir {
        path: String,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
    Hardlink {
        path: String,
        target: String,
    },
    Fifo {
        path: String,
    },
    CharDevice {
        path: String,
        major: u32,
        minor: u32,
    },
}

/// One layer: tar entries written exactly as given (no path cleaning: hostile names pass).
#[derive(Clone)]
pub struct Layer {
    entries: Vec<Entry>,
    compression: Compression,
    /// A blob made elsewhere (an eStargz conversion).
    prebuilt: Option<Prebuilt>,
}

/// A layer blob made elsewhere: (blob, diff ID, descriptor annotations).
type Prebuilt = (Vec<u8>, String, Vec<(String, String)>);

impl Default for Layer {
    fn default() -> Self {
        Layer {
            entries: vec![],
            compression: Compression::Gzip,
            prebuilt: None,
        }
    }
}

impl Layer {
    /// An empty gzip layer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the compression.
    pub fn compression(mut self, c: Compression) -> Self {
        self.compression = c;
        self
    }

    /// Adds a regular file (mode 0644).
    pub fn file(self, path: &str, data: impl Into<Vec<u8>>) -> Self {
        self.file_mode(path, data, 0o644)
    }

    /// Adds a regular file with `mode`.
    pub fn file_mode(mut self, path: &str, data: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.entries.push(Entry::File {
            path: path.into(),
            data: data.into(),
            mode,
        });
        self
    }

    /// Adds a directory (mode 0755).
    pub fn dir(self, path: &str) -> Self {
        self.dir_mode(path, 0o755)
    }

    /// Adds a directory with `mode` (`0o1777` for a `/tmp`).
    pub fn dir_mode(mut self, path: &str, mode: u32) -> Self {
        self.entries.push(Entry::Dir {
            path: path.into(),
            mode,
        });
        self
    }

    /// Adds a symlink.
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        self.entries.push(Entry::Symlink {
            path: path.into(),
            target: target.into(),
        });
        self
    }

    /// Adds a hard link.
    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        self.entries.push(Entry::Hardlink {
            path: path.into(),
            target: target.into(),
        });
        self
    }

    /// Adds a FIFO (a hostile image's file that blocks whoever opens it to read).
    pub fn fifo(mut self, path: &str) -> Self {
        self.entries.push(Entry::Fifo { path: path.into() });
        self
    }

    /// Adds a character device node.
    pub fn char_device(mut self, path: &str, major: u32, minor: u32) -> Self {
        self.entries.push(Entry::CharDevice {
            path: path.into(),
            major,
            minor,
        });
        self
    }

    /// A busybox root: `/bin/busybox` (Debian's static build) and `sh`, `ls`, `cat` links.
    pub fn busybox() -> anyhow::Result<Self> {
        let bin = std::fs::read("/bin/busybox").map_err(|e| {
            anyhow::anyhow!("read /bin/busybox (apt-get install busybox-static): {e}")
        })?;
        let mut l =
            Layer::new()
                .dir("bin/")
                .dir("etc/")
                .dir("tmp/")
                .file_mode("bin/busybox", bin, 0o755);
        for applet in ["sh", "ls", "cat", "sleep", "echo", "id", "env"] {
            l = l.hardlink(&format!("bin/{applet}"), "bin/busybox");
        }
        Ok(l.file(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/sh\n",
        )
        .file("etc/group", "root:x:0:\nwww-data:x:33:\n"))
    }

    /// A fuller busybox root, as the upstream `busybox` and `alpine`-based test images have:
    /// every applet of Debian's static busybox linked in `/bin`, a `/tmp` anyone can write,
    /// `/etc/passwd` and `/etc/group` with `root`, `nobody` and `www-data`, and the usual
    /// empty directories.
    pub fn busybox_full() -> anyhow::Result<Self> {
        let bin = std::fs::read("/bin/busybox").map_err(|e| {
            anyhow::anyhow!("read /bin/busybox (apt-get install busybox-static): {e}")
        })?;
        let list = std::process::Command::new("/bin/busybox")
            .arg("--list")
            .output()?;
        anyhow::ensure!(list.status.success(), "busybox --list failed");
        let mut l = Layer::new();
        for d in [
            "bin/", "dev/", "etc/", "home/", "proc/", "root/", "sys/", "usr/",
        ] {
            l = l.dir(d);
        }
        for d in [
            "usr/bin/",
            "usr/sbin/",
            "usr/local/",
            "usr/local/bin/",
            "var/",
        ] {
            l = l.dir(d);
        }
        l = l
            .dir("var/run/")
            .dir("var/log/")
            .dir_mode("tmp/", 0o1777)
            .file_mode("bin/busybox", bin, 0o755);
        for applet in String::from_utf8(list.stdout)?.split_whitespace() {
            if applet != "busybox" {
                l = l.hardlink(&format!("bin/{applet}"), "bin/busybox");
            }
        }
        Ok(l.file(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/sh\n\
             nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        )
        .file("etc/group", "root:x:0:\nwww-data:x:33:\nnogroup:x:65534:\n"))
    }

    /// The uncompressed tar stream.
    pub fn tar(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for e in &self.entries {
            let (path, kind, mode, link, data): (&str, tar::EntryType, u32, &str, &[u8]) = match e {
                Entry::File { path, data, mode } => {
                    (path, tar::EntryType::Regular, *mode, "", data)
                }
                Entry::Dir { path, mode } => (path, tar::EntryType::Directory, *mode, "", &[]),
                Entry::Fifo { path } => (path, tar::EntryType::Fifo, 0o644, "", &[]),
                Entry::CharDevice { path, .. } => (path, tar::EntryType::Char, 0o666, "", &[]),
                Entry::Symlink { path, target } => {
                    (path, tar::EntryType::Symlink, 0o777, target, &[])
                }
                // Real tar writers record the linked inode's mode in a hard link's header,
                // and containerd applies it: do the same.
                Entry::Hardlink { path, target } => {
                    let mode = self
                        .entries
                        .iter()
                        .find_map(|e| match e {
                            Entry::File { path, mode, .. } if path == target => Some(*mode),
                            _ => None,
                        })
                        .unwrap_or(0o644);
                    (path, tar::EntryType::Link, mode, target, &[])
                }
            };
            let mut h = tar::Header::new_ustar();
            {
                let old = h.as_old_mut();
                old.name[..path.len()].copy_from_slice(path.as_bytes());
                old.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h.set_size(data.len() as u64);
            if let Entry::CharDevice { major, minor, .. } = e {
                h.set_device_major(*major).expect("a ustar header");
                h.set_device_minor(*minor).expect("a ustar header");
            }
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(data);
            out.extend(std::iter::repeat_n(0u8, (512 - data.len() % 512) % 512));
        }
        out.extend(std::iter::repeat_n(0u8, 1024));
        out
    }

    /// This layer as a gzip blob made elsewhere from its tar, with its diff ID and the
    /// annotations its descriptor carries.
    pub fn prebuilt(
        mut self,
        blob: Vec<u8>,
        diff_id: String,
        annotations: Vec<(String, String)>,
    ) -> Self {
        self.prebuilt = Some((blob, diff_id, annotations));
        self
    }

    fn annotations(&self) -> serde_json::Map<String, serde_json::Value> {
        self.prebuilt
            .iter()
            .flat_map(|p| p.2.iter())
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect()
    }

    fn blob(&self) -> (Vec<u8>, String, String) {
        if let Some((blob, diff_id, _)) = &self.prebuilt {
            return (
                blob.clone(),
                diff_id.clone(),
                "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            );
        }
        let tar = self.tar();
        let diff_id = sha256(&tar);
        let (blob, media) = match self.compression {
            Compression::None => (tar, "application/vnd.oci.image.layer.v1.tar"),
            Compression::Gzip => {
                use std::io::Write;
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(&tar).expect("gzip to memory");
                (
                    enc.finish().expect("gzip to memory"),
                    "application/vnd.oci.image.layer.v1.tar+gzip",
                )
            }
            Compression::Zstd => (
                zstd::encode_all(tar.as_slice(), 1).expect("zstd to memory"),
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
        };
        (blob, diff_id, media.to_string())
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// An image: layers plus config values.
pub struct ImageBuilder {
    layers: Vec<Layer>,
    user: String,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<String>,
    workdir: String,
    arch: String,
    docker_media_types: bool,
}

/// What a push produced.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// The digest the tag points at (manifest, or index for multi-platform pushes).
    pub digest: String,
    /// The image id: the config digest (of the amd64 image for an index).
    pub config: String,
    /// The layer blob digests (of the amd64 image for an index).
    pub layers: Vec<String>,
}

impl ImageBuilder {
    /// An amd64 image with `layers`.
    pub fn new(layers: Vec<Layer>) -> Self {
        ImageBuilder {
            layers,
            user: String::new(),
            entrypoint: Vec::new(),
            cmd: vec!["sh".into()],
            env: vec!["PATH=/bin".into()],
            workdir: String::new(),
            arch: "amd64".into(),
            docker_media_types: false,
        }
    }

    /// Sets the config `User`.
    pub fn user(mut self, u: &str) -> Self {
        self.user = u.into();
        self
    }

    /// Sets the config `Entrypoint`.
    pub fn entrypoint(mut self, e: &[&str]) -> Self {
        self.entrypoint = e.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Sets the config `Env` (`PATH=/bin` unless told otherwise).
    pub fn env(mut self, env: &[&str]) -> Self {
        self.env = env.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Sets the config `WorkingDir`.
    pub fn workdir(mut self, dir: &str) -> Self {
        self.workdir = dir.into();
        self
    }

    /// Sets the config `Cmd`.
    pub fn cmd(mut self, cmd: &[&str]) -> Self {
        self.cmd = cmd.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Sets the architecture.
    pub fn arch(mut self, a: &str) -> Self {
        self.arch = a.into();
        self
    }

    /// Uses Docker schema 2 media types instead of OCI ones.
    pub fn docker(mut self) -> Self {
        self.docker_media_types = true;
        self
    }

    /// Pushes blobs and the manifest; tags it `reference` (a tag or nothing).
    pub async fn push(
        &self,
        reg: &Registry,
        repo: &str,
        tag: Option<&str>,
    ) -> anyhow::Result<Pushed> {
        let c = Client::new(reg);
        let (manifest, media, config, layers) = self.upload(&c, repo).await?;
        let digest = sha256(&manifest);
        c.put_manifest(repo, tag.unwrap_or(&digest), &media, manifest)
            .await?;
        Ok(Pushed {
            digest,
            config,
            layers,
        })
    }

    /// The image config's `config` object.
    fn config(&self) -> serde_json::Value {
        let mut c = serde_json::json!({"User": self.user, "Cmd": self.cmd, "Env": self.env});
        if !self.entrypoint.is_empty() {
            c["Entrypoint"] = serde_json::json!(self.entrypoint);
        }
        if !self.workdir.is_empty() {
            c["WorkingDir"] = serde_json::json!(self.workdir);
        }
        c
    }

    async fn upload(
        &self,
        c: &Client<'_>,
        repo: &str,
    ) -> anyhow::Result<(Vec<u8>, String, String, Vec<String>)> {
        let mut layer_descs = Vec::new();
        let mut diff_ids = Vec::new();
        let mut layer_digests = Vec::new();
        for l in &self.layers {
            let (blob, diff_id, media) = l.blob();
            let media = if self.docker_media_types {
                "application/vnd.docker.image.rootfs.diff.tar.gzip".to_string()
            } else {
                media
            };
            let d = c.put_blob(repo, &blob).await?;
            let mut desc = serde_json::json!({"mediaType": media, "digest": d, "size": blob.len()});
            let annotations = l.annotations();
            if !annotations.is_empty() {
                desc["annotations"] = serde_json::Value::Object(annotations);
            }
            layer_descs.push(desc);
            diff_ids.push(diff_id);
            layer_digests.push(d);
        }
        let config = serde_json::json!({
            "architecture": self.arch,
            "os": "linux",
            "config": self.config(),
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config = serde_json::to_vec(&config)?;
        let config_digest = c.put_blob(repo, &config).await?;
        let (mt, cmt) = if self.docker_media_types {
            (
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.docker.container.image.v1+json",
            )
        } else {
            (
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.oci.image.config.v1+json",
            )
        };
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": mt,
            "config": {"mediaType": cmt, "digest": config_digest, "size": config.len()},
            "layers": layer_descs,
        });
        Ok((
            serde_json::to_vec(&manifest)?,
            mt.to_string(),
            config_digest,
            layer_digests,
        ))
    }

    /// Pushes each image's manifest and an OCI index over them, tagged `tag`. The returned
    /// config and layers are those of the amd64 entry.
    pub async fn push_index(
        reg: &Registry,
        repo: &str,
        tag: &str,
        images: &[ImageBuilder],
    ) -> anyhow::Result<Pushed> {
        let c = Client::new(reg);
        let mut entries = Vec::new();
        let mut amd64 = None;
        for img in images {
            let (manifest, media, config, layers) = img.upload(&c, repo).await?;
            let d = sha256(&manifest);
            c.put_manifest(repo, &d, &media, manifest.clone()).await?;
            entries.push(serde_json::json!({"mediaType": media, "digest": d, "size": manifest.len(), "platform": {"architecture": img.arch, "os": "linux"}}));
            if img.arch == "amd64" {
                amd64 = Some((config, layers));
            }
        }
        let index = serde_json::to_vec(
            &serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries}),
        )?;
        let digest = sha256(&index);
        c.put_manifest(repo, tag, "application/vnd.oci.image.index.v1+json", index)
            .await?;
        let (config, layers) = amd64.unwrap_or_default();
        Ok(Pushed {
            digest,
            config,
            layers,
        })
    }
}

struct Client<'a> {
    http: reqwest::Client,
    reg: &'a Registry,
}

impl<'a> Client<'a> {
    fn new(reg: &'a Registry) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Client {
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("http client"),
            reg,
        }
    }

    fn req(&self, m: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(m, url);
        match &self.reg.auth {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        }
    }

    async fn put_blob(&self, repo: &str, data: &[u8]) -> anyhow::Result<String> {
        let digest = sha256(data);
        let base = format!("http://{}", self.reg.addr);
        let head = self
            .req(
                reqwest::Method::HEAD,
                &format!("{base}/v2/{repo}/blobs/{digest}"),
            )
            .send()
            .await?;
        if head.status().is_success() {
            return Ok(digest);
        }
        let r = self
            .req(
                reqwest::Method::POST,
                &format!("{base}/v2/{repo}/blobs/uploads/"),
            )
            .send()
            .await?;
        anyhow::ensure!(r.status().as_u16() == 202, "start upload: {}", r.status());
        let loc = r
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| anyhow::anyhow!("no upload location"))?;
        let loc = if loc.starts_with("http") {
            loc.to_string()
        } else {
            format!("{base}{loc}")
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = self
            .req(reqwest::Method::PUT, &format!("{loc}{sep}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await?;
        anyhow::ensure!(
            r.status().as_u16() == 201,
            "finish upload: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
        Ok(digest)
    }

    async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<()> {
        let url = format!("http://{}/v2/{repo}/manifests/{reference}", self.reg.addr);
        let r = self
            .req(reqwest::Method::PUT, &url)
            .header("content-type", media)
            .body(body)
            .send()
            .await?;
        anyhow::ensure!(
            r.status().as_u16() == 201,
            "put manifest {repo}:{reference}: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
        Ok(())
    }
}

/// Deterministic pseudo-random bytes (incompressible test data without a rand dependency).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Uploads `data` as a blob of `repo` (for tests that forge images); returns its digest.
pub async fn put_blob(reg: &Registry, repo: &str, data: &[u8]) -> anyhow::Result<String> {
    Client::new(reg).put_blob(repo, data).await
}

/// Puts `body` as the manifest `reference` (a tag or digest) of `repo`.
pub async fn put_manifest(
    reg: &Registry,
    repo: &str,
    reference: &str,
    media: &str,
    body: Vec<u8>,
) -> anyhow::Result<()> {
    Client::new(reg)
        .put_manifest(repo, reference, media, body)
        .await
}

/// GETs `/v2/<repo>/<kind>/<reference>` (`kind`: `manifests` or `blobs`), asking for OCI
/// manifests.
pub async fn get(
    reg: &Registry,
    repo: &str,
    kind: &str,
    reference: &str,
) -> anyhow::Result<Vec<u8>> {
    let c = Client::new(reg);
    let url = format!("http://{}/v2/{repo}/{kind}/{reference}", reg.addr);
    let r = c
        .req(reqwest::Method::GET, &url)
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "GET {url}: {}", r.status());
    Ok(r.bytes().await?.to_vec())
}

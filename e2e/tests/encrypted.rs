//! Encrypted images end to end: images encrypted by skopeo (ocicrypt, JWE) in the test
//! registry, pulled by berth with the node's keys and run in pods; wrong, missing and
//! stale keys, and layers altered after encryption.

use std::path::{Path, PathBuf};

use berth_cri_api::v1 as cri;
use berth_e2e::apps::{env_with, run_to_exit};
use berth_e2e::crypt::{KeyPairs, LayerFormat, skopeo_encrypt};
use berth_e2e::image::{get, put_blob, put_manifest};
use berth_e2e::{Compression, ImageBuilder, Layer, PodEnv};
use tonic::Code;

const SECRET: &str = "only the encrypted layer holds this\n";

struct World {
    env: PodEnv,
    keys: KeyPairs,
    keys_dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl World {
    /// A berth whose key directory holds the private keys `installed`, and the test image
    /// `berth-e2e/secret:plain` (busybox under a layer with the secret) in its registry.
    async fn start(installed: &[&str]) -> World {
        let keys = KeyPairs::new().unwrap();
        keys.rsa("rsa", 2048).unwrap();
        keys.ec("ec", "prime256v1").unwrap();
        keys.rsa("stranger", 3072).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let keys_dir = tmp.path().join("keys");
        keys.install(&keys_dir, installed).unwrap();
        let env = env_with(&format!(
            "[image_decryption]\nkeys_dir = \"{}\"\n",
            keys_dir.display()
        ))
        .await;
        World {
            env,
            keys,
            keys_dir,
            _tmp: tmp,
        }
    }

    fn image(&self, tag: &str) -> String {
        format!("{}/berth-e2e/secret:{tag}", self.env.registry.addr)
    }

    async fn push_plain(&self, layers: Vec<Layer>) {
        self.push_clear("plain", layers).await;
    }

    async fn push_clear(&self, tag: &str, layers: Vec<Layer>) {
        ImageBuilder::new(layers)
            .cmd(&["cat", "/secret/message"])
            .push(&self.env.registry, "berth-e2e/secret", Some(tag))
            .await
            .unwrap();
    }

    fn encrypt(&self, tag: &str, recipients: &[&str], format: LayerFormat) {
        self.encrypt_from("plain", tag, recipients, format);
    }

    fn encrypt_from(&self, from: &str, tag: &str, recipients: &[&str], format: LayerFormat) {
        skopeo_encrypt(
            &self.env.registry,
            &self.keys,
            &format!("berth-e2e/secret:{from}"),
            &format!("berth-e2e/secret:{tag}"),
            recipients,
            format,
        )
        .unwrap();
    }

    async fn manifest(&self, tag: &str) -> serde_json::Value {
        let raw = get(&self.env.registry, "berth-e2e/secret", "manifests", tag)
            .await
            .unwrap();
        serde_json::from_slice(&raw).unwrap()
    }

    async fn pull(&self, tag: &str) -> Result<String, tonic::Status> {
        self.env
            .cri
            .image
            .clone()
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: self.image(tag),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().image_ref)
    }

    async fn listed(&self) -> Vec<String> {
        self.env
            .cri
            .image
            .clone()
            .list_images(cri::ListImagesRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .images
            .into_iter()
            .flat_map(|i| i.repo_tags)
            .collect()
    }

    fn snapshots(&self) -> usize {
        count(&self.env.berth.root.join("snapshots"))
    }

    /// Runs the image's `cat /secret/message` in a pod and returns what it printed.
    async fn run(&self, tag: &str) -> String {
        let (code, out) =
            run_to_exit(&self.env, &format!("secret-{tag}"), &self.image(tag), &[]).await;
        assert_eq!(code, 0, "{out}");
        out
    }
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn layer_types(manifest: &serde_json::Value) -> Vec<String> {
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap().to_string())
        .collect()
}

fn secret_layers() -> Vec<Layer> {
    vec![
        Layer::busybox().unwrap(),
        Layer::new().file("secret/message", SECRET),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_skopeo_encrypted_runs_with_the_nodes_key() {
    let w = World::start(&["ec"]).await;
    w.push_plain(secret_layers()).await;
    // Two recipients, the node holds the second one's key.
    w.encrypt("two", &["rsa", "ec"], LayerFormat::AsSource);
    // One recipient the node has no key for (yet), layers recompressed with zstd.
    w.encrypt("zstd", &["rsa"], LayerFormat::Zstd);
    assert_eq!(
        layer_types(&w.manifest("two").await),
        ["application/vnd.oci.image.layer.v1.tar+gzip+encrypted"; 2]
    );
    assert_eq!(
        layer_types(&w.manifest("zstd").await),
        ["application/vnd.oci.image.layer.v1.tar+zstd+encrypted"; 2]
    );

    // Uncompressed layers stay uncompressed under encryption.
    w.push_clear(
        "clear-tar",
        secret_layers()
            .into_iter()
            .map(|l| l.compression(Compression::None))
            .collect(),
    )
    .await;
    w.encrypt_from("clear-tar", "tar", &["ec"], LayerFormat::Uncompressed);
    assert_eq!(
        layer_types(&w.manifest("tar").await),
        ["application/vnd.oci.image.layer.v1.tar+encrypted"; 2]
    );
    w.pull("tar").await.unwrap();
    assert_eq!(w.run("tar").await, SECRET);

    w.pull("two").await.unwrap();
    let info = w.env.cri.image_info(&w.image("two")).await.unwrap();
    assert_eq!(info["encrypted"], true, "{info}");
    assert_eq!(w.run("two").await, SECRET);

    let err = w.pull("zstd").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let msg = err.message();
    for part in [
        w.image("zstd").as_str(),
        "sha256:",
        &w.keys_dir.display().to_string(),
        "ec.pem",
    ] {
        assert!(msg.contains(part), "{part:?} missing from {msg:?}");
    }

    // Keys are read on every pull: the right one, added now, opens it.
    w.keys.install(&w.keys_dir, &["rsa"]).unwrap();
    w.pull("zstd").await.unwrap();
    assert_eq!(w.run("zstd").await, SECRET);
    w.env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_key_that_opens_it_nothing_is_stored() {
    let w = World::start(&["stranger"]).await;
    w.push_plain(secret_layers()).await;
    w.encrypt("rsa", &["rsa"], LayerFormat::AsSource);
    let snapshots = w.snapshots();

    let err = w.pull("rsa").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("stranger.pem"), "{err:?}");
    assert!(!w.listed().await.contains(&w.image("rsa")));
    assert_eq!(w.snapshots(), snapshots, "nothing unpacked");

    std::fs::remove_dir_all(&w.keys_dir).unwrap();
    let err = w.pull("rsa").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("no usable private key"), "{err:?}");
    assert_eq!(w.snapshots(), snapshots, "nothing unpacked");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_layer_altered_or_truncated_after_encryption_is_refused_and_nothing_is_kept() {
    let w = World::start(&["rsa"]).await;
    // One layer, a few hundred KiB: the altered byte lands mid-stream.
    w.push_plain(vec![
        Layer::new()
            .file("secret/message", SECRET)
            .file("secret/noise", berth_e2e::image::noise(300 << 10, 7)),
    ])
    .await;
    w.encrypt("rsa", &["rsa"], LayerFormat::AsSource);
    let genuine = w.manifest("rsa").await;
    let layer = genuine["layers"][0]["digest"].as_str().unwrap().to_string();
    let blob = get(&w.env.registry, "berth-e2e/secret", "blobs", &layer)
        .await
        .unwrap();
    let snapshots = w.snapshots();

    let mut altered = blob.clone();
    altered[blob.len() / 2] ^= 0x20;
    let truncated = blob[..blob.len() - 100].to_vec();
    for (tag, bytes) in [("altered", altered), ("truncated", truncated)] {
        // Whoever rewrote the blob also fixed its digest and size in a new manifest; only
        // the wrapped key's HMAC and plain digest can tell.
        let digest = put_blob(&w.env.registry, "berth-e2e/secret", &bytes)
            .await
            .unwrap();
        let mut m = genuine.clone();
        m["layers"][0]["digest"] = digest.clone().into();
        m["layers"][0]["size"] = bytes.len().into();
        put_manifest(
            &w.env.registry,
            "berth-e2e/secret",
            tag,
            "application/vnd.oci.image.manifest.v1+json",
            serde_json::to_vec(&m).unwrap(),
        )
        .await
        .unwrap();

        let err = w.pull(tag).await.unwrap_err();
        assert_eq!(err.code(), Code::DataLoss, "{tag}: {err:?}");
        assert!(err.message().contains("HMAC mismatch"), "{tag}: {err:?}");
        assert!(err.message().contains(&digest), "{tag}: {err:?}");
        assert!(!w.listed().await.contains(&w.image(tag)), "{tag}");
        assert_eq!(w.snapshots(), snapshots, "{tag}: nothing unpacked");
        let stored = w
            .env
            .berth
            .root
            .join("content/blobs/sha256")
            .join(digest.trim_start_matches("sha256:"));
        assert!(!stored.exists(), "{tag}: the blob was kept");
    }

    // The genuine image pulls: what failed was the tampering.
    w.pull("rsa").await.unwrap();
    assert_eq!(w.snapshots(), snapshots + 1);
}

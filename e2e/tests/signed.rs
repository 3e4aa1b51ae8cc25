//! Signed images: a signature policy (`[image_policy] path`, containers' policy.json) applied
//! to every pull, with signatures made here by cosign (keys it generates, no transparency
//! log) and pushed to the test registry, pulled through a hosts.toml mirror. Each case the
//! policy refuses is refused before anything of the image is stored.

use berth_cri_api::v1 as cri;
use berth_e2e::PodEnv;
use berth_e2e::apps::{app_image, groups_image};
use berth_e2e::cosign::{KeyPair, sig_tag};
use berth_e2e::image::{get, put_manifest};
use berth_e2e::net::TestNet;
use berth_e2e::pods::mirror_hosts;

async fn pull(env: &PodEnv, image: &str) -> Result<String, tonic::Status> {
    env.cri
        .image
        .clone()
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_policy_accepts_what_its_keys_signed_and_refuses_the_rest_before_storing_it() {
    let keys = tempfile::tempdir().unwrap();
    let a = KeyPair::generate(&keys.path().join("a")).unwrap();
    let b = KeyPair::generate(&keys.path().join("b")).unwrap();
    let a_pub = a.public();
    let policy = keys.path().join("policy.json");
    std::fs::write(
        &policy,
        serde_json::json!({
            "default": [{"type": "reject"}],
            "transports": {"docker": {
                "app.invalid/berth-e2e": [{
                    "type": "sigstoreSigned",
                    "keyPath": a_pub,
                    "signedIdentity": {"type": "matchRepository"}
                }],
                "app.invalid/berth-e2e/open": [{"type": "insecureAcceptAnything"}],
                "pause.invalid": [{"type": "insecureAcceptAnything"}]
            }}
        })
        .to_string(),
    )
    .unwrap();
    let env = PodEnv::start_with(
        TestNet::new().unwrap(),
        &format!("[image_policy]\npath = \"{}\"\n", policy.display()),
    )
    .await
    .unwrap();
    // The test registry is both the mirror and the server of app.invalid: a signature
    // neither has is not found (with an unreachable upstream it would be Unavailable).
    let hosts = mirror_hosts("app.invalid", &env.registry.addr).replace(
        "server = \"https://app.invalid\"",
        &format!("server = \"http://{}\"", env.registry.addr),
    );
    env.berth.hosts_toml("app.invalid", &hosts).unwrap();
    let reg = &env.registry;
    let push = |repo: &'static str, tag: &'static str, groups: bool| async move {
        let img = if groups { groups_image() } else { app_image() };
        // Each its own manifest, so that what is stored can be told apart.
        let mark = format!("BERTH_TEST_IMAGE={repo}:{tag}");
        img.env(&[mark.as_str()])
            .push(reg, &format!("berth-e2e/{repo}"), Some(tag))
            .await
            .unwrap()
            .digest
    };
    let signed = push("signed", "1", false).await;
    a.sign(
        &reg.addr,
        "berth-e2e/signed",
        &signed,
        "app.invalid/berth-e2e/signed",
    )
    .unwrap();
    push("unsigned", "1", false).await;
    let other_key = push("otherkey", "1", false).await;
    b.sign(
        &reg.addr,
        "berth-e2e/otherkey",
        &other_key,
        "app.invalid/berth-e2e/otherkey",
    )
    .unwrap();
    let moved = push("moved", "1", false).await;
    a.sign(
        &reg.addr,
        "berth-e2e/moved",
        &moved,
        "app.invalid/berth-e2e/elsewhere",
    )
    .unwrap();
    // A signature of one image put where another's would be.
    let first = push("digest", "1", false).await;
    let second = push("digest", "2", true).await;
    a.sign(
        &reg.addr,
        "berth-e2e/digest",
        &first,
        "app.invalid/berth-e2e/digest",
    )
    .unwrap();
    let sig = get(reg, "berth-e2e/digest", "manifests", &sig_tag(&first))
        .await
        .unwrap();
    put_manifest(
        reg,
        "berth-e2e/digest",
        &sig_tag(&second),
        "application/vnd.oci.image.manifest.v1+json",
        sig,
    )
    .await
    .unwrap();
    // A signature whose bytes were changed.
    let tampered = push("tampered", "1", false).await;
    a.sign(
        &reg.addr,
        "berth-e2e/tampered",
        &tampered,
        "app.invalid/berth-e2e/tampered",
    )
    .unwrap();
    let sig = get(reg, "berth-e2e/tampered", "manifests", &sig_tag(&tampered))
        .await
        .unwrap();
    let mut m: serde_json::Value = serde_json::from_slice(&sig).unwrap();
    let s = m["layers"][0]["annotations"]["dev.cosignproject.cosign/signature"]
        .as_str()
        .unwrap()
        .to_string();
    // Another valid base64 signature of the same length: its first byte changed.
    let forged = if s.starts_with('M') {
        s.replacen('M', "N", 1)
    } else {
        format!("M{}", &s[1..])
    };
    m["layers"][0]["annotations"]["dev.cosignproject.cosign/signature"] = forged.into();
    put_manifest(
        reg,
        "berth-e2e/tampered",
        &sig_tag(&tampered),
        "application/vnd.oci.image.manifest.v1+json",
        serde_json::to_vec(&m).unwrap(),
    )
    .await
    .unwrap();
    push("open", "1", false).await;
    // Signed as an OCI 1.1 referrer: this registry has no referrers API, so cosign keeps the
    // referrers index at the `sha256-<hex>` tag (no `.sig` tag is made).
    let referrer = push("referrer", "1", false).await;
    a.sign_as_referrer(
        &reg.addr,
        "berth-e2e/referrer",
        &referrer,
        "app.invalid/berth-e2e/referrer",
    )
    .unwrap();
    assert!(
        get(reg, "berth-e2e/referrer", "manifests", &sig_tag(&referrer))
            .await
            .is_err()
    );

    // Signed by the policy's key, for its repository: pulled, and the image says how.
    let id = pull(&env, "app.invalid/berth-e2e/signed:1").await.unwrap();
    let st = env
        .cri
        .image
        .clone()
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: id,
                ..Default::default()
            }),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&st.info["info"]).unwrap();
    let verified = info["verified"].as_str().unwrap_or_default();
    assert!(
        verified.contains("app.invalid/berth-e2e")
            && verified.contains(&a_pub.display().to_string()),
        "{info}"
    );
    // A scope that accepts anything; a registry no scope names (the default: reject).
    pull(&env, "app.invalid/berth-e2e/open:1").await.unwrap();
    // The referrer's signature is found through the referrers tag fallback.
    pull(&env, "app.invalid/berth-e2e/referrer:1")
        .await
        .unwrap();

    for (image, says, digest) in [
        (
            "app.invalid/berth-e2e/unsigned:1",
            "has no cosign signature",
            None,
        ),
        (
            "app.invalid/berth-e2e/otherkey:1",
            "does not verify with the policy's keys",
            Some(&other_key),
        ),
        (
            "app.invalid/berth-e2e/moved:1",
            "claims identity app.invalid/berth-e2e/elsewhere",
            Some(&moved),
        ),
        (
            "app.invalid/berth-e2e/digest:2",
            "not this image's",
            Some(&second),
        ),
        (
            "app.invalid/berth-e2e/tampered:1",
            "does not verify with the policy's keys",
            Some(&tampered),
        ),
        (
            "other.invalid/berth-e2e/signed:1",
            "the scope rejects every image",
            None,
        ),
    ] {
        let e = pull(&env, image).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{image}: {e:?}");
        assert!(
            e.message()
                .contains(&format!("image {image} is not trusted"))
                && e.message().contains(says),
            "{image}: {}",
            e.message()
        );
        // Nothing of it was stored: not its manifest, not an image.
        if let Some(d) = digest {
            let blob = env
                .berth
                .root
                .join("content/blobs/sha256")
                .join(d.trim_start_matches("sha256:"));
            assert!(!blob.exists(), "{image}: its manifest was stored");
        }
    }
    let listed = env
        .cri
        .image
        .clone()
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    let tags: Vec<_> = listed.iter().flat_map(|i| i.repo_tags.clone()).collect();
    assert_eq!(tags.len(), 3, "{tags:?}");
    env.assert_clean();
}

/// Lazily pulled (eStargz) and encrypted images go through the same check, before the lazy
/// mount or the key unwrap: signed ones are pulled as such, unsigned ones refused.
#[tokio::test(flavor = "multi_thread")]
async fn lazily_pulled_and_encrypted_images_are_checked_too() {
    use berth_e2e::crypt::{KeyPairs, LayerFormat, skopeo_encrypt};
    use berth_e2e::{ImageBuilder, Layer};

    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(&dir.path().join("k")).unwrap();
    let crypt = KeyPairs::new().unwrap();
    crypt.rsa("node", 2048).unwrap();
    let node_keys = dir.path().join("node-keys");
    crypt.install(&node_keys, &["node"]).unwrap();
    let policy = dir.path().join("policy.json");
    let signed_by = serde_json::json!([{
        "type": "sigstoreSigned",
        "keyPath": key.public(),
        "signedIdentity": {"type": "matchRepository"}
    }]);
    std::fs::write(
        &policy,
        serde_json::json!({
            "default": [{"type": "reject"}],
            "transports": {"docker": {
                "lazy.invalid/berth-e2e": signed_by,
                "app.invalid/berth-e2e": signed_by,
                "pause.invalid": [{"type": "insecureAcceptAnything"}]
            }}
        })
        .to_string(),
    )
    .unwrap();
    let env = PodEnv::start_with(
        TestNet::new().unwrap(),
        &format!(
            "[image_policy]\npath = \"{}\"\n[image_decryption]\nkeys_dir = \"{}\"\n[lazy_pull]\nregistries = [\"lazy.invalid\"]\n",
            policy.display(),
            node_keys.display()
        ),
    )
    .await
    .unwrap();
    let reg = &env.registry;
    for host in ["lazy.invalid", "app.invalid"] {
        env.berth
            .hosts_toml(
                host,
                &format!(
                    "server = \"http://{0}\"\n[host.\"http://{0}\"]\ncapabilities = [\"pull\", \"resolve\"]\n",
                    reg.addr
                ),
            )
            .unwrap();
    }

    // eStargz: signed and unsigned (each its own manifest).
    let stargz = berth_e2e::stargz::convert(
        &Layer::new()
            .dir("app/")
            .file("app/hello", "hello, lazily\n"),
        &["app/hello"],
        0,
    )
    .unwrap();
    let mut lazy = vec![];
    for repo in ["lazy", "lazy-unsigned"] {
        let mark = format!("BERTH_TEST_IMAGE={repo}");
        lazy.push(
            ImageBuilder::new(vec![Layer::busybox().unwrap(), stargz.layer()])
                .env(&[mark.as_str()])
                .push(reg, &format!("berth-e2e/{repo}"), Some("1"))
                .await
                .unwrap()
                .digest,
        );
    }
    key.sign(
        &reg.addr,
        "berth-e2e/lazy",
        &lazy[0],
        "lazy.invalid/berth-e2e/lazy",
    )
    .unwrap();
    pull(&env, "lazy.invalid/berth-e2e/lazy:1").await.unwrap();
    let info = env
        .cri
        .image_info("lazy.invalid/berth-e2e/lazy:1")
        .await
        .unwrap();
    assert!(
        info["verified"]
            .as_str()
            .is_some_and(|v| v.contains("sigstoreSigned")),
        "{info}"
    );
    assert!(info["lazy"].is_object(), "not pulled lazily: {info}");
    let e = pull(&env, "lazy.invalid/berth-e2e/lazy-unsigned:1")
        .await
        .unwrap_err();
    assert!(e.message().contains("has no cosign signature"), "{e:?}");

    // Encrypted by skopeo: signed and unsigned.
    berth_e2e::apps::app_image()
        .push(reg, "berth-e2e/clear", Some("1"))
        .await
        .unwrap();
    for repo in ["enc", "enc-unsigned"] {
        skopeo_encrypt(
            reg,
            &crypt,
            "berth-e2e/clear:1",
            &format!("berth-e2e/{repo}:1"),
            &["node"],
            LayerFormat::AsSource,
        )
        .unwrap();
    }
    let manifest = get(reg, "berth-e2e/enc", "manifests", "1").await.unwrap();
    let digest = berth_e2e::image::sha256(&manifest);
    key.sign(
        &reg.addr,
        "berth-e2e/enc",
        &digest,
        "app.invalid/berth-e2e/enc",
    )
    .unwrap();
    pull(&env, "app.invalid/berth-e2e/enc:1").await.unwrap();
    let info = env
        .cri
        .image_info("app.invalid/berth-e2e/enc:1")
        .await
        .unwrap();
    assert_eq!(info["encrypted"], true, "{info}");
    assert!(info["verified"].is_string(), "{info}");
    let e = pull(&env, "app.invalid/berth-e2e/enc-unsigned:1")
        .await
        .unwrap_err();
    assert!(e.message().contains("has no cosign signature"), "{e:?}");
    env.assert_clean();
}

//! ImageService end to end: a real berth, a real registry, images built here.

use std::time::Duration;

use berth_cri_api::v1::{
    AuthConfig, ImageFilter, ImageFsInfoRequest, ImageSpec, ImageStatusRequest, ListImagesRequest,
    PullImageRequest, RemoveImageRequest,
};
use berth_e2e::image::{Pushed, noise};
use berth_e2e::{Berth, Compression, Cri, ImageBuilder, Layer, Registry, free_port};
use tonic::Code;

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

async fn pull(cri: &Cri, image: &str, auth: Option<AuthConfig>) -> Result<String, tonic::Status> {
    let mut c = cri.image.clone();
    c.pull_image(PullImageRequest {
        image: spec(image),
        auth,
        sandbox_config: None,
    })
    .await
    .map(|r| r.into_inner().image_ref)
}

async fn status(cri: &Cri, image: &str) -> Option<berth_cri_api::v1::Image> {
    let mut c = cri.image.clone();
    c.image_status(ImageStatusRequest {
        image: spec(image),
        verbose: false,
    })
    .await
    .expect("ImageStatus")
    .into_inner()
    .image
}

async fn remove(cri: &Cri, image: &str) {
    let mut c = cri.image.clone();
    c.remove_image(RemoveImageRequest { image: spec(image) })
        .await
        .expect("RemoveImage");
}

async fn list(cri: &Cri) -> Vec<berth_cri_api::v1::Image> {
    let mut c = cri.image.clone();
    c.list_images(ListImagesRequest { filter: None })
        .await
        .expect("ListImages")
        .into_inner()
        .images
}

fn files_under(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn busybox_image(reg: &Registry, repo: &str, tag: &str) -> Pushed {
    let layers = vec![
        Layer::busybox().unwrap(),
        Layer::new()
            .compression(Compression::Zstd)
            .file("etc/zstd-layer", "z"),
        Layer::new()
            .compression(Compression::None)
            .file("etc/plain-layer", "p")
            .file("etc/.wh.zstd-layer", ""),
    ];
    ImageBuilder::new(layers)
        .push(reg, repo, Some(tag))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_by_tag_and_digest_then_inspect_and_remove() {
    let reg = Registry::start().unwrap();
    let berth = Berth::start().unwrap();
    let cri = berth.cri().await.unwrap();
    let pushed = busybox_image(&reg, "e2e/busybox", "1").await;
    let name = format!("{}/e2e/busybox", reg.addr);

    let id = pull(&cri, &format!("{name}:1"), None).await.unwrap();
    assert_eq!(
        id, pushed.config,
        "PullImage returns the image id (config digest)"
    );
    let img = status(&cri, &format!("{name}:1"))
        .await
        .expect("image present");
    assert_eq!(img.id, pushed.config);
    assert_eq!(img.repo_tags, vec![format!("{name}:1")]);
    assert_eq!(img.repo_digests, vec![format!("{name}@{}", pushed.digest)]);
    assert!(
        img.size > 900_000,
        "size counts the compressed layers: {}",
        img.size
    );
    assert!(img.uid.is_none() && img.username.is_empty());
    assert!(!img.pinned);

    // The same image by digest, by id, by short id.
    assert_eq!(
        pull(&cri, &format!("{name}@{}", pushed.digest), None)
            .await
            .unwrap(),
        id
    );
    assert_eq!(status(&cri, &id).await.unwrap().id, id);
    assert_eq!(status(&cri, &id[7..19]).await.unwrap().id, id);
    assert_eq!(list(&cri).await.len(), 1);

    // The layers were unpacked as overlay layers: whiteout as a 0/0 char device, busybox
    // executable with its hard links.
    let snaps = berth.root.join("snapshots");
    let mut found = (false, false);
    for d in files_under(&snaps) {
        let fs = snaps.join(&d).join("fs");
        if let Ok(m) = std::fs::metadata(fs.join("bin/busybox")) {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            assert_eq!(m.permissions().mode() & 0o777, 0o755);
            assert!(m.nlink() >= 8);
            found.0 = true;
        }
        if let Ok(m) = std::fs::symlink_metadata(fs.join("etc/zstd-layer")) {
            use std::os::unix::fs::{FileTypeExt, MetadataExt};
            if m.file_type().is_char_device() {
                assert_eq!(m.rdev(), 0);
                found.1 = true;
            }
        }
    }
    assert_eq!(
        found,
        (true, true),
        "busybox layer and whiteout found under {}",
        snaps.display()
    );

    // Verbose status carries the image config.
    let mut c = cri.image.clone();
    let v = c
        .image_status(ImageStatusRequest {
            image: spec(&id),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&v.info["info"]).unwrap();
    assert_eq!(info["imageSpec"]["architecture"], "amd64");
    assert_eq!(info["imageSpec"]["config"]["Cmd"][0], "sh");

    let fs = c
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let used = fs.image_filesystems[0].used_bytes.as_ref().unwrap().value;
    assert!(used > 1_000_000, "used bytes {used}");

    // Filtered list.
    let filtered = c
        .list_images(ListImagesRequest {
            filter: Some(ImageFilter {
                image: spec(&format!("{name}:1")),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(filtered.len(), 1);
    let none = c
        .list_images(ListImagesRequest {
            filter: Some(ImageFilter {
                image: spec("absent:1"),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(none.is_empty());

    // Removing by id removes the image and collects its content and snapshots.
    remove(&cri, &id).await;
    assert!(status(&cri, &id).await.is_none());
    remove(&cri, &id).await; // idempotent
    assert!(list(&cri).await.is_empty());
    assert!(files_under(&berth.root.join("content/blobs/sha256")).is_empty());
    assert!(files_under(&snaps).is_empty());
    // Moved to the trash at once, deleted from there in the background.
    assert!(
        berth_e2e::wait_until(std::time::Duration::from_secs(10), || files_under(
            &berth.root.join("trash")
        )
        .is_empty()),
        "the trash was never emptied"
    );
    let fs = c
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        fs.image_filesystems[0].used_bytes.as_ref().unwrap().value,
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn image_user_is_reported() {
    let reg = Registry::start().unwrap();
    let berth = Berth::start().unwrap();
    let cri = berth.cri().await.unwrap();
    for (tag, user, uid, username) in [
        ("uid", "1002", Some(1002), ""),
        ("name", "www-data:1004", None, "www-data"),
        ("docker", "", None, ""),
    ] {
        let mut b =
            ImageBuilder::new(vec![Layer::new().file(&format!("marker-{tag}"), tag)]).user(user);
        if tag == "docker" {
            b = b.docker();
        }
        b.push(&reg, "e2e/user", Some(tag)).await.unwrap();
        let r = format!("{}/e2e/user:{tag}", reg.addr);
        pull(&cri, &r, None).await.unwrap();
        let img = status(&cri, &r).await.unwrap();
        assert_eq!(img.uid.map(|u| u.value), uid, "{tag}");
        assert_eq!(img.username, username, "{tag}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn index_selects_linux_amd64() {
    let reg = Registry::start().unwrap();
    let berth = Berth::start().unwrap();
    let cri = berth.cri().await.unwrap();
    let arm = ImageBuilder::new(vec![Layer::new().file("arch", "arm64")]).arch("arm64");
    let amd = ImageBuilder::new(vec![Layer::new().file("arch", "amd64")]).arch("amd64");
    let s390 = ImageBuilder::new(vec![Layer::new().file("arch", "s390x")]).arch("s390x");
    let pushed = ImageBuilder::push_index(&reg, "e2e/multi", "v1", &[arm, amd, s390])
        .await
        .unwrap();
    let r = format!("{}/e2e/multi:v1", reg.addr);
    assert_eq!(pull(&cri, &r, None).await.unwrap(), pushed.config);
    // The repo digest is the index's: what the tag resolved to.
    assert_eq!(
        status(&cri, &r).await.unwrap().repo_digests,
        vec![format!("{}/e2e/multi@{}", reg.addr, pushed.digest)]
    );

    let only_arm = ImageBuilder::new(vec![Layer::new().file("arch", "arm64")]).arch("arm64");
    ImageBuilder::push_index(&reg, "e2e/armonly", "v1", &[only_arm])
        .await
        .unwrap();
    let e = pull(&cri, &format!("{}/e2e/armonly:v1", reg.addr), None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("linux/amd64"), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread")]
async fn mirrors_fall_through_in_order_to_the_host_that_has_the_image() {
    let good = Registry::start().unwrap();
    let empty = Registry::start().unwrap();
    let down = free_port();
    let berth = Berth::start().unwrap();
    let cri = berth.cri().await.unwrap();
    let pushed = ImageBuilder::new(vec![Layer::new().file("hello", "mirror")])
        .push(&good, "e2e/app", Some("1"))
        .await
        .unwrap();

    berth
        .hosts_toml(
            "upstream.invalid",
            &format!(
                "server = \"https://upstream.invalid\"\n\n[host.\"http://127.0.0.1:{down}\"]\n  capabilities = [\"pull\", \"resolve\"]\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
                empty.addr, good.addr
            ),
        )
        .unwrap();
    let id = pull(&cri, "upstream.invalid/e2e/app:1", None)
        .await
        .unwrap();
    assert_eq!(id, pushed.config);
    let img = status(&cri, "upstream.invalid/e2e/app:1").await.unwrap();
    assert_eq!(
        img.repo_tags,
        vec!["upstream.invalid/e2e/app:1".to_string()]
    );
    // The empty mirror was asked first and answered 404; requests to mirrors carry ns=.
    assert!(
        empty
            .log()
            .contains("/v2/e2e/app/manifests/1?ns=upstream.invalid"),
        "{}",
        empty.log()
    );
    assert!(good.log().contains("ns=upstream.invalid"));

    // hosts.toml is read on every pull: with only the dead mirror left, the next pull fails,
    // naming every host it tried.
    berth
        .hosts_toml(
            "upstream.invalid",
            &format!(
                "server = \"http://127.0.0.1:{down}\"\n[host.\"http://{}\"]\n",
                empty.addr
            ),
        )
        .unwrap();
    let e = pull(&cri, "upstream.invalid/e2e/app:2", None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains(&empty.addr) && e.message().contains(&down.to_string()),
        "{}",
        e.message()
    );

    // A hosts.toml that does not parse is an error naming the file and line, not a fallback.
    berth.hosts_toml("upstream.invalid", "server = \"https://upstream.invalid\"\n[host.\"http://x\"]\ncapabilities = [\"pull\", \"fly\"]\n").unwrap();
    let e = pull(&cri, "upstream.invalid/e2e/app:1", None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("upstream.invalid/hosts.toml:3") && e.message().contains("fly"),
        "{}",
        e.message()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn override_path_mirror() {
    let reg = Registry::start().unwrap();
    let berth = Berth::start().unwrap();
    let cri = berth.cri().await.unwrap();
    let pushed = ImageBuilder::new(vec![Layer::new().file("hello", "override")])
        .push(&reg, "prefix/upstream.invalid/e2e/app", Some("1"))
        .await
        .unwrap();
    berth
        .hosts_toml(
            "upstream.invalid",
            &format!("server = \"https://upstream.invalid\"\n[host.\"http://{}/v2/prefix/upstream.invalid\"]\n  capabilities = [\"pull\", \"resolve\"]\n  override_path = true\n", reg.addr),
        )
        .unwrap();
    assert_eq!(
        pull(&cri, "upstream.invalid/e2e/app:1", None)
            .await
            .unwrap(),
        pushed.config
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_auth() {
    let reg = Registry::start_with_auth("berthuser", "s3cret-pass").unwrap();
    let berth = Berth::start().unwrap();
    let cri = berth.cri().await.unwrap();
    let pushed = ImageBuilder::new(vec![Layer::new().file("secret", "x")])
        .push(&reg, "e2e/private", Some("1"))
        .await
        .unwrap();
    let r = format!("{}/e2e/private:1", reg.addr);

    let e = pull(&cri, &r, None).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let wrong = AuthConfig {
        username: "berthuser".into(),
        password: "nope".into(),
        ..Default::default()
    };
    assert_eq!(
        pull(&cri, &r, Some(wrong)).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let other_host = AuthConfig {
        username: "berthuser".into(),
        password: "s3cret-pass".into(),
        server_address: "elsewhere.example".into(),
        ..Default::default()
    };
    assert_eq!(
        pull(&cri, &r, Some(other_host)).await.unwrap_err().code(),
        Code::Unauthenticated,
        "credentials for another server are not sent"
    );

    let good = AuthConfig {
        username: "berthuser".into(),
        password: "s3cret-pass".into(),
        ..Default::default()
    };
    assert_eq!(pull(&cri, &r, Some(good)).await.unwrap(), pushed.config);
    remove(&cri, &r).await;
    // The `auth` field: base64 user:password.
    let b64 = AuthConfig {
        auth: "YmVydGh1c2VyOnMzY3JldC1wYXNz".into(),
        server_address: format!("http://{}", reg.addr),
        ..Default::default()
    };
    assert_eq!(pull(&cri, &r, Some(b64)).await.unwrap(), pushed.config);
    let bad = AuthConfig {
        auth: "%%%".into(),
        ..Default::default()
    };
    assert_eq!(
        pull(&cri, &r, Some(bad)).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    assert!(
        !berth.log().contains("s3cret-pass"),
        "credentials must never be logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn images_survive_restart_and_are_not_fetched_again() {
    let reg = Registry::start().unwrap();
    let mut berth = Berth::start().unwrap();
    let pushed = busybox_image(&reg, "e2e/persist", "1").await;
    let r = format!("{}/e2e/persist:1", reg.addr);
    {
        let cri = berth.cri().await.unwrap();
        pull(&cri, &r, None).await.unwrap();
    }
    let before = list(&berth.cri().await.unwrap()).await;
    assert!(berth.stop().unwrap().success(), "clean exit on SIGTERM");
    assert!(!berth.socket.exists(), "socket removed on shutdown");
    berth.restart().unwrap();
    let cri = berth.cri().await.unwrap();
    assert_eq!(list(&cri).await, before);
    let gets: Vec<usize> = pushed.layers.iter().map(|l| reg.blob_gets(l)).collect();
    assert!(gets.iter().all(|&n| n == 1), "{gets:?}");
    // Pulling again after the restart fetches no layer again.
    pull(&cri, &r, None).await.unwrap();
    assert_eq!(
        pushed
            .layers
            .iter()
            .map(|l| reg.blob_gets(l))
            .collect::<Vec<_>>(),
        gets
    );
    remove(&cri, &r).await;
    assert!(list(&cri).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_layers_are_rejected_and_leave_nothing() {
    let reg = Registry::start().unwrap();
    let berth = Berth::start().unwrap();
    let cri = berth.cri().await.unwrap();
    let canary = tempfile::tempdir().unwrap();
    let target = canary.path().to_str().unwrap().to_string();
    let cases = [
        (
            "dotdot",
            Layer::new()
                .file("ok", "x")
                .file("../../../../escape", "evil"),
        ),
        (
            "symlink",
            Layer::new()
                .symlink("link", &target)
                .file("link/evil", "evil"),
        ),
        (
            "hardlink",
            Layer::new().hardlink("h", "../../../../../etc/passwd"),
        ),
    ];
    for (i, (tag, layer)) in cases.into_iter().enumerate() {
        // The first case has a large sibling layer still downloading when the hostile one
        // fails: the pull must stop it and wait for it before answering.
        let sibling = if i == 0 {
            Layer::new()
                .compression(Compression::None)
                .file("big", noise(48 << 20, 11))
        } else {
            Layer::busybox().unwrap()
        };
        ImageBuilder::new(vec![sibling, layer])
            .push(&reg, "e2e/evil", Some(tag))
            .await
            .unwrap();
        let e = pull(&cri, &format!("{}/e2e/evil:{tag}", reg.addr), None)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{tag}: {e:?}");
        assert!(e.message().contains("rejected"), "{tag}: {}", e.message());
    }
    assert!(
        files_under(canary.path()).is_empty(),
        "nothing written through the symlink"
    );
    assert!(!berth.root.join("escape").exists() && !std::path::Path::new("/escape").exists());
    assert!(list(&cri).await.is_empty());
    assert!(files_under(&berth.root.join("content/ingest")).is_empty());
    assert!(
        files_under(&berth.root.join("snapshots"))
            .iter()
            .all(|d| !d.starts_with("tmp-")),
        "no half-made snapshot left"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_pulls_fetch_each_blob_once() {
    let reg = Registry::start().unwrap();
    let berth = Berth::start().unwrap();
    let cri = berth.cri().await.unwrap();
    let layers = (0..4u64)
        .map(|i| {
            Layer::new()
                .compression(if i % 2 == 0 {
                    Compression::None
                } else {
                    Compression::Gzip
                })
                .file(&format!("data{i}"), noise(3 << 20, i))
        })
        .collect();
    let pushed = ImageBuilder::new(layers)
        .push(&reg, "e2e/big", Some("1"))
        .await
        .unwrap();
    let r = format!("{}/e2e/big:1", reg.addr);
    let by_digest = format!("{}/e2e/big@{}", reg.addr, pushed.digest);
    let (a, b, c) = tokio::join!(
        pull(&cri, &r, None),
        pull(&cri, &r, None),
        pull(&cri, &by_digest, None)
    );
    assert_eq!(
        (a.unwrap(), b.unwrap(), c.unwrap()),
        (
            pushed.config.clone(),
            pushed.config.clone(),
            pushed.config.clone()
        )
    );
    for l in pushed.layers.iter().chain([&pushed.config]) {
        assert_eq!(reg.blob_gets(l), 1, "blob {l} fetched once");
    }
    let img = status(&cri, &r).await.unwrap();
    assert_eq!(img.repo_digests.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_one_tag_keeps_the_others() {
    let reg = Registry::start().unwrap();
    let berth = Berth::start().unwrap();
    let cri = berth.cri().await.unwrap();
    let b = ImageBuilder::new(vec![Layer::new().file("same", "image")]);
    for t in ["t1", "t2", "t3"] {
        b.push(&reg, "e2e/tags", Some(t)).await.unwrap();
    }
    let names: Vec<String> = ["t1", "t2", "t3"]
        .iter()
        .map(|t| format!("{}/e2e/tags:{t}", reg.addr))
        .collect();
    let mut ids = Vec::new();
    for n in &names {
        ids.push(pull(&cri, n, None).await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "three tags, one image");
    let images = list(&cri).await;
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].repo_tags, names);

    remove(&cri, &names[0]).await;
    let img = status(&cri, &names[1]).await.expect("still there");
    assert_eq!(img.repo_tags, names[1..].to_vec());
    assert!(status(&cri, &names[0]).await.is_none());
    remove(&cri, &names[1]).await;
    remove(&cri, &names[2]).await;
    assert!(list(&cri).await.is_empty());
    assert!(
        files_under(&berth.root.join("content/blobs/sha256")).is_empty(),
        "content collected after the last tag"
    );

    // A tag that moves to a new image leaves the old image without it.
    pull(&cri, &names[0], None).await.unwrap();
    let new = ImageBuilder::new(vec![Layer::new().file("different", "image")])
        .push(&reg, "e2e/tags", Some("t1"))
        .await
        .unwrap();
    assert_eq!(pull(&cri, &names[0], None).await.unwrap(), new.config);
    let all = list(&cri).await;
    assert_eq!(all.len(), 2, "the old image stays, reachable by its digest");
    let old = all.iter().find(|i| i.id != new.config).unwrap();
    assert!(old.repo_tags.is_empty() && old.repo_digests.len() == 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_whose_caller_gives_up_stops_unless_another_caller_waits() {
    let reg = Registry::start().unwrap();
    let berth = Berth::start().unwrap();
    let cri = berth.cri().await.unwrap();
    let pushed = ImageBuilder::new(vec![
        Layer::new()
            .compression(Compression::Gzip)
            .file("big", noise(48 << 20, 7)),
    ])
    .push(&reg, "e2e/cancel", Some("1"))
    .await
    .unwrap();
    let r = format!("{}/e2e/cancel:1", reg.addr);
    let pull = |timeout: Option<Duration>| {
        let mut c = cri.image.clone();
        let r = r.clone();
        async move {
            let mut req = tonic::Request::new(PullImageRequest {
                image: spec(&r),
                auth: None,
                sandbox_config: None,
            });
            if let Some(t) = timeout {
                req.set_timeout(t);
            }
            c.pull_image(req).await
        }
    };
    // Alone, a pull whose client gave up stops: the image never arrives, and nothing of it
    // is left half written.
    // The caller's deadline is answered as gRPC says (DEADLINE_EXCEEDED, not tonic's own
    // CANCELLED), however short: critest pulls with 1 ms.
    // (A client that sends the deadline without enforcing it itself, to see berth's answer.)
    let mut bare = berth_e2e::berth::image_client_without_deadlines(&berth.socket)
        .await
        .unwrap();
    for t in [Duration::from_millis(1), Duration::from_millis(300)] {
        let mut req = tonic::Request::new(PullImageRequest {
            image: spec(&r),
            auth: None,
            sandbox_config: None,
        });
        req.set_timeout(t);
        let e = bare.pull_image(req).await.unwrap_err();
        assert_eq!(e.code(), Code::DeadlineExceeded, "{t:?}: {e:?}");
    }
    let stopped = berth_e2e::wait_until(Duration::from_secs(1), || {
        berth.log().contains("pull abandoned")
    });
    assert!(
        stopped,
        "the pull did not stop within 1 s of its caller leaving"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        status(&cri, &r).await.is_none(),
        "the pull went on after its only caller gave up"
    );
    let ingest: Vec<_> = std::fs::read_dir(berth.root.join("content/ingest"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(ingest.is_empty(), "partial downloads left: {ingest:?}");

    // With a second caller pulling the same image, the first one's leaving costs it nothing.
    let (gone, stays) = tokio::join!(pull(Some(Duration::from_millis(300))), pull(None));
    assert!(gone.is_err());
    assert_eq!(stays.unwrap().into_inner().image_ref, pushed.config);
    assert_eq!(status(&cri, &r).await.unwrap().id, pushed.config);
}

#[tokio::test(flavor = "multi_thread")]
async fn berth_killed_mid_pull_leaves_no_partial_content() {
    let reg = Registry::start().unwrap();
    let mut berth = Berth::start().unwrap();
    let pushed = ImageBuilder::new(vec![
        Layer::new()
            .compression(Compression::None)
            .file("huge", noise(96 << 20, 3)),
    ])
    .push(&reg, "e2e/kill", Some("1"))
    .await
    .unwrap();
    let r = format!("{}/e2e/kill:1", reg.addr);
    let cri = berth.cri().await.unwrap();
    let pulling = tokio::spawn({
        let cri = cri.clone();
        let r = r.clone();
        async move { pull(&cri, &r, None).await }
    });
    let ingest = berth.root.join("content/ingest");
    let started =
        berth_e2e::wait_until(Duration::from_secs(20), || !files_under(&ingest).is_empty());
    assert!(started, "the layer download began");
    berth.kill();
    assert!(pulling.await.unwrap().is_err());
    berth.restart().unwrap();
    assert!(
        files_under(&ingest).is_empty(),
        "no half-written blob after restart"
    );
    assert!(
        files_under(&berth.root.join("content/blobs/sha256")).is_empty(),
        "nothing unverified became visible"
    );
    assert!(files_under(&berth.root.join("snapshots")).is_empty());
    let cri = berth.cri().await.unwrap();
    assert!(list(&cri).await.is_empty());
    assert_eq!(pull(&cri, &r, None).await.unwrap(), pushed.config);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_the_right_codes() {
    let reg = Registry::start().unwrap();
    let berth = Berth::start().unwrap();
    let cri = berth.cri().await.unwrap();
    for (image, code) in [
        ("", Code::InvalidArgument),
        ("Upper/Case", Code::InvalidArgument),
        ("a b", Code::InvalidArgument),
        (
            "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            Code::InvalidArgument,
        ),
        (&format!("{}/e2e/absent:1", reg.addr), Code::NotFound),
        (
            &format!("127.0.0.1:{}/e2e/nohost:1", free_port()),
            Code::Unavailable,
        ),
    ] {
        let e = pull(&cri, image, None).await.unwrap_err();
        assert_eq!(e.code(), code, "{image:?}: {e:?}");
        assert!(!e.message().is_empty());
    }
    let mut c = cri.image.clone();
    assert_eq!(
        c.image_status(ImageStatusRequest {
            image: None,
            verbose: false
        })
        .await
        .unwrap_err()
        .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        c.remove_image(RemoveImageRequest { image: spec("") })
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert!(status(&cri, "never/pulled:1").await.is_none());
    remove(&cri, "never/pulled:1").await;
    // The store is unharmed by all of that.
    assert!(list(&cri).await.is_empty());
}

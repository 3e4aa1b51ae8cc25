//! Hostile input: images whose files are traps, requests whose strings are too long or
//! shaped to escape, ExecSync calls whose caller walks away or whose output is huge, and a
//! registry mirror that accepts connections and never answers. None may freeze berth, grow
//! it without bound, write outside what a pod owns, or leave anything behind.

use std::time::{Duration, Instant};

use berth_cri_api::v1 as cri;
use berth_e2e::apps::{create, ctr, env_with, start, status};
use berth_e2e::pods::pod_config;
use berth_e2e::{ImageBuilder, Layer, wait_until};
use tonic::Code;

/// The app image with `/etc/passwd` replaced by a FIFO in a layer of its own, and a named
/// user (so that berth must read the file to resolve it).
fn fifo_passwd_image() -> ImageBuilder {
    ImageBuilder::new(vec![
        Layer::busybox().unwrap(),
        Layer::new().fifo("etc/passwd"),
    ])
    .cmd(&["/bin/sleep", "3600"])
    .user("www-data")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fifo_in_an_image_never_blocks_another_call() {
    let env = env_with("").await;
    fifo_passwd_image()
        .push(&env.registry, "berth-e2e/fifo", Some("1"))
        .await
        .unwrap();
    let image = "app.invalid/berth-e2e/fifo:1";
    env.cri.pull(image).await.unwrap();
    let pcfg = pod_config("fifo");
    let pod = env.run(pcfg.clone()).await.unwrap();

    // Two at once: each would hold an async worker (this machine has two) if its read of the
    // FIFO blocked.
    let mut c1 = ctr("trap1", &["sleep", "1"]);
    c1.image.as_mut().unwrap().image = image.into();
    let mut c2 = ctr("trap2", &["sleep", "1"]);
    c2.image.as_mut().unwrap().image = image.into();
    let t0 = Instant::now();
    let both = async {
        tokio::join!(
            tokio::time::timeout(Duration::from_secs(10), create(&env, &pod, &pcfg, c1)),
            tokio::time::timeout(Duration::from_secs(10), create(&env, &pod, &pcfg, c2)),
        )
    };
    let list = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            env.cri
                .runtime
                .clone()
                .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }),
        )
        .await;
        (r.is_ok_and(|r| r.is_ok()), t.elapsed())
    };
    let ((r1, r2), (listed, list_took)) = tokio::join!(both, list);
    for r in [r1, r2] {
        let e = r
            .expect("CreateContainer hung on the image's FIFO")
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("FIFO"), "{e:?}");
    }
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(
        listed,
        "ListPodSandbox did not answer while the creates ran"
    );
    assert!(list_took < Duration::from_secs(1), "{list_took:?}");

    env.stop(&pod).await.unwrap();
    env.remove(&pod).await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn seccomp_profiles_that_are_not_regular_files_are_refused_at_once() {
    let env = env_with("").await;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("profile.json");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    for path in [fifo.display().to_string(), "/dev/zero".to_string()] {
        let profile = cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::Localhost as i32,
            localhost_ref: path.clone(),
        };
        // The pod's own profile.
        let mut pcfg = pod_config("seccomp");
        pcfg.linux.as_mut().unwrap().security_context = Some(cri::LinuxSandboxSecurityContext {
            seccomp: Some(profile.clone()),
            ..Default::default()
        });
        let t0 = Instant::now();
        let e = tokio::time::timeout(Duration::from_secs(10), env.run(pcfg))
            .await
            .expect("RunPodSandbox hung on the profile")
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{path}: {e:?}");
        assert!(e.message().contains("not a regular file"), "{e:?}");
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());

        // A container's.
        let pcfg = pod_config("seccomp-ctr");
        let pod = env.run(pcfg.clone()).await.unwrap();
        let mut c = ctr("c", &["sleep", "1"]);
        c.linux.as_mut().unwrap().security_context = Some(cri::LinuxContainerSecurityContext {
            seccomp: Some(profile),
            ..Default::default()
        });
        let e = tokio::time::timeout(Duration::from_secs(10), create(&env, &pod, &pcfg, c))
            .await
            .expect("CreateContainer hung on the profile")
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{path}: {e:?}");
        env.stop(&pod).await.unwrap();
        env.remove(&pod).await.unwrap();
    }
    env.assert_clean();
}

/// cgroup directories named `name` directly under any hierarchy's root.
fn cgroups_named(name: &str) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    let root = std::path::Path::new("/sys/fs/cgroup");
    let mut hierarchies = vec![root.to_path_buf()];
    hierarchies.extend(
        std::fs::read_dir(root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path()),
    );
    for h in hierarchies {
        if h.join(name).exists() {
            out.push(h.join(name));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_request_strings_are_refused_with_short_messages() {
    let env = env_with("").await;
    let mut rt = env.cri.runtime.clone();

    // A 10 KB name is refused, and the message stays small (it is a gRPC trailer).
    let pcfg = pod_config("strings");
    let pod = env.run(pcfg.clone()).await.unwrap();
    let long = "n".repeat(10_000);
    let e = create(&env, &pod, &pcfg, ctr(&long, &["true"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().len() < 300, "{} bytes", e.message().len());
    let mut p = pod_config("x");
    p.metadata.as_mut().unwrap().name = long.clone();
    let e = env.run(p).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().len() < 300, "{} bytes", e.message().len());
    // Ids that name nothing: quoted back cut, Remove is still idempotent.
    let e = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: long.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().len() < 300, "{} bytes", e.message().len());
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: long.clone(),
    })
    .await
    .unwrap();

    // A cgroup parent that climbs out of the hierarchy.
    let evil = format!("berth-evil-{}", std::process::id());
    let mut p = pod_config("cgroup");
    p.linux.as_mut().unwrap().cgroup_parent = format!("../../../../{evil}");
    let e = env.run(p).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        cgroups_named(&evil).is_empty(),
        "{:?}",
        cgroups_named(&evil)
    );

    // A DNS server with a line of its own in it.
    let mut p = pod_config("dns");
    p.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.0.0.1\nnameserver 6.6.6.6".into()],
        ..Default::default()
    });
    let e = env.run(p).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("dns_config.servers"), "{e:?}");

    // Relative paths would resolve against berth's own working directory.
    let mut p = pod_config("logs");
    p.log_directory = "var/log/pods".into();
    let e = env.run(p).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let mut c = ctr("mnt", &["true"]);
    c.mounts = vec![cri::Mount {
        container_path: "/data".into(),
        host_path: "etc".into(),
        ..Default::default()
    }];
    let e = create(&env, &pod, &pcfg, c).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("host_path"), "{e:?}");

    env.stop(&pod).await.unwrap();
    env.remove(&pod).await.unwrap();
    env.assert_clean();
}

/// Processes whose command line is `sleep <tag>`.
fn sleepers(tag: &str) -> Vec<u32> {
    let mut v = berth_e2e::processes(&["sleep", tag]);
    v.extend(berth_e2e::processes(&["/bin/sleep", tag]));
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_sync_dies_with_its_caller_and_big_output_is_cut_not_failed() {
    let env = env_with("").await;
    let pcfg = pod_config("exec");
    let pod = env.run(pcfg.clone()).await.unwrap();
    let id = create(&env, &pod, &pcfg, ctr("c", &["sleep", "3600"]))
        .await
        .unwrap();
    start(&env, &id).await;

    // No timeout of its own (0), and a caller that gives up after a second: the process must
    // not outlive the call.
    let mut req = tonic::Request::new(cri::ExecSyncRequest {
        container_id: id.clone(),
        cmd: vec!["sleep".into(), "4711".into()],
        timeout: 0,
    });
    req.set_timeout(Duration::from_secs(1));
    let e = env.cri.runtime.clone().exec_sync(req).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{e:?}"
    );
    let gone = wait_until(Duration::from_secs(3), || sleepers("4711").is_empty());
    assert!(gone, "the exec outlived its caller: {:?}", sleepers("4711"));

    // 20 MB on stdout: the reply carries what fits in a gRPC message instead of failing.
    // Read as the kubelet reads: its CRI client accepts messages of up to 16 MiB.
    let r = env
        .cri
        .runtime
        .clone()
        .max_decoding_message_size(16 << 20)
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: ["sh", "-c", "head -c 20000000 /dev/zero; echo done >&2"]
                .map(String::from)
                .to_vec(),
            timeout: 30,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.exit_code, 0);
    assert_eq!(r.stdout.len(), berth_sandbox::container::EXEC_OUTPUT_LIMIT);
    assert_eq!(r.stderr, b"done\n");
    assert_eq!(
        status(&env, &id).await.state,
        cri::ContainerState::ContainerRunning as i32
    );

    env.stop(&pod).await.unwrap();
    env.remove(&pod).await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mirror_that_never_answers_costs_one_header_timeout_per_pull() {
    let env = env_with("[registry]\nresponse_header_timeout_seconds = 2\n").await;
    // Accepts connections, reads nothing, answers nothing.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_addr = hung.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    let holder = tokio::spawn(async move {
        let mut held = vec![];
        while let Ok((s, _)) = hung.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            held.push(s);
        }
    });
    // The hung mirror first, then the test registry, then the (unreachable) upstream.
    env.berth
        .hosts_toml(
            "slow.invalid",
            &format!(
                "server = \"https://slow.invalid\"\n\
                 [host.\"http://{hung_addr}\"]\ncapabilities = [\"pull\", \"resolve\"]\n\
                 [host.\"http://{}\"]\ncapabilities = [\"pull\", \"resolve\"]\n",
                env.registry.addr
            ),
        )
        .unwrap();
    let t0 = Instant::now();
    let image = "slow.invalid/berth-e2e/app:1";
    let r = tokio::time::timeout(Duration::from_secs(30), env.cri.pull(image))
        .await
        .expect("the pull waited far longer than the header timeout");
    r.unwrap();
    let took = t0.elapsed();
    // One request went to the hung mirror and waited 2 s; every later request of the pull
    // skipped it.
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::Relaxed), 1);
    holder.abort();
}

//! Pods in user namespaces of their own (`hostUsers: false`, CRI NamespaceMode POD), under
//! the `runc` handler with the current runc scripts/install-runc.sh builds and under the
//! default `crun` handler (Debian's crun 1.8.1: berth idmaps the binds); Debian's runc 1.1.5
//! cannot, and berth refuses such pods on it.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use berth_cri_api::v1 as cri;
use berth_e2e::apps::{
    create, ctr, env_with, exec, in_userns, pod_userns, runtime_status, start, with_pod_namespaces,
};
use berth_e2e::pods::pod_config;
use tonic::Code;

const HOST_ID: u32 = 200_000;
const SIZE: u32 = 65_536;

fn mapping(container_id: u32, host_id: u32, length: u32) -> cri::IdMapping {
    cri::IdMapping {
        host_id,
        container_id,
        length,
    }
}

fn userns(mode: cri::NamespaceMode, uids: Vec<cri::IdMapping>) -> cri::UserNamespace {
    cri::UserNamespace {
        mode: mode as i32,
        gids: uids.clone(),
        uids,
    }
}

fn own(host_id: u32) -> cri::UserNamespace {
    pod_userns(host_id, SIZE)
}

/// A pod config whose namespace options ask for `u`.
fn pod_in(name: &str, u: cri::UserNamespace) -> cri::PodSandboxConfig {
    in_userns(pod_config(name), u)
}

/// A container config asking for the pod's namespace options, as the kubelet sends it.
fn ctr_in(pcfg: &cri::PodSandboxConfig, name: &str, cmd: &[&str]) -> cri::ContainerConfig {
    with_pod_namespaces(ctr(name, cmd), pcfg)
}

fn require_runc() {
    berth_e2e::tools::require(&berth_e2e::tools::runc(), "install-runc.sh").unwrap();
}

fn host_uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

async fn out(env: &berth_e2e::PodEnv, id: &str, cmd: &[&str]) -> (i32, String) {
    let r = exec(env, id, cmd, 20).await.unwrap();
    (
        r.exit_code,
        format!(
            "{}{}",
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_root_of_a_pod_in_its_own_user_namespace_is_nobody_on_the_host_under_runc() {
    a_pod_in_its_own_user_namespace("runc").await;
}

/// crun 1.8.1 makes the user namespace, berth idmaps the binds (see `userns::binds`).
#[tokio::test(flavor = "multi_thread")]
async fn the_root_of_a_pod_in_its_own_user_namespace_is_nobody_on_the_host_under_crun() {
    a_pod_in_its_own_user_namespace("crun").await;
}

/// What berth staged for a runtime that cannot idmap binds itself: nothing once each create
/// has returned.
fn staged_binds(env: &berth_e2e::PodEnv) -> Vec<std::ffi::OsString> {
    std::fs::read_dir(env.berth.state.join("idmap-binds"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default()
}

async fn a_pod_in_its_own_user_namespace(handler: &str) {
    require_runc();
    let mut env = env_with("").await;
    // The runc handler (a current runc) and the crun one (crun 1.8.1, binds idmapped by
    // berth) say they can.
    let st = runtime_status(&env).await;
    let can = |name: &str| {
        st.runtime_handlers
            .iter()
            .find(|h| h.name == name)
            .and_then(|h| h.features.as_ref())
            .is_some_and(|f| f.user_namespaces)
    };
    assert!(can("runc") && can("crun"), "{:?}", st.runtime_handlers);

    // A host directory owned by the host's root, mounted twice: idmapped (as the kubelet asks
    // for every volume of such a pod) and plain.
    let vol = tempfile::tempdir().unwrap();
    std::fs::write(vol.path().join("host-file"), "from the host\n").unwrap();
    let open = vol.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let pcfg = pod_in("userns", own(HOST_ID));
    let pod = env.run_with_handler(pcfg.clone(), handler).await.unwrap();
    let (pst, _) = env.status(&pod).await.unwrap();
    let reported = pst
        .linux
        .and_then(|l| l.namespaces)
        .and_then(|n| n.options)
        .and_then(|o| o.userns_options)
        .unwrap();
    assert_eq!(reported, own(HOST_ID));
    let mut c = ctr_in(&pcfg, "app", &["sleep", "3600"]);
    let mnt = |at: &str, idmapped: bool| cri::Mount {
        container_path: at.into(),
        host_path: vol.path().display().to_string(),
        uid_mappings: if idmapped {
            vec![mapping(0, HOST_ID, SIZE)]
        } else {
            vec![]
        },
        gid_mappings: if idmapped {
            vec![mapping(0, HOST_ID, SIZE)]
        } else {
            vec![]
        },
        ..Default::default()
    };
    // An image volume (the app image itself), idmapped as the kubelet asks for every volume.
    let image_volume = cri::Mount {
        container_path: "/image".into(),
        readonly: true,
        image: Some(cri::ImageSpec {
            image: berth_e2e::apps::APP.into(),
            user_specified_image: berth_e2e::apps::APP.into(),
            ..Default::default()
        }),
        uid_mappings: vec![mapping(0, HOST_ID, SIZE)],
        gid_mappings: vec![mapping(0, HOST_ID, SIZE)],
        ..Default::default()
    };
    c.mounts = vec![mnt("/idmapped", true), mnt("/plain", false), image_volume];
    let id = create(&env, &pod, &pcfg, c).await.unwrap();
    assert_eq!(staged_binds(&env), Vec::<std::ffi::OsString>::new());
    start(&env, &id).await;

    // Inside: root, mapped onto the pod's range; the image's files are root's, and root can
    // write to them (the layers are idmapped, not chowned).
    let (code, uid_map) = out(&env, &id, &["cat", "/proc/self/uid_map"]).await;
    assert_eq!(code, 0);
    let fields: Vec<&str> = uid_map.split_whitespace().collect();
    assert_eq!(fields, ["0", "200000", "65536"], "{uid_map}");
    let (code, o) = out(
        &env,
        &id,
        &[
            "sh",
            "-c",
            "id -u && stat -c %u:%g /etc/passwd /bin/busybox && echo x >> /etc/passwd && touch /made-in-pod && stat -c %u /made-in-pod",
        ],
    )
    .await;
    assert_eq!((code, o.as_str()), (0, "0\n0:0\n0:0\n0\n"), "{o}");
    let (code, o) = out(&env, &id, &["sh", "-c", "stat -c %u /image/bin/busybox"]).await;
    assert_eq!((code, o.as_str()), (0, "0\n"), "{o}");
    // The image's layer on the host is untouched: still the host root's, unchanged.
    let layer_passwd = std::fs::read_dir(env.berth.root.join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("fs/etc/passwd"))
        .find(|p| p.exists() && std::fs::symlink_metadata(p).is_ok_and(|m| m.uid() == 0))
        .expect("the image's /etc/passwd in a layer");
    assert!(
        !std::fs::read_to_string(&layer_passwd)
            .unwrap()
            .ends_with("x\n")
    );

    // Outside: the pod's processes run as the mapped id.
    // (The pause process runs as the pause image's user, 65535.)
    let pause = env.pid(&pod).await.unwrap();
    assert_eq!(host_uid_of(pause), HOST_ID + 65535);
    let (_, pid) = out(&env, &id, &["sh", "-c", "echo $PPID"]).await;
    assert!(!pid.trim().is_empty());
    let sleeper = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|p| {
            std::fs::read_link(format!("/proc/{p}/ns/user")).ok()
                == std::fs::read_link(format!("/proc/{pause}/ns/user")).ok()
                && std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| c.starts_with("sleep\0"))
        })
        .expect("the container's sleep in the pod's user namespace");
    assert_eq!(host_uid_of(sleeper), HOST_ID);

    // A plain mount shows the host root's files as nobody's, the pod's root cannot write
    // to the host root's directory, and what it makes in a world-writable one is the mapped
    // id's on the host; through the idmapped mount the host root's files are the pod root's,
    // and what it makes is the host root's.
    let (code, o) = out(
        &env,
        &id,
        &[
            "sh",
            "-c",
            "stat -c %u /plain/host-file /idmapped/host-file; touch /plain/denied 2>&1; touch /plain/open/plain-made /idmapped/idmapped-made && echo ok",
        ],
    )
    .await;
    assert_eq!(
        (code, o.as_str()),
        (0, "65534\n0\ntouch: /plain/denied: Permission denied\nok\n"),
        "{o}"
    );
    let owner = |f: &str| std::fs::metadata(vol.path().join(f)).unwrap().uid();
    assert_eq!(owner("open/plain-made"), HOST_ID);
    assert_eq!(owner("idmapped-made"), 0);

    // berth crashes and comes back: the pod is still served (exec in it, a new container).
    env.berth.kill();
    std::thread::sleep(Duration::from_millis(300));
    env.berth.restart().unwrap();
    env.reconnect().await.unwrap();
    let (code, o) = out(&env, &id, &["id", "-u"]).await;
    assert_eq!((code, o.as_str()), (0, "0\n"));
    let late = create(&env, &pod, &pcfg, ctr_in(&pcfg, "late", &["sleep", "3600"]))
        .await
        .unwrap();
    start(&env, &late).await;
    let (code, o) = out(&env, &late, &["sh", "-c", "cat /proc/self/uid_map"]).await;
    assert_eq!(code, 0, "{o}");
    assert!(o.contains("200000"), "{o}");

    // Port-forward reaches a server in the pod's network namespace (made inside its user
    // namespace), its log is written, its stats are read.
    let logs = tempfile::tempdir().unwrap();
    let mut web_cfg = pod_in("userns-web", own(2 * HOST_ID));
    web_cfg.log_directory = logs.path().display().to_string();
    let web_pod = env
        .run_with_handler(web_cfg.clone(), handler)
        .await
        .unwrap();
    let web = create(
        &env,
        &web_pod,
        &web_cfg,
        ctr_in(
            &web_cfg,
            "web",
            &["sh", "-c", "echo serving; exec httpd -f -p 8080 -h /www"],
        ),
    )
    .await
    .unwrap();
    start(&env, &web).await;
    let url = berth_e2e::apps::port_forward_url(&env, &web_pod, &[])
        .await
        .unwrap();
    let (session, _) = berth_stream::client::spdy_connect(&url, &["portforward.k8s.io"])
        .await
        .unwrap();
    let mut served = String::new();
    for i in 0..50 {
        let mut f = berth_stream::client::spdy_forward(&session, 8080, i)
            .await
            .unwrap();
        f.to_pod
            .send(bytes::Bytes::from_static(
                b"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
            ))
            .await
            .unwrap();
        let mut got = Vec::new();
        while let Ok(Some(b)) =
            tokio::time::timeout(Duration::from_secs(10), f.from_pod.recv()).await
        {
            got.extend_from_slice(&b);
        }
        served = String::from_utf8_lossy(&got).into_owned();
        if served.contains("hello over localhost") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served.contains("hello over localhost"), "{served}");
    // What the container printed reaches its log soon after, not at once.
    let log_path = logs.path().join("web.log");
    let logged = berth_e2e::wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains(" stdout F serving"))
    });
    assert!(logged, "{:?}", std::fs::read_to_string(&log_path));
    let stats = env
        .cri
        .runtime
        .clone()
        .container_stats(cri::ContainerStatsRequest {
            container_id: web.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert!(
        stats
            .memory
            .and_then(|m| m.working_set_bytes)
            .is_some_and(|v| v.value > 0),
        "{stats:?}"
    );

    for p in [&pod, &web_pod] {
        env.stop(p).await.unwrap();
        env.remove(p).await.unwrap();
    }
    env.assert_clean();
    let views: Vec<_> = std::fs::read_dir(env.berth.state.join("idmap"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(views.is_empty(), "idmapped views left: {views:?}");
    assert_eq!(staged_binds(&env), Vec::<std::ffi::OsString>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn user_namespaces_a_handler_cannot_make_or_that_are_malformed_are_refused() {
    require_runc();
    // Debian's runc 1.1.5: no `features` command, no idmapped mounts.
    let env = env_with(&format!(
        "{}[runtime.handlers.old-runc]\nruntime_type = \"io.containerd.berth.v1\"\noptions = {{ BinaryName = \"/usr/sbin/runc\" }}\n",
        berth_e2e::pods::BENCH_HANDLERS
    ))
    .await;
    let refused = |r: Result<String, tonic::Status>, want: &str| {
        let e = r.expect_err(want);
        assert_eq!(e.code(), Code::InvalidArgument, "{want}: {e:?}");
        assert!(e.message().contains(want), "{want}: {}", e.message());
    };

    // A handler whose runtime cannot: named, never silently run in the host's namespace.
    refused(
        env.run_with_handler(pod_in("on-old-runc", own(HOST_ID)), "old-runc")
            .await,
        "runtime handler \"old-runc\" cannot run pods in user namespaces",
    );
    // Malformed requests, as critest sends them and worse.
    let p = cri::NamespaceMode::Pod;
    for (name, u, want) in [
        (
            "two-mappings",
            userns(
                p,
                vec![mapping(0, HOST_ID, 10), mapping(0, 2 * HOST_ID, 10)],
            ),
            "exactly one mapping",
        ),
        (
            "root-unmapped",
            userns(p, vec![mapping(1, HOST_ID, SIZE)]),
            "start at id 0",
        ),
        (
            "host-root",
            userns(p, vec![mapping(0, 0, SIZE)]),
            "host's root",
        ),
        (
            "past-the-end",
            userns(p, vec![mapping(0, u32::MAX - 5, SIZE)]),
            "past the last id",
        ),
        (
            "container-mode",
            userns(cri::NamespaceMode::Container, vec![]),
            "mode CONTAINER is not supported",
        ),
        (
            "target-mode",
            userns(cri::NamespaceMode::Target, vec![]),
            "mode TARGET is not supported",
        ),
        (
            "node-with-mappings",
            userns(cri::NamespaceMode::Node, vec![mapping(0, HOST_ID, SIZE)]),
            "mode NODE takes no uids",
        ),
    ] {
        refused(env.run_with_handler(pod_in(name, u), "runc").await, want);
    }
    // With the node's network namespace.
    let mut host_net = pod_in("host-net", own(HOST_ID));
    host_net
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
        .unwrap()
        .network = cri::NamespaceMode::Node as i32;
    refused(
        env.run_with_handler(host_net, "runc").await,
        "cannot use the node's network namespace",
    );

    // Two pods may not share host ids; the same pod's next sandbox may.
    let pcfg = pod_in("first", own(HOST_ID));
    let pod = env.run_with_handler(pcfg.clone(), "runc").await.unwrap();
    refused(
        env.run_with_handler(pod_in("overlapping", own(HOST_ID + SIZE - 1)), "runc")
            .await,
        "overlap those of pod e2e/first",
    );
    let mut again = pcfg.clone();
    again.metadata.as_mut().unwrap().attempt = 1;
    let second = env.run_with_handler(again, "runc").await.unwrap();
    env.stop(&second).await.unwrap();
    env.remove(&second).await.unwrap();

    // Containers must ask for their pod's namespace, and idmap mounts with its mappings.
    let mut other = ctr_in(&pod_in("x", own(HOST_ID * 2)), "other", &["true"]);
    refused(
        create(&env, &pod, &pcfg, other.clone()).await,
        "differ from its pod's",
    );
    other = ctr_in(&pcfg, "mount", &["true"]);
    let vol = tempfile::tempdir().unwrap();
    other.mounts = vec![cri::Mount {
        container_path: "/v".into(),
        host_path: vol.path().display().to_string(),
        uid_mappings: vec![mapping(0, 5 * HOST_ID, SIZE)],
        gid_mappings: vec![mapping(0, 5 * HOST_ID, SIZE)],
        ..Default::default()
    }];
    refused(
        create(&env, &pod, &pcfg, other).await,
        "must be those of the pod's user namespace",
    );
    // And a pod in the node's namespace cannot idmap a mount.
    let plain = pod_config("plain");
    let plain_pod = env.run_with_handler(plain.clone(), "runc").await.unwrap();
    let mut m = ctr_in(&plain, "idmap", &["true"]);
    m.mounts = vec![cri::Mount {
        container_path: "/v".into(),
        host_path: vol.path().display().to_string(),
        uid_mappings: vec![mapping(0, HOST_ID, SIZE)],
        gid_mappings: vec![mapping(0, HOST_ID, SIZE)],
        ..Default::default()
    }];
    refused(
        create(&env, &plain_pod, &plain, m).await,
        "the pod runs in the node's",
    );

    for p in [pod, plain_pod] {
        env.stop(&p).await.unwrap();
        env.remove(&p).await.unwrap();
    }
    env.assert_clean();
}

/// Binds berth staged for crun and did not release because it died in between: the orphan
/// sweep after a restart releases those of a container it never recorded, the container's
/// removal those of one it did; what they bound is never touched.
#[tokio::test(flavor = "multi_thread")]
async fn staged_binds_a_crash_left_are_released_and_their_sources_kept() {
    require_runc();
    let mut env = env_with("").await;
    let pcfg = pod_in("left", own(HOST_ID));
    let pod = env.run_with_handler(pcfg.clone(), "crun").await.unwrap();
    let id = create(&env, &pod, &pcfg, ctr_in(&pcfg, "app", &["sleep", "3600"]))
        .await
        .unwrap();
    start(&env, &id).await;

    // What a berth killed between staging and releasing leaves: mounts of a volume, for the
    // recorded container and for one it never recorded.
    let volume = tempfile::tempdir().unwrap();
    std::fs::write(volume.path().join("data"), "user data\n").unwrap();
    let unknown = "ab".repeat(32);
    let parent = env.berth.state.join("idmap-binds");
    let staged = [parent.join(&id).join("0"), parent.join(&unknown).join("0")];
    for at in &staged {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .arg("--bind")
            .arg(volume.path())
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount --bind {}", at.display());
    }
    let mounted = |at: &std::path::Path| {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(at.to_str().unwrap()))
    };
    assert!(staged.iter().all(|at| mounted(at)));

    env.berth.kill();
    env.berth.restart().unwrap();
    env.reconnect().await.unwrap();
    assert!(
        berth_e2e::wait_until(Duration::from_secs(10), || !parent.join(&unknown).exists()),
        "the unknown container's staged binds were not released"
    );
    assert!(!mounted(&staged[1]));
    assert!(
        mounted(&staged[0]),
        "a recorded container's binds go with it"
    );
    let (code, o) = out(&env, &id, &["id", "-u"]).await;
    assert_eq!((code, o.as_str()), (0, "0\n"));

    env.stop(&pod).await.unwrap();
    env.remove(&pod).await.unwrap();
    assert!(!mounted(&staged[0]) && !parent.join(&id).exists());
    assert_eq!(
        std::fs::read_to_string(volume.path().join("data")).unwrap(),
        "user data\n"
    );
    env.assert_clean();
}

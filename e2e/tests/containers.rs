//! Containers end to end: real pods under Debian's runc shim, images built here from Debian's
//! static busybox, driven over CRI as the kubelet drives them.

use std::time::Duration;

use berth_cri_api::v1 as cri;
use berth_e2e::apps::{create, ctr, env_with, exec, runtime_status, start, status};
use berth_e2e::pods::pod_config;
use berth_e2e::wait_until;
use tonic::Code;

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

fn log_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn pod_with_logs(name: &str, dir: &std::path::Path) -> cri::PodSandboxConfig {
    let mut p = pod_config(name);
    p.log_directory = dir.display().to_string();
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn two_containers_share_localhost_and_exec_sync_reports_output_and_codes() {
    let env = env_with("").await;
    let logs = tempfile::tempdir().unwrap();
    let pcfg = pod_with_logs("web", logs.path());
    let pod = env.run(pcfg.clone()).await.unwrap();
    let server = create(
        &env,
        &pod,
        &pcfg,
        ctr("server", &["httpd", "-f", "-p", "8080", "-h", "/www"]),
    )
    .await
    .unwrap();
    let client = create(
        &env,
        &pod,
        &pcfg,
        ctr(
            "client",
            &["sh", "-c", "trap '' TERM; while true; do sleep 1; done"],
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        status(&env, &server).await.state,
        cri::ContainerState::ContainerCreated as i32
    );
    start(&env, &server).await;
    start(&env, &client).await;
    let st = status(&env, &server).await;
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
    assert!(st.started_at > 0);

    // The client reaches the server over the pod's shared loopback.
    let mut got = String::new();
    let ok = wait_until(Duration::from_secs(10), || {
        got = block_on(exec(
            &env,
            &client,
            &["wget", "-qO-", "http://127.0.0.1:8080/"],
            5,
        ))
        .map(|r| String::from_utf8_lossy(&r.stdout).into_owned())
        .unwrap_or_default();
        got == "hello over localhost\n"
    });
    assert!(ok, "client got {got:?}");
    // Both see the pod's hostname (shared UTS namespace).
    let h = exec(&env, &client, &["hostname"], 5).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&h.stdout), "web\n");

    // Stats. The image has no /proc, /sys, /dev or /etc/hostname: their mount points come
    // from the image's mount-point layer, so a container that wrote nothing has an empty
    // writable layer; one that wrote a file has it there.
    let mut rt = env.cri.runtime.clone();
    exec(&env, &client, &["sh", "-c", "echo data > /tmp/written"], 5)
        .await
        .unwrap();
    let stats = |id: &str| {
        let mut rt = rt.clone();
        let id = id.to_string();
        async move {
            rt.container_stats(cri::ContainerStatsRequest { container_id: id })
                .await
                .unwrap()
                .into_inner()
                .stats
                .unwrap()
        }
    };
    let layer = |s: &cri::ContainerStats| {
        let w = s.writable_layer.clone().unwrap();
        (w.used_bytes.unwrap().value, w.inodes_used.unwrap().value)
    };
    let s = stats(&server).await;
    assert_eq!(layer(&s), (0, 0), "server's writable layer: {s:?}");
    // The filesystem the kubelet looks the layer up by is the one ImageFsInfo reports.
    let image_fs = env
        .cri
        .image
        .clone()
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .image_filesystems;
    assert_eq!(
        s.writable_layer.as_ref().unwrap().fs_id,
        image_fs[0].fs_id,
        "{image_fs:?}"
    );
    let m = s.memory.unwrap();
    assert!(m.working_set_bytes.unwrap().value > 0);
    // No memory limit: nothing to say is available (containerd's answer too).
    assert_eq!(m.available_bytes.map(|v| v.value), Some(0));
    assert!(s.cpu.unwrap().usage_core_nano_seconds.unwrap().value > 0);
    let s = stats(&client).await;
    // /tmp (copied up) and the file.
    assert_eq!(layer(&s).1, 2, "client's writable layer: {s:?}");
    assert!(layer(&s).0 > 0);
    let all = rt
        .list_container_stats(cri::ListContainerStatsRequest {
            filter: Some(cri::ContainerStatsFilter {
                pod_sandbox_id: pod.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(all.len(), 2);

    let r = exec(
        &env,
        &client,
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
        5,
    )
    .await
    .unwrap();
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code),
        (&b"out\n"[..], &b"err\n"[..], 3)
    );
    let t = std::time::Instant::now();
    let e = exec(&env, &client, &["sleep", "30"], 1).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(10));

    // Filters.
    let list = rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: pod.clone(),
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(list.len(), 2);

    // A duplicate name is refused; bad input is InvalidArgument; unknown ids NotFound.
    let e = create(&env, &pod, &pcfg, ctr("server", &["true"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let mut bad = ctr("bad", &["true"]);
    bad.log_path = "../escape.log".into();
    assert_eq!(
        create(&env, &pod, &pcfg, bad).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut nouser = ctr("nouser", &["true"]);
    nouser.linux.as_mut().unwrap().security_context = Some(cri::LinuxContainerSecurityContext {
        run_as_group: Some(cri::Int64Value { value: 5 }),
        ..Default::default()
    });
    assert_eq!(
        create(&env, &pod, &pcfg, nouser).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut noimg = ctr("noimg", &["true"]);
    noimg.image = Some(cri::ImageSpec {
        image: "absent.invalid/x:1".into(),
        ..Default::default()
    });
    assert_eq!(
        create(&env, &pod, &pcfg, noimg).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        exec(&env, "nope", &["true"], 1).await.unwrap_err().code(),
        Code::NotFound
    );
    // Stopping a container that does not exist is not an error (CRI: idempotent).
    rt.stop_container(cri::StopContainerRequest {
        container_id: "0123456789abcdef-gone".into(),
        timeout: 1,
    })
    .await
    .unwrap();

    // Stop: the container ignores SIGTERM, so SIGKILL follows the 1 s timeout.
    rt.stop_container(cri::StopContainerRequest {
        container_id: client.clone(),
        timeout: 1,
    })
    .await
    .unwrap();
    let st = status(&env, &client).await;
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!((st.exit_code, st.reason.as_str()), (137, "Error"));
    // Removing a running container stops it first, as containerd does.
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: server.clone(),
    })
    .await
    .unwrap();
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: client.clone(),
    })
    .await
    .unwrap();
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: client.clone(),
    })
    .await
    .unwrap();
    env.stop(&pod).await.unwrap();
    env.remove(&pod).await.unwrap();
    env.assert_clean();
    assert!(
        std::fs::read_dir(env.berth.state.join("containers"))
            .map_or(true, |mut d| d.next().is_none())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_limit_kills_are_reported_as_oom_killed() {
    let env = env_with("").await;
    let logs = tempfile::tempdir().unwrap();
    let pcfg = pod_with_logs("oom", logs.path());
    let pod = env.run(pcfg.clone()).await.unwrap();
    let mut c = ctr(
        "hog",
        &[
            "sh",
            "-c",
            "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
        ],
    );
    c.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources {
        memory_limit_in_bytes: 32 << 20,
        memory_swap_limit_in_bytes: 32 << 20,
        ..Default::default()
    });
    let id = create(&env, &pod, &pcfg, c).await.unwrap();
    start(&env, &id).await;
    let done = wait_until(Duration::from_secs(30), || {
        block_on(status(&env, &id)).state == cri::ContainerState::ContainerExited as i32
    });
    assert!(done);
    let st = status(&env, &id).await;
    assert_eq!(
        (st.reason.as_str(), st.exit_code),
        ("OOMKilled", 137),
        "{st:?}"
    );
    assert!(
        !log_lines(&logs.path().join("hog.log"))
            .iter()
            .any(|l| l.contains("survived"))
    );

    // A clean exit is Completed, a failing one Error.
    let ok = create(&env, &pod, &pcfg, ctr("ok", &["sh", "-c", "exit 0"]))
        .await
        .unwrap();
    let bad = create(&env, &pod, &pcfg, ctr("bad", &["sh", "-c", "exit 7"]))
        .await
        .unwrap();
    start(&env, &ok).await;
    start(&env, &bad).await;
    assert!(wait_until(Duration::from_secs(10), || {
        block_on(status(&env, &bad)).state == cri::ContainerState::ContainerExited as i32
            && block_on(status(&env, &ok)).state == cri::ContainerState::ContainerExited as i32
    }));
    let (o, b) = (status(&env, &ok).await, status(&env, &bad).await);
    assert_eq!((o.reason.as_str(), o.exit_code), ("Completed", 0));
    assert_eq!((b.reason.as_str(), b.exit_code), ("Error", 7));
    assert!(b.finished_at >= b.started_at && b.started_at > 0);
    env.stop(&pod).await.unwrap();
    env.remove(&pod).await.unwrap();
    env.assert_clean();
}

/// ContainerStatus' verbose info (`pid`, `runtimeSpec`, …).
async fn verbose_info(env: &berth_e2e::pods::PodEnv, id: &str) -> serde_json::Value {
    let info = env
        .cri
        .runtime
        .clone()
        .container_status(cri::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner()
        .info;
    serde_json::from_str(&info["info"]).unwrap()
}

/// The pid ContainerStatus reports in its verbose info.
async fn verbose_pid(env: &berth_e2e::pods::PodEnv, id: &str) -> u32 {
    verbose_info(env, id).await["pid"].as_u64().unwrap() as u32
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_rotate_reopen_and_keep_flowing_across_a_berth_crash() {
    let mut env =
        env_with("[runtime]\ncontainer_log_max_size = 8192\ncontainer_log_max_files = 3\n").await;
    let logs = tempfile::tempdir().unwrap();
    let pcfg = pod_with_logs("logs", logs.path());
    let pod = env.run(pcfg.clone()).await.unwrap();
    let id = create(
        &env,
        &pod,
        &pcfg,
        ctr(
            "ticker",
            &[
                "sh",
                "-c",
                "i=0; while true; do echo tick $i; echo warn $i >&2; i=$((i+1)); sleep 0.05; done",
            ],
        ),
    )
    .await
    .unwrap();
    start(&env, &id).await;
    let log = logs.path().join("ticker.log");
    // Rotated files are named as the kubelet names its own: ticker.log.<YYYYMMDD-hhmmss>.
    let rotated = || berth_sandbox::logs::rotated_logs(&log);
    assert!(
        wait_until(Duration::from_secs(20), || rotated().len() == 2),
        "no rotation"
    );
    let size = std::fs::metadata(&log).unwrap().len();
    assert!(size <= 8192, "live log {size} bytes");
    // Let it rotate a few times more: never more than max_files - 1 rotated files.
    // (A rotation renames, then prunes: a glance between the two sees three.)
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        wait_until(Duration::from_secs(2), || rotated().len() == 2),
        "{:?}",
        rotated()
    );
    let now = rotated();
    assert!(
        now.iter().all(|p| p
            .to_str()
            .unwrap()
            .split("ticker.log.")
            .nth(1)
            .is_some_and(|s| s.as_bytes().get(8) == Some(&b'-'))),
        "{now:?}"
    );
    let lines = log_lines(&now[1]);
    let re_ok = lines.iter().all(|l| {
        let f: Vec<&str> = l.splitn(4, ' ').collect();
        f.len() == 4 && f[0].ends_with('Z') && (f[1] == "stdout" || f[1] == "stderr") && f[2] == "F"
    });
    assert!(re_ok, "not CRI format: {lines:?}");
    assert!(lines.iter().any(|l| l.contains(" stderr F warn ")));

    // ReopenContainerLog after the kubelet moved the file away.
    std::fs::rename(&log, logs.path().join("moved")).unwrap();
    for r in rotated() {
        let _ = std::fs::remove_file(r);
    }
    env.cri
        .runtime
        .clone()
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || log_lines(&log).len() > 2));

    // A second container, created but not started when berth goes down.
    let waiting = create(
        &env,
        &pod,
        &pcfg,
        ctr("waiting", &["sh", "-c", "echo started; exec sleep 3600"]),
    )
    .await
    .unwrap();
    let waiting_pid = verbose_pid(&env, &waiting).await;
    assert!(waiting_pid > 0);

    // A third, started just before: its Running record is not on disk yet (written with the
    // next durable write, and none comes); the restarted berth learns it from the shim and
    // /proc.
    let late = create(&env, &pod, &pcfg, ctr("late", &["sleep", "3600"]))
        .await
        .unwrap();
    start(&env, &late).await;
    let late_st = status(&env, &late).await;

    // berth crashes and comes back: the container kept running, its log keeps growing.
    let pid = verbose_pid(&env, &id).await;
    let started_at = status(&env, &id).await.started_at;
    let late_pid = verbose_pid(&env, &late).await;
    env.berth.kill();
    std::thread::sleep(Duration::from_millis(300));
    env.berth.restart().unwrap();
    env.reconnect().await.unwrap();
    let st = status(&env, &id).await;
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
    assert_eq!(
        (verbose_pid(&env, &id).await, st.started_at),
        (pid, started_at)
    );
    let st = status(&env, &late).await;
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
    assert_eq!(verbose_pid(&env, &late).await, late_pid);
    assert!(
        (st.started_at - late_st.started_at).abs() < 1_000_000_000,
        "started at {} before the crash, {} after",
        late_st.started_at,
        st.started_at
    );
    // The created one's pid is not on disk: its shim tells the restarted berth.
    assert_eq!(verbose_pid(&env, &waiting).await, waiting_pid);
    assert_eq!(
        status(&env, &waiting).await.state,
        cri::ContainerState::ContainerCreated as i32
    );
    start(&env, &waiting).await;
    assert_eq!(
        status(&env, &waiting).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    let last = |p: &std::path::Path| {
        log_lines(p)
            .iter()
            .rev()
            .find_map(|l| {
                l.rsplit_once("tick ")
                    .and_then(|(_, n)| n.parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    let before = last(&log);
    assert!(
        wait_until(Duration::from_secs(10), || last(&log) > before + 10),
        "the log stopped after the restart"
    );

    // Its exit after the restart is heard.
    berth_e2e::signal(pid, libc::SIGKILL);
    assert!(wait_until(Duration::from_secs(10), || {
        block_on(status(&env, &id)).state == cri::ContainerState::ContainerExited as i32
    }));
    assert_eq!(status(&env, &id).await.exit_code, 137);
    env.stop(&pod).await.unwrap();
    env.remove(&pod).await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_shim_leaves_no_container_behind() {
    let env = env_with("").await;
    let pcfg = pod_config("orphans");
    let pod = env.run(pcfg.clone()).await.unwrap();
    let id = create(
        &env,
        &pod,
        &pcfg,
        ctr("orphan", &["sh", "-c", "exec sleep 7654"]),
    )
    .await
    .unwrap();
    start(&env, &id).await;
    let sleeping = || berth_e2e::processes(&["sleep", "7654"]).len();
    assert!(wait_until(Duration::from_secs(5), || sleeping() == 1));
    let address = std::fs::read_to_string(
        env.berth
            .state
            .join("sandboxes")
            .join(&pod)
            .join("bundle/address"),
    )
    .unwrap();
    let socket = std::path::PathBuf::from(address.trim().trim_start_matches("unix://"));
    assert!(socket.exists());
    // The shim dies. Its pause and app processes would live on, reparented: berth notices
    // the death and kills them, as containerd cleans up after a dead shim.
    for pid in env.berth.shim_pids() {
        berth_e2e::signal(pid, libc::SIGKILL);
    }
    assert!(wait_until(Duration::from_secs(5), || env
        .berth
        .shim_pids()
        .is_empty()));
    assert!(
        wait_until(Duration::from_secs(10), || sleeping() == 0),
        "the container outlived its shim"
    );
    let exited = wait_until(Duration::from_secs(10), || {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current()
                .block_on(status(&env, &id))
                .state
                == cri::ContainerState::ContainerExited as i32
        })
    });
    assert!(
        exited,
        "the container is not reported exited after its shim died"
    );
    assert_eq!(status(&env, &id).await.reason, "ShimDied");
    env.stop(&pod).await.unwrap();
    assert_eq!(sleeping(), 0, "the container outlived StopPodSandbox");
    env.remove(&pod).await.unwrap();
    let runc_root = env.berth.state.join("runtime/runc/k8s.io");
    let left: Vec<_> = std::fs::read_dir(&runc_root)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "runc containers left: {left:?}");
    assert!(
        !socket.exists(),
        "the dead shim's socket {socket:?} was left"
    );
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recursively_read_only_mount_is_read_only_below_too() {
    rro_under("runc").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recursively_read_only_mount_is_read_only_below_too_under_crun() {
    rro_under("crun").await;
}

async fn rro_under(handler: &str) {
    let env = env_with("").await;
    // Status lists the default handler under "" too, as containerd does. runc here (runc 1.1,
    // Linux >= 5.12, by its `features`) and crun (1.8.1, by its version) make mounts
    // read-only recursively.
    let st = runtime_status(&env).await;
    for name in ["", handler] {
        let h = st.runtime_handlers.iter().find(|h| h.name == name);
        assert!(
            h.and_then(|h| h.features.as_ref())
                .is_some_and(|f| f.recursive_read_only_mounts),
            "handler {name:?}: {:?}",
            st.runtime_handlers
        );
    }

    // A host directory with a tmpfs mounted below it.
    let host = tempfile::tempdir().unwrap();
    let _tmpfs = berth_e2e::Tmpfs::mount(&host.path().join("tmpfs")).unwrap();
    let pcfg = pod_config("rro");
    let pod = env.run_with_handler(pcfg.clone(), handler).await.unwrap();
    let with_mount = |name: &str, readonly, rro, propagation: cri::MountPropagation| {
        let mut c = ctr(name, &["sleep", "3600"]);
        c.mounts = vec![cri::Mount {
            container_path: "/mnt".into(),
            host_path: host.path().display().to_string(),
            readonly,
            recursive_read_only: rro,
            propagation: propagation as i32,
            ..Default::default()
        }];
        c
    };
    let private = cri::MountPropagation::PropagationPrivate;
    let touch = ["sh", "-c", "touch /mnt/tmpfs/f 2>&1"];

    // Read-only: the mount itself, not the tmpfs below it.
    let ro = create(&env, &pod, &pcfg, with_mount("ro", true, false, private))
        .await
        .unwrap();
    start(&env, &ro).await;
    let r = exec(&env, &ro, &touch, 10).await.unwrap();
    assert_eq!(r.exit_code, 0, "{}", String::from_utf8_lossy(&r.stdout));
    let r = exec(&env, &ro, &["sh", "-c", "touch /mnt/f 2>&1"], 10)
        .await
        .unwrap();
    assert_ne!(r.exit_code, 0);

    // Recursively read-only: the tmpfs below it too.
    let rro = create(&env, &pod, &pcfg, with_mount("rro", true, true, private))
        .await
        .unwrap();
    start(&env, &rro).await;
    let r = exec(&env, &rro, &touch, 10).await.unwrap();
    let out = String::from_utf8_lossy(&r.stdout).into_owned();
    assert!(
        r.exit_code != 0 && out.contains("Read-only file system"),
        "{}: {out}",
        r.exit_code
    );

    // Refused: without readonly, or with propagation into it.
    for (name, readonly, prop) in [
        ("rw", false, private),
        (
            "h2c",
            true,
            cri::MountPropagation::PropagationHostToContainer,
        ),
        (
            "bidi",
            true,
            cri::MountPropagation::PropagationBidirectional,
        ),
    ] {
        let e = create(&env, &pod, &pcfg, with_mount(name, readonly, true, prop))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{name}: {e:?}");
    }
    env.stop(&pod).await.unwrap();
    env.remove(&pod).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn supplemental_groups_merge_the_images_groups_unless_strict() {
    let env = env_with("").await;
    // Status says berth honours the policy (critest runs its specs only then).
    let st = runtime_status(&env).await;
    assert!(st.features.is_some_and(|f| f.supplemental_groups_policy));
    berth_e2e::apps::groups_image()
        .push(&env.registry, "berth-e2e/groups", Some("1"))
        .await
        .unwrap();
    let image = berth_e2e::apps::GROUPS;
    env.cri.pull(image).await.unwrap();
    let pcfg = pod_config("groups");
    let pod = env.run(pcfg.clone()).await.unwrap();
    for (name, policy, want) in [
        (
            "merge",
            cri::SupplementalGroupsPolicy::Merge,
            vec![1000, 1234, 50000],
        ),
        (
            "strict",
            cri::SupplementalGroupsPolicy::Strict,
            vec![1000, 1234],
        ),
    ] {
        let mut c = berth_e2e::apps::ctr_of(image, name, &["sleep", "3600"]);
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                run_as_user: Some(cri::Int64Value { value: 1000 }),
                supplemental_groups: vec![1234],
                supplemental_groups_policy: policy as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
        let id = create(&env, &pod, &pcfg, c).await.unwrap();
        start(&env, &id).await;
        let r = exec(&env, &id, &["id", "-G"], 10).await.unwrap();
        let ids: Vec<String> = want.iter().map(|g: &i64| g.to_string()).collect();
        assert_eq!(
            String::from_utf8_lossy(&r.stdout),
            format!("{}\n", ids.join(" ")),
            "{name}"
        );
        let user = status(&env, &id).await.user.and_then(|u| u.linux).unwrap();
        assert_eq!((user.uid, user.gid), (1000, 1000), "{name}");
        assert_eq!(user.supplemental_groups, want, "{name}");
    }
    env.stop(&pod).await.unwrap();
    env.remove(&pod).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_metrics_are_read_from_the_cgroup_proc_and_the_pods_network() {
    let env = env_with("").await;
    let mut rt = env.cri.runtime.clone();
    let descs = rt
        .list_metric_descriptors(cri::ListMetricDescriptorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .descriptors;
    assert!(descs.len() >= 40, "{}", descs.len());
    let keys = |name: &str| {
        descs
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.label_keys.len())
            .unwrap_or_else(|| panic!("no descriptor {name}"))
    };
    let pcfg = pod_config("metrics");
    let pod = env.run(pcfg.clone()).await.unwrap();
    let mut c = ctr(
        "busy",
        &[
            "sh",
            "-c",
            "mkdir /w; touch /w/a /w/b; sleep 3600 & sleep 3600",
        ],
    );
    c.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 20_000,
            cpu_shares: 1024,
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = create(&env, &pod, &pcfg, c).await.unwrap();
    start(&env, &id).await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Two processes running; let them start.
    assert!(wait_until(Duration::from_secs(5), || {
        block_on(exec(
            &env,
            &id,
            &["sh", "-c", "test $(ls /proc | grep -c '^[0-9]') -ge 2"],
            5,
        ))
        .is_ok_and(|r| r.exit_code == 0)
    }));
    let all = rt
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics;
    let pm = all
        .iter()
        .find(|p| p.pod_sandbox_id == pod)
        .expect("no metrics for the pod");
    // The pod's network: its eth0 from the pause process's namespace.
    let rx = pm
        .metrics
        .iter()
        .find(|m| m.name == "container_network_receive_bytes_total")
        .expect("no network metrics");
    assert_eq!(rx.label_values.len(), keys(&rx.name));
    assert_eq!(rx.label_values.last().map(String::as_str), Some("eth0"));
    let cm = pm
        .container_metrics
        .iter()
        .find(|c| c.container_id == id)
        .expect("no metrics for the container");
    let v = |name: &str| {
        let m = cm
            .metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(m.label_values.len(), keys(name), "{name}");
        assert_eq!(m.label_values[3], id, "{name}");
        m.value.as_ref().unwrap().value
    };
    assert_eq!(v("container_spec_memory_limit_bytes"), 64 << 20);
    assert_eq!(v("container_spec_cpu_period"), 100_000);
    assert_eq!(v("container_spec_cpu_shares"), 1024);
    // The two sleeps (sh execs the last one).
    assert!(
        v("container_processes") >= 2,
        "{}",
        v("container_processes")
    );
    assert!(v("container_threads") >= v("container_processes"));
    assert!(v("container_file_descriptors") >= 3);
    assert!(v("container_memory_usage_bytes") > 0);
    assert!(v("container_memory_working_set_bytes") <= v("container_memory_usage_bytes"));
    assert!(v("container_fs_limit_bytes") > 0);
    // As cAdvisor reports a container's filesystem: the inodes its writable layer uses (the
    // directory and two files written, a few more of overlayfs' own), no free count.
    // ContainerStats: what the 64 MiB limit leaves.
    let m = rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap()
        .memory
        .unwrap();
    let ws = m.working_set_bytes.unwrap().value;
    let avail = m.available_bytes.unwrap().value;
    assert!(ws > 0 && ws + avail == 64 << 20, "{ws} + {avail}");
    let inodes = v("container_fs_inodes_total");
    assert!((3..100).contains(&inodes), "{inodes}");
    assert_eq!(v("container_fs_inodes_free"), 0);
    let started = v("container_start_time_seconds");
    assert!(
        started + 60 >= before && started <= before + 1,
        "{started} vs {before}"
    );
    assert!(v("container_last_seen") >= started);
    env.stop(&pod).await.unwrap();
    env.remove(&pod).await.unwrap();
    // A stopped pod has no metrics.
    let all = rt
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics;
    assert!(all.iter().all(|p| p.pod_sandbox_id != pod));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exec_racing_the_containers_exit_is_told_it_is_not_running() {
    // The kubelet's exec probes race the kills of its restarts. Whichever way each race goes,
    // the answer is the output, or FailedPrecondition "not running": never an internal error.
    // An exec that started while the container ran and was killed with it (the kernel kills
    // a pid namespace's processes when its init exits) exited 137, and says so: containerd
    // 2.4.2 answers that race the same (OK, exit code 137; measured on this machine: 7 of
    // 725 execs in 40 rounds), and the kubelet counts it a failed probe.
    let env = env_with("").await;
    let pcfg = pod_config("racing");
    let pod = env.run(pcfg.clone()).await.unwrap();
    let mut codes = std::collections::BTreeMap::new();
    for round in 0..6 {
        let id = create(
            &env,
            &pod,
            &pcfg,
            ctr(&format!("short-{round}"), &["sh", "-c", "sleep 0.3"]),
        )
        .await
        .unwrap();
        start(&env, &id).await;
        // Execs back to back (two at a time) until the container is gone.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            let (a, b) = tokio::join!(exec(&env, &id, &["true"], 5), exec(&env, &id, &["true"], 5));
            let mut done = false;
            for r in [a, b] {
                match r {
                    Ok(r) if r.exit_code == 137 => {
                        let exited = async {
                            for _ in 0..50 {
                                if status(&env, &id).await.state
                                    == cri::ContainerState::ContainerExited as i32
                                {
                                    return true;
                                }
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            false
                        };
                        assert!(exited.await, "an exec was killed, its container runs on");
                        done = true;
                    }
                    Ok(r) => assert_eq!(r.exit_code, 0),
                    Err(e) => {
                        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
                        assert!(e.message().contains("is not running"), "{e:?}");
                        done = true;
                    }
                }
                *codes.entry(done).or_insert(0) += 1;
            }
            if done {
                break;
            }
        }
    }
    assert!(
        codes.contains_key(&true),
        "no exec ever met an exited container: {codes:?}"
    );
    env.stop(&pod).await.unwrap();
    env.remove(&pod).await.unwrap();
    env.assert_clean();
}

/// Mounts of `c`, each an image volume of `image` at `at` with `sub_path`.
fn with_image_volumes(
    mut c: cri::ContainerConfig,
    image: &str,
    vols: &[(&str, &str, bool)],
) -> cri::ContainerConfig {
    c.mounts = vols
        .iter()
        .map(|(at, sub, readonly)| cri::Mount {
            container_path: (*at).into(),
            readonly: *readonly,
            image: Some(cri::ImageSpec {
                image: image.into(),
                user_specified_image: image.into(),
                ..Default::default()
            }),
            image_sub_path: (*sub).into(),
            ..Default::default()
        })
        .collect();
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_volume_shows_the_images_files_read_only_and_leaves_nothing() {
    use berth_e2e::image::{ImageBuilder, Layer};
    let env = env_with("").await;
    let data = "app.invalid/berth-e2e/data:1";
    // Two layers: the second whites a file of the first out and adds one; an absolute
    // symbolic link that must resolve inside the image, not on the host.
    ImageBuilder::new(vec![
        Layer::new()
            .file("share/data/a.txt", "one\n")
            .file("share/data/gone.txt", "hidden\n")
            .symlink("etc-link", "/share/data"),
        Layer::new()
            .file("share/data/.wh.gone.txt", "")
            .file("share/data/b.txt", "two\n"),
    ])
    .push(&env.registry, "berth-e2e/data", Some("1"))
    .await
    .unwrap();
    let snapshots = || {
        std::fs::read_dir(env.berth.root.join("snapshots"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let pcfg = pod_config("volumes");
    let pod = env.run(pcfg.clone()).await.unwrap();
    let sleeper = || ctr("reader", &["sleep", "3600"]);

    // A container of the app image made once: its mount-point layer stays (a cache of the
    // image's), so that the counts below are of what the failures leave.
    let plain = create(&env, &pod, &pcfg, sleeper()).await.unwrap();
    env.cri
        .runtime
        .clone()
        .remove_container(cri::RemoveContainerRequest {
            container_id: plain,
        })
        .await
        .unwrap();
    let before_data = snapshots();
    let image_ref = env.cri.pull(data).await.unwrap();
    let before = snapshots();
    let absent = "app.invalid/berth-e2e/absent:1";
    for (image, vols, code) in [
        // Not pulled.
        (absent, &[("/vol", "", true)][..], Code::NotFound),
        // A writable image volume is refused (the CRI says runtimes should).
        (data, &[("/vol", "", false)][..], Code::InvalidArgument),
        (data, &[("/vol", "../etc", true)][..], Code::InvalidArgument),
        (data, &[("/vol", "/share", true)][..], Code::InvalidArgument),
        // A sub path the image lacks; the first volume was mounted and must go again.
        (
            data,
            &[("/vol", "", true), ("/sub", "not-there", true)][..],
            Code::NotFound,
        ),
    ] {
        let e = create(
            &env,
            &pod,
            &pcfg,
            with_image_volumes(sleeper(), image, vols),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), code, "{vols:?}: {e:?}");
        assert_eq!(snapshots(), before, "{vols:?}");
        assert!(
            std::fs::read_dir(env.berth.state.join("containers"))
                .map(|d| d.count())
                .unwrap_or(0)
                == 0,
            "{vols:?}: a container directory is left"
        );
    }

    let id = create(
        &env,
        &pod,
        &pcfg,
        with_image_volumes(
            sleeper(),
            data,
            &[("/vol", "", true), ("/sub", "etc-link", true)],
        ),
    )
    .await
    .unwrap();
    start(&env, &id).await;
    let run = |cmd: &'static str| {
        let env = &env;
        let id = id.clone();
        async move {
            let r = exec(env, &id, &["sh", "-c", cmd], 10).await.unwrap();
            (
                r.exit_code,
                String::from_utf8_lossy(&r.stdout).into_owned(),
                String::from_utf8_lossy(&r.stderr).into_owned(),
            )
        }
    };
    assert_eq!(
        run("cat /vol/share/data/a.txt /vol/share/data/b.txt")
            .await
            .1,
        "one\ntwo\n"
    );
    assert_eq!(run("ls /vol/share/data").await.1, "a.txt\nb.txt\n");
    assert_eq!(run("ls /sub").await.1, "a.txt\nb.txt\n");
    let (code, _, err) = run("touch /vol/new").await;
    assert_ne!(code, 0);
    assert!(err.contains("Read-only"), "{err}");

    // ContainerStatus names the image and what it resolved to.
    let st = status(&env, &id).await;
    let m = st
        .mounts
        .iter()
        .find(|m| m.container_path == "/sub")
        .unwrap();
    let img = m.image.as_ref().unwrap();
    assert_eq!(
        (
            img.image.as_str(),
            img.image_ref.as_str(),
            m.image_sub_path.as_str()
        ),
        (data, image_ref.as_str(), "etc-link")
    );

    // The image can be removed while the volume uses it; the files stay until the
    // container goes.
    env.cri
        .image
        .clone()
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: data.into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    assert_eq!(run("cat /vol/share/data/b.txt").await.1, "two\n");

    env.stop(&pod).await.unwrap();
    env.remove(&pod).await.unwrap();
    env.assert_clean();
    // The data image's layers went with the last container that used them (and the pod's
    // own writable snapshot with the pod).
    assert_eq!(snapshots(), before_data - 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn cri_1_37_stop_signal_mount_options_and_stream_calls_work() {
    use berth_e2e::apps::stop;
    let env = env_with("").await;
    let pcfg = pod_config("signals");
    let pod = env.run(pcfg.clone()).await.unwrap();

    // KEP-4960: the config's stop signal replaces the image's (none here, so SIGTERM).
    // SIGTERM is ignored: only SIGUSR1 ends it with 42 within the grace period.
    let mut c = ctr(
        "usr1",
        &[
            "sh",
            "-c",
            "trap 'exit 42' USR1; trap '' TERM; touch /trapped; while true; do sleep 1; done",
        ],
    );
    c.stop_signal = cri::Signal::Sigusr1 as i32;
    let id = create(&env, &pod, &pcfg, c).await.unwrap();
    start(&env, &id).await;
    // Stopped only once the shell has its traps (a signal before that ends it as the
    // signal's default action does: 138 for SIGUSR1).
    let trapped = wait_until(Duration::from_secs(10), || {
        block_on(exec(&env, &id, &["sh", "-c", "test -e /trapped"], 5))
            .is_ok_and(|r| r.exit_code == 0)
    });
    assert!(trapped, "the container's shell never set its traps");
    assert_eq!(
        status(&env, &id).await.stop_signal,
        cri::Signal::Sigusr1 as i32
    );
    let t0 = std::time::Instant::now();
    stop(&env, &id, 20).await;
    let st = status(&env, &id).await;
    assert_eq!(st.exit_code, 42, "{st:?}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());

    // Extra bind mount options (RuntimeFeatures.mount_options).
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("run.sh"), "#!/bin/sh\necho ran\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.path().join("run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let mount = |opts: &[&str]| cri::Mount {
        container_path: "/m".into(),
        host_path: dir.path().display().to_string(),
        mount_options: opts.iter().map(|o| o.to_string()).collect(),
        ..Default::default()
    };
    let mut bad = ctr("bad-options", &["sleep", "3600"]);
    bad.mounts = vec![mount(&["exec"])];
    let e = create(&env, &pod, &pcfg, bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    let mut c = ctr("noexec", &["sleep", "3600"]);
    c.mounts = vec![mount(&["noexec", "nodev"])];
    let id = create(&env, &pod, &pcfg, c).await.unwrap();
    start(&env, &id).await;
    // The runtime refuses to start it (an error), or the shell reports it (an exit code).
    if let Ok(r) = exec(&env, &id, &["/m/run.sh"], 10).await {
        assert_ne!(r.exit_code, 0, "a script on a noexec mount ran");
    }
    let r = exec(&env, &id, &["sh", "-c", "grep ' /m ' /proc/mounts"], 10)
        .await
        .unwrap();
    let line = String::from_utf8_lossy(&r.stdout).into_owned();
    assert!(line.contains("noexec") && line.contains("nodev"), "{line}");
    assert_eq!(
        status(&env, &id).await.mounts[0].mount_options,
        ["noexec", "nodev"]
    );

    // The Stream* calls (Kubernetes 1.36) answer what the List calls do.
    use futures::StreamExt;
    let mut rt = env.cri.runtime.clone();
    let streamed: Vec<String> = rt
        .stream_containers(cri::StreamContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .flat_map(|r| futures::stream::iter(r.unwrap().containers))
        .map(|c| c.id)
        .collect()
        .await;
    let mut listed: Vec<String> = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect();
    let mut streamed = streamed;
    streamed.sort();
    listed.sort();
    assert_eq!((streamed.len(), &streamed), (2, &listed));
    let pods: usize = rt
        .stream_pod_sandboxes(cri::StreamPodSandboxesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .map(|r| r.unwrap().pod_sandboxes.len())
        .fold(0, |a, n| async move { a + n })
        .await;
    assert_eq!(pods, 1);
    let images: usize = env
        .cri
        .image
        .clone()
        .stream_images(cri::StreamImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .map(|r| r.unwrap().images.len())
        .fold(0, |a, n| async move { a + n })
        .await;
    assert_eq!(images, 2, "the app and the pause image");

    env.stop(&pod).await.unwrap();
    env.remove(&pod).await.unwrap();
    env.assert_clean();
}

/// A static binary that prints its effective uid.
fn euid_binary() -> Vec<u8> {
    berth_e2e::tools::static_c_binary(
        "euid",
        "#include <stdio.h>\n#include <unistd.h>\nint main(void){printf(\"%d\\n\",(int)geteuid());return 0;}\n",
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_volume_keeps_nosuid_and_nodev_inside_the_container() {
    use berth_e2e::image::{ImageBuilder, Layer};
    let env = env_with("").await;
    // Issue 24: the bind into the container was plain `ro`: a set-uid root binary of the
    // image ran as root for uid 1000, and the image's device node opened.
    ImageBuilder::new(vec![
        Layer::new()
            .dir("bin/")
            .file_mode("bin/euid", euid_binary(), 0o4755)
            .dir("dev/")
            .char_device("dev/zero", 1, 5),
    ])
    .push(&env.registry, "berth-e2e/traps", Some("1"))
    .await
    .unwrap();
    let traps = "app.invalid/berth-e2e/traps:1";
    env.cri.pull(traps).await.unwrap();
    let pcfg = pod_config("volume-flags");
    let pod = env.run(pcfg.clone()).await.unwrap();
    let mut c = with_image_volumes(
        ctr("user", &["sleep", "3600"]),
        traps,
        &[("/vol", "", true), ("/zero", "dev/zero", true)],
    );
    c.linux.as_mut().unwrap().security_context = Some(cri::LinuxContainerSecurityContext {
        run_as_user: Some(cri::Int64Value { value: 1000 }),
        ..Default::default()
    });
    let id = create(&env, &pod, &pcfg, c).await.unwrap();
    start(&env, &id).await;
    let run = |cmd: &'static str| {
        let env = &env;
        let id = id.clone();
        async move {
            let r = exec(env, &id, &["sh", "-c", cmd], 10).await.unwrap();
            String::from_utf8_lossy(&r.stdout).into_owned()
        }
    };
    // The binary runs (no noexec was asked), as the caller.
    assert_eq!(run("/vol/bin/euid").await, "1000\n");
    assert_eq!(
        run("head -c 4 /zero >/dev/null 2>&1; echo rc=$?").await,
        "rc=1\n"
    );
    assert_eq!(
        run("head -c 4 /vol/dev/zero >/dev/null 2>&1; echo rc=$?").await,
        "rc=1\n"
    );
    let mounts = run("cat /proc/self/mountinfo").await;
    for at in ["/vol", "/zero"] {
        let line = mounts
            .lines()
            .find(|l| l.split_whitespace().nth(4) == Some(at))
            .unwrap_or_else(|| panic!("{at} not mounted:\n{mounts}"));
        let opts = line.split_whitespace().nth(5).unwrap();
        for f in ["ro", "nosuid", "nodev"] {
            assert!(opts.split(',').any(|o| o == f), "{at}: {line}");
        }
    }
    env.stop(&pod).await.unwrap();
    env.remove(&pod).await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_names_the_image_by_the_tag_the_pod_named_as_containerd_does() {
    use berth_e2e::apps::{APP, app_image};
    let env = env_with("").await;
    // The same image under a second tag: the status must name the tag the pod's author
    // wrote, not whichever tag comes first, nor the image id (issue 26: `kubectl get pod`
    // showed `image: sha256:…`).
    let second = "app.invalid/berth-e2e/app:second";
    app_image()
        .push(&env.registry, "berth-e2e/app", Some("second"))
        .await
        .unwrap();
    let id = env.cri.pull(second).await.unwrap();
    assert!(id.starts_with("sha256:"), "{id}");
    assert_eq!(env.cri.pull(APP).await.unwrap(), id);
    let pcfg = pod_config("image-name");
    let pod = env.run(pcfg.clone()).await.unwrap();
    // As the kubelet asks: the image by id, and as the pod named it.
    let named = |name: &str, user: &str| {
        let mut c = ctr(name, &["sleep", "3600"]);
        c.image = Some(cri::ImageSpec {
            image: id.clone(),
            user_specified_image: user.into(),
            ..Default::default()
        });
        c
    };
    for (name, user, shown) in [
        ("by-second", second, second),
        ("by-first", APP, APP),
        // Not a tag of this image (retagged since): containerd names its first tag.
        ("by-other", "app.invalid/berth-e2e/app:gone", APP),
    ] {
        let c = create(&env, &pod, &pcfg, named(name, user)).await.unwrap();
        let st = status(&env, &c).await;
        let image = st.image.unwrap();
        assert_eq!(image.image, shown, "{name}");
        assert_eq!(image.user_specified_image, user, "{name}");
        assert_eq!(st.image_id, id, "{name}");
        // ListContainers names the image as it was asked for, with its id as the ref (the
        // kubelet's image garbage collection matches it with ListImages).
        let listed = env
            .cri
            .runtime
            .clone()
            .list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    id: c.clone(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .containers;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].image.as_ref().unwrap().image, id, "{name}");
        assert_eq!(listed[0].image_ref, id, "{name}");
    }
    env.stop(&pod).await.unwrap();
    env.remove(&pod).await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resize_applies_to_the_running_container_and_one_below_its_usage_changes_nothing() {
    let env = env_with("").await;
    let pcfg = pod_config("resize");
    let pod = env.run(pcfg.clone()).await.unwrap();
    let mut c = ctr(
        "filler",
        &[
            "sh",
            "-c",
            // 40 MiB of the pod's shared memory, charged to this container and not reclaimable.
            "head -c 41943040 /dev/zero > /dev/shm/fill && touch /dev/shm/done && sleep 3600",
        ],
    );
    let res = |memory: i64, shares: i64| cri::LinuxContainerResources {
        memory_limit_in_bytes: memory,
        cpu_shares: shares,
        ..Default::default()
    };
    c.linux.as_mut().unwrap().resources = Some(res(64 << 20, 512));
    let id = create(&env, &pod, &pcfg, c).await.unwrap();
    start(&env, &id).await;
    assert!(wait_until(Duration::from_secs(20), || {
        block_on(exec(&env, &id, &["sh", "-c", "test -e /dev/shm/done"], 5))
            .is_ok_and(|r| r.exit_code == 0)
    }));
    let cgroup = verbose_info(&env, &id).await["runtimeSpec"]["linux"]["cgroupsPath"]
        .as_str()
        .unwrap()
        .to_string();
    let read = |ctl: &str, file: &str| -> String {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{ctl}{cgroup}/{file}"))
            .unwrap()
            .trim()
            .to_string()
    };
    let update = |r: cri::LinuxContainerResources| {
        let mut c = env.cri.runtime.clone();
        let id = id.clone();
        async move {
            c.update_container_resources(cri::UpdateContainerResourcesRequest {
                container_id: id,
                linux: Some(r),
                ..Default::default()
            })
            .await
        }
    };
    let reported = || async {
        status(&env, &id)
            .await
            .resources
            .and_then(|r| r.linux)
            .map(|l| (l.memory_limit_in_bytes, l.cpu_shares))
    };

    // Larger: in the cgroup and in ContainerStatus.
    update(res(128 << 20, 1024)).await.unwrap();
    assert_eq!(
        read("memory", "memory.limit_in_bytes"),
        (128u64 << 20).to_string()
    );
    assert_eq!(read("cpu", "cpu.shares"), "1024");
    assert_eq!(reported().await, Some((128 << 20, 1024)));

    // Below what it uses: refused, and the cgroup and the status keep the previous values.
    let e = update(res(8 << 20, 2048)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("previous ones are in force"),
        "{}",
        e.message()
    );
    assert_eq!(
        read("memory", "memory.limit_in_bytes"),
        (128u64 << 20).to_string()
    );
    assert_eq!(read("cpu", "cpu.shares"), "1024");
    assert_eq!(reported().await, Some((128 << 20, 1024)));
    // Malformed: refused before anything is written.
    let e = update(res(-5, 1024)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // The pod's resources (the kubelet sizes the pod's cgroup itself): recorded, shown in the
    // verbose status; an unknown pod is NotFound, a malformed request InvalidArgument.
    let mut rc = env.cri.runtime.clone();
    rc.update_pod_sandbox_resources(cri::UpdatePodSandboxResourcesRequest {
        pod_sandbox_id: pod.clone(),
        overhead: None,
        resources: Some(res(256 << 20, 2048)),
    })
    .await
    .unwrap();
    let (_, pinfo) = env.status(&pod).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&pinfo["info"]).unwrap();
    assert_eq!(v["config"]["resources"]["memory_limit"], 256 << 20, "{v}");
    for (pod_id, r, code) in [
        ("0".repeat(64), res(1, 1), Code::NotFound),
        (pod.clone(), res(1, -2), Code::InvalidArgument),
    ] {
        let e = rc
            .update_pod_sandbox_resources(cri::UpdatePodSandboxResourcesRequest {
                pod_sandbox_id: pod_id,
                overhead: None,
                resources: Some(r),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
    }
    env.stop(&pod).await.unwrap();
    env.remove(&pod).await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn cdi_devices_bring_their_nodes_environment_mounts_hooks_and_groups() {
    // Specs for devices this machine has, as a device plugin or DRA driver leaves them.
    let cdi = tempfile::tempdir().unwrap();
    let (etc, run) = (cdi.path().join("etc"), cdi.path().join("run"));
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(&run).unwrap();
    let shared = cdi.path().join("shared.txt");
    std::fs::write(&shared, "from the device's spec\n").unwrap();
    let hook_mark = cdi.path().join("hook-ran");
    std::fs::write(
        etc.join("example.yaml"),
        format!(
            "cdiVersion: 0.6.0
kind: example.com/dev
containerEdits:
  env: [CDI_SPEC=example]
devices:
- name: fuse
  containerEdits:
    env: [CDI_FUSE=yes]
    deviceNodes: [{{path: /dev/fuse}}]
    mounts: [{{hostPath: {shared}, containerPath: /etc/cdi-shared.txt, options: [ro]}}]
    additionalGids: [4242]
    hooks: [{{hookName: createRuntime, path: /bin/sh, args: [sh, -c, 'touch {mark}']}}]
",
            shared = shared.display(),
            mark = hook_mark.display()
        ),
    )
    .unwrap();
    std::fs::write(
        run.join("kvm.json"),
        r#"{"cdiVersion":"0.5.0","kind":"example.com/dev","devices":[{"name":"kvm","containerEdits":{"env":["CDI_KVM=yes"],"deviceNodes":[{"path":"/dev/kvm","permissions":"rw"}]}}]}"#,
    )
    .unwrap();
    std::fs::write(run.join("broken.yaml"), "cdiVersion: 0.6.0\nkind: [\n").unwrap();
    let env = env_with(&format!(
        "[cdi]\nspec_dirs = [\"{}\", \"{}\"]\n",
        etc.display(),
        run.display()
    ))
    .await;
    let pcfg = pod_config("cdi");
    let pod = env.run(pcfg.clone()).await.unwrap();
    let mut c = ctr(
        "dev",
        &[
            "sh",
            "-c",
            "env > /env.txt && grep ^Groups /proc/self/status > /groups.txt && exec sleep 3600",
        ],
    );
    c.cdi_devices = vec![cri::CdiDevice {
        name: "example.com/dev=fuse".into(),
    }];
    c.annotations
        .insert("cdi.k8s.io/driver".into(), "example.com/dev=kvm".into());
    let id = create(&env, &pod, &pcfg, c).await.unwrap();
    assert!(hook_mark.exists(), "the createRuntime hook did not run");
    start(&env, &id).await;
    // The container's shell writes what it was given, then sleeps: read it once written.
    assert!(wait_until(Duration::from_secs(20), || {
        block_on(exec(&env, &id, &["sh", "-c", "test -s /groups.txt"], 5))
            .is_ok_and(|r| r.exit_code == 0)
    }));
    let r = exec(
        &env,
        &id,
        &[
            "sh",
            "-c",
            "test -c /dev/fuse && test -c /dev/kvm && exec 3</dev/kvm && cat /etc/cdi-shared.txt && grep ^CDI_ /env.txt | sort && cat /groups.txt",
        ],
        10,
    )
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&r.stdout).into_owned();
    assert_eq!(
        r.exit_code,
        0,
        "{out}{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(
        out.starts_with(
            "from the device's spec\nCDI_FUSE=yes\nCDI_KVM=yes\nCDI_SPEC=example\nGroups:"
        ),
        "{out}"
    );
    assert!(out.contains("4242"), "{out}");
    // A device the container was not given stays out of reach (the device cgroup).
    let r = exec(
        &env,
        &id,
        &[
            "sh",
            "-c",
            // /dev/loop-control's numbers: allowed neither by default nor by a CDI spec.
            "mknod /loop-control c 10 237 && (exec 4</loop-control) 2>&1 || echo denied",
        ],
        10,
    )
    .await
    .unwrap();
    assert!(
        String::from_utf8_lossy(&r.stdout).contains("denied"),
        "{r:?}"
    );

    // A name no spec defines: refused, naming it and the spec file that was left out.
    let mut c = ctr("missing", &["true"]);
    c.cdi_devices = vec![cri::CdiDevice {
        name: "example.com/dev=gpu".into(),
    }];
    let e = create(&env, &pod, &pcfg, c).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(
        e.message().contains("example.com/dev=gpu")
            && e.message()
                .contains(&format!("{}: ", run.join("broken.yaml").display())),
        "{}",
        e.message()
    );
    // A malformed name: InvalidArgument before anything is made.
    let mut c = ctr("malformed", &["true"]);
    c.cdi_devices = vec![cri::CdiDevice {
        name: "gpu0".into(),
    }];
    let e = create(&env, &pod, &pcfg, c).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    env.stop(&pod).await.unwrap();
    env.remove(&pod).await.unwrap();
    env.assert_clean();
}

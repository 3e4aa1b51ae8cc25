//! The app image and container helpers the container and streaming tests share: busybox
//! with the applets they use, and thin wrappers over the CRI calls.

use berth_cri_api::v1 as cri;

use crate::{ImageBuilder, Layer, PodEnv, TestNet};

/// The app image's reference (mirrored to the test registry by hosts.toml).
pub const APP: &str = "app.invalid/berth-e2e/app:1";

/// busybox with the applets these tests use and a page to serve.
pub fn app_image() -> ImageBuilder {
    let mut l = Layer::busybox().unwrap();
    for a in [
        "httpd",
        "wget",
        "head",
        "tr",
        "kill",
        "touch",
        "hostname",
        "cut",
        "sha256sum",
        "stty",
        "tty",
        "ps",
        "dmesg",
        "uname",
        "true",
        "ip",
    ] {
        l = l.hardlink(&format!("bin/{a}"), "bin/busybox");
    }
    ImageBuilder::new(vec![
        l.dir("www/")
            .file("www/index.html", "hello over localhost\n"),
    ])
    .cmd(&["/bin/sh"])
}

/// Where [`groups_image`] is served from (through the app registry's mirror).
pub const GROUPS: &str = "app.invalid/berth-e2e/groups:1";

/// busybox whose /etc/group puts its user 1000 (`default-user`) in group 50000 as well
/// (critest's test-image-predefined-group, rebuilt here): what the supplemental-groups
/// policies differ on. Pushed as `berth-e2e/groups:1`, pulled as [`GROUPS`].
pub fn groups_image() -> ImageBuilder {
    let accounts = Layer::new()
        .file(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\ndefault-user:x:1000:1000::/home:/bin/sh\n",
        )
        .file(
            "etc/group",
            "root:x:0:\ndefault-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n",
        );
    ImageBuilder::new(vec![Layer::busybox().unwrap(), accounts])
}

/// A [`PodEnv`] with `extra` in berth's config and the app image pulled.
pub async fn env_with(extra: &str) -> PodEnv {
    let env = PodEnv::start_with(TestNet::new().unwrap(), extra)
        .await
        .unwrap();
    app_image()
        .push(&env.registry, "berth-e2e/app", Some("1"))
        .await
        .unwrap();
    env.berth
        .hosts_toml(
            "app.invalid",
            &crate::pods::mirror_hosts("app.invalid", &env.registry.addr),
        )
        .unwrap();
    env.cri.pull(APP).await.unwrap();
    env
}

/// A container of the app image running `cmd`, logging to `<name>.log`.
pub fn ctr(name: &str, cmd: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        log_path: format!("{name}.log"),
        ..ctr_of(APP, name, cmd)
    }
}

/// A container `name` of `image` running `cmd`, with no log.
pub fn ctr_of(image: &str, name: &str, cmd: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        linux: Some(cri::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

/// A user namespace of the pod's own (CRI NamespaceMode POD): container ids `0..size` are
/// host ids `host_id..`, for users and groups alike.
pub fn pod_userns(host_id: u32, size: u32) -> cri::UserNamespace {
    let ids = vec![cri::IdMapping {
        host_id,
        container_id: 0,
        length: size,
    }];
    cri::UserNamespace {
        mode: cri::NamespaceMode::Pod as i32,
        uids: ids.clone(),
        gids: ids,
    }
}

/// `pcfg` with namespace options that ask for user namespace `u`.
pub fn in_userns(mut pcfg: cri::PodSandboxConfig, u: cri::UserNamespace) -> cri::PodSandboxConfig {
    pcfg.linux
        .get_or_insert_default()
        .security_context
        .get_or_insert_default()
        .namespace_options = Some(cri::NamespaceOption {
        userns_options: Some(u),
        ..Default::default()
    });
    pcfg
}

/// `c` asking for the namespace options of pod `pcfg`, as the kubelet sends them.
pub fn with_pod_namespaces(
    mut c: cri::ContainerConfig,
    pcfg: &cri::PodSandboxConfig,
) -> cri::ContainerConfig {
    c.linux
        .get_or_insert_default()
        .security_context
        .get_or_insert_default()
        .namespace_options = pcfg
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone());
    c
}

/// CreateContainer.
pub async fn create(
    env: &PodEnv,
    pod: &str,
    pod_cfg: &cri::PodSandboxConfig,
    c: cri::ContainerConfig,
) -> Result<String, tonic::Status> {
    env.cri
        .runtime
        .clone()
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(c),
            sandbox_config: Some(pod_cfg.clone()),
        })
        .await
        .map(|r| r.into_inner().container_id)
}

/// StartContainer (which must succeed).
pub async fn start(env: &PodEnv, id: &str) {
    env.cri
        .runtime
        .clone()
        .start_container(cri::StartContainerRequest {
            container_id: id.into(),
        })
        .await
        .unwrap();
}

/// RemoveContainer (which must succeed).
pub async fn remove(env: &PodEnv, id: &str) {
    env.cri
        .runtime
        .clone()
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.into(),
        })
        .await
        .unwrap();
}

/// StopContainer with a grace period of `timeout` seconds (which must succeed).
pub async fn stop(env: &PodEnv, id: &str, timeout: i64) {
    env.cri
        .runtime
        .clone()
        .stop_container(cri::StopContainerRequest {
            container_id: id.into(),
            timeout,
        })
        .await
        .unwrap();
}

/// Status (not verbose; which must succeed).
pub async fn runtime_status(env: &PodEnv) -> cri::StatusResponse {
    env.cri
        .runtime
        .clone()
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner()
}

/// ContainerStatus (which must succeed).
pub async fn status(env: &PodEnv, id: &str) -> cri::ContainerStatus {
    env.cri
        .runtime
        .clone()
        .container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
}

/// ExecSync.
pub async fn exec(
    env: &PodEnv,
    id: &str,
    cmd: &[&str],
    timeout: i64,
) -> Result<cri::ExecSyncResponse, tonic::Status> {
    env.cri
        .runtime
        .clone()
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        })
        .await
        .map(|r| r.into_inner())
}

/// Runs `cmd` (or the image's own command, when empty) of `image` in a new pod `pod_name`
/// until it exits; returns its exit code and its output (stdout and stderr, from its CRI log),
/// then removes the pod.
pub async fn run_to_exit(env: &PodEnv, pod_name: &str, image: &str, cmd: &[&str]) -> (i32, String) {
    run_config_to_exit(env, pod_name, ctr_of(image, "main", cmd)).await
}

/// [`run_to_exit`] of a container config of the caller's.
pub async fn run_config_to_exit(
    env: &PodEnv,
    pod_name: &str,
    mut c: cri::ContainerConfig,
) -> (i32, String) {
    let image = c
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .unwrap_or_default();
    let cmd = c.command.clone();
    let logs = tempfile::tempdir().unwrap();
    let mut pcfg = crate::pods::pod_config(pod_name);
    pcfg.log_directory = logs.path().display().to_string();
    let pod = env.run(pcfg.clone()).await.unwrap();
    c.log_path = "main.log".into();
    let id = create(env, &pod, &pcfg, c).await.unwrap();
    start(env, &id).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let st = loop {
        let st = status(env, &id).await;
        if st.state == cri::ContainerState::ContainerExited as i32 {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{image}: {cmd:?} did not exit"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let log = std::fs::read_to_string(logs.path().join("main.log")).unwrap_or_default();
    env.stop(&pod).await.unwrap();
    env.remove(&pod).await.unwrap();
    // CRI log lines: "<time> <stream> <tag> <text>".
    let out = log
        .lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3))
        .map(|l| format!("{l}\n"))
        .collect();
    (st.exit_code, out)
}

/// The URL of an Exec of `cmd` in container `id` with stdio `o`.
pub async fn exec_url(
    env: &PodEnv,
    id: &str,
    cmd: &[&str],
    o: berth_stream::StdioOptions,
) -> Result<String, tonic::Status> {
    env.cri
        .runtime
        .clone()
        .exec(cri::ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty: o.tty,
            stdin: o.stdin,
            stdout: o.stdout,
            stderr: o.stderr,
        })
        .await
        .map(|r| r.into_inner().url)
}

/// The URL of a PortForward to `ports` of `pod` (empty: any).
pub async fn port_forward_url(
    env: &PodEnv,
    pod: &str,
    ports: &[i32],
) -> Result<String, tonic::Status> {
    env.cri
        .runtime
        .clone()
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod.into(),
            port: ports.to_vec(),
        })
        .await
        .map(|r| r.into_inner().url)
}

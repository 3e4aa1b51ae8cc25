//! The DaemonSet's image (deploy/daemonset.yaml), built from the repo by
//! `scripts/build-deploy-image.sh` around the berth under test, pushed to the test registry
//! with skopeo, pulled into berth with crictl, and run as the DaemonSet runs it: its
//! entrypoint installs berth onto a host root mounted at /host.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use berth_cri_api::v1 as cri;
use berth_e2e::apps::{create, start, status, stop};
use berth_e2e::pods::{PodEnv, mirror_hosts, pod_config};
use berth_e2e::{tools, wait_until};

const IMAGE_HOST: &str = "deploy.invalid";

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemonset_image_builds_loads_into_berth_and_installs_berth_on_a_host_root() {
    let crictl = tools::crictl();
    tools::require(&crictl, "install-cri-tools.sh").unwrap();
    let env = PodEnv::start().await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let berth = berth_e2e::berth::berth_bin();

    // Build it: an OCI layout and an oci-archive, no container daemon.
    let out = work.path().join("image");
    let layout = run(Command::new(repo.join("scripts/build-deploy-image.sh"))
        .arg("--berth")
        .arg(&berth)
        .arg("--out")
        .arg(&out)
        .arg("--tag")
        .arg("e2e"));
    assert_eq!(layout.trim(), format!("{}/layout:e2e", out.display()));
    assert!(out.join("berth-deploy-e2e.tar").exists());

    // Push the archive with skopeo; pull it into berth with crictl, through a mirror.
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!(
            "oci-archive:{}",
            out.join("berth-deploy-e2e.tar").display()
        ))
        .arg(format!(
            "docker://{}/berth/berth-deploy:e2e",
            env.registry.addr
        )));
    env.berth
        .hosts_toml(IMAGE_HOST, &mirror_hosts(IMAGE_HOST, &env.registry.addr))
        .unwrap();
    let image = format!("{IMAGE_HOST}/berth/berth-deploy:e2e");
    let endpoint = format!("unix://{}", env.berth.socket.display());
    let crictl_cmd = || {
        let mut c = Command::new(&crictl);
        c.args([
            "--runtime-endpoint",
            &endpoint,
            "--image-endpoint",
            &endpoint,
        ]);
        c
    };
    run(crictl_cmd().args(["pull", &image]));
    let listed = run(crictl_cmd().args(["images", "-o", "json"]));
    assert!(listed.contains(&image), "crictl images: {listed}");

    // Run it as the DaemonSet does, on a host root of its own.
    let host = work.path().join("host");
    std::fs::create_dir_all(host.join("usr/bin")).unwrap();
    let logs = work.path().join("logs");
    let mut pcfg = pod_config("berth-deploy");
    pcfg.log_directory = logs.display().to_string();
    let pod = env.run(pcfg.clone()).await.unwrap();
    let ctr = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "berth-deploy".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.clone(),
            ..Default::default()
        }),
        log_path: "berth-deploy.log".into(),
        mounts: vec![cri::Mount {
            container_path: "/host".into(),
            host_path: host.display().to_string(),
            ..Default::default()
        }],
        linux: Some(cri::LinuxContainerConfig::default()),
        ..Default::default()
    };
    let id = create(&env, &pod, &pcfg, ctr).await.unwrap();
    start(&env, &id).await;
    let log = logs.join("berth-deploy.log");
    let installed = wait_until(Duration::from_secs(30), || {
        std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("berth-deploy: berth is installed on this node"))
    });
    assert!(
        installed,
        "the entrypoint did not finish: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let text = std::fs::read_to_string(&log).unwrap();
    // No systemd in this host root's PID 1 (the container's own): it says so and goes on.
    assert!(text.contains("the host does not run systemd"), "{text}");

    // What `berth install` puts on a host: the binary under test, the shim beside it, the
    // config, the unit and the record of it all. The installed berth runs on the host.
    assert_eq!(
        std::fs::read(host.join("opt/berth/bin/berth")).unwrap(),
        std::fs::read(&berth).unwrap()
    );
    assert!(host.join("opt/berth/bin/containerd-shim-runc-v2").exists());
    assert!(host.join("opt/berth/bin/containerd-shim-berth-v1").exists());
    assert!(host.join("etc/berth/config.toml").exists());
    assert!(host.join("etc/systemd/system/berth.service").exists());
    let manifest = std::fs::read_to_string(host.join("opt/berth/install.json")).unwrap();
    assert!(manifest.contains("opt/berth/bin/berth"), "{manifest}");
    run(Command::new(host.join("opt/berth/bin/berth")).arg("--version"));

    // The pod stays up (the DaemonSet shows the node as done) and stops on SIGTERM at once.
    assert_eq!(
        status(&env, &id).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    stop(&env, &id, 10).await;
    let s = status(&env, &id).await;
    assert_eq!(s.exit_code, 0, "{s:?}");
    env.stop(&pod).await.unwrap();
    env.remove(&pod).await.unwrap();
}

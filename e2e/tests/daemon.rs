//! The daemon itself: Version, Status, RuntimeConfig, socket handling, unimplemented calls.

use std::process::Command;

use berth_cri_api::v1::{
    RunPodSandboxRequest, RuntimeConfigRequest, StatusRequest, VersionRequest,
};
use berth_e2e::Berth;
use berth_e2e::berth::berth_bin;
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn version_status_runtime_config() {
    let berth =
        Berth::start_with_config("[cni]\nconf_dir = \"/nonexistent/berth-e2e-cni\"\n").unwrap();
    let mut rt = berth.cri().await.unwrap().runtime;
    let v = rt
        .version(VersionRequest {
            version: "v1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (v.runtime_name.as_str(), v.runtime_api_version.as_str()),
        ("berth", "v1")
    );

    let s = rt
        .status(StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let conds = s.status.unwrap().conditions;
    let ready = conds.iter().find(|c| c.r#type == "RuntimeReady").unwrap();
    assert!(ready.status);
    let net = conds.iter().find(|c| c.r#type == "NetworkReady").unwrap();
    assert!(!net.status);
    assert_eq!(net.reason, "NetworkPluginNotReady");
    assert!(
        net.message.contains("/nonexistent/berth-e2e-cni"),
        "{}",
        net.message
    );
    assert!(s.info.contains_key("config"));
    // Its stderr is a file here, as under systemd: plain text, no colour codes.
    let log = berth.log();
    assert!(log.contains("serving CRI"), "{log}");
    assert!(!log.contains('\x1b'), "colour codes in a log file:\n{log}");
    let handlers: Vec<_> = s.runtime_handlers.iter().map(|h| h.name.as_str()).collect();
    // The default handler is listed under "" too, as containerd lists it (critest looks its
    // features up there); runc's (by its `features`) and crun's (1.8.1, by its version) make
    // mounts read-only recursively and run pods in user namespaces, runsc's and kata's do not.
    assert_eq!(handlers, ["", "crun", "kata", "runc", "runsc"]);
    let rro: Vec<_> = s
        .runtime_handlers
        .iter()
        .filter(|h| {
            h.features
                .as_ref()
                .is_some_and(|f| f.recursive_read_only_mounts)
        })
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(rro, ["", "crun", "runc"]);
    // So do user namespaces: runc idmaps its binds itself, berth idmaps crun's.
    let userns: Vec<_> = s
        .runtime_handlers
        .iter()
        .filter(|h| h.features.as_ref().is_some_and(|f| f.user_namespaces))
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(userns, ["", "crun", "runc"]);
    // Which handlers can run here: kata's shim is not on this machine.
    let h: serde_json::Value = serde_json::from_str(&s.info["handlers"]).unwrap();
    assert_eq!(h["runc"]["available"], true, "{h}");
    assert_eq!(h["kata"]["available"], false, "{h}");
    assert!(
        h["kata"]["message"]
            .as_str()
            .unwrap()
            .contains("containerd-shim-kata-v2"),
        "{h}"
    );

    let rc = rt
        .runtime_config(RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rc.linux.unwrap().cgroup_driver,
        berth_cri_api::v1::CgroupDriver::Cgroupfs as i32
    );

    // A request without a config is refused as such, never half-run.
    let e = rt
        .run_pod_sandbox(RunPodSandboxRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("config"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn socket_mode_stale_socket_and_a_second_daemon() {
    use std::os::unix::fs::PermissionsExt;
    let mut berth = Berth::start().unwrap();
    let mode = std::fs::metadata(&berth.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660);

    // A second berth on the same socket refuses to start and says why.
    let other = tempfile::tempdir().unwrap();
    let out = Command::new(berth_bin())
        .args(["--config", "/dev/null", "--address"])
        .arg(&berth.socket)
        .arg("--root")
        .arg(other.path().join("root"))
        .arg("--state")
        .arg(other.path().join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // After a crash the stale socket is replaced.
    berth.kill();
    assert!(berth.socket.exists());
    berth.restart().unwrap();
    berth
        .cri()
        .await
        .unwrap()
        .runtime
        .version(VersionRequest::default())
        .await
        .unwrap();
}

#[test]
fn config_errors_name_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "root = \"/var/lib/x\"\n[registry]\nconfig_paht = \"/etc\"\n",
    )
    .unwrap();
    let out = Command::new(berth_bin())
        .arg("--config")
        .arg(&cfg)
        .arg("config")
        .arg("show")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("config_paht") && err.contains("line 3"),
        "{err}"
    );

    let out = Command::new(berth_bin())
        .args(["config", "default"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("sandbox_image = \"registry.k8s.io/pause:3.9\""));
    let out = Command::new(berth_bin()).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("berth "));
}

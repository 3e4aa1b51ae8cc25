//! RuntimeClass handlers other than runc: gVisor (Debian's runsc through berth's runsc
//! adapter, under containerd's runc shim and under berth's own) running a real pod, and kata,
//! whose shim is not on this machine.

use std::time::Duration;

use berth_cri_api::v1 as cri;
use berth_e2e::apps::{create, ctr, env_with, exec, start, status, stop};
use berth_e2e::pods::pod_config;
use berth_e2e::wait_until;
use tonic::Code;

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gvisor_pod_runs_its_containers_in_the_sentry() {
    gvisor_pod("runsc", "").await;
}

/// The same under berth's own shim.
#[tokio::test(flavor = "multi_thread")]
async fn a_gvisor_pod_runs_under_berths_shim_too() {
    gvisor_pod(
        "gvisor-berth",
        r#"
[runtime.handlers.crun]
runtime_type = "io.containerd.berth.v1"
options = { BinaryName = "crun" }
[runtime.handlers.runc]
runtime_type = "io.containerd.runc.v2"
[runtime.handlers.gvisor-berth]
runtime_type = "io.containerd.berth.v1"
engine_args = ["--network=host"]
options = { BinaryName = "/usr/bin/runsc" }
"#,
    )
    .await;
}

async fn gvisor_pod(handler: &str, config: &str) {
    assert!(
        std::path::Path::new("/usr/bin/runsc").exists(),
        "runsc is missing: scripts/install-deps.sh installs Debian's runsc"
    );
    let env = env_with(config).await;
    let logs = tempfile::tempdir().unwrap();
    let mut pcfg = pod_config("gvisor");
    pcfg.log_directory = logs.path().display().to_string();
    let pod = env.run_with_handler(pcfg.clone(), handler).await.unwrap();
    let (st, _) = env.status(&pod).await.unwrap();
    let ip = st.network.unwrap().ip;
    assert!(!ip.is_empty());

    // The app container's output reaches its CRI log: gVisor's dmesg banner.
    let id = create(
        &env,
        &pod,
        &pcfg,
        ctr(
            "sentry",
            &[
                "sh",
                "-c",
                "trap 'echo term; exit 7' TERM; dmesg; echo up; while :; do sleep 1; done",
            ],
        ),
    )
    .await
    .unwrap();
    start(&env, &id).await;
    let log = logs.path().join("sentry.log");
    let mut text = String::new();
    let up = wait_until(Duration::from_secs(30), || {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("stdout F up")
    });
    assert!(up, "log: {text:?}");
    assert!(text.contains("Starting gVisor..."), "{text}");

    // Exec runs inside the sandbox: gVisor's kernel, and the pod's IP (hostinet in the pod's
    // network namespace).
    let out = exec(&env, &id, &["uname", "-r"], 10).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "4.4.0");
    let out = exec(&env, &id, &["ip", "addr"], 10).await.unwrap();
    let addrs = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(addrs.contains(&format!("inet {ip}/")), "{addrs}");
    let out = exec(&env, &id, &["sh", "-c", "exit 6"], 10).await.unwrap();
    assert_eq!(out.exit_code, 6);

    // A container that exits is reported with its code.
    let quick = create(
        &env,
        &pod,
        &pcfg,
        ctr("quick", &["sh", "-c", "echo bye; exit 3"]),
    )
    .await
    .unwrap();
    start(&env, &quick).await;
    let mut s = cri::ContainerStatus::default();
    let exited = wait_until(Duration::from_secs(20), || {
        s = block_on(status(&env, &quick));
        s.state == cri::ContainerState::ContainerExited as i32
    });
    assert!(exited && s.exit_code == 3 && s.reason == "Error", "{s:?}");

    // Attach: the container's stdin reaches the sandbox, and stdin_once ends it.
    let mut c = ctr("shell", &["sh"]);
    c.stdin = true;
    c.stdin_once = true;
    let shell = create(&env, &pod, &pcfg, c).await.unwrap();
    start(&env, &shell).await;
    let opts = berth_stream::StdioOptions {
        stdin: true,
        stdout: true,
        stderr: true,
        tty: false,
    };
    let url = env
        .cri
        .runtime
        .clone()
        .attach(cri::AttachRequest {
            container_id: shell.clone(),
            stdin: true,
            tty: false,
            stdout: true,
            stderr: true,
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let mut rc = berth_stream::client::RemoteCommand::spdy(&url, opts)
        .await
        .unwrap();
    let stdin = rc.stdin.take().unwrap();
    stdin
        .send(bytes::Bytes::from_static(b"echo in-$(uname -r)\n"))
        .await
        .unwrap();
    let out = rc.stdout.as_mut().unwrap();
    let mut got = String::new();
    while !got.contains("in-4.4.0\n") {
        match tokio::time::timeout(Duration::from_secs(20), out.recv()).await {
            Ok(Some(b)) => got.push_str(&String::from_utf8_lossy(&b)),
            other => panic!("no echo from the sandboxed shell ({other:?}); got {got:?}"),
        }
    }
    drop(stdin);
    rc.status().await;
    let mut s = cri::ContainerStatus::default();
    let exited = wait_until(Duration::from_secs(20), || {
        s = block_on(status(&env, &shell));
        s.state == cri::ContainerState::ContainerExited as i32
    });
    assert!(exited && s.exit_code == 0, "{s:?}");

    // Stop delivers SIGTERM to the container inside the sandbox: its trap runs.
    stop(&env, &id, 10).await;
    let s = status(&env, &id).await;
    assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(s.exit_code, 7, "{s:?}");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("stdout F term"), "{text}");

    env.stop(&pod).await.unwrap();
    env.remove(&pod).await.unwrap();
    env.assert_clean();
    let root = env.berth.state.join("runtime").join(handler).join("k8s.io");
    let left: Vec<_> = std::fs::read_dir(&root)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "runsc containers left: {left:?}");
    assert!(berth_e2e::processes(&["sleep", "3600"]).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kata_pod_fails_naming_the_missing_shim() {
    let env = env_with("").await;
    let e = env
        .run_with_handler(pod_config("kata"), "kata")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("containerd-shim-kata-v2"), "{e:?}");
    assert!(e.message().contains("PATH"), "{e:?}");
    // Nothing was left behind, and the name is free for a retry with another handler.
    env.assert_clean();
    let pod = env.run(pod_config("kata")).await.unwrap();
    env.stop(&pod).await.unwrap();
    env.remove(&pod).await.unwrap();
    env.assert_clean();
}

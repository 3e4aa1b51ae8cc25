//! The node e2e suite's images as this project builds them (`berth_e2e::node_images`) behave
//! as the suite expects of the upstream ones, pulled through a `certs.d` mirror of
//! registry.k8s.io as the suite's node pulls them.

use std::time::{Duration, Instant};

use berth_cri_api::v1 as cri;
use berth_e2e::apps::{create, ctr_of, exec, run_config_to_exit, run_to_exit, start, status, stop};
use berth_e2e::node_images::{self, CADVISOR, PAUSE, UPSTREAMS};
use berth_e2e::pods::pod_config;
use berth_e2e::{PodEnv, TestNet};

const E2E: &str = "registry.k8s.io/e2e-test-images";

async fn node_env() -> PodEnv {
    let env = PodEnv::start_with(TestNet::new().unwrap(), "")
        .await
        .unwrap();
    let bins = node_images::Binaries::find().unwrap();
    assert!(
        bins.cadvisor.is_some(),
        "no cadvisor-standin beside the test (cargo build -p berth-e2e --bins)"
    );
    let refs = node_images::push_all(&env.registry, &bins).await.unwrap();
    for h in UPSTREAMS {
        env.berth
            .hosts_toml(h, &node_images::mirror_hosts(h, &env.registry.addr))
            .unwrap();
    }
    for r in refs {
        env.cri
            .pull(&r)
            .await
            .unwrap_or_else(|e| panic!("{r}: {e:#}"));
    }
    env
}

/// Runs `image`'s own command in a new pod; returns the pod and the container.
async fn serve(env: &PodEnv, name: &str, image: &str) -> (String, String) {
    let pcfg = pod_config(name);
    let pod = env.run(pcfg.clone()).await.unwrap();
    let id = create(env, &pod, &pcfg, ctr_of(image, "main", &[]))
        .await
        .unwrap();
    start(env, &id).await;
    (pod, id)
}

/// Stops `id` with a 30 s grace period: the image's process must go on SIGTERM, at once.
async fn stops_on_sigterm(env: &PodEnv, image: &str, id: &str) {
    let t0 = Instant::now();
    stop(env, id, 30).await;
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "{image}: SIGTERM did not stop it ({:?})",
        t0.elapsed()
    );
    let st = status(env, id).await;
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_node_e2e_images_behave_as_the_suite_expects() {
    let env = node_env().await;
    let busybox = format!("{E2E}/busybox:1.37.0-1");

    // A ConfigMap's keys need not be shell identifiers: the shell passes them on.
    let mut c = ctr_of(&busybox, "main", &["sh", "-c", "env"]);
    c.envs = vec![cri::KeyValue {
        key: "data-1".into(),
        value: "value-1".into(),
    }];
    let (code, out) = run_config_to_exit(&env, "env", c).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("data-1=value-1"), "{out}");
    // And the shell is busybox's otherwise: the specs match its messages.
    let mut c = ctr_of(
        &busybox,
        "main",
        &["/bin/sh", "-c", "echo test > /file; sleep 1"],
    );
    c.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            readonly_rootfs: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let (_, out) = run_config_to_exit(&env, "ro", c).await;
    assert_eq!(out, "/bin/sh: can't create /file: Read-only file system\n");

    // The lifecycle specs' timestamps.
    let (code, out) = run_to_exit(
        &env,
        "nmeter",
        &busybox,
        &[
            "sh",
            "-c",
            "echo `date -u +%FT$(nmeter -d0 '%3t' | head -n1)Z`",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let t = out.trim();
    let shape: String = t
        .chars()
        .map(|c| if c.is_ascii_digit() { '9' } else { c })
        .collect();
    assert_eq!(shape, "9999-99-99T99:99:99.999Z", "{t}");

    // agnhost runs, with curl beside it (the networking specs call it).
    let agnhost = format!("{E2E}/agnhost:2.56");
    let (code, out) = run_to_exit(
        &env,
        "agnhost",
        &agnhost,
        &[
            "sh",
            "-c",
            "/agnhost --help >/dev/null && test -s /localhost.crt && test -s /localhost.key \\
             && nc -h 2>&1 | grep -q 'UDP mode' && curl --version",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("curl "), "{out}");

    // nnp is setuid root; nonroot runs as 1234 by default.
    let (_, out) = run_to_exit(
        &env,
        "nnp",
        &format!("{E2E}/nonewprivs:1.3"),
        &["sh", "-c", "ls -l /usr/local/bin/nnp && nnp"],
    )
    .await;
    assert!(out.starts_with("-rwsr-xr-x"), "{out}");
    assert!(out.contains("Effective uid: 0"), "{out}");
    let (code, out) = run_to_exit(
        &env,
        "nonroot",
        &format!("{E2E}/nonroot:1.4"),
        &["id", "-u"],
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "1234\n"));

    // The web servers answer on port 80, and stop on SIGTERM as the real ones do; so does
    // pause.
    for (image, page) in [
        (format!("{E2E}/nginx:1.14-4"), "Welcome to nginx!"),
        (format!("{E2E}/httpd:2.4.38-4"), "It works!"),
    ] {
        let (pod, id) = serve(&env, "web", &image).await;
        let mut got = String::new();
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end && !got.contains(page) {
            let r = exec(&env, &id, &["wget", "-qO-", "http://127.0.0.1/"], 5)
                .await
                .unwrap();
            got = String::from_utf8_lossy(&r.stdout).into_owned();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(got.contains(page), "{image}: {got:?}");
        stops_on_sigterm(&env, &image, &id).await;
        env.stop(&pod).await.unwrap();
        env.remove(&pod).await.unwrap();
    }
    // agnhost's TLS server, as the lifecycle-hook specs start it, with the image's own
    // certificate.
    {
        let pcfg = pod_config("netexec");
        let pod = env.run(pcfg.clone()).await.unwrap();
        let mut c = ctr_of(&agnhost, "main", &[]);
        c.args = [
            "netexec",
            "--http-port",
            "9090",
            "--udp-port",
            "9091",
            "--tls-cert-file",
            "/localhost.crt",
            "--tls-private-key-file",
            "/localhost.key",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        c.command.clear();
        let id = create(&env, &pod, &pcfg, c).await.unwrap();
        start(&env, &id).await;
        let mut got = String::new();
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end && got != "hi" {
            let r = exec(
                &env,
                &id,
                &["curl", "-ks", "https://127.0.0.1:9090/echo?msg=hi"],
                5,
            )
            .await
            .unwrap();
            got = String::from_utf8_lossy(&r.stdout).into_owned();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(got, "hi", "agnhost netexec over TLS");
        env.stop(&pod).await.unwrap();
        env.remove(&pod).await.unwrap();
    }
    // The cAdvisor stand-in answers the resource collector's question about a cgroup.
    {
        let pcfg = pod_config("cadvisor");
        let pod = env.run(pcfg.clone()).await.unwrap();
        let mut c = ctr_of(CADVISOR, "main", &[]);
        c.command.clear();
        c.args = vec!["--housekeeping_interval=1s".into(), "--port=8090".into()];
        let id = create(&env, &pod, &pcfg, c).await.unwrap();
        start(&env, &id).await;
        let ip = env
            .cri
            .runtime
            .clone()
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: pod.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap();
        let url = format!("http://{ip}:8090/api/v2.1/stats/?type=name&count=1&recursive=false");
        let mut got = serde_json::Value::Null;
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end && got.is_null() {
            if let Ok(r) = reqwest::get(&url).await
                && let Ok(v) = r.json::<serde_json::Value>().await
            {
                got = v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let stats = &got["/"]["stats"][0];
        assert!(stats["memory"]["working_set"].is_u64(), "{got}");
        assert!(stats["cpu"]["usage"]["total"].is_u64(), "{got}");
        assert!(stats["timestamp"].is_string(), "{got}");
        env.stop(&pod).await.unwrap();
        env.remove(&pod).await.unwrap();
    }
    let (pod, id) = serve(&env, "pause", PAUSE).await;
    let st = status(&env, &id).await;
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
    stops_on_sigterm(&env, PAUSE, &id).await;
    env.stop(&pod).await.unwrap();
    env.remove(&pod).await.unwrap();
    env.assert_clean();
}

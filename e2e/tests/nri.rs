//! NRI plugins against a real berth: NRI's sample ulimit-adjuster (from the Go module proxy)
//! and berth's test plugin (`e2e/nri-plugin`, on NRI's own plugin stub), each started by berth
//! from its plugin directory as containerd starts pre-installed plugins. What each plugin does
//! is seen inside a real container; a plugin that hangs, crashes or refuses costs what NRI
//! says and leaks nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_cri_api::v1 as cri;
use berth_e2e::apps::{create, ctr, env_with, start, status, stop};
use berth_e2e::pods::pod_config;
use berth_e2e::{PodEnv, processes, tools, wait_until};

/// A plugin directory and its configuration directory, with the plugins put in it.
struct Plugins {
    dir: tempfile::TempDir,
}

impl Plugins {
    fn new() -> Plugins {
        Plugins {
            dir: tempfile::Builder::new()
                .prefix("berth-nri-")
                .tempdir()
                .unwrap(),
        }
    }

    fn plugins(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    /// Puts `binary` in as plugin `name` (`NN-name`), with configuration `conf`.
    fn add(&self, name: &str, binary: &Path, conf: &str) -> PathBuf {
        tools::require(binary, "install-nri-plugins.sh").unwrap();
        let (plugins, confs) = (self.plugins(), self.dir.path().join("conf.d"));
        std::fs::create_dir_all(&plugins).unwrap();
        std::fs::create_dir_all(&confs).unwrap();
        let path = plugins.join(name);
        std::fs::copy(binary, &path).unwrap();
        if !conf.is_empty() {
            std::fs::write(confs.join(format!("{name}.conf")), conf).unwrap();
        }
        path
    }

    fn events_file(&self) -> PathBuf {
        self.dir.path().join("events.jsonl")
    }

    /// berth's `[nri]` table for these plugins.
    fn config(&self, request_timeout_ms: u64, required: &[&str]) -> String {
        format!(
            "[nri]\nsocket_path = \"{}\"\nplugin_path = \"{}\"\nplugin_config_path = \"{}\"\n\
             plugin_request_timeout_ms = {request_timeout_ms}\nrequired_plugins = {required:?}\n",
            self.dir.path().join("nri.sock").display(),
            self.plugins().display(),
            self.dir.path().join("conf.d").display(),
        )
    }

    /// The events the test plugin recorded: (event, pod id, container name).
    fn events(&self) -> Vec<(String, String, String)> {
        std::fs::read_to_string(self.events_file())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| {
                let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                (s("event"), s("pod_id"), s("container"))
            })
            .collect()
    }
}

/// Waits until berth says plugin `name` is connected.
fn connected(env: &PodEnv, name: &str) {
    let want = format!("NRI plugin connected and synchronized plugin=\"{name}\"");
    assert!(
        wait_until(Duration::from_secs(20), || env.berth.log().contains(&want)),
        "{name} did not connect:\n{}",
        env.berth.log()
    );
}

/// The text of a container's CRI log, once `until` is in it.
fn log_until(path: &Path, until: &str) -> String {
    let mut text = String::new();
    let found = wait_until(Duration::from_secs(30), || {
        text = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.splitn(4, ' ').nth(3))
            .map(|l| format!("{l}\n"))
            .collect();
        text.contains(until)
    });
    assert!(found, "{until:?} not in {}:\n{text}", path.display());
    text
}

async fn remove_pod(env: &PodEnv, pod: &str) {
    env.stop(pod).await.unwrap();
    env.remove(pod).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_hears_every_event_and_its_adjustments_reach_the_container() {
    let p = Plugins::new();
    p.add(
        "10-berth-test",
        &tools::nri_test_plugin(),
        &format!(r#"{{"events": "{}"}}"#, p.events_file().display()),
    );
    let env = env_with(&p.config(2000, &[])).await;
    connected(&env, "10-berth-test");

    let host_file = p.dir.path().join("mounted.txt");
    std::fs::write(&host_file, "from the host, by the plugin\n").unwrap();
    let hook_mark = p.dir.path().join("hook-ran");
    let hook = p.dir.path().join("hook.sh");
    std::fs::write(&hook, format!("#!/bin/sh\ntouch {}\n", hook_mark.display())).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let logs = tempfile::tempdir().unwrap();
    let mut pcfg = pod_config("nri-adjust");
    pcfg.log_directory = logs.path().display().to_string();
    for (k, v) in [
        ("env.main", "NRI_ENV=from-the-plugin".to_string()),
        ("unset.main", "DROPPED".to_string()),
        (
            "mount.main",
            format!("{}:/etc/nri-mounted", host_file.display()),
        ),
        ("device.main", "/dev/nri-null".to_string()),
        ("rlimit.main", "RLIMIT_NOFILE:512:1024".to_string()),
        ("memory.main", "67108864".to_string()),
        ("hook.main", hook.display().to_string()),
        ("annotate.main", "nri.berth.test/marked=yes".to_string()),
    ] {
        pcfg.annotations.insert(format!("test.nri.berth/{k}"), v);
    }
    let pod = env.run(pcfg.clone()).await.unwrap();
    let mut c = ctr(
        "main",
        &[
            "sh",
            "-c",
            "echo env=$NRI_ENV dropped=$DROPPED; cat /etc/nri-mounted; \
             test -c /dev/nri-null && echo null > /dev/nri-null && echo device; \
             echo nofile $(ulimit -n) $(ulimit -Hn); \
             cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; \
             echo done; exec sleep 3600",
        ],
    );
    c.envs.push(cri::KeyValue {
        key: "DROPPED".into(),
        value: "still-here".into(),
    });
    let id = create(&env, &pod, &pcfg, c).await.unwrap();
    assert!(
        hook_mark.exists(),
        "the plugin's createRuntime hook did not run"
    );
    let verbose = env
        .cri
        .runtime
        .clone()
        .container_status(cri::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).unwrap();
    assert_eq!(
        info["runtimeSpec"]["annotations"]["nri.berth.test/marked"], "yes",
        "{info}"
    );
    start(&env, &id).await;
    let out = log_until(&logs.path().join("main.log"), "done\n");
    assert_eq!(
        out,
        "env=from-the-plugin dropped=\nfrom the host, by the plugin\ndevice\nnofile 512 1024\n67108864\ndone\n"
    );
    stop(&env, &id, 0).await;
    env.cri
        .runtime
        .clone()
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    remove_pod(&env, &pod).await;

    // Every event, in the order NRI defines, for this pod.
    let mut seen: Vec<String> = vec![];
    let want = [
        "RunPodSandbox",
        "CreateContainer",
        "PostCreateContainer",
        "StartContainer",
        "PostStartContainer",
        "StopContainer",
        "RemoveContainer",
        "StopPodSandbox",
        "RemovePodSandbox",
    ];
    assert!(
        wait_until(Duration::from_secs(10), || {
            seen = p
                .events()
                .into_iter()
                .filter(|(_, pod_id, _)| *pod_id == pod)
                .map(|(e, _, _)| e)
                .collect();
            seen.len() >= want.len()
        }),
        "{seen:?}"
    );
    assert_eq!(seen, want);
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ulimit_adjuster_sets_the_limits_its_readme_shows() {
    let p = Plugins::new();
    p.add("10-ulimit-adjuster", &tools::ulimit_adjuster(), "");
    let env = env_with(&p.config(2000, &[])).await;
    connected(&env, "10-ulimit-adjuster");
    let logs = tempfile::tempdir().unwrap();
    let mut pcfg = pod_config("ulimits");
    pcfg.log_directory = logs.path().display().to_string();
    // The annotation of the plugin's sample pod.
    pcfg.annotations.insert(
        "ulimits.nri.containerd.io/container.sleep".into(),
        "- type: memlock\n  hard: 987654\n  soft: 645321\n- type: RLIMIT_NOFILE\n  hard: 4096\n  soft: 1024\n- type: nproc\n  hard: 9000\n".into(),
    );
    let pod = env.run(pcfg.clone()).await.unwrap();
    let c = ctr(
        "sleep",
        &[
            "sh",
            "-c",
            "grep -E 'Max (locked memory|open files|processes)' /proc/self/limits; echo done; exec sleep 3600",
        ],
    );
    let id = create(&env, &pod, &pcfg, c).await.unwrap();
    start(&env, &id).await;
    let out = log_until(&logs.path().join("sleep.log"), "done\n");
    let limits: Vec<Vec<&str>> = out
        .lines()
        .filter(|l| l.starts_with("Max"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        limits.contains(&vec!["Max", "processes", "0", "9000", "processes"]),
        "{out}"
    );
    assert!(
        limits.contains(&vec!["Max", "open", "files", "1024", "4096", "files"]),
        "{out}"
    );
    assert!(
        limits.contains(&vec![
            "Max", "locked", "memory", "645321", "987654", "bytes"
        ]),
        "{out}"
    );
    remove_pod(&env, &pod).await;
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_plugin_costs_one_call_its_timeout_and_a_crashed_one_nothing() {
    let p = Plugins::new();
    let hung = p.add(
        "10-hangs",
        &tools::nri_test_plugin(),
        r#"{"hang": ["CreateContainer"]}"#,
    );
    let crashes = p.add(
        "20-crashes",
        &tools::nri_test_plugin(),
        r#"{"crash": ["StartContainer"]}"#,
    );
    let env = env_with(&p.config(500, &[])).await;
    connected(&env, "10-hangs");
    connected(&env, "20-crashes");
    let [hung_pid] = processes(&[hung.to_str().unwrap()])[..] else {
        panic!("one process of {}", hung.display())
    };
    let [crash_pid] = processes(&[crashes.to_str().unwrap()])[..] else {
        panic!("one process of {}", crashes.display())
    };
    let pcfg = pod_config("nri-faults");
    let pod = env.run(pcfg.clone()).await.unwrap();

    // The hung plugin: this call waits its timeout, then goes on without it; it is closed
    // (its process ended) and the next call does not wait for it.
    let t = Instant::now();
    let id = create(&env, &pod, &pcfg, ctr("one", &["sleep", "3600"]))
        .await
        .unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert!(
        wait_until(Duration::from_secs(10), || berth_e2e::dead(hung_pid)),
        "the hung plugin was not ended"
    );
    create(&env, &pod, &pcfg, ctr("two", &["sleep", "3600"]))
        .await
        .unwrap();
    let log = env.berth.log();
    assert_eq!(
        log.matches("NRI plugin failed to answer").count(),
        1,
        "{log}"
    );

    // The crashing plugin: its exit costs the start nothing.
    start(&env, &id).await;
    assert_eq!(
        status(&env, &id).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    assert!(wait_until(Duration::from_secs(10), || berth_e2e::dead(
        crash_pid
    )));
    assert!(
        wait_until(Duration::from_secs(10), || env
            .berth
            .log()
            .contains("NRI plugin disconnected plugin=\"20-crashes\"")),
        "{}",
        env.berth.log()
    );
    remove_pod(&env, &pod).await;
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusing_or_required_plugin_fails_the_call_and_leaks_nothing() {
    let p = Plugins::new();
    p.add(
        "10-refuses",
        &tools::nri_test_plugin(),
        r#"{"refuse": ["CreateContainer"]}"#,
    );
    p.add(
        "20-required",
        &tools::nri_test_plugin(),
        r#"{"hang": ["RunPodSandbox"]}"#,
    );
    let env = env_with(&p.config(500, &["required"])).await;
    connected(&env, "10-refuses");
    connected(&env, "20-required");

    // A required plugin that does not answer fails the pod, and what was made is undone.
    let pcfg = pod_config("nri-required");
    let e = env.run(pcfg.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(
        e.message()
            .contains("required NRI plugin 20-required failed RunPodSandbox"),
        "{e:?}"
    );
    assert!(env.list(None).await.is_empty());
    env.assert_clean();

    // It is gone now; the pod starts. The refusing plugin refuses its container, naming
    // itself, and nothing of the container is left.
    let pod = env.run(pcfg.clone()).await.unwrap();
    let e = create(&env, &pod, &pcfg, ctr("refused", &["true"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains(
            "NRI plugin 10-refuses failed CreateContainer: test plugin refuses CreateContainer"
        ),
        "{e:?}"
    );
    let listed = env
        .cri
        .runtime
        .clone()
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(listed.is_empty(), "{listed:?}");
    remove_pod(&env, &pod).await;
    env.assert_clean();
}

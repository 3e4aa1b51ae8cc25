//! A real kubelet (standalone, static pods) drives a real berth: what a node does, checked
//! through the kubelet's own API (`/pods`, `/containerLogs`, `/run`, `/stats/summary`,
//! `/healthz`) and through berth over CRI.
//!
//! Needs the kubelet built by `scripts/install-kubelet.sh` (the test command builds it).

use std::time::Duration;

use berth_cri_api::v1 as cri;
use berth_e2e::apps::APP;
use berth_e2e::kubelet::{KubeletEnv, KubeletOptions};
use serde_json::{Value, json};

/// How long a pod may take to converge (the kubelet's sync loop, probes, image pulls from the
/// local registry).
const CONVERGE: Duration = Duration::from_secs(90);

/// A static pod manifest: `containers` with `spec` merged in.
fn pod(name: &str, containers: Value, spec: Value) -> Value {
    let mut p = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "containers": containers,
            // No cluster DNS here: the node's resolv.conf, without the kubelet's warning.
            "dnsPolicy": "Default",
            "terminationGracePeriodSeconds": 2,
        },
    });
    if let (Some(dst), Some(src)) = (p["spec"].as_object_mut(), spec.as_object()) {
        for (k, v) in src {
            dst.insert(k.clone(), v.clone());
        }
    }
    p
}

/// A container of the app image running `sh -c script`.
fn sh(name: &str, script: &str) -> Value {
    json!({
        "name": name,
        "image": APP,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/sh", "-c", script],
    })
}

/// The app image's httpd serving /www on port 8080, with `readiness` as its readiness probe
/// (`Value::Null`: none).
fn httpd(name: &str, readiness: Value) -> Value {
    let mut c = json!({
        "name": name,
        "image": APP,
        "imagePullPolicy": "IfNotPresent",
        "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
    });
    if !readiness.is_null() {
        c["readinessProbe"] = readiness;
    }
    c
}

fn phase(p: &Value) -> &str {
    p["status"]["phase"].as_str().unwrap_or("")
}

/// The status of container `name` in pod `p`.
fn ctr_status<'a>(p: &'a Value, name: &str) -> &'a Value {
    p["status"]["containerStatuses"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

/// The log of `container` of pod `name` once `done` says it has all the test waits for: the
/// kubelet reports a container running before what it prints has reached its log.
async fn logs_when(
    k: &berth_e2e::kubelet::Kubelet,
    name: &str,
    container: &str,
    done: impl Fn(&str) -> bool,
) -> String {
    let end = std::time::Instant::now() + CONVERGE;
    loop {
        let logs = k
            .container_logs(name, container, "")
            .await
            .unwrap_or_default();
        if done(&logs) || std::time::Instant::now() >= end {
            return logs;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn all_ready(p: &Value) -> bool {
    phase(p) == "Running"
        && p["status"]["containerStatuses"]
            .as_array()
            .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c["ready"] == true))
}

/// berth's pods over CRI whose metadata name is `full` (the kubelet's pod name).
async fn berth_pods(env: &KubeletEnv, full: &str) -> Vec<cri::PodSandbox> {
    env.env()
        .list(None)
        .await
        .into_iter()
        .filter(|p| p.metadata.as_ref().is_some_and(|m| m.name == full))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_two_container_pod_runs_serves_its_ip_and_is_removed_with_its_manifest() {
    let env = KubeletEnv::start(KubeletOptions::default()).await.unwrap();
    let k = &env.kubelet;
    let log_from = k.log().len();
    let server = httpd(
        "server",
        json!({"httpGet": {"path": "/index.html", "port": 8080}, "periodSeconds": 1}),
    );
    let client = sh(
        "client",
        "while true; do wget -q -O /tmp/got http://127.0.0.1:8080/index.html && echo fetched; sleep 1; done",
    );
    k.add_pod(&pod("web", json!([server, client]), json!({})))
        .unwrap();
    let p = k
        .wait_pod("web", CONVERGE, "running and ready", all_ready)
        .await
        .unwrap();

    // The pod IP answers from the host.
    let ip = p["status"]["podIP"].as_str().expect("podIP").to_string();
    assert!(
        ip.starts_with(&format!("{}.", env.env().net.prefix)),
        "pod IP {ip} is not on the test network {}",
        env.env().net.prefix
    );
    let body = reqwest::get(format!("http://{ip}:8080/index.html"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "hello over localhost\n");

    // The client reached the server on 127.0.0.1: its log (through the kubelet) and its
    // file (read by an exec through the kubelet) say so.
    let mut logs = String::new();
    for _ in 0..40 {
        logs = k.container_logs("web", "client", "").await.unwrap();
        if logs.contains("fetched") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(logs.contains("fetched"), "client log: {logs:?}");
    let got = k.run_in("web", "client", "cat /tmp/got").await.unwrap();
    assert_eq!(got, "hello over localhost\n");

    // The kubelet's stats summary has both containers, with the usage berth reports.
    let mut summary = Value::Null;
    let mut found = false;
    for _ in 0..60 {
        summary = k.get_json("/stats/summary").await.unwrap();
        let pods = summary["pods"].as_array().cloned().unwrap_or_default();
        found = pods
            .iter()
            .find(|p| p["podRef"]["name"] == k.pod_name("web").as_str())
            .is_some_and(|p| {
                let cs = p["containers"].as_array().cloned().unwrap_or_default();
                cs.len() == 2
                    && cs.iter().all(|c| {
                        c["memory"]["workingSetBytes"].as_u64().unwrap_or(0) > 0
                            && c["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap_or(0) > 0
                    })
            });
        if found {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(found, "no stats for web's containers: {summary}");

    // The kubelet's view of the runtime (`/runningpods/`: what it lists from berth) has the
    // pod with both containers.
    let running = k.get_json("/runningpods/").await.unwrap();
    let listed = running["items"]
        .as_array()
        .and_then(|ps| {
            ps.iter()
                .find(|p| p["metadata"]["name"] == k.pod_name("web").as_str())
        })
        .map(|p| {
            let mut names: Vec<String> = p["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .collect();
            names.sort();
            names
        });
    assert_eq!(
        listed,
        Some(vec!["client".to_string(), "server".to_string()]),
        "{running}"
    );

    // berth's view: one ready sandbox named as the kubelet names it.
    let full = k.pod_name("web");
    let pods = berth_pods(&env, &full).await;
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(pods[0].state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(pods[0].metadata.as_ref().unwrap().namespace, "default");

    // Removing the manifest removes the pod: containers stopped, sandbox removed, nothing
    // left behind.
    k.remove_pod("web").unwrap();
    let mut gone = false;
    for _ in 0..(CONVERGE.as_secs() * 4) {
        if berth_pods(&env, &full).await.is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(gone, "berth still has pod {full}");
    env.env().assert_clean();
    k.assert_no_runtime_errors_since(log_from);
}

/// The container id of a container status (`<runtime>://<id>`).
fn ctr_id(status: &Value) -> String {
    let id = status["containerID"].as_str().unwrap_or("");
    id.rsplit("://").next().unwrap_or("").to_string()
}

fn restarts(p: &Value, name: &str) -> u64 {
    ctr_status(p, name)["restartCount"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn probes_and_restart_policies_are_carried_out() {
    let env = KubeletEnv::start(KubeletOptions::default()).await.unwrap();
    let k = &env.kubelet;
    let log_from = k.log().len();

    // An exec liveness probe that starts failing after 3 s: the kubelet kills the container
    // and starts attempt 1. A readiness probe (exec) gates readiness.
    let mut live = sh(
        "live",
        "touch /tmp/healthy; sleep 3; rm /tmp/healthy; exec sleep 3600",
    );
    live["livenessProbe"] = json!({
        "exec": {"command": ["cat", "/tmp/healthy"]},
        "periodSeconds": 1,
        "failureThreshold": 1,
    });
    live["readinessProbe"] = json!({
        "exec": {"command": ["true"]},
        "periodSeconds": 1,
    });
    k.add_pod(&pod("probe", json!([live]), json!({}))).unwrap();

    // OnFailure: exit 1 is restarted, exit 0 is not.
    k.add_pod(&pod(
        "onfail",
        json!([sh("fails", "sleep 1; exit 1"), sh("succeeds", "exit 0")]),
        json!({"restartPolicy": "OnFailure"}),
    ))
    .unwrap();
    // Never: left exited.
    k.add_pod(&pod(
        "never",
        json!([sh("once", "exit 3")]),
        json!({"restartPolicy": "Never"}),
    ))
    .unwrap();

    let p = k
        .wait_pod("probe", CONVERGE, "restarted by its liveness probe", |p| {
            restarts(p, "live") >= 1
        })
        .await
        .unwrap();
    let last = &ctr_status(&p, "live")["lastState"]["terminated"];
    assert!(last.is_object(), "no lastState.terminated: {p}");
    // berth holds attempt 1 of the container.
    let full = k.pod_name("probe");
    let mut rt = env.env().cri.runtime.clone();
    let ctrs = rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                label_selector: [("io.kubernetes.pod.name".to_string(), full.clone())].into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(
        ctrs.iter()
            .any(|c| c.metadata.as_ref().is_some_and(|m| m.attempt >= 1)),
        "no attempt 1 in berth: {ctrs:?}"
    );
    k.wait_pod("probe", CONVERGE, "ready again", all_ready)
        .await
        .unwrap();

    let p = k
        .wait_pod("onfail", CONVERGE, "restarting `fails`", |p| {
            restarts(p, "fails") >= 1
                && ctr_status(p, "succeeds")["state"]["terminated"]["exitCode"] == 0
        })
        .await
        .unwrap();
    assert_eq!(restarts(&p, "succeeds"), 0, "{p}");
    assert_eq!(
        ctr_status(&p, "succeeds")["state"]["terminated"]["reason"],
        "Completed"
    );

    let p = k
        .wait_pod("never", CONVERGE, "failed", |p| phase(p) == "Failed")
        .await
        .unwrap();
    let once = ctr_status(&p, "once");
    assert_eq!(once["restartCount"], 0, "{p}");
    assert_eq!(once["state"]["terminated"]["exitCode"], 3, "{p}");
    assert_eq!(once["state"]["terminated"]["reason"], "Error", "{p}");

    k.assert_no_runtime_errors_since(log_from);
}

#[tokio::test(flavor = "multi_thread")]
async fn init_containers_run_in_order_before_the_app() {
    let env = KubeletEnv::start(KubeletOptions::default()).await.unwrap();
    let k = &env.kubelet;
    let mount = json!([{"name": "work", "mountPath": "/work"}]);
    let mut init1 = sh("init1", "echo one >> /work/order");
    init1["volumeMounts"] = mount.clone();
    let mut init2 = sh("init2", "test -f /work/order && echo two >> /work/order");
    init2["volumeMounts"] = mount.clone();
    let mut app = sh("app", "cat /work/order; exec sleep 3600");
    app["volumeMounts"] = mount;
    k.add_pod(&pod(
        "init",
        json!([app]),
        json!({
            "initContainers": [init1, init2],
            "volumes": [{"name": "work", "emptyDir": {}}],
        }),
    ))
    .unwrap();
    let p = k
        .wait_pod("init", CONVERGE, "running", all_ready)
        .await
        .unwrap();
    let inits = p["status"]["initContainerStatuses"].as_array().unwrap();
    assert_eq!(inits.len(), 2, "{p}");
    for i in inits {
        assert_eq!(i["state"]["terminated"]["reason"], "Completed", "{p}");
    }
    let logs = k.container_logs("init", "app", "").await.unwrap();
    assert_eq!(logs, "one\ntwo\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn resources_become_cgroup_values_and_a_memory_breach_is_oomkilled() {
    let env = KubeletEnv::start(KubeletOptions::default()).await.unwrap();
    let k = &env.kubelet;
    let log_from = k.log().len();
    let mut limited = sh("limited", "exec sleep 3600");
    limited["resources"] = json!({
        "requests": {"cpu": "100m", "memory": "32Mi"},
        "limits": {"cpu": "200m", "memory": "64Mi"},
    });
    k.add_pod(&pod("res", json!([limited]), json!({}))).unwrap();
    // A shell that holds 200 MB in a variable, under a 32 MiB limit.
    let mut hog = sh(
        "hog",
        "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
    );
    hog["resources"] = json!({"limits": {"memory": "32Mi"}});
    k.add_pod(&pod("oom", json!([hog]), json!({"restartPolicy": "Never"})))
        .unwrap();

    let p = k
        .wait_pod("res", CONVERGE, "running", all_ready)
        .await
        .unwrap();
    assert_eq!(p["status"]["qosClass"], "Burstable");
    let uid = p["metadata"]["uid"].as_str().unwrap();
    let id = ctr_id(ctr_status(&p, "limited"));
    let read = |h: &str, file: &str| -> String {
        let path = k.pod_cgroup(h, "burstable", uid).join(&id).join(file);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
            .trim()
            .to_string()
    };
    assert_eq!(
        read("memory", "memory.limit_in_bytes"),
        (64u64 << 20).to_string()
    );
    assert_eq!(read("cpu", "cpu.cfs_quota_us"), "20000");
    assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
    assert_eq!(read("cpu", "cpu.shares"), "102");

    let p = k
        .wait_pod("oom", CONVERGE, "terminated", |p| {
            ctr_status(p, "hog")["state"]["terminated"].is_object()
        })
        .await
        .unwrap();
    let t = &ctr_status(&p, "hog")["state"]["terminated"];
    assert_eq!(t["reason"], "OOMKilled", "{p}");
    assert_eq!(t["exitCode"], 137, "{p}");

    k.assert_no_runtime_errors_since(log_from);
}

/// The number at the end of the last line of `logs` (`<word> <n>`).
fn last_number(logs: &str) -> Option<u64> {
    logs.lines().last()?.rsplit(' ').next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_flow_through_the_kubelet_after_berth_and_the_kubelet_rotate_them() {
    // berth rotates at 16 KiB; the kubelet at 4 KiB, every 3 s (ReopenContainerLog).
    let env = KubeletEnv::start_with(
        "[runtime]\ncontainer_log_max_size = 16384\ncontainer_log_max_files = 3\n",
        KubeletOptions {
            config: "containerLogMaxSize: 4Ki\ncontainerLogMaxFiles: 3\ncontainerLogMonitorInterval: 3s\n"
                .into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let k = &env.kubelet;
    let log_from = k.log().len();
    // ~1 KiB/s: only the kubelet rotates it. ~40 KiB/s: berth rotates it, several times a
    // second, and the kubelet finds berth's rotated files beside its own.
    let slow = sh(
        "slow",
        "i=0; while true; do echo slow $i; i=$((i+1)); sleep 0.05; done",
    );
    let fast = sh(
        "fast",
        "pad=$(head -c 300 /dev/zero | tr '\\0' x); i=0; while true; do echo $pad fast $i; i=$((i+1)); sleep 0.01; done",
    );
    k.add_pod(&pod("chatty", json!([slow, fast]), json!({})))
        .unwrap();
    let p = k
        .wait_pod("chatty", CONVERGE, "running", all_ready)
        .await
        .unwrap();
    let uid = p["metadata"]["uid"].as_str().unwrap();
    let dir = k
        .pod_logs
        .join(format!("default_{}_{uid}", k.pod_name("chatty")));
    let rotated = |ctr: &str| berth_sandbox::logs::rotated_logs(&dir.join(ctr).join("0.log"));

    // The kubelet rotated `slow` (berth never would at this rate): the live file starts
    // past line 0, and the kubelet still reads new lines from it.
    let ok = berth_e2e::wait_until(Duration::from_secs(40), || !rotated("slow").is_empty());
    assert!(
        ok,
        "the kubelet did not rotate slow's log: {:?}",
        rotated("slow")
    );
    // (Right after a rotation the live file may be empty for a moment.)
    let mut a = None;
    for _ in 0..20 {
        a = last_number(
            &k.container_logs("chatty", "slow", "tailLines=1")
                .await
                .unwrap(),
        );
        if a.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let b = last_number(
        &k.container_logs("chatty", "slow", "tailLines=1")
            .await
            .unwrap(),
    );
    assert!(
        a.is_some() && b > a,
        "slow's log stopped after rotation: {a:?} then {b:?}"
    );
    let live = std::fs::read_to_string(dir.join("slow/0.log")).unwrap();
    let first = live
        .lines()
        .next()
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
    assert!(
        first > Some(0),
        "slow's live log was not reopened: starts {first:?}"
    );

    // berth rotated `fast`; the kubelet reads on, and the rotated files are kept to the
    // kubelet's count (containerLogMaxFiles 3: two rotated ones, compressed or not, and
    // one the kubelet may be compressing).
    let ok = berth_e2e::wait_until(Duration::from_secs(20), || rotated("fast").len() >= 2);
    assert!(ok, "fast's log was not rotated: {:?}", rotated("fast"));
    let a = last_number(
        &k.container_logs("chatty", "fast", "tailLines=1")
            .await
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let b = last_number(
        &k.container_logs("chatty", "fast", "tailLines=1")
            .await
            .unwrap(),
    );
    assert!(a.is_some() && b > a, "fast's log stopped: {a:?} then {b:?}");
    let files = rotated("fast");
    assert!(files.len() <= 3, "rotated files pile up: {files:?}");

    k.assert_no_runtime_errors_since(log_from);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_berth_killed_and_restarted_under_the_kubelet_keeps_its_pods() {
    let mut env = KubeletEnv::start(KubeletOptions::default()).await.unwrap();
    let web = httpd("server", Value::Null);
    env.kubelet
        .add_pod(&pod("steady", json!([web]), json!({})))
        .unwrap();
    let before = env
        .kubelet
        .wait_pod("steady", CONVERGE, "running", all_ready)
        .await
        .unwrap();
    let full = env.kubelet.pod_name("steady");
    let sandboxes = berth_pods(&env, &full).await;
    assert_eq!(sandboxes.len(), 1);
    let ctr_before = ctr_id(ctr_status(&before, "server"));
    let ip = before["status"]["podIP"].as_str().unwrap().to_string();

    // SIGKILL berth; the kubelet sees its runtime go away for 3 s.
    env.env_mut().berth.kill();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(env.kubelet.healthz().await.unwrap(), "ok");
    }
    env.env_mut().berth.restart().unwrap();
    env.env_mut().reconnect().await.unwrap();
    let back = env.kubelet.log().len();

    // The pod kept running: same sandbox, same container, no restart, still serving.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = env.kubelet.pod("steady").await.unwrap().unwrap();
    assert!(all_ready(&after), "{after}");
    assert_eq!(ctr_id(ctr_status(&after, "server")), ctr_before);
    assert_eq!(restarts(&after, "server"), 0);
    let now = berth_pods(&env, &full).await;
    assert_eq!(now.len(), 1, "{now:?}");
    assert_eq!(now[0].id, sandboxes[0].id);
    let body = reqwest::get(format!("http://{ip}:8080/index.html"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "hello over localhost\n");
    assert_eq!(env.kubelet.healthz().await.unwrap(), "ok");
    // (What it logged while berth was down is expected: connection refused.)
    env.kubelet.assert_no_runtime_errors_since(back);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_kubelets_image_and_container_gc_work_against_berth() {
    // The kubelet's periodic image GC runs at its start (when every image was just seen, so
    // none is old enough) and then every 5 minutes; its eviction manager runs the same image
    // GC (DeleteUnusedImages: ImageFsInfo, ListImages, RemoveImage) and removes every dead
    // container every 10 s while the image filesystem is under pressure. Pressure here is
    // an eviction threshold of 99% free; static pods are critical, so none is evicted.
    let env = KubeletEnv::start(KubeletOptions {
        config: "imageMinimumGCAge: 1s\n".into(),
        eviction_hard: Some(
            "  memory.available: 100Mi\n  nodefs.available: 1%\n  imagefs.available: 99%\n  nodefs.inodesFree: 1%"
                .into(),
        ),
        ..Default::default()
    })
    .await
    .unwrap();
    let k = &env.kubelet;
    let img = env.env().cri.image.clone();
    let listed = || async {
        img.clone()
            .list_images(cri::ListImagesRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .images
            .into_iter()
            .flat_map(|i| i.repo_tags)
            .collect::<Vec<_>>()
    };
    // The app image berth pulled before the kubelet came was unused: removed.
    let mut tags = listed().await;
    for _ in 0..(60 * 4) {
        if !tags.iter().any(|t| t == APP) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        tags = listed().await;
    }
    assert!(
        !tags.iter().any(|t| t == APP),
        "unused image kept: {tags:?}"
    );
    let fs = img
        .clone()
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!fs.image_filesystems.is_empty());

    // A container that keeps failing: its dead attempts are removed (the pod pulls the
    // image again; static pods are admitted under pressure).
    k.add_pod(&pod("crashy", json!([sh("crash", "exit 1")]), json!({})))
        .unwrap();
    let full = k.pod_name("crashy");
    let attempts = || async {
        let mut rt = env.env().cri.runtime.clone();
        let mut v: Vec<u32> = rt
            .list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    label_selector: [("io.kubernetes.pod.name".to_string(), full.clone())].into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .containers
            .into_iter()
            .filter_map(|c| c.metadata.map(|m| m.attempt))
            .collect();
        v.sort();
        v
    };
    let mut seen = vec![];
    for _ in 0..(CONVERGE.as_secs() * 4) {
        seen = attempts().await;
        // Attempt 2 or later exists and attempt 0 is gone: a dead container was collected.
        if seen.last().is_some_and(|a| *a >= 2) && !seen.contains(&0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        seen.last().is_some_and(|a| *a >= 2) && !seen.contains(&0),
        "container GC did not remove attempt 0: {seen:?}"
    );
    assert!(seen.len() <= 2, "dead containers kept: {seen:?}");
    // The sandbox image, pulled for the pod and pinned, outlived the GC rounds since.
    let tags = listed().await;
    assert!(
        tags.iter().any(|t| t == berth_e2e::pods::PAUSE_IMAGE),
        "pinned sandbox image removed: {tags:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_evented_pleg_the_kubelet_follows_berths_container_events() {
    let env = KubeletEnv::start(KubeletOptions {
        feature_gates: vec!["EventedPLEG"],
        verbosity: Some(4),
        ..Default::default()
    })
    .await
    .unwrap();
    let k = &env.kubelet;
    let log_from = k.log().len();
    // With events, the kubelet relists only every 300 s: a pod that converges within a
    // minute, and a container restarted within one, were seen through GetContainerEvents.
    k.add_pod(&pod(
        "evented",
        json!([sh("blink", "sleep 2; exit 1")]),
        json!({"restartPolicy": "OnFailure"}),
    ))
    .unwrap();
    k.wait_pod("evented", Duration::from_secs(60), "restarted", |p| {
        restarts(p, "blink") >= 1
    })
    .await
    .unwrap();
    let log = k.log();
    let log = &log[log_from..];
    assert!(
        log.contains("Evented PLEG: Generated pod status from the received event"),
        "the kubelet did not take a status from berth's events"
    );
    assert!(
        !log.contains("Fall back to Generic PLEG relisting"),
        "the kubelet gave up on berth's events"
    );
    assert!(
        !log.contains("Evented PLEG: Failed to get container events"),
        "GetContainerEvents failed"
    );
    k.assert_no_runtime_errors_since(log_from);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_stats_from_cri_the_kubelet_serves_berths_pod_metrics() {
    // PodAndContainerStatsFromCRI: the kubelet takes pod and container stats from berth
    // (ListPodSandboxStats) and serves berth's ListPodSandboxMetrics on /metrics/cadvisor.
    let env = KubeletEnv::start(KubeletOptions {
        feature_gates: vec!["PodAndContainerStatsFromCRI"],
        ..Default::default()
    })
    .await
    .unwrap();
    let k = &env.kubelet;
    let log_from = k.log().len();
    k.add_pod(&pod(
        "measured",
        json!([sh("work", "exec sleep 3600")]),
        json!({}),
    ))
    .unwrap();
    k.wait_pod("measured", CONVERGE, "running", all_ready)
        .await
        .unwrap();
    let full = k.pod_name("measured");
    let mut text = String::new();
    let mut found = false;
    for _ in 0..60 {
        let (status, body) = k.get_text("/metrics/cadvisor").await.unwrap();
        assert_eq!(status, 200, "{body}");
        text = body;
        found = text.lines().any(|l| {
            l.starts_with("container_memory_working_set_bytes{")
                && l.contains("container=\"work\"")
                && l.contains(&format!("pod=\"{full}\""))
        }) && text
            .lines()
            .any(|l| l.starts_with("container_network_receive_bytes_total{") && l.contains(&full));
        if found {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(found, "no metrics of {full} in /metrics/cadvisor:\n{text}");
    k.assert_no_runtime_errors_since(log_from);
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_and_port_forward_through_the_kubelets_streaming_proxy_reach_berth() {
    use berth_stream::StdioOptions;
    use berth_stream::client::{RemoteCommand, exit_code, read_all};
    let env = KubeletEnv::start(KubeletOptions::default()).await.unwrap();
    let k = &env.kubelet;
    let log_from = k.log().len();
    let web = httpd(
        "web",
        json!({"tcpSocket": {"port": 8080}, "periodSeconds": 1}),
    );
    k.add_pod(&pod(
        "streamed",
        json!([sh("box", "exec sleep 3600"), web]),
        json!({}),
    ))
    .unwrap();
    k.wait_pod("streamed", CONVERGE, "running", all_ready)
        .await
        .unwrap();
    // What `kubectl exec` asks of the kubelet (the API server passes it on): the kubelet
    // calls Exec on berth and proxies the upgraded connection to berth's streaming server.
    berth_stream::client::trust_ca(&std::fs::read(&k.ca).unwrap()).unwrap();
    let cmd: String = [
        "sh",
        "-c",
        "echo through the kubelet; echo on stderr >&2; exit 3",
    ]
    .iter()
    .map(|c| format!("command={}&", berth_e2e::kubelet::query_escape(c)))
    .collect();
    let url = format!(
        "https://127.0.0.1:{}/exec/default/{}/box?{cmd}output=1&error=1",
        k.port,
        k.pod_name("streamed")
    );
    let opts = StdioOptions {
        stdin: false,
        stdout: true,
        stderr: true,
        tty: false,
    };
    let mut rc = RemoteCommand::spdy(&url, opts).await.unwrap();
    let out = read_all(rc.stdout.as_mut().unwrap()).await;
    let err = read_all(rc.stderr.as_mut().unwrap()).await;
    assert_eq!(String::from_utf8_lossy(&out), "through the kubelet\n");
    assert_eq!(String::from_utf8_lossy(&err), "on stderr\n");
    assert_eq!(exit_code(&rc.status().await), Some(3));

    // What `kubectl port-forward` asks of it: PortForward on berth, the SPDY session
    // proxied; a request through it reaches the pod's port 8080.
    let url = format!(
        "https://127.0.0.1:{}/portForward/default/{}",
        k.port,
        k.pod_name("streamed")
    );
    let (session, proto) = berth_stream::client::spdy_connect(&url, &["portforward.k8s.io"])
        .await
        .unwrap();
    assert_eq!(proto, "portforward.k8s.io");
    let mut f = berth_stream::client::spdy_forward(&session, 8080, 0)
        .await
        .unwrap();
    f.to_pod
        .send(bytes::Bytes::from_static(
            b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n",
        ))
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Ok(Some(b)) = tokio::time::timeout(Duration::from_secs(10), f.from_pod.recv()).await {
        got.extend_from_slice(&b);
    }
    let page = String::from_utf8_lossy(&got);
    assert!(page.contains("hello over localhost"), "{page}");
    k.assert_no_runtime_errors_since(log_from);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_volume_of_a_pod_mounts_the_images_files_read_only() {
    let env = KubeletEnv::start(KubeletOptions {
        feature_gates: vec!["ImageVolume"],
        ..Default::default()
    })
    .await
    .unwrap();
    let k = &env.kubelet;
    let log_from = k.log().len();
    let mut c = sh("reader", "exec sleep 3600");
    c["volumeMounts"] = json!([
        {"name": "app", "mountPath": "/app"},
        {"name": "app", "mountPath": "/www-only", "subPath": "www"},
    ]);
    k.add_pod(&pod(
        "imagevol",
        json!([c]),
        json!({"volumes": [
            {"name": "app", "image": {"reference": APP, "pullPolicy": "IfNotPresent"}}
        ]}),
    ))
    .unwrap();
    k.wait_pod("imagevol", CONVERGE, "running", all_ready)
        .await
        .unwrap();
    // (The kubelet's /run splits the command at spaces: no shell.)
    let out = k
        .run_in(
            "imagevol",
            "reader",
            "cat /app/www/index.html /www-only/index.html",
        )
        .await
        .unwrap();
    assert_eq!(out, "hello over localhost\nhello over localhost\n");
    let e = k
        .run_in("imagevol", "reader", "touch /app/x")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("Read-only file system"), "{e}");

    // Removing the manifest stops the pod and removes its container, and with it the image
    // volume's mount (the sandbox itself goes at the kubelet's next container GC, a minute
    // later: that the other tests check).
    let state = env.env().berth.state.clone();
    let volumes_left = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
            .filter(|p| p.starts_with(&state.display().to_string()) && p.contains("image-volumes"))
            .count()
    };
    assert_eq!(volumes_left(), 2, "one mount per image volume");
    k.remove_pod("imagevol").unwrap();
    let unmounted = berth_e2e::wait_until(CONVERGE, || volumes_left() == 0);
    assert!(
        unmounted,
        "image volumes still mounted after the pod was removed"
    );
    k.assert_no_runtime_errors_since(log_from);
}

/// The node features of Kubernetes 1.33-1.36 as the kubelet asks for them: a `hostUsers:
/// false` pod and both supplemental groups policies, under berth's default handler (crun
/// 1.8.1, whose binds berth idmaps; the `runc` handler's user namespaces are driven over CRI
/// and by the node e2e suite). (A standalone kubelet has no RuntimeClass manager, and without
/// one it takes every handler for one without recursive read-only mounts: those are driven
/// over CRI and by critest.)
#[tokio::test(flavor = "multi_thread")]
async fn user_namespaces_and_group_policies_under_the_kubelet() {
    let env = KubeletEnv::start_with("", KubeletOptions::default())
        .await
        .unwrap();
    let k = &env.kubelet;
    let log_from = k.log().len();

    berth_e2e::apps::groups_image()
        .push(&env.env().registry, "berth-e2e/groups", Some("1"))
        .await
        .unwrap();
    let groups_image = berth_e2e::apps::GROUPS;

    let mut userns = sh(
        "app",
        "cat /proc/self/uid_map; echo x > /data/f && stat -c %u /data/f && touch /etc/made && echo rootfs-writable; exec sleep 3600",
    );
    userns["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}]);
    k.add_pod(&pod(
        "userns",
        json!([userns]),
        json!({"hostUsers": false, "volumes": [{"name": "data", "emptyDir": {}}]}),
    ))
    .unwrap();

    for (name, policy) in [("strict", "Strict"), ("merge", "Merge")] {
        let c = json!({
            "name": "app",
            "image": groups_image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["/bin/sh", "-c", "id -G; exec sleep 3600"],
        });
        k.add_pod(&pod(
            name,
            json!([c]),
            json!({"securityContext": {
                "runAsUser": 1000,
                "runAsGroup": 1000,
                "supplementalGroups": [1234],
                "supplementalGroupsPolicy": policy,
            }}),
        ))
        .unwrap();
    }

    // hostUsers: false: the pod's root is a high id on the host; the emptyDir (idmapped) and
    // the rootfs (idmapped layers) are its root's.
    let p = k
        .wait_pod("userns", CONVERGE, "running", all_ready)
        .await
        .unwrap();
    let logs = logs_when(k, "userns", "app", |l| l.contains("rootfs-writable")).await;
    let map: Vec<u64> = logs
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    assert!(
        map.len() == 3 && map[0] == 0 && map[1] >= 65536 && map[2] == 65536,
        "{logs}"
    );
    assert!(logs.ends_with("\n0\nrootfs-writable\n"), "{logs}");
    let sandbox = berth_pods(&env, &k.pod_name("userns")).await;
    assert_eq!(sandbox.len(), 1, "{p}");

    // Strict: the pod's groups only; Merge: the image's too. The kubelet reports them.
    for (name, want) in [("strict", "1000 1234"), ("merge", "1000 1234 50000")] {
        let p = k
            .wait_pod(name, CONVERGE, "running", all_ready)
            .await
            .unwrap();
        let logs = logs_when(k, name, "app", |l| l.ends_with('\n')).await;
        assert_eq!(logs.trim(), want, "{name}");
        let user = &ctr_status(&p, "app")["user"]["linux"];
        let reported: Vec<String> = user["supplementalGroups"]
            .as_array()
            .map(|g| g.iter().map(|v| v.to_string()).collect())
            .unwrap_or_default();
        assert_eq!(reported.join(" "), want, "{name}: {user}");
        assert_eq!(user["uid"], 1000, "{name}: {user}");
    }
    k.assert_no_runtime_errors_since(log_from);
}

/// A device plugin (a vendor's, as it registers with the kubelet) hands a container a CDI
/// device: the kubelet passes the name over CRI, berth applies the vendor's CDI spec.
#[tokio::test(flavor = "multi_thread")]
async fn a_device_plugin_hands_a_container_a_cdi_device() {
    let cdi = tempfile::tempdir().unwrap();
    std::fs::write(
        cdi.path().join("vendor.yaml"),
        "cdiVersion: 0.6.0\nkind: example.com/vendor\ndevices:\n- name: fuse\n  containerEdits:\n    env: [VENDOR_DEVICE=fuse]\n    deviceNodes: [{path: /dev/fuse}]\n",
    )
    .unwrap();
    let env = KubeletEnv::start_with(
        &format!("[cdi]\nspec_dirs = [\"{}\"]\n", cdi.path().display()),
        KubeletOptions::default(),
    )
    .await
    .unwrap();
    let k = &env.kubelet;
    let log_from = k.log().len();
    // The kubelet takes registrations once its device manager listens (after the runtime
    // answered it; maybe before this test looked at its log: the whole log is searched).
    let registration =
        std::path::Path::new(berth_e2e::device_plugin::DEVICE_PLUGIN_DIR).join("kubelet.sock");
    let up = tokio::time::timeout(CONVERGE, async {
        while !k
            .log()
            .contains("\"Starting device plugin registration server\"")
            || !registration.exists()
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(up.is_ok(), "{}", k.log_tail(40));
    let _plugin = berth_e2e::device_plugin::VendorPlugin::start(
        "example.com/fuse",
        "berth-e2e-fuse.sock",
        &["fuse"],
        "example.com/vendor",
    )
    .await
    .unwrap();
    // Its device counts once the kubelet has read the plugin's list.
    let listed = tokio::time::timeout(CONVERGE, async {
        while !k.log()[log_from..].contains(
            "\"Processed device updates for resource\" resourceName=\"example.com/fuse\" totalCount=1 healthyCount=1",
        ) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(listed.is_ok(), "{}", k.log_tail(40));

    let mut c = sh(
        "app",
        "test -c /dev/fuse && echo device=$VENDOR_DEVICE; exec sleep 3600",
    );
    c["resources"] = json!({"limits": {"example.com/fuse": 1}});
    k.add_pod(&pod("cdi", json!([c]), json!({}))).unwrap();
    k.wait_pod("cdi", CONVERGE, "running", all_ready)
        .await
        .unwrap();
    let logs = logs_when(k, "cdi", "app", |l| l.ends_with('\n')).await;
    assert_eq!(logs, "device=fuse\n");
    k.assert_no_runtime_errors_since(log_from);
}

/// A node whose signature policy asks for cosign signatures: the kubelet's pod with an
/// unsigned image waits in ErrImagePull with berth's reason, the signed one runs.
#[tokio::test(flavor = "multi_thread")]
async fn under_a_signature_policy_an_unsigned_image_is_refused_and_a_signed_one_runs() {
    let keys = tempfile::tempdir().unwrap();
    let key = berth_e2e::cosign::KeyPair::generate(&keys.path().join("k")).unwrap();
    let policy = keys.path().join("policy.json");
    std::fs::write(
        &policy,
        json!({
            "default": [{"type": "reject"}],
            "transports": {"docker": {
                "app.invalid/berth-e2e/trusted": [{
                    "type": "sigstoreSigned",
                    "keyPath": key.public(),
                    "signedIdentity": {"type": "matchRepository"}
                }],
                "app.invalid/berth-e2e/app": [{"type": "insecureAcceptAnything"}],
                "pause.invalid": [{"type": "insecureAcceptAnything"}]
            }}
        })
        .to_string(),
    )
    .unwrap();
    let env = KubeletEnv::start_with(
        &format!("[image_policy]\npath = \"{}\"\n", policy.display()),
        KubeletOptions::default(),
    )
    .await
    .unwrap();
    let reg = &env.env().registry;
    // The registry serves app.invalid itself: a signature it lacks is not found (an
    // unreachable upstream behind it would make that Unavailable).
    env.env()
        .berth
        .hosts_toml(
            "app.invalid",
            &format!(
                "server = \"http://{0}\"\n[host.\"http://{0}\"]\ncapabilities = [\"pull\", \"resolve\"]\n",
                reg.addr
            ),
        )
        .unwrap();
    let mut digests = vec![];
    for tag in ["signed", "unsigned"] {
        let mark = format!("BERTH_TEST_IMAGE={tag}");
        digests.push(
            berth_e2e::apps::app_image()
                .env(&[mark.as_str()])
                .push(reg, "berth-e2e/trusted", Some(tag))
                .await
                .unwrap()
                .digest,
        );
    }
    key.sign(
        &reg.addr,
        "berth-e2e/trusted",
        &digests[0],
        "app.invalid/berth-e2e/trusted",
    )
    .unwrap();
    let k = &env.kubelet;
    for tag in ["signed", "unsigned"] {
        k.add_pod(&pod(
            tag,
            json!([{
                "name": "main",
                "image": format!("app.invalid/berth-e2e/trusted:{tag}"),
                "imagePullPolicy": "IfNotPresent",
                "command": ["sleep", "3600"],
            }]),
            json!({}),
        ))
        .unwrap();
    }
    k.wait_pod("signed", CONVERGE, "running", all_ready)
        .await
        .unwrap();
    let refused = |p: &Value| {
        let w = &ctr_status(p, "main")["state"]["waiting"];
        w["reason"] == "ErrImagePull"
            && w["message"].as_str().is_some_and(|m| {
                m.contains("image app.invalid/berth-e2e/trusted:unsigned is not trusted")
                    && m.contains("has no cosign signature")
            })
    };
    k.wait_pod("unsigned", CONVERGE, "refused with berth's reason", refused)
        .await
        .unwrap();
}

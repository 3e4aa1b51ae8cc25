//! The containerd calls the kubelet's cAdvisor makes about a cgroup, answered by berth as
//! containerd's CRI plugin answers them: the container by the id that ends its cgroup path,
//! with the pod's labels, and its task's pid while it runs.

use berth_cri_api::containerd::services::containers::v1 as containers;
use berth_cri_api::containerd::services::tasks::v1 as tasks;
use berth_cri_api::containerd::services::version::v1 as version;
use berth_cri_api::v1 as cri;
use berth_e2e::apps::{create, ctr, env_with, start};
use berth_e2e::pods::pod_config;
use tonic::Code;
use tonic::transport::Channel;

/// A request in the namespace cAdvisor asks in.
fn in_k8s<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("containerd-namespace", "k8s.io".parse().expect("ascii"));
    r
}

async fn get(
    c: &mut containers::containers_client::ContainersClient<Channel>,
    id: &str,
) -> Result<containers::Container, tonic::Status> {
    c.get(in_k8s(containers::GetContainerRequest { id: id.into() }))
        .await
        .map(|r| r.into_inner().container.expect("a container"))
}

async fn task_pid(
    t: &mut tasks::tasks_client::TasksClient<Channel>,
    id: &str,
) -> Result<u32, tonic::Status> {
    t.get(in_k8s(tasks::GetRequest {
        container_id: id.into(),
        exec_id: String::new(),
    }))
    .await
    .map(|r| r.into_inner().process.expect("a process").pid)
}

/// The last element of `pid`'s cgroup path in the memory hierarchy: what cAdvisor takes for
/// the container's id.
fn cgroup_leaf(pid: u32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let line = text
        .lines()
        .find(|l| {
            l.split(':')
                .nth(1)
                .is_some_and(|c| c.split(',').any(|x| x == "memory"))
        })
        .or_else(|| text.lines().find(|l| l.starts_with("0::")))
        .expect("a memory cgroup");
    line.rsplit('/').next().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn cadvisor_learns_a_cgroups_pod_and_container_from_berth_as_from_containerd() {
    let env = env_with("").await;
    let channel = berth_cri_api::unix_channel(&env.berth.cadvisor_socket(), None)
        .await
        .expect("berth serves the containerd socket in its temp dir");
    let mut ctrs = containers::containers_client::ContainersClient::new(channel.clone());
    let mut tasks = tasks::tasks_client::TasksClient::new(channel.clone());
    let mut ver = version::version_client::VersionClient::new(channel);

    let v = ver
        .version(berth_cri_api::berth::wire::Empty {})
        .await
        .expect("Version")
        .into_inner();
    assert!(v.version.starts_with("berth "), "{v:?}");

    let mut pcfg = pod_config("cadvisor");
    pcfg.labels
        .insert("io.kubernetes.pod.name".into(), "cadvisor".into());
    pcfg.labels
        .insert("io.kubernetes.pod.namespace".into(), "e2e".into());
    let pod = env.run(pcfg.clone()).await.expect("RunPodSandbox");
    let mut c = ctr("app", &["sleep", "600"]);
    c.labels
        .insert("io.kubernetes.container.name".into(), "app".into());
    let id = create(&env, &pod, &pcfg, c).await.expect("CreateContainer");

    // Created: the container is known, its task is created (no process runs yet).
    let got = get(&mut ctrs, &id).await.expect("Get a created container");
    assert_eq!(got.labels["io.cri-containerd.kind"], "container");
    assert_eq!(got.labels["io.kubernetes.container.name"], "app");
    assert_eq!(got.sandbox, pod);
    start(&env, &id).await;

    // Running: the pid cAdvisor reads network and process figures from is the container's,
    // in the cgroup whose last element is the id cAdvisor asked about.
    let pid = task_pid(&mut tasks, &id).await.expect("the running task");
    assert_eq!(cgroup_leaf(pid), id, "the task's pid is the container's");
    let spec: serde_json::Value =
        serde_json::from_slice(&got.spec.expect("an OCI spec").value).expect("JSON spec");
    assert_eq!(spec["process"]["args"], serde_json::json!(["sleep", "600"]));
    assert!(
        got.image.contains("berth-e2e/app"),
        "the image as the pod named it: {}",
        got.image
    );

    // The sandbox, whose cgroup holds the pause process and whose network is the pod's.
    let sb = get(&mut ctrs, &pod).await.expect("Get the sandbox");
    assert_eq!(sb.labels["io.cri-containerd.kind"], "sandbox");
    assert_eq!(sb.labels["io.kubernetes.pod.name"], "cadvisor");
    assert_eq!(sb.labels["io.kubernetes.pod.namespace"], "e2e");
    let pause = task_pid(&mut tasks, &pod).await.expect("the pause task");
    assert_eq!(pause, env.pid(&pod).await.expect("the pod's pid"));

    // What containerd answers otherwise: no namespace, another namespace, unknown ids.
    let bare = ctrs
        .get(containers::GetContainerRequest { id: id.clone() })
        .await
        .expect_err("no namespace");
    assert_eq!(bare.code(), Code::FailedPrecondition, "{bare:?}");
    let mut other = tonic::Request::new(containers::GetContainerRequest { id: id.clone() });
    other
        .metadata_mut()
        .insert("containerd-namespace", "moby".parse().expect("ascii"));
    assert_eq!(
        ctrs.get(other).await.expect_err("another namespace").code(),
        Code::NotFound
    );
    assert_eq!(
        get(&mut ctrs, &"0".repeat(64))
            .await
            .expect_err("unknown")
            .code(),
        Code::NotFound
    );

    // Exited: the container stays known, its task is gone (containerd deletes it).
    env.cri
        .runtime
        .clone()
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .expect("StopContainer");
    assert!(
        get(&mut ctrs, &id).await.is_ok(),
        "an exited container is known"
    );
    assert_eq!(
        task_pid(&mut tasks, &id).await.expect_err("no task").code(),
        Code::NotFound
    );
    env.cri
        .runtime
        .clone()
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("RemoveContainer");
    assert_eq!(
        get(&mut ctrs, &id).await.expect_err("removed").code(),
        Code::NotFound
    );
    env.stop(&pod).await.expect("StopPodSandbox");
    env.remove(&pod).await.expect("RemovePodSandbox");
}

/// A CNI plugin for the end of a chain that holds ADD for 2 s and passes the result it was
/// given on (the `prevResult` object of its config, found by its braces).
const SLOW_PASS_C: &str = r##"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(void) {
    static char in[1 << 20];
    size_t n = fread(in, 1, sizeof in - 1, stdin);
    in[n] = 0;
    const char *cmd = getenv("CNI_COMMAND");
    if (cmd && strcmp(cmd, "VERSION") == 0) {
        puts("{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"1.0.0\"]}");
        return 0;
    }
    if (!cmd || strcmp(cmd, "ADD") != 0) return 0;
    usleep(2000 * 1000);
    char *p = strstr(in, "\"prevResult\"");
    if (!p || !(p = strchr(p, '{'))) return 1;
    int depth = 0, str = 0;
    for (char *q = p; *q; q++) {
        if (str) { if (*q == '\\') q++; else if (*q == '"') str = 0; continue; }
        if (*q == '"') str = 1;
        else if (*q == '{') depth++;
        else if (*q == '}' && --depth == 0) { fwrite(p, 1, q - p + 1, stdout); return 0; }
    }
    return 1;
}
"##;

/// The directories under `dir` named like an id.
fn id_dirs(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pods_cgroup_is_known_from_the_moment_it_exists_before_the_pod_is_ready() {
    // cAdvisor asks about a cgroup once, when it appears: runc makes the pause container's
    // while the pod's network is still being set up (here for 2 s more).
    let net = berth_e2e::TestNet::with_plugins(&[serde_json::json!({"type": "e2e-slow"})]).unwrap();
    let bin = berth_e2e::tools::static_c_binary("e2e-slow", SLOW_PASS_C).unwrap();
    let plugin = net.bin_dir.join("e2e-slow");
    std::fs::write(&plugin, bin).unwrap();
    std::fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // Declared before the berth, so dropped after it (and its pods).
    let parent = format!("/berth-e2e-cadvisor-{}", std::process::id());
    let _parent = CgroupParent(parent.clone());
    let env = berth_e2e::PodEnv::start_with(net, "").await.unwrap();
    let channel = berth_cri_api::unix_channel(&env.berth.cadvisor_socket(), None)
        .await
        .unwrap();
    let mut ctrs = containers::containers_client::ContainersClient::new(channel.clone());
    let mut tasks = tasks::tasks_client::TasksClient::new(channel);

    let mut pcfg = pod_config("starting");
    pcfg.linux
        .get_or_insert_with(Default::default)
        .cgroup_parent = parent.clone();
    let cgroup_dir =
        std::path::Path::new("/sys/fs/cgroup/memory").join(parent.trim_start_matches('/'));
    let rt = env.cri.runtime.clone();
    let run = tokio::spawn(async move {
        let mut rt = rt;
        rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pcfg),
            runtime_handler: String::new(),
        })
        .await
    });
    let mut seen = None;
    let t0 = std::time::Instant::now();
    while seen.is_none() && !run.is_finished() && t0.elapsed() < std::time::Duration::from_secs(30)
    {
        if let Some(id) = id_dirs(&cgroup_dir).pop() {
            // What cAdvisor does at that moment.
            let got = get(&mut ctrs, &id).await;
            let ready = !env.list(None).await.is_empty();
            seen = Some((id, got, ready));
        } else {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }
    // Its task, with the pause process's pid, once runc created it: still before the pod
    // is ready (its network takes 2 s more).
    let mut early_pid = None;
    if let Some((id, _, _)) = &seen {
        while early_pid.is_none() && !run.is_finished() {
            if let Ok(pid) = task_pid(&mut tasks, id).await {
                early_pid = Some((pid, !env.list(None).await.is_empty()));
            } else {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        }
    }
    let pod = run
        .await
        .unwrap()
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    let (id, got, ready) = seen.expect("the pod's cgroup appeared while it started");
    assert_eq!(id, pod);
    assert!(
        !ready,
        "the cgroup was seen only once the pod was ready: the test proves nothing"
    );
    let got = got.expect("the sandbox is known while it starts");
    assert_eq!(got.labels["io.cri-containerd.kind"], "sandbox");
    let pause = env.pid(&pod).await.unwrap();
    assert_eq!(
        early_pid,
        Some((pause, false)),
        "the pause pid while the pod was not ready yet"
    );
    assert_eq!(
        task_pid(&mut tasks, &pod)
            .await
            .expect("its task once ready"),
        pause
    );
    env.stop(&pod).await.unwrap();
    env.remove(&pod).await.unwrap();
}

/// A cgroup parent the test's pod named: runc makes it in every hierarchy, and it goes once
/// the pod went (this is dropped after the test's berth, which removes its pods).
struct CgroupParent(String);

impl Drop for CgroupParent {
    fn drop(&mut self) {
        for h in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(h.path().join(self.0.trim_start_matches('/')));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn berth_leaves_the_socket_to_a_containerd_that_serves_it_and_removes_its_own() {
    // A process already serving the path keeps it: berth starts and does not take it.
    let dir = tempfile::tempdir().unwrap();
    let taken = dir.path().join("containerd.sock");
    let holder = std::os::unix::net::UnixListener::bind(&taken).unwrap();
    let ino = |p: &std::path::Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(p).map(|m| m.ino()).ok()
    };
    let before = ino(&taken);
    let env = env_with(&format!(
        "[cadvisor]\ncontainerd_socket = \"{}\"\n",
        taken.display()
    ))
    .await;
    assert_eq!(ino(&taken), before, "berth replaced a served socket");
    assert!(
        env.berth
            .log()
            .contains("another process (a containerd) serves the socket"),
        "berth says why it does not serve cAdvisor"
    );
    drop(env);
    assert_eq!(
        ino(&taken),
        before,
        "berth removed a socket it did not make"
    );
    drop(holder);

    // Its own socket (a stale one replaced) goes when berth stops.
    let mut env = env_with("").await;
    let own = env.berth.cadvisor_socket();
    assert!(own.exists());
    env.berth.stop().expect("stop berth");
    assert!(!own.exists(), "berth left {} behind", own.display());
}

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

//! The containerd calls the kubelet's built-in cAdvisor makes, answered for berth's pods.
//!
//! cAdvisor watches every cgroup; one whose last path element is a 64-hex id it hands to its
//! containerd handler, which asks containerd at `/run/containerd/containerd.sock` (namespace
//! `k8s.io`) for the container (`Containers.Get`: its labels, image and OCI spec) and its
//! task (`Tasks.Get`: the pid, for network statistics). Without an answer the cgroup stays
//! anonymous, and the kubelet's `/metrics/cadvisor` and Summary API (which find a pod's
//! containers by the `io.kubernetes.*` labels) do not see berth's containers, where they see
//! containerd's and CRI-O's (cAdvisor asks CRI-O over its own socket). berth answers those
//! calls, and `Version`, there, for its own pods and containers, as containerd's CRI plugin
//! records them: the CRI labels plus `io.cri-containerd.kind` (`sandbox` or `container`); a
//! task only while it runs (containerd deletes a task once it exits). Nothing else of
//! containerd's API is served: any other call is Unimplemented.
//!
//! The socket is `cadvisor.containerd_socket` in the config; berth takes it only when nothing
//! answers there (a containerd on the same node keeps it).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_cri_api::berth::wire;
use berth_cri_api::containerd::services::containers::v1 as containers;
use berth_cri_api::containerd::services::tasks::v1 as tasks;
use berth_cri_api::containerd::services::version::v1 as version;
use berth_cri_api::containerd::v1::types::{Process, Status as TaskStatus};
use berth_sandbox::container::{ContainerRecord, ContainerState};
use berth_sandbox::pod::{PodRecord, PodState};
use berth_sandbox::runtime::Runtime;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

/// The namespace the kubelet's cAdvisor asks in (its `--containerd-namespace` default), where
/// containerd's CRI plugin keeps pods.
const NAMESPACE: &str = "k8s.io";

/// The gRPC metadata key containerd reads the namespace from.
const NAMESPACE_HEADER: &str = "containerd-namespace";

/// containerd's label for what a container is to the CRI.
const KIND_LABEL: &str = "io.cri-containerd.kind";

/// The type URL containerd gives a container's OCI spec.
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// Answers cAdvisor's calls from berth's records.
#[derive(Clone)]
pub struct CadvisorApi {
    pods: Arc<Runtime>,
    sandbox_image: String,
}

impl CadvisorApi {
    /// Over `pods`; sandboxes name `sandbox_image` as their image.
    pub fn new(pods: Arc<Runtime>, sandbox_image: String) -> Self {
        CadvisorApi {
            pods,
            sandbox_image,
        }
    }

    /// A container or a pod's sandbox by its exact id, as containerd lists both.
    fn find(&self, id: &str) -> Option<Found> {
        if let Ok(c) = self.pods.container(id) {
            return Some(Found::Container(c));
        }
        self.pods
            .get_even_starting(id)
            .map(|(p, starting)| Found::Sandbox(p, starting))
    }
}

enum Found {
    Container(Arc<ContainerRecord>),
    /// With whether its RunPodSandbox is still under way.
    Sandbox(Arc<PodRecord>, bool),
}

/// The namespace check containerd makes: none given is FailedPrecondition; another one
/// holds nothing of berth's.
fn check_namespace<T>(req: &Request<T>, id: &str) -> Result<(), Status> {
    match req
        .metadata()
        .get(NAMESPACE_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        None | Some("") => Err(Status::failed_precondition(
            "namespace is required: set the containerd-namespace header",
        )),
        Some(NAMESPACE) => Ok(()),
        Some(other) => Err(Status::not_found(format!(
            "container {} not found in namespace {}",
            shown(id),
            shown(other)
        ))),
    }
}

fn shown(s: &str) -> String {
    s.chars().take(64).collect()
}

fn timestamp(ns: i64) -> Option<wire::Timestamp> {
    (ns > 0).then(|| wire::Timestamp {
        seconds: ns.div_euclid(1_000_000_000),
        nanos: ns.rem_euclid(1_000_000_000) as i32,
    })
}

/// The spec as containerd sends it. Always one: cAdvisor reads the spec's bytes without
/// checking it has one (an empty object when berth has none yet).
fn spec_any<T: serde::Serialize>(spec: Option<&T>) -> Option<wire::Any> {
    let value = spec
        .and_then(|s| serde_json::to_vec(s).ok())
        .unwrap_or_else(|| b"{}".to_vec());
    Some(wire::Any {
        type_url: SPEC_TYPE_URL.into(),
        value,
    })
}

fn labels(cri: &std::collections::BTreeMap<String, String>, kind: &str) -> HashMap<String, String> {
    let mut l: HashMap<String, String> = cri.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    l.insert(KIND_LABEL.into(), kind.into());
    l
}

impl CadvisorApi {
    fn container_message(&self, found: &Found) -> containers::Container {
        match found {
            Found::Container(c) => containers::Container {
                id: c.id.clone(),
                labels: labels(&c.config.labels, "container"),
                image: self.pods.container_image_name(c),
                runtime: self.runtime_of(&c.pod_id),
                spec: spec_any(c.spec.as_deref()),
                created_at: timestamp(c.created_ns),
                updated_at: timestamp(c.created_ns),
                sandbox: c.pod_id.clone(),
                ..Default::default()
            },
            Found::Sandbox(p, _) => containers::Container {
                id: p.id.clone(),
                labels: labels(&p.config.labels, "sandbox"),
                image: self.sandbox_image.clone(),
                runtime: self.runtime_of(&p.id),
                spec: spec_any(p.spec.as_deref()),
                created_at: timestamp(p.created_ns),
                updated_at: timestamp(p.created_ns),
                sandbox: p.id.clone(),
                ..Default::default()
            },
        }
    }

    fn runtime_of(&self, pod_id: &str) -> Option<containers::container::Runtime> {
        let (pod, _) = self.pods.get_even_starting(pod_id)?;
        let handler = self.pods.handlers().get(&pod.handler)?;
        Some(containers::container::Runtime {
            name: handler.runtime_type.clone(),
            options: None,
        })
    }
}

/// The task containerd would report: one while the process lives, none once it exited.
fn task_of(found: &Found) -> Option<Process> {
    let (id, pid, status) = match found {
        Found::Container(c) => (
            &c.id,
            c.pid,
            match c.state {
                ContainerState::Created => TaskStatus::Created,
                ContainerState::Running => TaskStatus::Running,
                ContainerState::Unknown => TaskStatus::Unknown,
                ContainerState::Exited => return None,
            },
        ),
        // A pod starting has a task once its pause process has a pid.
        Found::Sandbox(p, true) if p.pid > 0 => (&p.id, p.pid, TaskStatus::Running),
        Found::Sandbox(p, false) if p.state == PodState::Ready => {
            (&p.id, p.pid, TaskStatus::Running)
        }
        Found::Sandbox(..) => return None,
    };
    // No pid yet: the task is still being created (cAdvisor asks again).
    if pid == 0 {
        return None;
    }
    Some(Process {
        container_id: id.clone(),
        id: id.clone(),
        pid,
        status: status as i32,
        ..Default::default()
    })
}

#[tonic::async_trait]
impl containers::containers_server::Containers for CadvisorApi {
    async fn get(
        &self,
        req: Request<containers::GetContainerRequest>,
    ) -> Result<Response<containers::GetContainerResponse>, Status> {
        let id = req.get_ref().id.clone();
        check_namespace(&req, &id)?;
        let found = self
            .find(&id)
            .ok_or_else(|| Status::not_found(format!("container \"{}\": not found", shown(&id))))?;
        Ok(Response::new(containers::GetContainerResponse {
            container: Some(self.container_message(&found)),
        }))
    }
}

#[tonic::async_trait]
impl tasks::tasks_server::Tasks for CadvisorApi {
    async fn get(
        &self,
        req: Request<tasks::GetRequest>,
    ) -> Result<Response<tasks::GetResponse>, Status> {
        let id = req.get_ref().container_id.clone();
        check_namespace(&req, &id)?;
        if !req.get_ref().exec_id.is_empty() {
            return Err(Status::not_found(format!(
                "process {} of {}: not found (berth answers for tasks' init processes only)",
                shown(&req.get_ref().exec_id),
                shown(&id)
            )));
        }
        let process = self
            .find(&id)
            .as_ref()
            .and_then(task_of)
            .ok_or_else(|| Status::not_found(format!("no running task for {}", shown(&id))))?;
        Ok(Response::new(tasks::GetResponse {
            process: Some(process),
        }))
    }
}

#[tonic::async_trait]
impl version::version_server::Version for CadvisorApi {
    async fn version(
        &self,
        _: Request<wire::Empty>,
    ) -> Result<Response<version::VersionResponse>, Status> {
        Ok(Response::new(version::VersionResponse {
            version: format!("berth {}", env!("CARGO_PKG_VERSION")),
            revision: String::new(),
        }))
    }
}

/// The socket while berth serves it: removed when dropped, unless something replaced it.
pub struct Served {
    path: PathBuf,
    inode: u64,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Serves `api` on the unix socket at `path`, unless another process serves there (None).
pub fn serve(path: &Path, api: CadvisorApi) -> anyhow::Result<Option<Served>> {
    let Some(listener) = crate::server::bind_unless_served(path)? else {
        tracing::info!(
            path = %path.display(),
            "another process (a containerd) serves the socket the kubelet's cAdvisor asks about containers; berth's containers go unlabelled in its metrics"
        );
        return Ok(None);
    };
    let inode = std::fs::symlink_metadata(path)?.ino();
    let incoming =
        UnixListenerStream::new(listener).map(|c| c.map(crate::h2fix::AuthorityFix::new));
    let server = tonic::transport::Server::builder()
        .add_service(containers::containers_server::ContainersServer::new(
            api.clone(),
        ))
        .add_service(tasks::tasks_server::TasksServer::new(api.clone()))
        .add_service(version::version_server::VersionServer::new(api))
        .serve_with_incoming(incoming);
    let task = tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::warn!(err = %e, "the containerd API for cAdvisor stopped");
        }
    });
    tracing::info!(path = %path.display(), "serving the containerd calls of the kubelet's cAdvisor");
    Ok(Some(Served {
        path: path.to_path_buf(),
        inode,
        task,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_split_seconds_and_nanoseconds() {
        let t = timestamp(1_700_000_000_123_456_789).expect("a time");
        assert_eq!((t.seconds, t.nanos), (1_700_000_000, 123_456_789));
        assert!(timestamp(0).is_none(), "never is no time");
    }

    #[test]
    fn the_namespace_is_required_and_must_be_the_kubelets() {
        let mut r = Request::new(());
        assert_eq!(
            check_namespace(&r, "x").unwrap_err().code(),
            tonic::Code::FailedPrecondition
        );
        r.metadata_mut()
            .insert(NAMESPACE_HEADER, "moby".parse().expect("ascii"));
        assert_eq!(
            check_namespace(&r, "x").unwrap_err().code(),
            tonic::Code::NotFound
        );
        r.metadata_mut()
            .insert(NAMESPACE_HEADER, NAMESPACE.parse().expect("ascii"));
        assert!(check_namespace(&r, "x").is_ok());
    }

    #[test]
    fn labels_say_what_the_container_is_to_the_cri() {
        let cri = [("io.kubernetes.pod.name".to_string(), "p".to_string())].into();
        let l = labels(&cri, "sandbox");
        assert_eq!(l["io.kubernetes.pod.name"], "p");
        assert_eq!(l[KIND_LABEL], "sandbox");
    }
}

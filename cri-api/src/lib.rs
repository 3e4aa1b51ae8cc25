//! The CRI v1 API that berth serves.
//!
//! The protobuf types and the tonic server and client stubs are generated at build time from
//! the Kubernetes `api.proto` vendored in `proto/` (the release in `proto/VERSION`, taken from
//! the `k8s.io/cri-api` Go module by `scripts/update-cri-proto.sh`). The rest of the
//! workspace names one path, `berth_cri_api::v1`; `berth_cri_api::containerd` is the small
//! part of containerd's API the kubelet's cAdvisor calls, which berth also answers.
#![warn(missing_docs)]

/// `runtime.v1`: messages, `runtime_service_server`, `image_service_server` and the clients.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("runtime.v1");
}

/// The part of containerd's API that the kubelet's built-in cAdvisor calls to learn which pod
/// and container a cgroup belongs to (`proto/containerd/`): the version, containers and
/// tasks services' `Version` and `Get`. Modules nest as the protobuf packages do.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod containerd {
    pub mod services {
        pub mod version {
            pub mod v1 {
                tonic::include_proto!("containerd.services.version.v1");
            }
        }
        pub mod containers {
            pub mod v1 {
                tonic::include_proto!("containerd.services.containers.v1");
            }
        }
        pub mod tasks {
            pub mod v1 {
                tonic::include_proto!("containerd.services.tasks.v1");
            }
        }
    }
    pub mod v1 {
        pub mod types {
            tonic::include_proto!("containerd.v1.types");
        }
    }
}

/// The kubelet's device plugin API (`proto/deviceplugin/`, package `v1beta1`): what berth's
/// tests need to play a device plugin that hands containers CDI devices.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod deviceplugin {
    pub mod v1beta1 {
        tonic::include_proto!("v1beta1");
    }
}

/// The protobuf well-known types containerd's messages carry, by their wire form
/// (`proto/containerd/wire.proto`: package `berth.wire`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod berth {
    pub mod wire {
        tonic::include_proto!("berth.wire");
    }
}

/// The `k8s.io/cri-api` release whose `api.proto` berth is built from.
pub const CRI_PROTO_RELEASE: &str = include_str!("../proto/VERSION");

/// The CRI API version berth reports in `Version`.
pub const CRI_API_VERSION: &str = "v1";

/// A gRPC channel to a CRI server on the unix socket at `path`, as crictl and the kubelet
/// connect (`unix://<path>`). `timeout` bounds the connect and each call.
pub async fn unix_channel(
    path: &std::path::Path,
    timeout: Option<std::time::Duration>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    // The URI is a placeholder: the connector below ignores it and dials the socket.
    let mut ep = tonic::transport::Endpoint::from_static("http://[::]:50051");
    if let Some(t) = timeout {
        ep = ep.connect_timeout(t).timeout(t);
    }
    ep.connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
        let p = path.clone();
        async move {
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                tokio::net::UnixStream::connect(p).await?,
            ))
        }
    }))
    .await
}

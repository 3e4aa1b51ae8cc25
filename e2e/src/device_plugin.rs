//! A device plugin as a vendor ships one, for the kubelet tests: it serves the kubelet's
//! device plugin API on a socket in the kubelet's device plugin directory, registers a
//! resource, lists its devices and, when the kubelet allocates one to a container, answers
//! with the CDI device that describes it (the CDI spec is the test's).

use std::path::{Path, PathBuf};
use std::pin::Pin;

use berth_cri_api::deviceplugin::v1beta1 as dp;
use dp::device_plugin_server::{DevicePlugin, DevicePluginServer};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Where the kubelet (whatever its root directory) takes plugin registrations.
pub const DEVICE_PLUGIN_DIR: &str = "/var/lib/kubelet/device-plugins";

/// A running plugin; stops serving on drop (the kubelet then marks its devices gone).
pub struct VendorPlugin {
    socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// What the plugin offers: devices by id, each allocated as the CDI device `cdi_name(id)`.
#[derive(Clone)]
struct Plugin {
    devices: Vec<String>,
    cdi_kind: String,
}

type Devices = Pin<Box<dyn Stream<Item = Result<dp::ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DevicePlugin for Plugin {
    type ListAndWatchStream = Devices;

    async fn get_device_plugin_options(
        &self,
        _: Request<dp::Empty>,
    ) -> Result<Response<dp::DevicePluginOptions>, Status> {
        Ok(Response::new(dp::DevicePluginOptions::default()))
    }

    async fn list_and_watch(
        &self,
        _: Request<dp::Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let list = dp::ListAndWatchResponse {
            devices: self
                .devices
                .iter()
                .map(|id| dp::Device {
                    id: id.clone(),
                    health: "Healthy".into(),
                })
                .collect(),
        };
        // The list, then nothing: the stream stays open while the plugin lives.
        let s = tokio_stream::once(Ok(list)).chain(tokio_stream::pending());
        Ok(Response::new(Box::pin(s)))
    }

    async fn get_preferred_allocation(
        &self,
        _: Request<dp::PreferredAllocationRequest>,
    ) -> Result<Response<dp::PreferredAllocationResponse>, Status> {
        Ok(Response::new(dp::PreferredAllocationResponse {}))
    }

    async fn allocate(
        &self,
        req: Request<dp::AllocateRequest>,
    ) -> Result<Response<dp::AllocateResponse>, Status> {
        let container_responses = req
            .into_inner()
            .container_requests
            .into_iter()
            .map(|c| dp::ContainerAllocateResponse {
                cdi_devices: c
                    .devices_ids
                    .iter()
                    .map(|id| dp::CdiDevice {
                        name: format!("{}={id}", self.cdi_kind),
                    })
                    .collect(),
                ..Default::default()
            })
            .collect();
        Ok(Response::new(dp::AllocateResponse {
            container_responses,
        }))
    }

    async fn pre_start_container(
        &self,
        _: Request<dp::PreStartContainerRequest>,
    ) -> Result<Response<dp::PreStartContainerResponse>, Status> {
        Ok(Response::new(dp::PreStartContainerResponse {}))
    }
}

use tokio_stream::StreamExt as _;

impl VendorPlugin {
    /// Serves `resource` (`vendor.com/name`) with `devices`, each allocated as the CDI device
    /// `<cdi_kind>=<id>`, on `<DEVICE_PLUGIN_DIR>/<socket_name>`, and registers it with the
    /// kubelet listening there.
    pub async fn start(
        resource: &str,
        socket_name: &str,
        devices: &[&str],
        cdi_kind: &str,
    ) -> anyhow::Result<Self> {
        let dir = Path::new(DEVICE_PLUGIN_DIR);
        let socket = dir.join(socket_name);
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket)?;
        let plugin = Plugin {
            devices: devices.iter().map(|d| d.to_string()).collect(),
            cdi_kind: cdi_kind.into(),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(DevicePluginServer::new(plugin))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await;
        });
        // The kubelet replaces a stale registration socket when its device manager starts: a
        // connection in between is refused, and is made again.
        let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let registered = async {
                let channel = berth_cri_api::unix_channel(&dir.join("kubelet.sock"), None).await?;
                dp::registration_client::RegistrationClient::new(channel)
                    .register(dp::RegisterRequest {
                        version: "v1beta1".into(),
                        endpoint: socket_name.into(),
                        resource_name: resource.into(),
                        options: Some(dp::DevicePluginOptions::default()),
                    })
                    .await?;
                anyhow::Ok(())
            }
            .await;
            match registered {
                Ok(()) => break,
                Err(e) if std::time::Instant::now() >= end => return Err(e),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
        Ok(VendorPlugin {
            socket,
            stop: Some(stop),
        })
    }
}

impl Drop for VendorPlugin {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

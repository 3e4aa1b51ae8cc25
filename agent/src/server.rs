//! Wires the services together and serves CRI on the unix socket.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use berth_cri_api::v1::image_service_server::ImageServiceServer;
use berth_cri_api::v1::runtime_service_server::RuntimeServiceServer;
use berth_image::{ImageService, ImageServiceConfig};
use tokio::net::UnixListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::Config;
use crate::cri::{ImageCri, RuntimeCri};
use crate::h2fix::AuthorityFix;

/// gRPC messages up to 16 MiB, as the kubelet sends and accepts.
const MAX_MESSAGE: usize = 16 << 20;

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    tracing::info!(version = env!("CARGO_PKG_VERSION"), root = %cfg.root.display(), state = %cfg.state.display(), address = %cfg.address.display(), "starting berth");
    for d in [&cfg.root, &cfg.state] {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711))
            .with_context(|| format!("chmod {}", d.display()))?;
    }
    let store = berth_image::store::Store::open(&cfg.root.join("meta.redb"))
        .context("open the metadata store (is another berth using this root?)")?;
    let images = ImageService::open(
        ImageServiceConfig {
            root: cfg.root.clone(),
            registry_config_path: cfg.registry_config_path(),
            pinned: vec![cfg.sandbox_image.clone()],
            max_concurrent_downloads: cfg.max_concurrent_downloads,
        },
        store,
    )
    .await
    .context("open the image store")?;
    tracing::info!(images = images.list().len(), "image store loaded");

    let listener = bind(&cfg.address)?;
    let cfg = Arc::new(cfg);
    let runtime = RuntimeServiceServer::new(RuntimeCri::new(cfg.clone()))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let image = ImageServiceServer::new(ImageCri::new(images))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    tracing::info!(address = %cfg.address.display(), "serving CRI");
    let res = tonic::transport::Server::builder()
        .add_service(runtime)
        .add_service(image)
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener).map(|c| c.map(AuthorityFix::new)),
            shutdown_signal(),
        )
        .await;
    let _ = std::fs::remove_file(&cfg.address);
    res.context("serve CRI")?;
    tracing::info!("berth stopped");
    Ok(())
}

/// Binds the socket (mode 0660), replacing a stale one but never one a live server answers on.
fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                bail!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                );
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!(
                    "{} is in use: another process is serving on it",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("remove stale socket {}", path.display()))?;
            tracing::info!(path = %path.display(), "replaced stale socket");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("stat {}", path.display())),
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(listener)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            tracing::error!("cannot install signal handlers; stop berth with SIGKILL");
            return std::future::pending().await;
        }
    };
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = which, "shutting down");
}

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
    if let Some(dir) = berth_sandbox::userns::closed_ancestor(&cfg.state) {
        tracing::warn!(
            dir = %dir.display(),
            fix = format!("chmod o+x {}", dir.display()),
            "pods in user namespaces cannot start: their processes cannot pass this directory on the way to their root filesystem"
        );
    }
    // Said at every start, not only by `berth doctor`: on a disk every container start waits.
    let state_fs = crate::doctor::state_dir(&cfg.state);
    if !state_fs.ok {
        tracing::warn!(
            detail = %state_fs.detail,
            fix = state_fs.fix.as_deref().unwrap_or_default(),
            "the state directory is not on a tmpfs"
        );
    }
    let store = berth_store::Store::open(&cfg.root.join("meta.redb"))
        .context("open the metadata store (is another berth using this root?)")?;
    let images = ImageService::open(
        ImageServiceConfig {
            root: cfg.root.clone(),
            registry_config_path: cfg.registry_config_path(),
            pinned: vec![cfg.sandbox_image.clone()],
            max_concurrent_downloads: cfg.max_concurrent_downloads,
            timeouts: cfg.registry_timeouts(),
            decryption_keys_dir: cfg.image_decryption.keys_dir.clone(),
            policy_path: (!cfg.image_policy.path.as_os_str().is_empty())
                .then(|| cfg.image_policy.path.clone()),
            lazy: berth_image::lazy::LazyConfig {
                registries: cfg.lazy_pull.registries.clone(),
                background_fetch: cfg.lazy_pull.background_fetch,
                limits: berth_lazy::toc::Limits {
                    max_toc: cfg.lazy_pull.max_toc_size,
                    max_tree: cfg.lazy_pull.max_tree_memory,
                    max_chunk: cfg.lazy_pull.max_chunk_size,
                },
                read_timeout: std::time::Duration::from_secs(
                    cfg.lazy_pull.read_timeout_seconds.max(1),
                ),
                holder: std::env::current_exe()
                    .ok()
                    .map(|exe| berth_image::lazy::HolderConfig {
                        socket: cfg.state.join("lazy-holder.sock"),
                        command: vec![exe.display().to_string(), "fuse-holder".into()],
                    }),
            },
        },
        store.clone(),
    )
    .await
    .context("open the image store")?;
    tracing::info!(images = images.list().len(), "image store loaded");

    // Shims publish task events to <address>.ttrpc, as containerd's shims do to its ttrpc socket.
    let ttrpc_address = std::path::PathBuf::from(format!("{}.ttrpc", cfg.address.display()));
    let hub = berth_sandbox::shim::events::EventHub::default();
    let _events = berth_sandbox::shim::events::serve(&ttrpc_address, hub.clone())
        .await
        .context("serve shim events")?;
    // (It asks each runc handler's runtime what it supports: a process or two, off the
    // async workers.)
    let pods_cfg = tokio::task::block_in_place(|| pod_manager_config(&cfg, &ttrpc_address))?;
    let pods = berth_sandbox::runtime::Runtime::open(pods_cfg, store.clone(), images.clone(), hub)
        .await
        .context("recover pod sandboxes")?;
    tracing::info!(
        pods = pods.list(&Default::default()).len(),
        "pod sandboxes recovered"
    );
    pods.start_nri().await.context("start NRI")?;

    let stream = berth_stream::StreamServer::start(
        stream_config(&cfg)?,
        Arc::new(crate::cri::StreamBackend { pods: pods.clone() }),
    )
    .await
    .with_context(|| {
        format!(
            "start the streaming server on {}:{}",
            cfg.stream.address, cfg.stream.port
        )
    })?;

    let listener = bind(&cfg.address)?;
    // After the CRI socket: a second berth on this root has failed above and must not take
    // the socket this one serves.
    let _cadvisor = if cfg.cadvisor.containerd_socket.as_os_str().is_empty() {
        None
    } else {
        crate::cadvisor::serve(
            &cfg.cadvisor.containerd_socket,
            crate::cadvisor::CadvisorApi::new(pods.clone(), cfg.sandbox_image.clone()),
        )
        .with_context(|| {
            format!(
                "serve cAdvisor's containerd calls on {} (cadvisor.containerd_socket)",
                cfg.cadvisor.containerd_socket.display()
            )
        })?
    };
    let _metrics = crate::metrics::serve(
        &cfg.metrics,
        Arc::new(crate::metrics::Families::new(pods.clone())),
    )
    .await?;
    let cfg = Arc::new(cfg);
    let runtime = RuntimeServiceServer::new(RuntimeCri::new(cfg.clone(), pods.clone(), stream))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let image = ImageServiceServer::new(ImageCri::new(images))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    tracing::info!(address = %cfg.address.display(), "serving CRI");
    let res = tonic::transport::Server::builder()
        .layer(crate::metrics::MetricsLayer)
        .layer(crate::deadline::DeadlineLayer)
        .add_service(runtime)
        .add_service(image)
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener).map(|c| c.map(AuthorityFix::new)),
            shutdown_signal(),
        )
        .await;
    pods.release_spare().await;
    if let Some(nri) = pods.nri() {
        nri.shutdown();
    }
    if let Err(e) = store.flush() {
        tracing::warn!(err = %e, "cannot make the last record writes durable");
    }
    let _ = std::fs::remove_file(&cfg.address);
    let _ = std::fs::remove_file(&ttrpc_address);
    res.context("serve CRI")?;
    tracing::info!("berth stopped");
    Ok(())
}

fn stream_config(cfg: &Config) -> anyhow::Result<berth_stream::StreamConfig> {
    let ip: std::net::IpAddr = cfg
        .stream
        .address
        .parse()
        .with_context(|| format!("stream.address {:?}", cfg.stream.address))?;
    Ok(berth_stream::StreamConfig {
        listen: std::net::SocketAddr::new(ip, cfg.stream.port),
        token_ttl: std::time::Duration::from_secs(cfg.stream.token_ttl_seconds),
        idle_timeout: (cfg.stream.idle_timeout_seconds > 0)
            .then(|| std::time::Duration::from_secs(cfg.stream.idle_timeout_seconds)),
        tls: (!cfg.stream.tls_cert.as_os_str().is_empty())
            .then(|| (cfg.stream.tls_cert.clone(), cfg.stream.tls_key.clone())),
        max_sessions_per_client: cfg.stream.max_sessions_per_client,
        max_streams_per_session: cfg.stream.max_streams_per_session,
        ..Default::default()
    })
}

fn pod_manager_config(
    cfg: &Config,
    ttrpc_address: &Path,
) -> anyhow::Result<berth_sandbox::runtime::RuntimeConfig> {
    use berth_sandbox::runtime::Handler;
    use berth_sandbox::shim::{RuncOptions, ShimEnv};
    let mut handlers = std::collections::BTreeMap::new();
    for (name, h) in &cfg.runtime.handlers {
        let shim = crate::config::shim_binary_name(&h.runtime_type)
            .map_err(|e| anyhow::anyhow!("runtime.handlers.{name}: {e}"))?;
        let takes_runc_options = h.runs_oci_runtime();
        // runsc runs through berth's adapter (berth_sandbox::runsc): the shim's engine is a
        // link to berth, which runs the real runsc.
        let binary_name = match &h.options.binary_name {
            Some(b) if h.is_runsc() => {
                let engine = berth_sandbox::runsc::Engine {
                    binary: b.into(),
                    args: h.engine_args.clone(),
                };
                let dir = cfg.state.join("runtime").join(name).join("bin");
                let me = std::env::current_exe().context("find berth's own path")?;
                let link = berth_sandbox::runsc::install_wrapper(&dir, &me, &engine)
                    .with_context(|| format!("set up the runsc adapter in {}", dir.display()))?;
                Some(link.display().to_string())
            }
            other => other.clone(),
        };
        // Through a shim that runs an OCI runtime only: runsc (behind berth's adapter) and kata
        // have neither recursive read-only mounts nor berth's user namespaces.
        let features = if takes_runc_options && !h.is_runsc() {
            berth_sandbox::runtime::OciFeatures::probe(binary_name.as_deref().unwrap_or("runc"))
        } else {
            berth_sandbox::runtime::OciFeatures::default()
        };
        tracing::info!(handler = %name, features = %features.summary(), "runtime handler");
        let options = RuncOptions {
            binary_name,
            // Each handler's runtime keeps its state under berth's state dir.
            root: Some(
                h.options
                    .root
                    .clone()
                    .unwrap_or_else(|| cfg.state.join("runtime").join(name))
                    .display()
                    .to_string(),
            ),
            systemd_cgroup: h.options.systemd_cgroup,
        };
        handlers.insert(
            name.clone(),
            Handler {
                runtime_type: h.runtime_type.clone(),
                shim,
                runtime_path: h.runtime_path.clone(),
                recursive_read_only: features.recursive_read_only,
                user_namespaces: features.user_namespaces,
                idmap_mounts: features.idmap_mounts,
                options: if takes_runc_options {
                    options
                } else {
                    RuncOptions::default()
                },
            },
        );
    }
    let publish_binary = std::env::current_exe().context("find berth's own path")?;
    Ok(berth_sandbox::runtime::RuntimeConfig {
        state_dir: cfg.state.clone(),
        sandbox_image: cfg.sandbox_image.clone(),
        default_handler: cfg.runtime.default_handler.clone(),
        handlers,
        shim_env: ShimEnv {
            namespace: "k8s.io".into(),
            grpc_address: cfg.address.clone(),
            ttrpc_address: ttrpc_address.to_path_buf(),
            publish_binary,
        },
        cni: berth_network::cni::CniPaths {
            conf_dir: cfg.cni.conf_dir.clone(),
            bin_dirs: cfg.cni.bin_dirs.clone(),
            // Persistent, as containerd's /var/lib/cni: after a reboot the cached results
            // let DEL release what each pod's plugins hold.
            cache_dir: cfg.root.join("cni"),
            plugin_timeout: std::time::Duration::from_secs(cfg.cni.plugin_timeout_seconds),
        },
        log_rotation: berth_sandbox::logs::Rotation {
            max_size: cfg.runtime.container_log_max_size,
            max_files: cfg.runtime.container_log_max_files,
        },
        warm_shim: cfg.runtime.warm_shim,
        cdi_spec_dirs: if cfg.cdi.enable {
            cfg.cdi.spec_dirs.clone()
        } else {
            vec![]
        },
        nri: cfg.nri.enable.then(|| {
            berth_nri::Nri::new(berth_nri::NriConfig {
                socket_path: (!cfg.nri.disable_connections).then(|| cfg.nri.socket_path.clone()),
                plugin_path: cfg.nri.plugin_path.clone(),
                plugin_config_path: cfg.nri.plugin_config_path.clone(),
                timeouts: berth_nri::Timeouts {
                    registration: std::time::Duration::from_millis(
                        cfg.nri.plugin_registration_timeout_ms,
                    ),
                    request: std::time::Duration::from_millis(cfg.nri.plugin_request_timeout_ms),
                },
                required_plugins: cfg.nri.required_plugins.clone(),
            })
        }),
    })
}

/// Binds the socket (mode 0660), replacing a stale one but never one a live server answers on.
fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    bind_unless_served(path)?.with_context(|| {
        format!(
            "{} is in use: another process is serving on it",
            path.display()
        )
    })
}

/// Listens on the unix socket at `path` (mode 0660), replacing a stale socket file; None when
/// another process serves there.
pub(crate) fn bind_unless_served(path: &Path) -> anyhow::Result<Option<UnixListener>> {
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
                return Ok(None);
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
    Ok(Some(listener))
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

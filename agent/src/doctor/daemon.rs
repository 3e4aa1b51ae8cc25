//! The running daemon: its socket, its answers, and whether the sandbox image can be had.

use std::path::Path;
use std::time::Duration;

use crate::config::Config;

use super::{Check, fail, pass};

pub(super) async fn daemon(cfg: &Config) -> Vec<Check> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let sock = &cfg.address;
    let meta = match std::fs::symlink_metadata(sock) {
        Ok(m) if m.file_type().is_socket() => m,
        Ok(_) => {
            return vec![fail(
                "daemon",
                "socket",
                format!("{} is not a socket", sock.display()),
                format!("remove {} and start berth", sock.display()),
            )];
        }
        Err(_) => {
            return vec![fail(
                "daemon",
                "socket",
                format!("{} does not exist: berth is not running", sock.display()),
                "systemctl start berth (journalctl -u berth says why it stopped)",
            )];
        }
    };
    let mode = meta.permissions().mode() & 0o777;
    let channel = match connect(sock).await {
        Ok(c) => c,
        Err(e) => {
            return vec![fail(
                "daemon",
                "socket",
                format!(
                    "{} (mode {mode:o}) refuses connections: {e}",
                    sock.display()
                ),
                "systemctl restart berth; a stale socket is replaced at start",
            )];
        }
    };
    let mut out = Vec::new();
    let mut rt =
        berth_cri_api::v1::runtime_service_client::RuntimeServiceClient::new(channel.clone());
    match rt
        .version(berth_cri_api::v1::VersionRequest::default())
        .await
    {
        Ok(v) => {
            let v = v.into_inner();
            out.push(pass(
                "daemon",
                "socket",
                format!(
                    "{} (mode {mode:o}): {} {} CRI {}",
                    sock.display(),
                    v.runtime_name,
                    v.runtime_version,
                    v.runtime_api_version
                ),
            ));
        }
        Err(e) => out.push(fail(
            "daemon",
            "socket",
            format!("Version failed: {}", e.message()),
            "check berth's log",
        )),
    }
    match rt.status(berth_cri_api::v1::StatusRequest::default()).await {
        Ok(s) => {
            for c in s
                .into_inner()
                .status
                .map(|s| s.conditions)
                .unwrap_or_default()
            {
                out.push(if c.status {
                    pass("daemon", c.r#type.clone(), "true")
                } else {
                    fail(
                        "daemon",
                        c.r#type.clone(),
                        format!("{}: {}", c.reason, c.message),
                        if c.r#type == "NetworkReady" {
                            "see the cni checks above"
                        } else {
                            "check berth's log"
                        },
                    )
                });
            }
        }
        Err(e) => out.push(fail(
            "daemon",
            "Status",
            e.message().to_string(),
            "check berth's log",
        )),
    }
    let mut img = berth_cri_api::v1::image_service_client::ImageServiceClient::new(channel);
    let spec = berth_cri_api::v1::ImageSpec {
        image: cfg.sandbox_image.clone(),
        ..Default::default()
    };
    match img
        .image_status(berth_cri_api::v1::ImageStatusRequest {
            image: Some(spec),
            verbose: false,
        })
        .await
    {
        Ok(r) if r.get_ref().image.is_some() => out.push(pass(
            "daemon",
            "sandbox image",
            format!("{} present", cfg.sandbox_image),
        )),
        Ok(_) => out.push(sandbox_image_pullable(cfg).await),
        Err(e) => out.push(fail(
            "daemon",
            "sandbox image",
            e.message().to_string(),
            "check berth's log",
        )),
    }
    out.push(cadvisor(cfg).await);
    out
}

/// Whether the kubelet's cAdvisor gets berth's answers about containers (see
/// `crate::cadvisor`). A warning when not: pods run, their cAdvisor metrics lack labels.
async fn cadvisor(cfg: &Config) -> Check {
    let path = &cfg.cadvisor.containerd_socket;
    let warn = |detail: String, fix: &str| {
        let mut c = fail("daemon", "cadvisor", detail, fix);
        c.required = false;
        c
    };
    if path.as_os_str().is_empty() {
        return warn(
            "cadvisor.containerd_socket is off: the kubelet's /metrics/cadvisor and Summary API \
             see berth's containers without their pod and container"
                .into(),
            "set cadvisor.containerd_socket = \"/run/containerd/containerd.sock\" and restart \
             berth, then the kubelet",
        );
    }
    let version = async {
        let channel = connect(path).await?;
        let v =
            berth_cri_api::containerd::services::version::v1::version_client::VersionClient::new(
                channel,
            )
            .version(berth_cri_api::berth::wire::Empty {})
            .await?;
        anyhow::Ok(v.into_inner().version)
    };
    match tokio::time::timeout(Duration::from_secs(5), version).await {
        Ok(Ok(v)) if v.starts_with("berth ") => pass(
            "daemon",
            "cadvisor",
            format!(
                "{} answers the kubelet's cAdvisor about berth's containers",
                path.display()
            ),
        ),
        Ok(Ok(v)) => warn(
            format!(
                "{} is served by containerd {v}: the kubelet's cAdvisor asks it, and berth's \
                 containers go unlabelled in /metrics/cadvisor and the Summary API",
                path.display()
            ),
            "if that containerd runs no pods for this kubelet, stop it and restart berth, then the kubelet",
        ),
        Ok(Err(e)) => warn(
            format!("{} does not answer: {e}", path.display()),
            "check berth's log for cadvisor; restart berth, then the kubelet",
        ),
        Err(_) => warn(
            format!("{} did not answer within 5 s", path.display()),
            "check berth's log for cadvisor",
        ),
    }
}

/// The sandbox image is not in the store: the first pod will pull it. Can it? Its manifest is
/// resolved through the hosts the daemon would use (certs.d), nothing is downloaded.
async fn sandbox_image_pullable(cfg: &Config) -> Check {
    let image = &cfg.sandbox_image;
    let resolved = async {
        let r = berth_image::reference::Reference::parse(image)?;
        let hosts = berth_image::hosts::resolve(cfg.registry_config_path().as_deref(), r.domain())?;
        let client = std::sync::Arc::new(berth_image::registry::RegistryClient::new(
            cfg.registry_timeouts(),
        ));
        client.session(hosts, &r, None).resolve(&r).await
    };
    match tokio::time::timeout(Duration::from_secs(20), resolved).await {
        Ok(Ok(m)) => {
            let mut c = fail(
                "daemon",
                "sandbox image",
                format!(
                    "{image} not pulled yet; its registry serves it ({}), the first pod pulls it",
                    m.digest
                ),
                format!("crictl pull {image}"),
            );
            // Not a fault: a warning that the first pod waits for the pull.
            c.required = false;
            c
        }
        Ok(Err(e)) => fail(
            "daemon",
            "sandbox image",
            format!("{image} not pulled, and it cannot be: {e}"),
            format!(
                "make the registry reachable (certs.d hosts.toml for its host, proxy, credentials) or import the image, then crictl pull {image}"
            ),
        ),
        Err(_) => fail(
            "daemon",
            "sandbox image",
            format!("{image} not pulled, and its registry did not answer within 20 s"),
            "make the registry reachable (certs.d hosts.toml for its host, proxy)",
        ),
    }
}

async fn connect(path: &Path) -> anyhow::Result<tonic::transport::Channel> {
    Ok(berth_cri_api::unix_channel(path, Some(Duration::from_secs(5))).await?)
}

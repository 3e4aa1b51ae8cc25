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
    out
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

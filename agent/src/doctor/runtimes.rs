//! The RuntimeClass handlers: each one's shim, and the OCI runtime under it; NRI and its plugins.

use std::path::Path;

use crate::config::Config;

use super::node::controllers_left_on_cgroup2;
use super::{Check, fail, pass};
use super::{executable, on_path, version};

pub(super) async fn handlers(cfg: &Config) -> Vec<Check> {
    let mut out = Vec::new();
    for (name, h) in &cfg.runtime.handlers {
        let required = name == &cfg.runtime.default_handler;
        let label = format!("handler {name}");
        let mut push = |mut c: Check| {
            c.required = required;
            out.push(c);
        };
        let shim = match crate::config::shim_binary_name(&h.runtime_type) {
            Ok(s) => s,
            Err(e) => {
                push(fail(
                    "runtime",
                    label,
                    e.to_string(),
                    "fix runtime_type in the config",
                ));
                continue;
            }
        };
        let path = match berth_sandbox::shim::find_shim(&shim, h.runtime_path.as_deref()) {
            Ok(p) if executable(&p) => p,
            Ok(p) => {
                push(fail(
                    "runtime",
                    label,
                    format!("{} is not executable", p.display()),
                    format!("chmod +x {}", p.display()),
                ));
                continue;
            }
            Err(e) => {
                let fix = match shim.as_str() {
                    "containerd-shim-runc-v2" => "apt-get install containerd (only its shim is used), or copy the shim beside berth".to_string(),
                    "containerd-shim-berth-v1" => "install berth's shim beside berth (it is built with berth: target/release/containerd-shim-berth-v1)".to_string(),
                    "containerd-shim-kata-v2" => "install Kata Containers (kata-deploy), or remove this handler".to_string(),
                    other => format!("install {other}, or remove this handler from the config"),
                };
                push(fail("runtime", label, e.to_string(), fix));
                continue;
            }
        };
        let shim_version = version(&path, &["-v"]).await.unwrap_or_else(|e| e);
        let mut detail = format!("{} ({shim_version})", path.display());
        if h.runs_oci_runtime() {
            let engine = h
                .options
                .binary_name
                .clone()
                .unwrap_or_else(|| "runc".into());
            match on_path(&engine).filter(|p| executable(p)) {
                Some(p) => {
                    let v = version(&p, &["--version"]).await.unwrap_or_else(|e| e);
                    detail.push_str(&format!("; {} ({v})", p.display()));
                    if !h.is_runsc() {
                        let runtime = p.display().to_string();
                        let features = tokio::task::spawn_blocking(move || {
                            berth_sandbox::runtime::OciFeatures::probe(&runtime)
                        })
                        .await
                        .unwrap_or_default();
                        detail.push_str(&format!("; {}", features.summary()));
                    }
                    let stranded = controllers_left_on_cgroup2(Path::new("/sys/fs/cgroup"));
                    if engine.contains("crun") && !stranded.is_empty() {
                        push(fail(
                            "runtime",
                            label,
                            format!(
                                "{detail}; hybrid cgroup host with {} on cgroup2: crun refuses to run there",
                                stranded.join(", ")
                            ),
                            stranded
                                .iter()
                                .map(|c| {
                                    format!(
                                        "mkdir -p /sys/fs/cgroup/{c} && mount -t cgroup -o {c} cgroup /sys/fs/cgroup/{c}"
                                    )
                                })
                                .collect::<Vec<_>>()
                                .join("; "),
                        ));
                        continue;
                    }
                }
                None => {
                    push(fail(
                        "runtime",
                        label,
                        format!("{detail}; {engine} not found"),
                        format!(
                            "install {engine} (apt-get install {})",
                            if engine.contains("runsc") {
                                "runsc"
                            } else if engine.contains("crun") {
                                "crun"
                            } else {
                                "runc"
                            }
                        ),
                    ));
                    continue;
                }
            }
        }
        if let Some(cp) = &h.options.config_path
            && !cp.exists()
        {
            push(fail(
                "runtime",
                label,
                format!("{detail}; {} is missing", cp.display()),
                "install the runtime's configuration, or fix ConfigPath",
            ));
            continue;
        }
        push(pass("runtime", label, detail));
    }
    out
}

/// NRI: whether it is on, the plugins berth starts itself, and whether the socket for
/// external plugins is served.
pub(super) fn nri(cfg: &Config) -> Vec<Check> {
    let n = &cfg.nri;
    if !n.enable {
        return vec![pass("nri", "NRI", "off (nri.enable = false)")];
    }
    let mut plugins: Vec<String> = std::fs::read_dir(&n.plugin_path)
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    use std::os::unix::fs::PermissionsExt;
                    e.metadata()
                        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                })
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    plugins.sort();
    let mut out = vec![pass(
        "nri",
        "pre-installed plugins",
        if plugins.is_empty() {
            format!("none in {}", n.plugin_path.display())
        } else {
            format!("{} (from {})", plugins.join(", "), n.plugin_path.display())
        },
    )];
    out.push(pass(
        "nri",
        "plugin socket",
        if n.disable_connections {
            "external plugins are off (nri.disable_connections)".to_string()
        } else if std::os::unix::net::UnixStream::connect(&n.socket_path).is_ok() {
            format!("{} is served", n.socket_path.display())
        } else {
            format!(
                "{} is not served (berth is not running, or could not take it)",
                n.socket_path.display()
            )
        },
    ));
    out
}

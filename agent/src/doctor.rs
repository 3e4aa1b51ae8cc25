//! `berth doctor`: checks a node the way an operator would and says, for each problem, how
//! to fix it. Exit status 1 when something berth needs is missing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;

/// One check's outcome.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    /// kernel, runtime, cni, registry, daemon.
    pub area: &'static str,
    pub name: String,
    pub ok: bool,
    /// A failed required check makes the node unfit; an optional one is a warning.
    pub required: bool,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn pass(area: &'static str, name: impl Into<String>, detail: impl Into<String>) -> Check {
    Check {
        area,
        name: name.into(),
        ok: true,
        required: true,
        detail: detail.into(),
        fix: None,
    }
}

fn fail(
    area: &'static str,
    name: impl Into<String>,
    detail: impl Into<String>,
    fix: impl Into<String>,
) -> Check {
    Check {
        area,
        name: name.into(),
        ok: false,
        required: true,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

/// Runs every check.
pub async fn run(cfg: &Config) -> Vec<Check> {
    let mut c = kernel();
    c.push(state_dir(&cfg.state));
    c.extend(handlers(cfg).await);
    c.extend(cni(cfg));
    c.extend(registry(cfg));
    c.extend(decryption_keys(&cfg.image_decryption.keys_dir));
    c.push(fuse(!cfg.lazy_pull.registries.is_empty()));
    c.push(quarantined_layers(&cfg.root));
    c.extend(daemon(cfg).await);
    c
}

/// Whether every required check passed.
pub fn healthy(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.ok || !c.required)
}

/// The table: one line per check, ✔ / ✘ (⚠ for an optional miss), the fix under each miss.
pub fn render(checks: &[Check]) -> String {
    let w = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut s = String::new();
    for c in checks {
        let mark = match (c.ok, c.required) {
            (true, _) => "✔",
            (false, true) => "✘",
            (false, false) => "⚠",
        };
        s.push_str(&format!(
            "{mark} {:<8} {:<w$}  {}\n",
            c.area, c.name, c.detail
        ));
        if let Some(f) = &c.fix {
            s.push_str(&format!("  {:<8} {:<w$}  fix: {f}\n", "", ""));
        }
    }
    let bad = checks.iter().filter(|c| !c.ok && c.required).count();
    let warn = checks.iter().filter(|c| !c.ok && !c.required).count();
    s.push_str(&match (bad, warn) {
        (0, 0) => "node is ready for berth\n".to_string(),
        (0, w) => format!("node is ready for berth ({w} optional item(s) missing)\n"),
        (b, _) => format!("{b} problem(s) keep berth from working here\n"),
    });
    s
}

fn kernel() -> Vec<Check> {
    let mut out = Vec::new();
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    out.push(
        if fs
            .lines()
            .any(|l| l.trim_end().ends_with("\toverlay") || l.trim() == "nodev\toverlay")
        {
            pass("kernel", "overlayfs", "supported")
        } else {
            fail(
                "kernel",
                "overlayfs",
                "not in /proc/filesystems",
                "modprobe overlay (and add it to /etc/modules-load.d)",
            )
        },
    );
    let missing: Vec<&str> = ["mnt", "uts", "ipc", "net", "pid", "user", "cgroup"]
        .into_iter()
        .filter(|n| !Path::new("/proc/self/ns").join(n).exists())
        .collect();
    out.push(if missing.is_empty() {
        pass("kernel", "namespaces", "mnt uts ipc net pid user cgroup")
    } else {
        fail(
            "kernel",
            "namespaces",
            format!("missing: {}", missing.join(" ")),
            "use a kernel built with CONFIG_NAMESPACES and the missing namespace options",
        )
    });
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let have = |c: &str| {
        if v2 {
            std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
                .unwrap_or_default()
                .split_whitespace()
                .any(|x| x == c)
        } else {
            Path::new("/sys/fs/cgroup").join(c).is_dir()
        }
    };
    let lacking: Vec<&str> = ["cpu", "memory", "pids"]
        .into_iter()
        .filter(|c| !have(c))
        .collect();
    out.push(if lacking.is_empty() {
        pass("kernel", "cgroups", format!("{} (cpu memory pids)", if v2 { "v2" } else { "v1" }))
    } else {
        fail("kernel", "cgroups", format!("{}: no {}", if v2 { "v2" } else { "v1" }, lacking.join(" ")), "enable the missing controllers (kernel command line cgroup_enable=..., or delegate them on v2)")
    });
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    out.push(if status.lines().any(|l| l.starts_with("Seccomp:")) {
        pass(
            "kernel",
            "seccomp",
            "available (RuntimeDefault profiles apply)",
        )
    } else {
        fail(
            "kernel",
            "seccomp",
            "not available",
            "use a kernel with CONFIG_SECCOMP_FILTER",
        )
    });
    let apparmor = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .map(|s| s.trim() == "Y")
        .unwrap_or(false);
    let selinux = std::fs::read_to_string("/sys/fs/selinux/enforce").ok();
    out.push(pass(
        "kernel",
        "lsm",
        format!(
            "AppArmor {}, SELinux {}",
            if apparmor { "enabled" } else { "off" },
            match selinux.as_deref().map(str::trim) {
                Some("1") => "enforcing",
                Some(_) => "permissive",
                None => "off",
            }
        ),
    ));
    out
}

/// tmpfs and ramfs, as `statfs(2)` names them.
const MEMORY_FS: [rustix::fs::FsWord; 2] = [0x0102_1994, 0x8584_58f6];

/// The state directory (bundles, fifos, pid files, netns and shm mounts) belongs on a
/// tmpfs, as `/run` is on a systemd host: runc writes each container's pid file with
/// `O_SYNC` there, and the shims write their bundle files, so on a disk every container
/// start waits for the device. Optional: berth works either way.
pub(crate) fn state_dir(state: &Path) -> Check {
    let name = "state on tmpfs";
    // The directory may not exist before berth's first start: its nearest ancestor decides.
    let Some(probe) = state.ancestors().find(|p| p.exists()) else {
        return pass(
            "state",
            name,
            format!("{} (not created yet)", state.display()),
        );
    };
    match rustix::fs::statfs(probe) {
        Ok(fs) if MEMORY_FS.contains(&fs.f_type) => {
            pass("state", name, format!("{} is on tmpfs", state.display()))
        }
        Ok(fs) => Check {
            required: false,
            ..fail(
                "state",
                name,
                format!(
                    "{} is on a disk filesystem (magic {:#x}): each container start waits for \
                     synchronous writes there (runc's pid file)",
                    state.display(),
                    fs.f_type
                ),
                format!(
                    "with berth stopped and no pods on the node, mount a tmpfs there \
                     (mount -t tmpfs -o mode=0711 tmpfs {}, and in /etc/fstab); \
                     a systemd host's /run is one already",
                    state.display()
                ),
            )
        },
        Err(e) => Check {
            required: false,
            ..fail(
                "state",
                name,
                format!("statfs {}: {e}", probe.display()),
                "check that the state directory is readable",
            )
        },
    }
}

/// The first line `binary args` prints, within 5 s.
async fn version(binary: &Path, args: &[&str]) -> Result<String, String> {
    let out = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::process::Command::new(binary)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| "did not answer within 5 s".to_string())?
    .map_err(|e| e.to_string())?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // containerd shims print their name, then `Version: ...`; others put it first.
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("Version:"))
        .or_else(|| text.lines().find(|l| !l.trim().is_empty()))
        .unwrap_or("");
    Ok(line.trim().to_string())
}

fn executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn on_path(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|c| executable(c))
    })
}

async fn handlers(cfg: &Config) -> Vec<Check> {
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

/// On a hybrid host (v1 controllers under a tmpfs at `root`, cgroup2 at `root/unified`),
/// the controllers left on the cgroup2 side.
fn controllers_left_on_cgroup2(root: &Path) -> Vec<String> {
    if !root.join("unified/cgroup.procs").exists() {
        return Vec::new();
    }
    std::fs::read_to_string(root.join("unified/cgroup.controllers"))
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect()
}

fn cni(cfg: &Config) -> Vec<Check> {
    let dir = &cfg.cni.conf_dir;
    let net = match berth_network::cni::NetworkList::load_first(dir) {
        Ok(n) => n,
        Err(e) => {
            return vec![fail(
                "cni",
                "network config",
                e.to_string(),
                format!(
                    "put a CNI conflist in {} (e.g. bridge + host-local + portmap)",
                    dir.display()
                ),
            )];
        }
    };
    let mut out = vec![pass(
        "cni",
        "network config",
        format!("{:?} from {}", net.name, net.source.display()),
    )];
    for p in &net.plugins {
        let ty = p.get("type").and_then(|t| t.as_str()).unwrap_or("");
        let found = cfg
            .cni
            .bin_dirs
            .iter()
            .map(|d| d.join(ty))
            .find(|c| executable(c));
        out.push(match found {
            Some(f) => pass("cni", format!("plugin {ty}"), f.display().to_string()),
            None => fail(
                "cni",
                format!("plugin {ty}"),
                format!("not in {:?}", cfg.cni.bin_dirs),
                "apt-get install containernetworking-plugins, or add its directory to cni.bin_dirs",
            ),
        });
    }
    out
}

fn registry(cfg: &Config) -> Vec<Check> {
    let Some(dir) = cfg.registry_config_path() else {
        return vec![pass(
            "registry",
            "certs.d",
            "disabled: every registry is reached directly",
        )];
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return vec![pass(
            "registry",
            "certs.d",
            format!(
                "{} absent: every registry is reached directly",
                dir.display()
            ),
        )];
    };
    let mut out = Vec::new();
    let mut hosts: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    hosts.sort();
    for h in hosts {
        let file = h.join("hosts.toml");
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let domain = h
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        out.push(
            match berth_image::hosts::parse_hosts(&file, &text, &domain) {
                Ok(list) => pass(
                    "registry",
                    format!("hosts {domain}"),
                    format!("{} host(s) in {}", list.len(), file.display()),
                ),
                Err(e) => fail(
                    "registry",
                    format!("hosts {domain}"),
                    e.to_string(),
                    format!("fix {} (containerd's hosts.toml format)", file.display()),
                ),
            },
        );
    }
    if out.is_empty() {
        out.push(pass(
            "registry",
            "certs.d",
            format!("{}: no hosts.toml", dir.display()),
        ));
    }
    out
}

/// `/dev/fuse`, which lazy pulling mounts layers with: required only when it is configured.
fn fuse(lazy_pull: bool) -> Check {
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let known = fs.lines().any(|l| l.trim() == "nodev\tfuse");
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse");
    let detail = if lazy_pull {
        "eStargz layers are mounted with it"
    } else {
        "not needed: lazy_pull.registries is empty"
    };
    let problem = match (known, dev) {
        (true, Ok(_)) => None,
        (_, Err(e)) => Some(format!("/dev/fuse: {e}")),
        (false, Ok(_)) => Some("fuse is not in /proc/filesystems".to_string()),
    };
    match problem {
        None => pass("registry", "fuse", format!("/dev/fuse opens; {detail}")),
        Some(p) => Check {
            required: lazy_pull,
            ..fail(
                "registry",
                "fuse",
                p,
                "load the fuse module (modprobe fuse) and make /dev/fuse available to berth, or empty lazy_pull.registries",
            )
        },
    }
}

/// Lazily pulled layers berth refused to serve again after a restart (a table of contents
/// over the limits, a background fetch that killed berth): their images must be pulled anew.
fn quarantined_layers(root: &Path) -> Check {
    const NAME: &str = "quarantined layers";
    let q = berth_image::lazy::quarantined(root);
    if q.is_empty() {
        return pass("registry", NAME, "none");
    }
    let list: Vec<String> = q
        .iter()
        .map(|(dir, why)| format!("{}: {why}", dir.display()))
        .collect();
    fail(
        "registry",
        NAME,
        list.join("; "),
        "remove the images these layers belong to (crictl rmi; berth's log names each image) and pull them again",
    )
}

/// The node's keys for encrypted images: optional, so every miss is a warning.
fn decryption_keys(dir: &Path) -> Vec<Check> {
    use std::os::unix::fs::PermissionsExt;
    const NAME: &str = "decryption keys";
    let warn = |detail: String, fix: String| Check {
        required: false,
        ..fail("registry", NAME, detail, fix)
    };
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return vec![pass(
                "registry",
                NAME,
                format!(
                    "{} absent: encrypted images cannot be pulled",
                    dir.display()
                ),
            )];
        }
        Err(e) => {
            return vec![warn(
                format!("{}: {e}", dir.display()),
                "make it a directory berth can read".into(),
            )];
        }
    };
    let ring = berth_imgcrypt::KeyRing::load(dir);
    let keys = ring.describe();
    let mut out = vec![if keys.is_empty() {
        warn(
            format!("{}: no usable private key", dir.display()),
            "put the node's private keys there (PEM, DER or JWK, without a password)".into(),
        )
    } else {
        pass(
            "registry",
            NAME,
            format!(
                "{} usable key(s) in {}: {}",
                keys.len(),
                dir.display(),
                keys.join(", ")
            ),
        )
    }];
    for s in ring.skipped() {
        out.push(warn(
            format!("{} skipped: {}", s.path.display(), s.reason),
            "remove it, or replace it with a private key berth reads".into(),
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        out.push(warn(
            format!(
                "{} is open to other users (mode {:o})",
                dir.display(),
                meta.permissions().mode() & 0o7777
            ),
            format!("chmod 0700 {}", dir.display()),
        ));
    }
    out
}

async fn daemon(cfg: &Config) -> Vec<Check> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controllers_stranded_on_a_hybrid_hosts_cgroup2_are_found() {
        let d = tempfile::tempdir().unwrap();
        assert!(
            controllers_left_on_cgroup2(d.path()).is_empty(),
            "no cgroup2 there"
        );
        std::fs::create_dir(d.path().join("unified")).unwrap();
        std::fs::write(d.path().join("unified/cgroup.procs"), "1\n").unwrap();
        std::fs::write(d.path().join("unified/cgroup.controllers"), "\n").unwrap();
        assert!(controllers_left_on_cgroup2(d.path()).is_empty());
        std::fs::write(
            d.path().join("unified/cgroup.controllers"),
            "hugetlb misc\n",
        )
        .unwrap();
        assert_eq!(controllers_left_on_cgroup2(d.path()), ["hugetlb", "misc"]);
    }

    #[test]
    fn state_on_tmpfs_or_a_warning() {
        // /dev/shm is a tmpfs on every Linux host this runs on; the crate directory is not.
        let shm = state_dir(Path::new("/dev/shm/berth-doctor-test/state"));
        assert!(shm.ok, "{shm:?}");
        let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let on_disk = rustix::fs::statfs(crate_dir).is_ok_and(|fs| !MEMORY_FS.contains(&fs.f_type));
        if on_disk {
            let disk = state_dir(crate_dir);
            assert!(!disk.ok && !disk.required, "{disk:?}");
            assert!(
                disk.fix
                    .as_deref()
                    .is_some_and(|f| f.contains("mount -t tmpfs"))
            );
        }
    }

    #[test]
    fn decryption_keys_are_counted_and_strays_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let absent = decryption_keys(&keys);
        assert!(
            absent[0].ok && absent[0].detail.contains("absent"),
            "{absent:?}"
        );

        std::fs::create_dir(&keys).unwrap();
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../imgcrypt/testdata");
        std::fs::copy(data.join("ec.pem"), keys.join("node.pem")).unwrap();
        std::fs::copy(data.join("rsa.pub.pem"), keys.join("node.pub")).unwrap();
        let checks = decryption_keys(&keys);
        assert!(checks[0].ok, "{checks:?}");
        assert!(checks[0].detail.contains("1 usable key(s)"), "{checks:?}");
        assert!(checks[0].detail.contains("node.pem: P-256"), "{checks:?}");
        assert!(
            checks
                .iter()
                .any(|c| !c.ok && !c.required && c.detail.contains("node.pub skipped")),
            "{checks:?}"
        );
        assert!(
            checks
                .iter()
                .any(|c| c.fix.as_deref() == Some(&format!("chmod 0700 {}", keys.display()))),
            "{checks:?}"
        );
        assert!(healthy(&checks), "key warnings never make the node unfit");
    }

    #[test]
    fn the_table_marks_and_fixes() {
        let mut opt = fail("daemon", "sandbox image", "not pulled", "crictl pull x");
        opt.required = false;
        let checks = vec![
            pass("kernel", "overlayfs", "supported"),
            fail(
                "cni",
                "network config",
                "no conflist",
                "put one in /etc/cni/net.d",
            ),
            opt,
        ];
        let t = render(&checks);
        assert!(t.contains("✔ kernel   overlayfs"), "{t}");
        assert!(t.contains("✘ cni      network config"), "{t}");
        assert!(t.contains("fix: put one in /etc/cni/net.d"), "{t}");
        assert!(t.contains("⚠ daemon"), "{t}");
        assert!(
            t.ends_with("1 problem(s) keep berth from working here\n"),
            "{t}"
        );
        assert!(!healthy(&checks));
        assert!(healthy(&checks[..1]));
    }
}
